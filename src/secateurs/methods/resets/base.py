"""The reset axis: which weights the surviving connections start from after a prune step.

A reset is one class registered in `RESETS` with an options `schema` (the fields a `reset`
stage may carry beside `mode`) and `apply`, which changes the model in place and returns the
optimizer state the next training stage should start from (or None). Two class attributes let the
stage runner and the recipe treat resets generically: `snapshot_step` (a training step whose
weights the first training stage must save, for rewinding) and `replays_first_training` (the
next train stage must repeat the first one's optimizer and LR schedule, as LR rewinding does).
Masks are re-applied after every reset, so pruned weights stay exactly zero.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from secateurs.core.config import StrictModel
from secateurs.core.masks import masks_of
from secateurs.core.registry import Registry


@dataclass
class Snapshot:
    """Model state (weights and buffers) and optimizer state at one training step."""

    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None

    @classmethod
    def take(cls, model: nn.Module, step: int, optimizer: torch.optim.Optimizer | None = None) -> Snapshot:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
        return cls(step, state, opt)


class NoOptions(StrictModel):
    """A reset without options."""


class Reset:
    """Base of every reset: `apply` changes the model and returns the next optimizer state."""

    name: ClassVar[str] = ""
    schema: ClassVar[type[StrictModel]] = NoOptions
    replays_first_training: ClassVar[bool] = False

    def __init__(self, options: StrictModel | None = None) -> None:
        self.options = options if options is not None else self.schema()

    def snapshot_step(self, steps_per_epoch: int | None) -> int | None:
        """A step of the first training stage whose state this reset needs saved (None: none)."""
        return None

    def reset(
        self, model: nn.Module, *, snapshots: dict[int, Snapshot], seed: int, step: int | None
    ) -> dict[str, Any] | None:
        """Change `model` in place; the optimizer state to hand on (None: a fresh optimizer).

        `step` is `snapshot_step` resolved by the runner (None when the reset needs none).
        """
        return None

    def apply(
        self, model: nn.Module, *, snapshots: dict[int, Snapshot], seed: int = 0, step: int | None = None
    ) -> dict[str, Any] | None:
        """`reset`, then the model's masks re-applied (pruned weights stay exactly zero)."""
        with torch.no_grad():
            state = self.reset(model, snapshots=snapshots, seed=seed, step=step)
        masks = masks_of(model)
        if masks is not None:
            masks.apply(model)
        return state


RESETS: Registry[type[Reset]] = Registry("reset mode")


def build_reset(mode: str, **options: Any) -> Reset:
    """The registered reset `mode` with its options validated by its schema."""
    cls = RESETS.get(mode)
    return cls(cls.schema(**options))
