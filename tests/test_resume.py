"""A pipeline with a working directory resumes after its last completed stage, bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import secateurs.pipeline.runner as pipeline_module
from secateurs.core.errors import CheckpointError
from secateurs.pipeline.recipe import Recipe, recipe_from_raw
from secateurs.pipeline.runner import STATE_FILE, MetricEvent, Pipeline, run_recipe

STAGES: list[dict[str, Any]] = [
    {"train": {}},
    {"evaluate": {"label": "dense"}},
    {
        "repeat": {
            "schedule": {"name": "iterative", "rate": 0.5},
            "stages": [
                {"prune": {"criterion": "taylor"}},
                {"reset": {"mode": "rewind", "step": 2}},
                {"train": {"iterations": 4}},
                {"evaluate": {"label": "level"}},
            ],
        }
    },
]


def imp_recipe(seed: int = 0) -> Recipe:
    return recipe_from_raw(
        {
            "name": "resume",
            "seed": seed,
            "data": {
                "name": "synthetic",
                "options": {"input_shape": [20], "num_classes": 3, "num_train": 96, "num_test": 48},
            },
            "model": {"name": "mlp", "options": {"hidden": [16]}},
            "sparsity": 0.8,
            "train": {"iterations": 6, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}},
            "stages": STAGES,
        }
    )


class Crash(Exception):
    """Stands in for a kill in the middle of a run."""


def crash_at(monkeypatch: pytest.MonkeyPatch, stage_number: int) -> None:
    original = Pipeline._save_state

    def save_then_maybe_crash(self: Pipeline) -> None:
        if self.counter == stage_number:
            raise Crash  # the stage ran but its state was never saved: it must be redone
        original(self)

    monkeypatch.setattr(Pipeline, "_save_state", save_then_maybe_crash)


def assert_same(a: pipeline_module.RunResult, b: pipeline_module.RunResult) -> None:
    for (na, pa), (nb, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb), na
    assert a.masks is not None and b.masks is not None and a.masks.equal(b.masks)
    assert a.records == b.records


@pytest.mark.parametrize("crash_stage", [2, 5, 6, 10])  # dense eval; the rewind; the train after it; level 2
def test_resumed_run_equals_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_stage: int
) -> None:
    clean = run_recipe(imp_recipe())
    with monkeypatch.context() as patch:
        crash_at(patch, crash_stage)
        with pytest.raises(Crash):
            run_recipe(imp_recipe(), workdir=tmp_path)
    assert (tmp_path / STATE_FILE).is_file()
    resumed = Pipeline(imp_recipe(), workdir=tmp_path)
    assert resumed.resumed_from == crash_stage - 1
    assert_same(resumed.run(), clean)


def test_resume_skips_finished_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_recipe(imp_recipe(), workdir=tmp_path)
    trained: list[str] = []
    original = pipeline_module.train
    monkeypatch.setattr(pipeline_module, "train", lambda *a, **k: trained.append("x") or original(*a, **k))
    pipeline = Pipeline(imp_recipe(), workdir=tmp_path)
    result = pipeline.run()
    assert trained == []  # everything was restored, nothing retrained
    assert pipeline.resumed_from == pipeline.counter
    assert [r["label"] for r in result.records] == ["dense", "level", "level", "level"]


def test_state_of_another_recipe_is_refused(tmp_path: Path) -> None:
    run_recipe(imp_recipe(), workdir=tmp_path)
    with pytest.raises(CheckpointError, match="written by a different recipe"):
        Pipeline(imp_recipe(seed=1), workdir=tmp_path)


def test_metric_events_name_stage_level_and_step() -> None:
    events: list[MetricEvent] = []
    result = run_recipe(imp_recipe(), on_metrics=events.append)
    evaluations = [e for e in events if e.kind == "evaluate"]
    assert [e.metrics["accuracy"] for e in evaluations] == [r["accuracy"] for r in result.records]
    assert [(e.stage, e.level) for e in evaluations] == [(2, None), (7, 1), (11, 2), (15, 3)]
    training = [e for e in events if e.kind == "train"]
    # 96 samples / batch 32 = 3 steps per epoch: the 6-step stage evaluates after steps 3 and 6
    assert [(e.stage, e.step) for e in training if e.stage == 1] == [(1, 3), (1, 6)]
    assert all(e.step is None for e in evaluations)
    assert all(isinstance(v, float) for e in events for v in e.metrics.values())
