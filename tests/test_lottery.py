"""Lottery tickets as a recipe: per-layer rates, rewinds, LR rewinding, controls, early stopping, resume.

The model is tests/tiny.py's MLP 20-16-3 on 96 synthetic samples in batches of 32 (3 steps per
epoch): its prunable weights are features.1.weight (16×20 = 320) and classifier.weight (3×16 = 48).
In `imp()` the stages are numbered train 1, evaluate 2, repeat 3, then per level l:
prune 4l, reset 4l + 1, train 4l + 2, evaluate 4l + 3.
"""

from __future__ import annotations

import copy
import json
import re
import sqlite3
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from tiny import TINY_DATA, tiny_recipe
from typer.testing import CliRunner

import secateurs.front.cli as cli
import secateurs.methods.controls as controls_module
import secateurs.pipeline.runner as pipeline_module
from secateurs.core.checkpoint import load_checkpoint, save_checkpoint
from secateurs.core.errors import CheckpointError, ConfigError
from secateurs.core.masks import MaskSet
from secateurs.front.demo import DEMO_METHODS, quick_overrides
from secateurs.methods.allocations import LayerInfo, allocate, round_half_up, unmatched_patterns
from secateurs.methods.pruning import compute_masks
from secateurs.models import build_model
from secateurs.pipeline.recipe import Recipe, load_recipe, recipe_from_raw
from secateurs.pipeline.runner import STATE_FILE, MetricEvent, Pipeline, best_of, run_recipe
from secateurs.results import ResultsDB, execute, run_hash
from secateurs.results.report import (
    collect,
    levels_from_records,
    levels_from_rows,
    plot_ticket_curves,
    ticket_curves,
    write_report,
)

ALL = ["reinit", "random_mask", "finetune_only"]
SIZES = {"features.1.weight": 320, "classifier.weight": 48}
PNG = b"\x89PNG\r\n\x1a\n"


def imp(
    *,
    controls: list[str] | None = None,
    reset: dict[str, Any] | None = None,
    levels: int = 3,
    layer_rates: dict[str, float] | None = None,
    **fields: Any,
) -> Recipe:
    """IMP: train 6 steps, then `levels` × [prune 20 % per layer, rewind to step 2, retrain, evaluate]."""
    schedule: dict[str, Any] = {"name": "iterative", "rate": 0.2, "levels": levels}
    if layer_rates is not None:
        schedule["layer_rates"] = layer_rates
    level = [
        {"prune": {"allocation": "uniform"}},
        {"reset": reset or {"mode": "rewind", "step": 2}},
        {"train": {}},
        {"evaluate": {"label": "level"}},
    ]
    repeat = {"schedule": schedule, "stages": level, **({"controls": controls} if controls else {})}
    raw = tiny_recipe({"train": {}}, {"evaluate": {"label": "dense"}}, {"repeat": repeat}, iterations=6)
    return recipe_from_raw({**raw, **fields})


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def masked(values: dict[str, torch.Tensor], masks: MaskSet) -> dict[str, torch.Tensor]:
    return {k: v * masks[k] if k in masks else v for k, v in values.items()}


def assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def train_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every call of the pipeline's `train`: model state before and after, the optimizer handed in."""
    calls: list[dict[str, Any]] = []
    original = pipeline_module.train

    def spy(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        given = kwargs.get("optimizer")
        call = {
            "before": state(model),
            "optimizer": None if given is None else copy.deepcopy(given.state_dict()),
        }
        call["result"] = original(model, *args, **kwargs)
        call["after"] = state(model)
        calls.append(call)
        return call["result"]

    monkeypatch.setattr(pipeline_module, "train", spy)
    return calls


def counts(masks: MaskSet) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in masks.items()}


# -- per-layer rates ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("layer_rates", "classifier"),
    [
        # 48 - round_half_up((1 - 0.8^l)·48) = 48 - round(9.6), 48 - round(17.28), 48 - round(23.424)
        (None, [38, 31, 25]),
        # the output layer at 10 %: 48 - round(4.8), 48 - round(9.12), 48 - round(13.008)
        ({"classifier": 0.1}, [43, 39, 35]),
        ({"$last": 0.1}, [43, 39, 35]),  # named by its place: the last prunable layer
    ],
)
def test_layerwise_rate_keeps_the_rounded_power_of_each_layer_per_level(
    mask_log: list[MaskSet], layer_rates: dict[str, float] | None, classifier: list[int]
) -> None:
    run_recipe(imp(layer_rates=layer_rates))
    # 320 - round(64), 320 - round(115.2), 320 - round(156.16): 0.8^l·320 = 256, 204.8, 163.84
    assert [counts(m) for m in mask_log] == [
        {"features.1.weight": f, "classifier.weight": c}
        for f, c in zip([256, 205, 164], classifier, strict=True)
    ]
    output = next(iter((layer_rates or {"classifier": 0.2}).values()))
    rates = {"features.1.weight": 0.2, "classifier.weight": output}
    for level, masks in enumerate(mask_log, start=1):  # the documented formula, for every layer and level
        for name, n in SIZES.items():
            assert counts(masks)[name] == n - round_half_up((1 - (1 - rates[name]) ** level) * n)
    for inner, outer in zip(mask_log[1:], mask_log, strict=False):  # masks only shrink
        assert all(not (inner[n] & ~outer[n]).any() for n in SIZES)


def test_first_and_last_name_a_layer_by_its_place_in_every_model() -> None:
    layers = [
        LayerInfo(n, (4,), 1, torch.tensor([4.0, 3, 2, 1])) for n in ("a.weight", "b.weight", "c.weight")
    ]
    assert allocate("uniform", layers, 0.5, layer_sparsities={"$first": 0.25, "$last": 0.75}) == {
        "a.weight": 3,
        "b.weight": 2,
        "c.weight": 1,
    }
    assert unmatched_patterns(["a.weight"], ["$first", "$last", "b*"]) == ["b*"]
    assert unmatched_patterns([], ["$last"]) == ["$last"]
    for name, output in (("cnn1d", "classifier.1.weight"), ("resnet20", "fc.weight")):  # no "classifier"
        shape = (1, 40) if name == "cnn1d" else (3, 32, 32)
        model = build_model(name, shape, 10, seed=0)
        masks = compute_masks(model, 0.5, allocation="uniform", layer_sparsities={"$last": 0.1})
        assert list(masks)[-1] == output
        assert int(masks[output].sum()) == masks[output].numel() - round_half_up(0.1 * masks[output].numel())


def test_layer_overrides_work_with_every_allocation_and_the_rest_shares_the_target() -> None:
    layers = [
        LayerInfo("a.weight", (6,), 1, torch.tensor([6.0, 5, 4, 3, 2, 1])),
        LayerInfo("b.weight", (6,), 1, torch.tensor([12.0, 11, 0.5, 0.4, 0.3, 0.2])),
        LayerInfo("out.weight", (4,), 1, torch.tensor([1.0, 1, 1, 1])),
    ]
    # out keeps 4 - round(0.25·4) = 3; a and b keep 12 - 6 = 6 between them by one threshold:
    # the six highest scores are 12, 11 (b) and 6, 5, 4, 3 (a).
    assert allocate("global", layers, 0.5, layer_sparsities={"out": 0.25}) == {
        "a.weight": 4,
        "b.weight": 2,
        "out.weight": 3,
    }
    assert allocate("uniform", layers, 0.5, layer_sparsities={"out*": 0.25}) == {
        "a.weight": 3,
        "b.weight": 3,
        "out.weight": 3,
    }
    with pytest.raises(ConfigError, match=r"pattern 'head' matches no prunable layer.*a\.weight, b\.weight"):
        allocate("uniform", layers, 0.5, layer_sparsities={"head": 0.25})
    model = build_model("mlp", (20,), 3, seed=0, hidden=[16])
    with pytest.raises(ConfigError, match="layer sparsity for 'classifier' must be a number in"):
        compute_masks(model, 0.5, layer_sparsities={"classifier": 1.5})


def test_layer_rates_are_checked_before_any_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "train", lambda *a, **k: pytest.fail("trained before the check"))
    with pytest.raises(
        ConfigError,
        match=r"stages\.2\.repeat\.schedule\.layer_rates: pattern 'output' matches no prunable layer"
        r".*features\.1\.weight, classifier\.weight",
    ):
        Pipeline(imp(layer_rates={"output": 0.1}))
    with pytest.raises(ConfigError, match="layer_rates must lie strictly between 0 and 1"):
        imp(layer_rates={"classifier": 1.0})
    raw = tiny_recipe(
        {
            "repeat": {
                "schedule": {"name": "iterative", "layer_rates": {"classifier": 0.1}},
                "stages": [{"train": {}}],
            }
        }
    )
    with pytest.raises(ConfigError, match="layer_rates apply to prune stages: add one to the repeat"):
        recipe_from_raw(raw)


# -- rewinding ------------------------------------------------------------------------------------
RESNET = {"name": "resnet20", "options": {"width": 0.25}}
IMAGES = {**TINY_DATA, "options": {**TINY_DATA["options"], "input_shape": [3, 8, 8]}}
ADAM = {"iterations": 6, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01}}


def test_rewind_to_step_k_restores_weights_buffers_and_adam_state_exactly(
    train_calls: list[dict[str, Any]],
) -> None:
    """A BatchNorm ResNet trained by Adam: everything saved at step 2 comes back, bit for bit."""
    run_recipe(
        recipe_from_raw(tiny_recipe({"train": {"iterations": 2}}, data=IMAGES, model=RESNET, train=ADAM))
    )
    (at_two,) = train_calls
    train_calls.clear()
    result = run_recipe(
        recipe_from_raw(
            tiny_recipe(
                {"train": {}},
                {"prune": {}},
                {"reset": {"mode": "rewind", "step": 2}},
                {"train": {"iterations": 1}},
                data=IMAGES,
                model=RESNET,
                train=ADAM,
            )
        )
    )
    first, retrain = train_calls
    assert_states_equal(retrain["before"], masked(at_two["after"], result.masks))
    assert int(retrain["before"]["bn1.num_batches_tracked"]) == 2
    assert not torch.equal(first["after"]["bn1.running_mean"], at_two["after"]["bn1.running_mean"])
    saved = at_two["result"].optimizer_state["state"]
    handed = retrain["optimizer"]["state"]
    assert sorted(handed) == sorted(saved) and len(saved) == len(list(result.model.parameters()))
    for index, moments in saved.items():
        assert sorted(handed[index]) == ["exp_avg", "exp_avg_sq", "step"]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(handed[index][key], moments[key]), (index, key)
        assert float(handed[index]["step"]) == 2.0
    assert float(first["result"].optimizer_state["state"][0]["step"]) == 6.0  # training went past step 2


def test_rewind_to_an_epoch_is_the_step_it_starts() -> None:
    by_epoch = run_recipe(imp(reset={"mode": "rewind", "epoch": 1}, levels=1))
    by_step = run_recipe(imp(reset={"mode": "rewind", "step": 3}, levels=1))
    assert_states_equal(state(by_epoch.model), state(by_step.model))
    assert by_epoch.records == by_step.records
    with pytest.raises(ConfigError, match=r"rewind step\(s\) \[9\] lie beyond the first training stage"):
        run_recipe(imp(reset={"mode": "rewind", "epoch": 3}))


@pytest.mark.parametrize(
    ("reset", "message"),
    [
        ({"mode": "keep", "step": 2}, r"reset mode 'keep' has no option 'step' \(it takes no options\)"),
        ({"mode": "lr_rewind", "epoch": 1}, "reset mode 'lr_rewind' has no option 'epoch'"),
        ({"mode": "rewind", "step": 2, "epoch": 1}, "as `step` or as `epoch`, not both"),
    ],
)
def test_rewind_targets_belong_to_rewinds_only(reset: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=rf"stages\.2\.repeat\.stages\.1\.reset: .*{message}"):
        imp(reset=reset)


# -- learning-rate rewinding ----------------------------------------------------------------------
COSINE = {
    "iterations": 6,
    "batch_size": 32,
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "lr_schedule": {"name": "cosine"},
}


def test_lr_rewind_keeps_the_weights_starts_a_fresh_optimizer_and_replays_the_schedule(
    train_calls: list[dict[str, Any]],
) -> None:
    stages = ({"train": {}}, {"prune": {}})
    result = run_recipe(
        recipe_from_raw(tiny_recipe(*stages, {"reset": {"mode": "lr_rewind"}}, {"train": {}}, train=COSINE))
    )
    first, replay = train_calls
    assert_states_equal(replay["before"], masked(first["after"], result.masks))
    assert first["optimizer"] is None and replay["optimizer"] is None  # no momentum carried over
    lrs = [[row["lr"] for row in call["result"].history] for call in (first, replay)]
    assert lrs[0] == lrs[1] == [pytest.approx(0.05), 0.0]  # cosine over 6 steps, evaluated at steps 3 and 6
    # What lr_rewind does to the model is what keep does; it differs in what the recipe must run next.
    kept = run_recipe(
        recipe_from_raw(tiny_recipe(*stages, {"reset": {"mode": "keep"}}, {"train": {}}, train=COSINE))
    )
    assert_states_equal(state(kept.model), state(result.model))


@pytest.mark.parametrize(
    ("after", "message"),
    [
        (
            [{"train": {"optimizer": {"lr": 0.01}}}],
            r"stages\.2\.reset: lr_rewind replays the first training stage's LR schedule, "
            r"but the train stage after it differs: optimizer .*'lr': 0\.01.* vs .*'lr': 0\.1",
        ),
        (
            [{"train": {"lr_schedule": {"name": "linear"}}}],
            r"differs: lr_schedule .*'linear'.* vs .*'cosine'",
        ),
        ([{"evaluate": {}}], r"stages\.2\.reset: lr_rewind needs a train stage after it"),
    ],
)
def test_lr_rewind_must_replay_the_first_training_schedule(after: list[dict[str, Any]], message: str) -> None:
    raw = tiny_recipe({"train": {}}, {"prune": {}}, {"reset": {"mode": "lr_rewind"}}, *after, train=COSINE)
    with pytest.raises(ConfigError, match=message):
        recipe_from_raw(raw)
    same_budget_shorter = tiny_recipe(
        {"train": {}},
        {"prune": {}},
        {"reset": {"mode": "lr_rewind"}},
        {"train": {"iterations": 3}},
        train=COSINE,
    )
    assert recipe_from_raw(same_budget_shorter).stages[2].mode == "lr_rewind"  # the budget may differ


# -- controls -------------------------------------------------------------------------------------
def test_controls_leave_the_ticket_bit_identical() -> None:
    plain_events: list[MetricEvent] = []
    with_events: list[MetricEvent] = []
    plain = run_recipe(imp(), on_metrics=plain_events.append)
    both = run_recipe(imp(controls=ALL), on_metrics=with_events.append)
    assert_states_equal(state(both.model), state(plain.model))
    assert both.masks.equal(plain.masks)
    assert [r for r in both.records if "control" not in r] == plain.records
    assert [e for e in with_events if e.control is None] == plain_events
    assert both.final == plain.final == plain.records[-1]


def test_every_level_records_each_control_by_name_and_level() -> None:
    events: list[MetricEvent] = []
    result = run_recipe(imp(controls=ALL), on_metrics=events.append)
    labelled = [(r.get("control"), r["level"], r["label"]) for r in result.records]
    assert labelled == [(None, None, "dense")] + [
        (c, level, "level") for level in (1, 2, 3) for c in [*ALL, None]
    ]
    evaluations = [(e.stage, e.level, e.control) for e in events if e.kind == "evaluate"]
    assert evaluations == [(2, None, None)] + [(4 * n + 3, n, c) for n in (1, 2, 3) for c in [*ALL, None]]

    def retraining(control: str | None) -> list[tuple[Any, ...]]:
        return [(e.stage, e.level, e.step) for e in events if e.kind == "train" and e.control == control]

    # each control retrains like the ticket: the same stages and steps (3 and 6) of every level
    ticket = [row for row in retraining(None) if row[1] is not None]
    assert ticket == [(4 * n + 2, n, step) for n in (1, 2, 3) for step in (3, 6)]
    assert all(retraining(c) == ticket for c in ALL)
    for level in (1, 2, 3):  # every control has the ticket's number of weights at its level
        same = {r["remaining"] for r in result.records if r["level"] == level}
        assert len(same) == 1, level
    for e in events:  # the metrics of a control event match its record
        if e.kind == "evaluate" and e.control is not None:
            record = next(r for r in result.records if (r.get("control"), r["level"]) == (e.control, e.level))
            assert e.metrics["accuracy"] == record["accuracy"]


def test_each_control_starts_its_retraining_from_its_definition(
    train_calls: list[dict[str, Any]], mask_log: list[MaskSet], monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[MaskSet] = []
    original = controls_module.random_masks_like
    monkeypatch.setattr(
        controls_module, "random_masks_like", lambda m, seed: drawn.append(original(m, seed)) or drawn[-1]
    )
    run_recipe(imp(controls=ALL, levels=1))
    dense, reinit, random_mask, finetune, ticket = train_calls
    (ticket_masks,) = mask_log
    (random,) = drawn
    assert counts(random) == counts(ticket_masks) == {"features.1.weight": 256, "classifier.weight": 38}
    assert not random.equal(ticket_masks)

    train_calls.clear()  # the reference: weights and momentum after two steps of the same training
    run_recipe(recipe_from_raw(tiny_recipe({"train": {"iterations": 2}}, iterations=6)))
    (at_two,) = train_calls
    momentum = at_two["result"].optimizer_state["state"]

    # ticket: the step-2 weights under its masks, with the step-2 momentum
    assert_states_equal(ticket["before"], masked(at_two["after"], ticket_masks))
    assert all(
        torch.equal(ticket["optimizer"]["state"][i]["momentum_buffer"], m["momentum_buffer"])
        for i, m in momentum.items()
    )
    # reinit: a fresh init seeded 0·1000 + 5 (the reset's stage number), not the recipe's seed 0
    fresh = build_model("mlp", (20,), 3, seed=5, hidden=[16]).state_dict()
    assert_states_equal(reinit["before"], masked(fresh, ticket_masks))
    assert not torch.equal(fresh["classifier.weight"], dense["before"]["classifier.weight"])
    assert reinit["optimizer"] is None
    # random mask: the ticket's rewind target (weights and momentum) under the random mask
    assert_states_equal(random_mask["before"], masked(at_two["after"], random))
    assert all(
        torch.equal(random_mask["optimizer"]["state"][i]["momentum_buffer"], m["momentum_buffer"])
        for i, m in momentum.items()
    )
    # finetune only: the trained weights under the ticket's masks, a fresh optimizer
    assert_states_equal(finetune["before"], masked(dense["after"], ticket_masks))
    assert finetune["optimizer"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"controls": ["shuffle"]},
            r"unknown control\(s\) 'shuffle'; controls are finetune_only, random_mask, reinit",
        ),
        ({"controls": ["reinit", "reinit"]}, "controls are listed twice"),
        (
            {"reset": {"mode": "keep"}, "controls": ["random_mask"]},
            "control random_mask takes its weights from the ticket's rewind target",
        ),
        (
            {"reset": {"mode": "lr_rewind"}, "controls": ["finetune_only"]},
            "control finetune_only would repeat the ticket itself",
        ),
        (
            {"reset": {"mode": "reinit"}, "controls": ["reinit"]},
            "control reinit would repeat the ticket itself",
        ),
    ],
)
def test_invalid_controls_are_config_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=rf"stages\.2\.repeat: {message}"):
        imp(**change)


def test_controls_need_a_prune_and_a_later_evaluate() -> None:
    def repeat(*stages: dict[str, Any]) -> dict[str, Any]:
        return tiny_recipe(
            {"train": {}},
            {"repeat": {"schedule": {"name": "oneshot"}, "controls": ["reinit"], "stages": list(stages)}},
        )

    with pytest.raises(ConfigError, match="controls branch off after the level's prune stage: add a prune"):
        recipe_from_raw(repeat({"reset": {"mode": "rewind"}}, {"evaluate": {}}))
    with pytest.raises(ConfigError, match="controls record evaluations: add an evaluate stage after"):
        recipe_from_raw(repeat({"evaluate": {}}, {"prune": {}}, {"reset": {"mode": "rewind"}}))


# -- early stopping -------------------------------------------------------------------------------
def test_best_of_is_the_first_evaluation_with_the_highest_accuracy() -> None:
    history = [
        {"step": 3, "test_accuracy": 0.5},
        {"step": 6, "test_accuracy": 0.75},
        {"step": 9, "test_accuracy": 0.75},
        {"step": 12, "test_accuracy": 0.625},
    ]
    assert best_of(history) == {"best_step": 6, "best_accuracy": 0.75}
    assert best_of([{"step": 3, "lr": 0.1}]) == {}


def test_evaluations_carry_the_early_stop_step_of_the_training_that_made_the_weights(
    train_calls: list[dict[str, Any]],
) -> None:
    result = run_recipe(imp(controls=["finetune_only"], levels=2))
    dense, *level_calls = train_calls
    assert [call["result"].history[-1]["step"] for call in train_calls] == [6] * 5
    records = result.records
    expected = [best_of(call["result"].history) for call in (dense, *level_calls)]
    # record order: dense; level 1: finetune_only, ticket; level 2: the same. Call order: dense;
    # level 1: finetune_only, ticket; level 2: finetune_only, ticket.
    for record, best in zip(records, expected, strict=True):
        assert {k: record[k] for k in ("best_step", "best_accuracy")} == best
        assert best["best_step"] in (3, 6)
    pruned = run_recipe(recipe_from_raw(tiny_recipe({"train": {}}, {"prune": {}}, {"evaluate": {}})))
    assert "best_step" not in pruned.final  # the pruned weights were not made by a training stage


def test_the_early_stop_step_comes_from_the_evaluations_every_n_steps(
    train_calls: list[dict[str, Any]],
) -> None:
    events: list[MetricEvent] = []
    recipe = imp(levels=1, reset={"mode": "rewind", "step": 0})
    recipe = recipe_from_raw({**recipe.model_dump(mode="json"), "train": {**recipe.train, "eval_every": 4}})
    result = run_recipe(recipe, on_metrics=events.append)
    for call in train_calls:  # 6 steps: evaluated after steps 4 and 6, not after each 3-step epoch
        assert [row["step"] for row in call["result"].history] == [4, 6]
    train_events = [e for e in events if e.kind == "train"]
    assert [(e.stage, e.step) for e in train_events] == [(1, 4), (1, 6), (6, 4), (6, 6)]
    for record, stage in zip(result.records, (1, 6), strict=True):
        history = [{"step": e.step, **e.metrics} for e in train_events if e.stage == stage]
        assert {k: record[k] for k in ("best_step", "best_accuracy")} == best_of(history)


# -- resuming -------------------------------------------------------------------------------------
class Crash(Exception):
    """Stands in for a kill after a stage ran but before its state was saved."""


def crash_at(monkeypatch: pytest.MonkeyPatch, stage_number: int) -> None:
    original = Pipeline._save_state

    def save_or_crash(self: Pipeline) -> None:
        if self.counter == stage_number and self.control is None:
            raise Crash
        original(self)

    monkeypatch.setattr(Pipeline, "_save_state", save_or_crash)


# level 2's prune (its controls ran, nothing saved), its retraining (control rows of stage 10 were
# published first) and its evaluation (control records published, the ticket's not)
@pytest.mark.parametrize("crash_stage", [8, 10, 11])
def test_resume_after_a_crash_at_a_level_with_controls_equals_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_stage: int
) -> None:
    clean_events: list[MetricEvent] = []
    clean = run_recipe(imp(controls=ALL), on_metrics=clean_events.append)
    seen: list[MetricEvent] = []
    with monkeypatch.context() as patch:
        crash_at(patch, crash_stage)
        with pytest.raises(Crash):
            run_recipe(imp(controls=ALL), workdir=tmp_path, on_metrics=seen.append)
    resumed = Pipeline(imp(controls=ALL), workdir=tmp_path, on_metrics=seen.append)
    assert resumed.resumed_from == crash_stage - 1
    seen[:] = [e for e in seen if e.stage <= resumed.resumed_from]  # what the store drops on resume
    result = resumed.run()
    assert seen == clean_events
    assert result.records == clean.records
    assert_states_equal(state(result.model), state(clean.model))


def test_the_store_keeps_controls_apart_and_resumes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = imp(controls=ALL, levels=2)
    clean_events: list[MetricEvent] = []
    clean = run_recipe(recipe, on_metrics=clean_events.append)
    with monkeypatch.context() as patch:
        crash_at(patch, 10)
        with pytest.raises(Crash):
            execute(recipe, tmp_path)
    assert execute(recipe, tmp_path).resumed_from == 9
    with ResultsDB(tmp_path / "results.db", create=False) as db:
        rows = db.metrics(run_hash(recipe))
        final = db.final_metrics(run_hash(recipe))
        (summary,) = collect(db)
    expected = [
        (e.stage, e.kind, e.level, e.step, name, value, e.control)
        for e in clean_events
        for name, value in e.metrics.items()
    ]
    assert [(r.stage, r.kind, r.level, r.step, r.name, r.value, r.control) for r in rows] == expected
    assert {r.control for r in rows} == {None, *ALL}
    assert final["accuracy"] == clean.final["accuracy"] and final["best_step"] == clean.final["best_step"]
    assert summary.final["accuracy"] == clean.final["accuracy"]
    assert levels_from_rows(rows) == levels_from_records(clean.records)
    assert set(summary.levels) == {(c, level) for c in [None, *ALL] for level in (1, 2)}


def test_a_state_saved_before_the_lottery_fields_existed_still_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = imp(levels=1)
    with monkeypatch.context() as patch:
        crash_at(patch, 6)
        with pytest.raises(Crash):
            run_recipe(recipe, workdir=tmp_path)
    saved = load_checkpoint(tmp_path / STATE_FILE)
    old = json.loads(saved["recipe"])  # as an older version wrote it: without the new, default fields
    del old["stages"][2]["controls"], old["stages"][2]["schedule"]["layer_rates"]
    del old["stages"][2]["stages"][1]["epoch"]
    saved["recipe"] = json.dumps(old, sort_keys=True)
    save_checkpoint(tmp_path / STATE_FILE, saved)
    assert Pipeline(recipe, workdir=tmp_path).resumed_from == 5
    with pytest.raises(CheckpointError, match="written by a different recipe"):
        Pipeline(imp(levels=2), workdir=tmp_path)


def test_cli_tables_name_the_control_of_each_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "console", Console(width=250))
    result = run_recipe(imp(controls=["reinit"], levels=1))
    table = Console(width=250, record=True)
    table.print(cli.records_table(result.records, "t"))
    assert re.search(r"^level +reinit +1 ", table.export_text(), re.MULTILINE)  # label, control, level
    execute(imp(controls=["reinit"], levels=1), tmp_path)
    shown = CliRunner().invoke(
        cli.app, ["runs", "--root", str(tmp_path), "--show", run_hash(imp(controls=["reinit"], levels=1))]
    )
    assert shown.exit_code == 0, shown.output
    evaluate = shown.output[shown.output.index("evaluate metrics") :]
    assert re.search(r"^control +reinit\s*$", evaluate, re.MULTILINE)  # the run's own level has none


# -- results database -------------------------------------------------------------------------------
V1_METRICS = (
    "CREATE TABLE metrics (run TEXT, stage INTEGER, kind TEXT, level INTEGER, step INTEGER, "
    "name TEXT, value REAL)"
)


def test_a_version_1_database_is_migrated_by_its_first_control_event_only(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    with ResultsDB(path):
        pass
    conn = sqlite3.connect(path)  # make it a version-1 database: metrics without `control`
    conn.executescript(
        f"DROP TABLE metrics; {V1_METRICS}; UPDATE meta SET value = '1' WHERE key = 'schema_version'"
    )
    conn.close()

    def version() -> str:
        c = sqlite3.connect(path)
        try:
            return c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        finally:
            c.close()

    with ResultsDB(path) as db:
        db.add_runs([("r", "n", {})])
        db.add_metrics("r", stage=1, kind="evaluate", level=1, step=None, metrics={"accuracy": 0.5})
        assert version() == "1" and [m.control for m in db.metrics("r")] == [None]
        db.add_metrics(
            "r", stage=2, kind="evaluate", level=1, step=None, metrics={"accuracy": 0.25}, control="reinit"
        )
        assert version() == "2"
        assert [(m.value, m.control) for m in db.metrics("r")] == [(0.5, None), (0.25, "reinit")]
        assert db.final_metrics("r") == {"accuracy": 0.5}  # a control's evaluation is not the run's result


# -- report -----------------------------------------------------------------------------------------
def test_ticket_curves_are_mean_and_std_over_seeds_per_level(tmp_path: Path) -> None:
    def records(seed: float) -> list[dict[str, Any]]:
        return [
            {"label": "dense", "level": None, "accuracy": 0.9, "remaining": 1.0},
            {"label": "level", "level": 1, "control": "reinit", "accuracy": 0.5 + seed, "remaining": 0.75},
            {
                "label": "level",
                "level": 1,
                "accuracy": 0.7 + seed,
                "remaining": 0.75,
                "best_step": 30 + 10 * seed,
            },
            {"label": "level", "level": 2, "accuracy": 0.6 + seed, "remaining": 0.5625, "best_step": 20},
        ]

    seeds = (0.0, 0.1, 0.2)
    curves = ticket_curves([levels_from_records(records(s)) for s in seeds])
    assert list(curves) == ["ticket", "control=reinit"]
    one, two = curves["ticket"]
    assert (one.level, one.remaining, two.level, two.remaining) == (1, 0.75, 2, 0.5625)
    assert one.metric.values == [0.7 + s for s in seeds]
    assert one.metric.std == statistics.stdev([0.7 + s for s in seeds]) > 0
    assert one.best_step.values == [30.0, 31.0, 32.0] and two.best_step.mean == 20.0
    (control,) = curves["control=reinit"]
    assert (
        control.metric.mean == statistics.fmean([0.5 + s for s in seeds]) and control.best_step.values == []
    )
    path = plot_ticket_curves({"IMP": curves}, tmp_path / "ticket.png")
    assert path.read_bytes().startswith(PNG)


def test_the_report_draws_ticket_curves_when_runs_have_levels(tmp_path: Path) -> None:
    for seed in (0, 1):
        execute(imp(controls=["reinit"], levels=2, seed=seed), tmp_path / "results", name="imp")
    text = write_report(tmp_path / "results", tmp_path / "report").read_text()
    assert "## Levels (lottery tickets)" in text and "](ticket_curves.png)" in text
    assert "| level | remaining | ticket | control=reinit | early stop step (ticket) |" in text
    assert (tmp_path / "report" / "ticket_curves.png").read_bytes().startswith(PNG)
    # level 1 keeps 256 + 38 of 368 weights
    assert f"| 1 | {100 * 294 / 368:.2f} % |" in text


# -- preset and demo --------------------------------------------------------------------------------
def test_the_demo_runs_imp_with_rewinding_at_its_own_rates() -> None:
    _, preset, overrides = next(m for m in DEMO_METHODS if m[0] == "IMP (lottery ticket, rewind)")
    tiny = [f"data={TINY_DATA}", "model={name: mlp, options: {hidden: [16]}}", "train.batch_size=32"]
    recipe = load_recipe(preset, [*overrides, *quick_overrides(preset), *tiny, "sparsity=0.9"])
    assert recipe.stages[2].stages[1].model_dump() == {
        "kind": "reset",
        "mode": "rewind",
        "step": 0,
        "epoch": 1.0,
    }
    result = run_recipe(recipe)
    # rate 0.5 reaches 0.9 in 4 levels (0.5, 0.75, 0.875, then 0.9); the output layer loses 25 % per level
    assert [r["level"] for r in result.records] == [None, 1, 2, 3, 4]
    assert (
        counts(result.masks)
        == {
            "features.1.weight": 320 - round_half_up(0.9 * 320),
            "classifier.weight": 48 - round_half_up((1 - 0.75**4) * 48),
        }
        == {"features.1.weight": 32, "classifier.weight": 15}
    )
