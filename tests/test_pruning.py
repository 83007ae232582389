"""Specifications of layer selection, criteria and `prune`/`compute_masks` (tiny models, exact counts)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secateurs import ConfigError, MaskSet, compute_masks, masks_of, prune
from secateurs.methods.allocations import round_half_up
from secateurs.methods.criteria import ScoringContext, build_criterion
from secateurs.methods.layers import LayerSelection, select_parameters
from secateurs.methods.pruning import masks_from_scores, topk_mask
from secateurs.methods.schedules import Iterative


def mlp(seed: int = 0) -> nn.Sequential:
    """Linear(10, 8) → Linear(8, 5) → Linear(5, 3): weights of 80, 40 and 15 entries."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))


class ConvNet(nn.Module):
    """Conv2d, BatchNorm2d, 1x1 Conv2d, then a Linear head: mixed types and nested names."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 1))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def conv_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(6, 1, 4, 4, generator=g), torch.randint(0, 3, (6,), generator=g)


def mlp_batch(n: int = 12, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g), torch.randint(0, 3, (n,), generator=g)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k


# -- layer selection ------------------------------------------------------------------------------

ALL = ["features.0.weight", "features.3.weight", "head.weight"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, ALL),
        ({"include": ["features.*"]}, ["features.0.weight", "features.3.weight"]),
        ({"include": ["*.3.weight", "head"]}, ["features.3.weight", "head.weight"]),
        ({"exclude": ["head"]}, ["features.0.weight", "features.3.weight"]),
        ({"include": ["features.*"], "exclude": ["features.0"]}, ["features.3.weight"]),
        ({"types": ["Linear"]}, ["head.weight"]),
        ({"exclude_types": ["Conv2d"]}, ["head.weight"]),
        ({"types": ["BatchNorm2d"]}, ["features.1.weight"]),
        ({"skip_first": True}, ["features.3.weight", "head.weight"]),
        ({"skip_last": True}, ["features.0.weight", "features.3.weight"]),
        ({"skip_first": True, "skip_last": True}, ["features.3.weight"]),
        (
            {"include_bias": True, "types": ["Conv2d"]},
            ["features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"],
        ),
    ],
)
def test_select_parameters(options: dict[str, object], expected: list[str]) -> None:
    assert select_parameters(ConvNet(), LayerSelection(**options)) == expected


def test_default_selection_is_linear_and_conv_weights_only() -> None:
    assert select_parameters(ConvNet()) == ALL
    assert select_parameters(mlp()) == ["0.weight", "2.weight", "4.weight"]


def test_pattern_matching_nothing_lists_the_prunable_names() -> None:
    for field in ("include", "exclude"):
        with pytest.raises(
            ConfigError,
            match=r"'conv\*' matches no prunable layer.*features\.0\.weight, features\.3\.weight, head\.w",
        ):
            select_parameters(ConvNet(), LayerSelection(**{field: ["conv*"]}))


@pytest.mark.parametrize("bad", ["Dense", "functional", "init", "linear"])
def test_unknown_layer_type_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match=f"'{bad}' is not a torch.nn module type"):
        select_parameters(ConvNet(), LayerSelection(types=[bad]))
    with pytest.raises(ConfigError, match=f"'{bad}' is not a torch.nn module type"):
        select_parameters(ConvNet(), LayerSelection(exclude_types=[bad]))


def test_empty_selections_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"no parameters of types \['Conv3d'\]"):
        select_parameters(ConvNet(), LayerSelection(types=["Conv3d"]))
    with pytest.raises(ConfigError, match="selection is empty"):
        select_parameters(ConvNet(), LayerSelection(exclude=["*"]))


def test_invalid_layer_options_through_prune_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"invalid layer selection: inclde.*valid fields: include"):
        prune(mlp(), 0.5, layers={"inclde": ["0"]})


# -- top-k ------------------------------------------------------------------------------------------


def test_topk_mask_breaks_ties_by_lower_index() -> None:
    assert topk_mask(torch.ones(5), 2).tolist() == [True, True, False, False, False]
    assert topk_mask(torch.tensor([3.0, 1.0, 3.0, 2.0]), 2).tolist() == [True, False, True, False]
    assert topk_mask(torch.tensor([3.0, 1.0, 3.0, 2.0]), 3).tolist() == [True, False, True, True]
    assert topk_mask(torch.tensor([1.0, 2.0]), 0).tolist() == [False, False]
    assert topk_mask(torch.zeros(3), 3).tolist() == [True, True, True]


def test_masks_from_scores_tie_break_is_the_same_across_layers() -> None:
    scores = {"a": torch.tensor([2.0, 2.0, 1.0]), "b": torch.tensor([2.0, 2.0])}
    masks = masks_from_scores(scores, 0.4, allocation="global")
    assert masks["a"].tolist() == [True, True, False]
    assert masks["b"].tolist() == [True, False]


def test_nan_scores_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="NaN scores for 'a'"):
        masks_from_scores({"a": torch.tensor([1.0, float("nan")])}, 0.5)
    model = mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ConfigError, match=r"NaN scores for '2\.weight'"):
        prune(model, 0.5)


# -- magnitude --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_global_magnitude_keeps_the_largest_weights_with_exact_count(sparsity: float) -> None:
    model = mlp()
    names = ["0.weight", "2.weight", "4.weight"]
    params = dict(model.named_parameters())
    before = snapshot(model)
    magnitudes = torch.cat([params[n].detach().abs().reshape(-1) for n in names])
    assert magnitudes.unique().numel() == 135  # no ties: the kept set is unique
    kept = 135 - round_half_up(sparsity * 135)
    threshold = magnitudes.sort(descending=True).values[kept - 1]

    prune(model, sparsity, criterion="magnitude", allocation="global")
    masks = masks_of(model)
    assert masks is not None and list(masks) == names
    assert masks.kept() == kept
    for n in names:
        assert torch.equal(masks[n], before[n].abs() >= threshold)
        assert torch.equal(params[n].detach(), before[n] * masks[n])
    for n in ("0.bias", "2.bias", "4.bias"):
        assert torch.equal(params[n].detach(), before[n])


def test_uniform_magnitude_keeps_the_largest_weights_per_layer() -> None:
    model = mlp()
    before = snapshot(model)
    masks = compute_masks(model, 0.5, allocation="uniform")
    for name, n in (("0.weight", 80), ("2.weight", 40), ("4.weight", 15)):
        flat = before[name].abs().reshape(-1)
        top = torch.zeros(n, dtype=torch.bool)
        top[flat.argsort(descending=True)[: n - round_half_up(0.5 * n)]] = True
        assert torch.equal(masks[name].reshape(-1), top)


def test_layerwise_iterative_pruning_masks_only_shrink_to_the_documented_count() -> None:
    levels = Iterative(rate=0.2, levels=3).levels()  # 0.2, 0.36, 0.488
    model = mlp()
    # after level l a layer of n weights keeps n - round_half_up(s_l · n):
    expected = [
        {"0.weight": 80 - 16, "2.weight": 40 - 8, "4.weight": 15 - 3},  # 0.2·(80, 40, 15) = 16, 8, 3
        {"0.weight": 80 - 29, "2.weight": 40 - 14, "4.weight": 15 - 5},  # 0.36·… = 28.8, 14.4, 5.4
        {"0.weight": 80 - 39, "2.weight": 40 - 20, "4.weight": 15 - 7},  # 0.488·… = 39.04, 19.52, 7.32
    ]
    sizes = {"0.weight": 80, "2.weight": 40, "4.weight": 15}
    assert expected[-1] == {name: n - round_half_up(0.488 * n) for name, n in sizes.items()}
    previous: MaskSet | None = None
    for target, counts in zip(levels, expected, strict=True):
        prune(model, target, allocation="uniform")
        masks = masks_of(model)
        assert masks is not None
        assert {r.name: r.kept for r in masks.report()} == counts
        if previous is not None:
            for n in masks:
                assert not torch.any(masks[n] & ~previous[n]), "a pruned weight came back"
        previous = masks
    # without training in between, three levels equal one prune straight to 0.488
    assert previous is not None
    assert previous.equal(compute_masks(mlp(), levels[-1], allocation="uniform"))


def test_a_lower_target_never_revives_pruned_weights() -> None:
    model = mlp()
    prune(model, 0.8)
    first = masks_of(model)
    prune(model, 0.5)
    second = masks_of(model)
    assert first is not None and second is not None
    assert first.equal(second)


def test_pruned_weights_do_not_count_towards_the_next_level() -> None:
    """Random scores would pick already-pruned weights; they score -inf, so the count stays exact."""
    model = mlp()
    prune(model, 0.5, criterion="random", allocation="uniform", seed=1)
    prune(model, 0.75, criterion="random", allocation="uniform", seed=2)
    masks = masks_of(model)
    assert masks is not None
    # 80 - round(60) = 20, 40 - round(30) = 10, 15 - round(11.25) = 4
    assert {r.name: r.kept for r in masks.report()} == {"0.weight": 20, "2.weight": 10, "4.weight": 4}


def test_masks_of_unselected_layers_are_carried_over() -> None:
    model = mlp()
    prune(model, 0.5, allocation="uniform", layers={"include": ["0"]})
    prune(model, 0.5, allocation="uniform", layers={"include": ["4"]})
    masks = masks_of(model)
    assert masks is not None
    assert {r.name: r.kept for r in masks.report()} == {"0.weight": 40, "4.weight": 7}


# -- taylor -----------------------------------------------------------------------------------------


def test_taylor_scores_are_abs_gradient_times_weight() -> None:
    model = mlp()
    x, y = mlp_batch()
    params = dict(model.named_parameters())
    names = ["0.weight", "2.weight", "4.weight"]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    expected = {n: (g * params[n].detach()).abs() for n, g in zip(names, grads, strict=True)}

    ctx = ScoringContext(model=model, names=names, masks=MaskSet.dense(model, names), batches=[(x, y)])
    scores = build_criterion("taylor").score(ctx)
    assert list(scores) == names
    for n in names:
        torch.testing.assert_close(scores[n], expected[n], rtol=0, atol=1e-7)

    masks = compute_masks(model, 0.5, criterion="taylor", data=(x, y), allocation="uniform")
    for n in names:
        k = expected[n].numel() - round_half_up(0.5 * expected[n].numel())
        top = torch.zeros(expected[n].numel(), dtype=torch.bool)
        top[scores[n].reshape(-1).argsort(descending=True, stable=True)[:k]] = True
        assert torch.equal(masks[n].reshape(-1), top)


def test_taylor_sums_gradients_over_num_batches() -> None:
    model = mlp()
    batches = [mlp_batch(seed=s) for s in (1, 2, 3)]
    params = dict(model.named_parameters())
    w = params["2.weight"]
    g = sum(torch.autograd.grad(F.cross_entropy(model(x), y), [w])[0] for x, y in batches[:2])
    ctx = ScoringContext(
        model=model, names=["2.weight"], masks=MaskSet.dense(model, ["2.weight"]), batches=batches
    )
    scores = build_criterion("taylor", num_batches=2).score(ctx)
    torch.testing.assert_close(scores["2.weight"], (g * w.detach()).abs(), rtol=0, atol=1e-7)


def test_taylor_needs_data() -> None:
    with pytest.raises(ConfigError, match="'taylor' needs data"):
        prune(mlp(), 0.5, criterion="taylor")
    with pytest.raises(ConfigError, match="'taylor' got no batches"):
        prune(mlp(), 0.5, criterion="taylor", data=[])
    with pytest.raises(ConfigError, match="num_batches must be ≥ 1"):
        prune(mlp(), 0.5, criterion="taylor", data=mlp_batch(), criterion_options={"num_batches": 0})


@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "random"])
def test_compute_masks_does_not_modify_the_model(criterion: str) -> None:
    model = ConvNet()
    model.eval()
    sentinel = {n: torch.full_like(p, 7.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n]
    before = snapshot(model)
    compute_masks(model, 0.5, criterion=criterion, data=conv_batch())
    assert_same_state(model, before)  # weights and BatchNorm running statistics
    assert masks_of(model) is None
    assert not model.training
    for n, p in model.named_parameters():
        assert p.grad is sentinel[n]


# -- random -----------------------------------------------------------------------------------------


def test_random_criterion_is_reproducible_by_seed() -> None:
    a = compute_masks(mlp(), 0.5, criterion="random", seed=11)
    b = compute_masks(mlp(seed=5), 0.5, criterion="random", seed=11)  # scores do not look at weights
    c = compute_masks(mlp(), 0.5, criterion="random", seed=12)
    assert a.equal(b)
    assert not a.equal(c)
    assert a.kept() == c.kept() == 135 - round_half_up(0.5 * 135)


# -- names and options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        (
            {"criterion": "magnitud"},
            r"unknown criterion 'magnitud'.*bn_scale, fpgm, grasp, l1, l2, magnitude, random, snip, "
            r"synflow, taylor, wanda",
        ),
        (
            {"allocation": "flat"},
            r"unknown allocation 'flat'.*er, erk, explicit, global, latency, smart_ratio, uniform",
        ),
        ({"structure": "blocks9"}, r"unknown structure 'blocks9'.*unstructured"),
        ({"criterion_options": {"power": 2}}, r"criterion 'magnitude' has no option 'power'.*\(none\)"),
        ({"criterion": "taylor", "criterion_options": {"batches": 2}}, r"no option 'batches'.*num_batches"),
        ({"allocation_options": {"beta": 1}}, r"allocation 'global' has no option 'beta'"),
        ({"structure_options": {"n": 2}}, r"structure 'unstructured' has no option 'n'"),
    ],
)
def test_unknown_names_and_options_list_the_valid_ones(options: dict[str, object], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        prune(mlp(), 0.5, data=mlp_batch(), **options)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "a", True])
def test_prune_rejects_sparsity_outside_unit_interval(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        prune(mlp(), bad)  # type: ignore[arg-type]


def test_topk_mask_selects_exactly_what_a_stable_descending_sort_selects() -> None:
    """The selection shortcut (kthvalue, ties in index order) against the definition: ties, ±inf, NaN."""
    g = torch.Generator().manual_seed(0)
    for trial in range(600):
        n = int(torch.randint(1, 40, (1,), generator=g))
        x = torch.randint(-3, 4, (n,), generator=g).float()  # many ties
        for value, every in ((float("-inf"), 3), (float("inf"), 7), (float("nan"), 11)):
            if trial % every == 0:
                x[torch.rand(n, generator=g) < 0.25] = value
        k = int(torch.randint(0, n + 1, (1,), generator=g))
        expected = torch.zeros(n, dtype=torch.bool)
        expected[torch.argsort(x, descending=True, stable=True)[:k]] = True
        assert torch.equal(topk_mask(x, k), expected), (x, k)
