"""Uniform (layerwise): the same sparsity in every unit."""

from __future__ import annotations

from secateurs.methods.allocations.base import ALLOCATIONS, LayerInfo, layer_kept


@ALLOCATIONS.register("uniform", "the same sparsity in every layer (layerwise)")
def uniform(layers: list[LayerInfo], sparsity: float) -> dict[str, int]:
    """Each unit keeps the same fraction of its groups (of every row, for a unit counted per row)."""
    return {layer.name: layer_kept(layer, sparsity) for layer in layers}
