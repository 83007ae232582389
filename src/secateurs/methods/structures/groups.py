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
(`normalize: mean`) and remove at most `max_per_layer` of any unit (`allocation_defaults`). The
structure's `round_to` goes the same way to `allocate`, which keeps every unit's count a multiple
of it (`methods.allocations.base.round_counts`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, canonical_names
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
    Linear/Conv types); it is left out when none of its parameters were chosen. A layer whose
    weight has no entries (nn.Linear(0, 4)) is never selected, and is not left out for that.
    """
    kinds = set(DEFAULT_TYPES) | set(selection.types) | set(selection.exclude_types)
    chosen = set(names)
    canonical = canonical_names(model)  # a layer whose tied weight was chosen under another name is in

    def picked(name: str, module: nn.Module) -> bool:
        own = (f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False))
        return any(canonical.get(n, n) in chosen for n in own)

    return {
        name
        for name, module in model.named_modules()
        if type(module).__name__ in kinds
        and getattr(module, "weight", None) is not None
        and not (isinstance(module.weight, Tensor) and module.weight.numel() == 0)
        and not picked(name, module)
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
        round_to=getattr(structure, "round_to", 1),
    )


@dataclass
class _Entries:
    """The (group, site, indices) entries of a list of groups at the sites a predicate wants, as flat
    arrays, so a per-index statistic combines over every group in a few array operations."""

    sites: list[Site]  # distinct wanted sites (one per module, tensor, dim), in order of first use
    site: np.ndarray  # per entry: its site's number in `sites`
    group: np.ndarray  # per entry: its group's position in the list of groups
    rank: np.ndarray  # per entry: its place among its group's entries
    starts: np.ndarray  # per entry: where its indices start in `index`
    lengths: np.ndarray  # per entry: how many indices it has
    index: np.ndarray  # the indices along each site's dim, entries concatenated

    @classmethod
    def of(cls, graph: ChannelGraph, groups: list[ChannelGroup], wanted: Callable[[Site], bool]) -> _Entries:
        """The entries of `groups` (some of `graph`'s, in this order) at the sites `wanted`."""
        if graph.entries is None:
            return cls.listed(groups, wanted)
        site_of, position, roots = graph.entries
        place = np.full(int(roots.max()) + 1 if len(roots) else 0, -1, dtype=np.int64)
        place[np.fromiter((g.id for g in groups), np.int64, len(groups))] = np.arange(len(groups))
        group = place[roots]
        chosen = np.fromiter((wanted(s) for s in graph.sites), bool, len(graph.sites))
        keep = (group >= 0) & chosen[site_of]
        group, site_of, position = group[keep], site_of[keep], position[keep]
        order = np.argsort(group, kind="stable")  # each group's entries stay by site, then index
        group, site_of, position = group[order], site_of[order], position[order]
        if not len(group):
            return cls([], *(np.zeros(0, dtype=np.int64) for _ in range(6)))
        new = np.ones(len(group), dtype=bool)
        new[1:] = (group[1:] != group[:-1]) | (site_of[1:] != site_of[:-1])
        starts = np.flatnonzero(new)
        lengths = np.diff(np.append(starts, len(group)))
        group, site_of = group[starts], site_of[starts]
        rank = np.arange(len(starts)) - np.searchsorted(group, group)
        used, first = np.unique(site_of, return_index=True)
        used = used[np.argsort(first)]  # the sites in order of first use
        number = np.zeros(len(graph.sites), dtype=np.int64)
        number[used] = np.arange(len(used))
        sites = [graph.sites[i] for i in used.tolist()]
        return cls(sites, number[site_of], group, rank, starts, lengths, position.astype(np.int64))

    @classmethod
    def listed(cls, groups: list[ChannelGroup], wanted: Callable[[Site], bool]) -> _Entries:
        """`of` by walking the groups' site lists (graphs without flat entries)."""
        number: dict[int, int | None] = {}  # by site identity: sites repeat over groups
        by_key: dict[tuple[str, str, int], int] = {}
        sites: list[Site] = []
        site, group, rank, index = [], [], [], []
        for position, g in enumerate(groups):
            r = 0
            for s, idx in g.sites:
                k = number.get(id(s), -1)
                if k == -1:
                    k = None
                    if wanted(s):
                        k = by_key.setdefault((s.module, s.tensor, s.dim), len(sites))
                        if k == len(sites):
                            sites.append(s)
                    number[id(s)] = k
                if k is None:
                    continue
                site.append(k)
                group.append(position)
                rank.append(r)
                index.append(idx)
                r += 1
        lengths = np.fromiter((len(i) for i in index), np.int64, len(index))
        starts = np.zeros(len(index), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        flat = np.concatenate(index).astype(np.int64) if index else np.zeros(0, dtype=np.int64)
        as_array = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
        return cls(sites, as_array(site), as_array(group), as_array(rank), starts, lengths, flat)

    def combine(self, stats: list[np.ndarray], groups: int, combine: str) -> np.ndarray:
        """Per group, the statistic summed (or maxed) over its entries' indices: bit for bit what a
        loop over groups, then entries, adding each entry's `stat[index].sum()`, computes."""
        out = np.full(groups, float("-inf")) if combine == "max" else np.zeros(groups)
        if not len(self.site):
            return out
        offsets = np.zeros(len(stats), dtype=np.int64)
        np.cumsum([len(s) for s in stats[:-1]], out=offsets[1:])
        values = np.concatenate(stats)[np.repeat(offsets[self.site], self.lengths) + self.index]
        if combine == "max":
            np.maximum.at(out, np.repeat(self.group, self.lengths), values)
            return out
        partial = np.add.reduceat(values, self.starts)  # numpy sums a slice of 3+ in its own order:
        for e in np.flatnonzero(self.lengths > 2).tolist():  # those take that order
            partial[e] = values[self.starts[e] : self.starts[e] + self.lengths[e]].sum()
        table = np.zeros((groups, int(self.rank.max()) + 1))
        table[self.group, self.rank] = partial
        for column in table.T:  # each group adds its entries in order
            out += column
        return out


def _refuse_tied(model: nn.Module, graph: ChannelGraph, structure: str) -> None:
    """Refuse a site under a tied parameter's other name: a graph built without the engine's
    tracing (`secateurs.graph.hf`) does not couple the layers sharing it (`analyze` does)."""
    canonical = canonical_names(model)
    for site in graph.sites:
        if canonical.get(site.name, site.name) != site.name:
            raise ConfigError(
                f"structure {structure!r} cannot remove channels of {site.name!r}: it is tied to "
                f"{canonical[site.name]!r} (one tensor shared by two layers)",
                fix="use an element structure (unstructured, nm, block) or untie the weights",
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
        round_to: int = 1,
    ) -> None:
        self.model = model
        self.graph = graph
        _refuse_tied(model, graph, structure)
        self.params = dict(model.named_parameters())
        vetoed = vetoed or set()
        by_unit: dict[str, list[ChannelGroup]] = defaultdict(list)
        for g in graph.groups:
            producers = [s.module for s, _ in g.sites if s.role == "producer"]
            if not any(m in vetoed for m in producers):
                by_unit[producers[0] if producers else ""].append(g)  # its unit: see layer_of
        if not by_unit:
            shared = graph.kept_shared
            why = (
                f" (the channels of the tied {', '.join(map(repr, shared))} are kept: a layer sharing "
                "it reads them as fixed features, e.g. the model's input, and one tensor cannot shrink "
                "for one layer only)"
                if shared
                else ""
            )
            raise ConfigError(
                f"the model has no prunable groups for structure {structure!r}{why}",
                fix="untie the weights (give each layer its own copy) or use an element structure "
                "(unstructured, nm, block)"
                if shared
                else "check the layer selection and the structure's exclude patterns",
            )
        self.groups = dict(by_unit)
        modules = dict(model.named_modules())
        self.units = []
        for name, members in self.groups.items():
            weight = getattr(modules.get(name), "weight", None)
            shape = tuple(weight.shape) if isinstance(weight, Tensor) else (len(members),)
            self.units.append(Unit(name, shape, 1, len(members), floor=1))
        self.allocation_defaults = {"normalize": "mean", "max_per_layer": max_per_layer, "round_to": round_to}

    # -- scores ------------------------------------------------------------------------------
    def _pooled_sites(self, pool: PoolSpec) -> Callable[[Site], bool]:
        params = self.params
        roles = ROLES[pool.side]

        def wanted(site: Site) -> bool:
            return (
                site.name in params
                and site.role in roles
                and (pool.tensors == "all" or is_weight_matrix(site, params))
            )

        return wanted

    def _pooled_entries(self, pool: PoolSpec) -> _Entries:
        key = (pool.side, pool.tensors)
        cache = self.__dict__.setdefault("_entries_cache", {})
        if key not in cache:
            cache[key] = _Entries.of(self.graph, self.all_groups(), self._pooled_sites(pool))
        return cache[key]

    def scored(self, pool: PoolSpec) -> list[str]:
        return list(dict.fromkeys(site.name for site in self._pooled_entries(pool).sites))

    def all_groups(self) -> list[ChannelGroup]:
        return [g for members in self.groups.values() for g in members]

    def per_site(
        self,
        statistic: Callable[[Site], np.ndarray],
        wanted: Callable[[Site], bool] | _Entries,
        combine: str = "sum",
    ) -> dict[int, tuple[float, int]]:
        """Per group: a per-index site statistic (float64) combined over the group's wanted sites,
        and the number of entries it covers. Each site's statistic is computed once."""
        groups = self.all_groups()
        entries = wanted if isinstance(wanted, _Entries) else _Entries.of(self.graph, groups, wanted)
        per_index = [
            (t := self.params[site.name]).numel() // max(t.shape[site.dim], 1) for site in entries.sites
        ]
        totals = entries.combine([statistic(site) for site in entries.sites], len(groups), combine)
        counts = np.zeros(len(groups), dtype=np.int64)
        np.add.at(
            counts, entries.group, entries.lengths * np.asarray(per_index, dtype=np.int64)[entries.site]
        )
        return {
            g.id: (total, count)
            for g, total, count in zip(groups, totals.tolist(), counts.tolist(), strict=True)
        }

    def group_scores(
        self, values: Mapping[str, Tensor], current: MaskSet | None, pool: PoolSpec
    ) -> dict[str, Tensor]:
        pooling = pool.pooling

        def statistic(site: Site) -> np.ndarray:
            return reduce_over(values[site.name], site.dim, pooling).cpu().numpy()

        pooled = self.per_site(statistic, self._pooled_entries(pool), pooling.combine)
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
