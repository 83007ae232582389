"""Global: one ranking over the groups of all units."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from secateurs.core.errors import ConfigError, check_choice
from secateurs.core.topk import current_tie_rule, tie_order, topk_mask
from secateurs.methods.allocations.base import ALLOCATIONS, Allocated, LayerInfo, kept_after

NORMALIZE = ("none", "mean")
Normalize = Literal["none", "mean"]
Fraction = Annotated[float, Field(gt=0, le=1)]


def _normalised(scores: Tensor, normalize: str) -> Tensor:
    """A unit's scores divided by the mean of its finite ones (−∞ stays; a mean ≤ 0 gives 0).

    Raw norms of layers of different widths and depths are not comparable; dividing by the unit's
    mean makes a global ranking compare each group with its own layer's typical group.
    """
    if normalize == "none":
        return scores
    finite = torch.isfinite(scores)
    mean = float(scores[finite].mean()) if bool(finite.any()) else 0.0
    if mean > 0:
        return torch.where(finite, scores / mean, scores)
    return torch.where(finite, torch.zeros_like(scores), scores)


def _check(normalize: str, max_per_layer: float) -> None:
    check_choice(
        normalize,
        NORMALIZE,
        "global allocation option normalize",
        where="allocation_options",
        fix="none: rank raw scores; mean: divide each layer's scores by their mean first",
    )
    if (
        isinstance(max_per_layer, bool)
        or not isinstance(max_per_layer, int | float)
        or not 0 < max_per_layer <= 1
    ):
        raise ConfigError(
            f"global allocation option max_per_layer must be in (0, 1], got {max_per_layer!r}",
            where="allocation_options",
            fix="e.g. max_per_layer: 0.9 removes at most 90 % of any layer's groups",
        )


@ALLOCATIONS.register("global", "one threshold over the scores of all layers")
def global_(
    layers: list[LayerInfo], sparsity: float, *, normalize: Normalize = "none", max_per_layer: Fraction = 1.0
) -> dict[str, int]:
    """Keep the highest-scoring groups of the whole model until the element budget is spent.

    Ties are broken deterministically: earlier layer first, then lower index (or by the prune's
    `ties` rule in force, `current_tie_rule`, over the layers' scores laid end to end). A unit
    loses at most `max_per_layer` of its groups and keeps at least its floor: the groups that must
    stay are kept first (its best ones), the rest of the budget goes down the global ranking.
    """
    _check(normalize, max_per_layer)
    total = sum(layer.numel for layer in layers)
    budget = kept_after(total, sparsity)
    # raw scores are ranked in their own dtype (widening float32 to float64 is exact, so the
    # ranking is the same); normalised ones in float64, where the division is done
    raw = [layer.scores.detach().reshape(-1).cpu() for layer in layers]
    scores = torch.cat([_normalised(s if normalize == "none" else s.double(), normalize) for s in raw])
    must = [
        layer.num_groups
        - min(
            layer.num_groups - min(layer.floor, layer.num_groups),
            math.floor(max_per_layer * layer.num_groups),
        )
        for layer in layers
    ]
    # another tie rule: the scores are ranked in the permuted order by the index rule below
    # (ties to the earlier position), and what is kept is mapped back
    permutation = tie_order(scores, *current_tie_rule())
    if permutation is not None:
        scores = scores[permutation]
    if not any(must) and len({layer.group_size for layer in layers}) == 1:
        # one group size: the budget is a number of groups, the best ones (ties to the earlier
        # layer, then the lower index), found by selection rather than a full sort; each unit's
        # share of it is that unit's own top k (ties to the lower index), handed on as chosen
        keep = topk_mask(scores, budget // layers[0].group_size)
        if permutation is not None:
            keep = torch.empty_like(keep).index_put_((permutation,), keep)
        parts = keep.split([layer.num_groups for layer in layers])
        chosen = {layer.name: part for layer, part in zip(layers, parts, strict=True)}
        return Allocated({name: int(kept.count_nonzero()) for name, kept in chosen.items()}, chosen)
    sizes = torch.cat(
        [torch.full((layer.num_groups,), layer.group_size, dtype=torch.long) for layer in layers]
    )
    owner = torch.cat(
        [torch.full((layer.num_groups,), i, dtype=torch.long) for i, layer in enumerate(layers)]
    )
    if permutation is not None:
        sizes, owner = sizes[permutation], owner[permutation]
    order = torch.argsort(scores, descending=True, stable=True)
    if not any(must):
        taken = torch.cumsum(sizes[order], 0) <= budget
        counts = torch.bincount(owner[order][taken], minlength=len(layers))
        return {layer.name: int(counts[i]) for i, layer in enumerate(layers)}
    # a group must stay when it is among its unit's `must` best (in the global order, which within a
    # unit is the unit's own descending order with ties to the lower index)
    owned = owner[order]
    by_owner = torch.argsort(owned, stable=True)  # positions grouped by unit, in ranking order
    starts = torch.cumsum(torch.bincount(owned, minlength=len(layers)), 0) - torch.bincount(
        owned, minlength=len(layers)
    )
    rank = torch.empty_like(order)
    rank[order[by_owner]] = torch.arange(len(order)) - starts[owned[by_owner]]
    forced = rank < torch.tensor(must, dtype=torch.long)[owner]
    free = order[~forced[order]]
    room = budget - int(sizes[forced].sum())
    taken = torch.cumsum(sizes[free], 0) <= room
    counts = torch.bincount(owner[forced], minlength=len(layers)) + torch.bincount(
        owner[free][taken], minlength=len(layers)
    )
    return {layer.name: int(counts[i]) for i, layer in enumerate(layers)}
