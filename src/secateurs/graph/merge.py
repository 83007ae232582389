"""Merging channel groups: several channels become one, folded exactly into what consumes them.

Filter merging (Ding et al. 2019, Centripetal SGD) removes a channel that duplicates another
instead of discarding it: if channels j and r of a layer compute the same values, every layer
that reads them computes W[:, r]·x_r + W[:, j]·x_j = (W[:, r] + W[:, j])·x_r, so channel j can
be removed once its consumers' input weights are added to r's. `merge_groups` does this for
clusters of channel groups of a `ChannelGraph`:

- the kept group (the cluster's first) gets the members' mean at every producer and passive
  site: the filters and biases making the channel, and whatever acts on the channel alone on its
  way (a BatchNorm's scale, shift and running statistics, a depthwise conv's filter);
- at every consumer site, the kept group's input weights become the sum of the members'.

The removed members are then masked or cut like any pruned group (`channel_masks`,
`remove_channels`), so a residual stream (one group over many producers), a BatchNorm, a concat
or a flatten into a Linear are handled by the graph exactly as pruning handles them. When the
members were identical (after centripetal training), the merged model computes exactly what the
unmerged one did; otherwise the kept channel is the cluster's centre, the usual approximation.
A graph whose removal is not exact (LayerNorms pruned through) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.graph.core import ChannelGraph, ChannelGroup, Site

__all__ = ["group_vectors", "merge_groups", "site_tensor"]


def site_tensor(model: nn.Module, site: Site) -> Tensor:
    """The parameter or buffer a site lies in."""
    module = model.get_submodule(site.module) if site.module else model
    tensor = getattr(module, site.tensor)
    if not isinstance(tensor, Tensor):
        raise ConfigError(f"{site.name} is not a tensor of the model", fix="re-analyze the model")
    return tensor


def _layout(group: ChannelGroup) -> list[tuple[str, str, int, int]]:
    """Where a group lies: (name, role, dim, number of indices) per site, in order."""
    return [(s.name, s.role, s.dim, len(i)) for s, i in group.sites]


def _check_same_layout(groups: Sequence[ChannelGroup], what: str) -> None:
    first = _layout(groups[0])
    for g in groups[1:]:
        if _layout(g) != first:
            raise ConfigError(
                f"{what}: channel groups {groups[0].id} and {g.id} do not lie in the same tensors "
                "(e.g. one is added to a residual stream and the other is not), so they cannot be merged",
                fix="merge within layers whose channels all take the same path, or exclude that layer",
            )


def group_vectors(
    model: nn.Module, groups: Sequence[ChannelGroup], *, roles: tuple[str, ...] = ("producer",)
) -> Tensor:
    """One row per group: its entries at the sites of `roles` (default: the filters and biases
    making it), concatenated in site order, float64. The groups must lie in the same tensors."""
    if not groups:
        return torch.zeros(0, 0, dtype=torch.float64)
    _check_same_layout(groups, "clustering")
    rows = []
    for g in groups:
        parts = []
        for site, index in g.sites:
            if site.role not in roles:
                continue
            t = site_tensor(model, site).detach()
            idx = torch.as_tensor(np.sort(index), dtype=torch.long, device=t.device)
            parts.append(t.index_select(site.dim, idx).movedim(site.dim, 0).reshape(-1).to(torch.float64))
        rows.append(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64))
    return torch.stack(rows)


@torch.no_grad()
def merge_groups(model: nn.Module, graph: ChannelGraph, clusters: Sequence[Sequence[int]]) -> set[int]:
    """Merge each cluster of group ids into its first group, in place; returns the ids to remove.

    Producer and passive sites of the kept group become the members' mean, its consumer sites
    the members' sum (see the module docstring). Mask or remove the returned groups afterwards
    (`channel_masks(model, graph, removed, roles=("producer", "consumer"))` or `remove_channels`).
    """
    if graph.approximate:
        raise ConfigError(
            f"cannot merge channels through {', '.join(graph.approximate)}: removing them is not exact there",
            fix="analyze the model without through_norms to merge channels",
        )
    by_id = {g.id: g for g in graph.groups}
    removed: set[int] = set()
    seen: set[int] = set()
    for cluster in clusters:
        ids = [int(i) for i in cluster]
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ConfigError(
                f"channel groups {unknown[:5]} are not prunable groups of this graph",
                fix="cluster ids from graph.groups",
            )
        if seen & set(ids) or len(set(ids)) != len(ids):
            raise ConfigError("a channel group is in two clusters", fix="give each group one cluster")
        seen.update(ids)
        if len(ids) < 2:
            continue
        members = [by_id[i] for i in ids]
        _check_same_layout(members, "merging")
        for position, (site, _) in enumerate(members[0].sites):
            tensor = site_tensor(model, site)
            index = [torch.as_tensor(np.sort(g.sites[position][1]), dtype=torch.long) for g in members]
            index = [i.to(tensor.device) for i in index]
            # in float64: the mean of identical float32 values is then that value, bit for bit
            values = torch.stack([tensor.index_select(site.dim, i).to(torch.float64) for i in index])
            merged = values.sum(0) if site.role == "consumer" else values.mean(0)
            tensor.index_copy_(site.dim, index[0], merged.to(tensor.dtype))
            if site.role != "consumer":  # the members become the centre too (masked or cut next)
                for i in index[1:]:
                    tensor.index_copy_(site.dim, i, merged.to(tensor.dtype))
        removed.update(ids[1:])
    return removed
