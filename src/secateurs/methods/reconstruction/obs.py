"""OBS reconstruction (SparseGPT, Frantar & Alistarh 2023): update the kept weights so ŴX ≈ WX.

Removing weight w_q of a row and shifting the row's remaining weights by −w_q/[H⁻¹]_qq · H⁻¹_{:,q}
minimises the increase of ‖WX − ŴX‖² (Optimal Brain Surgeon), with H = 2XXᵀ/n the layer's
calibration Hessian (`secateurs.methods.calibration`, `hessian=True`). SparseGPT makes this cheap
for a whole layer: H is dampened by `percdamp` of its mean diagonal (inputs that are always zero,
"dead", get a unit diagonal and, when the mask is chosen here, zero weights), and the columns are
processed left to right, every row sharing one inverse-Hessian sequence, the rows of the upper
Cholesky factor U of H⁻¹; updates are applied lazily in blocks of `blocksize` columns.

`select` says where the mask comes from:

- `fixed`: the given mask, exactly; only the kept weights are updated. Any criterion's mask
  (SNIP, Wanda, magnitude …, any structure) can be reconstructed this way.
- `adaptive`: SparseGPT itself. The mask is re-chosen as the columns are processed, from the
  weights already updated by the earlier columns, by w²/[U]_jj² (lowest pruned), keeping the
  given mask's counts: unstructured, each block of columns prunes its share of the layer's
  pruned count P (columns [i1, i2) prune rnd(P·i2/cols) − rnd(P·i1/cols), exact integer
  rounding half up, so the total is exactly P), chosen over all rows × block columns; N:M (the
  `nm` structure), each group of m consecutive inputs keeps as many weights as in the given mask
  (n of every m at the structure's sparsity), chosen just before the group's first column.
  Ties in w²/[U]_jj² follow the prune's `ties` rule (`secateurs.core.topk.tie_rule`, set by
  `reconstruct`): `original` is SparseGPT's `torch.topk(largest=False)` in each group of m.

A Linear weight is [out, in]; a Conv1d/Conv2d weight (groups=1) is viewed as [out, in·kh·kw], its
columns those of the unfolded input, in which H is collected. An N:M group of a convolution
runs over the implicit-GEMM order (`methods.structures.nm`), so for `adaptive` N:M the columns are
processed in that order (any order is a valid OBS order).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError, check_choice
from secateurs.core.topk import balanced_select, current_tie_rule, select_topk
from secateurs.methods.calibration import InputStats
from secateurs.methods.reconstruction.base import RECONSTRUCTIONS, Reconstruction, non_negative_option
from secateurs.methods.structures import NM, Structure, Unstructured
from secateurs.methods.structures.nm import reduction_rows

SELECTS = ("fixed", "adaptive")


def check_select(select: object) -> str:
    return check_choice(
        select,
        SELECTS,
        "obs option select",
        where="reconstruct",
        fix="fixed: keep the criterion's mask; adaptive: SparseGPT re-chooses it",
    )


def inverse_hessian_factor(hessian: Tensor, percdamp: float) -> Tensor:
    """Upper Cholesky factor U of (H + λI)⁻¹ (float32), λ = percdamp · mean diag H; H is changed."""
    damp = percdamp * torch.mean(torch.diag(hessian))
    hessian += damp * torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    try:
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
        return torch.linalg.cholesky(inverse, upper=True).to(torch.float32)
    except RuntimeError:  # torch raises LinAlgError (a RuntimeError) when H is not positive definite
        raise ConfigError(
            "the calibration Hessian is not positive definite even after dampening",
            where="reconstruct",
            fix="use more calibration tokens or a larger dampening (percdamp)",
        ) from None


def keep_top(
    scores: Tensor, counts: Tensor, ties: str = "index", generator: torch.Generator | None = None
) -> Tensor:
    """Per row of `scores`, keep its counts[row] highest entries, ties broken by `ties`
    (`secateurs.core.topk`; "original" is SparseGPT's `torch.topk(..., largest=False)` per group)."""
    if ties != "index":
        keep = torch.zeros_like(scores, dtype=torch.bool)
        for count in torch.unique(counts).tolist():
            rows = torch.nonzero(counts == count).reshape(-1)
            keep[rows] = balanced_select(scores[rows], int(count) * rows.numel(), ties, generator, "topk")
        return keep
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order).contiguous()
    rank.scatter_(1, order, positions)
    return rank < counts[:, None]


def _half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up, in exact integer arithmetic."""
    return (2 * numerator + denominator) // (2 * denominator)


class _Given:
    """`fixed`: the block's columns of the given mask."""

    per_column = False  # whether `column` must be called as the sweep reaches each column

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask

    def block(self, i1: int, i2: int, weights: Tensor, diag: Tensor) -> Tensor:
        return self.mask[:, i1:i2].clone()

    def column(self, i1: int, i: int, weights: Tensor, diag: Tensor, keep: Tensor) -> slice | None:
        """Choose the mask of columns starting at block column i; the columns chosen, or None."""
        return None


class _BlockShare(_Given):
    """`adaptive`, unstructured: each block prunes its share of the layer's count, lowest w²/d²."""

    def __init__(self, pruned: int, cols: int) -> None:
        self.pruned, self.cols = pruned, cols

    def block(self, i1: int, i2: int, weights: Tensor, diag: Tensor) -> Tensor:
        share = _half_up(self.pruned * i2, self.cols) - _half_up(self.pruned * i1, self.cols)
        score = (weights**2) / (diag[None, :] ** 2)
        ties, generator = current_tie_rule()
        return select_topk(score.reshape(-1), weights.numel() - share, ties, generator).reshape(weights.shape)


class _GroupCounts(_Given):
    """`adaptive`, N:M: each group of m columns keeps its given count per row, chosen at its start."""

    per_column = True

    def __init__(self, counts: Tensor, m: int) -> None:
        self.counts, self.m = counts, m

    def block(self, i1: int, i2: int, weights: Tensor, diag: Tensor) -> Tensor:
        return torch.ones(weights.shape, dtype=torch.bool, device=weights.device)

    def column(self, i1: int, i: int, weights: Tensor, diag: Tensor, keep: Tensor) -> slice | None:
        if i % self.m:
            return None
        group = slice(i, i + self.m)
        score = (weights[:, group] ** 2) / (diag[None, group] ** 2)
        keep[:, group] = keep_top(score, self.counts[:, (i1 + i) // self.m], *current_tie_rule())
        return group


def hessian_factor(hessian: Tensor, percdamp: float) -> tuple[Tensor, Tensor]:
    """(U, dead) of a Hessian: U the upper Cholesky factor of (H + λI)⁻¹ (float32), computed in
    float64 with dead inputs (zero diagonal) given a unit diagonal; `dead` marks those inputs.

    It depends on H and `percdamp` alone, so layers reading one input (q/k/v, gate/up) share it.
    """
    H = hessian.detach().to(torch.float64).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    return inverse_hessian_factor(H, percdamp), dead


# Columns per inner step of a lazy block: the per-column rank-1 updates touch only these
# (32 × rows floats, in cache); the rest of the block is updated by one matrix product per step.
_STEP = 32


def _eliminate(WT: Tensor, U1: Tensor, keep1: Tensor, chooser: _Given, i1: int, step: int) -> Tensor:
    """The OBS column sweep over one lazy block, in place; returns the scaled errors (w − q)/d.

    WT [B, rows] is the block's columns of W as rows (a column of W is contiguous here), U1
    [B, B] the block of U, keep1 [rows, B] its keep-mask, which `chooser.column` may fill in as
    the sweep reaches a group (`step` is then a multiple of the group length, so that a group's
    columns are up to date when it is chosen). Column i's error updates the columns after it in
    its step of `step` columns at once (one rank-1 update), and those of the later steps as one
    product per step: the sums of SparseGPT's per-column update of every later column of the
    block, in another order.
    """
    width = WT.shape[0]
    diag = torch.diag(U1)
    inv = 1.0 / diag[:, None]
    scale = torch.where(keep1.T, 0.0, inv)  # err = w / d where pruned, 0 where kept
    err = torch.empty_like(WT)
    for s1 in range(0, width, step):
        s2 = min(s1 + step, width)
        for i in range(s1, s2):
            if chooser.per_column:
                chosen = chooser.column(i1, i, WT.T, diag, keep1)
                if chosen is not None:
                    scale[chosen] = torch.where(keep1.T[chosen], 0.0, inv[chosen])
            torch.mul(WT[i], scale[i], out=err[i])
            if i + 1 < s2:
                WT[i + 1 : s2].addr_(U1[i, i + 1 : s2], err[i], alpha=-1.0)
        if s2 < width:
            WT[s2:].addmm_(U1[s1:s2, s2:].T, err[s1:s2], alpha=-1.0)
    return err


def obs_reconstruct(
    weight: Tensor,
    hessian: Tensor,
    mask: Tensor,
    *,
    select: str = "fixed",
    m: int | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    factor: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """OBS-reconstruct a [rows, cols] weight against H [cols, cols]; returns (new weight, keep-mask).

    `mask` (bool, weight-shaped) is the mask kept (`select="fixed"`) or, for `"adaptive"`, whose
    counts are kept: the layer's pruned count, or with `m` the count of every group of m
    consecutive columns per row. `factor` is `hessian_factor(hessian, percdamp)` when the caller
    has it already. The new weight has W's dtype and is exactly zero where the returned mask is
    False.
    """
    check_select(select)
    W = weight.detach().to(torch.float32).clone()
    rows, cols = W.shape
    if tuple(mask.shape) != (rows, cols) or tuple(hessian.shape) != (cols, cols):
        raise ValueError(f"weight {(rows, cols)}, mask {tuple(mask.shape)}, hessian {tuple(hessian.shape)}")
    mask = mask.to(device=W.device, dtype=torch.bool)
    U, dead = factor if factor is not None else hessian_factor(hessian.to(W.device), percdamp)
    U, dead = U.to(W.device), dead.to(W.device)
    chooser: _Given
    if select == "fixed":
        chooser = _Given(mask)
    else:
        W[:, dead] = 0.0  # nothing flows through a dead input: its weights are the first to go
        if m is None:
            chooser = _BlockShare(int((~mask).sum()), cols)
        else:
            chooser = _GroupCounts(mask.reshape(rows, cols // m, m).sum(-1), m)

    step = _STEP if m is None else m * max(1, _STEP // m)
    keep = torch.ones((rows, cols), dtype=torch.bool, device=W.device)
    WT = W.T.contiguous()  # [cols, rows]: the sweep reads and updates whole columns of W
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        block = WT[i1:i2]
        U1 = U[i1:i2, i1:i2]
        keep1 = chooser.block(i1, i2, block.T, torch.diag(U1))
        err = _eliminate(block, U1, keep1, chooser, i1, step)
        block.masked_fill_(~keep1.T, 0.0)
        keep[:, i1:i2] = keep1
        if i2 < cols:
            WT[i2:].addmm_(U[i1:i2, i2:].T, err, alpha=-1.0)
    W = WT.T.contiguous()
    return W.to(weight.dtype), keep


def _positive_int(option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"obs option {option} must be a positive integer, got {value!r}",
            where="reconstruct",
            fix=f"e.g. {option}: 128",
        )
    return value


@RECONSTRUCTIONS.register("obs", "OBS/SparseGPT update of the kept weights (select: fixed | adaptive)")
class OBS(Reconstruction):
    """`select`: fixed (keep the given mask) or adaptive (SparseGPT's own mask, same counts);
    `blocksize`: columns per lazy update block; `percdamp`: dampening, a fraction of mean diag H."""

    name = "obs"

    def __init__(
        self, select: Literal["fixed", "adaptive"] = "fixed", blocksize: int = 128, percdamp: float = 0.01
    ) -> None:
        self.select = check_select(select)
        self.blocksize = _positive_int("blocksize", blocksize)
        self.percdamp = non_negative_option(
            "obs", "percdamp", percdamp, "e.g. percdamp: 0.01 (1 % of the mean diagonal of H)"
        )

    def check(self, structure: Structure) -> None:
        if self.select != "adaptive":
            return
        if type(structure) not in (Unstructured, NM):  # selections it reproduces (rows subclasses one)
            raise ConfigError(
                f"obs select: adaptive chooses its own unstructured or N:M mask (SparseGPT), "
                f"not a {structure.name!r} one",
                where="reconstruct",
                fix=f"use select: fixed to reconstruct after the {structure.name!r} mask, "
                "or structure unstructured or nm",
            )
        if isinstance(structure, NM) and self.blocksize % structure.m:
            raise ConfigError(
                f"obs blocksize {self.blocksize} is not a multiple of the N:M group length m={structure.m}",
                where="reconstruct",
                fix="use a blocksize divisible by m (128 works for 2:4 and 4:8)",
            )

    def check_layer(self, name: str, module: nn.Module, *, pruned_before: bool = False) -> None:
        if not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d) or getattr(module, "groups", 1) != 1:
            kind = type(module).__name__
            if isinstance(module, nn.Conv1d | nn.Conv2d):
                kind += f" with groups={module.groups}"
            raise ConfigError(
                f"obs reconstruction updates the weights of Linear and Conv1d/Conv2d (groups=1) layers, "
                f"not {name!r} ({kind})",
                where="reconstruct",
                fix="exclude the layer from the prune (layers.exclude / layers.types), or prune it "
                "without reconstruct",
            )
        if pruned_before and self.select == "adaptive":
            raise ConfigError(
                f"obs select: adaptive re-chooses the whole mask of {name!r}, which was pruned before",
                where="reconstruct",
                fix="use select: fixed to keep the earlier pruning, or prune the dense model",
            )

    def apply(
        self, name: str, module: nn.Module, mask: Tensor, stats: InputStats, *, structure: Structure
    ) -> Tensor:
        weight = module.weight
        matrix = weight.detach().reshape(weight.shape[0], -1)
        keep = mask.reshape(matrix.shape)
        hessian = stats.hessian_matrix()
        m = structure.m if self.select == "adaptive" and isinstance(structure, NM) else None
        order = None
        if m is not None and weight.dim() > 2:  # N:M groups run along the implicit-GEMM order
            order = reduction_rows(
                torch.arange(matrix.shape[1], device=matrix.device).reshape(1, *weight.shape[1:])
            )[0]
            matrix, keep, hessian = matrix[:, order], keep[:, order], hessian[order][:, order]
        key = ("obs-factor", self.percdamp, None if order is None else tuple(order.tolist()))
        factor = stats.memo(key, lambda: hessian_factor(hessian, self.percdamp))  # one per shared input
        new, keep = obs_reconstruct(
            matrix,
            hessian,
            keep,
            select=self.select,
            m=m,
            blocksize=self.blocksize,
            percdamp=self.percdamp,
            factor=factor,
        )
        if order is not None:
            back = torch.argsort(order)
            new, keep = new[:, back], keep[:, back]
        with torch.no_grad():
            weight.copy_(new.reshape(weight.shape))
        return keep.reshape(weight.shape)
