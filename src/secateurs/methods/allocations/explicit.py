"""Explicit: a sparsity per layer, given by name pattern."""

from __future__ import annotations

from collections.abc import Mapping

from secateurs.core.errors import ConfigError
from secateurs.methods.allocations.base import (
    ALLOCATIONS,
    LayerInfo,
    layer_kept,
    override_counts,
    sparsity_free,
)


@ALLOCATIONS.register("explicit", "a sparsity per layer, given by name pattern")
@sparsity_free
def explicit(
    layers: list[LayerInfo], sparsity: float | None, *, sparsities: Mapping[str, float] | None = None
) -> dict[str, int]:
    """Per-layer sparsities by shell-style pattern (first match wins); others get `sparsity`."""
    if not sparsities:
        raise ConfigError(
            "the explicit allocation needs `sparsities`, a mapping of layer patterns to sparsities",
            fix="set allocation_options: {sparsities: {'features.*': 0.5}}, or use the 'uniform' allocation",
        )
    out = override_counts(layers, sparsities, what="explicit")
    for layer in layers:
        if layer.name in out:
            continue
        if sparsity is None:
            raise ConfigError(
                f"no sparsity for layer {layer.name!r}",
                fix="give it a pattern in `sparsities` or set the prune step's `sparsity`",
            )
        out[layer.name] = layer_kept(layer, sparsity)
    return {layer.name: out[layer.name] for layer in layers}
