"""Reinit: fresh random weights under the same masks (the lottery ticket's "random reinit" control)."""

from __future__ import annotations

from typing import Any

from torch import nn

from secateurs.methods.resets.base import RESETS, Reset, Snapshot
from secateurs.models import reinitialize


@RESETS.register("reinit", "fresh random weights under the same masks")
class Reinit(Reset):
    name = "reinit"

    def reset(
        self, model: nn.Module, *, snapshots: dict[int, Snapshot], seed: int, step: int | None
    ) -> dict[str, Any] | None:
        reinitialize(model, seed=seed)
        return None
