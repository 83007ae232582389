"""N:M: at most n of every m consecutive inputs per output, the pattern sparse tensor cores run."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from secateurs.core.errors import ConfigError, check_choice
from secateurs.core.topk import balanced_select
from secateurs.methods.structures.base import STRUCTURES, ElementStructure, positive_int
from secateurs.methods.structures.unstructured import Unstructured


def reduction_rows(t: Tensor) -> Tensor:
    """A weight as [out, K] in implicit-GEMM order: per output, (*kernel, in) with inputs innermost."""
    if t.dim() > 2:  # [out, in, *kernel] → [out, *kernel, in]
        t = t.movedim(1, -1)
    return t.reshape(t.shape[0], -1)


def from_reduction_rows(rows: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Inverse of `reduction_rows`."""
    if len(shape) > 2:
        return rows.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)
    return rows.reshape(shape)


def check_matrix(structure: str, name: str, shape: tuple[int, ...]) -> None:
    """A structure grouping along the inputs needs a weight with an input dimension."""
    if len(shape) < 2:
        raise ConfigError(
            f"{structure} structure groups the input dimension of a weight, but {name!r} has shape "
            f"{list(shape)} (no input dimension)",
            fix="exclude it via the layer selection (layers.exclude), or keep biases out "
            "(layers.include_bias: false)",
        )


@STRUCTURES.register("nm", "N:M: at most n of every m consecutive inputs per output (2:4 sparse cores)")
class NM(ElementStructure):
    """N:M sparsity along the input (reduction) dimension, the pattern sparse tensor cores run.

    Grouping. A Linear weight [out, in] is cut into runs of m consecutive inputs per row. A conv
    weight [out, in, *kernel] is grouped in its implicit-GEMM (NHWC) reduction order: per output
    channel the reduction index runs over (*kernel, in) with input channels innermost, and that
    K = prod(kernel)·in long row is cut into runs of m. This is the order in which sparse
    hardware (and cuSPARSELt) reads a convolution lowered to a GEMM, so a 2:4 mask made here is
    runnable there; grouping in PyTorch's (in, kh, kw) order would not be.

    Allocation. The structure reports element granularity (group size 1, numel groups) to the
    allocation, so the allocation decides how many *weights* each layer keeps, with its usual
    exact counts; `select` then spreads those k weights over the layer's G = numel/m groups as
    evenly as possible (`balanced_topk`). So with the "uniform" allocation at sparsity 1 − n/m
    each group keeps exactly n; a gradual or iterative schedule walks every group from m down to
    n (never more than one apart from each other); a global, ER or ERK allocation gives each
    layer its own N_l:M (N_l or N_l + 1 per group when k_l is not a multiple of G). Reporting
    groups of size m instead would make the allocation keep or drop whole runs of m, which is
    block sparsity, not N:M. Entries pruned before score −∞ and sort last in their group; a
    group with fewer live entries than its share keeps them all and its shortfall is not moved
    to other groups (that would break the balance), so the count can fall below k only when
    the layer came in with an unbalanced (e.g. unstructured) mask. `n` is the pattern the user
    aims for (`target_sparsity`, and the "nm" projection in `secateurs.methods.projections`); the keep
    count itself comes from the sparsity.
    """

    name = "nm"

    def __init__(self, n: int = 2, m: int = 4) -> None:
        self.m = positive_int(m, "nm option m")
        self.n = positive_int(n, "nm option n")
        if self.n > self.m:
            raise ConfigError(
                f"nm option n ({n}) is larger than m ({m})",
                where="structure_options",
                fix="n is how many of every m weights are kept, e.g. n: 2, m: 4",
            )

    @property
    def target_sparsity(self) -> float:
        """The sparsity at which the uniform allocation gives exactly n of every m."""
        return 1.0 - self.n / self.m

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        """A parameter must be a Linear/conv weight whose reduction length K is a multiple of m."""
        check_matrix("nm", name, shape)
        k = math.prod(shape[1:])
        if k % self.m:
            raise ConfigError(
                f"nm structure with m={self.m}: parameter {name!r} of shape {list(shape)} has "
                f"reduction length K = {k}, not a multiple of m",
                fix=f"exclude it via the layer selection (layers.exclude), or choose an m that divides {k}",
            )

    def to_groups(self, t: Tensor) -> Tensor:
        """Parameter-shaped tensor → [numel/m, m] table, one row per run of m reduction entries."""
        self.check("parameter", tuple(t.shape))
        return reduction_rows(t).reshape(-1, self.m)

    def from_groups(self, groups: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Inverse of `to_groups`."""
        return from_reduction_rows(groups, shape)

    def num_groups(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape)  # element-granular towards the allocation (see the class docstring)

    def group_size(self, shape: tuple[int, ...]) -> int:
        return 1

    def group_scores(self, scores: Tensor, pooling: str | None = None) -> Tensor:
        """Element scores in grouped order (runs of m consecutive entries form one N:M group)."""
        return self.to_groups(scores).reshape(-1)

    def select(
        self,
        scores: Tensor,
        k: int,
        shape: tuple[int, ...],
        ties: str = "index",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """k elements kept, balanced over the N:M groups (in the order of `group_scores`); with ties
        "original", each group's pruned entries are `torch.topk(..., largest=False)`'s (Wanda's and
        SparseGPT's code)."""
        return balanced_select(scores.reshape(-1, self.m), k, ties, generator, original="topk").reshape(-1)

    def expand(self, keep: Tensor, shape: tuple[int, ...]) -> Tensor:
        return self.from_groups(keep.reshape(-1, self.m), shape)


def check_row_count(
    count: object, what: str = "rows option count", where: str | None = "structure_options"
) -> str:
    """`count` names what a rows sparsity counts (`Rows.COUNTS`); `what` names the option in the error."""
    return check_choice(
        count,
        Rows.COUNTS,
        what,
        where=where,
        fix="layer: the layer's sparsity exact; row: every row's count rounded on its own (Wanda's code)",
    )


@STRUCTURES.register("rows", "each output row keeps the same count (Wanda's per-output comparison)")
class Rows(Unstructured):
    """Every output row (a Linear's row, a conv's filter) is compared on its own.

    Like N:M with m = the whole row: the layer's keep count from the allocation is spread evenly
    over its rows (`balanced_topk`: each row keeps k // rows, the rows whose next-best score is
    highest one more), and within a row the highest scores win. Wanda (Sun et al. 2023) compares
    weights per output this way; the comparison group matters for LLMs, whose rows differ in scale.

    `count` says what a sparsity s counts: "layer" (the default) removes the layer's rounded
    s·numel, so the layer's sparsity is exact and rows may differ by one; "row" removes the
    rounded s·d of every row of d entries, as Wanda's code does (`int(d·s)`: with rounding
    floor), so every row keeps the same count and the layer's sparsity may fall short of s by
    under one weight per row. Per-row counting applies where a layer's own sparsity is counted
    (uniform and explicit allocations, per-layer overrides); allocations that split a total
    (global, ER, ERK) give a layer count, spread as with "layer".
    """

    name = "rows"
    COUNTS = ("layer", "row")

    def __init__(self, count: str = "layer") -> None:
        self.count = check_row_count(count)

    def count_rows(self, shape: tuple[int, ...]) -> int:
        return shape[0] if self.count == "row" else 1

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        check_matrix("rows", name, shape)

    def select(
        self,
        scores: Tensor,
        k: int,
        shape: tuple[int, ...],
        ties: str = "index",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """k elements kept, balanced over the rows; with ties "original", each row's pruned entries
        are the first of a stable ascending `torch.sort` of the row (Wanda's code)."""
        return balanced_select(scores.reshape(shape[0], -1), k, ties, generator, original="sort").reshape(-1)
