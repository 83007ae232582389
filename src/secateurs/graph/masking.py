"""Masks that stand for removed channels, and the physical removal they stand for.

A prune with a channel structure (`channel`, `heads`, `ffn`) masks whole groups: their producers'
filters (weights and biases) and their consumers' input channels. The masked model computes
exactly what the physically smaller one would (`remove_channels`), its nonzero MACs count what
really remains, and masks only shrink from step to step. `removed_groups` reads the groups a
model's masks remove; `shrink` turns such a model into the smaller plain module at the end.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from secateurs.core.masks import MaskSet, masks_of
from secateurs.graph.analysis import analyze
from secateurs.graph.core import ChannelGraph
from secateurs.graph.removal import remove_channels


def _zero_along(mask: Tensor, dim: int, index: Tensor) -> bool:
    """Whether every entry of `mask` at `index` along `dim` is False."""
    return not bool(mask.index_select(dim, index).any())


def removed_groups(graph: ChannelGraph, masks: MaskSet | None) -> set[int]:
    """Groups whose every consuming input channel is masked already (removed by an earlier step)."""
    if masks is None:
        return set()
    out = set()
    for group in graph.groups:
        consumers = group.consumers()
        if consumers and all(
            s.name in masks
            and _zero_along(masks[s.name], s.dim, torch.as_tensor(i, device=masks[s.name].device))
            for s, i in consumers
        ):
            out.add(group.id)
    return out


def shrink(model: nn.Module, example_input: Tensor) -> nn.Module:
    """The plain smaller model: the channel groups the model's masks remove, physically removed.

    Masks that are not whole channels (unstructured zeros) stay as zeros in the result.
    """
    graph = analyze(model, example_input)
    return remove_channels(model, graph, removed_groups(graph, masks_of(model)))
