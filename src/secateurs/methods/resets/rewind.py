"""Rewind: restore the weights (and optimizer state) saved at step k of the first training stage.

k = 0 is the initialisation, as in the lottery ticket hypothesis (Frankle & Carbin 2019); an
early k is what makes tickets work on deeper networks (Frankle et al. 2020). The target is
`step`, or `epoch` (rounded to a step with the first training stage's batches per epoch). The
optimizer state saved at k (momentum, Adam moments and step counters) is handed to the next
training stage, whose LR schedule starts afresh.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import Field, model_validator
from torch import nn

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError
from secateurs.methods.resets.base import RESETS, Reset, Snapshot


class RewindTarget(StrictModel):
    """Where a rewind goes back to."""

    step: int = Field(0, ge=0, description="rewind target: optimizer step of the first training stage")
    epoch: float | None = Field(
        None, ge=0, description="rewind target in epochs of the first training stage (instead of step)"
    )

    @model_validator(mode="after")
    def _one_target(self) -> RewindTarget:
        if self.step != 0 and self.epoch is not None:
            raise ValueError("give the rewind target as `step` or as `epoch`, not both")
        return self


@RESETS.register(
    "rewind", "restore weights (and optimizer state) saved at step or epoch k; k = 0 is the init"
)
class Rewind(Reset):
    name = "rewind"
    schema = RewindTarget

    def snapshot_step(self, steps_per_epoch: int | None) -> int | None:
        target: RewindTarget = self.options  # type: ignore[assignment]
        if target.epoch is None:
            return target.step
        if steps_per_epoch is None:
            raise ConfigError(
                f"rewind to epoch {target.epoch} needs a training stage to count epochs in",
                fix="add a train stage before the rewind, or rewind to step 0",
            )
        return round(target.epoch * steps_per_epoch)

    def reset(
        self, model: nn.Module, *, snapshots: dict[int, Snapshot], seed: int, step: int | None
    ) -> dict[str, Any] | None:
        step = self.options.step if step is None else step  # type: ignore[attr-defined]
        if step not in snapshots:
            saved = ", ".join(map(str, sorted(snapshots))) or "none"
            raise ConfigError(
                f"no snapshot at training step {step} to rewind to (saved steps: {saved})",
                fix="rewind to a step within the first training stage",
            )
        snap = snapshots[step]
        model.load_state_dict(snap.model_state)
        return copy.deepcopy(snap.optimizer_state) if snap.optimizer_state else None
