"""OrthP (Wang et al. 2021): make every masked weight matrix (semi-)orthogonal under its mask.

Keeps the pruned weights' positions and restores the dynamical isometry pruning broke; masked
biases are left as they are.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import masks_of
from secateurs.eval.isometry import orthogonalize_
from secateurs.methods.resets.base import RESETS, Reset, Snapshot


@RESETS.register("orthp", "keep the pruned weights, made (semi-)orthogonal under their masks (OrthP)")
class OrthP(Reset):
    name = "orthp"

    def reset(
        self, model: nn.Module, *, snapshots: dict[int, Snapshot], seed: int, step: int | None
    ) -> dict[str, Any] | None:
        masks = masks_of(model)
        if masks is None:
            raise ConfigError(
                "the orthp reset needs a pruned model, but this model has no masks",
                fix="put a prune stage before the orthp reset",
            )
        params = dict(model.named_parameters())
        for name, mask in masks.items():
            if params[name].dim() >= 2:
                orthogonalize_(params[name], mask)
        return None
