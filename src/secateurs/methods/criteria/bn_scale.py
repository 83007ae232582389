"""BatchNorm scale (network slimming, Liu et al. 2017): |γ| of the BatchNorms a channel passes.

Slimming trains with an L1 penalty on γ (`train: {bn_l1: ...}`) so that unimportant channels'
scales shrink; a channel group is scored by the sum of |γ| over its BatchNorms. Defined for
channel groups of networks with BatchNorm.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.methods.criteria.base import CRITERIA, GroupCriterion, ScoringContext


@CRITERIA.register("bn_scale", "|γ| of the group's BatchNorms (network slimming; channel structure)")
class BNScale(GroupCriterion):
    name = "bn_scale"
    structures = ("channel",)

    def group_scores(self, ctx: ScoringContext, layout: Any) -> dict[int, float]:
        modules = dict(ctx.model.named_modules())
        scores = {}
        for g in layout.all_groups():
            gammas = [
                modules[s.module].weight.detach()[torch.as_tensor(i)].abs().sum()
                for s, i in g.sites
                if s.tensor == "weight" and isinstance(modules[s.module], nn.modules.batchnorm._BatchNorm)
            ]
            if not gammas:
                (site, _), *_ = g.producers()
                raise ConfigError(
                    f"criterion bn_scale needs a BatchNorm on every pruned channel; "
                    f"{site.module}'s have none",
                    fix=f"exclude the layer (structure_options: {{exclude: [{site.module!r}]}}) "
                    "or use another criterion (l1, taylor …)",
                )
            scores[g.id] = float(sum(gammas))
        return scores
