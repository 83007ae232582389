"""The criterion axis: a criterion turns a model (and maybe data) into one score per weight.

Higher score = more worth keeping. A new criterion is one small class overriding `score`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secateurs.errors import ConfigError
from secateurs.masks import MaskSet
from secateurs.registry import Registry

Batch = tuple[Tensor, Tensor]


@dataclass
class ScoringContext:
    """Everything a criterion may use. Data-free criteria ignore `batches`."""

    model: nn.Module
    names: list[str]
    masks: MaskSet
    batches: Iterable[Batch] | None = None
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    def params(self) -> dict[str, nn.Parameter]:
        named = dict(self.model.named_parameters())
        return {n: named[n] for n in self.names}

    def require_batches(self, criterion: str) -> Iterable[Batch]:
        if self.batches is None:
            raise ConfigError(
                f"criterion {criterion!r} needs data to compute gradients",
                fix="pass batches (an (x, y) tuple or a loader) to prune(), or use a data-free criterion",
            )
        return self.batches


class Criterion:
    """Base class: subclasses set `name` and implement `score`."""

    name: str = ""
    needs_data: bool = False

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        raise NotImplementedError


CRITERIA: Registry[type[Criterion]] = Registry("criterion")


def build_criterion(name: str, **options: object) -> Criterion:
    """Instantiate a registered criterion with its options (unknown option → ConfigError)."""
    return CRITERIA.build(name, **options)  # type: ignore[return-value]


def accumulate_gradients(ctx: ScoringContext, criterion: str, max_batches: int) -> dict[str, Tensor]:
    """Sum over up to `max_batches` batches of the loss gradient w.r.t. the scored parameters.

    The model's own `.grad` fields, buffers (BatchNorm running statistics, which train-mode
    forward passes would update) and train/eval mode are left as they were.
    """
    params = ctx.params()
    saved = {n: p.grad for n, p in params.items()}
    buffers = [(b, b.detach().clone()) for b in ctx.model.buffers()]
    was_training = ctx.model.training
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    seen = 0
    try:
        ctx.model.train()
        for x, y in ctx.require_batches(criterion):
            if seen >= max_batches:
                break
            device = next(iter(params.values())).device
            loss = ctx.loss_fn(ctx.model(x.to(device)), y.to(device))
            step = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (n, _), g in zip(params.items(), step, strict=True):
                if g is not None:
                    grads[n] += g
            seen += 1
    finally:
        ctx.model.train(was_training)
        for n, p in params.items():
            p.grad = saved[n]
        with torch.no_grad():
            for buffer, value in buffers:
                buffer.copy_(value)
    if seen == 0:
        raise ConfigError(f"criterion {criterion!r} got no batches", fix="pass a non-empty loader")
    return grads
