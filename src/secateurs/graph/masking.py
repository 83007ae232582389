"""Channel pruning as masks, so that every schedule and reset of the pipeline applies unchanged.

A prune step with `structure: channel` scores the model's channel groups and masks the chosen
ones: their producers' filters (weights and biases) and their consumers' input channels. The
masked model computes exactly what the physically smaller one would (`remove_channels`), its
nonzero MACs count what really remains, and masks only shrink from step to step. `shrink` turns
such a model into the smaller plain module at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, masks_of
from secateurs.graph.core import ChannelGraph, analyze
from secateurs.graph.prune import CHANNEL_CRITERIA, Batch, select_groups
from secateurs.graph.removal import channel_masks, remove_channels

CRITERION_ALIASES = {"magnitude": "l1"}  # the pipeline's default criterion, for channels


def _zero_along(mask: Tensor, dim: int, index: Tensor) -> bool:
    """Whether every entry of `mask` at `index` along `dim` is False."""
    return not bool(mask.index_select(dim, index).any())


def removed_groups(model: nn.Module, graph: ChannelGraph, masks: MaskSet | None) -> set[int]:
    """Groups whose every consuming input channel is masked already (removed by an earlier step)."""
    if masks is None:
        return set()
    out = set()
    for group in graph.groups:
        consumers = group.consumers()
        if consumers and all(
            s.name in masks and _zero_along(masks[s.name], s.dim, torch.as_tensor(i)) for s, i in consumers
        ):
            out.add(group.id)
    return out


def channel_prune_masks(
    model: nn.Module,
    sparsity: float,
    *,
    example_input: Tensor,
    criterion: str = "l1",
    allocation: str = "global",
    data: Batch | None = None,
    seed: int = 0,
    exclude: Sequence[str] = (),
    max_per_layer: float = 0.9,
) -> MaskSet:
    """Masks removing `sparsity` of the model's channel groups (those already removed count).

    The existing masks of the model are kept (masks only shrink).
    """
    criterion = CRITERION_ALIASES.get(criterion, criterion)
    if criterion not in CHANNEL_CRITERIA:
        raise ConfigError(
            f"criterion {criterion!r} does not score channels",
            fix=f"with structure channel use one of: {', '.join(CHANNEL_CRITERIA.names())}",
        )
    graph = analyze(model, example_input, exclude=exclude)
    if not graph.groups:
        raise ConfigError("the model has no prunable channels", fix="check the layer exclude patterns")
    current = masks_of(model)
    already = removed_groups(model, graph, current)
    scores = CHANNEL_CRITERIA.get(criterion)(model, graph, data, seed)
    for gid in already:
        scores[gid] = float("-inf")  # removed before: stays removed and counts towards the target
    chosen = set(select_groups(graph, scores, sparsity, allocation=allocation, max_per_layer=max_per_layer))
    masks = channel_masks(model, graph, chosen | already, roles=("producer", "consumer"), complete=True)
    return current.intersect(masks) if current is not None else masks


def shrink(model: nn.Module, example_input: Tensor) -> nn.Module:
    """The plain smaller model: the channel groups the model's masks remove, physically removed.

    Masks that are not whole channels (unstructured zeros) stay as zeros in the result.
    """
    graph = analyze(model, example_input)
    return remove_channels(model, graph, removed_groups(model, graph, masks_of(model)))
