"""`train.shuffle: false`: the natural batch order every epoch (the MNIST-1D paper's loop)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import secateurs
from secateurs.core.errors import ConfigError
from secateurs.pipeline.hashing import run_hash
from secateurs.pipeline.recipe import recipe_from_raw

BATCH, STEPS, LR = 4, 6, 0.1  # 6 steps over 12 samples: two epochs of three batches


def recipe(**train: Any) -> dict[str, Any]:
    return {
        "name": "order",
        "model": {"name": "mlp", "options": {"hidden": []}},
        "data": "synthetic",
        "train": {
            "iterations": STEPS,
            "batch_size": BATCH,
            "optimizer": {"name": "sgd", "lr": LR, "momentum": 0},
            **train,
        },
        "stages": [{"train": {}}],
    }


def natural_order_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """Plain SGD on x[0:4], x[4:8], x[8:12], then the same batches again."""
    model = copy.deepcopy(model)
    for step in range(STEPS):
        start = (step * BATCH) % len(x)
        model.zero_grad()
        F.cross_entropy(model(x[start : start + BATCH]), y[start : start + BATCH]).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= LR * p.grad
    return model


@pytest.fixture
def problem() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 5, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    return nn.Sequential(nn.Linear(5, 3)), (x, y), (x[:6].clone(), y[:6].clone())


def test_unshuffled_training_reads_the_batches_in_their_natural_order(problem: Any) -> None:
    model, train, test = problem
    expected = natural_order_sgd(model, *train)
    ran = secateurs.run(recipe(shuffle=False), model=model, data=(train, test)).model
    for a, b in zip(ran.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    shuffled = secateurs.run(recipe(), model=model, data=(train, test)).model
    assert not torch.allclose(next(shuffled.parameters()), next(expected.parameters()))


def test_unshuffled_runs_are_stored_apart_and_a_bad_value_is_refused() -> None:
    def name(raw: dict[str, Any]) -> str:
        return run_hash(recipe_from_raw(raw))

    assert name(recipe()) != name(recipe(shuffle=False))
    with pytest.raises(ConfigError, match="shuffle"):
        recipe_from_raw(recipe(shuffle="sometimes"))
