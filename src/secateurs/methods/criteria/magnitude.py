"""Magnitude (L1 of each weight): the classic criterion of PaT and lottery tickets."""

from __future__ import annotations

from torch import Tensor

from secateurs.methods.criteria.base import CRITERIA, Criterion, ScoringContext


@CRITERIA.register("magnitude", "|θ|: keep the largest weights")
class Magnitude(Criterion):
    name = "magnitude"

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        return {n: p.detach().abs() for n, p in ctx.params().items()}
