"""`secateurs demo`: every method of the library on MNIST-1D, in a few minutes on a CPU.

Each method is a preset recipe plus overrides, run through the same pipeline users call, so the
demo doubles as an end-to-end check. The dense baseline is trained once per demo with the same
recipe defaults the methods use.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.core.fileio import atomic_write_text
from secateurs.core.masks import masks_of
from secateurs.data import DataSplits, load_dataset
from secateurs.front.console import err_console, make_console
from secateurs.front.tables import Column, fit, markdown, print_json, print_tables
from secateurs.pipeline.metrics import model_metrics
from secateurs.pipeline.recipe import load_recipe, recipe_quick_form
from secateurs.pipeline.runner import run_recipe

# (label, preset, overrides): a new method adds one line here.
DEMO_METHODS: list[tuple[str, str, list[str]]] = [
    ("one-shot magnitude", "oneshot-magnitude", []),
    ("one-shot magnitude, ERK", "oneshot-magnitude", ["stages.2.prune.allocation=erk"]),
    (
        "one-shot Taylor",
        "oneshot-magnitude",
        ["stages.2.prune.criterion=taylor", "stages.2.prune.data_batches=4"],
    ),
    (
        "one-shot random",
        "oneshot-magnitude",
        ["stages.2.prune.criterion=random", "stages.2.prune.allocation=uniform"],
    ),
    (
        "one-shot channels, L1 (structured)",
        "oneshot-magnitude",
        [f"stages.2.prune.{k}" for k in ("structure=channel", "criterion=l1", "allocation=uniform")],
    ),
    ("iterative magnitude", "iterative-magnitude", []),
    ("gradual magnitude", "gradual-magnitude", []),
    # Half the weights per level (the output layer a quarter) instead of the preset's 20 % (10 %),
    # and 20 epochs per level, so that IMP reaches 95 % in 5 levels within the demo's budget. The
    # output layer is named by its place ($last): the models' own names differ (classifier.1 in cnn1d).
    (
        "IMP (lottery ticket, rewind)",
        "lottery-ticket",
        [
            "stages.2.repeat.schedule.rate=0.5",
            "stages.2.repeat.schedule.layer_rates={$last: 0.25}",
            "train.epochs=20",
        ],
    ),
    ("SNIP (at init)", "prune-at-init", []),
    ("GraSP (at init)", "prune-at-init", ["stages.0.prune.criterion=grasp"]),
    (
        "SynFlow (at init)",
        "prune-at-init",
        ["stages.0.prune.criterion=synflow", "stages.0.prune.rounds=100"],
    ),
    (
        "random ERK (at init)",
        "prune-at-init",
        ["stages.0.prune.criterion=random", "stages.0.prune.allocation=erk"],
    ),
    ("RigL (dynamic sparse)", "dynamic-sparse", []),
    ("SET (dynamic sparse)", "dynamic-sparse", ["stages.2.train.dst.method=set"]),
]
DEMO_SHORT = {
    "one-shot channels, L1 (structured)": "L1 channels",
    "IMP (lottery ticket, rewind)": "IMP (rewind)",
}
"""Short forms of the labels longer than the room an 80-column table leaves them (the legend
under the table gives the full label)."""
SPARSITIES = [0.5, 0.8, 0.9, 0.95]
QUICK_SPARSITIES = [0.5, 0.9]


def quick_overrides(preset: str) -> list[str]:
    """Shrink every training budget: the preset's quick form (`secateurs run PRESET --quick`)."""
    return recipe_quick_form(preset)


def demo_sweep(
    *,
    quick: bool = False,
    seeds: list[int] | None = None,
    models: list[str] | None = None,
    sparsities: list[float] | None = None,
) -> dict[str, Any]:
    """The demo's methods as a sweep file (plain data): every method × sparsity, beyond-accuracy metrics."""
    return {
        "name": "demo",
        "recipes": [
            {
                "recipe": preset,
                "label": label,
                "set": [*overrides, *(quick_overrides(preset) if quick else [])],
            }
            for label, preset, overrides in DEMO_METHODS
        ],
        "sparsities": sparsities or (QUICK_SPARSITIES if quick else SPARSITIES),
        "models": models or ["mlp"],
        "data": ["mnist1d"],
        "seeds": seeds or [0],
        "set": ["beyond=true"],
    }


DEMO_OUTPUTS = (
    "demo_results.json",
    "accuracy_vs_sparsity.png",
    "accuracy_vs_sparsity.svg",
    "results",
    "report",
)
"""Everything the demo writes into its directory (the last two with --report)."""


def prepare_demo_dir(out: Path, *, overwrite: bool = False) -> None:
    """Refuse a non-empty `out` unless `overwrite`, and then only a previous demo's directory, whose
    outputs are removed (a report's results store too: the new demo must not mix in old runs)."""
    from secateurs.pipeline.outputs import check_output_dir, foreign_entries, not_ours

    target = check_output_dir(out, overwrite=True)
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not overwrite:
        raise ConfigError(
            f"output directory {target} already exists and is not empty",
            fix="choose another --out, or pass --overwrite to replace a previous demo's directory",
        )
    foreign = foreign_entries(target, DEMO_OUTPUTS)
    if foreign:
        raise not_ours(target, foreign, "the demo's", "--overwrite")
    for entry in target.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def demo_row(method: str, target: float, model: nn.Module, data: DataSplits) -> dict[str, Any]:
    """One row of the demo's table: the model's metrics and `remaining_params`, the parameters its
    masks keep (every unmasked one counts). Counted from the masks, not the nonzero weights: a
    weight a DST updater has just regrown is kept, and starts at exactly zero."""
    metrics = model_metrics(model, data)
    masks = masks_of(model)
    pruned = masks.numel() - masks.kept() if masks is not None else 0
    return {"method": method, "target": target, **metrics, "remaining_params": metrics["params"] - pruned}


def run_demo_report(
    out: Path, *, quick: bool = False, workers: int = 1, console: Console | None = None
) -> Path:
    """The demo through the results store: a sweep into OUT/results, then the report in OUT/report."""
    from secateurs.results.report import write_report
    from secateurs.results.sweep import expand_sweep, parse_sweep, run_sweep

    console = console or make_console()
    points = expand_sweep(parse_sweep(demo_sweep(quick=quick)))
    summary = run_sweep(points, out / "results", workers=workers, progress=console.is_terminal)
    console.print(summary.line())
    path = write_report(out / "results", out / "report")
    print_tables(console, markdown(path.read_text(encoding="utf-8"), width=console.width, short=DEMO_SHORT))
    console.print(f"report: {path}")
    return path


def run_demo(
    out: Path,
    *,
    quick: bool = False,
    console: Console | None = None,
    wide: bool = False,
    as_json: bool = False,
) -> list[dict[str, Any]]:
    """Run every demo method at every sparsity; print a table (or with `as_json` its rows as JSON, and
    everything else on stderr), write JSON and a PNG plot into `out`."""
    console = console or make_console()
    notes = err_console if as_json else console
    data = load_dataset("mnist1d")
    sparsities = QUICK_SPARSITIES if quick else SPARSITIES
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()

    dense_recipe = load_recipe(
        "oneshot-magnitude", ["stages=[{train: {}}]", *(["train.epochs=6"] if quick else [])]
    )
    dense = run_recipe(dense_recipe, data=data)
    rows.append(demo_row("dense", 0.0, dense.model, data))

    total = len(DEMO_METHODS) * len(sparsities)
    with notes.status(Text("pruning")) as status:
        for i, (label, preset, overrides) in enumerate(DEMO_METHODS):
            for j, sparsity in enumerate(sparsities):
                status.update(Text(f"[{i * len(sparsities) + j + 1}/{total}] {label} at sparsity {sparsity}"))
                extra = quick_overrides(preset) if quick else []
                recipe = load_recipe(preset, [*overrides, *extra, f"sparsity={sparsity}"])
                result = run_recipe(recipe, data=data)
                rows.append(demo_row(label, sparsity, result.model, data))

    if as_json:
        print_json(console, rows)
    else:
        table = demo_table(rows, time.perf_counter() - started, width=console.width, wide=wide)
        print_tables(console, [table], wide=wide)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "demo_results.json", json.dumps(rows, indent=2))
    plot_path = plot_accuracy_vs_sparsity(rows, out / "accuracy_vs_sparsity.png")
    notes.print(f"table: {out / 'demo_results.json'}  plot: {plot_path}", soft_wrap=True)
    return rows


DEMO_COLUMNS = (
    Column("method", label=True),
    Column("sparsity", right=True),
    Column("accuracy", right=True),
    Column("remaining", right=True),  # weights the masks keep (a DST model's regrown zeros count)
    Column("params", right=True, once=True),
    Column("nnz MACs", right=True),
    Column("MACs", right=True, once=True),
)


def demo_table(
    rows: list[dict[str, Any]], seconds: float, *, width: int = 80, wide: bool = False
) -> RenderableType:
    """The demo's rows fitted to `width` cells: method names too long for it are shortened
    (`DEMO_SHORT`, else abbreviated, else keys), with a legend giving them in full."""
    cells = [
        [
            r["method"],
            f"{r['target']:.2f}",
            f"{100 * r['accuracy']:.2f} %",
            f"{r['remaining_params']:,}",
            f"{r['params']:,}",
            f"{r['nonzero_macs']:,}",
            f"{r['macs']:,}",
        ]
        for r in rows
    ]
    title = f"MNIST-1D MLP, every method ({seconds:.0f} s)"
    return Group(*fit(title, DEMO_COLUMNS, cells, width=width, wide=wide, short=DEMO_SHORT))


def plot_accuracy_vs_sparsity(rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against the pruned layers' remaining weights (log), one colour per method, the dense
    model as a dashed line (`secateurs.results.figures`); writes the PNG and an SVG beside it."""
    from secateurs.results import figures

    dense = next((r for r in rows if r["method"] == "dense"), None)
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"))
    curves = [
        figures.Curve(
            m, None, [(1 - r["sparsity"], figures.Stat(r["accuracy"])) for r in rows if r["method"] == m]
        )
        for m in methods
    ]
    panel = figures.Panel("MNIST-1D MLP: accuracy vs remaining weights", curves,
                          figures.Stat(dense["accuracy"]) if dense else None)  # fmt: skip
    fig = figures.accuracy_figure([panel])
    fig.axes[0].set_xlabel("remaining weights of the pruned layers (%), log scale", fontsize=8)
    return figures.save(fig, path)
