"""Channel criteria and allocations: scores equal their definitions, selections have exact counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from structured_archs import build
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.graph.analysis import analyze
from secateurs.graph.masking import removed_groups
from secateurs.methods.pruning import compute_masks, score_groups
from secateurs.methods.structures.groups import layer_of
from secateurs.structured import prune_channels


def _tiny() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip
    with torch.no_grad():
        model[1].weight.uniform_(0.1, 2.0)
    return model.eval(), torch.randn(5, 2, 8, 8)


def _scores(model: nn.Module, x: torch.Tensor, criterion: str, **options: object) -> dict[str, list[float]]:
    """Per layer (unit), the channel groups' scores as a channel prune ranks them."""
    _, scores = score_groups(model, criterion=criterion, structure="channel", example_input=x, **options)
    return {unit: s.tolist() for unit, s in scores.items()}


def test_l1_l2_bn_scores_are_the_filter_norms_and_gammas() -> None:
    model, x = _tiny()
    l1 = _scores(model, x, "l1")
    l2 = _scores(model, x, "l2")
    w0, w3 = model[0].weight.detach(), model[3].weight.detach()
    assert l1["0"] == pytest.approx(w0.abs().sum((1, 2, 3)).tolist(), rel=1e-6)
    assert l1["3"] == pytest.approx(w3.abs().sum((1, 2, 3)).tolist(), rel=1e-6)
    assert l2["0"] == pytest.approx(w0.pow(2).sum((1, 2, 3)).sqrt().tolist(), rel=1e-6)
    # magnitude pooled by l2 is the l2 criterion: the pooling is an option of the structure
    assert _scores(model, x, "magnitude", structure_options={"pool": "l2"}) == l2
    with pytest.raises(ConfigError, match=r"bn_scale needs a BatchNorm.*exclude: \['3'\]"):
        _scores(model, x, "bn_scale")
    bn = _scores(model, x, "bn_scale", structure_options={"exclude": ["3"]})
    assert bn == {"0": pytest.approx(model[1].weight.detach().abs().tolist(), rel=1e-6)}


def test_taylor_is_the_squared_sum_of_gradient_times_weight_per_filter() -> None:
    model, x = _tiny()
    y = torch.tensor([0, 1, 2, 0, 1])
    scores = _scores(model, x, "taylor", data=(x, y))
    assert model.training is False  # scored in train mode, handed back in eval mode
    model.train()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    model.eval()
    w, b = model[0].weight, model[0].bias
    expected = ((w * w.grad).sum((1, 2, 3)) + b * b.grad).pow(2).tolist()  # the whole group, then squared
    assert scores["0"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="taylor' needs data"):
        _scores(model, x, "taylor")


def test_fpgm_is_the_sum_of_distances_to_the_other_filters() -> None:
    model, x = _tiny()
    scores = _scores(model, x, "fpgm")
    flat = model[3].weight.detach().reshape(4, -1).double()
    expected = [sum(float((flat[i] - flat[j]).norm()) for j in range(4)) for i in range(4)]
    assert scores["3"] == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ConfigError, match="fpgm' scores the structures channel, heads"):
        compute_masks(model, 0.5, criterion="fpgm")  # unstructured: it scores groups only


def _removed_per_layer(
    model: nn.Module, x: torch.Tensor, masks
) -> tuple[dict[str, list[int]], dict[str, int]]:
    graph = analyze(model, x)
    gone = removed_groups(graph, masks)
    members: dict[str, list[int]] = {}
    for g in graph.groups:
        members.setdefault(layer_of(g), []).append(g.id)
    return members, {layer: sum(i in gone for i in ids) for layer, ids in members.items()}


def test_uniform_allocation_removes_the_lowest_exact_count_per_layer() -> None:
    model, x = build("vgg_bn")
    masks = compute_masks(
        model, 0.3, criterion="l1", allocation="uniform", structure="channel", example_input=x
    )
    scores = _scores(model, x, "l1")
    graph = analyze(model, x)
    gone = removed_groups(graph, masks)
    for layer, values in scores.items():
        ids = [g.id for g in graph.groups if layer_of(g) == layer]
        removed = [v for v, i in zip(values, ids, strict=True) if i in gone]
        kept = [v for v, i in zip(values, ids, strict=True) if i not in gone]
        assert len(removed) == int(0.3 * len(ids) + 0.5)  # round half up
        assert max(removed) <= min(kept)


def test_global_allocation_hits_the_total_and_respects_the_per_layer_cap() -> None:
    model, x = build("vgg_bn")
    options = {"criterion": "random", "seed": 3, "structure": "channel", "example_input": x}
    masks = compute_masks(
        model, 0.5, allocation="global", structure_options={"max_per_layer": 0.6}, **options
    )
    members, removed = _removed_per_layer(model, x, masks)
    total = sum(len(ids) for ids in members.values())
    assert sum(removed.values()) == round(0.5 * total)
    assert all(removed[layer] <= int(0.6 * len(ids)) for layer, ids in members.items())
    # the allocation's own option wins over the structure's default cap
    masks = compute_masks(
        model, 0.5, allocation="global", allocation_options={"max_per_layer": 0.55}, **options
    )
    members, removed = _removed_per_layer(model, x, masks)
    assert all(removed[layer] <= int(0.55 * len(ids)) for layer, ids in members.items())


@pytest.mark.parametrize("allocation", ["erk", "er", "smart_ratio"])
def test_any_allocation_allocates_channels_exactly_and_keeps_a_channel_per_layer(allocation: str) -> None:
    model, x = build("vgg_bn")
    masks = compute_masks(model, 0.8, allocation=allocation, structure="channel", example_input=x)
    members, removed = _removed_per_layer(model, x, masks)
    total = sum(len(ids) for ids in members.values())
    assert sum(removed.values()) == round(0.8 * total)  # the exact count of groups
    assert all(removed[layer] < len(ids) for layer, ids in members.items())


def test_channels_take_rounds_and_data_criteria_like_any_structure() -> None:
    model, x = build("vgg_bn")
    y = torch.arange(2) % 10
    one = compute_masks(model, 0.5, structure="channel", example_input=x, allocation="uniform")
    four = compute_masks(model, 0.5, structure="channel", example_input=x, allocation="uniform", rounds=4)
    assert _removed_per_layer(model, x, one)[1] == _removed_per_layer(model, x, four)[1]
    snip = compute_masks(model, 0.5, criterion="snip", structure="channel", example_input=x, data=(x, y))
    assert sum(_removed_per_layer(model, x, snip)[1].values()) == round(0.5 * len(analyze(model, x).groups))


def test_prune_channels_is_deterministic_and_every_layer_keeps_a_channel() -> None:
    model, x = build("resnet20")
    a = prune_channels(model, x, 0.95, criterion="random", seed=7)
    b = prune_channels(model, x, 0.95, criterion="random", seed=7)
    assert all(
        torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert all(m.out_channels >= 1 for m in a.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        assert a(x).shape == (2, 10)
    with pytest.raises(ConfigError, match="matches no module"):
        prune_channels(model, x, 0.5, exclude=["nothing*"])


# -- through the pipeline (structure: channel) -------------------------------------------------------
def _channel_recipe(*stages: dict) -> dict:
    from tiny import tiny_recipe

    return tiny_recipe({"train": {}}, *stages, {"evaluate": {"label": "final"}}, iterations=4)


def test_a_channel_prune_stage_masks_whole_neurons_and_shrink_removes_them() -> None:
    from secateurs.core.masks import masks_of
    from secateurs.graph.masking import shrink
    from secateurs.pipeline.recipe import recipe_from_raw
    from secateurs.pipeline.runner import Pipeline

    step = {"structure": "channel", "criterion": "l1"}
    raw = _channel_recipe({"prune": {**step, "sparsity": 0.25}}, {"prune": {**step, "sparsity": 0.5}})
    pipeline = Pipeline(recipe_from_raw(raw))
    pipeline.run()
    model = pipeline.model
    masks = masks_of(model)
    assert masks is not None
    hidden = masks["features.1.weight"].all(dim=1)  # rows of the hidden layer kept
    assert int(hidden.sum()) == 8  # 16 hidden neurons, half removed in total over both steps
    assert torch.equal(masks["classifier.weight"].all(dim=0), hidden)  # the consumer's columns follow
    x = torch.randn(5, 20)
    small = shrink(model, x)
    assert small.features[1].out_features == 8 and small.classifier.in_features == 8
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("prune", "message"),
    [
        (
            {"structure": "channel", "structure_options": {"cap": 1}},
            "structure 'channel' has no option 'cap'",
        ),
        (
            {"structure": "unstructured", "criterion": "bn_scale"},
            "scores the structures channel, not 'unstructured'",
        ),
        (
            {"structure": "channel", "allocation_options": {"normalize": "max"}},
            "normalize: Input should be 'none' or 'mean'",
        ),
    ],
)
def test_bad_channel_prune_stages_are_clear_errors(prune: dict, message: str) -> None:
    import secateurs

    with pytest.raises(ConfigError, match=message):
        secateurs.run(_channel_recipe({"prune": prune}))


def test_channels_prune_gradually_during_training() -> None:
    from tiny import tiny_recipe

    from secateurs.core.masks import masks_of
    from secateurs.pipeline.recipe import recipe_from_raw
    from secateurs.pipeline.runner import Pipeline

    schedule = {"name": "gradual", "start_step": 0, "end_step": 4, "frequency": 2}
    prune = {"structure": "channel", "criterion": "l1", "allocation": "uniform", "schedule": schedule}
    raw = tiny_recipe({"train": {"prune": prune}}, {"evaluate": {}}, iterations=6)
    pipeline = Pipeline(recipe_from_raw(raw))
    record = pipeline.run().records[-1]
    masks = masks_of(pipeline.model)
    assert masks is not None
    assert int(masks["features.1.weight"].all(dim=1).sum()) == 8  # half of the 16 hidden neurons remain
    assert record["sparsity"] > 0.4


@pytest.mark.parametrize("arch", ["resnet20", "densenet_block", "vit_mha", "swin_block", "shufflenet_split"])
@pytest.mark.parametrize("combine", ["sum", "max"])
def test_vectorised_group_pooling_is_the_loop_over_groups_bit_for_bit(arch: str, combine: str) -> None:
    """The flat-array pooling (graph entries) equals walking each group's sites and adding
    `stat[index].sum()` (or taking the max) in order, on every group and every side."""
    from secateurs.methods.structures.groups import GraphLayout, _Entries

    model, x = build(arch)
    layout = GraphLayout(model, analyze(model, x))
    groups = layout.all_groups()
    params = layout.params

    def stat(site) -> np.ndarray:  # magnitudes over decades: the order of addition shows
        weight = params[site.name].detach().double().movedim(site.dim, 0)
        return torch.tan(7.0 * weight.reshape(weight.shape[0], -1)).sum(1).numpy()

    longest = max(len(i) for g in groups for _, i in g.sites)  # heads: an entry spans a head's dims
    assert longest == {"vit_mha": 36, "swin_block": 48, "shufflenet_split": 2}.get(arch, 1)
    for side in ("producer", "consumer", "passive"):
        wanted = lambda site, side=side: site.name in params and site.role == side  # noqa: E731
        fast, slow = _Entries.of(layout.graph, groups, wanted), _Entries.listed(groups, wanted)
        assert [s.name for s in fast.sites] == [s.name for s in slow.sites]
        got = layout.per_site(stat, fast, combine)
        stats = {}
        for g in groups:
            total, count = (float("-inf") if combine == "max" else 0.0), 0
            for site, index in g.sites:
                if not wanted(site):
                    continue
                values = stats.setdefault(site.name + str(site.dim), stat(site))[index]
                total = max(total, float(values.max())) if combine == "max" else total + float(values.sum())
                count += len(index) * (params[site.name].numel() // params[site.name].shape[site.dim])
            assert got[g.id] == (total, count)
