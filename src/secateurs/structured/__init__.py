"""Structured pruning that removes whole units, giving a smaller dense model.

Unstructured masks save MACs only on paper (PyTorch's dense kernels still multiply the zeros);
removing neurons shrinks the weight matrices themselves, so memory and time fall for real.
"""

from secateurs.structured.neurons import neuron_masks, neuron_scores_l1, prune_neurons

__all__ = ["neuron_masks", "neuron_scores_l1", "prune_neurons"]
