"""Data-parallel scaling: LeNet-300-100 IMP (2 levels) on Fashion-MNIST, 1 vs 2 gloo processes.

The same recipe runs three ways through the CLI, one after the other on this machine:
  1 process, 1 thread           `secateurs run R --threads 1`
  1 process, 2 threads          `secateurs run R --threads 2` (the other way to use both cores)
  2 processes (DDP, gloo)       `secateurs run R --nproc 2` (torchrun; 1 thread each)
The recipe: train E epochs (SGD 0.1, momentum 0.9, cosine, batch 128), then 2 IMP levels, each
pruning 20 % of every layer's surviving weights by magnitude (output layer 10 %), rewinding to
the initialisation and retraining E epochs. Per way: wall time of the whole command (the torchrun
row includes its start-up, measured apart by a run with no training), the final masks (a hash,
and whether they equal the one-process masks) and the accuracy of every evaluation. With the
same global batches the masks must be equal; weights and accuracies agree up to floating-point
summation order (DDP averages two half-batch gradients).

    python benchmarks/ddp_scaling.py            # about 5 minutes (E = 2)
    python benchmarks/ddp_scaling.py --quick    # about a minute (100 steps per training)
Writes benchmarks/results/ddp_scaling{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from secateurs.checkpoint import load_checkpoint
from secateurs.distributed import masks_digest
from secateurs.fileio import atomic_write_text

HERE = Path(__file__).parent
RESULTS = HERE / "results"
SRC = HERE.parent / "src"


LEVELS = {"name": "iterative", "levels": 2, "rate": 0.2, "layer_rates": {"classifier": 0.1}}


def recipe(budget: dict[str, float]) -> dict[str, Any]:
    """The IMP recipe; `budget` is {"epochs": E} or {"iterations": n} per training."""
    return {
        "name": "ddp-imp",
        "seed": 0,
        "data": "fashion_mnist",
        "model": "lenet300",
        "sparsity": 1 - 0.8**2,
        "train": {
            **budget,
            "batch_size": 128,
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
            "lr_schedule": {"name": "cosine"},
        },
        "stages": [
            {"train": {}},
            {"evaluate": {"label": "dense"}},
            {
                "repeat": {
                    "schedule": {
                        "name": "iterative",
                        "levels": 2,
                        "rate": 0.2,
                        "layer_rates": {"classifier": 0.1},
                    },
                    "stages": [
                        {"prune": {"criterion": "magnitude", "allocation": "uniform"}},
                        {"reset": {"mode": "rewind", "step": 0}},
                        {"train": {}},
                        {"evaluate": {"label": "level"}},
                    ],
                }
            },
        ],
    }


def run(path: Path, out: Path, *, threads: int, nproc: int) -> float:
    """Wall seconds of `secateurs run` with these settings (a failure stops the benchmark)."""
    command = [sys.executable, "-m", "secateurs", "run", str(path), "--out", str(out), "--no-progress"]
    command += ["--threads", str(threads), "--nproc", str(nproc)]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def outcome(out: Path) -> dict[str, Any]:
    payload = load_checkpoint(out / "model.pt")
    masks = {k: v for k, v in payload["masks"].items()}
    records = json.loads((out / "metrics.json").read_text())
    return {
        "masks": masks,
        "mask_hash": masks_digest(masks),
        "accuracies": [round(r["accuracy"], 4) for r in records],
        "sparsity": round(records[-1]["sparsity"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 steps per training instead of 2 epochs")
    args = parser.parse_args()
    budget = {"iterations": 100} if args.quick else {"epochs": 2}
    per_training = "100 steps" if args.quick else "2 epochs"
    ways = {"1 process, 1 thread": (1, 1), "1 process, 2 threads": (2, 1), "2 processes (DDP, gloo)": (1, 2)}
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}",
        "recipe": "LeNet-300-100 on Fashion-MNIST, IMP 2 levels (20 %/level, output 10 %), "
        f"{per_training} per training, batch 128",
        "ways": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe(budget), sort_keys=False))
        idle = folder / "idle.yaml"  # torchrun's start-up and teardown, with (almost) no training
        idle_recipe = recipe({"iterations": 1})
        idle_recipe["stages"] = [{"train": {}}, {"evaluate": {"label": "idle"}}]
        idle.write_text(yaml.safe_dump(idle_recipe, sort_keys=False))
        results["startup_s"] = {
            "1 process": round(run(idle, folder / "idle1", threads=1, nproc=1), 2),
            "torchrun, 2 processes": round(run(idle, folder / "idle2", threads=1, nproc=2), 2),
        }
        outcomes = {}
        for name, (threads, nproc) in ways.items():
            seconds = run(
                path, folder / name.replace(" ", "_").replace(",", ""), threads=threads, nproc=nproc
            )
            outcomes[name] = outcome(folder / name.replace(" ", "_").replace(",", ""))
            print(f"{name}: {seconds:.1f} s, accuracies {outcomes[name]['accuracies']}", flush=True)
            results["ways"][name] = {"wall_s": round(seconds, 2)} | {
                k: v for k, v in outcomes[name].items() if k != "masks"
            }
    compare(results, outcomes)
    write(results, args.quick)


def compare(results: dict[str, Any], outcomes: dict[str, dict[str, Any]]) -> None:
    """Masks, accuracies and times of every way against one process with one thread."""
    base = outcomes["1 process, 1 thread"]
    for name, entry in results["ways"].items():
        other = outcomes[name]["masks"]
        differing = sum(int((base["masks"][k] != other[k]).sum()) for k in base["masks"])
        entry["masks_equal_to_1_process"] = differing == 0
        entry["mask_entries_differing"] = differing
        entry["mask_agreement"] = 1 - differing / sum(m.numel() for m in base["masks"].values())
        entry["max_accuracy_difference"] = max(
            abs(a - b) for a, b in zip(entry["accuracies"], base["accuracies"], strict=True)
        )
        startup = results["startup_s"]["torchrun, 2 processes" if "DDP" in name else "1 process"]
        entry["wall_minus_startup_s"] = round(entry["wall_s"] - startup, 2)
    one = results["ways"]["1 process, 1 thread"]
    for entry in results["ways"].values():
        entry["speedup_vs_1_process"] = round(one["wall_s"] / entry["wall_s"], 3)
        entry["speedup_minus_startup"] = round(one["wall_minus_startup_s"] / entry["wall_minus_startup_s"], 3)


def write(results: dict[str, Any], quick: bool) -> None:
    stem = "ddp_scaling" + ("_quick" if quick else "")
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    lines = [
        "# Data-parallel scaling: 1 vs 2 gloo processes",
        "",
        f"{results['machine']}. {results['recipe']}. Wall time of the whole `secateurs run` command.",
        "",
        "| way | wall s | speed-up | without start-up: s | speed-up | mask entries ≠ 1 process (agreement) "
        "| accuracies (dense, level 1, level 2) | max acc. diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in results["ways"].items():
        lines.append(
            f"| {name} | {e['wall_s']:.1f} | {e['speedup_vs_1_process']:.2f} | "
            f"{e['wall_minus_startup_s']:.1f} | {e['speedup_minus_startup']:.2f} | "
            f"{e['mask_entries_differing']:,} ({100 * e['mask_agreement']:.3f} %) | "
            f"{', '.join(f'{a:.4f}' for a in e['accuracies'])} | {e['max_accuracy_difference']:.4f} |"
        )
    start = results["startup_s"]
    lines += [
        "",
        f"Start-up and teardown with one training step: {start['1 process']:.1f} s for one process, "
        f"{start['torchrun, 2 processes']:.1f} s for torchrun with 2 processes (included in wall s).",
        "",
        "Masks are equal exactly when the weights are equal bit for bit. DDP averages two half-batch "
        "gradients and a 2-thread matmul sums in another order than a 1-thread one, so after training "
        "the weights differ in their last bits and the few weights that sit at the magnitude threshold "
        "can swap. `tests/test_distributed.py` checks on small models that the masks are equal on every "
        "rank and equal to the one-process run; the ranks' masks are compared by hash after every prune.",
    ]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
