"""Specifications of the ADMM projections: each is the nearest point of its set (checked by brute force)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torch import nn

from secateurs import ConfigError, compute_masks
from secateurs.methods.projections import (
    PROJECTIONS,
    project,
    project_block,
    project_channel,
    project_nm,
    project_unify,
    project_unstructured,
    project_with_mask,
    quantize_1d,
    unification_cost,
)
from secateurs.methods.structures import NM, Block


def weight(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def dist(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().sum())


def masked(w: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.where(keep, w, 0.0)


CASES: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("unstructured", {"sparsity": 0.5}, (2, 3)),
    ("nm", {"n": 2, "m": 4}, (2, 8)),
    ("nm", {"n": 1, "m": 2}, (3, 2, 2, 2)),
    ("block", {"sparsity": 0.5, "bh": 2, "bw": 2}, (4, 4)),
    ("channel", {"sparsity": 0.4}, (5, 2, 3)),
    ("unify", {"sparsity": 0.25, "bh": 1, "bw": 2, "levels": 2}, (2, 4)),
    ("unify", {"sparsity": 0.5, "bh": 2, "bw": 2, "levels": None}, (4, 4)),
]


def test_registry_has_the_five_kinds() -> None:
    assert PROJECTIONS.names() == ["block", "channel", "nm", "unify", "unstructured"]


@pytest.mark.parametrize(("kind", "options", "shape"), CASES)
def test_idempotent_deterministic_and_pure(
    kind: str, options: dict[str, Any], shape: tuple[int, ...]
) -> None:
    w = weight(*shape, seed=1)
    before = w.clone()
    z, mask = project_with_mask(w, kind, **options)
    assert torch.equal(w, before)  # the input is not modified
    assert torch.equal(project(z, kind, **options), z)
    again = project_with_mask(w.clone(), kind, **options)
    assert torch.equal(again.weight, z) and torch.equal(again.mask, mask)
    assert z.dtype == w.dtype and mask.dtype == torch.bool
    assert torch.count_nonzero(z[~mask]) == 0


def test_public_functions_match_the_dispatcher() -> None:
    w = weight(4, 8, seed=2)
    assert torch.equal(project_unstructured(w, 0.5), project(w, "unstructured", sparsity=0.5))
    assert torch.equal(project_nm(w, 1, 4), project(w, "nm", n=1, m=4))
    assert torch.equal(project_block(w, 0.5, 2, 4), project(w, "block", sparsity=0.5, bh=2, bw=4))
    assert torch.equal(project_channel(w, 0.5), project(w, "channel", sparsity=0.5))
    assert torch.equal(
        project_unify(w, 0.5, 2, 2, 3), project(w, "unify", sparsity=0.5, bh=2, bw=2, levels=3)
    )


# -- nearest point by brute force ------------------------------------------------------------------
def test_unstructured_is_the_nearest_k_sparse_point_with_ties_to_the_lower_index() -> None:
    w = weight(2, 3, seed=3)
    z = project_unstructured(w, 0.5)
    supports = itertools.combinations(range(6), 3)
    best = min(
        dist(w, masked(w, torch.isin(torch.arange(6), torch.tensor(s)).reshape(2, 3))) for s in supports
    )
    assert dist(w, z) == pytest.approx(best, abs=1e-12)
    assert int(torch.count_nonzero(z)) == 3
    tied = torch.tensor([1.0, -2.0, 2.0, -1.0, 2.0])
    assert project_unstructured(tied, 0.6).tolist() == [0.0, -2.0, 2.0, 0.0, 0.0]


def test_nm_is_the_nearest_point_with_at_most_n_per_group() -> None:
    w = weight(2, 4, seed=4)
    z = project_nm(w, 2, 4)
    best = math.inf
    for keep in itertools.product([0, 1], repeat=8):  # every support, including those with < n per group
        keep_t = torch.tensor(keep, dtype=torch.bool).reshape(2, 4)
        if int(keep_t.sum(1).max()) <= 2:
            best = min(best, dist(w, masked(w, keep_t)))
    assert dist(w, z) == pytest.approx(best, abs=1e-12)
    assert (z != 0).sum(1).tolist() == [2, 2]


def test_nm_projection_uses_the_nm_structure_grouping_and_agrees_with_prune() -> None:
    conv = nn.Conv2d(4, 3, 2, bias=False)
    w = conv.weight.detach().clone()
    _, mask = project_with_mask(w, "nm", n=2, m=4)
    assert NM(2, 4).to_groups(mask).sum(1).tolist() == [2] * (w.numel() // 4)
    masks = compute_masks(conv, 0.5, allocation="uniform", structure="nm")
    assert torch.equal(masks["weight"], mask)


def test_block_is_the_nearest_block_sparse_point() -> None:
    w = weight(4, 4, seed=5)
    z, mask = project_with_mask(w, "block", sparsity=0.5, bh=2, bw=2)
    blk = Block(2, 2)
    best = min(
        dist(w, masked(w, blk.expand(torch.isin(torch.arange(4), torch.tensor(s)), (4, 4))))
        for s in itertools.combinations(range(4), 2)
    )
    assert dist(w, z) == pytest.approx(best, abs=1e-12)
    assert set(blk.to_blocks(mask.long()).sum(1).tolist()) == {0, 4}
    # and it agrees with block pruning by magnitude, l2 pooling, uniform allocation
    lin = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    options = {"bh": 2, "bw": 2, "pool": "l2"}
    masks = compute_masks(lin, 0.5, allocation="uniform", structure="block", structure_options=options)
    assert torch.equal(masks["weight"], mask)


def test_channel_is_the_nearest_point_with_k_output_rows() -> None:
    w = weight(5, 2, 3, seed=6)
    z = project_channel(w, 0.4)
    rows = torch.arange(5)[:, None, None]
    best = min(
        dist(w, masked(w, torch.isin(rows, torch.tensor(s)).expand_as(w)))
        for s in itertools.combinations(range(5), 3)
    )
    assert dist(w, z) == pytest.approx(best, abs=1e-12)
    assert (z.reshape(5, -1) != 0).any(1).sum() == 3


# -- unify -------------------------------------------------------------------------------------------
def brute_unify(w: torch.Tensor, bh: int, bw: int, kept: int, levels: int | None) -> float:
    """min ||w − z||² over every kept set × every assignment of kept blocks to ≤ levels magnitudes."""
    blk = Block(bh, bw)
    a = blk.to_blocks(w.abs())
    n = a.shape[0]
    best = math.inf
    for keep in itertools.combinations(range(n), kept):
        labels_range = range(kept if levels is None else min(levels, kept))
        for labels in itertools.product(labels_range, repeat=kept):
            cost = sum(float(a[b].square().sum()) for b in range(n) if b not in keep)
            for label in set(labels):
                members = [b for b, lab in zip(keep, labels, strict=True) if lab == label]
                c = float(a[members].mean())  # the best shared magnitude of these blocks
                cost += sum(float((a[b] - c).square().sum()) for b in members)
            best = min(best, cost)
    return best


@pytest.mark.parametrize(
    ("shape", "bh", "bw", "sparsity", "levels"),
    [
        ((2, 4), 1, 2, 0.0, 1),
        ((2, 4), 1, 2, 0.25, 1),
        ((2, 4), 1, 2, 0.25, 2),
        ((2, 4), 1, 2, 0.0, 3),
        ((2, 4), 1, 2, 0.5, None),
        ((4, 4), 2, 2, 0.0, 2),
        ((4, 4), 2, 2, 0.25, 2),
        ((2, 6), 1, 2, 0.4, 2),
        ((2, 6), 1, 2, 0.2, 3),
    ],
)
def test_unify_is_the_nearest_point_by_exhaustive_search(
    shape: tuple[int, int], bh: int, bw: int, sparsity: float, levels: int | None
) -> None:
    w = weight(*shape, seed=7)
    z, mask = project_with_mask(w, "unify", sparsity=sparsity, bh=bh, bw=bw, levels=levels)
    blk = Block(bh, bw)
    n = w.numel() // (bh * bw)
    kept = n - math.floor(sparsity * n + 0.5)
    assert dist(w, z) == pytest.approx(brute_unify(w, bh, bw, kept, levels), abs=1e-12)
    # in the set: pruned blocks are zero, kept ones share one magnitude with the weights' signs
    zb, wb, mb = blk.to_blocks(z), blk.to_blocks(w), blk.to_blocks(mask)
    assert int(mb.all(1).sum()) == kept and bool((mb.all(1) | ~mb.any(1)).all())
    assert bool((zb[~mb] == 0).all())
    mags = zb[mb.all(1)].abs()
    assert bool((mags == mags[:, :1]).all())
    assert bool((torch.sign(zb[mb.all(1)]) == torch.where(wb[mb.all(1)] >= 0, 1.0, -1.0)).all())
    if levels is not None:
        assert torch.unique(mags).numel() <= levels


def test_unify_signs_of_zero_count_as_positive_and_levels_none_keeps_block_means() -> None:
    w = torch.tensor([[0.0, -3.0, 1.0, 1.0], [-0.5, 0.0, 0.25, -0.25]])
    z = project_unify(w, 0.5, bh=1, bw=2)
    # block means 1.5, 1, 0.25, 0.25: the two smallest blocks are pruned; the others keep their means
    assert z.tolist() == [[1.5, -1.5, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    # one level: every block at the mean of the block means (0.75); the zeros get sign +
    assert project_unify(w, 0.0, bh=1, bw=2, levels=1).tolist() == [
        [0.75, -0.75, 0.75, 0.75],
        [-0.75, 0.75, 0.75, -0.75],
    ]
    # a tie between block means: the lower index is kept
    tied = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert project_unify(tied, 0.5, bh=1, bw=2).tolist() == [[1.0, -1.0], [0.0, 0.0]]


def test_quantize_1d_is_optimal_over_all_assignments() -> None:
    g = torch.Generator().manual_seed(8)
    for n, levels in [(5, 2), (6, 3), (7, 2), (6, 4), (4, 1)]:
        x = torch.rand(n, generator=g, dtype=torch.float64)
        q = quantize_1d(x, levels)
        best = math.inf
        for labels in itertools.product(range(levels), repeat=n):
            lab = torch.tensor(labels)
            centres = torch.stack([x[lab == j].mean() if (lab == j).any() else x[0] for j in range(levels)])
            best = min(best, dist(x, centres[lab]))
        assert dist(x, q) == pytest.approx(best, abs=1e-12)
        assert torch.unique(q).numel() <= levels
    few = torch.tensor([0.5, 0.25, 0.5, 0.25])
    assert torch.equal(quantize_1d(few, 2), few)  # already ≤ levels distinct values: unchanged


def test_quantize_1d_matches_a_plain_dynamic_program_on_a_larger_input() -> None:
    x = torch.rand(60, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    xs = sorted(x.tolist())

    def sse(t: int, i: int) -> float:
        seg = xs[t:i]
        mean = sum(seg) / len(seg)
        return sum((v - mean) ** 2 for v in seg)

    table = [[sse(t, i) if t < i else 0.0 for i in range(61)] for t in range(61)]
    best = [table[0][i] if i else math.inf for i in range(61)]
    for j in range(2, 6):
        best = [min((best[t] + table[t][i] for t in range(j - 1, i)), default=math.inf) for i in range(61)]
    assert dist(x, quantize_1d(x, 5)) == pytest.approx(best[60], abs=1e-12)


# -- storage / arithmetic accounting ----------------------------------------------------------------
def test_unification_cost_hand_example() -> None:
    c, d = 0.5, 2.0
    w = torch.tensor([[c, -c, 0.0, 0.0], [d, d, -c, c]])  # 1×2 blocks: 4 blocks, 3 kept, 2 levels
    cost = unification_cost(w, 1, 2)
    assert cost == {
        "blocks": 4,
        "kept_blocks": 3,
        "levels": 2,
        "dense_bits": 256,  # 8 weights × 32
        "bitmap_bits": 4,
        "sign_bits": 6,  # 3 blocks × 2 signs
        "index_bits": 3,  # 3 blocks × ceil(log2 2)
        "codebook_bits": 64,  # 2 magnitudes × 32
        "unified_bits": 77,
        "compression": 256 / 77,
        "dense_macs": 8,
        "unified_adds": 6,
        "unified_mults": 3,
        "adds_saved": 2,
        "mults_saved": 5,
    }
    square = torch.tensor([[c, -c, 0.0, 0.0], [c, c, 0.0, 0.0]])  # one 2×2 block kept, one pruned
    cost = unification_cost(square, 2, 2)
    assert (cost["unified_bits"], cost["unified_mults"], cost["unified_adds"]) == (2 + 4 + 0 + 32, 2, 4)


def test_unification_cost_refuses_a_weight_that_is_not_unified() -> None:
    with pytest.raises(ConfigError, match="not unified"):
        unification_cost(torch.tensor([[1.0, 2.0]]), 1, 2)
    with pytest.raises(ConfigError, match="not unified"):
        unification_cost(torch.tensor([[1.0, 0.0]]), 1, 2)


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "options", "pattern"),
    [
        ("nm", {"n": 3, "m": 2}, r"projection 'nm': nm option n \(3\) is larger than m \(2\)"),
        ("nm", {"n": 2, "m": 3}, r"projection 'nm': .*shape \[4, 8\].*not a multiple of m"),
        ("unstructured", {}, r"projection 'unstructured' needs sparsity"),
        ("unstructured", {"sparsity": 1.0}, r"sparsity must be a number in \[0, 1\)"),
        ("block", {"sparsity": 0.5, "bh": 3}, r"projection 'block': block structure 3×4"),
        ("unify", {"sparsity": 0.5, "levels": 0}, r"levels must be a positive integer or None, got 0"),
        ("unify", {"sparsity": 0.5, "pool": "l1"}, r"projection 'unify' has no option 'pool'"),
        ("prune", {}, r"unknown projection 'prune'"),
    ],
)
def test_bad_options_are_config_errors(kind: str, options: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        project(weight(4, 8), kind, **options)


def test_non_finite_weights_are_refused() -> None:
    w = weight(2, 4)
    w[0, 1] = float("nan")
    with pytest.raises(ConfigError, match="NaN or infinite"):
        project(w, "unstructured", sparsity=0.5)
    with pytest.raises(ConfigError, match="output dimension"):
        project(weight(4), "channel", sparsity=0.5)
