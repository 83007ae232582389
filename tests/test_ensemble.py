"""Ensembles by reassigning parameters from their distribution (issue 20, part 1).

The statistics are Welford means and population variances in float64, checked against the
values stacked by hand; members are seeded per (seed, index), keep pruned entries exactly +0.0
on their bit patterns, and collapse to the single model when the variance (or the scale) is 0.
The MLP is 20-16-3 on synthetic data, as in test_pipeline.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

import secateurs
import secateurs.front.cli as cli
from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, masks_of, set_masks
from secateurs.data import load_dataset
from secateurs.methods.training.param_stats import CollectWindow, ParamStats, StatsCollector
from secateurs.models import build_model
from secateurs.pipeline.recipe import Recipe, recipe_from_raw
from secateurs.pipeline.runner import STATE_FILE, Pipeline, run_recipe
from secateurs.train.callbacks import LambdaCallback
from secateurs.train.config import TrainConfig
from secateurs.train.engine import train

DATA = {
    "name": "synthetic",
    "options": {"input_shape": [20], "num_classes": 3, "num_train": 96, "num_test": 48},
}
MODEL = {"name": "mlp", "options": {"hidden": [16]}}


def mlp(seed: int = 0) -> nn.Module:
    return build_model("mlp", (20,), 3, seed=seed, hidden=[16])


def make_recipe(*stages: dict[str, Any]) -> Recipe:
    raw = {
        "name": "tiny-ensemble",
        "data": DATA,
        "model": MODEL,
        "sparsity": 0.8,
        "train": {"iterations": 6, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}},
        "stages": list(stages),
    }
    return recipe_from_raw(raw)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().view(torch.int32)


# -- statistics ---------------------------------------------------------------------------------
def test_statistics_equal_the_mean_and_variance_of_the_values_seen() -> None:
    model = nn.Linear(3, 2)
    stats, seen = ParamStats(), []
    torch.manual_seed(0)
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        seen.append({n: p.detach().clone().double() for n, p in model.named_parameters()})
        stats.update(model)
    assert stats.count == 5
    for name in ("weight", "bias"):
        values = torch.stack([s[name] for s in seen])
        assert stats.mean[name].dtype == torch.float64
        torch.testing.assert_close(stats.mean[name], values.mean(0), rtol=0, atol=1e-12)
        torch.testing.assert_close(stats.variance[name], values.var(0, unbiased=False), rtol=0, atol=1e-12)


def test_welford_is_exact_where_the_naive_formula_cancels() -> None:
    model = nn.Linear(1, 1, bias=False)
    stats = ParamStats()
    for x in (1e7, 1e7 + 1, 1e7 + 2):  # exact in float32; E[x²] − E[x]² in float64 loses the 2/3
        with torch.no_grad():
            model.weight.fill_(x)
        stats.update(model)
    assert float(stats.mean["weight"]) == 1e7 + 1
    assert abs(float(stats.variance["weight"]) - 2 / 3) < 1e-9


@pytest.mark.parametrize(
    ("window", "expected_steps"), [({"steps": 3}, [3, 4, 5]), ({"steps": 4, "every": 2}, [3, 5])]
)
def test_the_training_plug_in_collects_the_last_steps(
    window: dict[str, int], expected_steps: list[int]
) -> None:
    data = load_dataset("synthetic", input_shape=[20], num_classes=3, num_train=96, num_test=48)
    model, stats, after_step = mlp(), ParamStats(), {}

    def snapshot(state: Any) -> None:
        after_step[state.step] = {n: p.detach().clone().double() for n, p in state.model.named_parameters()}

    config = TrainConfig(iterations=5, batch_size=32, optimizer={"lr": 0.05}, eval_every_epoch=False)
    collector = StatsCollector(CollectWindow(**window), stats)
    train(
        model,
        data.train_loader(32, seed=0),
        config,
        callbacks=[LambdaCallback(on_step_end=snapshot), collector],
    )
    assert stats.count == len(expected_steps)
    for name in after_step[1]:
        values = torch.stack([after_step[s][name] for s in expected_steps])
        torch.testing.assert_close(stats.mean[name], values.mean(0), rtol=0, atol=1e-12)
        torch.testing.assert_close(stats.variance[name], values.var(0, unbiased=False), rtol=0, atol=1e-12)


# -- members ------------------------------------------------------------------------------------
def collected(model: nn.Module, samples: int = 4, seed: int = 0) -> ParamStats:
    """Statistics of `samples` random perturbations of `model` (a stand-in for training)."""
    stats, moving = ParamStats(), copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(samples):
        with torch.no_grad():
            for p, q in zip(moving.parameters(), model.parameters(), strict=True):
                p.copy_(q + 0.1 * torch.randn(q.shape, generator=generator))
        stats.update(moving)
    return stats


def test_members_are_reproducible_by_seed_and_differ_from_each_other() -> None:
    model = mlp()
    stats = collected(model)
    a = secateurs.ensemble(model, stats, members=3, seed=7)
    b = secateurs.ensemble(model, stats, members=3, seed=7)
    c = secateurs.ensemble(model, stats, members=3, seed=8)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(bits(x), bits(y))
    weights = [m.classifier.weight for m in a.members]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    assert not torch.equal(a.members[0].classifier.weight, c.members[0].classifier.weight)
    # member i depends on (seed, i) only: a larger ensemble begins with the same members
    d = secateurs.ensemble(model, stats, members=5, seed=7)
    assert torch.equal(d.members[2].classifier.weight, a.members[2].classifier.weight)


def test_pruned_entries_are_exactly_positive_zero_whatever_the_statistics_say() -> None:
    model = mlp()
    masks = MaskSet(
        {
            n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < 0.3
            for n, p in model.named_parameters()
            if n.endswith("weight")
        }
    )
    set_masks(model, masks)
    stats = collected(mlp(seed=3))  # other weights: nonzero mean and variance at pruned positions
    for name in masks:
        stats.mean[name][~masks[name]] = -1.0
        stats.mean[name][0, 0] = float("nan") if not masks[name][0, 0] else stats.mean[name][0, 0]
    for member in secateurs.ensemble(model, stats, members=3, seed=0).members:
        assert masks_of(member) is not None
        for name, p in member.named_parameters():
            if name in masks:
                assert bool((bits(p)[~masks[name]] == 0).all()), name  # +0.0: no -0.0, no NaN
                assert bool(p[masks[name]].ne(0).all()) and not bool(p.isnan().any())


def test_identical_members_give_the_single_models_probabilities() -> None:
    model = mlp().eval()
    x = torch.randn(8, 20)
    single = torch.softmax(model(x), dim=1)
    still = ParamStats()
    for _ in range(3):
        still.update(model)  # a weight that never moved: variance 0
    for stats, scale in ((still, 1.0), (collected(model), 0.0)):
        if scale == 0.0:
            stats.mean = {n: p.detach().double().clone() for n, p in model.named_parameters()}
        ens = secateurs.ensemble(model, stats, members=4, seed=0, scale=scale).eval()
        for m in ens.members:
            assert all(torch.equal(p, q) for p, q in zip(m.parameters(), model.parameters(), strict=True))
        torch.testing.assert_close(ens.probabilities(x), single, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ens(x).exp().sum(1), torch.ones(8))


def test_members_keep_the_batchnorm_statistics_and_predict_by_mean_probability() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model(torch.randn(32, 4) * 3 + 1)  # training mode: the running statistics move off 0 and 1
    ens = secateurs.ensemble(model.eval(), collected(model), members=3, seed=0).eval()
    for member in ens.members:
        assert torch.equal(member[1].running_mean, model[1].running_mean)
        assert torch.equal(member[1].running_var, model[1].running_var)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    mean_probability = torch.stack([torch.softmax(m(x), dim=1) for m in ens.members]).mean(0)
    torch.testing.assert_close(ens.probabilities(x), mean_probability)
    nll = -mean_probability[torch.arange(5), y].log().mean()
    torch.testing.assert_close(nn.functional.cross_entropy(ens(x), y), nll)


# -- the ensemble stage -------------------------------------------------------------------------
STAGES: list[dict[str, Any]] = [
    {"train": {"param_stats": {"steps": 4}}},
    {"ensemble": {"members": 3, "beyond": False}},
    {"prune": {}},
    {"train": {"iterations": 4}},  # does not collect: the next ensemble runs its own pass
    {"ensemble": {"members": 2, "collect": {"steps": 3}, "beyond": False}},
]


class Crash(Exception):
    """Stands in for a kill in the middle of a run."""


def test_the_stage_runs_end_to_end_and_keeps_the_model_as_trained() -> None:
    recipe = make_recipe(*STAGES[:2], {"evaluate": {}}, *STAGES[2:], {"evaluate": {"label": "after"}})
    result = run_recipe(recipe)
    first, dense, second, after = result.records
    assert first["members"] == 3 and first["collected_samples"] == 4 and second["collected_samples"] == 3
    assert first["single_accuracy"] == dense["accuracy"] and second["single_accuracy"] == after["accuracy"]
    assert first["macs"] == 3 * dense["macs"] and second["nonzero_macs"] == 2 * after["nonzero_macs"]
    assert second["sparsity"] == after["sparsity"] > 0.79
    for row in (first, second):
        assert {"accuracy", "loss", "ece", "single_ece", "agreement"} <= set(row) and 0 <= row[
            "agreement"
        ] <= 1
    with_shifts = run_recipe(make_recipe(STAGES[0], {"ensemble": {"members": 2}})).final
    assert "acc@shifted_split" in with_shifts and "excess_error@shifted_split" in with_shifts


def test_the_collection_pass_ignores_the_recipes_eval_every() -> None:
    # the pass is not evaluated and may be shorter than eval_every (issue 23)
    raw = make_recipe().model_dump(mode="json")
    raw["train"]["eval_every"] = 5
    recipe = recipe_from_raw(
        {
            **raw,
            "stages": [{"train": {}}, {"ensemble": {"members": 2, "beyond": False, "collect": {"steps": 3}}}],
        }
    )
    assert run_recipe(recipe).final["collected_samples"] == 3


@pytest.mark.parametrize("crash_stage", [2, 5])  # the ensemble of kept statistics; the one that collects
def test_the_stage_resumes_with_identical_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_stage: int
) -> None:
    clean = run_recipe(make_recipe(*STAGES))
    original = Pipeline._save_state

    def save_then_maybe_crash(self: Pipeline) -> None:
        if self.counter == crash_stage:
            raise Crash
        original(self)

    with monkeypatch.context() as patch:
        patch.setattr(Pipeline, "_save_state", save_then_maybe_crash)
        with pytest.raises(Crash):
            run_recipe(make_recipe(*STAGES), workdir=tmp_path)
    assert (tmp_path / STATE_FILE).is_file()
    resumed = Pipeline(make_recipe(*STAGES), workdir=tmp_path)
    assert resumed.resumed_from == crash_stage - 1
    if crash_stage == 2:
        assert "param_stats" in resumed.state.kept  # the statistics were saved with the train stage
    assert resumed.run().records == clean.records


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        (
            {"ensemble": {"members": 0}},
            "stages.1.ensemble.members: Input should be greater than or equal to 1",
        ),
        ({"ensemble": {"membres": 3}}, "did you mean 'members'?"),
        ({"ensemble": {"collect": {"epochs": 1, "steps": 3}}}, "in epochs or in steps, not both"),
        ({"ensemble": {"scale": -1}}, "stages.1.ensemble.scale"),
        ({"ensemble": {"scale": float("inf")}}, "stages.1.ensemble.scale"),
        ({"train": {"param_stats": {"epochs": float("nan")}}}, "stages.1.train.param_stats.epochs"),
        ({"train": {"param_stats": {"every": 0}}}, "stages.1.train.param_stats.every"),
    ],
)
def test_bad_options_give_one_clear_error(stage: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_recipe({"train": {}}, stage)
    assert expected in str(info.value)
    assert "Traceback" not in str(info.value)


def test_a_window_longer_than_the_training_is_refused_before_it_trains() -> None:
    with pytest.raises(
        ConfigError, match=r"window of 9 steps \(9 steps\) does not fit the training's 6 steps"
    ):
        run_recipe(make_recipe({"train": {"param_stats": {"steps": 9}}}))


def test_the_cli_names_a_bad_ensemble_option_in_one_line(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    raw = {"data": DATA, "model": MODEL, "train": {"iterations": 2}}
    recipe.write_text(yaml.safe_dump({**raw, "stages": [{"train": {}}, {"ensemble": {"members": 0}}]}))
    result = CliRunner().invoke(cli.app, ["run", str(recipe), "--no-progress"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "stages.1.ensemble.members" in lines[0]
