"""Prune potential and excess error (Liebenwein et al. 2021, "Lost in Pruning").

A single accuracy at a single sparsity hides how far a network *can* be pruned. The prune
potential is the largest sparsity at which accuracy stays within δ of the dense model's; the
excess error says how much more a pruned model's error grows under a distribution shift than
on clean data. Both compare a sweep of pruned models with their dense parent.
"""

from __future__ import annotations

from collections.abc import Sequence

from secateurs.core.errors import ConfigError

__all__ = ["excess_error", "prune_potential"]

_EPS = 1e-12  # float noise: 0.9 − 0.005 must accept an accuracy of exactly 0.895


def _fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"{name}={value!r} is not a fraction in [0, 1]",
            fix="pass accuracies and sparsities as fractions (0.93, not 93)",
        )
    return float(value)


def prune_potential(
    points: Sequence[tuple[float, float]], dense_accuracy: float, delta: float = 0.005
) -> float:
    """The largest sparsity whose accuracy is ≥ dense_accuracy − delta; 0.0 if none qualifies.

    `points` are (sparsity, accuracy) pairs in any order; accuracies are fractions, so the
    default δ = 0.005 is half a percentage point. Only the points given are considered (no
    interpolation), and a qualifying point counts even if a lower sparsity failed.
    """
    floor = _fraction("dense_accuracy", dense_accuracy) - _fraction("delta", delta) - _EPS
    best = 0.0
    for sparsity, accuracy in points:
        s, a = _fraction("sparsity", sparsity), _fraction("accuracy", accuracy)
        if a >= floor:
            best = max(best, s)
    return best


def excess_error(
    dense_acc: float, pruned_acc: float, dense_shift_acc: float, pruned_shift_acc: float
) -> float:
    """(error increase from pruning under shift) − (error increase from pruning on clean data).

    With error = 1 − accuracy:
    ``[(1 − pruned_shift) − (1 − dense_shift)] − [(1 − pruned) − (1 − dense)]``
    ``= (dense_shift_acc − pruned_shift_acc) − (dense_acc − pruned_acc)``.
    Positive: pruning costs more accuracy on shifted data than its clean test accuracy shows.
    """
    values = [dense_acc, pruned_acc, dense_shift_acc, pruned_shift_acc]
    names = ["dense_acc", "pruned_acc", "dense_shift_acc", "pruned_shift_acc"]
    d, p, ds, ps = (_fraction(n, v) for n, v in zip(names, values, strict=True))
    return (ds - ps) - (d - p)
