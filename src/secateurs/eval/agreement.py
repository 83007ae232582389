"""Predictions, agreement between two models, and per-class accuracy changes.

Two models with the same test accuracy can disagree on many samples, and pruning hurts some
classes much more than others (Hooker et al. 2019, "What do compressed deep neural networks
forget?"). These functions compare a pruned model to its dense parent sample by sample.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.eval.metrics import eval_mode, model_device

__all__ = ["agreement", "per_class_accuracy", "per_class_drop", "predict"]


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """All logits and labels of `loader`, in loader order, computed in eval mode.

    Inputs go to the model's device; every submodule's train/eval mode is restored afterwards.
    """
    device = model_device(model)
    logits: list[Tensor] = []
    labels: list[Tensor] = []
    with eval_mode(model):
        for inputs, targets in loader:
            logits.append(model(inputs.to(device)))
            labels.append(targets.to(device))
    if not logits:
        raise ConfigError("the loader yielded no samples to predict", fix="check the data split")
    return torch.cat(logits), torch.cat(labels)


def _check_same(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ConfigError(
            f"{what} of shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be compared",
            fix="predict both models on the same samples",
        )


def agreement(logits_a: Tensor, logits_b: Tensor) -> float:
    """Fraction of samples on which two models predict the same class (top-1)."""
    _check_same(logits_a, logits_b, "logits")
    if logits_a.shape[0] == 0:
        raise ConfigError("no samples to compare", fix="pass logits of at least one sample")
    same = logits_a.argmax(dim=1) == logits_b.argmax(dim=1).to(logits_a.device)
    return float(same.double().mean())


def per_class_accuracy(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Top-1 accuracy of every class (float64, length `num_classes`); NaN for an absent class."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(
            f"labels must lie in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}",
            fix="pass the data set's num_classes",
        )
    correct = (logits.argmax(dim=1) == labels).to(torch.float64)
    hits = torch.zeros(num_classes, dtype=torch.float64, device=labels.device).index_add_(0, labels, correct)
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    return hits / counts  # 0/0 = NaN marks a class without samples


def per_class_drop(dense: Tensor, pruned: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class accuracy of the dense logits minus that of the pruned ones (positive = lost)."""
    _check_same(dense, pruned, "logits")
    return per_class_accuracy(dense, labels, num_classes) - per_class_accuracy(pruned, labels, num_classes)
