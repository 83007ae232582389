"""Parameter statistics: the running mean and variance of every weight over the end of training.

An ensemble by reassigning parameters from their distribution (issue 20) samples its members'
weights from what each weight did over the last steps of training; this records that. `ParamStats`
is a Welford accumulator in float64 (stable: no Σx² − (Σx)² cancellation), usable in any loop
(`stats.update(model)` after each optimizer step); the `param_stats` training-time method feeds it
during the last `epochs` or `steps` of a train stage, every `every` steps, and hands it to later
stages of the run (the `ensemble` stage).

The variance is the population variance (divided by the number of samples, not n − 1): it is
the spread of the values seen, and a single sample has variance 0, not NaN.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from secateurs.core.config import StrictModel
from secateurs.core.errors import CheckpointError, ConfigError
from secateurs.methods.training.base import TRAINING, StageServices, TrainingMethod
from secateurs.train.engine import Callback, TrainState

__all__ = ["CollectWindow", "ParamStats", "ParamStatsMethod", "StatsCollector", "floating_parameters"]

KEPT_AS = "param_stats"  # the name later stages find the statistics under (`StageServices.keep`)


def floating_parameters(model: nn.Module) -> dict[str, Tensor]:
    """Every floating-point parameter by name (masked or not; a tied one once)."""
    return {n: p for n, p in model.named_parameters() if p.is_floating_point()}


class ParamStats:
    """Running mean and variance of every floating parameter of a model (Welford, float64).

    After `update` was called n times with values x_1..x_n of a parameter, `mean` is their mean
    and `variance` their population variance, both float64 on the parameter's device.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: dict[str, Tensor] = {}
        self.m2: dict[str, Tensor] = {}  # Σ (x − mean)² so far

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Add the model's current parameter values as one more sample."""
        params = floating_parameters(model)
        if self.count and list(params) != list(self.mean):
            raise ConfigError(
                "the model's parameters changed since the statistics began",
                fix="collect the statistics of one model (start a new ParamStats for another)",
            )
        self.count += 1
        for name, p in params.items():
            x = p.detach().to(torch.float64)
            if name not in self.mean:
                self.mean[name], self.m2[name] = torch.zeros_like(x), torch.zeros_like(x)
            mean, m2 = self.mean[name], self.m2[name]
            delta = x - mean
            mean.add_(delta, alpha=1.0 / self.count)
            m2.addcmul_(delta, x - mean)  # δ·(x − new mean): Welford's update

    @property
    def variance(self) -> dict[str, Tensor]:
        """Population variance of every parameter (float64; 0 where it never moved)."""
        self._check_collected()
        return {n: (m2 / self.count).clamp_(min=0.0) for n, m2 in self.m2.items()}

    def _check_collected(self) -> None:
        if self.count == 0:
            raise ConfigError(
                "no parameter statistics were collected",
                fix="call update(model) after optimizer steps (or give the collection window steps)",
            )

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and ints, safe to save and load with `weights_only=True`."""
        return {"count": self.count, "mean": dict(self.mean), "m2": dict(self.m2)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ParamStats:
        try:
            stats = cls()
            stats.count = int(state["count"])
            stats.mean = {str(n): t.to(torch.float64) for n, t in state["mean"].items()}
            stats.m2 = {str(n): t.to(torch.float64) for n, t in state["m2"].items()}
        except (KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(
                f"saved parameter statistics are damaged ({err})", fix="delete the state to collect anew"
            ) from None
        return stats

    def to(self, device: torch.device | str) -> ParamStats:
        """These statistics with their tensors on `device` (a new object; self unchanged)."""
        return ParamStats.from_state_dict(
            {
                "count": self.count,
                "mean": {n: t.to(device) for n, t in self.mean.items()},
                "m2": {n: t.to(device) for n, t in self.m2.items()},
            }
        )


class CollectWindow(StrictModel):
    """Which steps are collected: the last `epochs` (a fraction allowed) or the last `steps` of
    training, one sample every `every` optimizer steps."""

    epochs: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="collect over the last N epochs (e.g. 1 or 0.5)"
    )
    steps: int | None = Field(None, gt=0, description="collect over the last N optimizer steps")
    every: int = Field(1, ge=1, description="one sample every k optimizer steps")

    @model_validator(mode="before")
    @classmethod
    def _default_window(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("epochs") is None and value.get("steps") is None:
            return {**value, "epochs": 1.0}  # the last epoch, as the paper collects
        return value

    @model_validator(mode="after")
    def _one_window(self) -> CollectWindow:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give the collection window in epochs or in steps, not both")
        return self

    def steps_of(self, steps_per_epoch: int, total_steps: int) -> int:
        """The window's length in optimizer steps; an error if training is shorter than it."""
        window = self.steps if self.steps is not None else round((self.epochs or 0) * steps_per_epoch)
        if window < 1 or window > total_steps:
            given = f"{self.steps} steps" if self.steps is not None else f"{self.epochs} epochs"
            raise ConfigError(
                f"the parameter statistics window of {given} ({window} steps) does not fit the "
                f"training's {total_steps} steps",
                fix=f"collect over 1 to {total_steps} steps (epochs or steps of the window)",
            )
        return window


class StatsCollector(Callback):
    """Feeds `stats` after every `window.every`-th step of the window at the end of training."""

    def __init__(self, window: CollectWindow, stats: ParamStats) -> None:
        self.window, self.stats = window, stats
        self.start = 0

    def on_train_start(self, state: TrainState) -> None:
        self.start = state.total_steps - self.window.steps_of(state.steps_per_epoch, state.total_steps)

    def on_step_end(self, state: TrainState) -> None:
        since = state.step - self.start
        if since > 0 and since % self.window.every == 0:
            self.stats.update(state.model)


@TRAINING.register(
    "param_stats",
    "record every weight's running mean and variance over the last epochs or steps (for `ensemble`)",
)
class ParamStatsMethod(TrainingMethod):
    name = "param_stats"
    schema: ClassVar[type] = CollectWindow
    changes_mask = False

    def __init__(self, config: CollectWindow, services: StageServices) -> None:
        super().__init__(config, services)
        self.stats = ParamStats()

    def callbacks(self) -> list[Callback]:
        return [StatsCollector(self.config, self.stats)]

    def after_training(self) -> None:
        self.services.keep(KEPT_AS, self.stats.state_dict())
