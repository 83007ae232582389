"""Random scores: the baseline every criterion must beat (seeded, so reproducible)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from secateurs.methods.criteria.base import CRITERIA, Criterion, ScoringContext
from secateurs.methods.structures.groups import GraphLayout


@CRITERIA.register("random", "uniform random scores (seeded)")
class Random(Criterion):
    """One uniform draw per weight; for channel groups, one per group (pooling random draws over a
    group would only make wide groups' scores concentrate, not more random)."""

    name = "random"
    layerwise = True

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        return {
            n: torch.rand(p.shape, generator=ctx.generator, dtype=torch.float64).to(p.device)
            for n, p in ctx.params().items()
        }

    def scores_groups(self, layout: Any) -> bool:
        return isinstance(layout, GraphLayout)

    def group_scores(self, ctx: ScoringContext, layout: Any) -> dict[int, float]:
        groups = layout.graph.groups  # every prunable group, in id order: the draw order
        values = torch.rand(len(groups), generator=ctx.generator, dtype=torch.float64)
        return {g.id: float(v) for g, v in zip(groups, values, strict=True)}
