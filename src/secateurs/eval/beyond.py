"""Metrics beyond test accuracy, in one flat dict for a results table.

Pruned models that match their dense parent's accuracy can still be worse calibrated, disagree
with it on many samples, lose whole classes, break under small input shifts, or run no faster
(Hooker et al. 2019; Liebenwein et al. 2021; Wang et al. 2021). `beyond_accuracy` measures all
of these with one forward pass over the test set per data variant.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from secateurs.data.core import DataSplits
from secateurs.data.streaming import DatasetSplits
from secateurs.eval.agreement import agreement, per_class_drop, predict
from secateurs.eval.calibration import expected_calibration_error
from secateurs.eval.isometry import jsv_stats
from secateurs.eval.latency import cpu_latency
from secateurs.eval.metrics import model_device
from secateurs.eval.potential import excess_error
from secateurs.eval.shift import ShiftSpec, corrupt_splits, default_shifts, shifted_test_split

__all__ = ["JSV_SAMPLES", "LATENCY_BATCHES", "beyond_accuracy"]

JSV_SAMPLES = 32  # Jacobians of the first 32 test samples: stable statistics, a fraction of a second
LATENCY_BATCHES = (1, 64)
_EVAL_BATCH = 1024


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).double().mean())


def _test_accuracy(model: nn.Module, splits: DataSplits) -> float:
    """Test accuracy in one pass over the test loader."""
    return _accuracy(*predict(model, splits.test_loader(_EVAL_BATCH)))


def _shift_metrics(
    model: nn.Module,
    dense: nn.Module | None,
    splits: DataSplits,
    clean: dict[str, float],
    shifts: list[ShiftSpec],
    seed: int,
) -> dict[str, float]:
    """acc@LABEL per shift (excess_error@LABEL too with a dense model, on the same data).

    `clean` holds the clean test accuracies of "model" (and "dense").
    """
    variants = [(spec.label, corrupt_splits(splits, spec, seed)) for spec in shifts]
    variants.append(("shifted_split", shifted_test_split(splits, seed)))
    out: dict[str, float] = {}
    for label, data in variants:
        acc = out[f"acc@{label}"] = _test_accuracy(model, data)
        if dense is not None:
            dense_acc = _test_accuracy(dense, data)
            out[f"excess_error@{label}"] = excess_error(clean["dense"], clean["model"], dense_acc, acc)
    return out


def _dense_metrics(
    logits: torch.Tensor, dense_logits: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> dict[str, float]:
    """Agreement with the dense model and the per-class accuracy it lost (classes present only)."""
    drop = per_class_drop(dense_logits, logits, labels, num_classes)
    drop = drop[~drop.isnan()]
    return {
        "agreement": agreement(logits, dense_logits),
        "per_class_drop_max": float(drop.max()),
        "per_class_drop_mean": float(drop.mean()),
    }


def _latencies(model: nn.Module, splits: DataSplits) -> dict[str, float]:
    """Median CPU milliseconds per forward at batch 1 and 64 (a CPU copy if the model is not)."""
    cpu_model = model if model_device(model).type == "cpu" else copy.deepcopy(model).cpu()
    shape = splits.info.input_shape
    return {f"latency_b{b}_ms": 1000 * cpu_latency(cpu_model, shape, b) for b in LATENCY_BATCHES}


def beyond_accuracy(
    model: nn.Module,
    splits: DataSplits | DatasetSplits,
    *,
    dense: nn.Module | None = None,
    shifts: list[ShiftSpec] | None = None,
    latency: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Calibration, robustness, agreement, latency and isometry metrics of `model` on `splits`.

    Keys: ``ece``; ``acc@LABEL`` for every shift (`default_shifts` when None) and
    ``acc@shifted_split``; with `dense`: ``agreement``, ``per_class_drop_max``,
    ``per_class_drop_mean`` (dense − pruned accuracy, over classes in the test set) and
    ``excess_error@LABEL``; with `latency`: ``latency_b1_ms``, ``latency_b64_ms``; and
    ``jsv_mean``, ``jsv_std``, ``jsv_max``, ``jsv_min`` on the first 32 test samples.
    Everything but the latencies is deterministic for `seed`. Streamed splits have their test
    split read into memory first (the shifts corrupt its inputs).
    """
    splits = splits.test_in_memory()
    logits, labels = predict(model, splits.test_loader(_EVAL_BATCH))
    metrics = {"ece": expected_calibration_error(logits, labels)}
    clean = {"model": _accuracy(logits, labels)}
    if dense is not None:
        dense_logits, _ = predict(dense, splits.test_loader(_EVAL_BATCH))
        clean["dense"] = _accuracy(dense_logits, labels)
        metrics.update(_dense_metrics(logits, dense_logits, labels, splits.info.num_classes))
    specs = default_shifts(splits.info) if shifts is None else shifts
    metrics.update(_shift_metrics(model, dense, splits, clean, specs, seed))
    if latency:
        metrics.update(_latencies(model, splits))
    metrics.update(jsv_stats(model, splits.test_x[:JSV_SAMPLES]))
    return metrics
