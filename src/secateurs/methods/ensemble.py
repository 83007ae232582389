"""Ensembles by reassigning parameters from their distribution (issue 20).

Towards the end of training every weight wanders around its final value; `ParamStats` records
the mean μ and variance σ² of each one over the last steps. An ensemble member is the trained
model with every floating parameter redrawn from N(μ, scale²·σ²), so M members cost one
training run (plus, for an already trained model, one short pass to collect μ and σ²) instead
of M. Member i draws from its own generator, seeded from (seed, i): the same seed gives the
same members, bit for bit.

What is kept from the trained model:
- masks: a pruned entry is exactly +0.0 in every member (the masks are applied with the bitwise
  `keep_bits` path after sampling, so neither NaN nor -0.0 can appear there), so a sparse model
  gives a sparse ensemble whatever the statistics hold at pruned positions;
- buffers (BatchNorm running statistics): members are copies of the trained model, whose
  running statistics describe the activations of the trained weights; they are not re-estimated
  for each member (no data pass), which is what the statistics-only method can afford.

`ParamEnsemble.forward` returns the log of the members' mean softmax probability. It is a valid
logit vector: its softmax is the mean probability itself, its argmax the ensemble's vote by
probability, and cross-entropy on it is the ensemble's negative log-likelihood; so accuracy,
loss, ECE, agreement and every shift evaluation apply to it unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError
from secateurs.core.masks import masks_of, set_masks
from secateurs.methods.controls import derived_seed
from secateurs.methods.training.param_stats import CollectWindow, ParamStats, StatsCollector
from secateurs.train.config import TrainConfig
from secateurs.train.engine import train
from secateurs.train.execution import Execution

__all__ = [
    "CollectPass",
    "EnsembleSpec",
    "ParamEnsemble",
    "collect_pass",
    "ensemble",
    "member_seed",
    "sample_member",
]

COLLECT_LR_FACTOR = 0.1  # the collection pass's default LR: a tenth of the optimizer's configured lr


class CollectPass(CollectWindow):
    """The extra training pass of an `ensemble` stage whose model was trained without collecting:
    it runs exactly the window (its every step is collected), on a copy of the model."""

    lr: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description=f"constant LR of the pass (default: {COLLECT_LR_FACTOR} x the optimizer's lr)",
    )


class EnsembleSpec(StrictModel):
    """An ensemble of `members` models sampled from the collected parameter distribution."""

    members: int = Field(5, ge=1, le=1000, description="how many models are sampled")
    collect: CollectPass = Field(
        default_factory=CollectPass, description="the pass that collects when training did not"
    )
    seed: int | None = Field(None, description="member i draws from seed (seed, i); default: the recipe's")
    scale: float = Field(
        1.0, ge=0, allow_inf_nan=False, description="standard deviations are multiplied by this (0: the mean)"
    )
    label: str = ""
    beyond: bool = Field(True, description="also measure noise and shift robustness (excess error)")
    latency: bool = Field(False, description="with beyond: also time CPU inference of the whole ensemble")


def member_seed(seed: int, index: int) -> int:
    """Member `index`'s seed: independent of other members and of every other seed of the run."""
    return derived_seed(seed, "ensemble", index)


@torch.no_grad()
def sample_member(model: nn.Module, stats: ParamStats, seed: int, *, scale: float = 1.0) -> nn.Module:
    """A copy of `model` whose floating parameters are drawn from N(mean, scale²·var) of `stats`.

    The noise comes from a CPU generator seeded with `seed`, in float64 and in parameter order,
    so a member is the same on every device; the masks of `model` are applied to it afterwards.
    """
    if scale < 0 or not math.isfinite(scale):
        raise ConfigError(f"scale={scale} must be a finite number >= 0", fix="use e.g. scale: 1.0")
    member = copy.deepcopy(model)
    params = {n: p for n, p in member.named_parameters() if p.is_floating_point()}
    missing = [n for n in params if n not in stats.mean]
    if missing:
        raise ConfigError(
            f"the parameter statistics have no entry for {', '.join(missing[:3])}",
            fix="collect the statistics on this model (its parameters are not the ones they describe)",
        )
    variance = stats.variance
    generator = torch.Generator().manual_seed(seed)
    for name, p in params.items():
        mean = stats.mean[name]
        if tuple(mean.shape) != tuple(p.shape):
            raise ConfigError(
                f"statistics of {name!r} have shape {tuple(mean.shape)}, the parameter {tuple(p.shape)}",
                fix="collect the statistics on this model",
            )
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        std = variance[name].sqrt().mul_(scale)
        p.copy_(mean + std * noise.to(mean.device))
    masks = masks_of(model)
    set_masks(member, masks)  # pruned entries to exactly +0.0 on their bit patterns
    return member


class ParamEnsemble(nn.Module):
    """Members sampled from a parameter distribution; forward = log of their mean probability.

    See the module docstring for why the log of the mean (not the mean itself) is returned.
    """

    def __init__(self, members: Iterable[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        if len(self.members) == 0:
            raise ConfigError("an ensemble needs at least one member", fix="use members >= 1")

    def forward(self, x: Tensor) -> Tensor:
        logp = torch.stack([torch.log_softmax(m(x), dim=-1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))

    def probabilities(self, x: Tensor) -> Tensor:
        """The members' mean softmax probability."""
        return self.forward(x).exp()


def ensemble(
    model: nn.Module, stats: ParamStats, *, members: int = 5, seed: int = 0, scale: float = 1.0
) -> ParamEnsemble:
    """An ensemble of `members` copies of `model`, each parameter drawn from N(mean, scale²·var).

    Member i is seeded from (seed, i); pruned entries stay exactly zero; BatchNorm running
    statistics are those of `model`. The result is in `model`'s train/eval mode (set it to eval
    for prediction).
    """
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ConfigError(f"members={members!r} must be a whole number >= 1", fix="use e.g. members=5")
    sampled = [sample_member(model, stats, member_seed(seed, i), scale=scale) for i in range(members)]
    out = ParamEnsemble(sampled)
    out.train(model.training)
    return out


def collect_pass(
    model: nn.Module,
    loader: Any,
    config: TrainConfig,
    window: CollectPass,
    *,
    seed: int,
    execution: Execution | None = None,
) -> ParamStats:
    """The statistics of one short training pass of a copy of `model` (the model is not changed).

    The pass runs the window (`window.steps`, or `window.epochs` of `loader`) with `config`'s
    optimizer at a constant LR (`window.lr`, default a tenth of the optimizer's lr), keeping the
    model's masks, and collects after every `window.every`-th step.
    """
    steps = window.steps if window.steps is not None else max(1, round((window.epochs or 0) * len(loader)))
    lr = window.lr if window.lr is not None else COLLECT_LR_FACTOR * config.optimizer.lr
    pass_config = TrainConfig(
        **{
            **config.model_dump(),
            "epochs": None,
            "iterations": steps,
            "optimizer": {**config.optimizer.model_dump(), "lr": lr},
            "lr_schedule": {"name": "constant"},
            "eval_every_epoch": False,
            "eval_every": None,  # the pass is not evaluated (and may be shorter than eval_every)
        }
    )
    stats = ParamStats()
    copied = copy.deepcopy(model)
    train(
        copied,
        loader,
        pass_config,
        callbacks=[StatsCollector(CollectWindow(steps=steps, every=window.every), stats)],
        masks=masks_of(copied),
        seed=seed,
        description="ensemble: collect",
        execution=execution,
    )
    return stats
