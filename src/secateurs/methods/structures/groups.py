"""The layout of groups that span layers: channel groups of a channel graph.

A channel group (see `secateurs.graph.core`) is every position, in every tensor, that one set of
channels reaches: a conv's filters, the next conv's input columns, a BatchNorm's entries, a
residual partner's filters. Its score pools the element scores of its sites on one `side`
(the producing filters, the consuming columns, or both; `pooling.py`), and its unit for
allocation is the layer that first produces its channels (for a residual group shared by many
convs, the first of them). Every unit keeps at least one group: a layer cannot lose all its
channels and still compute.

Allocations that rank across layers compare raw pooled norms of layers of different widths and
depths, which are not comparable; by default they divide each unit's scores by the unit's mean
(`normalize: mean`) and remove at most `max_per_layer` of any unit (`allocation_defaults`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet
from secateurs.graph.core import ChannelGraph, ChannelGroup, Site
from secateurs.graph.masking import removed_groups
from secateurs.graph.removal import channel_masks
from secateurs.methods.layers import DEFAULT_TYPES, LayerSelection
from secateurs.methods.structures.base import Layout, PoolSpec, Unit
from secateurs.methods.structures.pooling import reduce_over

ROLES = {"producers": ("producer",), "consumers": ("consumer",), "all": ("producer", "consumer")}


def layer_of(group: ChannelGroup) -> str:
    """The module that first produces the group's channels (its unit for allocation)."""
    producers = group.producers()
    return producers[0][0].module if producers else ""


def vetoed_modules(model: nn.Module, names: list[str], selection: LayerSelection) -> set[str]:
    """Layers the selection leaves out: their channels are kept (a group they produce is not pruned).

    A layer counts when its type is one the selection could choose (its `types`, or the default
    Linear/Conv types); it is left out when none of its parameters were chosen.
    """
    kinds = set(DEFAULT_TYPES) | set(selection.types) | set(selection.exclude_types)
    chosen = {n.rpartition(".")[0] for n in names}
    return {
        name
        for name, module in model.named_modules()
        if type(module).__name__ in kinds
        and getattr(module, "weight", None) is not None
        and name not in chosen
    }


def is_weight_matrix(site: Site, params: Mapping[str, Tensor]) -> bool:
    """A layer's weight matrix (`weight`, `in_proj_weight` …), not a bias or a norm's scale."""
    return site.tensor.endswith("weight") and params[site.name].dim() >= 2


def graph_layout(structure: Any, ctx: Any, graph: ChannelGraph) -> GraphLayout:
    """The layout of a structure's channel graph: the layer selection's left-out layers are kept."""
    return GraphLayout(
        ctx.model,
        graph,
        vetoed=vetoed_modules(ctx.model, ctx.names, ctx.selection),
        max_per_layer=structure.max_per_layer,
        structure=structure.name,
    )


class GraphLayout(Layout):
    """Units, scores and masks of the prunable groups of a `ChannelGraph`."""

    pools = True

    def __init__(
        self,
        model: nn.Module,
        graph: ChannelGraph,
        *,
        vetoed: set[str] | None = None,
        max_per_layer: float = 0.9,
        structure: str = "channel",
    ) -> None:
        self.model = model
        self.graph = graph
        self.params = dict(model.named_parameters())
        vetoed = vetoed or set()
        groups = [g for g in graph.groups if not any(s.module in vetoed for s, _ in g.producers())]
        if not groups:
            raise ConfigError(
                f"the model has no prunable groups for structure {structure!r}",
                fix="check the layer selection and the structure's exclude patterns",
            )
        by_unit: dict[str, list[ChannelGroup]] = defaultdict(list)
        for g in groups:
            by_unit[layer_of(g)].append(g)
        self.groups = dict(by_unit)
        modules = dict(model.named_modules())
        self.units = []
        for name, members in self.groups.items():
            weight = getattr(modules.get(name), "weight", None)
            shape = tuple(weight.shape) if isinstance(weight, Tensor) else (len(members),)
            self.units.append(Unit(name, shape, 1, len(members), floor=1))
        self.allocation_defaults = {"normalize": "mean", "max_per_layer": max_per_layer}

    # -- scores ------------------------------------------------------------------------------
    def _pooled_sites(self, pool: PoolSpec) -> Callable[[Site], bool]:
        params = self.params
        roles = ROLES[pool.side]
        known: dict[int, bool] = {}  # by site identity: sites repeat over groups

        def wanted(site: Site) -> bool:
            found = known.get(id(site))
            if found is None:
                found = known[id(site)] = (
                    site.name in params
                    and site.role in roles
                    and (pool.tensors == "all" or is_weight_matrix(site, params))
                )
            return found

        return wanted

    def scored(self, pool: PoolSpec) -> list[str]:
        wanted = self._pooled_sites(pool)
        return list(dict.fromkeys(s.name for g in self.all_groups() for s, _ in g.sites if wanted(s)))

    def all_groups(self) -> list[ChannelGroup]:
        return [g for members in self.groups.values() for g in members]

    def per_site(
        self, statistic: Callable[[Site], np.ndarray], wanted: Callable[[Site], bool], combine: str = "sum"
    ) -> dict[int, tuple[float, int]]:
        """Per group: a per-index site statistic combined over the group's wanted sites, and the
        number of entries it covers. Each site's statistic is computed once."""
        cache: dict[tuple[str, str, int], tuple[np.ndarray, int]] = {}
        out = {}
        for g in self.all_groups():
            total, count = (float("-inf") if combine == "max" else 0.0), 0
            for site, index in g.sites:
                if not wanted(site):
                    continue
                key = (site.module, site.tensor, site.dim)
                if key not in cache:
                    tensor = self.params[site.name]
                    cache[key] = (statistic(site), tensor.numel() // max(tensor.shape[site.dim], 1))
                stat, per_index = cache[key]
                values = stat[index]
                total = max(total, float(values.max())) if combine == "max" else total + float(values.sum())
                count += len(index) * per_index
            out[g.id] = (total, count)
        return out

    def group_scores(
        self, values: Mapping[str, Tensor], current: MaskSet | None, pool: PoolSpec
    ) -> dict[str, Tensor]:
        pooling = pool.pooling

        def statistic(site: Site) -> np.ndarray:
            return reduce_over(values[site.name], site.dim, pooling).cpu().numpy()

        pooled = self.per_site(statistic, self._pooled_sites(pool), pooling.combine)
        totals = torch.tensor([total for total, _ in pooled.values()], dtype=torch.float64)
        counts = torch.tensor([count for _, count in pooled.values()])
        if bool((counts == 0).any()):
            raise ConfigError(
                f"a channel group has no {pool.side} to score with pooling {pooling.name!r}",
                fix="use side: all, or a criterion that scores the group itself",
            )
        finished = pooling.finish(totals, counts).tolist()
        return self.mark_removed(dict(zip(pooled, finished, strict=True)), current)

    def mark_removed(self, scores: Mapping[int, float], current: MaskSet | None) -> dict[str, Tensor]:
        """Per unit, the groups' scores in unit order, −∞ for groups `current` removed already."""
        gone = removed_groups(self.graph, current)
        return {
            unit: torch.tensor(
                [float("-inf") if g.id in gone else scores[g.id] for g in members], dtype=torch.float64
            )
            for unit, members in self.groups.items()
        }

    # -- masks -------------------------------------------------------------------------------
    def removed_ids(self, keep: Mapping[str, Tensor], current: MaskSet | None) -> set[int]:
        """Ids of the groups a selection (`keep`, per unit) leaves out, and of those `current` removed."""
        removed = {
            g.id
            for unit, members in self.groups.items()
            for g, kept in zip(members, keep[unit].tolist(), strict=True)
            if not kept
        }
        return removed | removed_groups(self.graph, current)

    def masks(self, keep: Mapping[str, Tensor], current: MaskSet | None) -> MaskSet:
        removed = self.removed_ids(keep, current)
        masks = channel_masks(self.model, self.graph, removed, roles=("producer", "consumer"), complete=True)
        return current.intersect(masks) if current is not None else masks
