"""Random scores: the baseline every criterion must beat (seeded, so reproducible)."""

from __future__ import annotations

import torch
from torch import Tensor

from secateurs.methods.criteria.base import CRITERIA, Criterion, ScoringContext


@CRITERIA.register("random", "uniform random scores (seeded)")
class Random(Criterion):
    name = "random"

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        return {
            n: torch.rand(p.shape, generator=ctx.generator, dtype=torch.float64).to(p.device)
            for n, p in ctx.params().items()
        }
