"""Time per training epoch of RigL and SET over dense training: same model, data and loop.

Five variants train side by side in one process on one thread, through the library's own
training loop (`secateurs.train.train`) with the training-FLOPs counter every pipeline run has:
  dense   the dense model;
  dense2  a second copy of it: the control (its ratio to dense is this machine's noise);
  masked  90 % sparse (random ERK), masks kept applied, no updates (what keeping a mask costs);
  RigL    the same with RigL updates every 100 steps (drop fraction 0.3, cosine);
  SET     the same with SET updates.
Updates run for the whole timed epoch (end_fraction 1, the worst case: real runs stop at 75 %),
4 per full epoch of 469 steps. Rounds interleave the variants (rotating their order); each
round's epoch time of a variant is turned into a ratio against that round's dense epoch, and the
median ratio over rounds is reported (the target is judged on it), for the thread's CPU time
(steadier on a shared machine) and for wall time, beside the ratio of the fastest epochs (the
least disturbed by other jobs). The thread time of every mask update is recorded too.

    python benchmarks/dst_overhead.py            # about 10 minutes (LeNet-300-100 and LeNet-5, 9 rounds)
    python benchmarks/dst_overhead.py --quick    # 1-2 minutes (201 steps per "epoch", 2 updates, 3 rounds)
Writes benchmarks/results/dst_overhead{,_quick}.{json,md}. Target: rigl_over_dense, set_over_dense ≤ 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
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
from secateurs.train.engine import TrainState

RESULTS = Path(__file__).parent / "results"
SPARSITY = 0.9
MODELS = ["lenet300", "lenet5"]
VARIANTS = ["dense", "dense2", "masked", "rigl", "set"]
UPDATING = ("rigl", "set")
QUICK_STEPS = 201  # updates at steps 100 and 200, as often as in a full epoch
TARGET = 1.05


class TimedDst(DynamicSparseTraining):
    """DynamicSparseTraining that records the thread time of each mask update."""

    def __init__(self, config: DynamicSparsity, *, seed: int, times: list[float]) -> None:
        super().__init__(config, seed=seed)
        self.times = times

    def update(self, state: TrainState) -> None:
        started = time.thread_time()
        super().update(state)
        self.times.append(time.thread_time() - started)


def epoch_runner(name: str, variant: str, quick: bool, update_times: list[float]) -> Any:
    """A function that trains one more "epoch" of this variant and returns (thread s, wall s)."""
    data = load_dataset("fashion_mnist")
    model: nn.Module = build_model(name, data.info.input_shape, data.info.num_classes, seed=0)
    if not variant.startswith("dense"):
        prune(model, SPARSITY, criterion="random", allocation="erk", seed=0)
    config = TrainConfig(
        **({"iterations": QUICK_STEPS} if quick else {"epochs": 1}),
        batch_size=128,
        optimizer={"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        eval_every_epoch=False,
    )
    cost = forward_cost(model, tuple(data.info.input_shape))
    state = {"epoch": 0}

    def run() -> tuple[float, float]:
        callbacks: list[Any] = []
        dst = None
        if variant in UPDATING:
            dst = TimedDst(
                DynamicSparsity(method=variant, update_every=100, drop_fraction=0.3, end_fraction=1.0),
                seed=state["epoch"],
                times=update_times,
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
    update_times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    runners = {v: epoch_runner(name, v, quick, update_times[v]) for v in VARIANTS}
    for run in runners.values():  # warm-up: the first optimizer step imports torch._dynamo, caches fill
        run()
    for times in update_times.values():
        times.clear()
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        shift = r % len(VARIANTS)
        for v in VARIANTS[shift:] + VARIANTS[:shift]:
            c, w = runners[v]()
            cpu[v].append(c)
            wall[v].append(w)
            print(f"  {name} round {r + 1}/{rounds} {v}: {c:.2f} s CPU, {w:.2f} s wall", flush=True)

    def median_ratio(times: dict[str, list[float]], v: str) -> float:
        return round(statistics.median(t / d for t, d in zip(times[v], times["dense"], strict=True)), 4)

    result: dict[str, Any] = {
        "rounds": rounds,
        "min_epoch_s": {v: round(min(cpu[v]), 3) for v in VARIANTS},
        "median_epoch_s": {v: round(statistics.median(cpu[v]), 3) for v in VARIANTS},
    }
    for v in VARIANTS[1:]:
        result[f"{v}_over_dense"] = median_ratio(cpu, v)  # each round against its own dense epoch
        result[f"{v}_over_dense_min"] = round(min(cpu[v]) / min(cpu["dense"]), 4)  # the least disturbed
        result[f"{v}_over_dense_wall"] = median_ratio(wall, v)
    result["updates_per_epoch"] = len(update_times["set"]) // rounds
    result["update_ms"] = {v: round(statistics.median(update_times[v]) * 1000, 2) for v in UPDATING}
    return result


def write(results: dict[str, Any], quick: bool) -> None:
    stem = "dst_overhead_quick" if quick else "dst_overhead"
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    lines = [
        "# Dynamic sparse training overhead: epoch time relative to dense training",
        "",
        f"{results['machine']}, 1 thread, Fashion-MNIST, batch 128, sparsity {SPARSITY} (random ERK), "
        "updates every 100 steps for the whole epoch; "
        + (f"{QUICK_STEPS} steps per epoch (quick)." if quick else "full epochs (469 steps)."),
        f"Machine shared with other jobs: load average {results['load_before']} before, "
        f"{results['load_after']} after (2 cores).",
        "",
        "| model | dense s/epoch | dense2 / dense (control) | masked / dense | RigL / dense | SET / dense "
        "| RigL / dense (fastest) | SET / dense (fastest) | RigL / dense (wall) | SET / dense (wall) "
        "| updates/epoch | RigL ms/update | SET ms/update |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        lines.append(
            f"| {name} | {r['min_epoch_s']['dense']:.2f} | {r['dense2_over_dense']:.3f} | "
            f"{r['masked_over_dense']:.3f} | "
            f"{r['rigl_over_dense']:.3f} | {r['set_over_dense']:.3f} | {r['rigl_over_dense_min']:.3f} | "
            f"{r['set_over_dense_min']:.3f} | {r['rigl_over_dense_wall']:.3f} | "
            f"{r['set_over_dense_wall']:.3f} | {r['updates_per_epoch']} | {r['update_ms']['rigl']:.2f} | "
            f"{r['update_ms']['set']:.2f} |"
        )
    lines += [
        "",
        "Ratios of the thread's CPU time per epoch: the median over rounds of each round's ratio to that "
        "round's dense epoch (the target is judged on these), and (fastest) the ratio of each variant's "
        "fastest epoch to the dense model's fastest. masked / dense is what keeping the mask applied costs "
        "(an in-place bitwise AND of the masked weights after every optimizer step), with no updates; "
        "ms/update is the median thread time of one mask update. dense2 is a second copy of the dense "
        "model: its ratio to the first is how far two identical trainings differ here (on a machine "
        "shared with other jobs, a few percent).",
        "",
        f"Target: RigL and SET ≤ {TARGET} × dense: {'met' if results['target_met'] else 'NOT met'}.",
    ]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps per epoch, 3 rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds = 3 if args.quick else 9
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "models": {},
    }
    for name in MODELS:
        results["models"][name] = bench(name, rounds, args.quick)
        print(f"{name}: {results['models'][name]}", flush=True)
    worst = [r[k] for r in results["models"].values() for k in ("rigl_over_dense", "set_over_dense")]
    results["rigl_over_dense"] = max(r["rigl_over_dense"] for r in results["models"].values())
    results["set_over_dense"] = max(r["set_over_dense"] for r in results["models"].values())
    results["target"] = TARGET
    results["target_met"] = max(worst) <= TARGET
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    write(results, args.quick)


if __name__ == "__main__":
    main()
