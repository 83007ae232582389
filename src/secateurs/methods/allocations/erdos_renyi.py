"""Erdős–Rényi (Mocanu et al. 2018) and Erdős–Rényi-Kernel (Evci et al. 2020) allocations."""

from __future__ import annotations

import math

from secateurs.core.apportion import largest_remainder
from secateurs.methods.allocations.base import (
    ALLOCATIONS,
    LayerInfo,
    kept_after,
    scaled_shares,
)


def _fan_terms(shape: tuple[int, ...], with_kernel: bool) -> tuple[int, int]:
    """(sum of dims, product of dims) of a weight as used by ER/ERK."""
    if len(shape) <= 1:
        return sum(shape), math.prod(shape)
    dims = list(shape) if with_kernel else list(shape[:2])
    return sum(dims), math.prod(dims)


def erdos_renyi(layers: list[LayerInfo], sparsity: float, *, with_kernel: bool) -> dict[str, int]:
    raw = []
    for layer in layers:
        total, prod = _fan_terms(layer.shape, with_kernel)
        raw.append(total / prod)
    ideal = scaled_shares(layers, sparsity, raw)
    total_kept = kept_after(sum(layer.numel for layer in layers), sparsity)
    floors = [min(layer.floor, layer.num_groups) * layer.group_size for layer in layers]
    kept = largest_remainder(ideal, [layer.numel for layer in layers], total_kept, floors)
    return {layer.name: k // layer.group_size for layer, k in zip(layers, kept, strict=True)}


@ALLOCATIONS.register("er", "Erdős–Rényi: density ∝ (n_in + n_out)/(n_in·n_out)")
def er(layers: list[LayerInfo], sparsity: float) -> dict[str, int]:
    """Erdős–Rényi (Mocanu et al. 2018): kernel dimensions ignored."""
    return erdos_renyi(layers, sparsity, with_kernel=False)


@ALLOCATIONS.register("erk", "Erdős–Rényi-Kernel: density ∝ sum of dims / product of dims")
def erk(layers: list[LayerInfo], sparsity: float) -> dict[str, int]:
    """Erdős–Rényi-Kernel (Evci et al. 2020): kernel dimensions included."""
    return erdos_renyi(layers, sparsity, with_kernel=True)
