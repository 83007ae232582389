"""Closed-form (non-gradient) MLP vs the same MLP trained with Adam (issue 20, part 2).

Per data set (digits, MNIST-1D, Fashion-MNIST) and seed, one tanh MLP architecture:
  - trained in closed form (`train: {method: closed_form}`: ridge layers, low-rank backward
    targets, Stiefel + adaptive-SVM decision layer) and trained with Adam (cross-entropy): test
    accuracy and wall time, and the time as a ratio (closed form / Adam);
  - then each pruned once by weight magnitude (global and layerwise) at 50-95 %, without any update, with the
    closed-form ridge refit of the kept weights (`reconstruct: {method: ridge}`, calibration on
    2048 training samples), and, for the closed-form network, solved again on its mask.
One thread; times are wall-clock seconds on this machine.

    python benchmarks/closed_form.py            # 3 data sets x 3 seeds (long: do not run casually)
    python benchmarks/closed_form.py --quick    # digits only, one seed, 10 Adam epochs: seconds
Writes benchmarks/results/closed_form{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.core.fileio import atomic_write_text
from secateurs.core.masks import set_masks
from secateurs.data import load_dataset
from secateurs.eval import evaluate
from secateurs.methods.closed_form import ClosedFormConfig, fit_closed_form
from secateurs.methods.pruning import compute_masks
from secateurs.methods.reconstruction import reconstruct
from secateurs.models.mlp import MLP
from secateurs.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"hidden": [128, 128], "epochs": 30},
    "mnist1d": {"hidden": [100, 100], "epochs": 60},
    "fashion_mnist": {"hidden": [300, 100], "epochs": 20},
}
SPARSITIES = [0.5, 0.8, 0.9, 0.95]
# global: one magnitude threshold for all layers; uniform: each layer at the sparsity (the closed-form
# layers' weight scales differ by orders of magnitude, so a global threshold empties some of them)
ALLOCATIONS = ["global", "uniform"]
CLOSED_FORM = ClosedFormConfig(ridge=1e-3, rank=10, passes=3, batch_size=1024)


def accuracy(model: nn.Module, splits: Any) -> float:
    return float(evaluate(model, splits.test_loader())["accuracy"])


def pruned_rows(model: nn.Module, splits: Any, calibration: list[Any], solved: bool) -> list[dict[str, Any]]:
    """Accuracy after one-shot global magnitude pruning: plain, ridge refit, (closed form) re-solved."""
    rows = []
    for allocation, sparsity in ((a, s) for a in ALLOCATIONS for s in SPARSITIES):
        row: dict[str, Any] = {"allocation": allocation, "sparsity": sparsity}
        for update in ("none", "ridge", "resolve") if solved else ("none", "ridge"):
            pruned = copy.deepcopy(model)
            try:
                masks = compute_masks(pruned, sparsity, criterion="magnitude", allocation=allocation)
            except ConfigError:  # the threshold empties a layer: recorded as a collapse (None)
                row[update] = None
                continue
            if update == "ridge":
                masks = reconstruct(pruned, masks, {"method": "ridge"}, data=calibration)
            set_masks(pruned, masks)
            if update == "resolve":
                batches = list(splits.train_loader(CLOSED_FORM.batch_size, shuffle=False))
                fit_closed_form(pruned, batches, CLOSED_FORM, classes=splits.info.num_classes, masks=masks)
            row[update] = accuracy(pruned, splits)
        rows.append(row)
    return rows


def run(data: str, seed: int, epochs: int | None) -> dict[str, Any]:
    setting = SETTINGS[data]
    splits = load_dataset(data)
    features = int(torch.tensor(splits.info.input_shape).prod())
    classes = splits.info.num_classes
    calibration = list(splits.train_loader(256, seed=seed))[:8]
    out: dict[str, Any] = {"data": data, "seed": seed, "hidden": setting["hidden"]}

    torch.manual_seed(seed)
    solved = MLP(features, setting["hidden"], classes, "tanh")
    start = time.perf_counter()
    fit_closed_form(
        solved, list(splits.train_loader(CLOSED_FORM.batch_size, shuffle=False)), CLOSED_FORM, classes=classes
    )
    out["closed_form"] = {"accuracy": accuracy(solved, splits), "seconds": time.perf_counter() - start}

    torch.manual_seed(seed)
    adam = MLP(features, setting["hidden"], classes, "tanh")
    config = TrainConfig(
        epochs=epochs or setting["epochs"],
        batch_size=128,
        optimizer={"name": "adam", "lr": 1e-3},
        lr_schedule={"name": "cosine"},
        eval_every_epoch=False,
    )
    start = time.perf_counter()
    train(adam, splits.train_loader(128, seed=seed), config, seed=seed)
    out["adam"] = {
        "accuracy": accuracy(adam, splits),
        "seconds": time.perf_counter() - start,
        "epochs": config.epochs,
    }
    out["time_ratio"] = out["closed_form"]["seconds"] / out["adam"]["seconds"]
    out["pruned_closed_form"] = pruned_rows(solved, splits, calibration, solved=True)
    out["pruned_adam"] = pruned_rows(adam, splits, calibration, solved=False)
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| data | closed form acc. | Adam acc. | closed form s | Adam s | time ratio |",
        "|---|---|---|---|---|---|",
    ]
    for data in dict.fromkeys(r["data"] for r in results):
        rs = [r for r in results if r["data"] == data]

        def mean(path: tuple[str, str], rs: list[dict[str, Any]] = rs) -> float:
            return statistics.fmean(r[path[0]][path[1]] for r in rs)

        lines.append(
            f"| {data} | {mean(('closed_form', 'accuracy')):.4f} | {mean(('adam', 'accuracy')):.4f} | "
            f"{mean(('closed_form', 'seconds')):.2f} | {mean(('adam', 'seconds')):.2f} | "
            f"{statistics.fmean(r['time_ratio'] for r in rs):.3f} |"
        )
    lines += [
        "",
        "| data | model | magnitude | sparsity | no update | ridge refit | re-solved on mask |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for model in ("closed_form", "adam"):
            for row in r[f"pruned_{model}"]:
                shown = {
                    k: "collapse" if row[k] is None else f"{row[k]:.4f}"
                    for k in ("none", "ridge", "resolve")
                    if k in row
                }
                resolved = shown["resolve"] if "resolve" in row else "-"
                where = f"{r['data']} (seed {r['seed']})"
                lines.append(
                    f"| {where} | {model} | {row['allocation']} | {row['sparsity']:.2f} | "
                    f"{shown['none']} | {shown['ridge']} | {resolved} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only, one seed, 10 Adam epochs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    jobs = [("digits", 0, 10)] if args.quick else [(d, s, None) for d in SETTINGS for s in (0, 1, 2)]
    results = [run(data, seed, epochs) for data, seed, epochs in jobs]
    name = "closed_form_quick" if args.quick else "closed_form"
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(RESULTS / f"{name}.md", table(results))
    print(table(results))


if __name__ == "__main__":
    main()
