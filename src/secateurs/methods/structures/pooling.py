"""Poolings: how the element scores of a group become one group score.

A structure whose groups hold several entries (blocks, channels, heads) scores a group by pooling
its entries' element scores. Which pooling applies: the structure's `pool` option if set, else
the criterion's preference (`Criterion.pooling`), else the structure's default (`l1`, or `l2`
for attention heads and FFN channels, the norms their papers use).

Every pooling is: a map applied to each entry, a combination over the group's entries (sum or
max), and a final step. Entries already pruned (score −∞) are left out; a group with no entry
left pools to −∞, so it stays last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from secateurs.core.registry import Registry


@dataclass(frozen=True)
class Pooling:
    """Group score = finish(combine over entries of entry(s)), with the entry count at hand."""

    name: str
    entry: Callable[[Tensor], Tensor]
    combine: str  # "sum" or "max"
    finish: Callable[[Tensor, Tensor], Tensor]  # (combined, count) -> score
    signed: bool = False  # pools the criterion's signed contributions, not its scores
    linear: bool = False  # negating every element score negates the group score (the invert check)
    exact_entry: bool = False  # `entry` is exact in any float dtype (|s|, s), so needs no widening


def _same(total: Tensor, count: Tensor) -> Tensor:
    return total


def _identity(scores: Tensor) -> Tensor:
    return scores


POOLINGS: Registry[Pooling] = Registry("pooling")
POOLINGS.add(
    "l1",
    Pooling("l1", torch.abs, "sum", _same, exact_entry=True),
    "Σ|s| (for saliencies: the loss change of removing the group)",
)
POOLINGS.add(
    "l2",
    Pooling("l2", torch.square, "sum", lambda t, c: t.sqrt()),
    "sqrt(Σ s²) (with magnitudes: the group's norm)",
)
POOLINGS.add(
    "sum",
    Pooling("sum", _identity, "sum", _same, linear=True, exact_entry=True),
    "Σ s (signed scores such as GraSP's)",
)
POOLINGS.add(
    "mean",
    Pooling("mean", _identity, "sum", lambda t, c: t / c.clamp(min=1), linear=True, exact_entry=True),
    "Σ s / entries",
)
POOLINGS.add("max", Pooling("max", _identity, "max", _same, exact_entry=True), "the group's best entry")
POOLINGS.add(
    "squared_sum",
    Pooling("squared_sum", _identity, "sum", lambda t, c: t.square(), signed=True, exact_entry=True),
    "(Σ c)² of signed contributions c (group Taylor, Molchanov et al. 2019)",
)

SIDES = ("producers", "consumers", "all")
"""Which sites of a group spanning layers its score reads: the layers producing its channels
(their filters), those consuming them (their input columns), or both."""


def pool_table(table: Tensor, pooling: Pooling) -> Tensor:
    """One score per row of a [groups, entries] table; −∞ entries are absent (pruned before)."""
    finite = table > float("-inf")
    if pooling.combine == "max":
        combined = torch.where(finite, pooling.entry(table), float("-inf")).amax(1)
    else:
        combined = torch.where(finite, pooling.entry(table), 0).sum(1)
    pooled = pooling.finish(combined, finite.sum(1))
    return torch.where(finite.any(1), pooled, float("-inf"))


def reduce_over(values: Tensor, dim: int, pooling: Pooling) -> Tensor:
    """Per index along `dim`: the pooling's entry map combined over all other dims (float64).

    An exact entry map (|s|, s) reads the values in their own dtype and only the sums are float64
    (no float64 copy of a whole weight; the result is bit for bit that of widening first). Squares
    are widened first: a float32 square rounds, and rounding would move near-ties between groups.
    """
    values = values.detach()
    mapped = pooling.entry(values if pooling.exact_entry else values.double())
    others = [d for d in range(values.dim()) if d != dim]
    if not others:
        return mapped.double()
    if pooling.combine == "max":
        return mapped.amax(dim=others).double()
    return mapped.sum(dim=others, dtype=torch.float64)
