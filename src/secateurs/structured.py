"""Structured pruning that removes whole units, giving a smaller dense model.

Unstructured masks save MACs only on paper (PyTorch's dense kernels still multiply the zeros);
removing channels and neurons shrinks the weight tensors themselves, so memory and time fall for
real. `analyze` builds the channel dependency graph; `prune_channels` scores channel groups with
any criterion (the `channel` structure of `secateurs.prune`), allocates them with any allocation
and removes them; `shrink` removes the channels a masked model has pruned; `fold_batchnorm` folds
BatchNorm into the preceding layer for inference.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from secateurs.core.masks import masks_of
from secateurs.graph.analysis import analyze
from secateurs.graph.core import ChannelGraph, register_function_rule, register_module_rule
from secateurs.graph.fold import fold_batchnorm, folded_count
from secateurs.graph.masking import removed_groups, shrink
from secateurs.graph.neurons import neuron_masks, neuron_scores_l1, prune_neurons
from secateurs.graph.removal import channel_masks, remove_channels, resize_like
from secateurs.methods.pruning import plan

log = logging.getLogger(__name__)

__all__ = [
    "ChannelGraph",
    "analyze",
    "channel_masks",
    "fold_batchnorm",
    "folded_count",
    "neuron_masks",
    "neuron_scores_l1",
    "output_deviation",
    "prune_channels",
    "prune_neurons",
    "register_function_rule",
    "register_module_rule",
    "remove_channels",
    "removed_groups",
    "resize_like",
    "shrink",
]


def prune_channels(
    model: nn.Module,
    example_input: Tensor,
    sparsity: float,
    *,
    criterion: str = "l1",
    allocation: str = "uniform",
    max_per_layer: float = 0.9,
    data: Any = None,
    seed: int = 0,
    exclude: Sequence[str] = (),
    through_norms: bool = False,
    **options: Any,
) -> nn.Module:
    """A smaller copy of `model` without `sparsity` of its prunable channel groups.

    The groups are chosen exactly as `secateurs.prune(model, sparsity, structure="channel", ...)`
    would mask them: any criterion (default `l1`, the filters' L1 norm), any allocation (default
    `uniform`: the same fraction of every layer), every layer keeping at least one channel, and
    rankings across layers removing at most `max_per_layer` of any layer. `example_input` (one
    batch) traces shapes; `data` is what data-dependent criteria score on; `exclude`: module name
    patterns kept whole. `through_norms`: also prune channels a LayerNorm normalises together; the
    result then differs from masking them, and the relative deviation of its output on
    `example_input` is logged as a warning (`output_deviation` measures it). Other options go to
    `compute_masks`.
    """
    result = plan(
        model,
        sparsity,
        criterion=criterion,
        allocation=allocation,
        structure="channel",
        structure_options={
            "exclude": list(exclude),
            "max_per_layer": max_per_layer,
            "through_norms": through_norms,
        },
        data=data,
        seed=seed,
        example_input=example_input,
        **options,
    )
    layout = result.layout
    graph: ChannelGraph = layout.graph  # type: ignore[attr-defined]
    removed = layout.removed_ids(result.keep, masks_of(model))  # type: ignore[attr-defined]
    small = remove_channels(model, graph, removed)
    if graph.approximate and removed:
        deviation = output_deviation(model, small, graph, removed, example_input)
        log.warning(
            "pruned through %s: the output differs from masking the channels by %.3g "
            "(max absolute difference / max absolute masked output, on the example input)",
            ", ".join(graph.approximate),
            deviation,
        )
    return small


@torch.no_grad()
def output_deviation(
    model: nn.Module, small: nn.Module, graph: ChannelGraph, removed: Sequence[int], example_input: Tensor
) -> float:
    """How far removal strays from masking: max |small(x) - masked(x)| / max |masked(x)| (0 when exact)."""
    reference = copy.deepcopy(model).eval()
    channel_masks(model, graph, removed).apply(reference)
    training = small.training
    small.eval()
    try:
        expected, got = reference(example_input), small(example_input)
    finally:
        small.train(training)
    scale = float(expected.abs().max())
    return float((got - expected).abs().max()) / (scale if scale > 0 else 1.0)
