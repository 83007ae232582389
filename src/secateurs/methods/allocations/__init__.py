"""Allocations registry: importing this package registers every built-in allocation.

A new allocation is one file here (a function registered in `ALLOCATIONS`) and one import below.
"""

from secateurs.methods.allocations import erdos_renyi, explicit, global_, smart_ratio, uniform  # noqa: F401
from secateurs.methods.allocations.base import (
    ALLOCATIONS,
    LayerInfo,
    allocate,
    check_sparsity,
    kept_after,
    override_counts,
    round_half_up,
    unmatched_patterns,
)

__all__ = [
    "ALLOCATIONS",
    "LayerInfo",
    "allocate",
    "check_sparsity",
    "kept_after",
    "override_counts",
    "round_half_up",
    "unmatched_patterns",
]
