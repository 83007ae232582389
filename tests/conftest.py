"""Shared test set-up: one thread per test process (steadier on a shared 2-core machine)."""

import os

import pytest
import torch

from secateurs.core.masks import MaskSet
from secateurs.pipeline.runner import Pipeline

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never write to the user's cache; MNIST-1D is generated once per session directory."""
    if "SECATEURS_CACHE" not in os.environ:
        monkeypatch.setenv("SECATEURS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def mask_log(monkeypatch: pytest.MonkeyPatch) -> list[MaskSet]:
    """Every mask set a pipeline installs on its model by pruning, in order."""
    log: list[MaskSet] = []
    original = Pipeline._set_masks

    def spy(self: Pipeline, masks: MaskSet) -> MaskSet:
        log.append(masks)
        return original(self, masks)

    monkeypatch.setattr(Pipeline, "_set_masks", spy)
    return log
