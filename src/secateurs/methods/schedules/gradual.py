"""Gradual (Zhu & Gupta 2017): the cubic step schedule of pruning during training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError
from secateurs.methods.allocations import check_sparsity
from secateurs.methods.schedules.base import STEP_SCHEDULES


@STEP_SCHEDULES.register("gradual")
class Gradual(StrictModel):
    """Zhu & Gupta (2017) cubic schedule, applied every `frequency` steps during training.

    s_t = s_f + (s_i − s_f)·(1 − (t − t0)/(t1 − t0))³ for t = t0, t0 + Δt, …, t1, where t1 is the
    last update step; after t1 the sparsity stays s_f. Steps count optimizer steps within the
    training stage. `start_epoch`/`end_epoch` may replace the step bounds.
    """

    name: Literal["gradual"] = "gradual"
    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    sparsity: float | None = Field(None, ge=0, lt=1)
    start_step: int | None = Field(None, ge=0)
    end_step: int | None = Field(None, ge=0)
    start_epoch: float | None = Field(None, ge=0)
    end_epoch: float | None = Field(None, ge=0)
    frequency: int = Field(100, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> Gradual:
        if self.start_step is not None and self.start_epoch is not None:
            raise ValueError("give start_step or start_epoch, not both")
        if self.end_step is not None and self.end_epoch is not None:
            raise ValueError("give end_step or end_epoch, not both")
        return self

    def resolve(self, steps_per_epoch: int, total_steps: int, default: float | None = None) -> CubicSteps:
        """Concrete step bounds for a training stage (end defaults to 75 % of training)."""
        t0 = (
            self.start_step
            if self.start_step is not None
            else round((self.start_epoch or 0.0) * steps_per_epoch)
        )
        if self.end_step is not None:
            t1 = self.end_step
        elif self.end_epoch is not None:
            t1 = round(self.end_epoch * steps_per_epoch)
        else:
            t1 = round(0.75 * total_steps)
        target = self.sparsity if self.sparsity is not None else default
        if target is None:
            raise ConfigError("the gradual schedule needs a final sparsity", fix="set its `sparsity`")
        check_sparsity(target)
        if t1 < t0:
            raise ConfigError(
                f"the gradual schedule ends (step {t1}) before it starts (step {t0})",
                fix="make the end step/epoch at least the start step/epoch",
            )
        if t1 > total_steps:
            raise ConfigError(
                f"the gradual schedule ends at step {t1}, after the training stage's last step "
                f"{total_steps}, so the final sparsity would never be reached",
                fix="lower end_step/end_epoch or train longer",
            )
        if self.initial_sparsity > target:
            raise ConfigError(
                f"initial_sparsity {self.initial_sparsity} exceeds the final sparsity {target}",
                fix="sparsity only grows: lower initial_sparsity",
            )
        return CubicSteps(self.initial_sparsity, target, t0, t1, self.frequency)


class CubicSteps:
    """A resolved cubic schedule over concrete steps."""

    def __init__(self, initial: float, final: float, start: int, end: int, frequency: int) -> None:
        self.initial, self.final, self.start, self.frequency = initial, final, start, frequency
        self.n = max((end - start) // frequency, 0)
        self.end = start + self.n * frequency

    def sparsity_at(self, step: int) -> float:
        if step < self.start:
            return 0.0
        if self.n == 0 or step >= self.end:
            return self.final
        progress = (step - self.start) / (self.n * self.frequency)
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3

    def is_update_step(self, step: int) -> bool:
        return self.start <= step <= self.end and (step - self.start) % self.frequency == 0

    def update_steps(self) -> list[int]:
        return [self.start + k * self.frequency for k in range(self.n + 1)]
