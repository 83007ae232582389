"""Command-line interface (typer + rich). Errors are one red line and exit code 2."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.cells import cell_len
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from secateurs.core.errors import SecateursError
from secateurs.front.app import App
from secateurs.front.console import console, err_console, friendly_errors
from secateurs.front.tables import Column, cut, fit, print_json, print_tables

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import RenderableType

    from secateurs.front.catalogue import Catalogue, Component, Preset
    from secateurs.results.db import ResultsStore, RunRecord

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


WideOpt = Annotated[bool, typer.Option("--wide", help="every column and name in full, however wide")]
JsonOpt = Annotated[bool, typer.Option("--json", help="the table's data as JSON on stdout instead")]


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


RECORD_COLUMNS = (
    ("label", Column("label", label=True)),
    ("control", Column("control")),
    ("level", Column("level", right=True)),
    ("accuracy", Column("acc.", right=True)),
    ("sparsity", Column("sparsity", right=True)),
    ("nonzero_params", Column("nnz params", right=True)),
    ("params", Column("params", right=True, once=True)),
    ("nonzero_macs", Column("nnz MACs", right=True)),
    ("macs", Column("MACs", right=True, once=True)),
)
"""Which fields of a run's records (`RunResult.records`) its table shows; `--json` gives them all."""


def records_table(
    records: list[dict[str, Any]], title: str, *, width: int | None = None, wide: bool = False
) -> RenderableType:
    """One row per evaluation of a run, fitted to `width` cells (the console's by default)."""
    from rich.console import Group

    rows = [["" if row.get(k) is None else _fmt(row[k]) for k, _ in RECORD_COLUMNS] for row in records]
    columns = [c for _, c in RECORD_COLUMNS]
    return Group(*fit(title, columns, rows, width=width or console.width, wide=wide))


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
    quick: Annotated[
        bool,
        typer.Option("--quick", help="the recipe's quick form (its `quick:`): same stages, a few epochs"),
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
    wide: WideOpt = False,
    json_: JsonOpt = False,
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
        args += [f for f, on in (("--overwrite", overwrite), ("--resume", resume), ("--quick", quick)) if on]
        args += ["--metrics-log", str(metrics_log)] if metrics_log is not None else []
        args += ["--progress" if progress else "--no-progress"] + (["--verbose"] if verbose else [])
        args += [f for f, on in (("--wide", wide), ("--json", json_)) if on]
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
                overwrite=overwrite, resume=resume, quick=quick,
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
        if main and json_:
            print_json(console, result.records)  # stdout holds the JSON alone
            if out is not None:
                err_console.print(f"results written to {out}", highlight=False, soft_wrap=True)
        elif main:
            print_tables(
                console, [records_table(result.records, f"recipe {result.recipe.name}", wide=wide)], wide=wide
            )
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
    wide: WideOpt = False,
    json_: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Train a small model on MNIST-1D and prune it with every method, at several sparsities."""
    from secateurs.front.demo import prepare_demo_dir, run_demo, run_demo_report

    if report and (wide or json_):
        raise SecateursError(
            "--wide and --json are for the demo's own table; --report writes and prints a markdown report",
            fix="drop --report, or --wide and --json",
        )
    prepare_demo_dir(out, overwrite=overwrite)  # before minutes of training, not after
    _setup_logging(verbose)
    _set_threads(threads)
    if report:
        run_demo_report(out, quick=quick, console=console)
    else:
        run_demo(out, quick=quick, console=console, wide=wide, as_json=json_)


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


def summary(text: str) -> str:
    """The first sentence of a help text, on one line."""
    return SENTENCE_END.split(" ".join(text.split()), maxsplit=1)[0]


@app.command()
@friendly_errors
def methods(
    name: Annotated[
        str | None,
        typer.Argument(metavar="NAME", help="show only this component or preset, with its options"),
    ] = None,
    plugin: Annotated[
        list[str] | None, typer.Option("--plugin", help="also import this module and list what it registers")
    ] = None,
    wide: WideOpt = False,
    json_: JsonOpt = False,
) -> None:
    """List every registered component (criteria, structures, allocations, models, data sets …) and
    the preset recipes, each with what it does; NAME or --wide show their options too."""
    from dataclasses import asdict

    from secateurs.front.catalogue import catalogue

    found = catalogue(plugin or [])
    components, presets = list(found.components), list(found.presets)
    if name is not None:
        components = [c for c in components if c.name == name]
        presets = [p for p in presets if p.name == name]
        if not components and not presets:
            raise SecateursError(f"no component or preset named {name!r}", fix=_did_you_mean(name, found))
    if json_:
        print_json(
            console, {"components": [asdict(c) for c in components], "presets": [asdict(p) for p in presets]}
        )
    elif name is not None:
        _describe(components, presets)
    elif wide:
        _catalogue_tables(components, presets)
    else:
        _summaries(components, presets, console.width)


def _did_you_mean(name: str, found: Catalogue) -> str:
    import difflib

    names = sorted({c.name for c in found.components} | {p.name for p in found.presets})
    close = difflib.get_close_matches(name, names, n=3)
    return (f"did you mean {' or '.join(close)}? " if close else "") + "`secateurs methods` lists every name"


def _summaries(components: list[Component], presets: list[Preset], width: int) -> None:
    """Each component and preset on one line: its name and the first sentence of its help, cut to fit."""

    def lines(items: list[Any], text: Callable[[Any], str], names: int) -> list[Text]:
        room = max(width - 2 - names - 2, 20)
        return [
            Text(f"  {x.name}{' ' * (names - cell_len(x.name))}  {cut(summary(text(x)), room)}")
            for x in items
        ]

    out = [Text("components (secateurs methods NAME: what one does and its options; --wide: all)")]
    names = max((cell_len(c.name) for c in components), default=0)
    for axis in dict.fromkeys(c.axis for c in components):
        group = [c for c in components if c.axis == axis]
        out += [Text(axis, style="bold"), *lines(group, lambda c: c.help, names)]
    out += [Text(""), Text("preset recipes (secateurs run NAME)", style="bold")]
    out += lines(presets, lambda p: p.description, max((cell_len(p.name) for p in presets), default=0))
    for line in out:
        console.print(line, no_wrap=True, crop=False)


def _describe(components: list[Component], presets: list[Preset]) -> None:
    """Everything about the components and presets named: key/value tables that wrap in any width."""
    for c in components:
        table = Table.grid(padding=(0, 2))
        table.title, table.title_justify = f"{c.axis} {c.name}", "left"
        table.add_row("what it does", Text(c.help))
        table.add_row("options", Text(c.options or "none"))
        console.print(table)
    for p in presets:
        table = Table.grid(padding=(0, 2))
        table.title, table.title_justify = f"preset recipe {p.name}", "left"
        table.add_row("what it does", Text(p.description))
        table.add_row("run it", Text(f"secateurs run {p.name}"))
        console.print(table)


def _catalogue_tables(components: list[Component], presets: list[Preset]) -> None:
    """The whole catalogue (help and options in full) at its natural width: `methods --wide`."""
    table = Table(title="components (options below what each does, with their defaults)")
    table.add_column("axis", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("what it does · options", overflow="fold")
    for c in components:  # help texts hold [brackets]: Text shows them as they are
        what = Text(c.help)
        if c.options:
            what.append(f"\noptions: {c.options}", style="dim")
        table.add_row(c.axis, c.name, what)
    listing = _table("preset recipes (secateurs run NAME)", "name", "description")
    for preset in presets:
        listing.add_row(preset.name, Text(preset.description))
    print_tables(console, [table, listing], wide=True)


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
ROOT_HELP = (
    "results root: holds runs/<hash>/ (and results.db unless --store); for several hosts a shared "
    "filesystem, or one root per host combined by `secateurs merge`"
)
STORE_HELP = (
    "results database on a server, postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, shared by every host "
    "(pip install 'secateurs[postgres]'); default: ROOT/results.db, SQLite, for one host"
)
StoreOpt = Annotated[str | None, typer.Option(metavar="URL", help=STORE_HELP)]
CLUSTER_PANEL = "Ray and Slurm (--backend)"
DEFAULT_RESULTS_ROOT = Path("secateurs-results")


@app.command()
@friendly_errors
def sweep(
    sweep_file: Annotated[
        Path, typer.Argument(help="sweep YAML: recipes × sparsities × models × data × seeds")
    ],
    root: Annotated[Path, typer.Option(help=ROOT_HELP)] = DEFAULT_RESULTS_ROOT,
    store: StoreOpt = None,
    workers: Annotated[int, typer.Option(help="local worker processes (one torch thread each)")] = 1,
    shard: Annotated[
        str | None, typer.Option(help="run only shard i of N (i/N), e.g. one per machine or job")
    ] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for torch when --workers is 1")] = 1,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    wide: WideOpt = False,
    json_: JsonOpt = False,
    verbose: VerboseOpt = False,
    backend: Annotated[
        str,
        typer.Option(
            help="where the runs execute: local (here, --workers), ray (a Ray task per run) or slurm "
            "(one Slurm array job, a shard of the grid per task)",
            rich_help_panel=CLUSTER_PANEL,
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="ray: the cluster's address (host:port, ray://host:port, auto); default: a local instance",
            rich_help_panel=CLUSTER_PANEL,
        ),
    ] = None,
    cpus_per_run: Annotated[
        int | None,
        typer.Option(
            help="ray, slurm: CPU cores (torch threads) per run, default 1", rich_help_panel=CLUSTER_PANEL
        ),
    ] = None,
    gpus_per_run: Annotated[
        float | None,
        typer.Option(
            help="ray, slurm: GPUs per run (Ray takes fractions), default 0", rich_help_panel=CLUSTER_PANEL
        ),
    ] = None,
    mem_gb: Annotated[
        float | None, typer.Option(help="ray, slurm: memory per run, in GB", rich_help_panel=CLUSTER_PANEL)
    ] = None,
    max_retries: Annotated[
        int | None,
        typer.Option(
            help="ray: retries of a run whose worker died (it resumes after its last stage), default 3",
            rich_help_panel=CLUSTER_PANEL,
        ),
    ] = None,
    partition: Annotated[
        str | None, typer.Option(help="slurm: the partition to submit to", rich_help_panel=CLUSTER_PANEL)
    ] = None,
    time_min: Annotated[
        int | None,
        typer.Option(
            help="slurm: each task's time limit in minutes; a task that reaches it is requeued and "
            "resumes; default 60",
            rich_help_panel=CLUSTER_PANEL,
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            help="slurm: array tasks, each a shard of the grid, default one per run",
            rich_help_panel=CLUSTER_PANEL,
        ),
    ] = None,
    array_parallelism: Annotated[
        int | None,
        typer.Option(help="slurm: array tasks running at once, default 256", rich_help_panel=CLUSTER_PANEL),
    ] = None,
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait/--no-wait",
            help="slurm: wait for the array job and list its runs, or submit it and return; default: wait",
            rich_help_panel=CLUSTER_PANEL,
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="slurm: slurm, or local to run the array job's tasks on this machine first "
            "(submitit's local executor); default: slurm",
            rich_help_panel=CLUSTER_PANEL,
        ),
    ] = None,
) -> None:
    """Run every point of a sweep into the results store; finished runs are skipped, so re-run to resume."""
    from secateurs.core.errors import ConfigError
    from secateurs.results.backends import backend_options
    from secateurs.results.sweep import (
        expand_sweep,
        load_sweep,
        make_backend,
        parse_shard,
        run_sweep,
        select_shard,
    )

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
    options = backend_options(
        backend, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, mem_gb=mem_gb,
        max_retries=max_retries, partition=partition, time_min=time_min, shards=shards,
        array_parallelism=array_parallelism, wait=wait, cluster=cluster,
    )  # fmt: skip
    if shard is not None and backend == "slurm":
        raise ConfigError("--shard is not for --backend slurm: it cuts the grid into --shards tasks itself")
    selected = parse_shard(shard) if shard is not None else None
    config = load_sweep(sweep_file)
    points = expand_sweep(config, sweep_file.parent)  # every point validated before anything runs
    total = len(points)
    if selected is not None:
        points = select_shard(points, *selected)
    runner = make_backend(backend, workers=workers, options=options)  # the one run_sweep runs on
    if store is None:
        from secateurs.results.netfs import check_sqlite_store
        from secateurs.results.runner import db_path

        check_sqlite_store(db_path(root), shared_by_hosts=selected is not None or runner.spans_hosts())
    try:
        summary = run_sweep(
            points, root, progress=progress and console.is_terminal, backend=runner, store=store
        )
    except KeyboardInterrupt:
        err_console.print(
            Text("interrupted: finished runs are kept; run the same command to resume", style="yellow")
        )
        raise typer.Exit(130) from None
    title = f"sweep {config.name}: {len(points)} of {total} runs" + (f", shard {shard}" if shard else "")
    recipes = {point.hash: point.recipe for point in points}
    outcomes = [
        {
            "hash": o.hash, "name": o.name, "seed": recipes[o.hash].seed,
            "sparsity": recipes[o.hash].sparsity, "status": o.status,
            "accuracy": o.final.get("accuracy"), "attempts": o.attempts or None,
            "resumed_from": o.resumed_from, "final": o.final, "error": o.error,
        }
        for o in summary.outcomes
    ]  # fmt: skip
    line = f"sweep {config.name}: {summary.line()} (results in {root})"
    if summary.submitted:
        from secateurs.results.postgres import display

        where = f"--root {root}" + (f" --store {display(store)}" if store else "")
        line += f"; `secateurs runs {where}` shows how far it got"
    if json_:
        extra = {"submitted": summary.submitted} if summary.submitted else {}
        print_json(console, {"sweep": config.name, "root": str(root), "runs": outcomes, **extra})
        err_console.print(line, highlight=False)
    else:
        errors: dict[str, list[str]] = {}
        for o in outcomes:
            if o["error"]:
                errors.setdefault(o["error"], []).append(o["hash"])
        failures = [Text(f"failed ({' '.join(hashes)}):\n  {error}") for error, hashes in errors.items()]
        print_tables(console, [*_runs_table(title, outcomes, wide), *failures], wide=wide)
        console.print(line, highlight=False)
    if summary.failed:
        raise typer.Exit(1)


def _open_results(root: Path, store: str | None = None) -> ResultsStore:
    """The store's database for reading (ROOT/results.db, or the server `store`); a missing one
    is an error, never created here."""
    from secateurs.results.runner import store_at

    return store_at(root, store, create=False)


RUN_COLUMNS = (
    ("hash", Column("hash")),
    ("name", Column("name", label=True)),
    ("status", Column("status")),
    ("seed", Column("seed", right=True)),
    ("sparsity", Column("sparsity", right=True)),
    ("accuracy", Column("acc.", right=True)),
    ("attempts", Column("attempts", right=True)),
)
"""The columns of the `runs` and `sweep` tables, by the field of a run's JSON object each shows."""


COUNTERS = ("seed", "attempts")
"""Integer fields shown as they are: a seed of 12345 is no quantity to group as "12,345"."""


def _cell(key: str, value: Any) -> str:
    return "" if value is None else str(value) if key in COUNTERS else _fmt(value)


def _runs_table(title: str, runs: list[dict[str, Any]], wide: bool) -> list[RenderableType]:
    """One row per run (objects with RUN_COLUMNS' fields); long names get keys and a legend."""
    rows = [[_cell(k, run.get(k)) for k, _ in RUN_COLUMNS] for run in runs]
    return fit(title, [c for _, c in RUN_COLUMNS], rows, width=console.width, wide=wide)


def _run_fields(record: RunRecord, final: dict[str, float | None]) -> dict[str, Any]:
    """A stored run as JSON: its status fields, seed, target sparsity, final metrics and config."""
    from secateurs.results.db import RUN_FIELDS

    fields = {key: getattr(record, key) for key in RUN_FIELDS}
    sparsity = record.sparsity
    return {
        **fields,
        "seed": record.config.get("seed", 0),
        "sparsity": None if sparsity is None else float(sparsity),
        "accuracy": final.get("accuracy"),
        "final": final,
        "config": record.config,
    }


@app.command()
@friendly_errors
def runs(
    root: Annotated[Path, typer.Option(help=ROOT_HELP)] = DEFAULT_RESULTS_ROOT,
    store: StoreOpt = None,
    status: Annotated[
        str | None,
        typer.Option(
            help="only runs with this status: pending, running, finished, failed (an interrupted run, "
            "listed as interrupted, is running to the store: a sweep resumes it)"
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="only runs whose name matches this glob, e.g. 'imp*'")
    ] = None,
    show: Annotated[
        str | None, typer.Option(help="show one run (hash or unique prefix): config, metrics")
    ] = None,
    wide: WideOpt = False,
    json_: JsonOpt = False,
) -> None:
    """List the runs in a results store, or show one run's config and metrics."""
    with _open_results(root, store) as db:
        if show is not None:
            _show_run(db, show, wide=wide, json_=json_)
            return
        found = [_run_fields(r, db.final_metrics(r.hash)) for r in db.list_runs(status=status, name=name)]
        _mark_interrupted(db, found)
    if json_:
        print_json(console, found)
    else:
        print_tables(console, _runs_table(f"{len(found)} runs in {root}", found, wide), wide=wide)


def _mark_interrupted(db: ResultsStore, found: list[dict[str, Any]]) -> None:
    """Runs the store calls running but no process holds are shown as interrupted (a later sweep
    resumes them): a killed or Ctrl-C'd sweep leaves them so, and 'running' would be untrue.
    A server store knows whether any host holds a run; else the run directory's lock tells."""
    from secateurs.results.runner import held_by_a_process, run_dir

    for run in found:
        if run["status"] != "running":
            continue
        held = db.held(run["hash"])
        if held is None and db.root is not None:
            held = held_by_a_process(run_dir(db.root, run["hash"]))
        if held is False:
            run["status"] = "interrupted"


def _metric(value: float | None) -> str:
    """Stored metrics are floats; counts (parameters, MACs, steps) read better as integers."""
    if value is None:
        return ""
    return _fmt(int(value)) if value.is_integer() and abs(value) >= 1 else _fmt(value)


EventKey = tuple[int, "int | None", "int | None", "str | None"]
"""(stage, level, step, control) of one event of a run's metrics."""


def _events(db: ResultsStore, run: str, kind: str) -> dict[EventKey, dict[str, float | None]]:
    """The run's events of one kind ("evaluate", "train") in order, each its metrics by name."""
    events: dict[EventKey, dict[str, float | None]] = {}
    for row in db.metrics(run):
        if row.kind == kind:
            events.setdefault((row.stage, row.level, row.step, row.control), {})[row.name] = row.value
    return events


def _show_run(db: ResultsStore, prefix: str, *, wide: bool = False, json_: bool = False) -> None:
    """One run as key/value tables: its fields, config (YAML, every default filled in) and metrics.

    Evaluations are columns and their metrics rows (a run has a few evaluations and many metrics);
    training events are rows, their metrics spread over as many tables as the width needs."""
    import yaml

    record = db.find_run(prefix)
    fields = _run_fields(record, db.final_metrics(record.hash))
    _mark_interrupted(db, [fields])
    root = db.root if db.root is not None else Path()
    files = {kind: str(root / path) for kind, path in db.artifacts(record.hash).items()}
    evaluate, train = _events(db, record.hash, "evaluate"), _events(db, record.hash, "train")
    if json_:
        events = [
            {"kind": kind, "stage": s, "level": lv, "step": st, "control": c, "metrics": values}
            for kind, found in (("evaluate", evaluate), ("train", train))
            for (s, lv, st, c), values in found.items()
        ]
        print_json(console, {**fields, "files": files, "events": events})
        return
    info = Table.grid(padding=(0, 2))
    info.title, info.title_justify = f"run {record.hash}", "left"
    for key in ("name", "status", "seed", "sparsity", "attempts", "created", "started", "finished",
                "version", "git_revision", "error"):  # fmt: skip
        if fields[key] is not None and fields[key] != "":
            info.add_row(key, Text(_cell(key, fields[key])))
    for kind, path in files.items():
        info.add_row(f"file: {kind}", Text(path))
    console.print(info)
    console.print(yaml.safe_dump(record.config, sort_keys=False), highlight=False, markup=False)
    tables: list[RenderableType] = []
    if evaluate:
        keys = list(evaluate)
        names = list(dict.fromkeys(n for values in evaluate.values() for n in values))
        rows = [
            [field, *("" if k[i] is None else str(k[i]) for k in keys)]
            for i, field in ((1, "level"), (2, "step"), (3, "control"))
            if any(k[i] is not None for k in keys)
        ]
        rows += [[n, *(_metric(evaluate[k].get(n)) for k in keys)] for n in names]
        columns = [Column("metric"), *(Column(f"stage {k[0]}", right=True) for k in keys)]
        tables += fit("evaluate metrics", columns, rows, width=console.width, wide=wide, keys=1)
    if train:
        names = list(dict.fromkeys(n for values in train.values() for n in values if n != "step"))
        header = [Column(h, right=True) for h in ("stage", "level", "step")] + [Column("control")]
        rows = [
            [*("" if v is None else str(v) for v in key), *(_metric(values.get(n)) for n in names)]
            for key, values in train.items()
        ]
        columns = [*header, *(Column(n, right=True) for n in names)]
        tables += fit("train metrics", columns, rows, width=console.width, wide=wide, keys=4)
    print_tables(console, tables, wide=wide)


@app.command()
@friendly_errors
def export(
    out: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="file to write (atomically); - or none: standard output"),
    ] = None,
    root: Annotated[Path, typer.Option(help=ROOT_HELP)] = DEFAULT_RESULTS_ROOT,
    store: StoreOpt = None,
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
    with _open_results(root, store) as db:
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
def merge(
    out: Annotated[
        Path, typer.Argument(help="the merged results root to create (new, or an empty directory)")
    ],
    roots: Annotated[
        list[Path], typer.Argument(metavar="ROOT...", help="results roots to combine, e.g. one per host")
    ],
) -> None:
    """Combine results roots (results.db and runs/, e.g. one per host) into one new root.

    A run in several roots is kept once: a finished copy over an unfinished one; two finished
    copies that differ are refused. Nothing is written unless the whole merge succeeds."""
    from secateurs.results.merge import merge_roots

    summary = merge_roots(out, list(roots))
    console.print(summary.line(), highlight=False)


@app.command()
@friendly_errors
def report(
    root: Annotated[Path, typer.Option(help=ROOT_HELP)] = DEFAULT_RESULTS_ROOT,
    store: StoreOpt = None,
    name: Annotated[str | None, typer.Option(help="only runs whose name matches this glob")] = None,
    out: Annotated[
        Path | None, typer.Option(help="where report.md and the PNGs go (default ROOT/report)")
    ] = None,
    delta: Annotated[float, typer.Option(help="prune potential tolerance, in accuracy points")] = 0.5,
    html: Annotated[
        bool,
        typer.Option(
            "--html",
            help="also write report.html: one self-contained page (sortable tables, figures, every "
            "run's configuration) that fetches nothing",
        ),
    ] = False,
    wide: WideOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Markdown tables (mean ± std over seeds, prune potential) and PNG plots of finished runs."""
    from secateurs.front.tables import markdown, markdown_tables
    from secateurs.results.html_report import write_html_report
    from secateurs.results.report import write_report

    if not 0 < delta < 100:
        raise SecateursError(f"--delta must be between 0 and 100 points, got {delta}")
    target = out if out is not None else root / "report"
    path = write_report(root, target, name=name, delta=delta / 100, store=store)
    page = write_html_report(root, path, name=name, delta=delta / 100, store=store) if html else None
    text = path.read_text(encoding="utf-8")
    notes = err_console if json_ else console
    if json_:
        print_json(console, {"report": str(path), "tables": markdown_tables(text)})
    else:
        print_tables(console, markdown(text, width=console.width, wide=wide), wide=wide)
    notes.print(f"report written to {path}")
    if page is not None:
        notes.print(f"HTML report written to {page}")


def _add_llm_commands() -> None:
    """`secateurs llm ...` (its module imports this one's console, so it is added last; it loads
    transformers only when one of its commands runs)."""
    from secateurs.front.llm_cli import llm_app

    app.add_typer(llm_app, name="llm")


_add_llm_commands()


def main() -> None:
    """Entry point of the `secateurs` command.

    A torchrun worker leaves through `exit_worker`, whatever its exit code: the interpreter's
    teardown can abort a process whose gloo threads DDP kept alive (see `exit_worker`)."""
    if "WORLD_SIZE" in os.environ:  # else not under torchrun: no need to import torch here
        from secateurs.core.distributed import exit_worker, launched_by_torchrun

        if launched_by_torchrun():
            exit_worker(_exit_code(app))
    app()


def _exit_code(command: Callable[[], object]) -> int:
    """Run `command` (the typer app) and return the exit code it ends with, as `sys.exit` would."""
    try:
        command()
    except SystemExit as done:
        if isinstance(done.code, int) or done.code is None:
            return done.code or 0
        print(done.code, file=sys.stderr)  # sys.exit("message") prints the message and exits with 1
        return 1
    return 0


if __name__ == "__main__":
    main()
