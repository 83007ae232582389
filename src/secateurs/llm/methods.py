"""One-shot pruning of one Linear weight [out, in]: magnitude, Wanda and SparseGPT.

All three take a sparsity and an optional N:M pattern. N:M groups are runs of m consecutive
inputs of one output row, exactly `secateurs.methods.structures.NM` grouping, and each group keeps
exactly n weights (ties to the lower index, `balanced_topk`). Unstructured counts are exact:
a layer of N weights loses round_half_up(s·N); where a method compares within smaller groups
(Wanda's rows, SparseGPT's column blocks) that total is spread over the groups, never
differing by more than one (row) or than the block's share (block). Selection is always by
top-k index, never by threshold: dequantized weights tie a lot, and a threshold would prune
every tied weight at once.

- Magnitude: |W|, one comparison group per layer (the usual LLM baseline).
- Wanda (Sun et al. 2023): |W_ij|·‖X_j‖₂ over calibration tokens, compared per output row.
- SparseGPT (Frantar & Alistarh 2023): OBS reconstruction with H = 2XXᵀ/n, dampened by 1 % of
  its mean diagonal; columns are processed left to right in blocks of 128 with lazy batched
  updates, using the upper Cholesky factor of H⁻¹; the mask of each block is chosen adaptively
  (from the weights already updated by earlier blocks) by w²/[H⁻¹]_jj², and for N:M per group
  of m columns just before the first of them is processed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from secateurs.core.errors import ConfigError
from secateurs.core.topk import balanced_topk, topk_mask
from secateurs.methods.allocations import check_sparsity, round_half_up
from secateurs.methods.structures import NM

METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclass(frozen=True)
class Pattern:
    """What to prune: a sparsity, or N:M (n kept of every m consecutive inputs)."""

    sparsity: float
    nm: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        return f"{self.nm[0]}:{self.nm[1]}" if self.nm else f"{self.sparsity:.0%}"


def parse_nm(text: str | None) -> tuple[int, int] | None:
    """'2:4' → (2, 4); None stays None. n kept of every m, so 0 < n < m."""
    if text is None or text == "":
        return None
    parts = str(text).split(":")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"bad N:M pattern {text!r}", where="--nm", fix="write it as N:M, e.g. 2:4 or 4:8"
        ) from None
    if not 0 < n < m:
        raise ConfigError(
            f"bad N:M pattern {text!r}: need 0 < N < M (N weights kept of every M)",
            where="--nm",
            fix="use e.g. 2:4 or 4:8",
        )
    return n, m


def make_pattern(sparsity: float | None, nm: str | tuple[int, int] | None) -> Pattern:
    """Validate the user's sparsity / N:M choice; N:M fixes the sparsity to 1 - N/M."""
    pair = parse_nm(nm) if isinstance(nm, str) or nm is None else nm
    if pair is not None:
        n, m = pair
        NM(n, m)  # same validation as the structure itself
        implied = 1.0 - n / m
        if sparsity is not None and not math.isclose(sparsity, implied, abs_tol=1e-9):
            raise ConfigError(
                f"--sparsity {sparsity} contradicts --nm {n}:{m}, which prunes {implied:.0%}",
                where="pattern",
                fix=f"leave --sparsity out with --nm, or pass --sparsity {implied}",
            )
        return Pattern(implied, (n, m))
    if sparsity is None:
        raise ConfigError("no sparsity given", where="pattern", fix="pass --sparsity, e.g. 0.5, or --nm 2:4")
    return Pattern(check_sparsity(sparsity, "--sparsity"), None)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(
            f"unknown method {method!r}", where="--method", fix=f"use one of {', '.join(METHODS)}"
        )
    return method


def spread(total: int, parts: int) -> Tensor:
    """`total` split over `parts` as evenly as possible (the first ones get the extra one)."""
    base, extra = divmod(total, parts)
    counts = torch.full((parts,), base, dtype=torch.long)
    counts[:extra] += 1
    return counts


def _nm_mask(scores: Tensor, n: int, m: int, name: str = "weight") -> Tensor:
    """Keep the n highest scores of every run of m consecutive inputs per row."""
    structure = NM(n, m)
    structure.check(name, tuple(scores.shape))
    groups = structure.to_groups(scores)
    return structure.from_groups(balanced_topk(groups, n * groups.shape[0]), tuple(scores.shape))


def _row_mask(scores: Tensor, pruned_per_row: Tensor) -> Tensor:
    """Keep the highest scores of each row, pruning pruned_per_row[r] of row r (ties: lower index kept)."""
    cols = scores.shape[1]
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(cols).expand_as(order).contiguous())
    return rank < (cols - pruned_per_row)[:, None]


def magnitude_mask(weight: Tensor, pattern: Pattern) -> Tensor:
    """Keep-mask of the largest |W| in the whole layer (or per N:M group)."""
    scores = weight.detach().abs().float()
    if pattern.nm:
        return _nm_mask(scores, *pattern.nm)
    keep = scores.numel() - round_half_up(pattern.sparsity * scores.numel())
    return topk_mask(scores.reshape(-1), keep).reshape(scores.shape)


def wanda_scores(weight: Tensor, act_norm: Tensor) -> Tensor:
    """|W_ij|·‖X_j‖₂: weight magnitude times the L2 norm of input feature j over calibration tokens."""
    return weight.detach().abs().float() * act_norm.float()[None, :]


def wanda_mask(weight: Tensor, act_norm: Tensor, pattern: Pattern) -> Tensor:
    """Keep-mask from Wanda scores, compared within each output row (or N:M group)."""
    scores = wanda_scores(weight, act_norm)
    if pattern.nm:
        return _nm_mask(scores, *pattern.nm)
    rows = scores.shape[0]
    return _row_mask(scores, spread(round_half_up(pattern.sparsity * scores.numel()), rows))


def sparsegpt_prune(
    weight: Tensor, hessian: Tensor, pattern: Pattern, *, blocksize: int = 128, percdamp: float = 0.01
) -> tuple[Tensor, Tensor]:
    """Prune and reconstruct W against H = 2XXᵀ/n; returns (new weight, keep-mask), same dtype as W.

    Why OBS: removing w_q and shifting the remaining weights of its row by -w_q/[H⁻¹]_qq ·
    H⁻¹_{:,q} minimises the increase of ‖WX − ŴX‖²; processing columns in order lets every row
    share one inverse-Hessian sequence (the Cholesky rows of H⁻¹).
    """
    if pattern.nm and blocksize % pattern.nm[1]:
        raise ConfigError(
            f"SparseGPT block size {blocksize} is not a multiple of m={pattern.nm[1]}",
            where="sparsegpt",
            fix="use a block size divisible by m (128 works for 2:4 and 4:8)",
        )
    if pattern.nm:
        NM(*pattern.nm).check("weight", tuple(weight.shape))
    W = weight.detach().to(torch.float32).clone()
    rows, cols = W.shape
    H = hessian.detach().to(torch.float64).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    damp = percdamp * torch.mean(torch.diag(H))
    H += damp * torch.eye(cols, dtype=H.dtype)
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.cholesky_inverse(L)
        U = torch.linalg.cholesky(Hinv, upper=True).to(torch.float32)
    except RuntimeError:  # torch raises LinAlgError (a RuntimeError) when H is not positive definite
        raise ConfigError(
            "the calibration Hessian is not positive definite even after dampening",
            where="sparsegpt",
            fix="use more calibration tokens or a larger dampening (percdamp)",
        ) from None

    mask = torch.ones((rows, cols), dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        width = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        keep1 = torch.ones_like(W1, dtype=torch.bool)
        if not pattern.nm:
            # this block's share of the layer's exact total, chosen over all rows × block columns
            share = round_half_up(pattern.sparsity * rows * i2) - round_half_up(pattern.sparsity * rows * i1)
            score = (W1**2) / (d[None, :] ** 2)
            keep1 = topk_mask(score.reshape(-1), W1.numel() - share).reshape(W1.shape)
        for i in range(width):
            if pattern.nm and i % pattern.nm[1] == 0:
                n, m = pattern.nm
                score = (W1[:, i : i + m] ** 2) / (d[None, i : i + m] ** 2)
                keep1[:, i : i + m] = balanced_topk(score, n * rows)
            w = W1[:, i]
            q = torch.where(keep1[:, i], w, torch.zeros_like(w))
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = keep1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    W[~mask] = 0.0
    return W.to(weight.dtype), mask
