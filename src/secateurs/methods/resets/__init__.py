"""Resets registry: importing this package registers every built-in reset.

- keep: continue from the pruned weights (finetuning, PaT); lr_rewind: the same weights, a fresh
  optimizer, and the next stage replays the first training's LR schedule (Renda et al. 2020).
- rewind: the weights and optimizer state saved at step (or epoch) k of the first training stage.
- reinit: fresh initial weights, same masks. orthp: the pruned weights made orthogonal (OrthP).

A new reset is one file here (a `Reset` registered in `RESETS`) and one import below.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from secateurs.methods.resets import keep, orthp, reinit, rewind  # noqa: F401  (registration)
from secateurs.methods.resets.base import RESETS, NoOptions, Reset, Snapshot, build_reset

__all__ = ["RESETS", "NoOptions", "Reset", "Snapshot", "apply_reset", "build_reset"]


def apply_reset(
    model: nn.Module, mode: str, *, snapshots: dict[int, Snapshot], step: int = 0, seed: int = 0
) -> dict[str, Any] | None:
    """Reset `model` in place with reset `mode`; return the optimizer state the next training starts from.

    `step` is the rewind target (only `rewind` uses it).
    """
    return RESETS.get(mode)().apply(model, snapshots=snapshots, seed=seed, step=step)
