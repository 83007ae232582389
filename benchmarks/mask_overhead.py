"""Training-step cost of keeping masks applied: secateurs vs dense vs torch.nn.utils.prune.

Three copies of the same model train side by side in one process, on one thread:
  dense        plain training step (forward, backward, SGD with momentum + weight decay);
  secateurs    the same step with 90 % of the weights masked by `secateurs.prune` (masks are
               multiplied in after each optimizer step by an optimizer hook);
  torch_prune  the same sparsity through `torch.nn.utils.prune` (weight = weight_orig * mask
               recomputed through autograd in every forward).
Rounds interleave the three variants (rotating their order) and each round's per-step CPU time of
the thread is turned into a ratio against that round's dense time; the reported value is the
median ratio over rounds, which is robust to a noisy, shared machine.

    python benchmarks/mask_overhead.py            # about 3 minutes
    python benchmarks/mask_overhead.py --quick    # about 20 seconds
Writes benchmarks/results/mask_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

import secateurs
from secateurs.core.fileio import atomic_write_text
from secateurs.models import build_model

RESULTS = Path(__file__).parent / "results"
SPARSITY = 0.9
CASES = {  # model name: (input shape, batch size, timed steps per round)
    "lenet300": ((1, 28, 28), 128, 40),
    "resnet20": ((3, 32, 32), 64, 4),
}


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, masked: bool) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if masked:
        secateurs.masks_of(model).attach(model, opt)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def torch_pruned(model: nn.Module) -> nn.Module:
    params = [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=SPARSITY)
    return model


def time_steps(step: Callable[[], None], n: int) -> float:
    start = time.thread_time()
    for _ in range(n):
        step()
    return (time.thread_time() - start) / n


def bench(name: str, rounds: int, quick: bool) -> dict[str, object]:
    shape, batch, steps = CASES[name]
    steps = max(1, steps // 4) if quick else steps
    base = build_model(name, shape, 10, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    ours = secateurs.prune(copy.deepcopy(base), SPARSITY, criterion="magnitude", allocation="global")
    variants = {
        "dense": make_step(copy.deepcopy(base), x, y, masked=False),
        "secateurs": make_step(ours, x, y, masked=True),
        "torch_prune": make_step(torch_pruned(copy.deepcopy(base)), x, y, masked=False),
    }
    for step in variants.values():  # warm-up: allocator, autograd graph caches
        time_steps(step, 3)
    per_round: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    for r in range(rounds):
        for key in order[r % 3 :] + order[: r % 3]:
            per_round[key].append(time_steps(variants[key], steps))
    ratios = {
        k: statistics.median(v / d for v, d in zip(per_round[k], per_round["dense"], strict=True))
        for k in ("secateurs", "torch_prune")
    }
    masks = secateurs.masks_of(ours)
    assert masks.numel() - masks.kept() == round(SPARSITY * masks.numel())
    return {
        "batch_size": batch,
        "input_shape": list(shape),
        "sparsity": SPARSITY,
        "rounds": rounds,
        "steps_per_round": steps,
        "median_step_ms": {k: 1000 * statistics.median(v) for k, v in per_round.items()},
        "ours_over_dense": round(ratios["secateurs"], 4),
        "torch_prune_over_dense": round(ratios["torch_prune"], 4),
    }


def write(results: dict[str, object], quick: bool) -> None:
    stem = "mask_overhead_quick" if quick else "mask_overhead"
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    lines = [
        "# Mask overhead: training-step time relative to the dense model (median of interleaved rounds)",
        "",
        f"{results['machine']}, 1 thread, sparsity {SPARSITY}, SGD momentum 0.9 + weight decay.",
        "",
        "| model | batch | dense ms/step | secateurs / dense | torch.nn.utils.prune / dense |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():  # type: ignore[union-attr]
        lines.append(
            f"| {name} | {r['batch_size']} | {r['median_step_ms']['dense']:.2f} | "
            f"{r['ours_over_dense']:.3f} | {r['torch_prune_over_dense']:.3f} |"
        )
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (about 30 s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds = 5 if args.quick else 31
    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "models": {},
    }
    for name in CASES:
        started = time.perf_counter()
        results["models"][name] = bench(name, rounds, args.quick)  # type: ignore[index]
        print(f"{name}: {results['models'][name]} ({time.perf_counter() - started:.0f} s)", flush=True)  # type: ignore[index]
    write(results, args.quick)


if __name__ == "__main__":
    main()
