"""Channel criteria and allocations: scores equal their definitions, selections have exact counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from structured_archs import build
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.graph.core import analyze
from secateurs.graph.prune import CHANNEL_CRITERIA, layer_of, prune_channels, select_groups


def _tiny() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip
    with torch.no_grad():
        model[1].weight.uniform_(0.1, 2.0)
    return model.eval(), torch.randn(5, 2, 8, 8)


def _by_layer(graph, scores):
    out: dict[str, list[float]] = {}
    for g in graph.groups:
        out.setdefault(layer_of(g), []).append(scores[g.id])
    return out


def test_l1_l2_bn_scores_are_the_filter_norms_and_gammas() -> None:
    model, x = _tiny()
    graph = analyze(model, x)
    l1 = _by_layer(graph, CHANNEL_CRITERIA.get("l1")(model, graph, None, 0))
    l2 = _by_layer(graph, CHANNEL_CRITERIA.get("l2")(model, graph, None, 0))
    w0, w3 = model[0].weight.detach(), model[3].weight.detach()
    assert l1["0"] == pytest.approx(w0.abs().sum((1, 2, 3)).tolist(), rel=1e-6)
    assert l1["3"] == pytest.approx(w3.abs().sum((1, 2, 3)).tolist(), rel=1e-6)
    assert l2["0"] == pytest.approx(w0.pow(2).sum((1, 2, 3)).sqrt().tolist(), rel=1e-6)
    with pytest.raises(ConfigError, match=r"bn_scale needs a BatchNorm.*exclude=\['3'\]"):
        CHANNEL_CRITERIA.get("bn_scale")(model, graph, None, 0)
    graph = analyze(model, x, exclude=["3"])
    bn = _by_layer(graph, CHANNEL_CRITERIA.get("bn_scale")(model, graph, None, 0))
    assert bn == {"0": pytest.approx(model[1].weight.detach().abs().tolist(), rel=1e-6)}


def test_taylor_is_the_squared_sum_of_gradient_times_weight_per_filter() -> None:
    model, x = _tiny()
    y = torch.tensor([0, 1, 2, 0, 1])
    graph = analyze(model, x)
    scores = _by_layer(graph, CHANNEL_CRITERIA.get("taylor")(model, graph, (x, y), 0))
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    w, b = model[0].weight, model[0].bias
    expected = ((w * w.grad).sum((1, 2, 3)) + b * b.grad).pow(2).tolist()  # the whole group, then squared
    assert scores["0"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="taylor needs a batch"):
        CHANNEL_CRITERIA.get("taylor")(model, graph, None, 0)


def test_fpgm_is_the_sum_of_distances_to_the_other_filters() -> None:
    model, x = _tiny()
    graph = analyze(model, x)
    scores = _by_layer(graph, CHANNEL_CRITERIA.get("fpgm")(model, graph, None, 0))
    flat = model[3].weight.detach().reshape(4, -1).double()
    expected = [sum(float((flat[i] - flat[j]).norm()) for j in range(4)) for i in range(4)]
    assert scores["3"] == pytest.approx(expected, rel=1e-9)


def test_uniform_allocation_removes_the_lowest_exact_count_per_layer() -> None:
    model, x = build("vgg_bn")
    graph = analyze(model, x)
    scores = CHANNEL_CRITERIA.get("l1")(model, graph, None, 0)
    chosen = set(select_groups(graph, scores, 0.3, allocation="uniform"))
    for layer in {layer_of(g) for g in graph.groups}:
        groups = [g for g in graph.groups if layer_of(g) == layer]
        removed = [g for g in groups if g.id in chosen]
        assert len(removed) == int(0.3 * len(groups) + 0.5)  # round half up
        kept_scores = [scores[g.id] for g in groups if g.id not in chosen]
        assert max(scores[g.id] for g in removed) <= min(kept_scores)


def test_global_allocation_hits_the_total_and_respects_the_per_layer_cap() -> None:
    model, x = build("vgg_bn")
    graph = analyze(model, x)
    scores = CHANNEL_CRITERIA.get("random")(model, graph, None, 3)
    chosen = set(select_groups(graph, scores, 0.5, allocation="global", max_per_layer=0.6))
    assert len(chosen) == round(0.5 * len(graph.groups))
    for layer in {layer_of(g) for g in graph.groups}:
        groups = [g for g in graph.groups if layer_of(g) == layer]
        assert sum(g.id in chosen for g in groups) <= int(0.6 * len(groups))
    with pytest.raises(ConfigError, match="unknown channel allocation"):
        select_groups(graph, scores, 0.5, allocation="erk")


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
        ({"structure": "channel", "rounds": 2}, "does not take rounds 2"),
        ({"structure": "channel", "structure_options": {"cap": 1}}, "no option cap"),
        ({"structure": "channel", "criterion": "snip"}, "does not score channels"),
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
