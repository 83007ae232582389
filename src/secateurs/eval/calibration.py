"""Expected calibration error: does a classifier's confidence match its accuracy?

Pruning can leave accuracy intact while making a network over-confident (Venkatesh et al.
2020), which matters wherever its probabilities are used (thresholds, ensembles, abstention).
"""

from __future__ import annotations

import torch
from torch import Tensor

from secateurs.core.errors import ConfigError

__all__ = ["expected_calibration_error"]


def _check(logits: Tensor, labels: Tensor, bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins={bins!r} must be a positive integer", fix="use e.g. the default 15 bins")
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"logits of shape {tuple(logits.shape)} and labels of shape {tuple(labels.shape)} do not match",
            fix="pass logits (N, classes) and integer labels (N,)",
        )
    if logits.shape[0] == 0:
        raise ConfigError("no samples to compute a calibration error on", fix="pass at least one sample")


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE = Σ_b (n_b / N)·|acc_b − conf_b| over equal-width bins of the max softmax probability.

    Bin b holds the samples whose confidence lies in ((b−1)/B, b/B] (Guo et al. 2017), acc_b is
    their top-1 accuracy and conf_b their mean confidence. 0 = perfectly calibrated; computed in
    float64. Because n_b·|acc_b − conf_b| = |Σ_{i∈b} (correct_i − conf_i)|, one scatter-add of
    (correct − conf) per bin suffices.
    """
    _check(logits, labels, bins)
    probs = torch.softmax(logits.detach().to(torch.float64), dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels.to(predicted.device)).to(torch.float64)
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    gaps = torch.zeros(bins, dtype=torch.float64, device=confidence.device)
    gaps.index_add_(0, index, correct - confidence)
    return float(gaps.abs().sum() / confidence.numel())
