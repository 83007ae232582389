"""FPGM (He et al. 2019): filters near the geometric median of their layer are the replaceable ones.

A filter's score is the sum of its distances to the other filters of its layer; a channel group
sums that over the layers producing it. Not a sum over single weights, so it scores groups
itself: channels, and the heads and FFN channels of transformers (their producing rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from secateurs.graph.core import Site
from secateurs.methods.criteria.base import CRITERIA, GroupCriterion, ScoringContext
from secateurs.methods.structures.groups import is_weight_matrix


@CRITERIA.register("fpgm", "distance to the layer's other filters (geometric median, He et al. 2019)")
class FPGM(GroupCriterion):
    name = "fpgm"
    structures = ("channel", "heads", "ffn", "heads_ffn")

    def group_scores(self, ctx: ScoringContext, layout: Any) -> dict[int, float]:
        modules = dict(ctx.model.named_modules())

        def distances(site: Site) -> np.ndarray:
            rows = getattr(modules[site.module], site.tensor).detach().movedim(site.dim, 0)
            rows = rows.reshape(rows.shape[0], -1).double()
            return torch.cdist(rows, rows).sum(1).cpu().numpy()

        params = dict(ctx.model.named_parameters())

        def filters(site: Site) -> bool:
            return site.name in params and site.role == "producer" and is_weight_matrix(site, params)

        return {gid: total for gid, (total, _) in layout.per_site(distances, filters).items()}
