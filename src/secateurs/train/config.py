"""Validated training options (part of a recipe; also usable directly from Python)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from secateurs.core.config import StrictModel


class OptimizerConfig(StrictModel):
    """Which optimizer, with its hyper-parameters (unused ones must keep their defaults)."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


class LRScheduleConfig(StrictModel):
    """Learning-rate schedule, stepped every iteration.

    `milestones` are in the unit of the training budget (epochs when `epochs` is set, else
    iterations). Warm-up is linear from `warmup_start_factor`·lr to lr over `warmup_steps`
    iterations (or `warmup_epochs` epochs), then the main schedule runs over the rest.
    """

    name: Literal["constant", "step", "cosine", "linear"] = "constant"
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    min_lr: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_start_factor: float = Field(0.01, gt=0, le=1)

    @model_validator(mode="after")
    def _one_warmup_unit(self) -> LRScheduleConfig:
        if self.warmup_steps and self.warmup_epochs:
            raise ValueError("give warmup_steps or warmup_epochs, not both")
        if self.name == "step" and not self.milestones:
            raise ValueError("the 'step' schedule needs milestones, e.g. milestones: [30, 60]")
        return self


class TrainConfig(StrictModel):
    """A training budget and how to spend it."""

    epochs: float | None = Field(None, gt=0)
    iterations: int | None = Field(None, gt=0)
    batch_size: int = Field(128, gt=0)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig)
    eval_every_epoch: bool = True
    eval_every: int | None = Field(
        None,
        gt=0,
        description="evaluate every this many optimizer steps (and at the end) instead of after each "
        "epoch, so the best step (early stopping) is known to within these steps",
    )
    grad_clip: float | None = Field(None, gt=0)
    mask_grads: bool = False
    shuffle: bool = Field(
        True,
        description="reshuffle the training set every epoch (seeded); false: the same natural order "
        "every epoch, as the MNIST-1D paper's training loop reads its batches",
    )

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        if (self.epochs is None) == (self.iterations is None):
            raise ValueError("give exactly one training budget: epochs or iterations")
        if self.eval_every is not None:
            if self.eval_every_epoch and "eval_every_epoch" in self.model_fields_set:
                raise ValueError(
                    "give eval_every (steps) or eval_every_epoch, not both: eval_every replaces "
                    "the evaluation after each epoch"
                )
            if self.iterations is not None and self.eval_every > self.iterations:
                raise ValueError(
                    f"eval_every={self.eval_every} is more than the {self.iterations} iterations: no "
                    "evaluation before the end; use a smaller eval_every or leave it out"
                )
        return self
