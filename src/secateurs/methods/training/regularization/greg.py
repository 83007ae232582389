"""Growing regularization (Wang et al., ICLR 2021): GReg-1 and GReg-2.

GReg-1 (`greg1`). The prune step (L1 magnitude by default) picks the groups to remove at the
start of the stage. Every `interval` steps (the first update at the start) the coefficient of the
picked groups grows by `delta`: after k updates it is min(k·δ, ceiling). Per unit (a layer for
channels, a parameter for element structures) growth stops when its coefficient reaches
`ceiling`, or by the magnitude ratio: the mean over kept groups of mean |w_g| divided by that
over picked groups, smoothed as r ← m·r + (1 − m)·ratio (m = `ratio_momentum`), passing
`ratio_limit` — with `stop: all` (GReg-1's default, the authors' rule) every unit stops once all
units' ratios have passed it, with `stop: each` (GReg-2's, as the authors' GReg-2) a unit stops
as soon as its own has. When every unit has stopped, the coefficients are held `stabilize` steps, then
the picked set is pruned (its weights are near zero by then, so removing them costs little) and
the rest of the stage finetunes with the mask.

GReg-2 (`greg2`). First a uniform coefficient grows on every group, by `pick_delta` per update,
so that groups' magnitudes separate by their local curvature (a flat direction shrinks faster);
when it reaches `pick_ceiling` the prune step picks the set (by magnitude, now), the picked
groups' coefficient keeps growing by `delta` per update from there (pick_ceiling + j·δ) and the
kept groups' coefficient is set to `recover` (the authors' −1e-4 lets them regrow slightly);
then as GReg-1.

Defaults are the authors' CIFAR settings (their code: update every 5 steps, δ = 1e-4, ceiling 1,
ratio limit 1000 with momentum 0.9, 5000 stabilizing steps, picking δ = 1e-5 up to 1e-2, recover
−1e-4); small runs take a larger δ.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from secateurs.methods.training.base import TRAINING
from secateurs.methods.training.regularization.base import (
    RegularizationMethod,
    RegularizationSpec,
    RegularizedPruning,
)
from secateurs.train.engine import TrainState


class GrowingSpec(RegularizationSpec):
    """The `greg1` block of a train stage."""

    interval: int = Field(5, gt=0, description="optimizer steps between coefficient updates")
    stabilize: int = Field(5000, ge=0, description="steps the coefficients are held before the prune")
    delta: float = Field(1e-4, gt=0, description="growth of the picked groups' coefficient per update")
    ceiling: float = Field(1.0, gt=0, description="the coefficient stops growing here")
    ratio_limit: float = Field(
        1000.0, gt=1, description="stop growing when the kept/pruned magnitude ratio passes this"
    )
    ratio_momentum: float = Field(0.9, ge=0, lt=1, description="smoothing of the magnitude ratio")
    stop: Literal["all", "each"] = Field(
        "all",
        description="by the ratio, units stop together once all passed the limit (all) or each on its own",
    )


class GrowingPickSpec(GrowingSpec):
    """The `greg2` block of a train stage."""

    stop: Literal["all", "each"] = Field(
        "each",
        description="by the ratio, units stop together once all passed the limit (all) or each on its own",
    )
    pick_delta: float = Field(1e-5, gt=0, description="growth of the uniform coefficient per update")
    pick_ceiling: float = Field(
        1e-2, gt=0, description="pick the set when the uniform coefficient reaches this"
    )
    recover: float = Field(-1e-4, description="the kept groups' coefficient after picking")

    @model_validator(mode="after")
    def _pick_below_ceiling(self) -> GrowingPickSpec:
        if self.pick_ceiling >= self.ceiling:
            raise ValueError(
                f"pick_ceiling ({self.pick_ceiling}) must be below ceiling ({self.ceiling}): the picked "
                "groups' coefficient grows on from it"
            )
        if self.pick_delta > self.pick_ceiling:
            raise ValueError(
                f"pick_delta ({self.pick_delta}) is larger than pick_ceiling ({self.pick_ceiling})"
            )
        return self


def grown(count: int, delta: float, ceiling: float, start: float = 0.0) -> float:
    """start + count·δ, capped at the ceiling (computed from the count: no rounding drift)."""
    return min(start + count * delta, ceiling)


class GrowingRegularization(RegularizedPruning):
    """GReg-1: pick at the start, grow the picked groups' coefficient per unit until the rule."""

    spec: GrowingSpec

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grown: Tensor | None = None  # per unit: updates its picked groups' coefficient grew
        self.active = torch.zeros(0, dtype=torch.bool)  # per unit: still growing
        self.base = 0.0  # the picked groups' coefficient before growth (GReg-2: the picking ceiling)

    def start(self, state: TrainState) -> None:
        self.pick()
        self._begin_growth()

    def _begin_growth(self) -> None:
        assert self.groups is not None and self.picked is not None
        self.grown = torch.zeros(len(self.groups.units), dtype=torch.int64)
        self.active = torch.ones(len(self.groups.units), dtype=torch.bool)
        picks = torch.zeros(len(self.groups.units), device=self.groups.device).index_add_(
            0, self.groups.unit_of, self.picked.float()
        )
        self.active &= (picks > 0).cpu()  # a unit picking nothing has nothing to grow

    def kept_coefficient(self) -> float:
        return 0.0

    def update(self, step: int) -> None:
        self.grow(step)

    def grow(self, step: int) -> None:
        """One growth update of the picked groups, then the stopping rule per unit."""
        assert self.groups is not None and self.picked is not None and self.grown is not None
        spec = self.spec
        self.grown += self.active.long()
        values = torch.tensor(
            [grown(int(k), spec.delta, spec.ceiling, self.base) for k in self.grown.tolist()],
            device=self.groups.device,
        )
        per_group = values[self.groups.unit_of]
        self.coefficients = torch.where(self.picked, per_group, self.kept_coefficient())
        ratio = self.magnitude_ratio(spec.ratio_momentum).cpu()
        at_ceiling = values.cpu() >= spec.ceiling
        passed = ratio >= spec.ratio_limit
        if spec.stop == "all":
            passed = passed.all().expand_as(passed)
        self.active &= ~(passed | at_ceiling)
        if not bool(self.active.any()):
            self.finish(step, "ceiling" if bool(at_ceiling.any()) else "ratio")

    def units_done(self) -> int:
        return int((~self.active).sum()) if self.grown is not None else 0

    def extra_state(self) -> dict[str, Any]:
        return {
            "grown": None if self.grown is None else self.grown.clone(),
            "active": None if self.grown is None else self.active.clone(),
            "base": self.base,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.grown, self.base = state.get("grown"), float(state.get("base", 0.0))
        if state.get("active") is not None:
            self.active = state["active"]


class GrowingPick(GrowingRegularization):
    """GReg-2: a uniform growing coefficient until the picking ceiling, then pick and GReg-1."""

    spec: GrowingPickSpec

    def start(self, state: TrainState) -> None:
        self.phase = "pick"
        self.picking = 0

    def update(self, step: int) -> None:
        spec = self.spec
        if self.phase != "pick":
            self.grow(step)
            return
        assert self.groups is not None
        self.picking += 1
        value = grown(self.picking, spec.pick_delta, spec.pick_ceiling)
        self.coefficients = torch.full((self.groups.num_groups,), value, device=self.groups.device)
        if value >= spec.pick_ceiling:
            self.pick()
            self.base = spec.pick_ceiling
            self._begin_growth()
            self.phase = "grow"

    def kept_coefficient(self) -> float:
        return self.spec.recover

    def on_step_end(self, state: TrainState) -> None:
        if self.phase == "pick" and state.step % self.spec.interval == 0:
            self._update(state.step)
            return
        super().on_step_end(state)

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "picking": self.picking}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.picking = int(state.get("picking", 0))


@TRAINING.register(
    "greg1", "growing regularization GReg-1: an L2 penalty on the picked groups grows until they are ~0"
)
class GReg1Method(RegularizationMethod):
    name = "greg1"
    schema: ClassVar[type] = GrowingSpec
    schedule = GrowingRegularization


@TRAINING.register(
    "greg2", "growing regularization GReg-2: a uniform growing penalty picks the set, then GReg-1 on it"
)
class GReg2Method(RegularizationMethod):
    name = "greg2"
    schema: ClassVar[type] = GrowingPickSpec
    schedule = GrowingPick
