"""The three LLM methods as points of the one pruning stack, and their single-layer forms.

Each is criterion × structure × allocation (+ reconstruction), `method_options`:

- magnitude: criterion magnitude, structure unstructured (one comparison group per layer, the
  usual LLM baseline) or nm, allocation uniform; no calibration.
- Wanda (Sun et al. 2023): criterion wanda (|W_ij|·‖X_j‖₂ over calibration tokens), structure rows
  (compared per output row) or nm, allocation uniform, sequential calibration.
- SparseGPT (Frantar & Alistarh 2023): OBS reconstruction in adaptive mode
  (`secateurs.methods.reconstruction.obs`) after a magnitude mask that only fixes the counts,
  unstructured or nm, sequential calibration.

N:M groups are runs of m consecutive inputs of one output row, exactly the `nm` structure, and
each keeps exactly n weights. Unstructured counts are exact: a layer of N weights loses
round_half_up(s·N); where a method compares within smaller groups (Wanda's rows, SparseGPT's
column blocks) that total is spread over the groups, never differing by more than one (row) or
than the block's share (block). Selection is always by top-k index, never by threshold:
dequantized weights tie a lot, and a threshold would prune every tied weight at once.

The single-layer functions (`magnitude_mask`, `wanda_mask`, `sparsegpt_prune`) run the same code on
one weight matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from secateurs.core.errors import ConfigError
from secateurs.core.sparsity import check_rounding
from secateurs.core.topk import check_ties, tie_rule
from secateurs.methods.allocations import check_sparsity
from secateurs.methods.criteria.wanda import wanda_scores as _wanda_scores
from secateurs.methods.pruning import masks_from_scores
from secateurs.methods.reconstruction import OBS, build_reconstruction, obs_reconstruct
from secateurs.methods.structures import NM, ElementStructure, Rows, Unstructured, build_structure
from secateurs.methods.structures.nm import check_row_count

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


def structure_of(pattern: Pattern, per_row: bool = False) -> ElementStructure:
    """The structure a pattern prunes with: nm for N:M, else rows (`per_row`, Wanda) or unstructured."""
    if pattern.nm:
        return NM(*pattern.nm)
    return Rows() if per_row else Unstructured()


def prune_step(
    method: str,
    pattern: Pattern,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    ties: str = "index",
    rounding: str = "half_up",
    counts: str = "layer",
) -> dict[str, Any]:
    """An LLM method as a recipe's prune stage: sequential calibration (no data read by magnitude).

    `ties` breaks ties at the cut (`secateurs.core.topk`): dequantized 4-bit weights tie often, and
    `original` is the Wanda / SparseGPT code's rule. `rounding` rounds the removed counts
    (`secateurs.core.sparsity`; the codes' int(s·n) is `floor`), and `counts` is what Wanda's
    sparsity counts: `layer` (the layer's sparsity exact) or `row` (every row's count rounded on
    its own, as Wanda's code). Options at their defaults are left out of the step.
    """
    check_method(method)
    check_ties(ties)
    check_rounding(rounding)
    if check_row_count(counts, "counts", where=None) != "layer" and (method != "wanda" or pattern.nm):
        raise ConfigError(
            f"counts {counts!r} applies to wanda's per-row comparison, not to {method} {pattern.label}",
            fix="leave counts at layer, or use --method wanda without --nm",
        )
    structure = structure_of(pattern, per_row=method == "wanda")
    options: dict[str, Any] = {"n": pattern.nm[0], "m": pattern.nm[1]} if pattern.nm else {}
    if counts != "layer":
        options["count"] = counts
    step: dict[str, Any] = {
        "criterion": "wanda" if method == "wanda" else "magnitude",
        "structure": structure.name,
        "structure_options": options,
        "allocation": "uniform",
        "sparsity": pattern.sparsity,
    }
    if method == "sparsegpt":
        step["reconstruct"] = {
            "method": "obs",
            "select": "adaptive",
            "blocksize": blocksize,
            "percdamp": percdamp,
        }
    if ties != "index":
        step["ties"] = ties
    if rounding != "half_up":
        step["rounding"] = rounding
    step["calibration"] = {"mode": "sequential"}  # block by block: only the blocks' Linears are pruned
    return step


def method_options(method: str, pattern: Pattern, **options: Any) -> dict[str, Any]:
    """The `secateurs.methods.sequential.prune_sequential` options of an LLM method: its prune step
    (`options` as `prune_step` takes them)."""
    step = prune_step(method, pattern, **options)
    return {
        "ties": step.get("ties", "index"),
        "rounding": step.get("rounding", "half_up"),
        "criterion": step["criterion"],
        "structure": build_structure(step["structure"], **step["structure_options"]),
        "allocation": step["allocation"],
        "reconstruct": build_reconstruction(step.get("reconstruct")),
    }


def _mask(scores: Tensor, pattern: Pattern, per_row: bool = False, ties: str = "index") -> Tensor:
    """Keep-mask of one weight from its scores: uniform allocation at the pattern's sparsity."""
    masks = masks_from_scores(
        {"weight": scores},
        pattern.sparsity,
        allocation="uniform",
        structure=structure_of(pattern, per_row),
        ties=ties,
    )
    return masks["weight"]


def magnitude_mask(weight: Tensor, pattern: Pattern, ties: str = "index") -> Tensor:
    """Keep-mask of the largest |W| in the whole layer (or per N:M group); `ties` as in `prune_step`."""
    return _mask(weight.detach().abs().float(), pattern, ties=ties)


def wanda_scores(weight: Tensor, act_norm: Tensor) -> Tensor:
    """|W_ij|·‖X_j‖₂: weight magnitude times the L2 norm of input feature j over calibration tokens."""
    return _wanda_scores(weight, act_norm)


def wanda_mask(weight: Tensor, act_norm: Tensor, pattern: Pattern, ties: str = "index") -> Tensor:
    """Keep-mask from Wanda scores, compared within each output row (or N:M group)."""
    return _mask(wanda_scores(weight, act_norm), pattern, per_row=True, ties=ties)


def sparsegpt_prune(
    weight: Tensor,
    hessian: Tensor,
    pattern: Pattern,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    ties: str = "index",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Prune and reconstruct W against H = 2XXᵀ/n; returns (new weight, keep-mask), same dtype as W.

    The OBS reconstruction in adaptive mode (`secateurs.methods.reconstruction.obs`), keeping the
    counts of the magnitude mask: the layer's pruned count, or n of every m.
    """
    structure = structure_of(pattern)
    OBS("adaptive", blocksize, percdamp).check(structure)
    m = pattern.nm[1] if pattern.nm else None
    with tie_rule(check_ties(ties), torch.Generator().manual_seed(seed)):  # `seed`: ties "random"
        return obs_reconstruct(
            weight,
            hessian,
            magnitude_mask(weight, pattern),
            select="adaptive",
            m=m,
            blocksize=blocksize,
            percdamp=percdamp,
        )
