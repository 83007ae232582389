"""Network slimming (Liu et al. 2017): an L1 penalty on BatchNorm scales while training.

The subgradient λ·sign(γ) is added to every BatchNorm scale's gradient after backward, like any
closed-form penalty; the channels whose γ shrink are then pruned by `criterion: bn_scale`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from pydantic import Field
from torch import nn

from secateurs.methods.training.base import TRAINING, TrainingMethod
from secateurs.train.engine import Callback, TrainState


class SlimmingPenalty(Callback):
    """Adds λ·sign(γ) to the gradient of every trainable BatchNorm scale after backward."""

    def __init__(self, model: nn.Module, strength: float) -> None:
        self.strength = strength
        self.scales = [
            m.weight
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.weight is not None
            and m.weight.requires_grad
        ]

    def on_backward(self, state: TrainState) -> None:
        with torch.no_grad():
            for w in self.scales:
                if w.grad is not None:
                    w.grad.add_(torch.sign(w), alpha=self.strength)


@TRAINING.register("bn_l1", "network slimming: λ of an L1 penalty on every BatchNorm scale γ (e.g. 1e-4)")
class SlimmingMethod(TrainingMethod):
    name = "bn_l1"
    schema: ClassVar[object] = Annotated[float, Field(ge=0)]
    changes_mask = False

    def callbacks(self) -> list[Callback]:
        return [SlimmingPenalty(self.services.model, float(self.config))] if self.config else []
