"""Benchmarks that run sweep files through the CLI into one results store, then summarise the store."""

from __future__ import annotations

import math
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from secateurs.core.fileio import atomic_write_text
from secateurs.results.report import RunSummary


def prepare(name: str, work: Path, results: Path, *, quick: bool, fresh: bool) -> tuple[str, Path, Path]:
    """(suffix, store root, output folder) of a sweep benchmark; `fresh` forgets the stored runs."""
    suffix = "_quick" if quick else ""
    root, out = work / f"{name}{suffix}", results / f"{name}{suffix}"
    if fresh and root.exists():
        shutil.rmtree(root)
    return suffix, root, out


def run_sweeps(sweeps: list[dict[str, Any]], *, root: Path, out: Path, workers: int) -> float:
    """Write each sweep as `out/NAME.yaml` and run it with `secateurs sweep` into `root`; minutes taken.

    Finished runs are skipped by the store, so an interrupted benchmark resumes where it stopped.
    """
    started = time.perf_counter()
    cli = [sys.executable, "-m", "secateurs"]
    for sweep in sweeps:
        sweep_file = atomic_write_text(out / f"{sweep['name']}.yaml", yaml.safe_dump(sweep, sort_keys=False))
        print(f"== {sweep['name']}", flush=True)
        command = [*cli, "sweep", str(sweep_file), "--root", str(root), "--workers", str(workers)]
        subprocess.run(command, check=True)
    return (time.perf_counter() - started) / 60


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def cells(runs: list[RunSummary], metric: str) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{data·model: {method: {sparsity: {mean, std, n}}}} of a final metric over seeds."""
    values: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in runs:
        if metric in r.final and not math.isnan(r.final[metric]):
            values[f"{r.data}·{r.model}"][r.method][f"{r.sparsity:g}"].append(r.final[metric])
    return {
        pair: {
            method: {
                s: {"mean": mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}
                for s, v in sorted(by_sparsity.items(), key=lambda kv: float(kv[0]))
            }
            for method, by_sparsity in sorted(methods.items())
        }
        for pair, methods in sorted(values.items())
    }


def store_minutes(root: Path) -> dict[str, float]:
    """From the store's timestamps: wall minutes while at least one run was running (the union of
    the runs' spans, so a benchmark resumed hours later does not count the pause), and the runs'
    own minutes summed (what the grid costs, whichever invocation ran it)."""
    from datetime import datetime

    from secateurs.results.db import ResultsDB

    with ResultsDB(root / "results.db", create=False) as db:
        spans = [
            (datetime.fromisoformat(r.started), datetime.fromisoformat(r.finished))
            for r in db.list_runs(status="finished")
            if r.started and r.finished
        ]
    if not spans:
        return {"wall_minutes": 0.0, "run_minutes": 0.0}
    busy, end = 0.0, None
    for a, b in sorted(spans):
        if end is None or a > end:
            busy, end = busy + (b - a).total_seconds(), b
        elif b > end:
            busy, end = busy + (b - end).total_seconds(), b
    wall = busy / 60
    total = sum((b - a).total_seconds() for a, b in spans) / 60
    return {"wall_minutes": round(wall, 1), "run_minutes": round(total, 1)}


def lenet_dst_cells(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The DST benchmarks' two tables from a store: accuracy and training FLOPs vs dense, by method
    and sparsity, of Fashion-MNIST LeNet-5."""
    from secateurs.results.db import ResultsDB
    from secateurs.results.report import collect

    with ResultsDB(root / "results.db", create=False) as db:
        runs = collect(db)
    pair = "fashion_mnist·lenet5"
    return cells(runs, "accuracy").get(pair, {}), cells(runs, "train_flops_vs_dense").get(pair, {})


def dense_fashion_recipe(model: Any, epochs: int, description: str) -> dict[str, Any]:
    """The dense reference a Fashion-MNIST sweep benchmark trains: SGD 0.1 momentum 0.9, cosine, batch 128."""
    return {
        "name": "dense",
        "description": description,
        "data": "fashion_mnist",
        "model": model,
        "train": {
            "epochs": epochs,
            "batch_size": 128,
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
            "lr_schedule": {"name": "cosine"},
        },
        "stages": [{"train": {}}, {"evaluate": {"label": "dense"}}],
    }
