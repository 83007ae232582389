"""Euclidean projections of a weight tensor onto sparsity constraint sets (the ADMM Z-step).

ADMM training alternates a gradient step on the weights W with Z = Π_S(W + U): the point of the
constraint set S nearest to W + U in the Frobenius norm. Each `project_*` below is that nearest
point, computed exactly (not a heuristic), as a pure function: the input is not modified and
the same input gives the same output bit for bit (ties go to the lower index, as in
`secateurs.methods.pruning.topk_mask`). `project_with_mask` also returns which entries are kept, which
the final hard prune of ADMM installs as the mask.

Keep counts follow the allocation's rounding (`secateurs.core.sparsity`): n items at sparsity s keep
n − removed_count(s·n) under the rule in force (half_up unless a `rounding_rule` block sets another; ADMM
sets its stage's `rounding`), the count `prune(..., allocation="uniform")` keeps under the same rule, so
the support ADMM converges to is the one the final prune selects. The groupings are those of the structures
(`secateurs.methods.structures.NM`, `Block`): a projection and a prune with the same options agree.

Kinds: "unstructured" (the k largest |w|), "nm" (the n largest |w| of every N:M group), "block"
(the top blocks by L2 norm), "channel" (the top output rows/filters by L2 norm) and "unify"
(kept micro-blocks share one magnitude per block, with at most `levels` magnitudes per layer).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from secateurs.core.errors import ConfigError
from secateurs.core.registry import Registry, check_options
from secateurs.core.topk import balanced_topk, topk_mask
from secateurs.methods.allocations import check_sparsity, removed_count
from secateurs.methods.structures import NM, Block


class Projection(NamedTuple):
    """A projected weight and the entries the constraint set keeps (bool, same shape)."""

    weight: Tensor
    mask: Tensor


PROJECTIONS: Registry[Callable[..., Projection]] = Registry("projection")


def _kept(n: int, sparsity: float, where: str) -> int:
    check_sparsity(sparsity, where=where)
    return n - removed_count(sparsity * n)


def _checked(w: Tensor, kind: str) -> Tensor:
    if not isinstance(w, Tensor) or not w.is_floating_point():
        raise ConfigError(f"projection {kind!r} needs a floating-point weight tensor, got {type(w).__name__}")
    if not bool(torch.isfinite(w).all()):
        raise ConfigError(
            f"projection {kind!r}: the weight has NaN or infinite entries",
            fix="the ADMM iterate diverged: lower the learning rate or rho",
        )
    return w.detach()


def _build(factory: Callable[..., Any], kind: str, **options: Any) -> Any:
    """A structure for a projection; its option errors name the projection, not structure_options."""
    try:
        return factory(**options)
    except ConfigError as err:
        raise ConfigError(err.what, where=f"projection {kind!r}", fix=err.fix) from None


def _keep(w: Tensor, mask: Tensor) -> Projection:
    return Projection(torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device)), mask)


@PROJECTIONS.register("unstructured", "the k largest |w| (k from the sparsity)")
def _unstructured(w: Tensor, /, *, sparsity: float) -> Projection:
    w = _checked(w, "unstructured")
    k = _kept(w.numel(), sparsity, "projection 'unstructured' sparsity")
    return _keep(w, topk_mask(w.abs().reshape(-1), k).reshape(w.shape))


@PROJECTIONS.register("nm", "the n largest |w| of every group of m (N:M, grouped as structure nm)")
def _nm(w: Tensor, /, *, n: int = 2, m: int = 4) -> Projection:
    w = _checked(w, "nm")
    nm = _build(NM, "nm", n=n, m=m)
    _build(nm.check, "nm", name="weight", shape=tuple(w.shape))
    groups = nm.to_groups(w.abs())
    keep = balanced_topk(groups, nm.n * groups.shape[0])  # k = n·G: exactly n in every group
    return _keep(w, nm.from_groups(keep, tuple(w.shape)))


def _top_blocks(w: Tensor, blk: Block, sparsity: float, kind: str) -> Projection:
    _build(blk.check, kind, name="weight", shape=tuple(w.shape))
    norms = blk.group_scores(w)  # pool "l2": the Frobenius norm of each block
    keep = topk_mask(norms, _kept(norms.numel(), sparsity, f"projection {kind!r} sparsity"))
    return _keep(w, blk.expand(keep, tuple(w.shape)))


@PROJECTIONS.register("block", "the top bh × bw blocks by L2 norm (grouped as structure block)")
def _block(w: Tensor, /, *, sparsity: float, bh: int = 4, bw: int = 4) -> Projection:
    w = _checked(w, "block")
    return _top_blocks(w, _build(Block, "block", bh=bh, bw=bw, pool="l2"), sparsity, "block")


@PROJECTIONS.register("channel", "the top output rows / filters by L2 norm")
def _channel(w: Tensor, /, *, sparsity: float) -> Projection:
    w = _checked(w, "channel")
    if w.dim() < 2:
        raise ConfigError(
            f"projection 'channel' needs a weight with an output dimension, got shape {list(w.shape)}",
            fix="project biases with 'unstructured', or leave them out",
        )
    cols = math.prod(w.shape[1:])
    return _top_blocks(w, Block(bh=1, bw=cols, pool="l2"), sparsity, "channel")


def _segment_min_argmin(values: Tensor, index: Tensor, cand: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Per segment: the minimum of `values` and the smallest `cand` attaining it."""
    best = torch.full((size,), math.inf, dtype=values.dtype).scatter_reduce(
        0, index, values, "amin", include_self=True
    )
    at = torch.where(values == best[index], cand, torch.iinfo(torch.long).max)
    arg = torch.full((size,), torch.iinfo(torch.long).max, dtype=torch.long).scatter_reduce(
        0, index, at, "amin", include_self=True
    )
    return best, arg


def _kmeans_1d_labels(x: Tensor, clusters: int) -> Tensor:
    """Optimal contiguous clustering of sorted values x into `clusters` groups (least squares).

    Dynamic programming D_j(i) = min_t D_{j−1}(t) + SSE(x[t:i]) over the sorted values (an optimal
    1-D k-means clustering is contiguous). The cost is Monge, so the leftmost optimal split point
    is monotone in i, and each level is solved by divide and conquer, O(n log n) per level; all
    subproblems of one recursion depth are evaluated together as one vectorised step.
    Returns the cluster index (0 … clusters−1, non-decreasing) of each value.
    """
    n = x.numel()
    c = x.double() - x.double().mean()  # centred: smaller prefix sums, less cancellation
    zero = torch.zeros(1, dtype=torch.float64)
    p1 = torch.cat([zero, c.cumsum(0)])
    p2 = torch.cat([zero, c.square().cumsum(0)])

    def sse(t: Tensor, i: Tensor) -> Tensor:
        s1 = p1[i] - p1[t]
        return (p2[i] - p2[t] - s1 * s1 / (i - t)).clamp_min(0.0)

    last = torch.arange(n + 1)
    prev = torch.full((n + 1,), math.inf, dtype=torch.float64)
    prev[1:] = sse(torch.zeros(n, dtype=torch.long), last[1:])
    splits = []
    for j in range(2, clusters + 1):
        cur = torch.full((n + 1,), math.inf, dtype=torch.float64)
        arg = torch.zeros(n + 1, dtype=torch.long)
        i_lo, i_hi = torch.tensor([j]), torch.tensor([n])
        t_lo, t_hi = torch.tensor([j - 1]), torch.tensor([n - 1])
        while i_lo.numel():
            mid = (i_lo + i_hi) // 2
            counts = torch.minimum(t_hi, mid - 1) - t_lo + 1
            seg = torch.repeat_interleave(torch.arange(mid.numel()), counts)
            starts = counts.cumsum(0) - counts
            t = t_lo[seg] + torch.arange(seg.numel()) - starts[seg]
            best, opt = _segment_min_argmin(prev[t] + sse(t, mid[seg]), seg, t, mid.numel())
            cur[mid], arg[mid] = best, opt
            left, right = i_lo < mid, mid < i_hi
            i_lo, i_hi = torch.cat([i_lo[left], mid[right] + 1]), torch.cat([mid[left] - 1, i_hi[right]])
            t_lo, t_hi = torch.cat([t_lo[left], opt[right]]), torch.cat([opt[left], t_hi[right]])
        prev = cur
        splits.append(arg)
    labels = torch.zeros(n, dtype=torch.long)
    end = n
    for j in range(clusters, 1, -1):
        start = int(splits[j - 2][end])
        labels[start:end] = j - 1
        end = start
    return labels


def quantize_1d(values: Tensor, levels: int) -> Tensor:
    """Each value replaced by its cluster mean under the optimal ≤ `levels`-cluster least-squares fit.

    Exact (dynamic programming over the sorted values, see `_kmeans_1d_labels`); values with at
    most `levels` distinct entries are returned unchanged, so quantising is idempotent. Computed
    in float64, returned in the input's dtype.
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ConfigError(f"levels must be a positive integer or None, got {levels!r}")
    flat = values.detach().reshape(-1).double()
    if flat.numel() == 0 or torch.unique(flat).numel() <= levels:
        return values.detach().clone()
    order = torch.argsort(flat, stable=True)
    labels = _kmeans_1d_labels(flat[order], levels)
    sums = torch.zeros(levels, dtype=torch.float64).index_add_(0, labels, flat[order])
    sizes = torch.bincount(labels, minlength=levels).double()
    out = torch.empty_like(flat)
    out[order] = (sums / sizes)[labels]
    return out.to(values.dtype).reshape(values.shape)


@PROJECTIONS.register("unify", "kept micro-blocks share one magnitude (own signs), ≤ levels magnitudes")
def _unify(
    w: Tensor, /, *, sparsity: float, bh: int = 1, bw: int = 4, levels: int | None = None
) -> Projection:
    w = _checked(w, "unify")
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 1):
        raise ConfigError(
            f"projection 'unify' levels must be a positive integer or None, got {levels!r}",
            fix="levels: 4 allows four distinct magnitudes per layer; None leaves them free",
        )
    blk = _build(Block, "unify", bh=bh, bw=bw, pool="l1")
    shape = tuple(w.shape)
    _build(blk.check, "unify", name="weight", shape=shape)
    blocks = blk.to_blocks(w)
    means = blocks.abs().double().mean(1)
    keep = topk_mask(means, _kept(means.numel(), sparsity, "projection 'unify' sparsity"))
    magnitude = torch.zeros_like(means)
    kept = means[keep]
    magnitude[keep] = kept if levels is None else quantize_1d(kept, levels)
    mask = blk.expand(keep, shape)
    return Projection(blk.from_blocks(signed_blocks(blocks, magnitude).to(w.dtype), shape), mask)


def signed_blocks(blocks: Tensor, magnitude: Tensor) -> Tensor:
    """Blocks (one per row) at one `magnitude` each, every entry with its own sign in `blocks`
    (the sign of 0 counts as +); a block of magnitude 0 is all zeros (no −0.0). float64."""
    sign = torch.where(blocks >= 0, 1.0, -1.0).to(torch.float64)
    return torch.where(magnitude[:, None] > 0, sign * magnitude[:, None], 0.0)


def _call(kind: str, w: Tensor, options: dict[str, Any]) -> Projection:
    fn = PROJECTIONS.get(kind)
    where = f"projection {kind!r}"
    check_options(fn, options, where=where)
    missing = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in options
    ]
    if missing:
        raise ConfigError(f"{where} needs {', '.join(missing)}", fix=f"pass {missing[0]}=...")
    return fn(w, **options)


def project(w: Tensor, kind: str, **options: Any) -> Tensor:
    """The nearest point to `w` in the constraint set `kind` (see PROJECTIONS for the kinds)."""
    return _call(kind, w, options).weight


def project_with_mask(w: Tensor, kind: str, **options: Any) -> Projection:
    """`project` plus the mask of the entries the constraint set keeps (for the final hard prune)."""
    return _call(kind, w, options)


def project_unstructured(w: Tensor, sparsity: float) -> Tensor:
    """Keep the k = numel − removed_count(s·numel) largest |w| (ties: lower index), zero the rest."""
    return _unstructured(w, sparsity=sparsity).weight


def project_nm(w: Tensor, n: int = 2, m: int = 4) -> Tensor:
    """Keep the n largest |w| of every N:M group (grouping of the "nm" structure; ties: lower index)."""
    return _nm(w, n=n, m=m).weight


def project_block(w: Tensor, sparsity: float, bh: int = 4, bw: int = 4) -> Tensor:
    """Keep the top bh × bw blocks of the [out, rest] view by L2 norm (the nearest block-sparse point)."""
    return _block(w, sparsity=sparsity, bh=bh, bw=bw).weight


def project_channel(w: Tensor, sparsity: float) -> Tensor:
    """Keep the top output rows / filters by L2 norm, zero the others."""
    return _channel(w, sparsity=sparsity).weight


def project_unify(w: Tensor, sparsity: float, bh: int = 1, bw: int = 4, levels: int | None = None) -> Tensor:
    """Nearest weight whose bh × bw blocks are pruned or share one magnitude, with ≤ `levels` magnitudes.

    With signs fixed to sign(w) (0 counts as +), a block kept at magnitude c costs Σ(|w_i| − c)²,
    least at c = mean|w| of the block, and pruning it costs Σ w_i². Writing μ_b for the block mean
    and p = bh·bw, the total is a constant (the within-block variances) plus p·Σ_pruned μ_b² +
    p·Σ_kept (μ_b − c_b)². Exchange: swapping a pruned block b with a kept b' of smaller mean and
    giving b the magnitude c ≥ 0 of b' changes the cost by 2pc(μ_b' − μ_b) ≤ 0, so the blocks with
    the smallest means are pruned (ties: the lower index is kept). The kept means are then
    quantised to ≤ `levels` values by exact 1-D k-means (`quantize_1d`; equal weights since all
    blocks have p entries), whose cluster means are the optimal shared magnitudes.
    """
    return _unify(w, sparsity=sparsity, bh=bh, bw=bw, levels=levels).weight


def unification_cost(w_unified: Tensor, bh: int, bw: int) -> dict[str, float]:
    """Storage (bits) and arithmetic (per output position) of a unified weight versus dense.

    Storage: dense is 32 bits per weight. Unified is a presence bitmap (1 bit per block), and per
    kept block bh·bw sign bits plus a codebook index of ceil(log2 L) bits (0 when L = 1), plus a
    codebook of L float32 magnitudes (32 bits each), L = the number of distinct nonzero magnitudes.

    Arithmetic, per output position (one sample of a Linear, one spatial position of a conv, where
    every weight is used once): dense is numel multiply-adds. A kept unified block needs bh·bw
    additions (signed inputs accumulated into its bh outputs) and min(bh, bw) multiplies: one per
    output row it feeds (sum the signed inputs, then scale), or one per input it reads (scale the
    inputs, then add with signs), whichever is fewer; that is one multiply for 1 × bw or bh × 1
    micro-blocks. Pruned blocks cost nothing. The weight must be unified (every block all zero, or
    all entries of one nonzero magnitude), else a ConfigError.
    """
    blk = _build(Block, "unification_cost", bh=bh, bw=bw, pool="l1")
    _build(blk.check, "unification_cost", name="w_unified", shape=tuple(w_unified.shape))
    blocks = blk.to_blocks(w_unified.detach().abs())
    present = blocks.ne(0).any(1)
    mags = blocks[present, 0]
    if not bool((blocks[present] == mags[:, None]).all()):
        raise ConfigError(
            "unification_cost: the weight is not unified (a block mixes magnitudes or zeros)",
            fix="pass the output of project_unify with the same bh and bw",
        )
    numel, size = w_unified.numel(), bh * bw
    n_blocks, kept = blocks.shape[0], int(present.sum())
    levels = int(torch.unique(mags).numel())
    index = math.ceil(math.log2(levels)) if levels > 1 else 0
    bits = {"bitmap_bits": n_blocks, "sign_bits": kept * size, "index_bits": kept * index}
    bits["codebook_bits"] = 32 * levels
    unified = sum(bits.values())
    adds, mults = kept * size, kept * min(bh, bw)
    return {
        "blocks": n_blocks,
        "kept_blocks": kept,
        "levels": levels,
        "dense_bits": 32 * numel,
        **bits,
        "unified_bits": unified,
        "compression": 32 * numel / unified,
        "dense_macs": numel,
        "unified_adds": adds,
        "unified_mults": mults,
        "adds_saved": numel - adds,
        "mults_saved": numel - mults,
    }
