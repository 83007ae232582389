"""Structures: how the elements of a parameter group together for pruning.

A structure pools element scores into group scores, and expands a per-group keep decision back
to an element mask. Unstructured pruning is the structure whose groups are single elements;
N:M, blocks and channels are other structures behind the same methods, so every criterion,
allocation and schedule works with every structure.

Two optional methods refine the protocol (`masks_from_scores` uses them when present):
`check(name, shape)` rejects a parameter the structure cannot group, naming it; and
`select(scores, k, shape)` replaces the plain top-k over group scores (N:M spreads the layer's
keep count evenly over its M-groups). The attribute `invertible` says that negating element
scores reverses the selection order exactly, which the `invert` sanity check relies on.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from secateurs.core.errors import ConfigError
from secateurs.core.registry import Registry


class Structure(Protocol):
    """Groups of a parameter that are kept or pruned together."""

    name: str

    def num_groups(self, shape: tuple[int, ...]) -> int:
        """Number of groups in a parameter of this shape."""
        ...

    def group_size(self, shape: tuple[int, ...]) -> int:
        """Elements per group (all groups of a parameter have the same size)."""
        ...

    def group_scores(self, scores: Tensor) -> Tensor:
        """Element scores (parameter-shaped) → one score per group (1-D, length num_groups)."""
        ...

    def expand(self, keep: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Boolean keep decision per group (1-D) → boolean element mask of `shape`."""
        ...


STRUCTURES: Registry[type] = Registry("structure")


def _positive_int(value: object, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}", where=where)
    return value


@STRUCTURES.register("unstructured", "every weight is its own group")
class Unstructured:
    """Each element is a group: the classic fine-grained sparsity."""

    name = "unstructured"
    invertible = True

    def num_groups(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape)

    def group_size(self, shape: tuple[int, ...]) -> int:
        return 1

    def group_scores(self, scores: Tensor) -> Tensor:
        return scores.reshape(-1)

    def expand(self, keep: Tensor, shape: tuple[int, ...]) -> Tensor:
        return keep.reshape(shape)


def balanced_topk(scores: Tensor, k: int) -> Tensor:
    """Keep k entries of a [groups, m] score table, spread as evenly as possible over the groups.

    Every group keeps its q = k // G best entries; the k % G groups whose (q+1)-th best score is
    highest keep one more. Ties go to the lower index, both within a group and between groups
    (stable sorts), so the result is deterministic and the count exact.
    """
    groups, m = scores.shape
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= groups * m:
        return torch.ones_like(scores, dtype=torch.bool)
    q, extra = divmod(k, groups)
    values, order = torch.sort(scores, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(m, device=scores.device).expand(groups, m).contiguous())
    keep = rank < q
    if extra:
        from secateurs.methods.pruning import topk_mask  # pruning imports this module

        more = topk_mask(values[:, q], extra)
        keep |= more[:, None] & (rank == q)
    return keep


@STRUCTURES.register("nm", "N:M: at most n of every m consecutive inputs per output (2:4 sparse cores)")
class NM:
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
    invertible = True  # selection ranks element scores, so negating them reverses it exactly

    def __init__(self, n: int = 2, m: int = 4) -> None:
        self.m = _positive_int(m, "nm option m", "structure_options")
        self.n = _positive_int(n, "nm option n", "structure_options")
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
        if len(shape) < 2:
            raise ConfigError(
                f"nm structure groups the input dimension of a weight, but {name!r} has shape "
                f"{list(shape)} (no input dimension)",
                fix="exclude it via the layer selection (layers.exclude), or keep biases out "
                "(layers.include_bias: false)",
            )
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
        if t.dim() > 2:  # [out, in, *kernel] → [out, *kernel, in]: input channels innermost
            t = t.movedim(1, -1)
        return t.reshape(-1, self.m)

    def from_groups(self, groups: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Inverse of `to_groups`."""
        if len(shape) > 2:
            return groups.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)
        return groups.reshape(shape)

    def num_groups(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape)  # element-granular towards the allocation (see the class docstring)

    def group_size(self, shape: tuple[int, ...]) -> int:
        return 1

    def group_scores(self, scores: Tensor) -> Tensor:
        """Element scores in grouped order (runs of m consecutive entries form one N:M group)."""
        return self.to_groups(scores).reshape(-1)

    def select(self, scores: Tensor, k: int, shape: tuple[int, ...]) -> Tensor:
        """k elements kept, balanced over the N:M groups (in the order of `group_scores`)."""
        return balanced_topk(scores.reshape(-1, self.m), k).reshape(-1)

    def expand(self, keep: Tensor, shape: tuple[int, ...]) -> Tensor:
        return self.from_groups(keep.reshape(-1, self.m), shape)


_POOLS = ("l1", "l2")


@STRUCTURES.register("block", "bh × bw blocks of the [out, in·kh·kw] weight matrix")
class Block:
    """Blocks of bh × bw entries of the 2-D view [out, in·kh·kw] (PyTorch's natural flatten order).

    A block's score pools its element scores: "l1" sums |s| (for saliency criteria the first-order
    loss change of removing the block is the sum of its elements'), "l2" is sqrt(Σ s²) (with
    magnitude scores, the block's Frobenius norm: keeping the top blocks by it is the nearest
    block-sparse weight). Already-pruned elements arrive scored −∞: they are left out of the pool,
    and a block with no finite score left pools to −∞, so it stays last (|−∞| would be +∞).
    """

    name = "block"
    invertible = False  # pools |s|: negated element scores pool to the same block scores

    def __init__(self, bh: int = 4, bw: int = 4, pool: str = "l1") -> None:
        self.bh = _positive_int(bh, "block option bh", "structure_options")
        self.bw = _positive_int(bw, "block option bw", "structure_options")
        if pool not in _POOLS:
            raise ConfigError(
                f"block option pool must be one of {', '.join(_POOLS)}, got {pool!r}",
                where="structure_options",
                fix='pool: "l1" (sum of |scores|) or "l2" (root of the sum of squares)',
            )
        self.pool = pool

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        """A parameter must have a 2-D view [out, rest] that bh × bw blocks tile exactly."""
        if len(shape) < 2:
            raise ConfigError(
                f"block structure needs a weight matrix, but {name!r} has shape {list(shape)}",
                fix="exclude it via the layer selection (layers.exclude), or keep biases out "
                "(layers.include_bias: false)",
            )
        rows, cols = shape[0], math.prod(shape[1:])
        if rows % self.bh or cols % self.bw:
            raise ConfigError(
                f"block structure {self.bh}×{self.bw}: parameter {name!r} of shape {list(shape)} "
                f"(matrix {rows}×{cols}) is not tiled by whole blocks",
                fix=f"exclude it via the layer selection (layers.exclude), or choose bh dividing {rows} "
                f"and bw dividing {cols}",
            )

    def to_blocks(self, t: Tensor) -> Tensor:
        """Parameter-shaped tensor → [num_blocks, bh·bw], blocks in row-major block order."""
        self.check("parameter", tuple(t.shape))
        rows = t.shape[0]
        m = t.reshape(rows // self.bh, self.bh, -1, self.bw)
        return m.permute(0, 2, 1, 3).reshape(-1, self.bh * self.bw)

    def from_blocks(self, blocks: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Inverse of `to_blocks`."""
        rows, cols = shape[0], math.prod(shape[1:])
        m = blocks.reshape(rows // self.bh, cols // self.bw, self.bh, self.bw).permute(0, 2, 1, 3)
        return m.reshape(shape)

    def num_groups(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) // (self.bh * self.bw)

    def group_size(self, shape: tuple[int, ...]) -> int:
        return self.bh * self.bw

    def group_scores(self, scores: Tensor) -> Tensor:
        blocks = self.to_blocks(scores)
        finite = blocks > float("-inf")
        if self.pool == "l1":
            pooled = torch.where(finite, blocks.abs(), 0).sum(1)
        else:
            pooled = torch.where(finite, blocks.square(), 0).sum(1).sqrt()
        return torch.where(finite.any(1), pooled, float("-inf"))

    def expand(self, keep: Tensor, shape: tuple[int, ...]) -> Tensor:
        blocks = keep.reshape(-1, 1).expand(-1, self.bh * self.bw)
        return self.from_blocks(blocks, shape)


def build_structure(name: str, **options: object) -> Structure:
    """Instantiate a registered structure by name."""
    return STRUCTURES.build(name, **options)  # type: ignore[return-value]
