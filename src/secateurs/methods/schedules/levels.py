"""Levels: prune to each listed sparsity in turn."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from secateurs.methods.allocations import check_sparsity
from secateurs.methods.schedules.base import SCHEDULES, LevelSchedule


@SCHEDULES.register("levels")
class Levels(LevelSchedule):
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
