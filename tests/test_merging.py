"""Filter merging (issue 24): seeded k-means, the centripetal pull, the merge folded through the
channel graph (exact once a cluster's members have met), resuming, and option errors. The
graph-level merge of identical channels is checked on every architecture in test_graph_merge."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from regularized import SHAPE, bn_lenet_recipe, convnet, image_batches, residual_net, schedule_of
from resuming import assert_same_run, resumed_after_crash
from test_regularization import Loop
from torch import nn
from typer.testing import CliRunner

from secateurs.core.errors import ConfigError
from secateurs.core.masks import masks_of
from secateurs.front import cli
from secateurs.graph.masking import shrink
from secateurs.methods.training.regularization.merging import FilterMerging, kmeans, set_mean
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.result import MetricEvent
from secateurs.pipeline.runner import Pipeline, run_recipe


# -- clustering ---------------------------------------------------------------------------------------
def test_kmeans_is_deterministic_by_seed_and_finds_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    points = torch.cat([c + 0.1 * torch.randn(4, 2, generator=g) for c in centres])[
        torch.randperm(12, generator=g)
    ]
    truth = {
        frozenset(int(i) for i in torch.nonzero((points - c).norm(dim=1) < 1).flatten()) for c in centres
    }
    for seed in range(5):
        assert {frozenset(c) for c in kmeans(points, 3, seed=seed)} == truth
    noise = torch.randn(20, 3, generator=g)
    runs = [kmeans(noise, 6, seed=7) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]  # the same seed, the same clusters
    assert len({str(kmeans(noise, 6, seed=s)) for s in range(8)}) > 1  # the seed matters on noise
    assert sorted(i for c in runs[0] for i in c) == list(range(20)) and all(c == sorted(c) for c in runs[0])
    assert [c[0] for c in runs[0]] == sorted(c[0] for c in runs[0])  # ordered by their first member


def test_kmeans_gives_k_nonempty_clusters_even_of_repeated_points() -> None:
    points = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 2)
    clusters = kmeans(points, 4, seed=0)
    assert len(clusters) == 4 and all(clusters) and sorted(i for c in clusters for i in c) == list(range(7))
    assert kmeans(points, 7) == [[i] for i in range(7)]
    with pytest.raises(ConfigError, match="cannot make 8 clusters of 7 filters"):
        kmeans(points, 8)


def test_set_mean_replaces_each_row_by_its_sets_mean() -> None:
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    sets = torch.tensor([0, 1, 0, 2])
    assert torch.equal(
        set_mean(values, sets, 3), torch.tensor([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0], [7.0, 8.0]])
    )


# -- the schedule -----------------------------------------------------------------------------------
def merging(model: nn.Module, seed: int = 0, **options: Any) -> FilterMerging:
    reg = schedule_of("merge", model, **options)
    assert isinstance(reg, FilterMerging)
    reg.seed = seed
    return reg


def test_each_layer_is_clustered_to_the_count_its_prune_step_keeps_deterministically() -> None:
    model = convnet()
    reg = merging(model)
    Loop(model, reg).start()
    clusters = reg.clusters()
    layers = {"0": 8, "3": 6}
    by_layer: dict[str, list[list[int]]] = {}
    assert reg.layout is not None
    for c in clusters:
        layer = next(s.module for s, _ in reg.layout.graph.group_of_root()[c[0]].producers())
        by_layer.setdefault(layer, []).append(c)
    assert {k: len(v) for k, v in by_layer.items()} == {k: n - n // 2 for k, n in layers.items()}  # half kept
    assert {k: sum(map(len, v)) for k, v in by_layer.items()} == layers
    twin = convnet()
    twin_reg = merging(twin)
    Loop(twin, twin_reg).start()
    assert twin_reg.clusters() == clusters  # the same weights and seed: the same clusters


@pytest.mark.parametrize("build", [convnet, residual_net])
def test_members_meet_at_their_centre_and_the_merge_keeps_the_output(build: Any) -> None:
    model = build()
    reg = merging(model, strength=5.0, norm_scale_factor=1.0)
    probe = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(4))
    seen: dict[str, Any] = {}
    prune = reg.prune

    def watched(state: Any) -> None:  # the outputs just before and just after the merge
        seen["spread"] = reg.spread()
        with torch.no_grad():
            seen["before_train"], seen["before_eval"] = (
                copy.deepcopy(model).train()(probe),
                model.eval()(probe),
            )
        model.train()
        prune(state)
        with torch.no_grad():
            seen["after_train"], seen["after_eval"] = copy.deepcopy(model).train()(probe), model.eval()(probe)
        model.train()

    reg.prune = watched  # type: ignore[method-assign]
    loop = Loop(model, reg, lr=0.1).start()
    spread0 = reg.spread()
    loop.run(image_batches(40))
    loop.callback.on_train_end(loop.state)  # the stage's end: merge
    assert spread0 > 0.1 and seen["spread"] < 1e-6
    scale = float(seen["before_train"].abs().max())
    torch.testing.assert_close(seen["after_train"], seen["before_train"], rtol=1e-5, atol=1e-5 * scale)
    # eval mode uses running statistics, which lag the met filters a little: close, not exact
    assert float((seen["after_eval"] - seen["before_eval"]).abs().max()) < 1e-2 * scale
    summary = reg.summary()
    assert masks_of(model) is not None and summary["merged_away"] == summary["picked_groups"] == 4 + 3
    small = shrink(model, torch.zeros(2, *SHAPE))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(probe), model.eval()(probe), rtol=1e-5, atol=1e-5 * scale)


def test_a_tolerance_merges_as_soon_as_the_clusters_have_met() -> None:
    model = convnet()
    reg = merging(model, strength=5.0, norm_scale_factor=1.0, tolerance=1e-3, interval=1)
    Loop(model, reg, lr=0.1).start().run(image_batches(40))
    assert reg.stopped == "merged" and reg.phase == "pruned" and reg.pruned_at is not None
    assert reg.pruned_at < 40


def test_a_schedule_resumed_from_its_state_mid_way_continues_bit_for_bit() -> None:
    data = image_batches(16)
    model = convnet()
    whole = merging(model, strength=0.5, interval=2)
    loop = Loop(model, whole, lr=0.05).start()
    loop.run(data[:5])
    saved = whole.state_dict()
    twin = copy.deepcopy(model)
    resumed = merging(twin, seed=99, strength=0.5, interval=2)  # the clusters come from the state
    resumed.load_state_dict(saved)
    second = Loop(twin, resumed, lr=0.05)
    second.state.step = loop.state.step
    second.start()
    assert resumed.clusters() == whole.clusters() and whole.phase == "grow"
    loop.run(data[5:])
    second.run(data[5:])
    loop.callback.on_train_end(loop.state)
    second.callback.on_train_end(second.state)
    assert whole.phase == resumed.phase == "pruned" and whole.pruned_at == resumed.pruned_at
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# -- through a recipe ---------------------------------------------------------------------------------
def merge_recipe(**block: Any) -> dict[str, Any]:
    return bn_lenet_recipe("merge", {"strength": 0.5, **block})


def test_a_recipe_merges_filters_and_the_smaller_model_computes_the_same() -> None:
    events: list[MetricEvent] = []
    result = run_recipe(recipe_from_raw(merge_recipe()), on_metrics=events.append)
    last = [e.metrics for e in events if e.kind == "merge"][-1]
    assert last["pruned"] == 1.0 and last["merged_away"] == last["picked_groups"] > 0
    small = shrink(result.model, torch.zeros(2, 1, 16, 16))
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), result.model.eval()(x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in result.model.parameters())


@pytest.mark.parametrize("crash_stage", [2, 3])  # the merging stage; the finetuning after it
def test_a_run_resumed_after_a_crash_equals_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_stage: int
) -> None:
    clean = Pipeline(recipe_from_raw(merge_recipe())).run()
    resumed = resumed_after_crash(lambda: recipe_from_raw(merge_recipe()), tmp_path, monkeypatch, crash_stage)
    assert_same_run(resumed.run(), clean)


# -- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"structure": "unstructured"}, "merges filters into filters: structure 'unstructured' has none"),
        ({"structure": "heads"}, "use structure: channel"),
        ({"structure_options": {"through_norms": True}}, "cannot go through LayerNorms"),
        ({"penalty": "l1"}, "penalty and sites do not apply"),
        ({"strength": 0}, "stages.1.train.merge.strength"),
        ({"strenght": 1e-3}, "did you mean 'strength'?"),
        ({"restarts": 0}, "stages.1.train.merge.restarts"),
        ({"tolerance": -1}, "stages.1.train.merge.tolerance"),
    ],
)
def test_bad_options_give_one_clear_error(block: dict[str, Any], expected: str) -> None:
    raw = merge_recipe()
    raw["stages"][1]["train"]["merge"] = block
    with pytest.raises(ConfigError) as info:
        recipe_from_raw(raw)
    assert expected in str(info.value) and "Traceback" not in str(info.value)
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("method", ["merge", "tpp"])
def test_the_cli_names_a_bad_option_in_one_line(tmp_path: Path, method: str) -> None:
    raw = merge_recipe()
    raw["stages"][1]["train"] = {method: {"structure": "unstructured"}}
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(cli.app, ["run", str(recipe), "--no-progress"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"stages.1.train.{method}" in lines[0]
