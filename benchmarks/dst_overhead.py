"""Time per training epoch of RigL and SET over dense training: same model, data and loop.

Three variants train side by side in one process on one thread, through the library's own
training loop (`secateurs.train.train`) with the training-FLOPs counter every pipeline run has:
  dense   the dense model;
  RigL    90 % sparse (random ERK), RigL updates every 100 steps (drop fraction 0.3, cosine);
  SET     the same with SET updates.
Updates run for the whole timed epoch (end_fraction 1, the worst case: real runs stop at 75 %).
Rounds interleave the variants (rotating their order); each round's epoch time of a variant is
turned into a ratio against that round's dense epoch, and the median ratio over rounds is
reported, for the thread's CPU time (steadier on a shared machine) and for wall time.

    python benchmarks/dst_overhead.py            # about 8 minutes (LeNet-300-100 and LeNet-5, 9 rounds)
    python benchmarks/dst_overhead.py --quick    # about a minute (100 steps per "epoch", 3 rounds)
Writes benchmarks/results/dst_overhead{,_quick}.{json,md}. Target: rigl_over_dense, set_over_dense ≤ 1.10.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secateurs.core.fileio import atomic_write_text
from secateurs.data import load_dataset
from secateurs.eval.training_flops import TrainingFlops, forward_cost
from secateurs.methods.pruning import prune
from secateurs.methods.training.dst import DynamicSparseTraining, DynamicSparsity
from secateurs.models import build_model
from secateurs.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
SPARSITY = 0.9
MODELS = ["lenet300", "lenet5"]
VARIANTS = ["dense", "rigl", "set"]
TARGET = 1.10


def epoch_runner(name: str, variant: str, quick: bool) -> Any:
    """A function that trains one more "epoch" of this variant and returns (thread s, wall s)."""
    data = load_dataset("fashion_mnist")
    model: nn.Module = build_model(name, data.info.input_shape, data.info.num_classes, seed=0)
    if variant != "dense":
        prune(model, SPARSITY, criterion="random", allocation="erk", seed=0)
    config = TrainConfig(
        **({"iterations": 100} if quick else {"epochs": 1}),
        batch_size=128,
        optimizer={"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        eval_every_epoch=False,
    )
    cost = forward_cost(model, tuple(data.info.input_shape))
    state = {"epoch": 0}

    def run() -> tuple[float, float]:
        callbacks: list[Any] = []
        dst = None
        if variant != "dense":
            dst = DynamicSparseTraining(
                DynamicSparsity(method=variant, update_every=100, drop_fraction=0.3, end_fraction=1.0),
                seed=state["epoch"],
            )
        callbacks = [TrainingFlops(cost, config.batch_size, dst.dense_gradient_at if dst else None)]
        callbacks += [dst] if dst is not None else []
        loader = data.train_loader(config.batch_size, seed=state["epoch"])
        started, wall = time.thread_time(), time.perf_counter()
        train(model, loader, config, callbacks=callbacks, seed=state["epoch"])
        state["epoch"] += 1
        return time.thread_time() - started, time.perf_counter() - wall

    return run


def bench(name: str, rounds: int, quick: bool) -> dict[str, Any]:
    runners = {v: epoch_runner(name, v, quick) for v in VARIANTS}
    for run in runners.values():  # warm-up: the first optimizer step imports torch._dynamo, caches fill
        run()
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for v in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
            c, w = runners[v]()
            cpu[v].append(c)
            wall[v].append(w)
            print(f"  {name} round {r + 1}/{rounds} {v}: {c:.2f} s CPU, {w:.2f} s wall", flush=True)

    def ratio(times: dict[str, list[float]], v: str) -> float:
        return round(statistics.median(t / d for t, d in zip(times[v], times["dense"], strict=True)), 4)

    return {
        "rounds": rounds,
        "median_epoch_s": {v: round(statistics.median(cpu[v]), 3) for v in VARIANTS},
        "rigl_over_dense": ratio(cpu, "rigl"),
        "set_over_dense": ratio(cpu, "set"),
        "rigl_over_dense_wall": ratio(wall, "rigl"),
        "set_over_dense_wall": ratio(wall, "set"),
    }


def write(results: dict[str, Any], quick: bool) -> None:
    stem = "dst_overhead_quick" if quick else "dst_overhead"
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    lines = [
        "# Dynamic sparse training overhead: epoch time relative to dense training (median of rounds)",
        "",
        f"{results['machine']}, 1 thread, Fashion-MNIST, batch 128, sparsity {SPARSITY} (random ERK), "
        "updates every 100 steps for the whole epoch; "
        + ("100 steps per epoch (quick)." if quick else "full epochs."),
        "",
        "| model | dense s/epoch (CPU) | RigL / dense | SET / dense | RigL / dense (wall) "
        "| SET / dense (wall) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        lines.append(
            f"| {name} | {r['median_epoch_s']['dense']:.2f} | {r['rigl_over_dense']:.3f} | "
            f"{r['set_over_dense']:.3f} | {r['rigl_over_dense_wall']:.3f} | {r['set_over_dense_wall']:.3f} |"
        )
    lines += ["", f"Target ≤ {TARGET}: {'met' if results['target_met'] else 'NOT met'} (CPU-time ratios)."]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 steps per epoch, 3 rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds = 3 if args.quick else 9
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "models": {},
    }
    for name in MODELS:
        results["models"][name] = bench(name, rounds, args.quick)
        print(f"{name}: {results['models'][name]}", flush=True)
    worst = [r[k] for r in results["models"].values() for k in ("rigl_over_dense", "set_over_dense")]
    results["rigl_over_dense"] = max(r["rigl_over_dense"] for r in results["models"].values())
    results["set_over_dense"] = max(r["set_over_dense"] for r in results["models"].values())
    results["target_met"] = max(worst) <= TARGET
    write(results, args.quick)


if __name__ == "__main__":
    main()
