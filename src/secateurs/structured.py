"""Structured pruning that removes whole units, giving a smaller dense model.

Unstructured masks save MACs only on paper (PyTorch's dense kernels still multiply the zeros);
removing channels and neurons shrinks the weight tensors themselves, so memory and time fall for
real. `analyze` builds the channel dependency graph, `prune_channels` scores and removes channel
groups, `fold_batchnorm` folds BatchNorm into the preceding layer for inference.
"""

from secateurs.graph.core import ChannelGraph, analyze, register_function_rule, register_module_rule
from secateurs.graph.fold import fold_batchnorm, folded_count
from secateurs.graph.neurons import neuron_masks, neuron_scores_l1, prune_neurons
from secateurs.graph.prune import CHANNEL_CRITERIA, prune_channels, select_groups
from secateurs.graph.removal import channel_masks, remove_channels, resize_like

__all__ = [
    "CHANNEL_CRITERIA",
    "ChannelGraph",
    "analyze",
    "channel_masks",
    "fold_batchnorm",
    "folded_count",
    "neuron_masks",
    "neuron_scores_l1",
    "prune_channels",
    "prune_neurons",
    "register_function_rule",
    "register_module_rule",
    "remove_channels",
    "resize_like",
    "select_groups",
]
