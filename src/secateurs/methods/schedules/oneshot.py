"""One-shot: prune once, straight to the target."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from secateurs.core.errors import ConfigError
from secateurs.methods.allocations import check_sparsity
from secateurs.methods.schedules.base import SCHEDULES, LevelSchedule


@SCHEDULES.register("oneshot")
class OneShot(LevelSchedule):
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
