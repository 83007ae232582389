"""Per-run overhead of the sweep backends on a grid of tiny runs (issue 22): local vs Ray vs submitit.

Each way runs the same grid of n tiny runs (an MLP 20-16-3 on synthetic data, 3 training steps,
global magnitude prune to 50 %, evaluate: a fraction of a second of work) into a fresh results
store, through `run_sweep`:
  local, 1 process        the runs one after another in this process (the work itself)
  local, 2 workers        `--workers 2`: two spawned processes
  Ray, 2 CPUs             `--backend ray`: a local Ray instance started (and shut down) by the sweep,
                          one task per run, 1 CPU each
  submitit, 1 run/task    `--backend slurm --cluster local`: one array task per run (the default),
                          each its own process, all started at once by the local executor
  submitit, 2 shards      the same with `--shards 2`: each task runs half of the grid
Measured: the wall time of the whole call (the ratios compare it against local with 2 workers, the
same two cores, and against one process); from the moments the outcomes arrive, start-up = time
to the first outcome (starting Ray, spawning workers, submitting, importing torch) and, where
outcomes stream run by run, steady per run = (last − first outcome) / (n − 1).
Every way's final metrics are checked equal to the one-process sweep's, bit for bit.

    python benchmarks/sweep_backends.py            # about 2 minutes on an idle machine (n = 32)
    python benchmarks/sweep_backends.py --quick    # 3-5 minutes on a busy 2-core machine (n = 8)
Writes benchmarks/results/sweep_backends{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from secateurs.core.fileio import atomic_write_text
from secateurs.results.sweep import SweepPoint, expand_sweep, parse_sweep, run_sweep

RESULTS = Path(__file__).parent / "results"
TINY: dict[str, Any] = {  # the tests' tiny experiment (tests/tiny.py)
    "name": "tiny",
    "data": {
        "name": "synthetic",
        "options": {"input_shape": [20], "num_classes": 3, "num_train": 96, "num_test": 48},
    },
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "sparsity": 0.5,
    "train": {"iterations": 3, "batch_size": 32},
    "stages": [{"train": {}}, {"prune": {}}, {"evaluate": {"label": "final"}}],
}

WAYS: dict[str, dict[str, Any]] = {
    "local, 1 process": {"backend": "local"},
    "local, 2 workers": {"backend": "local", "workers": 2},
    "Ray, 2 CPUs": {"backend": "ray", "options": {"cpus_per_run": 1}},
    "submitit, 1 run/task": {"backend": "slurm", "options": {"cluster": "local", "time_min": 30}},
    "submitit, 2 shards": {"backend": "slurm", "options": {"cluster": "local", "time_min": 30, "shards": 2}},
}
BASELINE, PARALLEL = "local, 1 process", "local, 2 workers"


def grid(folder: Path, runs: int) -> list[SweepPoint]:
    """`runs` tiny runs, differing by seed."""
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY), encoding="utf-8")
    sweep = parse_sweep({"name": "overhead", "recipes": ["tiny.yaml"], "seeds": list(range(runs))})
    return expand_sweep(sweep, folder)


def timed(
    points: list[SweepPoint], root: Path, way: dict[str, Any]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Start-up, per-run and wall seconds of one sweep into a fresh store, and its final metrics."""
    arrivals: list[float] = []
    started = time.perf_counter()
    summary = run_sweep(
        points,
        root,
        backend=way["backend"],
        workers=way.get("workers", 1),
        options=way.get("options"),
        on_outcome=lambda _: arrivals.append(time.perf_counter()),
    )
    wall = time.perf_counter() - started
    if summary.line() != f"{len(points)} finished, 0 skipped, 0 failed":
        raise RuntimeError(f"{root.name}: {summary.line()}: {[o.error for o in summary.failed]}")
    streams = way["backend"] != "slurm"  # submitit hands a task's outcomes back when the task ends
    times = {
        "startup_s": arrivals[0] - started,
        "per_run_s": (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) if streams else None,
        "wall_s": wall,
    }
    return times, {o.hash: o.final for o in summary.outcomes}


def bench(runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sweep-backends-") as tmp:
        folder = Path(tmp)
        points = grid(folder, runs)
        reference: dict[str, Any] = {}
        run_sweep(points[:1], folder / "warm-up")  # imports and first-call costs, not the work
        for index, (name, way) in enumerate(WAYS.items()):
            times, finals = timed(points, folder / str(index), way)
            if name == BASELINE:
                reference = finals
            equal = finals == reference
            print(f"  {name}: {times}, equal: {equal}", flush=True)
            if not equal:
                raise RuntimeError(f"{name}: final metrics differ from the one-process sweep")
            results[name] = {key: value and round(value, 4) for key, value in times.items()}
            results[name]["equal_to_one_process"] = equal
    for r in results.values():
        r["wall_per_run_s"] = round(r["wall_s"] / runs, 4)
        r["wall_over_workers"] = round(r["wall_s"] / results[PARALLEL]["wall_s"], 3)
        r["wall_over_one_process"] = round(r["wall_s"] / results[BASELINE]["wall_s"], 3)
        steady = r["per_run_s"]
        r["per_run_over_workers"] = steady and round(steady / results[PARALLEL]["per_run_s"], 3)
    return results


def write(results: dict[str, Any], quick: bool) -> None:
    stem = "sweep_backends_quick" if quick else "sweep_backends"
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    n = results["runs"]
    lines = [
        "# Sweep backends: per-run overhead on a grid of tiny runs",
        "",
        f"{results['machine']}. A grid of {n} tiny runs (MLP 20-16-3, synthetic data, 3 steps, "
        "prune 50 %, evaluate) into a fresh SQLite store per way, through `run_sweep`."
        + (" Quick run." if quick else ""),
        f"Machine shared with other jobs: load average {results['load_before']} before, "
        f"{results['load_after']} after.",
        "",
        "| way | wall s | wall / run s | wall / 2 workers | wall / 1 process | start-up s | steady s/run "
        "| steady / 2 workers | = 1 process |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def number(value: float | None, digits: int) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    for name, r in results["ways"].items():
        lines.append(
            f"| {name} | {r['wall_s']:.2f} | {r['wall_per_run_s']:.2f} | {r['wall_over_workers']:.2f} | "
            f"{r['wall_over_one_process']:.2f} | {r['startup_s']:.2f} | {number(r['per_run_s'], 3)} | "
            f"{number(r['per_run_over_workers'], 2)} | {'yes' if r['equal_to_one_process'] else 'NO'} |"
        )
    lines += [
        "",
        "Wall: the whole call, start-up and shut-down included (the ratios compare these, on the same "
        "grid). Start-up: time to the first outcome (starting Ray, spawning workers, submitting, importing "
        "torch). Steady s/run: (last − first outcome) / (n − 1), what one more run costs once the backend "
        "is up, where outcomes stream run by run (—: submitit hands back a task's outcomes when the task "
        "ends). A submitit task is a fresh Python process that imports torch and secateurs before its "
        "runs, so one run per task pays that for every run (the local executor starts all the tasks at "
        "once, 2 cores share them); shards amortise it, as on Slurm, where the scheduler's own latency "
        "(seconds to minutes per task) comes on top. Ray keeps its workers between tasks. "
        "= 1 process: every run's final metrics equal the one-process sweep's. "
        "On a busy 2-core machine these times move by tens of percent between runs: read the ratios as "
        "orders of magnitude.",
    ]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a grid of 8 runs (32 otherwise)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    runs = 8 if args.quick else 32
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}",
        "runs": runs,
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    results["ways"] = bench(runs)
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    write(results, args.quick)
    print(json.dumps(results["ways"], indent=2))


if __name__ == "__main__":
    main()
