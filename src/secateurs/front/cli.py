"""Command-line interface (typer + rich). Errors are one red line and exit code 2."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from secateurs.core.errors import SecateursError
from secateurs.front.app import App
from secateurs.front.console import console, err_console, friendly_errors

if TYPE_CHECKING:
    from secateurs.results import ResultsDB

app = App(
    name="secateurs",
    help="Neural network pruning: every method is a recipe of train/prune/reset/repeat/evaluate stages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="also log what each step does (INFO), not only warnings")
]


def _setup_logging(verbose: bool, *, epochs: bool = False) -> None:
    """Warnings (everything with `verbose`); with `epochs`, the training loop's per-epoch lines too."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )
    # set every time: a logger's level outlives the command (several commands in one process)
    logging.getLogger("secateurs.train.engine").setLevel(logging.INFO if epochs else logging.NOTSET)


def _set_threads(threads: int | None) -> None:
    """Small models run fastest on one thread; several threads on a busy machine can be 10× slower."""
    if threads is None:
        return
    if threads < 1:
        raise SecateursError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def records_table(records: list[dict[str, Any]], title: str) -> Table:
    cols = ["label", "level", "accuracy", "sparsity", "nonzero_params", "params", "nonzero_macs", "macs"]
    headers = ["label", "level", "acc.", "sparsity", "nnz params", "params", "nnz MACs", "MACs"]
    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="left" if header == "label" else "right")
    for row in records:
        cells = [_fmt(row.get(c, "")) if row.get(c) is not None else "" for c in cols]
        if row.get("control"):
            cells[0] += f" · control={row['control']}"
        table.add_row(*cells)
    return table


@app.command()
@friendly_errors
def run(
    recipe: Annotated[str, typer.Argument(help="recipe YAML path or preset name (see `secateurs methods`)")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="override, e.g. --set train.epochs=3"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="write recipe, metrics and checkpoint to this directory (kept after each stage, for "
            "--resume)",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="replace the run already in --out (only a run directory, or an empty one)"
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="continue the interrupted run in --out after its last finished stage"),
    ] = False,
    progress: Annotated[
        bool, typer.Option(help="show progress: a bar on a terminal, else a line per training epoch")
    ] = True,
    threads: Annotated[
        int, typer.Option(help="CPU threads for torch: 1 suits small models; raise it for large conv nets")
    ] = 1,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            help="data-parallel processes on this machine: launches torchrun (PyTorch DDP: NCCL on GPUs, "
            "gloo on the CPU)",
        ),
    ] = 1,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps (default: the recipe's, auto)")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="fp32, bf16 or fp16 training (default: the recipe's, fp32)")
    ] = None,
    metrics_log: Annotated[
        Path | None,
        typer.Option(help="append every metric as it is made: a .csv file, or a TensorBoard directory"),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run a recipe: train, prune, reset, repeat and evaluate as its stages say.

    When stderr is not a terminal (a log file, a cluster job), progress is a line per training
    epoch with its loss, test accuracy, samples/s and ETA."""
    import secateurs
    from secateurs.core.distributed import init_from_environment, launched_by_torchrun, shutdown

    if nproc < 1:
        raise SecateursError(f"--nproc must be at least 1, got {nproc}")
    set_ = [*(set_ or []), *(f"{k}={v}" for k, v in (("device", device), ("precision", precision)) if v)]
    if nproc > 1 and not launched_by_torchrun():
        args = ["run", recipe, *(a for s in set_ or [] for a in ("--set", s)), "--threads", str(threads)]
        args += ["--out", str(out)] if out is not None else []
        args += [f for f, on in (("--overwrite", overwrite), ("--resume", resume)) if on]
        args += ["--metrics-log", str(metrics_log)] if metrics_log is not None else []
        args += ["--progress" if progress else "--no-progress"] + (["--verbose"] if verbose else [])
        raise typer.Exit(launch_torchrun(nproc, args))
    main = init_from_environment().main
    finished = False
    try:
        bar = progress and sys.stderr.isatty()
        _setup_logging(verbose and main, epochs=main and progress and not bar)
        _set_threads(threads)
        try:
            result = secateurs.run(
                recipe, overrides=list(set_ or []), out=out, progress=bar, metrics_log=metrics_log,
                overwrite=overwrite, resume=resume,
            )  # fmt: skip
        except KeyboardInterrupt:
            from secateurs.pipeline.state import STATE_FILE

            if out is None or not (out / STATE_FILE).exists():
                raise
            err_console.print(
                Text(f"interrupted: the stages done are saved in {out}; add --resume to continue", "yellow"),
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
        if main:
            console.print(records_table(result.records, f"recipe {result.recipe.name}"))
            if out is not None:
                console.print(f"results written to {out}")
        finished = True
    finally:
        shutdown(finished=finished)


def launch_torchrun(nproc: int, args: list[str]) -> int:
    """Run `secateurs ARGS` in `nproc` processes on this machine with torchrun; its exit code."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.call([*command, "-m", "secateurs", *args])


@app.command()
@friendly_errors
def demo(
    out: Annotated[
        Path, typer.Option(metavar="DIR", help="where to write the table (JSON) and the plot (PNG)")
    ] = Path("secateurs-demo"),
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace a previous demo's --out (only a demo's, or empty)")
    ] = False,
    quick: Annotated[bool, typer.Option(help="fewer epochs and sparsities (under a minute)")] = False,
    report: Annotated[
        bool, typer.Option(help="run through the results store (OUT/results) and print the report tables")
    ] = False,
    threads: Annotated[int, typer.Option(help="CPU threads for torch (the demo's MLP is fastest on 1)")] = 1,
    verbose: VerboseOpt = False,
) -> None:
    """Train a small model on MNIST-1D and prune it with every method, at several sparsities."""
    from secateurs.front.demo import prepare_demo_dir, run_demo, run_demo_report

    prepare_demo_dir(out, overwrite=overwrite)  # before minutes of training, not after
    _setup_logging(verbose)
    _set_threads(threads)
    if report:
        run_demo_report(out, quick=quick, console=console)
    else:
        run_demo(out, quick=quick, console=console)


@app.command()
@friendly_errors
def methods(
    plugin: Annotated[
        list[str] | None, typer.Option("--plugin", help="also import this module and list what it registers")
    ] = None,
) -> None:
    """List every registered component (criteria, structures, allocations, models, data sets …) with
    its options, and the preset recipes."""
    from secateurs.front.catalogue import catalogue

    found = catalogue(plugin or [])
    table = Table(title="components (options below what each does, with their defaults)")
    table.add_column("axis", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("what it does · options", overflow="fold")
    for c in found.components:  # help texts hold [brackets]: Text shows them as they are
        what = Text(c.help)
        if c.options:
            what.append(f"\noptions: {c.options}", style="dim")
        table.add_row(c.axis, c.name, what)
    console.print(table)
    presets = _table("preset recipes (secateurs run NAME)", "name", "description")
    for preset in found.presets:
        presets.add_row(preset.name, preset.description)
    console.print(presets)


@app.command()
def models() -> None:
    """List the model zoo."""
    from secateurs.models import MODELS

    table = _table("models", "name", "input", "description")
    for name in MODELS.names():
        spec = MODELS.get(name)
        ranks = "/".join(
            {1: "vector (L,)", 2: "(C, L)", 3: "image (C, H, W)"}.get(r, str(r)) for r in spec.input_ranks
        )
        table.add_row(name, ranks, spec.description)
    console.print(table)


@app.command()
def datasets() -> None:
    """List the data sets (all offline) and whether each is available here."""
    from secateurs.data import DATASETS, dataset_status

    table = _table("data sets", "name", "status", "description")
    for name in DATASETS.names():
        table.add_row(name, dataset_status(name), DATASETS.help(name))
    console.print(table)


@app.command()
@friendly_errors
def inspect(
    checkpoint: Annotated[
        Path, typer.Argument(help="model.pt written by `secateurs run`, or its run directory")
    ],
) -> None:
    """Show a checkpoint's per-layer sparsity, parameter and MAC counts."""
    from secateurs.front.inspection import inspect_checkpoint

    inspect_checkpoint(checkpoint, console)


# -- results store: sweep, runs, export ---------------------------------------------------------
ROOT_HELP = "results root: holds results.db and runs/<hash>/"
DEFAULT_RESULTS_ROOT = Path("secateurs-results")


@app.command()
@friendly_errors
def sweep(
    sweep_file: Annotated[
        Path, typer.Argument(help="sweep YAML: recipes × sparsities × models × data × seeds")
    ],
    root: Annotated[Path, typer.Option(help=ROOT_HELP)] = DEFAULT_RESULTS_ROOT,
    workers: Annotated[int, typer.Option(help="local worker processes (one torch thread each)")] = 1,
    shard: Annotated[
        str | None, typer.Option(help="run only shard i of N (i/N), e.g. one per machine or job")
    ] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for torch when --workers is 1")] = 1,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    verbose: VerboseOpt = False,
) -> None:
    """Run every point of a sweep into the results store; finished runs are skipped, so re-run to resume."""
    from secateurs.core.errors import ConfigError
    from secateurs.results.sweep import expand_sweep, load_sweep, parse_shard, run_sweep, select_shard

    _setup_logging(verbose)
    _set_threads(threads)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    from secateurs.core.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise ConfigError(
            "secateurs sweep runs each recipe in its own worker process and does not run under torchrun",
            fix="spread a sweep with --workers N; run one big recipe data-parallel with run --nproc N",
        )
    selected = parse_shard(shard) if shard is not None else None
    config = load_sweep(sweep_file)
    points = expand_sweep(config, sweep_file.parent)  # every point validated before anything runs
    total = len(points)
    if selected is not None:
        points = select_shard(points, *selected)
    try:
        summary = run_sweep(points, root, workers=workers, progress=progress and console.is_terminal)
    except KeyboardInterrupt:
        err_console.print(
            Text("interrupted: finished runs are kept; run the same command to resume", style="yellow")
        )
        raise typer.Exit(130) from None
    table = Table(
        title=f"sweep {config.name}: {len(points)} of {total} runs" + (f", shard {shard}" if shard else "")
    )
    for header in ("hash", "name", "status", "acc.", "attempts", "error"):
        table.add_column(header, justify="right" if header in ("acc.", "attempts") else "left")
    for outcome in summary.outcomes:
        accuracy = outcome.final.get("accuracy")
        table.add_row(
            outcome.hash, outcome.name, outcome.status, "" if accuracy is None else _fmt(accuracy),
            str(outcome.attempts or ""), outcome.error or "",
        )  # fmt: skip
    console.print(table)
    console.print(f"sweep {config.name}: {summary.line()} (results in {root})", highlight=False)
    if summary.failed:
        raise typer.Exit(1)


def _open_results(root: Path) -> ResultsDB:
    """The store's database for reading; a missing one is an error, never created here."""
    from secateurs.results import ResultsDB, db_path

    return ResultsDB(db_path(root), create=False)


@app.command()
@friendly_errors
def runs(
    root: Annotated[Path, typer.Option(help=ROOT_HELP)] = DEFAULT_RESULTS_ROOT,
    status: Annotated[
        str | None, typer.Option(help="only runs with this status: pending, running, finished, failed")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="only runs whose name matches this glob, e.g. 'imp*'")
    ] = None,
    show: Annotated[
        str | None, typer.Option(help="show one run (hash or unique prefix): config, metrics")
    ] = None,
) -> None:
    """List the runs in a results store, or show one run's config and metrics."""
    with _open_results(root) as db:
        if show is not None:
            _show_run(db, show)
            return
        records = db.list_runs(status=status, name=name)
        table = Table(title=f"{len(records)} runs in {root}")
        for header in ("hash", "name", "status", "sparsity", "acc.", "attempts"):
            table.add_column(
                header, justify="right" if header in ("sparsity", "acc.", "attempts") else "left"
            )
        for record in records:
            accuracy = db.final_metrics(record.hash).get("accuracy")
            table.add_row(
                record.hash, record.name, record.status,
                "" if record.sparsity is None else _fmt(float(record.sparsity)),
                "" if accuracy is None else _fmt(accuracy), str(record.attempts),
            )  # fmt: skip
        console.print(table)


def _metric(value: float | None) -> str:
    """Stored metrics are floats; counts (parameters, MACs, steps) read better as integers."""
    if value is None:
        return ""
    return _fmt(int(value)) if value.is_integer() and abs(value) >= 1 else _fmt(value)


def _show_run(db: ResultsDB, prefix: str) -> None:
    """Status, config (as stored, every default filled in) and metric tables of one run."""
    import yaml

    record = db.find_run(prefix)
    info = Table(title=f"run {record.hash}", show_header=False)
    info.add_column("field")
    info.add_column("value")
    for key in (
        "name",
        "status",
        "attempts",
        "created",
        "started",
        "finished",
        "version",
        "git_revision",
        "error",
    ):
        value = getattr(record, key)
        info.add_row(key, "" if value is None else str(value))
    for kind, path in db.artifacts(record.hash).items():
        info.add_row(f"file: {kind}", str(db.path.parent / path))
    console.print(info)
    console.print(yaml.safe_dump(record.config, sort_keys=False), highlight=False, markup=False)
    rows = db.metrics(record.hash)
    controls = any(row.control is not None for row in rows)
    for kind in ("evaluate", "train"):
        events: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in rows:
            if row.kind == kind:
                events.setdefault((row.stage, row.level, row.step, row.control), {})[row.name] = row.value
        if not events:
            continue
        names = list(dict.fromkeys(n for values in events.values() for n in values if n != "step"))
        table = Table(title=f"{kind} metrics")
        for header in ("stage", "level", "step", *(["control"] if controls else []), *names):
            table.add_column(header, justify="right")
        for (stage, level, step, control), values in events.items():
            cells = [_metric(values.get(n)) for n in names]
            table.add_row(
                str(stage),
                "" if level is None else str(level),
                "" if step is None else str(step),
                *([control or ""] if controls else []),
                *cells,
            )
        console.print(table)


@app.command()
@friendly_errors
def export(
    out: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="file to write (atomically); - or none: standard output"),
    ] = None,
    root: Annotated[Path, typer.Option(help=ROOT_HELP)] = DEFAULT_RESULTS_ROOT,
    format_: Annotated[
        str | None,
        typer.Option("--format", help="csv or json (default: from the --out suffix; csv on standard output)"),
    ] = None,
) -> None:
    """Write one row per run (status, config fields flattened, final metrics) as CSV or JSON.

    On standard output (no --out, or --out -) the rows are all that is printed, for a pipe."""
    from secateurs.core.errors import ConfigError
    from secateurs.core.fileio import atomic_write_text
    from secateurs.results.db import EXPORT_FORMATS, export_rows, render_export

    target = out if out is not None else Path("-")
    to_stdout = str(target) == "-"
    fmt = format_ if format_ is not None else "csv" if to_stdout else target.suffix.lstrip(".").lower()
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(
            f"unknown export format {fmt!r}" if format_ is not None else f"cannot tell the format of {out}",
            fix="pass --format csv or --format json",
        )
    if not to_stdout and target.is_dir():
        raise ConfigError(f"{out} is a directory", fix="pass --out a file name")
    with _open_results(root) as db:
        rows = export_rows(db)
    text = render_export(rows, fmt)
    if to_stdout:
        typer.echo(text, nl=False)  # as it is: no rich wrapping, no markup, nothing else
        return
    try:
        atomic_write_text(target, text)
    except OSError as err:
        raise ConfigError(f"cannot write {out} ({err})", fix="choose another --out") from None
    console.print(f"{len(rows)} runs written to {out}", highlight=False)


@app.command()
@friendly_errors
def report(
    root: Annotated[Path, typer.Option(help=ROOT_HELP)] = DEFAULT_RESULTS_ROOT,
    name: Annotated[str | None, typer.Option(help="only runs whose name matches this glob")] = None,
    out: Annotated[
        Path | None, typer.Option(help="where report.md and the PNGs go (default ROOT/report)")
    ] = None,
    delta: Annotated[float, typer.Option(help="prune potential tolerance, in accuracy points")] = 0.5,
) -> None:
    """Markdown tables (mean ± std over seeds, prune potential) and PNG plots of finished runs."""
    from rich.markdown import Markdown

    from secateurs.results.report import write_report

    if not 0 < delta < 100:
        raise SecateursError(f"--delta must be between 0 and 100 points, got {delta}")
    path = write_report(root, out if out is not None else root / "report", name=name, delta=delta / 100)
    console.print(Markdown(path.read_text(encoding="utf-8")))
    console.print(f"report written to {path}")


def _add_llm_commands() -> None:
    """`secateurs llm ...` (its module imports this one's console, so it is added last; it loads
    transformers only when one of its commands runs)."""
    from secateurs.front.llm_cli import llm_app

    app.add_typer(llm_app, name="llm")


_add_llm_commands()


def main() -> None:
    """Entry point of the `secateurs` command."""
    app()


if __name__ == "__main__":
    main()
