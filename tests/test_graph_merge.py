"""Merging channel groups through the channel graph (issue 24, filter merging).

When a cluster's channels compute the same values, merging them into one and folding the merge
into the layers reading them (their input weights summed) must compute exactly what the
unmerged model does: checked on every architecture of the structured-pruning suite (BN convnets,
residual streams, concat, shuffles, grouped and depthwise convs, SE gates, attention heads), on
an MLP, masked and physically removed.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from structured_archs import ARCHITECTURES, build
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.graph.analysis import analyze
from secateurs.graph.core import ChannelGraph, ChannelGroup
from secateurs.graph.merge import group_vectors, merge_groups, site_tensor
from secateurs.graph.removal import channel_masks, remove_channels
from secateurs.methods.structures.groups import layer_of


def _layout(group: ChannelGroup) -> list[tuple[str, str, int, int]]:
    return [(s.name, s.role, s.dim, len(i)) for s, i in group.sites]


@torch.no_grad()
def _duplicate(model: nn.Module, source: ChannelGroup, target: ChannelGroup) -> None:
    """Make channel `target` compute what `source` does: copy its filters and everything acting
    on it alone (not the columns reading it)."""
    for (site, src), (_, dst) in zip(source.sites, target.sites, strict=True):
        if site.role == "consumer":
            continue
        t = site_tensor(model, site)
        values = t.index_select(site.dim, torch.as_tensor(np.sort(src)))
        t.index_copy_(site.dim, torch.as_tensor(np.sort(dst)), values)


def _clusters(graph: ChannelGraph, seed: int) -> list[list[ChannelGroup]]:
    """Per layer with two or more channels of one layout, a random cluster of two or three."""
    units: dict[str, list[ChannelGroup]] = {}
    for g in graph.groups:
        units.setdefault(layer_of(g), []).append(g)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for groups in units.values():
        first = [g for g in groups if _layout(g) == _layout(groups[0])]
        if len(first) < 2:
            continue
        size = min(len(first), 2 + int(torch.randint(2, (1,), generator=gen)))
        order = torch.randperm(len(first), generator=gen)[:size].tolist()
        out.append([first[i] for i in order])
    return out


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_merging_identical_channels_is_exact_on_every_architecture(name: str) -> None:
    model, x = build(name)
    graph = analyze(model, x)
    clusters = _clusters(graph, seed=0)
    assert clusters, "every architecture has a layer to merge"
    for cluster in clusters:
        for g in cluster[1:]:
            _duplicate(model, cluster[0], g)
    expected = _outputs(model, x)
    merged = copy.deepcopy(model)
    removed = merge_groups(merged, graph, [[g.id for g in c] for c in clusters])
    assert removed == {g.id for c in clusters for g in c[1:]}
    masked = copy.deepcopy(merged)
    channel_masks(merged, graph, removed, roles=("producer", "consumer")).apply(masked)
    scale = float(expected.abs().max())
    torch.testing.assert_close(_outputs(masked, x), expected, rtol=1e-5, atol=1e-5 * scale)
    small = remove_channels(merged, graph, removed)
    torch.testing.assert_close(_outputs(small, x), expected, rtol=1e-5, atol=1e-5 * scale)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_merging_an_mlp_sums_the_next_layers_columns_and_is_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(8, 5)
    graph = analyze(model, x)
    hidden = [g for g in graph.groups if layer_of(g) == "0"]
    with torch.no_grad():
        for j in (2, 5):
            model[0].weight[j] = model[0].weight[1]
            model[0].bias[j] = model[0].bias[1]
    expected = _outputs(model, x)
    columns = model[2].weight.detach().clone()
    merged = copy.deepcopy(model)
    removed = merge_groups(merged, graph, [[hidden[1].id, hidden[2].id, hidden[5].id]])
    torch.testing.assert_close(merged[2].weight[:, 1], columns[:, [1, 2, 5]].sum(1), rtol=0, atol=1e-7)
    assert torch.equal(merged[0].weight[1], model[0].weight[1])  # the mean of equal rows, bit for bit
    small = remove_channels(merged, graph, removed)
    assert small[0].out_features == 4 and small[2].in_features == 4
    torch.testing.assert_close(_outputs(small, x), expected, rtol=1e-6, atol=1e-6)


def test_merging_different_channels_keeps_their_centre() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )
    x = torch.randn(2, 2, 6, 6)
    graph = analyze(model, x)
    ids = [g.id for g in graph.groups if layer_of(g) == "0"]
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    merge_groups(model, graph, [[ids[0], ids[3]]])
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        centre = (before[name][0].double() + before[name][3].double()) / 2
        torch.testing.assert_close(model.state_dict()[name][0].double(), centre, rtol=1e-6, atol=1e-7)
    # the Linear reads channel c at the 16 positions c*16 .. c*16+15: channel 3's are added to channel 0's
    w = before["4.weight"]
    torch.testing.assert_close(model[4].weight[:, :16], w[:, :16] + w[:, 48:], rtol=0, atol=1e-7)
    vectors = group_vectors(model, [g for g in graph.groups if layer_of(g) == "0"])
    assert vectors.shape == (4, 2 * 3 * 3 + 1) and vectors.dtype == torch.float64


def test_merging_refuses_what_it_cannot_do_exactly() -> None:
    model, x = build("convnext_block")
    approximate = analyze(model, x, through_norms=True)  # its LayerNorms pruned through: not exact
    with pytest.raises(ConfigError, match="not exact"):
        merge_groups(model, approximate, [[approximate.groups[0].id, approximate.groups[1].id]])
    model, x = build("vgg_bn")
    graph = analyze(model, x)
    by_layer: dict[str, list[int]] = {}
    for g in graph.groups:
        by_layer.setdefault(layer_of(g), []).append(g.id)
    a, b = list(by_layer.values())[:2]
    with pytest.raises(ConfigError, match="do not lie in the same tensors"):
        merge_groups(model, graph, [[a[0], b[0]]])
    with pytest.raises(ConfigError, match="two clusters"):
        merge_groups(model, graph, [[a[0], a[1]], [a[1], a[2]]])
    with pytest.raises(ConfigError, match="not prunable groups"):
        merge_groups(model, graph, [[a[0], 10**9]])
