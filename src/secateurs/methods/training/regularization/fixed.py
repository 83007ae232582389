"""Fixed penalty: penalise the groups chosen for removal with a constant coefficient, then prune.

The prune step (criterion × allocation × structure at the stage's sparsity; L1 magnitude by
default, as in the authors' code) picks the groups at the start of the stage; each of them gets
the coefficient `strength` of the chosen penalty (L2, L1 or group lasso) for `steps` optimizer
steps (the whole stage when unset); then the picked set is pruned and the rest of the stage
finetunes with the mask (or the next train stage does). The authors' FixReg baseline (Wang et al.
2021) is `penalty: l2, strength: 1e-4` for 10000 steps.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from secateurs.methods.training.base import TRAINING
from secateurs.methods.training.regularization.base import (
    RegularizationMethod,
    RegularizationSpec,
    RegularizedPruning,
)
from secateurs.train.engine import TrainState


class FixedPenaltySpec(RegularizationSpec):
    """The `reg_fixed` block of a train stage."""

    strength: float = Field(1e-4, gt=0, description="the penalty's coefficient on every picked group")
    steps: int | None = Field(
        10000, gt=0, description="steps penalised before the prune; null: the whole stage (prune at its end)"
    )


class FixedPenalty(RegularizedPruning):
    """A constant coefficient on the picked groups for `steps` steps."""

    spec: FixedPenaltySpec

    def start(self, state: TrainState) -> None:
        self.pick()

    def update(self, step: int) -> None:
        assert self.picked is not None
        self.coefficients = self.picked.float() * self.spec.strength

    def on_step_end(self, state: TrainState) -> None:
        if self.phase == "grow" and self.spec.steps is not None and state.step >= self.spec.steps:
            self.finish(state.step, "steps")
        super().on_step_end(state)


@TRAINING.register(
    "reg_fixed", "a fixed penalty (l2, l1, group_lasso) on the groups picked for removal, then prune"
)
class FixedPenaltyMethod(RegularizationMethod):
    name = "reg_fixed"
    schema: ClassVar[type] = FixedPenaltySpec
    schedule = FixedPenalty
