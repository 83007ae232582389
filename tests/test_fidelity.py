"""Matching a reference implementation on request (issue 21): the rounding of removed counts, the
per-round schedule of `rounds`, the rule among tied scores at the cut, and the scoring mode on a
BatchNorm network. Every case is built by hand, and the defaults must give today's masks bit for bit.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import secateurs
from secateurs.core.errors import ConfigError
from secateurs.core.sparsity import removed_count, round_half_up, rounding_rule
from secateurs.core.topk import TIES, balanced_select, select_topk
from secateurs.methods import pruning
from secateurs.methods.pruning import compute_masks, round_sparsity, score_groups
from secateurs.models import build_model
from secateurs.pipeline.hashing import recipe_config, run_hash
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.runner import run_recipe
from tests.tiny import tiny_recipe

# ---------------------------------------------------------------- rounding of removed counts


@pytest.mark.parametrize(
    ("ideal", "half_up", "floor", "ceil"),
    [
        (12.5, 13, 12, 13),  # a half: half_up and ceil remove it, floor keeps it
        (2.1, 2, 2, 3),
        (2.9, 3, 2, 3),
        (0.3 * 10, 3, 3, 3),  # 3.0000000000000004: float noise, not a fraction of a weight
        (0.29 * 100, 29, 29, 29),  # 28.999999999999996: likewise from below
        (0.0, 0, 0, 0),
        (0.4, 0, 0, 1),
    ],
)
def test_each_rounding_rounds_the_removed_count(ideal: float, half_up: int, floor: int, ceil: int) -> None:
    assert [removed_count(ideal, r) for r in ("half_up", "floor", "ceil")] == [half_up, floor, ceil]
    assert removed_count(ideal) == round_half_up(ideal)  # the default, outside any rule
    with rounding_rule("floor"):
        assert removed_count(ideal) == floor
    assert removed_count(ideal) == half_up  # the rule ends with its block


def _two_layers() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 5, bias=False), nn.ReLU(), nn.Linear(5, 2, bias=False))  # 25 + 10


@pytest.mark.parametrize(
    ("allocation", "options", "expected"),
    [
        # uniform at 0.5: 12.5 of 25 removed (13 / 12 / 13), 5 of 10
        ("uniform", {}, {"half_up": [12, 5], "floor": [13, 5], "ceil": [12, 5]}),
        # global and ERK: 17.5 of 35 removed in all (18 / 17 / 18)
        ("global", {}, {"half_up": 17, "floor": 18, "ceil": 17}),
        ("erk", {}, {"half_up": 17, "floor": 18, "ceil": 17}),
        # explicit 0.3 on the first layer: 7.5 of 25 removed (8 / 7 / 8); 0.5 on the other
        ("explicit", {"sparsities": {"0.*": 0.3}}, {"half_up": [17, 5], "floor": [18, 5], "ceil": [17, 5]}),
    ],
)
def test_every_allocation_counts_by_the_rounding(allocation: str, options: dict, expected: dict) -> None:
    model = _two_layers()
    for rounding, counts in expected.items():
        masks = compute_masks(
            model, 0.5, allocation=allocation, allocation_options=options, rounding=rounding
        )
        kept = [int(masks[n].sum()) for n in ("0.weight", "2.weight")]
        assert (kept if isinstance(counts, list) else sum(kept)) == counts, rounding


def test_the_prunes_own_rounding_wins_over_a_rule_around_it() -> None:
    model = _two_layers()
    with rounding_rule("floor"):
        masks = compute_masks(model, 0.5, allocation="uniform", rounding="half_up")
        assert int(masks["0.weight"].sum()) == 12  # 12.5 removed rounds half up: 13 of 25 go
        assert removed_count(12.5) == 12  # and the rule around it is back in force after the prune


def test_layer_overrides_and_channel_groups_count_by_the_rounding() -> None:
    model = _two_layers()
    # the override: 0.1 of the 10 weights of the last layer is 1 (any rule); 0.25 is 2.5
    for rounding, kept in (("half_up", 7), ("floor", 8), ("ceil", 7)):
        masks = compute_masks(
            model, 0.5, allocation="uniform", layer_sparsities={"2": 0.25}, rounding=rounding
        )
        assert int(masks["2.weight"].sum()) == kept
    # rows of 5 as the groups (structure "channel" needs a trace; rows keep one count per layer): 0.5 of
    # a 5-output layer's 5 channels is 2.5 channels
    conv = nn.Sequential(nn.Conv2d(1, 5, 3), nn.ReLU(), nn.Conv2d(5, 2, 3))
    for rounding, kept in (("half_up", 2), ("floor", 3), ("ceil", 2)):
        masks = compute_masks(
            conv, 0.5, structure="channel", allocation="uniform", input_shape=(1, 8, 8), rounding=rounding
        )
        assert int(masks["0.weight"].reshape(5, -1).any(1).sum()) == kept


def test_an_unknown_rounding_or_tie_rule_is_refused_with_the_choices() -> None:
    model = _two_layers()
    with pytest.raises(ConfigError, match="half_up, floor, ceil"):
        compute_masks(model, 0.5, rounding="truncate")
    with pytest.raises(ConfigError, match="index, reverse, random, original"):
        compute_masks(model, 0.5, ties="lower")
    with pytest.raises(ConfigError, match="exponential, linear"):
        compute_masks(model, 0.5, rounds=2, round_schedule="cubic")


# ---------------------------------------------------------------- per-round counts (SynFlow)


def _synflow_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 6, bias=False), nn.ReLU(), nn.Linear(6, 1, bias=False))  # 36 + 6 = 42


def _kept_per_round(monkeypatch: pytest.MonkeyPatch, **options) -> tuple[list[int], secateurs.MaskSet]:
    """Run a 3-round SynFlow prune of the 42-weight net to 0.9, recording each round's kept total."""
    seen: list[int] = []
    select = pruning.select_groups

    def recording(*args, **kwargs):
        chosen = select(*args, **kwargs)
        seen.append(sum(int(c.sum()) for c in chosen.values()))
        return chosen

    monkeypatch.setattr(pruning, "select_groups", recording)
    masks = compute_masks(_synflow_net(), 0.9, criterion="synflow", input_shape=(6,), rounds=3, **options)
    return seen, masks


# Hand-computed, N = 42 weights, target density d = 0.1, R = 3 rounds, removed = int((1 - density)·N):
#   exponential: density 0.1^(1/3) = 0.46416, 0.1^(2/3) = 0.21544, 0.1 → removed 22.505, 32.951, 37.8
#   linear:      density 1 − 0.9·r/3 = 0.7, 0.4, 0.1                 → removed 12.6, 25.2, 37.8
HAND = {
    ("exponential", "floor"): [42 - 22, 42 - 32, 42 - 37],
    ("exponential", "half_up"): [42 - 23, 42 - 33, 42 - 38],
    ("linear", "floor"): [42 - 12, 42 - 25, 42 - 37],
    ("linear", "half_up"): [42 - 13, 42 - 25, 42 - 38],
}


@pytest.mark.parametrize(("schedule", "rounding"), list(HAND))
def test_rounds_reproduce_a_hand_computed_synflow_schedule(
    monkeypatch: pytest.MonkeyPatch, schedule: str, rounding: str
) -> None:
    seen, masks = _kept_per_round(monkeypatch, round_schedule=schedule, rounding=rounding)
    assert seen == HAND[(schedule, rounding)]
    assert sum(int(m.sum()) for m in masks.values()) == seen[-1]


def test_round_sparsity_follows_the_reference_formulas() -> None:
    # the Synaptic-Flow code: density d^((r+1)/R) (exponential) or 1 − (1 − d)·(r+1)/R (linear)
    for r in (1, 2):
        assert round_sparsity(0.9, r, 3) == pytest.approx(1 - 0.1 ** (r / 3), abs=1e-15)
        assert round_sparsity(0.9, r, 3, "linear") == pytest.approx(0.9 * r / 3, abs=1e-15)
    assert round_sparsity(0.9, 3, 3) == round_sparsity(0.9, 3, 3, "linear") == 0.9


def _reference_synflow(
    model: nn.Module, density: float, epochs: int, schedule: str
) -> dict[str, torch.Tensor]:
    """The Synaptic-Flow code's prune loop, written out: |θ| network on an all-ones batch of 1 in
    eval mode, score |θ·∂R/∂θ| of the masked weights, then a global threshold at the
    int((1 − density)·N)-th smallest score (kthvalue), removing every score at or below it."""
    model = copy.deepcopy(model).eval()
    weights = {n: p for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in weights.values():
            p.abs_()
    original = {n: p.detach().clone() for n, p in weights.items()}
    masks = {n: torch.ones_like(p) for n, p in weights.items()}
    for epoch in range(epochs):
        with torch.no_grad():
            for n, p in weights.items():
                p.copy_(original[n] * masks[n])
        model.zero_grad()
        model(torch.ones(1, 6)).sum().backward()
        scores = {n: (p.grad * p).detach().abs() for n, p in weights.items()}
        sparse = (
            density ** ((epoch + 1) / epochs)
            if schedule == "exponential"
            else 1.0 - (1.0 - density) * (epoch + 1) / epochs
        )
        flat = torch.cat([s.flatten() for s in scores.values()])
        k = int((1.0 - sparse) * flat.numel())
        threshold = torch.kthvalue(flat, k).values
        masks = {n: (s > threshold).float() for n, s in scores.items()}
    return {n: m.bool() for n, m in masks.items()}


@pytest.mark.parametrize("schedule", ["exponential", "linear"])
def test_floor_rounding_gives_the_synflow_codes_mask(schedule: str) -> None:
    model = _synflow_net()
    reference = _reference_synflow(model, 0.1, 3, schedule)
    ours = compute_masks(
        model, 0.9, criterion="synflow", input_shape=(6,), rounds=3, round_schedule=schedule, rounding="floor"
    )
    for n, mask in reference.items():
        assert torch.equal(ours[n], mask), n
    # half_up removes one weight more in the last round (37.8 → 38): not the reference's mask
    other = compute_masks(
        model, 0.9, criterion="synflow", input_shape=(6,), rounds=3, round_schedule=schedule
    )
    assert sum(int(m.sum()) for m in other.values()) == sum(int(m.sum()) for m in reference.values()) - 1


# ---------------------------------------------------------------- ties at the cut


def _tied_weight() -> torch.Tensor:
    """A [3, 8] weight whose every group of 4 ties at the 2:4 cut (magnitudes)."""
    return torch.tensor(
        [
            [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0],
            [2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0],
            [1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0],
        ]
    )


def _linear(weight: torch.Tensor) -> nn.Module:
    model = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        model[0].weight.copy_(weight)
    return model


def _nm(weight: torch.Tensor, n: int, ties: str, seed: int = 0) -> torch.Tensor:
    masks = compute_masks(
        _linear(weight), 1 - n / 4, structure="nm", allocation="uniform", structure_options={"n": n, "m": 4},
        ties=ties, seed=seed,
    )  # fmt: skip
    return masks["0.weight"]


def _wanda_code_nm(metric: torch.Tensor, prune_n: int, prune_m: int = 4) -> torch.Tensor:
    """The Wanda code's N:M loop (lib/prune.py), as written there; True = kept here."""
    pruned = torch.zeros_like(metric) == 1
    for ii in range(metric.shape[1]):
        if ii % prune_m == 0:
            tmp = metric[:, ii : (ii + prune_m)].float()
            pruned.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    return ~pruned


def _tied_groups_by_hand(weight: torch.Tensor, n: int, prefer_high: bool) -> torch.Tensor:
    """Each group of 4 keeps its n largest, ties among them to the lower (or the higher) index."""
    keep = torch.zeros_like(weight, dtype=torch.bool)
    for row in range(weight.shape[0]):
        for start in range(0, weight.shape[1], 4):
            group = weight[row, start : start + 4].tolist()
            order = sorted(range(4), key=lambda i: (-group[i], -i if prefer_high else i))
            for i in order[:n]:
                keep[row, start + i] = True
    return keep


@pytest.mark.parametrize("n", [1, 2, 3])
def test_nm_ties_follow_the_documented_rule(n: int) -> None:
    weight = _tied_weight()
    assert torch.equal(_nm(weight, n, "index"), _tied_groups_by_hand(weight, n, prefer_high=False))
    assert torch.equal(_nm(weight, n, "reverse"), _tied_groups_by_hand(weight, n, prefer_high=True))
    # original: the pruned of each group are torch.topk(largest=False)'s, as the Wanda code prunes them
    assert torch.equal(_nm(weight, n, "original"), _wanda_code_nm(weight.abs(), 4 - n))
    # random: n per group, never a lower score over a higher one, the same for the same seed
    drawn = _nm(weight, n, "random", seed=3)
    assert torch.equal(drawn, _nm(weight, n, "random", seed=3))
    assert (drawn.reshape(-1, 4).sum(1) == n).all()
    groups, kept = weight.reshape(-1, 4), drawn.reshape(-1, 4)
    for g, k in zip(groups, kept, strict=True):
        assert g[k].min() >= g[~k].max()


def test_original_keeps_what_torch_topk_keeps_among_ties_on_cpu() -> None:
    """Pinned observations of CPU torch.topk(largest=False) (the module doc of core.topk cites them):
    the original rule is its own order, not the index rule nor its reverse."""
    weight = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]])
    assert _nm(weight, 1, "original").int().tolist() == [[0, 1, 0, 0, 0, 1, 0, 0]]
    assert _nm(weight, 1, "index").int().tolist() == [[1, 0, 0, 0, 0, 1, 0, 0]]
    assert _nm(weight, 2, "original").int().tolist() == [[1, 1, 0, 0, 0, 1, 0, 1]]
    assert _nm(weight, 2, "index").int().tolist() == [[1, 1, 0, 0, 0, 1, 1, 0]]


def test_random_ties_change_with_the_seed() -> None:
    weight = torch.ones(16, 16)  # every entry ties
    masks = {_nm(weight, 2, "random", seed=s).flatten().tolist().__repr__() for s in range(4)}
    assert len(masks) > 1


def _wanda_code_rows(metric: torch.Tensor, sparsity_ratio: float) -> torch.Tensor:
    """The Wanda code's per-output rule (lib/prune.py): a stable ascending sort of each row, its first
    int(cols · sparsity) entries pruned; True = kept here."""
    sort_res = torch.sort(metric, dim=-1, stable=True)
    indices = sort_res[1][:, : int(metric.shape[1] * sparsity_ratio)]
    return ~(torch.zeros_like(metric) == 1).scatter_(1, indices, True)


def test_rows_original_is_the_wanda_codes_sort() -> None:
    torch.manual_seed(0)
    weight = torch.randint(0, 3, (6, 20)).float()  # many ties at every row's median
    masks = compute_masks(_linear(weight), 0.5, structure="rows", allocation="uniform", ties="original")
    assert torch.equal(masks["0.weight"], _wanda_code_rows(weight.abs(), 0.5))
    index = compute_masks(_linear(weight), 0.5, structure="rows", allocation="uniform")
    assert not torch.equal(index["0.weight"], masks["0.weight"])  # the rules differ on these ties


@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.37, 0.7])
def test_rows_counted_per_row_with_floor_are_the_wanda_codes_masks_at_any_sparsity(sparsity: float) -> None:
    torch.manual_seed(0)
    weight = torch.randint(0, 3, (6, 23)).float()  # an odd width: s·cols is not a whole number
    options = {"structure_options": {"count": "row"}, "rounding": "floor", "ties": "original"}
    masks = compute_masks(_linear(weight), sparsity, structure="rows", allocation="uniform", **options)
    assert torch.equal(masks["0.weight"], _wanda_code_rows(weight.abs(), sparsity))
    if sparsity != 0.5:  # the layer's count, spread over the rows, is not the code's
        layer = compute_masks(
            _linear(weight), sparsity, structure="rows", allocation="uniform", ties="original"
        )
        assert not torch.equal(layer["0.weight"], masks["0.weight"])


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_unstructured_ties(allocation: str) -> None:
    weight = torch.tensor([[3.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    keep = {t: compute_masks(_linear(weight), 0.5, allocation=allocation, ties=t)["0.weight"] for t in TIES}
    assert keep["index"].int().tolist() == [[1, 1, 1, 0, 0, 0]]
    assert keep["reverse"].int().tolist() == [[1, 0, 0, 1, 1, 0]]
    # original: a stable ascending sort pruned from its start, the lower index among ties first
    assert keep["original"].int().tolist() == [[1, 0, 0, 1, 1, 0]]
    assert int(keep["random"].sum()) == 3 and bool(keep["random"][0, 0]) and not bool(keep["random"][0, 5])


@pytest.mark.parametrize("options", [{}, {"max_per_layer": 0.75}])  # the ranking by selection, or by sort
def test_global_ties_span_layers_by_the_rule(options: dict) -> None:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        for layer in model:
            layer.weight.copy_(torch.tensor([[3.0, 1.0], [1.0, 1.0]]))
    # two 3s, then two of six tied 1s: the earlier layer's first (index) or the later layer's last
    kept = {
        t: [
            int(compute_masks(model, 0.5, ties=t, allocation_options=options)[n].sum())
            for n in ("0.weight", "1.weight")
        ]
        for t in ("index", "reverse", "original")
    }
    assert kept == {"index": [3, 1], "reverse": [1, 3], "original": [1, 3]}


def test_tie_rules_keep_counts_exact_on_random_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (50, 8), generator=gen).double()
    for ties in TIES:
        for k in (0, 7, 50, 123, 400):
            assert int(balanced_select(scores, k, ties, torch.Generator().manual_seed(1)).sum()) == k
            assert int(select_topk(scores.flatten(), k, ties, torch.Generator().manual_seed(1)).sum()) == k


# ---------------------------------------------------------------- defaults unchanged


@pytest.mark.parametrize(
    "options",
    [
        {"allocation": "global"},
        {"allocation": "erk"},
        {"allocation": "uniform", "structure": "nm", "structure_options": {"n": 2, "m": 4}},
        {"allocation": "uniform", "structure": "rows"},
        {"allocation": "global", "structure": "channel"},
        {"allocation": "global", "criterion": "synflow", "rounds": 4},
    ],
)
def test_default_options_give_the_same_masks_as_leaving_them_out(options: dict) -> None:
    model = build_model("lenet300", input_shape=(1, 28, 28), num_classes=10, seed=0)
    with torch.no_grad():  # ties at every cut: magnitudes on a coarse grid
        for p in model.parameters():
            p.copy_((p * 20).round() / 20)
    common = {"input_shape": (1, 28, 28), **options}
    plain = compute_masks(model, 0.7, **common)
    spelled = compute_masks(
        model, 0.7, rounding="half_up", ties="index", round_schedule="exponential", **common
    )
    for n in plain:
        assert torch.equal(plain[n], spelled[n]), n


def test_spelling_out_the_defaults_in_a_recipe_keeps_its_hash() -> None:
    bare = tiny_recipe({"prune": {"criterion": "magnitude", "sparsity": 0.5}})
    spelled = tiny_recipe(
        {"prune": {"criterion": "magnitude", "sparsity": 0.5, "rounding": "half_up", "ties": "index",
                   "round_schedule": "exponential"}}
    )  # fmt: skip
    changed = tiny_recipe({"prune": {"criterion": "magnitude", "sparsity": 0.5, "rounding": "floor"}})
    hashes = [run_hash(recipe_from_raw(r, "test")) for r in (bare, spelled, changed)]
    assert hashes[0] == hashes[1] != hashes[2]
    assert recipe_config(recipe_from_raw(changed, "test"))["stages"][0]["rounding"] == "floor"


def test_a_recipe_prune_stage_passes_its_rounding_and_ties_to_the_prune() -> None:
    # 0.3 of the tiny MLP's 368 weights is 110.4: ceil removes 111, half_up 110 (global allocation)
    kept = {}
    for rounding in ("half_up", "ceil"):
        stage = {
            "prune": {"criterion": "magnitude", "sparsity": 0.3, "rounding": rounding, "ties": "reverse"}
        }
        result = run_recipe(recipe_from_raw(tiny_recipe({"train": {}}, stage)))
        kept[rounding] = result.masks.kept()
    assert kept == {"half_up": 368 - 110, "ceil": 368 - 111}


def test_a_recipe_refuses_an_unknown_rounding_when_read() -> None:
    raw = tiny_recipe({"prune": {"criterion": "magnitude", "sparsity": 0.5, "rounding": "flor"}})
    with pytest.raises(ConfigError, match=r"half_up.*floor.*ceil"):
        recipe_from_raw(raw, "test")
    raw = tiny_recipe({"prune": {"criterion": "magnitude", "sparsity": 0.5, "roundng": "floor"}})
    with pytest.raises(ConfigError, match="did you mean 'rounding'"):
        recipe_from_raw(raw, "test")


# ---------------------------------------------------------------- training stages round too
# 0.31 of the tiny MLP's layers: 320 · 0.31 = 99.2 and 48 · 0.31 = 14.88 removed
KEPT_AT_031 = {
    "half_up": {"features.1.weight": 221, "classifier.weight": 33},
    "floor": {"features.1.weight": 221, "classifier.weight": 34},
    "ceil": {"features.1.weight": 220, "classifier.weight": 33},
}


@pytest.mark.parametrize("rounding", list(KEPT_AT_031))
@pytest.mark.parametrize(
    "stage",
    [
        {"select": {"method": "edge_popup", "sparsity": 0.31}},
        {"admm": {"projection": "unstructured", "sparsity": 0.31, "update_every": 1}},
    ],
    ids=["edge_popup", "admm"],
)
def test_selection_and_admm_stages_count_by_their_rounding(stage: dict, rounding: str) -> None:
    ((kind, block),) = stage.items()
    raw = tiny_recipe({"train": {kind: {**block, "rounding": rounding}}}, iterations=2)
    result = run_recipe(recipe_from_raw(raw, "test"))
    assert {n: int(m.sum()) for n, m in result.masks.items()} == KEPT_AT_031[rounding]


@pytest.mark.parametrize(
    ("rounding", "dropped"),
    # a uniform 50 % mask leaves 160 and 24 active: 0.31 of them is 49.6 and 7.44
    [("half_up", [50, 7]), ("floor", [49, 7]), ("ceil", [50, 8])],
)
def test_dst_drop_counts_follow_the_stages_rounding(
    monkeypatch: pytest.MonkeyPatch, rounding: str, dropped: list[int]
) -> None:
    from secateurs.methods.training import dst

    seen: list[int] = []
    drop = dst.drop_weakest

    def recording(layer: dst.LayerView, n: int) -> torch.Tensor:
        seen.append(n)
        return drop(layer, n)

    monkeypatch.setattr(dst, "drop_weakest", recording)
    block = {"method": "set", "update_every": 2, "end_fraction": 1.0, "drop_fraction": 0.31}
    raw = tiny_recipe(
        {"prune": {"criterion": "random", "allocation": "uniform"}},
        {"train": {"dst": {**block, "drop_schedule": "constant", "rounding": rounding}}},
        iterations=6,
    )
    run_recipe(recipe_from_raw(raw, "test"))
    assert seen == dropped * 2  # updates at steps 2 and 4, each layer in order
    assert removed_count(2.5) == 3  # the stage's rule ends with the stage


def test_a_supermask_refuses_a_rounding_it_cannot_use() -> None:
    raw = tiny_recipe({"train": {"select": {"method": "supermask", "rounding": "floor"}}})
    with pytest.raises(ConfigError, match="no count to round"):
        recipe_from_raw(raw, "test")


# ---------------------------------------------------------------- scoring mode on BatchNorm


def _snip_by_hand(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor, train: bool) -> dict:
    """|g ⊙ θ| / Σ|g ⊙ θ| with the model in train or eval mode, on a copy (its BN statistics untouched)."""
    model = copy.deepcopy(model).train(train)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), [params[n] for n in names])
    scores = {n: (g * params[n].detach()).abs() for n, g in zip(names, grads, strict=True)}
    total = sum(float(s.sum()) for s in scores.values())
    return {n: s.detach() / total for n, s in scores.items()}


def test_scoring_mode_changes_snip_on_a_batchnorm_resnet_and_matches_a_hand_computation() -> None:
    model = build_model("resnet20", input_shape=(3, 16, 16), num_classes=10, seed=0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, 16, 16, generator=gen) * 2 + 1, torch.arange(20) % 10
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = {}
    for mode in ("train", "eval"):
        layout, groups = score_groups(model, criterion="snip", criterion_options={"mode": mode}, data=(x, y))
        names = [u.name for u in layout.units]
        hand = _snip_by_hand(model, names, x, y, train=mode == "train")
        for n in names:
            torch.testing.assert_close(groups[n].reshape(-1), hand[n].reshape(-1), rtol=1e-4, atol=1e-9)
        scores[mode] = torch.cat([groups[n].reshape(-1) for n in names])
    assert not torch.allclose(scores["train"], scores["eval"], rtol=1e-2)  # batch vs running statistics
    for k, v in model.state_dict().items():  # scoring leaves BN statistics (and the mode) as they were
        assert torch.equal(v, before[k]), k
    assert model.training
    assert math.isclose(float(scores["eval"].sum()), 1.0, rel_tol=1e-5)


def _sparsegpt_code_nm_mask(weight: torch.Tensor, prune_n: int, prune_m: int = 4) -> torch.Tensor:
    """SparseGPT's N:M choice (sparsegpt.py) where the Hessian is the identity: each group of m columns
    prunes torch.topk(w² / d², prune_n, largest=False); d is equal for every column, and with a diagonal
    inverse-Hessian factor no update reaches a later column, so the choice is on the weights as given."""
    pruned = torch.zeros_like(weight, dtype=torch.bool)
    for i in range(0, weight.shape[1], prune_m):
        tmp = weight[:, i : i + prune_m] ** 2
        pruned.scatter_(1, i + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    return ~pruned


def test_sparsegpt_nm_breaks_ties_by_the_prunes_rule() -> None:
    from secateurs.llm.methods import make_pattern, sparsegpt_prune

    torch.manual_seed(0)
    weight = torch.randint(-2, 3, (8, 16)).float()  # 4-bit-like: most groups of 4 tie at the cut
    hessian = torch.eye(16)
    pattern = make_pattern(None, "2:4")
    masks = {t: sparsegpt_prune(weight, hessian, pattern, ties=t)[1] for t in TIES}
    assert torch.equal(masks["original"], _sparsegpt_code_nm_mask(weight, 2))
    assert torch.equal(masks["index"], _tied_groups_by_hand(weight.abs(), 2, prefer_high=False))
    assert torch.equal(masks["reverse"], _tied_groups_by_hand(weight.abs(), 2, prefer_high=True))
    assert len({repr(m.int().tolist()) for m in masks.values()}) == len(TIES)  # the rules differ here
    assert torch.equal(masks["random"], sparsegpt_prune(weight, hessian, pattern, ties="random")[1])
    for mask in masks.values():
        assert (mask.reshape(-1, 4).sum(1) == 2).all()


def test_sparsegpt_unstructured_ties_and_the_default_rule() -> None:
    from secateurs.llm.methods import make_pattern, sparsegpt_prune

    torch.manual_seed(1)
    weight = torch.randint(-2, 3, (4, 16)).float()
    hessian = torch.eye(16)
    pattern = make_pattern(0.5, None)
    default, index = (sparsegpt_prune(weight, hessian, pattern, **kw)[1] for kw in ({}, {"ties": "index"}))
    assert torch.equal(default, index)
    reverse = sparsegpt_prune(weight, hessian, pattern, ties="reverse")[1]
    assert not torch.equal(reverse, index) and int(reverse.sum()) == int(index.sum()) == 32


def test_obs_reconstruction_follows_the_prunes_ties() -> None:
    from secateurs.methods.reconstruction import reconstruct
    from secateurs.methods.structures import NM

    model = _linear(torch.randint(-2, 3, (4, 8), generator=torch.Generator().manual_seed(2)).float())
    data = [torch.eye(8)]  # an identity-like Hessian: the choice is on the weights as given
    masks = compute_masks(model, 0.5, structure="nm", structure_options={"n": 2, "m": 4})

    def chosen(**kw: str) -> torch.Tensor:
        obs = {"method": "obs", "select": "adaptive"}
        return reconstruct(copy.deepcopy(model), masks, obs, data=data, structure=NM(2, 4), **kw)["0.weight"]

    assert torch.equal(chosen(ties="original"), _sparsegpt_code_nm_mask(model[0].weight.detach(), 2))
    assert torch.equal(chosen(), chosen(ties="index"))
    assert not torch.equal(chosen(), chosen(ties="original"))
