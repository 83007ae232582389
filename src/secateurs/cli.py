"""Command-line interface (typer + rich). Errors are one red line and exit code 2."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from secateurs.errors import SecateursError

app = typer.Typer(
    name="secateurs",
    help="Neural network pruning: every method is a recipe of train/prune/reset/repeat/evaluate stages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn user errors into one clear message and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SecateursError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted: nothing was written[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )


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
        table.add_row(*[_fmt(row.get(c, "")) if row.get(c) is not None else "" for c in cols])
    return table


@app.command()
@friendly_errors
def run(
    recipe: Annotated[str, typer.Argument(help="recipe YAML path or preset name (see `secateurs methods`)")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. --set train.epochs=3")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="write recipe, metrics and checkpoint to this directory")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    threads: Annotated[
        int, typer.Option(help="CPU threads for torch: 1 suits small models; raise it for large conv nets")
    ] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a recipe: train, prune, reset, repeat and evaluate as its stages say."""
    import secateurs

    _setup_logging(verbose)
    _set_threads(threads)
    result = secateurs.run(
        recipe, overrides=list(set_ or []), out=out, progress=progress and sys.stderr.isatty()
    )
    console.print(records_table(result.records, f"recipe {result.recipe.name}"))
    if out is not None:
        console.print(f"results written to {out}")


@app.command()
@friendly_errors
def demo(
    out: Annotated[Path, typer.Option(help="where to write the table (JSON) and the plot (PNG)")] = Path(
        "secateurs-demo"
    ),
    quick: Annotated[bool, typer.Option(help="fewer epochs and sparsities (under a minute)")] = False,
    threads: Annotated[int, typer.Option(help="CPU threads for torch (the demo's MLP is fastest on 1)")] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train a small model on MNIST-1D and prune it with every method, at several sparsities."""
    from secateurs.demo import run_demo

    _setup_logging(verbose)
    _set_threads(threads)
    run_demo(out, quick=quick, console=console)


@app.command()
def methods() -> None:
    """List criteria, allocations, structures, schedules, resets and preset recipes."""
    from secateurs.allocation import ALLOCATIONS
    from secateurs.criteria import CRITERIA
    from secateurs.recipe import preset_names, read_recipe_text
    from secateurs.schedules import SCHEDULE_NAMES
    from secateurs.structures import STRUCTURES

    table = _table("pruning axes", "axis", "name", "what it does")
    for axis, reg in (("criterion", CRITERIA), ("allocation", ALLOCATIONS), ("structure", STRUCTURES)):
        for name in reg.names():
            table.add_row(axis, name, reg.help(name))
    for name, cls in SCHEDULE_NAMES.items():
        table.add_row("schedule", name, (cls.__doc__ or "").strip().splitlines()[0])
    for name, what in (
        ("keep", "continue from the pruned weights (finetune)"),
        ("rewind", "restore weights (and optimizer state) saved at step k; k = 0 is the init"),
        ("reinit", "fresh random weights under the same masks"),
    ):
        table.add_row("reset", name, what)
    console.print(table)
    presets = _table("preset recipes (secateurs run NAME)", "name", "description")
    import yaml

    for name in preset_names():
        text, _ = read_recipe_text(name)
        presets.add_row(name, str(yaml.safe_load(text).get("description", "")))
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
    from secateurs.inspection import inspect_checkpoint

    inspect_checkpoint(checkpoint, console)


def main() -> None:
    """Entry point of the `secateurs` command."""
    app()


if __name__ == "__main__":
    main()
