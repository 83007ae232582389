"""Redraw the committed reports' figures from their committed results, without training anything.

The sweep benchmarks (PaI sweep, DST, ADMM, MNIST-1D sweep) keep their results store out of git
(benchmarks/.work); what is committed is each report.md, whose accuracy and ticket tables hold every
cell's mean ± std over seeds. This script reads those tables back into run summaries that
reproduce each cell's mean and std exactly (seed values mean ± std·z, z of mean 0 and std 1) and
draws them with `report_figures`, the code `write_report` uses, so a rerun of a benchmark draws
the same figures. The lottery-ticket benchmarks commit every seed's records
(lth_*.json, with the setup), which are drawn as `_lth.report` draws them; the PaT and finetuning-rate
benchmarks draw their own figure from the table or runs their JSON holds.

Figures that need what no committed file holds are left as they were: per-layer sparsity (the
runs' saved masks) and the MNIST-1D sweep's excess error under shifts (per-shift accuracies).

    python benchmarks/redraw_figures.py        # a few seconds; rewrites PNG + SVG in benchmarks/results
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt

from secateurs.results import figures
from secateurs.results.report import (
    Cell,
    RunSummary,
    TicketPoint,
    levels_from_records,
    plot_ticket_curves,
    report_figures,
    ticket_curves,
)

RESULTS = Path(__file__).parent / "results"
SWEEPS = ("pai_sweep", "dst_fashion_mnist", "admm_fashion_mnist", "sweep_mnist1d")
LOTTERY = ("lth_lenet300", "lth_mnist1d")
DRAWN_HERE = ("accuracy_vs_remaining", "sanity_checks", "ticket_curves")
"""The figures whose data a report.md holds; the others (layer sparsity, excess error) stay as they are."""

ACCURACY = re.compile(r"^### (?P<data>.+?) · (?P<model>.+?): test accuracy \(%\), mean ± std over seeds$")
LEVELS = re.compile(
    r"^### (?P<method>.+?) · (?P<data>.+?) · (?P<model>.+?)(?: \(to sparsity (?P<top>[\d.]+) %\))?: "
    r"test accuracy \(%\) per level"
)
CELL = re.compile(r"^(?P<mean>-?[\d.]+) ± (?P<std>[\d.]+)$")


def seed_values(mean: float, std: float, n: int) -> list[float]:
    """`n` values whose mean and sample standard deviation are exactly `mean` and `std`."""
    if n == 1:
        return [mean]
    z = [i - (n - 1) / 2 for i in range(n)]
    scale = (sum(v * v for v in z) / (n - 1)) ** 0.5
    return [mean + std * v / scale for v in z]


def parse_cell(text: str) -> tuple[float, float] | None:
    """ "84.66 ± 1.44" (percent) → (0.8466, 0.0144); "—" or empty → None."""
    match = CELL.match(text.strip())
    return (float(match["mean"]) / 100, float(match["std"]) / 100) if match else None


def table_rows(lines: list[str], start: int) -> tuple[list[str], list[list[str]]]:
    """The header and body cells of the markdown table after line `start`."""
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif table:
            break
    return table[0], table[2:]


def runs_from_report(text: str) -> list[RunSummary]:
    """Run summaries that reproduce a report.md's accuracy and ticket tables (see the module doc)."""
    lines = text.splitlines()
    runs: list[RunSummary] = []
    for i, line in enumerate(lines):
        if match := ACCURACY.match(line):
            runs += accuracy_runs(match["data"], match["model"], *table_rows(lines, i))
        elif match := LEVELS.match(line):
            top = float(match["top"]) / 100 if match["top"] else None
            runs += level_runs(match["method"], match["data"], match["model"], top, *table_rows(lines, i))
    return runs


def accuracy_runs(data: str, model: str, header: list[str], rows: list[list[str]]) -> list[RunSummary]:
    """Runs per (method, sparsity) cell of one accuracy table; the dense row becomes the dense
    evaluation of the first cell's runs (where `write_report` finds the dense reference)."""
    sparsities = [float(h.split(" %")[0]) / 100 for h in header[1:-1]]
    runs: list[RunSummary] = []
    dense: list[float] | None = None
    for row in rows:
        name, cells, seeds = row[0], row[1:-1], row[-1]
        parsed = [(s, c) for s, text in zip(sparsities, cells, strict=True) if (c := parse_cell(text))]
        n = int(seeds) if seeds.isdigit() else 3
        if (
            name == "dense" and dense is None
        ):  # the reference comes first, under "0 %" (older: the first column)
            dense = seed_values(*parsed[0][1], n)
            continue
        _, check = split_check(name)
        for sparsity, (mean, std) in parsed:
            for seed, value in enumerate(seed_values(mean, std, n)):
                runs.append(summary(name, data, model, sparsity, seed, value, check=check))
    for run, value in zip(runs, dense or [], strict=False):
        run.dense = {"accuracy": value, "sparsity": 0.0}
    return runs


def level_runs(
    method: str, data: str, model: str, top: float | None, header: list[str], rows: list[list[str]]
) -> list[RunSummary]:
    """Three runs (seeds) whose levels reproduce a ticket table: each series and the early stop."""
    series = header[2:-1]
    levels: list[dict[tuple[str | None, int], dict[str, float]]] = [{}, {}, {}]
    for row in rows:
        level, remaining = int(row[0]), float(row[1].split(" %")[0]) / 100
        stop = _step_cell(row[-1])
        for name, text in zip(series, row[2:-1], strict=True):
            cell = parse_cell(text)
            if cell is None:
                continue
            control = None if name == "ticket" else name.removeprefix("control=")
            for seed, value in enumerate(seed_values(*cell, 3)):
                metrics = {"remaining": remaining, "accuracy": value}
                if control is None and stop is not None:
                    metrics["best_step"] = seed_values(*stop, 3)[seed]
                levels[seed][(control, level)] = metrics
    sparsity = top if top is not None else 1 - min(float(r[1].split(" %")[0]) / 100 for r in rows)
    return [
        RunSummary(
            f"levels-{method}-{data}-{model}-{seed}", method, data, model, sparsity, seed, {}, levels=lv
        )
        for seed, lv in enumerate(levels)
    ]


def _step_cell(text: str) -> tuple[float, float] | None:
    match = CELL.match(text.strip())
    return (float(match["mean"]), float(match["std"])) if match else None


def split_check(name: str) -> tuple[str, str | None]:
    match = re.match(r"^(?P<method>.+) \[(?P<check>[^\]]+)\]$", name)
    return (match["method"], match["check"]) if match else (name, None)


def summary(
    method: str,
    data: str,
    model: str,
    sparsity: float,
    seed: int,
    value: float,
    *,
    check: str | None = None,
) -> RunSummary:
    return RunSummary(
        hash=f"{method}-{data}-{model}-{sparsity}-{seed}",
        method=method,
        data=data,
        model=model,
        sparsity=sparsity,
        seed=seed,
        final={"accuracy": value},
        check=check,
    )


def redraw_sweep(name: str) -> list[Path]:
    """Redraw one sweep report's figures and list the new ones in its report.md's "## Plots"."""
    folder = RESULTS / name
    report = folder / "report.md"
    text = report.read_text()
    drawn = report_figures(runs_from_report(text))
    written = [figures.save(fig, folder / f"{stem}.png") for stem, fig in drawn.items() if stem in DRAWN_HERE]
    plt.close("all")  # the figures not redrawn here
    after = "![accuracy_vs_remaining](accuracy_vs_remaining.png)\n"
    for path in reversed(written):  # a new figure goes where write_report puts it: after the accuracy
        link = f"![{path.stem}]({path.name})\n"
        if link not in text:
            text = text.replace(after, after + link, 1)
    report.write_text(text)
    return written


def redraw_lottery(stem: str) -> Path:
    """Redraw a lottery-ticket benchmark's figure from every seed's committed records."""
    stored = json.loads((RESULTS / f"{stem}.json").read_text())
    runs = [stored["runs"][k]["records"] for k in sorted(stored["runs"])]
    curves: dict[str, list[TicketPoint]] = ticket_curves([levels_from_records(r) for r in runs])
    dense = Cell([x["accuracy"] for r in runs for x in r if x.get("label") == "dense"])
    title = stored["setup"]["title"]
    return plot_ticket_curves({title: curves}, RESULTS / f"{stem}.png", dense={title: dense})


def redraw_own_plots() -> list[Path]:
    """The benchmarks that draw their own figure, from the tables and runs they committed."""
    import finetune_lr
    import pat_fashion_mnist

    pat = json.loads((RESULTS / "pat_fashion_mnist.json").read_text())
    finetune = json.loads((RESULTS / "finetune_lr.json").read_text())
    return [
        pat_fashion_mnist.plot(pat["table"], RESULTS / "pat_fashion_mnist.png"),
        finetune_lr.plot(finetune["runs"], finetune["budget"], RESULTS / "finetune_lr.png"),
    ]


def main() -> None:
    for name in SWEEPS:
        for path in redraw_sweep(name):
            print(path.relative_to(RESULTS.parent), "+ .svg")
    for stem in LOTTERY:
        print(redraw_lottery(stem).relative_to(RESULTS.parent), "+ .svg")
    for path in redraw_own_plots():
        print(path.relative_to(RESULTS.parent), "+ .svg")


if __name__ == "__main__":
    main()
