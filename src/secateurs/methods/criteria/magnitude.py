"""Magnitude (|θ| of each weight): the classic criterion of PaT and lottery tickets.

`l1` and `l2` are magnitude pooled by the L1 or L2 norm over a group (Li et al. 2017's filter
norms): the same scores, a different default pooling.
"""

from __future__ import annotations

from torch import Tensor

from secateurs.methods.criteria.base import CRITERIA, Criterion, ScoringContext


@CRITERIA.register("magnitude", "|θ|: keep the largest weights")
class Magnitude(Criterion):
    name = "magnitude"
    layerwise = True

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        return {n: p.detach().abs() for n, p in ctx.params().items()}


@CRITERIA.register("l1", "|θ| pooled by L1 norm over a group (Li et al. 2017's filter norm)")
class L1(Magnitude):
    name = "l1"
    pooling = "l1"


@CRITERIA.register("l2", "|θ| pooled by L2 norm over a group")
class L2(Magnitude):
    name = "l2"
    pooling = "l2"
