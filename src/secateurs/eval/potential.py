"""Prune potential and excess error (Liebenwein et al. 2021, "Lost in Pruning").

A single accuracy at a single sparsity hides how far a network *can* be pruned. The prune
potential is the largest sparsity at which accuracy stays within δ of the dense model's; the
excess error says how much more a pruned model's error grows under a distribution shift than
on clean data. Both compare a sweep of pruned models with their dense parent.

On a small test set the potential is noisy: with 1000 samples one accuracy has a standard error
of about 1.5 points, three times a δ of half a point. `prune_potential_interval` says how much:
it resamples the test set (the same resample for the dense and every pruned model, since they
are scored on the same samples) and reports the potential's percentile bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from secateurs.core.errors import ConfigError

__all__ = ["PotentialInterval", "excess_error", "prune_potential", "prune_potential_interval"]

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


@dataclass(frozen=True)
class PotentialInterval:
    """A prune potential on the given test set, and its bootstrap interval over test resamples."""

    potential: float
    low: float
    high: float
    level: float
    resamples: int

    def text(self, scale: float = 100.0) -> str:
        return f"{scale * self.potential:g} [{scale * self.low:g}, {scale * self.high:g}]"


def _correct_vector(name: str, value: Sequence[bool] | Tensor, n: int | None) -> Tensor:
    out = torch.as_tensor(value).flatten()
    if out.dtype != torch.bool:
        raise ConfigError(f"{name} must hold one bool per test sample (correct or not), got {out.dtype}")
    if out.numel() == 0 or (n is not None and out.numel() != n):
        raise ConfigError(
            f"{name} has {out.numel()} samples, expected {n if n is not None else 'at least one'}",
            fix="score every model on the same test samples, in the same order",
        )
    return out


def prune_potential_interval(
    correct: Mapping[float, Sequence[bool] | Tensor],
    dense_correct: Sequence[bool] | Tensor,
    delta: float = 0.005,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> PotentialInterval:
    """`prune_potential` with a paired percentile bootstrap interval over the test samples.

    `correct` maps each sparsity to its model's per-sample correctness (one bool per test
    sample), `dense_correct` is the dense model's on the same samples in the same order. Each of
    `resamples` draws n samples with replacement (seeded by `seed`, so the interval is
    reproducible), recomputes every accuracy on that draw and the potential from them; the
    interval is the draws' (1 − level)/2 and (1 + level)/2 quantiles (lower/higher, never
    interpolated: a potential is one of the sparsities given, or 0). `potential` is the
    estimate on the whole test set, `prune_potential` of the plain accuracies.
    """
    if not correct:
        raise ConfigError("prune_potential_interval needs at least one pruned model's predictions")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ConfigError(f"resamples={resamples!r} must be a positive integer")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level={level!r} must lie strictly between 0 and 1", fix="use e.g. 0.95")
    dense = _correct_vector("dense_correct", dense_correct, None)
    n = dense.numel()
    sparsities = sorted(_fraction("sparsity", s) for s in correct)
    rows = torch.stack([_correct_vector(f"correct[{s}]", correct[s], n) for s in sorted(correct)])
    estimate = prune_potential(
        [(s, float(r.float().mean())) for s, r in zip(sparsities, rows, strict=True)],
        float(dense.float().mean()),
        delta,
    )
    floor_margin = _fraction("delta", delta) + _EPS
    generator = torch.Generator().manual_seed(seed)
    table = torch.cat([dense[None], rows]).float()  # (1 + k, n)
    draws = []
    for start in range(0, resamples, 256):  # chunks keep the (chunk, 1 + k, n) gather small
        chunk = min(256, resamples - start)
        idx = torch.randint(0, n, (chunk, n), generator=generator)
        acc = table[:, idx].mean(dim=2).T  # (chunk, 1 + k)
        ok = acc[:, 1:] >= acc[:, :1] - floor_margin
        s = torch.tensor(sparsities, dtype=torch.float64)
        draws.append(torch.where(ok, s, torch.zeros_like(s)).amax(dim=1))
    values = torch.cat(draws)
    low = torch.quantile(values, (1 - level) / 2, interpolation="lower")
    high = torch.quantile(values, (1 + level) / 2, interpolation="higher")
    return PotentialInterval(estimate, float(low), float(high), level, resamples)


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
