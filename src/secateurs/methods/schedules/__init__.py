"""Schedules: the target sparsity as a function of pruning level or training step.

A level schedule (one-shot, iterative) answers "what sparsity after level l?"; a step schedule
(gradual cubic) answers "is step t a pruning step, and to what sparsity?". Both are plain,
validated configs so they appear in recipes and hash the same way everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field, model_validator

from secateurs.core.errors import ConfigError
from secateurs.methods.allocations import check_sparsity
from secateurs.train.config import StrictModel


@dataclass(frozen=True)
class LevelTarget:
    """What one level of a repeat prunes to.

    `sparsity` is the target of the level's prune stages; `layer_sparsities` (name pattern →
    sparsity) gives some layers a target of their own (see `secateurs.methods.allocations.allocate`).
    """

    sparsity: float | None
    layer_sparsities: dict[str, float] = field(default_factory=dict)


class _LevelSchedule(StrictModel):
    """A schedule of sparsity per level; `targets` adds the per-layer overrides of each level."""

    def levels(self, default: float | None = None) -> list[float]:  # pragma: no cover - overridden
        raise NotImplementedError

    def targets(self, default: float | None = None) -> list[LevelTarget]:
        return [LevelTarget(s) for s in self.levels(default)]


class OneShot(_LevelSchedule):
    """Prune once, straight to the target."""

    name: Literal["oneshot"] = "oneshot"
    sparsity: float | None = Field(None, ge=0, lt=1)

    def levels(self, default: float | None = None) -> list[float]:
        target = self.sparsity if self.sparsity is not None else default
        if target is None:
            raise ConfigError(
                "the one-shot schedule needs a sparsity", fix="set the schedule's or the recipe's `sparsity`"
            )
        return [check_sparsity(target)]


class Iterative(_LevelSchedule):
    """Remove a fixed fraction `rate` of the surviving weights per level.

    Sparsity after level l is 1 − (1 − rate)^l. Give either `levels` (how many), or a target
    `sparsity`: then levels continue until the target is reached and the last one stops
    exactly at it.

    `layer_rates` (name pattern → rate r') prunes matching layers at their own rate: after
    level l such a layer has sparsity 1 − (1 − r')^l, so it keeps n − round_half_up((1 − (1 − r')^l)·n)
    of its n weights, at every level including a last level cut short to reach the target
    (the lottery ticket's output layer at 10 % per level while the others lose 20 %). The
    target `sparsity` is then that of the other layers; the whole network ends less sparse.
    Prune stages of the repeat that set their own `sparsity` do not use the level's targets.
    """

    name: Literal["iterative"] = "iterative"
    rate: float = Field(0.2, gt=0, lt=1)
    levels_: int | None = Field(None, gt=0, alias="levels")
    sparsity: float | None = Field(None, ge=0, lt=1)
    layer_rates: dict[str, float] = Field(
        default_factory=dict, description="name pattern -> its own rate per level (e.g. {classifier: 0.1})"
    )

    model_config = StrictModel.model_config | {"populate_by_name": True}

    @model_validator(mode="after")
    def _one_stop(self) -> Iterative:
        if self.levels_ is not None and self.sparsity is not None:
            raise ValueError("give the iterative schedule `levels` or a target `sparsity`, not both")
        bad = {p: r for p, r in self.layer_rates.items() if not 0 < r < 1}
        if bad:
            raise ValueError(f"layer_rates must lie strictly between 0 and 1, got {bad}")
        return self

    def targets(self, default: float | None = None) -> list[LevelTarget]:
        return [
            LevelTarget(s, {p: 1.0 - (1.0 - r) ** level for p, r in self.layer_rates.items()})
            for level, s in enumerate(self.levels(default), start=1)
        ]

    def levels(self, default: float | None = None) -> list[float]:
        if self.levels_ is not None:
            return [1.0 - (1.0 - self.rate) ** level for level in range(1, self.levels_ + 1)]
        target = self.sparsity if self.sparsity is not None else default
        if target is None:
            raise ConfigError(
                "the iterative schedule needs `levels` or a target `sparsity`",
                fix="set `levels`, or the schedule's or the recipe's `sparsity`",
            )
        check_sparsity(target)
        if target == 0:
            return [0.0]
        count = math.ceil(math.log(1.0 - target) / math.log(1.0 - self.rate) - 1e-9)
        out = [1.0 - (1.0 - self.rate) ** level for level in range(1, count)]
        return [*out, target]


class Levels(_LevelSchedule):
    """Prune to each listed sparsity in turn (an iterative schedule with hand-picked levels)."""

    name: Literal["levels"] = "levels"
    sparsities: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _increasing(self) -> Levels:
        for s in self.sparsities:
            check_sparsity(s, where="levels schedule sparsity")
        if any(b <= a for a, b in zip(self.sparsities, self.sparsities[1:], strict=False)):
            raise ValueError(f"levels must increase strictly, got {self.sparsities}")
        return self

    def levels(self, default: float | None = None) -> list[float]:
        return list(self.sparsities)


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


LevelSchedule = Annotated[OneShot | Iterative | Levels, Field(discriminator="name")]
SCHEDULE_NAMES = {"oneshot": OneShot, "iterative": Iterative, "levels": Levels, "gradual": Gradual}
