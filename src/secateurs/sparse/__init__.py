"""Sparse inference: run pruned layers as compressed sparse rows where that is measurably faster."""

from secateurs.sparse.inference import (
    KERNELS,
    LayerPlan,
    SparseConv1x1,
    SparseLinear,
    choose,
    sparse_plan,
    sparsify,
)

__all__ = ["KERNELS", "LayerPlan", "SparseConv1x1", "SparseLinear", "choose", "sparse_plan", "sparsify"]
