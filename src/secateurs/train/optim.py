"""Optimizers and per-iteration learning-rate schedules built from validated configs.

Schedules are one `LambdaLR` whose multiplier is a small picklable object (`LRMultiplier`), so
the learning rate at every step is a closed-form expression (exact, reproducible) and the
scheduler's `state_dict` round-trips through `torch.save` for resuming and rewinding.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from secateurs.core.errors import ConfigError
from secateurs.train.config import LRScheduleConfig, OptimizerConfig

logger = logging.getLogger(__name__)

# Hyper-parameters each optimizer actually reads; any other field must keep its default.
_USED_FIELDS = {
    "sgd": {"name", "lr", "momentum", "nesterov", "weight_decay"},
    "adam": {"name", "lr", "betas", "eps", "weight_decay"},
    "adamw": {"name", "lr", "betas", "eps", "weight_decay"},
}
_SCHEDULE_FIELDS = {
    "constant": set(),
    "step": {"milestones", "gamma"},
    "cosine": {"min_lr"},
    "linear": {"min_lr"},
}
_WARMUP_FIELDS = {"name", "warmup_steps", "warmup_epochs", "warmup_start_factor"}


@functools.cache
def _defaults(cls: type[OptimizerConfig | LRScheduleConfig]) -> OptimizerConfig | LRScheduleConfig:
    return cls()


def _unused_but_set(config: OptimizerConfig | LRScheduleConfig, used: set[str]) -> list[str]:
    """Fields that differ from their default although the chosen algorithm ignores them."""
    defaults = _defaults(type(config))
    return [
        name
        for name in type(config).model_fields
        if name not in used and getattr(config, name) != getattr(defaults, name)
    ]


# --------------------------------------------------------------------------------------------
# optimizers
# --------------------------------------------------------------------------------------------
def build_optimizer(
    params: Iterable[nn.Parameter] | list[dict[str, Any]], config: OptimizerConfig
) -> torch.optim.Optimizer:
    """The optimizer named by `config`; options that would be silently ignored are errors.

    Adam's `weight_decay` is L2 added to the gradient; AdamW's is decoupled from it.
    """
    params = list(params)
    if not params:
        raise ConfigError("there are no parameters to optimize", fix="pass model.parameters()")
    ignored = _unused_but_set(config, _USED_FIELDS[config.name])
    if ignored:
        raise ConfigError(
            f"optimizer {config.name!r} does not use {', '.join(ignored)}",
            where="optimizer",
            fix=f"remove {', '.join(ignored)} or choose an optimizer that uses them",
        )
    if config.name == "sgd":
        if config.nesterov and config.momentum == 0:
            raise ConfigError(
                "nesterov=True needs a momentum > 0",
                where="optimizer",
                fix="set momentum (e.g. 0.9) or nesterov: false",
            )
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    cls = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)


# --------------------------------------------------------------------------------------------
# learning-rate schedules
# --------------------------------------------------------------------------------------------
class LRMultiplier:
    """Factor applied to a base learning rate after `t` scheduler steps.

    Linear warm-up from `start_factor` to 1 over `warmup_steps`, then the main schedule. A plain
    class (not a closure) so `LambdaLR.state_dict()` saves it and `pickle` can copy it.
    """

    def __init__(
        self,
        kind: str,
        *,
        total_steps: int,
        warmup_steps: int = 0,
        start_factor: float = 1.0,
        milestones: Iterable[int] = (),
        gamma: float = 1.0,
        min_factor: float = 0.0,
    ) -> None:
        self.kind = kind
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.start_factor = start_factor
        self.milestones = sorted(milestones)
        self.gamma = gamma
        self.min_factor = min_factor

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * t / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return self.gamma ** bisect.bisect_right(self.milestones, t)
        main_steps = self.total_steps - self.warmup_steps
        progress = min((t - self.warmup_steps) / main_steps, 1.0)
        if self.kind == "cosine":
            return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - (1.0 - self.min_factor) * progress  # linear

    def __repr__(self) -> str:
        return f"LRMultiplier({self.__dict__})"


def _warmup_steps(config: LRScheduleConfig, steps_per_epoch: int, total_steps: int) -> int:
    warmup = config.warmup_steps or round(config.warmup_epochs * steps_per_epoch)
    if warmup == 0 and config.warmup_start_factor != _defaults(LRScheduleConfig).warmup_start_factor:
        raise ConfigError(
            "warmup_start_factor is set but there is no warm-up",
            where="lr_schedule",
            fix="set warmup_steps or warmup_epochs (at least one iteration), or drop warmup_start_factor",
        )
    if config.warmup_epochs and warmup == 0:
        raise ConfigError(
            f"warmup_epochs={config.warmup_epochs} is less than one iteration "
            f"({steps_per_epoch} iterations per epoch)",
            where="lr_schedule",
            fix="lengthen the warm-up or give warmup_steps",
        )
    if warmup >= total_steps and warmup:
        raise ConfigError(
            f"warm-up of {warmup} iterations leaves nothing of the {total_steps}-iteration budget",
            where="lr_schedule",
            fix="shorten the warm-up or lengthen the training budget",
        )
    return warmup


def _milestone_steps(
    config: LRScheduleConfig, *, steps_per_epoch: int, budget_in_epochs: bool, warmup: int, total_steps: int
) -> list[int]:
    """Milestones converted to iteration indices (the scheduler counts iterations)."""
    unit = "epochs" if budget_in_epochs else "iterations"
    steps = []
    for m in config.milestones:
        if not budget_in_epochs and m != int(m):
            raise ConfigError(
                f"milestone {m} is not a whole number of iterations",
                where="lr_schedule.milestones",
                fix="with an `iterations` budget, give milestones as iteration counts",
            )
        step = round(m * steps_per_epoch) if budget_in_epochs else int(m)
        if step <= warmup:
            raise ConfigError(
                f"milestone {m} {unit} is not after the warm-up ({warmup} iterations)",
                where="lr_schedule.milestones",
                fix=f"give milestones in {unit}, each after the warm-up",
            )
        if step >= total_steps:
            logger.warning("LR milestone %s %s is beyond the training budget; it never applies", m, unit)
        steps.append(step)
    return steps


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    config: LRScheduleConfig,
    *,
    total_steps: int,
    steps_per_epoch: int,
    budget_in_epochs: bool,
) -> LRScheduler:
    """A `LambdaLR` to step once per iteration, giving the exact schedule of `config`.

    `milestones` are in epochs when `budget_in_epochs` else in iterations. `min_lr` is absolute,
    so each parameter group gets its own multiplier (base lr · factor reaches `min_lr` exactly).
    """
    if total_steps < 1 or steps_per_epoch < 1:
        raise ConfigError(f"cannot schedule {total_steps} steps of {steps_per_epoch} per epoch")
    ignored = _unused_but_set(config, _SCHEDULE_FIELDS[config.name] | _WARMUP_FIELDS)
    if ignored:
        raise ConfigError(
            f"lr schedule {config.name!r} does not use {', '.join(ignored)}",
            where="lr_schedule",
            fix=f"remove {', '.join(ignored)} or choose a schedule that uses them",
        )
    warmup = _warmup_steps(config, steps_per_epoch, total_steps)
    milestones = _milestone_steps(
        config,
        steps_per_epoch=steps_per_epoch,
        budget_in_epochs=budget_in_epochs,
        warmup=warmup,
        total_steps=total_steps,
    )
    multipliers = []
    for group in optimizer.param_groups:
        base_lr = group.get("initial_lr", group["lr"])
        if config.min_lr > base_lr:
            raise ConfigError(
                f"min_lr={config.min_lr} is above the learning rate {base_lr}",
                where="lr_schedule.min_lr",
                fix="set min_lr below the optimizer's lr",
            )
        multipliers.append(
            LRMultiplier(
                config.name,
                total_steps=total_steps,
                warmup_steps=warmup,
                start_factor=config.warmup_start_factor if warmup else 1.0,
                milestones=milestones,
                gamma=config.gamma,
                min_factor=config.min_lr / base_lr if base_lr > 0 else 0.0,
            )
        )
    return LambdaLR(optimizer, multipliers)


@torch.no_grad()
def zero_optimizer_state(optimizer: torch.optim.Optimizer, param: nn.Parameter, where: torch.Tensor) -> None:
    """Zero the per-entry optimizer state (momentum, Adam moments) of `param` at `where` (a bool mask).

    Scalar state (Adam's step count) is left alone; only tensors shaped like the parameter are per entry.
    """
    for value in per_entry_state(optimizer, param):
        value.masked_fill_(where.to(value.device), 0)


@torch.no_grad()
def zero_optimizer_entries(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, index: torch.Tensor
) -> None:
    """`zero_optimizer_state` at the flat positions `index` (int64): the same zeros, found once for
    all the state tensors; cheaper than a bool mask when few entries change (a DST update)."""
    for value in per_entry_state(optimizer, param):
        zero_at(value, index)


@torch.no_grad()
def zero_at(tensor: torch.Tensor, index: torch.Tensor) -> None:
    """Write +0 at the flat (row-major) positions `index` of `tensor`, whatever its memory layout
    (channels_last weights and their state are not contiguous): `masked_fill_`'s zeros, by index."""
    index = index.to(tensor.device)
    if tensor.is_contiguous():
        tensor.view(-1).index_fill_(0, index, 0)
    else:
        tensor.index_put_(
            torch.unravel_index(index, tensor.shape),
            torch.zeros((), dtype=tensor.dtype, device=tensor.device),
        )


def per_entry_state(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> list[torch.Tensor]:
    """The optimizer's state tensors of `param` that hold one value per entry (shaped like it)."""
    state = optimizer.state.get(param, {})
    return [v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == param.shape]
