"""A run killed right after a stage, before that stage's state reached disk, and the run that
resumes it: what every stage's resume test does (training methods, ensembles, regularization)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from secateurs.pipeline.runner import Pipeline


class Killed(RuntimeError):
    """The simulated crash."""


def resumed_after_crash(
    make_recipe: Callable[[], Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_stage: int
) -> Pipeline:
    """The pipeline that resumes a run of `make_recipe()` in `tmp_path` killed once stage
    `crash_stage` had run but before its state was saved; checked to resume after the stage before."""
    original = Pipeline._save_state

    def save_then_maybe_crash(self: Pipeline) -> None:
        if self.counter == crash_stage:
            raise Killed("killed")
        original(self)

    with monkeypatch.context() as patch:
        patch.setattr(Pipeline, "_save_state", save_then_maybe_crash)
        with pytest.raises(Killed):
            Pipeline(make_recipe(), workdir=tmp_path).run()
    resumed = Pipeline(make_recipe(), workdir=tmp_path)
    assert resumed.resumed_from == crash_stage - 1
    return resumed


def assert_same_run(result: Any, clean: Any) -> None:
    """Masks, records and every tensor of the model equal, bit for bit."""
    assert result.masks.equal(clean.masks) and result.records == clean.records
    for (name, a), b in zip(
        result.model.state_dict().items(), clean.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
