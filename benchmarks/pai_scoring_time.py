"""Scoring cost at initialisation: SNIP, GraSP and SynFlow (100 rounds) on ResNet-20 and LeNet-300-100.

Each method computes masks for 90 % sparsity (global allocation) on a freshly initialised model
(ResNet shortcut convolutions left dense, as Synaptic-Flow does by default: SynFlow's conserved
score flows mostly through the main path, so a global threshold would empty the shortcuts),
one torch thread, from the same class-balanced batch (10 samples per class, CIFAR / Fashion-MNIST
shapes, random values: scoring time does not depend on the pixels). The minimum wall time over
repeats is reported (steadiest on a shared machine), with the time of one forward+backward pass
as the unit that makes the numbers comparable across machines.

    python benchmarks/pai_scoring_time.py            # about 3 minutes
    python benchmarks/pai_scoring_time.py --quick    # about 30 seconds (SynFlow 10 rounds, 1 repeat)
Writes benchmarks/results/pai_scoring_time{,_quick}.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from secateurs.core.fileio import atomic_write_text
from secateurs.methods.pruning import compute_masks
from secateurs.models import build_model

RESULTS = Path(__file__).parent / "results"
CASES = {"resnet20": (3, 32, 32), "lenet300": (1, 28, 28)}
LAYERS = {"resnet20": {"exclude": ["*shortcut*"]}, "lenet300": {}}
SPARSITY = 0.9


def batch(
    shape: tuple[int, ...], per_class: int = 10, classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(per_class * classes, *shape, generator=gen)
    y = torch.arange(classes).repeat_interleave(per_class)
    return x, y


def seconds(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench(name: str, shape: tuple[int, ...], synflow_rounds: int, repeats: int) -> dict[str, Any]:
    model = build_model(name, shape, 10, seed=0)
    data = batch(shape)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(data[0]), data[1]).backward()

    methods = {
        "snip": {"criterion": "snip", "data": data},
        "grasp": {"criterion": "grasp", "data": data},
        f"synflow_{synflow_rounds}_rounds": {"criterion": "synflow", "rounds": synflow_rounds},
    }
    out: dict[str, Any] = {"forward_backward_s": seconds(step, repeats + 2)}
    for label, options in methods.items():
        options = {**options, "layers": LAYERS[name], "input_shape": shape}
        masks = compute_masks(model, SPARSITY, **options)
        assert masks.numel() - masks.kept() == round(SPARSITY * masks.numel())
        out[label + "_s"] = seconds(lambda o=options: compute_masks(model, SPARSITY, **o), repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="SynFlow with 10 rounds, one repeat")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds, repeats = (10, 1) if args.quick else (100, 3)
    results = {name: bench(name, shape, rounds, repeats) for name, shape in CASES.items()}
    stem = "pai_scoring_time_quick" if args.quick else "pai_scoring_time"
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    lines = [
        f"# Scoring time at initialisation (90 % sparsity, 1 thread, min over {repeats} repeats)",
        "",
        "| model | forward+backward | SNIP | GraSP | SynFlow, " + f"{rounds} rounds |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        unit = r["forward_backward_s"]
        cells = [
            f"{r[k]:.3f} s ({r[k] / unit:.1f}×)" for k in ("snip_s", "grasp_s", f"synflow_{rounds}_rounds_s")
        ]
        lines.append(f"| {name} | {1000 * unit:.1f} ms | " + " | ".join(cells) + " |")
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
