"""Specifications of the micro-structures: N:M (balanced, implicit-GEMM grouping) and bh × bw blocks."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from secateurs import ConfigError, MaskSet, compute_masks, masks_of, prune
from secateurs.methods.allocations import round_half_up
from secateurs.methods.pruning import masks_from_scores, round_sparsity
from secateurs.methods.structures import NM, STRUCTURES, Block, balanced_topk, build_structure
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.runner import run_recipe


def convnet(seed: int = 0) -> nn.Sequential:
    """Conv2d(8, 6, 3) (K = 3·3·8 = 72) → Linear(24, 8): reduction lengths divisible by 4 and 8."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 8))


def group_counts(mask: torch.Tensor, m: int) -> torch.Tensor:
    return NM(1, m).to_groups(mask.long()).sum(1)


def block_sums(mask: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    return Block(bh, bw).to_blocks(mask.long()).sum(1)


# -- N:M grouping ---------------------------------------------------------------------------------
def test_registered_names() -> None:
    assert {"unstructured", "nm", "block"} <= set(STRUCTURES.names())
    assert isinstance(build_structure("nm", n=1, m=2), NM)


def test_conv_groups_run_over_kh_kw_in_with_input_channels_innermost() -> None:
    # w[0, c, y, x] = 4c + 2y + x; the (kh, kw, in) order is (0,0,0)=0, (0,0,1)=4, (0,1,0)=1, ...
    w = torch.arange(8).reshape(1, 2, 2, 2)
    groups = NM(2, 4).to_groups(w)
    assert groups.tolist() == [[0, 4, 1, 5], [2, 6, 3, 7]]
    assert torch.equal(NM(2, 4).from_groups(groups, (1, 2, 2, 2)), w)
    lin = torch.arange(16).reshape(2, 8)
    assert NM(2, 4).to_groups(lin).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]


def test_conv_nm_mask_is_chosen_per_kh_kw_in_group() -> None:
    conv = nn.Conv2d(2, 1, 2, bias=False)
    with torch.no_grad():  # kh = 0 row: 10..13; kh = 1 row: 1..4 (both input channels)
        conv.weight.copy_(torch.tensor([[[[10.0, 13.0], [1.0, 4.0]], [[11.0, 12.0], [2.0, 3.0]]]]))
    prune(conv, 0.5, structure="nm", structure_options={"n": 2, "m": 4}, allocation="uniform")
    mask = masks_of(conv)["weight"]
    # Per kh row, the two largest of its four (in, kw) entries: 13, 12 and 4, 3. PyTorch's
    # (in, kh, kw) order would instead have kept 13, 10 (channel 0) and 12, 11 (channel 1).
    expected = torch.tensor([[[[False, True], [False, True]], [[False, True], [False, True]]]])
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("criterion", ["magnitude", "random"])
@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (3, 8), (1, 2)])
def test_uniform_at_one_minus_n_over_m_gives_exact_nm_everywhere(criterion: str, n: int, m: int) -> None:
    model = prune(
        convnet(),
        1 - n / m,
        criterion=criterion,
        allocation="uniform",
        structure="nm",
        structure_options={"n": n, "m": m},
        seed=3,
    )
    masks = masks_of(model)
    assert list(masks) == ["0.weight", "3.weight"]
    for name, mask in masks.items():
        assert group_counts(mask, m).tolist() == [n] * (mask.numel() // m), name
    named = dict(model.named_parameters())
    assert all(int(torch.count_nonzero(named[k].detach()[~v])) == 0 for k, v in masks.items())


def test_magnitude_nm_keeps_the_n_largest_of_each_group() -> None:
    model = convnet(1)
    w = model[3].weight.detach().clone()
    prune(model, 0.5, allocation="uniform", structure="nm", layers={"include": ["3"]})
    kept = NM().to_groups(masks_of(model)["3.weight"])
    top2 = NM().to_groups(w.abs()).argsort(dim=1, descending=True, stable=True)[:, :2]
    assert torch.equal(kept, torch.zeros_like(kept).scatter(1, top2, True))


# -- balanced selection ----------------------------------------------------------------------------
def test_balanced_topk_hand_example() -> None:
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [8.0, 7.0, 6.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    # k = 7: q = 2 each, one extra to the group with the best third score (6, in group 1);
    # the all-tied group keeps its two lowest indices.
    keep = balanced_topk(scores, 7)
    assert keep.tolist() == [
        [True, True, False, False],
        [True, True, True, False],
        [True, True, False, False],
    ]
    # k = 4: q = 1, one extra among the second-best scores 3, 7, 1 → group 1.
    assert balanced_topk(scores, 4).sum(1).tolist() == [1, 2, 1]
    # ties between groups: the lower group index gets the extra one
    assert balanced_topk(torch.ones(3, 4), 5).sum(1).tolist() == [2, 2, 1]


def test_balanced_select_is_exact_and_even_for_every_k() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5 * 4, generator=g).double()
    table = scores.reshape(5, 4)
    nm = NM(2, 4)
    for k in range(0, 21):
        keep = nm.select(scores, k, (5, 4)).reshape(5, 4)
        counts = keep.sum(1)
        q, extra = divmod(k, 5)
        assert int(counts.sum()) == k
        assert set(counts.tolist()) <= {q, q + 1}
        if q < 4:  # the groups with one more are those with the best (q+1)-th score
            third = table.sort(1, descending=True).values[:, q]
            assert set((counts == q + 1).nonzero().reshape(-1).tolist()) == set(
                third.argsort(descending=True)[:extra].tolist()
            )
        rows = table.sort(dim=1, descending=True, stable=True).values
        for r in range(5):  # each group keeps its best entries
            assert torch.equal(table[r][keep[r]].sort(descending=True).values, rows[r, : int(counts[r])])


def test_global_allocation_gives_a_per_layer_balanced_pattern() -> None:
    model = convnet(2)
    masks = compute_masks(model, 0.6, structure="nm", structure_options={"n": 2, "m": 4})
    total = sum(mask.numel() for mask in masks.values())
    assert masks.kept() == total - round_half_up(0.6 * total)
    for mask in masks.values():
        counts = group_counts(mask, 4)
        assert int(counts.max()) - int(counts.min()) <= 1


def test_gradual_rounds_walk_every_group_down_to_exact_nm() -> None:
    model = convnet(4)
    scores = {n: p.detach().abs() for n, p in model.named_parameters() if n.endswith("weight")}
    nm = NM(2, 4)
    current = MaskSet({n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()})
    for k in (1, 2, 3):
        level = round_sparsity(0.5, k, 3)
        new = masks_from_scores(scores, level, allocation="uniform", structure=nm, current=current)
        for name, mask in new.items():
            assert not (mask & ~current[name]).any()  # masks only shrink
            kept = mask.numel() - round_half_up(level * mask.numel())
            counts = group_counts(mask, 4)
            assert int(counts.sum()) == kept
            assert int(counts.max()) - int(counts.min()) <= 1
        current = new
    assert all(group_counts(m, 4).tolist() == [2] * (m.numel() // 4) for m in current.values())
    # compute_masks with rounds=3 (re-scoring between rounds) ends exactly 2:4 as well
    masks = compute_masks(convnet(4), 0.5, allocation="uniform", structure="nm", rounds=3)
    assert all(group_counts(m, 4).tolist() == [2] * (m.numel() // 4) for m in masks.values())


def test_gradual_nm_in_a_recipe_shrinks_to_exact_2_4(mask_log: list[MaskSet]) -> None:
    schedule = {"start_step": 0, "end_step": 4, "frequency": 2}
    prune_spec: dict[str, Any] = {"structure": "nm", "allocation": "uniform", "schedule": schedule}
    raw = {
        "name": "nm",
        "data": {"name": "synthetic", "options": {"input_shape": [20], "num_classes": 3, "num_train": 64}},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "sparsity": 0.5,
        "train": {"iterations": 6, "batch_size": 32},
        "stages": [{"train": {"prune": prune_spec}}],
    }
    result = run_recipe(recipe_from_raw(raw))
    assert len(mask_log) == 3
    for inner, outer in zip(mask_log[1:], mask_log, strict=False):
        assert all(not (inner[n] & ~outer[n]).any() for n in inner)
    for mask in mask_log:
        counts = [group_counts(m, 4) for m in mask.values()]
        assert all(int(c.max()) - int(c.min()) <= 1 for c in counts)
    assert all(group_counts(m, 4).tolist() == [2] * (m.numel() // 4) for m in result.masks.values())


def test_invert_keeps_the_lowest_of_each_group() -> None:
    model = convnet(5)
    w = model[3].weight.detach().abs()
    masks = compute_masks(model, 0.5, allocation="uniform", structure="nm", invert=True)
    bottom2 = NM().to_groups(w).argsort(dim=1, stable=True)[:, :2]
    kept = NM().to_groups(masks["3.weight"])
    assert torch.equal(kept, torch.zeros_like(kept).scatter(1, bottom2, True))


def test_determinism() -> None:
    options: dict[str, Any] = {"criterion": "random", "structure": "nm", "seed": 7}
    assert compute_masks(convnet(), 0.7, **options).equal(compute_masks(convnet(), 0.7, **options))


# -- blocks ---------------------------------------------------------------------------------------
def test_block_grouping_on_the_natural_flatten_order() -> None:
    w = torch.arange(2 * 2 * 2).reshape(2, 2, 2)  # view [2, 4]: rows [0 1 2 3], [4 5 6 7]
    blocks = Block(2, 2).to_blocks(w)
    assert blocks.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert torch.equal(Block(2, 2).from_blocks(blocks, (2, 2, 2)), w)


@pytest.mark.parametrize("pool", ["l1", "l2"])
def test_block_masks_are_whole_blocks_with_exact_counts(pool: str) -> None:
    model = convnet(6)
    options = {"bh": 2, "bw": 4, "pool": pool}
    masks = compute_masks(model, 0.5, allocation="uniform", structure="block", structure_options=options)
    for name, mask in masks.items():
        sums = block_sums(mask, 2, 4)
        assert set(sums.tolist()) <= {0, 8}, name
        n = sums.numel()
        assert int((sums == 8).sum()) == n - round_half_up(0.5 * n)
    # magnitude + l2 pooling keeps the blocks of largest Frobenius norm
    w = model[3].weight.detach()
    norms = Block(2, 4, pool).to_blocks(w.abs())
    pooled = norms.sum(1) if pool == "l1" else norms.square().sum(1).sqrt()
    keep = (block_sums(masks["3.weight"], 2, 4) == 8).nonzero().reshape(-1)
    assert set(keep.tolist()) == set(pooled.argsort(descending=True)[: keep.numel()].tolist())


@pytest.mark.parametrize("pool", ["l1", "l2"])
def test_pooling_skips_pruned_entries_and_a_fully_pruned_block_is_minus_infinity(pool: str) -> None:
    inf = float("-inf")
    s = torch.tensor([[inf, inf, 3.0, inf], [inf, inf, -4.0, 1.0]], dtype=torch.float64)
    pooled = Block(2, 2, pool).group_scores(s)
    assert pooled[0] == inf
    assert pooled[1] == (8.0 if pool == "l1" else math.sqrt(26.0))


def test_block_pruning_twice_keeps_pruned_blocks_pruned() -> None:
    model = convnet(7)
    options: dict[str, Any] = {"structure": "block", "structure_options": {"bh": 2, "bw": 4}}
    prune(model, 0.25, allocation="uniform", **options)
    first = masks_of(model)
    prune(model, 0.75, allocation="uniform", **options)
    second = masks_of(model)
    for name in second:
        assert not (second[name] & ~first[name]).any()
        sums = block_sums(second[name], 2, 4)
        n = sums.numel()
        assert int((sums == 8).sum()) == n - round_half_up(0.75 * n)


def test_invert_is_refused_for_blocks() -> None:
    with pytest.raises(ConfigError, match=r"invert.*structure 'block'.*Fix: .*unstructured or nm"):
        compute_masks(convnet(), 0.5, structure="block", structure_options={"bh": 2, "bw": 4}, invert=True)


@pytest.mark.parametrize(("structure", "options"), [("nm", {"n": 2, "m": 4}), ("block", {"bh": 2, "bw": 4})])
def test_the_shuffle_sanity_check_is_refused_for_patterned_structures(structure: str, options: dict) -> None:
    with pytest.raises(ConfigError, match=rf"shuffle.*break the '{structure}' pattern.*Fix: .*unstructured"):
        compute_masks(convnet(), 0.5, structure=structure, structure_options=options, sanity="shuffle")


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("structure", "options", "pattern"),
    [
        ("nm", {"n": 3, "m": 2}, r"n \(3\) is larger than m \(2\)"),
        ("nm", {"n": 0, "m": 4}, r"nm option n must be a positive integer, got 0"),
        ("nm", {"n": 2, "m": "4"}, r"nm option m must be a positive integer, got '4'"),
        ("nm", {"n": True}, r"nm option n must be a positive integer, got True"),
        ("nm", {"k": 1}, r"structure 'nm' has no option 'k'.*n, m"),
        ("block", {"bh": 0}, r"block option bh must be a positive integer"),
        ("rows", {"count": "rows"}, r"rows option count must be one of layer, row, got 'rows'"),
        (
            "block",
            {"pool": "median"},
            r"pool must be one of l1, l2, max, mean, squared_sum, sum, got 'median'",
        ),
    ],
)
def test_bad_options_are_config_errors(structure: str, options: dict[str, object], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        compute_masks(convnet(), 0.5, structure=structure, structure_options=options)


def test_non_divisible_shapes_name_the_parameter_and_the_fix() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 8))
    with pytest.raises(
        ConfigError, match=r"'0\.weight' of shape \[4, 6\].*K = 6.*Fix: exclude.*m that divides 6"
    ):
        compute_masks(model, 0.5, structure="nm")
    with pytest.raises(ConfigError, match=r"'1\.bias' has shape \[8\].*Fix: exclude"):
        compute_masks(model, 0.5, structure="nm", layers={"include": ["1"], "include_bias": True})
    with pytest.raises(ConfigError, match=r"block structure 3×2: parameter '0\.weight' of shape \[4, 6\]"):
        compute_masks(model, 0.5, structure="block", structure_options={"bh": 3, "bw": 2})
    # excluding the layer is the documented fix
    masks = compute_masks(model, 0.5, structure="nm", layers={"exclude": ["0"]}, allocation="uniform")
    assert list(masks) == ["1.weight"]
    assert group_counts(masks["1.weight"], 4).tolist() == [2] * 8


def _removed_per_row(sparsity: float, rounding: str, count: str, **options: Any) -> dict[str, list[int]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))
    masks = compute_masks(
        model, sparsity, structure="rows", structure_options={"count": count}, rounding=rounding, **options
    )
    return {name: (~mask).sum(1).tolist() for name, mask in masks.items()}


@pytest.mark.parametrize(
    ("rounding", "first", "last"),
    [("half_up", 4, 2), ("floor", 3, 2), ("ceil", 4, 3)],  # rows of 10 and of 6 at 0.37: 3.7 and 2.22 removed
)
def test_rows_counted_per_row_remove_the_rounded_count_from_every_row(
    rounding: str, first: int, last: int
) -> None:
    removed = _removed_per_row(0.37, rounding, "row", allocation="uniform")
    assert removed == {"0.weight": [first] * 6, "2.weight": [last] * 3}


def test_rows_counted_per_layer_keep_the_layers_sparsity_exact() -> None:
    removed = _removed_per_row(0.37, "half_up", "layer", allocation="uniform")
    assert sum(removed["0.weight"]) == round_half_up(0.37 * 60) == 22  # rows of 4 and of 3
    assert sorted(set(removed["0.weight"])) == [3, 4]
    assert sum(removed["2.weight"]) == round_half_up(0.37 * 18) == 7


def test_a_layer_override_counts_per_row_too_and_a_global_total_is_spread() -> None:
    removed = _removed_per_row(0.37, "floor", "row", allocation="uniform", layer_sparsities={"2.weight": 0.5})
    assert removed == {"0.weight": [3] * 6, "2.weight": [3] * 3}
    spread = _removed_per_row(0.37, "floor", "row", allocation="global")
    assert sum(map(sum, spread.values())) == math.floor(0.37 * 78)  # global's total, rows within one
    assert all(max(r) - min(r) <= 1 for r in spread.values())
