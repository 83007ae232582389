"""The tiny experiment many tests share: a 20-16-3 MLP on synthetic data, a few steps of training."""

from __future__ import annotations

import copy
from typing import Any

TINY_DATA: dict[str, Any] = {
    "name": "synthetic",
    "options": {"input_shape": [20], "num_classes": 3, "num_train": 96, "num_test": 48},
}
TINY_MODEL: dict[str, Any] = {"name": "mlp", "options": {"hidden": [16]}}


def tiny_recipe(*stages: dict[str, Any], iterations: int = 3, **fields: Any) -> dict[str, Any]:
    """Raw recipe data, a fresh copy each call; by default: train, prune to 0.5, evaluate."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "data": copy.deepcopy(TINY_DATA),
        "model": copy.deepcopy(TINY_MODEL),
        "sparsity": 0.5,
        "train": {"iterations": iterations, "batch_size": 32},
        "stages": list(stages) or [{"train": {}}, {"prune": {}}, {"evaluate": {"label": "final"}}],
    }
    raw.update(fields)
    return raw
