"""Specification of the pipeline: what each stage kind does to the model, exactly.

The model is an MLP 20-16-3 on synthetic data: its prunable weights are 16·20 + 3·16 = 368
entries (plus 16 + 3 biases, 387 parameters), and one sample costs 368 MACs. A global prune to
sparsity s keeps 368 - round(s·368) weights.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

import secateurs.pipeline.runner as pipeline_module
from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, masks_of
from secateurs.data import load_dataset
from secateurs.eval import evaluate
from secateurs.front.demo import quick_overrides
from secateurs.models import build_model
from secateurs.pipeline.recipe import Recipe, load_recipe, preset_names, recipe_from_raw
from secateurs.pipeline.runner import Pipeline, RunResult, run_recipe

DATA = {
    "name": "synthetic",
    "options": {"input_shape": [20], "num_classes": 3, "num_train": 96, "num_test": 48},
}
MODEL = {"name": "mlp", "options": {"hidden": [16]}}
WEIGHTS = 368  # prunable entries: features.1.weight (16×20) + classifier.weight (3×16)
PARAMS = 387  # plus the 16 + 3 biases


def make_recipe(*stages: dict[str, Any], **fields: Any) -> Recipe:
    raw = {
        "name": "tiny",
        "data": DATA,
        "model": MODEL,
        "sparsity": 0.8,
        "train": {"iterations": 6, "batch_size": 32},
    }
    return recipe_from_raw({**raw, **fields, "stages": list(stages)})


def initial_model(seed: int = 0) -> nn.Module:
    return build_model("mlp", (20,), 3, seed=seed, hidden=[16])


def kept_after(sparsity: float, n: int = WEIGHTS) -> int:
    return n - math.floor(sparsity * n + 0.5)


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_subset(inner: MaskSet, outer: MaskSet) -> None:
    assert list(inner) == list(outer)
    for name in inner:
        assert not (inner[name] & ~outer[name]).any(), name


def assert_pruned_weights_are_zero(result: RunResult) -> None:
    named = dict(result.model.named_parameters())
    assert result.masks is not None
    for name, mask in result.masks.items():
        assert torch.count_nonzero(named[name].detach()[~mask]) == 0, name


# -- one-shot pruning and its records ---------------------------------------------------------
def test_oneshot_prune_keeps_the_exact_count_and_records_match_the_model() -> None:
    result = run_recipe(
        make_recipe(
            {"train": {}},
            {"evaluate": {"label": "dense"}},
            {"prune": {}},
            {"evaluate": {"label": "pruned", "per_layer": True}},
        )
    )
    masks = masks_of(result.model)
    assert masks is result.masks
    assert (masks.numel(), masks.kept()) == (WEIGHTS, kept_after(0.8)) == (368, 74)
    assert_pruned_weights_are_zero(result)

    dense, pruned = result.records
    assert [(r["label"], r["level"]) for r in result.records] == [("dense", None), ("pruned", None)]
    assert (dense["params"], dense["nonzero_params"]) == (PARAMS, PARAMS)
    assert (dense["macs"], dense["nonzero_macs"]) == (WEIGHTS, WEIGHTS)
    assert (dense["sparsity"], dense["remaining"]) == (0.0, 1.0)
    # Counts of the pruned model, computed here from the model itself.
    weights = dict(result.model.named_parameters())
    nonzero_weights = sum(int(torch.count_nonzero(weights[n])) for n in masks)
    nonzero_all = sum(int(torch.count_nonzero(p)) for p in result.model.parameters())
    assert nonzero_weights == 74  # no surviving weight happens to be exactly zero
    assert pruned["params"] == PARAMS and pruned["macs"] == WEIGHTS
    assert pruned["nonzero_params"] == nonzero_all == 74 + 19
    assert pruned["nonzero_macs"] == 74
    assert pruned["sparsity"] == (368 - 74) / 368 and pruned["remaining"] == 74 / 368
    data = load_dataset(DATA["name"], **DATA["options"])
    expected = evaluate(result.model, data.test_loader())
    assert pruned["accuracy"] == expected["accuracy"] and pruned["loss"] == expected["loss"]
    layers = {row["name"]: row for row in pruned["layers"]}
    assert list(layers) == ["features.1", "classifier"]
    assert layers["features.1"]["nonzero_macs"] == int(masks["features.1.weight"].sum())
    assert layers["classifier"]["nonzero_macs"] == int(masks["classifier.weight"].sum())
    assert "layers" not in dense


def test_global_prune_counts_are_exact_for_awkward_sparsities() -> None:
    for sparsity in (0.1, 0.37, 0.5, 0.999):
        result = run_recipe(make_recipe({"prune": {"sparsity": sparsity, "allow_collapse": True}}))
        assert result.masks.kept() == kept_after(sparsity), sparsity


def test_prune_without_any_sparsity_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs a target sparsity"):
        run_recipe(make_recipe({"prune": {}}, sparsity=None))


def test_a_dense_recipe_has_no_masks() -> None:
    result = run_recipe(make_recipe({"train": {}}))
    assert result.masks is None and result.records == [] and result.final == {}


# -- determinism ------------------------------------------------------------------------------
def test_same_recipe_is_bit_identical_and_another_seed_differs() -> None:
    stages = (
        {"train": {}},
        {"prune": {"criterion": "random"}},
        {"reset": {"mode": "keep"}},
        {"train": {"iterations": 3}},
        {"evaluate": {}},
    )
    first, second = run_recipe(make_recipe(*stages)), run_recipe(make_recipe(*stages))
    other = run_recipe(make_recipe(*stages, seed=1))
    a, b, c = params(first.model), params(second.model), params(other.model)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert first.masks.equal(second.masks)
    assert first.records == second.records
    assert not first.masks.equal(other.masks)
    assert not any(torch.equal(a[n], c[n]) for n in a)


# -- repeat with an iterative schedule -------------------------------------------------------
def test_iterative_repeat_runs_log_levels_with_shrinking_masks(mask_log: list[MaskSet]) -> None:
    levels = math.ceil(math.log(1 - 0.8) / math.log(1 - 0.5))
    assert levels == 3
    result = run_recipe(
        make_recipe(
            {"train": {}},
            {
                "repeat": {
                    "schedule": {"name": "iterative", "rate": 0.5},
                    "stages": [{"prune": {}}, {"train": {"iterations": 2}}, {"evaluate": {"label": "level"}}],
                }
            },
        )
    )
    assert (
        [m.kept() for m in mask_log] == [kept_after(0.5), kept_after(0.75), kept_after(0.8)] == [184, 92, 74]
    )
    for inner, outer in zip(mask_log[1:], mask_log, strict=False):
        assert_subset(inner, outer)
    assert [(r["label"], r["level"]) for r in result.records] == [("level", 1), ("level", 2), ("level", 3)]
    assert result.records[-1]["sparsity"] == (368 - 74) / 368
    assert result.masks.equal(mask_log[-1])
    assert_pruned_weights_are_zero(result)


# -- gradual pruning --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("iterations", "schedule", "kept"),
    [
        # Updates at steps 2, 4, 6, 8, 10: s = 0.8·(1 - (1 - k/4)³) = 0, 0.4625, 0.7, 0.7875, 0.8,
        # so 368 - round(368·s) weights are kept.
        (12, {"start_step": 2, "end_step": 10, "frequency": 2}, [368, 198, 110, 78, 74]),
        # Updates at steps 0 (before training), 3, 6: s = 0.8 - 0.55·(1 - k/2)³ = 0.25, 0.73125, 0.8.
        (8, {"initial_sparsity": 0.25, "start_step": 0, "end_step": 6, "frequency": 3}, [276, 99, 74]),
    ],
)
def test_gradual_pruning_follows_the_cubic_schedule_to_the_exact_final_sparsity(
    mask_log: list[MaskSet], iterations: int, schedule: dict[str, Any], kept: list[int]
) -> None:
    result = run_recipe(
        make_recipe({"train": {"iterations": iterations, "prune": {"schedule": schedule}}}, {"evaluate": {}})
    )
    assert [m.kept() for m in mask_log] == kept
    for inner, outer in zip(mask_log[1:], mask_log, strict=False):
        assert_subset(inner, outer)
    assert result.masks.kept() == kept_after(0.8)
    assert result.records[-1]["nonzero_macs"] == 74
    assert_pruned_weights_are_zero(result)


# -- resets -----------------------------------------------------------------------------------
def test_rewind_to_step_zero_restores_the_initial_weights_on_survivors() -> None:
    trained = run_recipe(make_recipe({"train": {}}, {"prune": {}}))
    rewound = run_recipe(make_recipe({"train": {}}, {"prune": {}}, {"reset": {"mode": "rewind"}}))
    init = params(initial_model())
    after = params(rewound.model)
    assert rewound.masks.equal(trained.masks)
    for name, value in after.items():
        mask = rewound.masks[name] if name in rewound.masks else torch.ones_like(value, dtype=torch.bool)
        assert torch.equal(value, init[name] * mask), name  # exact, biases included
        assert not torch.equal(params(trained.model)[name], value), name  # training did move it


def test_rewind_to_step_k_restores_the_weights_saved_at_step_k() -> None:
    rewound = run_recipe(make_recipe({"train": {}}, {"prune": {}}, {"reset": {"mode": "rewind", "step": 2}}))
    two_steps = params(run_recipe(make_recipe({"train": {"iterations": 2}})).model)
    six_steps = params(run_recipe(make_recipe({"train": {}})).model)
    for name, value in params(rewound.model).items():
        mask = rewound.masks[name] if name in rewound.masks else torch.ones_like(value, dtype=torch.bool)
        assert torch.equal(value, two_steps[name] * mask), name
        assert not torch.equal(two_steps[name], six_steps[name]), name


def test_rewind_hands_the_step_k_optimizer_state_to_the_next_stage_with_its_own_lr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []
    original = pipeline_module.train

    def spy(*args: Any, **kwargs: Any) -> Any:
        given = kwargs.get("optimizer")
        before = None if given is None else copy.deepcopy(given.state_dict())
        result = original(*args, **kwargs)
        calls.append({"given": before, "result": result})
        return result

    monkeypatch.setattr(pipeline_module, "train", spy)
    run_recipe(make_recipe({"train": {"iterations": 2}}))
    at_step_2 = calls[0]["result"].optimizer_state["state"]
    calls.clear()
    run_recipe(
        make_recipe(
            {"train": {"optimizer": {"lr": 0.1, "momentum": 0.9}}},
            {"prune": {}},
            {"reset": {"mode": "rewind", "step": 2}},
            {"train": {"iterations": 1, "optimizer": {"lr": 0.003, "momentum": 0.5}}},
        )
    )
    assert calls[0]["given"] is None
    handed = calls[1]["given"]
    assert handed is not None
    assert sorted(handed["state"]) == sorted(at_step_2)
    for index, state in at_step_2.items():
        assert torch.equal(handed["state"][index]["momentum_buffer"], state["momentum_buffer"])
    group = handed["param_groups"][0]
    assert (group["lr"], group["momentum"]) == (0.003, 0.5)  # the stage's config, not the snapshot's
    assert calls[1]["result"].final["lr"] == 0.003


def test_rewind_into_another_optimizer_is_a_config_error() -> None:
    recipe = make_recipe(
        {"train": {}},
        {"prune": {}},
        {"reset": {"mode": "rewind", "step": 2}},
        {"train": {"iterations": 1, "optimizer": {"name": "adam", "lr": 0.01}}},
    )
    with pytest.raises(ConfigError, match=r"cannot rewind the optimizer state .* into a 'adam' optimizer"):
        run_recipe(recipe)


def test_rewind_beyond_the_first_training_stage_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:  # the error comes before any training is spent
        patch.setattr(pipeline_module, "train", lambda *a, **k: pytest.fail("trained before the check"))
        with pytest.raises(ConfigError, match=r"rewind step\(s\) \[7\] lie beyond the first training stage"):
            run_recipe(make_recipe({"train": {}}, {"prune": {}}, {"reset": {"mode": "rewind", "step": 7}}))
    last = run_recipe(make_recipe({"train": {}}, {"prune": {}}, {"reset": {"mode": "rewind", "step": 6}}))
    trained = run_recipe(make_recipe({"train": {}}, {"prune": {}}))
    assert all(
        torch.equal(a, b)
        for a, b in zip(params(last.model).values(), params(trained.model).values(), strict=True)
    )


def test_reinit_draws_new_surviving_weights_under_the_same_masks() -> None:
    stages = ({"train": {}}, {"prune": {}})
    trained = run_recipe(make_recipe(*stages))
    reinit = run_recipe(make_recipe(*stages, {"reset": {"mode": "reinit"}}))
    again = run_recipe(make_recipe(*stages, {"reset": {"mode": "reinit"}}))
    init = params(initial_model())
    assert reinit.masks.equal(trained.masks)
    assert_pruned_weights_are_zero(reinit)
    new, old = params(reinit.model), params(trained.model)
    for name in reinit.masks:
        survivors = reinit.masks[name]
        assert not torch.equal(new[name][survivors], old[name][survivors]), name
        assert not torch.equal(new[name][survivors], init[name][survivors]), name
        assert torch.count_nonzero(new[name][survivors]) == int(survivors.sum())
    assert all(torch.equal(new[n], params(again.model)[n]) for n in new)  # seeded


def test_keep_reset_changes_nothing() -> None:
    stages = ({"train": {}}, {"prune": {}})
    kept = run_recipe(make_recipe(*stages, {"reset": {"mode": "keep"}}))
    plain = run_recipe(make_recipe(*stages))
    assert all(
        torch.equal(a, b)
        for a, b in zip(params(kept.model).values(), params(plain.model).values(), strict=True)
    )


# -- data-dependent criteria ------------------------------------------------------------------
def test_taylor_prune_stage_scores_on_training_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    original = pipeline_module.compute_masks

    def spy(model: nn.Module, sparsity: float | None, **kwargs: Any) -> MaskSet:
        seen.append(kwargs)
        return original(model, sparsity, **kwargs)

    monkeypatch.setattr(pipeline_module, "compute_masks", spy)
    taylor = run_recipe(
        make_recipe(
            {"train": {}}, {"prune": {"criterion": "taylor", "data_batches": 2, "data_batch_size": 16}}
        )
    )
    (call,) = seen
    assert call["criterion"] == "taylor"
    assert [tuple(x.shape) for x, _ in call["data"]] == [(16, 20), (16, 20)]
    assert taylor.masks.kept() == kept_after(0.8)
    magnitude = run_recipe(make_recipe({"train": {}}, {"prune": {"criterion": "magnitude"}}))
    assert seen[1]["data"] is None  # data-free criteria get no batches
    assert not taylor.masks.equal(magnitude.masks)


# -- presets ----------------------------------------------------------------------------------
TINY_PRESET = [
    f"data={{name: synthetic, options: {DATA['options']}}}",
    "model={name: mlp, options: {hidden: [16]}}",
    "train.batch_size=32",
]


CHANNEL_PRESETS = ("trainability-preserving", "filter-merging")  # whole neurons: biases are masked too


def preset_kept(name: str, sparsity: float) -> int:
    """Weights a preset keeps on the tiny MLP: all layers at `sparsity`, except where a preset says."""
    if name == "lottery-ticket":  # layerwise; the classifier loses 10 % per level for 11 levels
        return kept_after(sparsity, 320) + kept_after(1 - 0.9**11, 48)
    if name in CHANNEL_PRESETS:  # half the hidden neurons go, their biases too; the 3 classes stay
        return kept_after(sparsity) + 8 + 3
    return kept_after(sparsity)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_runs_to_its_sparsity_on_tiny_data(name: str) -> None:
    # a network solved in closed form needs an invertible activation (the tiny MLP's is ReLU)
    invertible = ["model.options.activation=tanh"] if name.startswith("closed-form") else []
    recipe = load_recipe(name, [*TINY_PRESET, *invertible, *quick_overrides(name)])
    result = run_recipe(recipe)
    kept = preset_kept(name, recipe.sparsity)
    assert result.masks.kept() == kept
    total = 368 + (16 + 3 if name in CHANNEL_PRESETS else 0)  # the channel presets mask the biases
    assert result.records and result.final["sparsity"] == (total - kept) / total
    assert_pruned_weights_are_zero(result)


def test_evaluate_beyond_accuracy_compares_with_the_dense_parent() -> None:
    result = run_recipe(
        make_recipe(
            {"train": {}},
            {"evaluate": {"label": "dense", "beyond": True, "latency": False}},
            {"prune": {}},
            {"evaluate": {"label": "pruned", "beyond": True, "latency": False}},
        )
    )
    dense, pruned = result.records
    assert "agreement" not in dense  # nothing pruned yet: no parent to compare with
    assert {"ece", "acc@shifted_split", "jsv_mean"} <= set(dense)
    assert "latency_b1_ms" not in pruned
    assert 0.0 <= pruned["agreement"] <= 1.0 and "per_class_drop_max" in pruned
    assert any(k.startswith("excess_error@") for k in pruned)


def test_recipe_level_beyond_applies_to_every_evaluate_stage() -> None:
    plain = run_recipe(make_recipe({"train": {}}, {"evaluate": {}}))
    assert "ece" not in plain.records[0]
    result = run_recipe(make_recipe({"train": {}}, {"evaluate": {"latency": False}}, beyond=True))
    assert {"ece", "acc@shifted_split"} <= set(result.records[0]) and "latency_b1_ms" not in result.records[0]


def test_dense_parent_is_the_model_just_before_the_first_prune() -> None:
    pipeline = Pipeline(make_recipe({"train": {}}, {"prune": {}}, {"train": {}}))
    pipeline.run()
    parent = pipeline.dense_parent()
    trained = run_recipe(make_recipe({"train": {}})).model
    assert parent is not None and masks_of(parent) is None
    assert all(
        torch.equal(a, b) for a, b in zip(params(parent).values(), params(trained).values(), strict=True)
    )
