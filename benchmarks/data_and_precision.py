"""What bringing your own data and hardware costs on this CPU: streaming vs in-memory data, and
mixed precision vs fp32.

Data (Fashion-MNIST, 60,000 training images 1x28x28, batch 128): the same samples read three ways,
  in_memory   DataSplits: a batch is an index into one tensor (the default for small sets);
  stream_w0   DatasetSplits over a torch Dataset that returns one (image, label) item at a time,
              collated by a DataLoader in this process (what a user's Dataset costs);
  stream_w2   the same with two DataLoader worker processes.
Each is timed reading a whole epoch (batches touched, no model) and training LeNet-300-100 for
`steps` steps (forward, backward, SGD); wall time (workers are other processes), the minimum over
interleaved rounds; ratios are against in_memory.

Precision: one training step (forward, backward, SGD with momentum) of LeNet-300-100 (batch 128),
LeNet-5 (batch 128) and ResNet-20 (batch 64; not in --quick) in fp32, bf16 and fp16 autocast (fp16
with its gradient scaler), through secateurs' own `MixedPrecision`; CPU time of this one thread,
median ratio to fp32 over interleaved rounds.

    python benchmarks/data_and_precision.py            # about 8 minutes
    python benchmarks/data_and_precision.py --quick    # about a minute
Writes benchmarks/results/data_and_precision{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from secateurs.core.fileio import atomic_write_text
from secateurs.data import DatasetSplits, load_dataset
from secateurs.models import build_model
from secateurs.train.execution import MixedPrecision

RESULTS = Path(__file__).parent / "results"
BATCH = 128


class Items(torch.utils.data.Dataset[tuple[Tensor, int]]):
    """A Dataset that hands out one sample at a time, as a user's Dataset does."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y
        self.classes = list(range(10))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.x[i], int(self.y[i])


def loaders(quick: bool) -> dict[str, Any]:
    splits = load_dataset("fashion_mnist")
    if quick:
        splits = splits.subset(6000, 1000)
    train, test = Items(splits.train_x, splits.train_y), Items(splits.test_x, splits.test_y)
    return {
        "in_memory": splits,
        "stream_w0": DatasetSplits(splits.info, train, test, num_workers=0),
        "stream_w2": DatasetSplits(splits.info, train, test, num_workers=2),
    }


def read_epoch(splits: Any) -> float:
    started = time.perf_counter()
    total = 0.0
    for x, _ in splits.train_loader(BATCH, seed=0):
        total += float(x[0, 0, 0, 0])
    return time.perf_counter() - started


def train_steps(splits: Any, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model("lenet300", (1, 28, 28), 10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    started = time.perf_counter()
    for i, (x, y) in enumerate(splits.train_loader(BATCH, seed=0)):
        if i == steps:
            break
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return time.perf_counter() - started


def data_table(quick: bool) -> dict[str, Any]:
    ways = loaders(quick)
    rounds, steps = (2, 20) if quick else (3, 200)
    best: dict[str, dict[str, float]] = {
        name: {"epoch_s": float("inf"), "train_s": float("inf")} for name in ways
    }
    for r in range(rounds):
        order = list(ways)[r % len(ways) :] + list(ways)[: r % len(ways)]  # rotate who goes first
        for name in order:
            best[name]["epoch_s"] = min(best[name]["epoch_s"], read_epoch(ways[name]))
            best[name]["train_s"] = min(best[name]["train_s"], train_steps(ways[name], steps))
        print(
            f"data round {r + 1}/{rounds}: "
            + ", ".join(f"{n} {b['epoch_s']:.2f} s" for n, b in best.items()),
            flush=True,
        )
    n = ways["in_memory"].info.num_train
    base = best["in_memory"]
    rows = {
        name: {
            "epoch_s": b["epoch_s"],
            "samples_per_s": n / b["epoch_s"],
            "epoch_vs_in_memory": b["epoch_s"] / base["epoch_s"],
            "train_s": b["train_s"],
            "train_vs_in_memory": b["train_s"] / base["train_s"],
        }
        for name, b in best.items()
    }
    return {"samples": n, "batch": BATCH, "train_steps": steps, "rounds": rounds, "rows": rows}


def step_fn(name: str, shape: tuple[int, ...], batch: int, precision: str) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_model(name, shape, 10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = MixedPrecision(precision, torch.device("cpu"))  # type: ignore[arg-type]
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with amp.autocast():
            loss = F.cross_entropy(model(x), y)
        amp.backward(loss, opt)
        amp.step(opt)

    return step


def precision_table(quick: bool) -> dict[str, Any]:
    cases = {
        "lenet300": ((1, 28, 28), 128, 40),
        "lenet5": ((1, 28, 28), 128, 8),
        "resnet20": ((3, 32, 32), 64, 1),
    }
    if quick:  # ResNet-20 in fp16 takes half a minute a step on a CPU
        del cases["resnet20"]
    rounds = 3 if quick else 5
    precisions = ("fp32", "bf16", "fp16")
    out: dict[str, Any] = {}
    for name, (shape, batch, iters) in cases.items():
        iters = max(1, iters // 4) if quick else iters
        steps = {p: step_fn(name, shape, batch, p) for p in precisions}
        for s in steps.values():
            s()  # warm-up (allocations, autocast caches)
        ratios: dict[str, list[float]] = {p: [] for p in precisions if p != "fp32"}
        ms: dict[str, list[float]] = {p: [] for p in precisions}
        for r in range(rounds):
            order = list(precisions[r % 3 :] + precisions[: r % 3])
            times = {}
            for p in order:
                started = time.thread_time()
                for _ in range(iters):
                    steps[p]()
                times[p] = (time.thread_time() - started) / iters
                ms[p].append(times[p] * 1000)
            for p in ratios:
                ratios[p].append(times[p] / times["fp32"])
        out[name] = {
            "batch": batch,
            "fp32_ms": statistics.median(ms["fp32"]),
            **{f"{p}_ms": statistics.median(ms[p]) for p in ratios},
            **{f"{p}_vs_fp32": statistics.median(v) for p, v in ratios.items()},
        }
        print(
            f"precision {name}: " + ", ".join(f"{p} {out[name][f'{p}_vs_fp32']:.2f}x" for p in ratios),
            flush=True,
        )
    return {"rounds": rounds, "models": out}


def write(results: dict[str, Any], quick: bool) -> None:
    stem = "data_and_precision_quick" if quick else "data_and_precision"
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    data, prec = results["data"], results["precision"]
    lines = [
        f"# Your own data and hardware on this CPU{' (quick)' if quick else ''}",
        "",
        f"{results['machine']}, 1 torch thread. Fashion-MNIST, {data['samples']:,} training samples, batch "
        f"{data['batch']}; minimum wall time over {data['rounds']} interleaved rounds.",
        "",
        "| data path | epoch read (s) | samples/s | vs in-memory | LeNet-300-100, "
        f"{data['train_steps']} steps (s) | vs in-memory |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in data["rows"].items():
        lines.append(
            f"| {name} | {r['epoch_s']:.2f} | {r['samples_per_s']:,.0f} | {r['epoch_vs_in_memory']:.1f}x | "
            f"{r['train_s']:.2f} | {r['train_vs_in_memory']:.2f}x |"
        )
    lines += [
        "",
        "Training step, fp32 vs autocast (CPU time of one thread, median ratio over "
        f"{prec['rounds']} rounds):",
        "",
        "| model | batch | fp32 ms | bf16 ms | bf16 / fp32 | fp16 ms | fp16 / fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in prec["models"].items():
        lines.append(
            f"| {name} | {m['batch']} | {m['fp32_ms']:.2f} | {m['bf16_ms']:.2f} | {m['bf16_vs_fp32']:.2f} | "
            f"{m['fp16_ms']:.2f} | {m['fp16_vs_fp32']:.2f} |"
        )
    lines += ["", f"Total {results['total_s'] / 60:.1f} min."]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a tenth of the data, fewer rounds (under a minute)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    results = {
        "benchmark": "data_and_precision",
        "quick": args.quick,
        "data": data_table(args.quick),
        "precision": precision_table(args.quick),
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}".strip(),
    }
    results["total_s"] = time.perf_counter() - started
    write(results, args.quick)


if __name__ == "__main__":
    main()
