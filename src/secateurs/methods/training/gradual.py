"""Gradual pruning: prune to a cubic schedule's sparsity at its update steps while training.

Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)·(1 − (t − t0)/(n·Δt))³ every Δt steps from t0; any
criterion, allocation and structure (the `prune` block is a prune step with a `schedule`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pydantic import Field, model_validator

from secateurs.core.masks import MaskSet
from secateurs.methods.schedules import CubicSteps, Gradual
from secateurs.methods.spec import PruneSpec
from secateurs.methods.training.base import TRAINING, TrainingMethod
from secateurs.train.engine import Callback, TrainState


class GradualPrune(PruneSpec):
    """Pruning applied during a training stage, following a step schedule."""

    schedule: Gradual = Field(default_factory=Gradual)

    @model_validator(mode="after")
    def _no_reinit(self) -> GradualPrune:
        if self.sanity == "reinit":
            raise ValueError("sanity check reinit applies to prune stages, not to pruning during training")
        if self.calibration.mode != "full" or self.reconstruct is not None:
            raise ValueError(
                "sequential calibration and reconstruction apply to prune stages, not while training"
            )
        return self


class GradualPruning(Callback):
    """Prunes to the cubic schedule's sparsity at its update steps during training."""

    def __init__(
        self, spec: GradualPrune, prune: Callable[[PruneSpec, float], MaskSet], default: float | None
    ) -> None:
        self.spec, self.prune, self.default = spec, prune, default
        self.steps: CubicSteps | None = None

    def on_train_start(self, state: TrainState) -> None:
        self.steps = self.spec.schedule.resolve(state.steps_per_epoch, state.total_steps, self.default)
        self._maybe_prune(state)

    def on_step_end(self, state: TrainState) -> None:
        self._maybe_prune(state)

    def _maybe_prune(self, state: TrainState) -> None:
        assert self.steps is not None
        if not self.steps.is_update_step(state.step):
            return
        state.install_masks(self.prune(self.spec, self.steps.sparsity_at(state.step)))


@TRAINING.register("prune", "gradual pruning: a prune step repeated on a cubic schedule while training")
class GradualMethod(TrainingMethod):
    name = "prune"
    schema: ClassVar[type] = GradualPrune

    def callbacks(self) -> list[Callback]:
        spec: GradualPrune = self.config
        default = spec.sparsity if spec.sparsity is not None else self.services.level_sparsity
        services = self.services
        return [
            GradualPruning(
                spec, lambda s, sparsity: services.set_masks(services.compute_masks(s, sparsity)), default
            )
        ]
