"""Iterative: remove a fixed fraction of the surviving weights per level (lottery tickets)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError
from secateurs.methods.allocations import check_sparsity
from secateurs.methods.schedules.base import SCHEDULES, LevelSchedule, LevelTarget


@SCHEDULES.register("iterative")
class Iterative(LevelSchedule):
    """Remove a fixed fraction `rate` of the surviving weights per level.

    Sparsity after level l is 1 − (1 − rate)^l. Give either `levels` (how many), or a target
    `sparsity`: then levels continue until the target is reached and the last one stops
    exactly at it.

    `layer_rates` (name pattern → rate r') prunes matching layers at their own rate: after
    level l such a layer has sparsity 1 − (1 − r')^l, so it keeps n − removed_count((1 − (1 − r')^l)·n)
    of its n weights (the removed count rounded by the prune stage's `rounding`,
    `secateurs.core.sparsity`), at every level including a last level cut short to reach the target
    (the lottery ticket's output layer at 10 % per level while the others lose 20 %). The
    target `sparsity` is then that of the other layers; the whole network ends less sparse.
    Prune stages of the repeat that set their own `sparsity` do not use the level's targets.
    """

    name: Literal["iterative"] = "iterative"
    rate: float = Field(0.2, gt=0, lt=1)
    levels_: int | None = Field(None, gt=0, alias="levels")
    sparsity: float | None = Field(None, ge=0, lt=1)
    layer_rates: dict[str, float] = Field(
        default_factory=dict,
        description="name pattern -> its own rate per level (e.g. {classifier: 0.1}, or {$last: 0.1})",
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
