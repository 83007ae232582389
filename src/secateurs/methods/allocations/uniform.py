"""Uniform (layerwise): the same sparsity in every unit."""

from __future__ import annotations

from secateurs.methods.allocations.base import ALLOCATIONS, LayerInfo, kept_after


@ALLOCATIONS.register("uniform", "the same sparsity in every layer (layerwise)")
def uniform(layers: list[LayerInfo], sparsity: float) -> dict[str, int]:
    """Each unit keeps the same fraction of its groups."""
    return {layer.name: kept_after(layer.num_groups, sparsity, layer.floor) for layer in layers}
