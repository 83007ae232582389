"""Allocations registry: importing this package registers every built-in allocation.

A new allocation is one file here (a function registered in `ALLOCATIONS`) and one import below.
"""

from secateurs.core.sparsity import ROUNDINGS, removed_count, round_half_up, rounding_rule
from secateurs.methods.allocations import (  # noqa: F401
    erdos_renyi,
    explicit,
    global_,
    latency,
    smart_ratio,
    uniform,
)
from secateurs.methods.allocations.base import (
    ALLOCATIONS,
    Allocated,
    AllocationContext,
    LayerInfo,
    allocate,
    check_sparsity,
    kept_after,
    layer_kept,
    override_counts,
    round_counts,
    unmatched_patterns,
)

__all__ = [
    "ALLOCATIONS",
    "ROUNDINGS",
    "Allocated",
    "AllocationContext",
    "LayerInfo",
    "allocate",
    "check_sparsity",
    "kept_after",
    "layer_kept",
    "override_counts",
    "removed_count",
    "round_counts",
    "round_half_up",
    "rounding_rule",
    "unmatched_patterns",
]
