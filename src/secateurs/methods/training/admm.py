"""ADMM training toward a sparsity constraint set, then a hard prune to its projection.

Pruning as constrained training (Zhang et al. 2018; Lin et al. 2021 for micro-blocks): minimise
the loss f(W) subject to W ∈ S, split as W = Z with Z ∈ S, and solve with the scaled-form ADMM
(Boyd et al. 2011, §3.1.1):

- W-step: ordinary training on f(W) + ρ/2‖W − Z + U‖²; the penalty's gradient ρ(W − Z + U) is
  added to each weight's gradient after the backward pass (`on_backward`).
- Z-step, every `update_every` steps: Z ← Π_S(W + U), the Euclidean projection
  (`secateurs.methods.projections`: top-k, N:M, blocks, channels, unification).
- U-step, right after: U ← U + W − Z.
- ρ grows by `rho_growth` at each dual update (capped at `rho_max`); the scaled dual U is then
  divided by the same factor, since U = y/ρ for the unscaled dual y (Boyd §3.4.1).

At the end of the stage the weights are hard-pruned: W ← Π_S(W), and the projection's support
becomes the model's mask, so a following train stage finetunes with it. `hold: true` makes a
stage *projected* training instead: no penalty, and W ← Π_S(W) after every step, which keeps
the structure while the weights move — masked finetuning for the mask-only sets, and for
unification it keeps every block's shared magnitude (masked training alone would not).

Each constraint is per layer: the sparsity (where the set has one) applies to every selected
parameter alike, as in the ADMM pruning papers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, masks_of
from secateurs.core.registry import validate_options
from secateurs.core.sparsity import Rounding, rounding_rule
from secateurs.methods.layers import LayerSelection, select_parameters
from secateurs.methods.projections import PROJECTIONS, project_with_mask, signed_blocks, unification_cost
from secateurs.methods.structures import Block
from secateurs.methods.training.base import TRAINING, StageServices, TrainingMethod, stage_sparsity
from secateurs.train.engine import Callback, TrainState

NEEDS_SPARSITY = ("unstructured", "block", "channel", "unify")


class ADMMConfig(StrictModel):
    """The `admm` block of a train stage: the constraint set, and the penalty's schedule."""

    projection: str = Field("unstructured", description="the constraint set (see methods.projections)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="the set's options: n, m (nm); bh, bw (block, unify); levels"
    )
    sparsity: float | None = Field(
        None, ge=0, lt=1, description="per-layer sparsity; default: the stage's level, else the recipe's"
    )
    rho: float = Field(1e-2, gt=0, description="initial penalty ρ")
    rho_growth: float = Field(1.3, ge=1, description="ρ is multiplied by this at every dual update")
    rho_max: float = Field(1.0, gt=0, description="ρ stops growing here")
    update_every: int | None = Field(
        None, gt=0, description="optimizer steps between Z/U updates; default: once per epoch"
    )
    hold: bool = Field(False, description="projected training: keep W in the set after every step")
    layers: LayerSelection | None = Field(None, description="default: the recipe's layers")
    rounding: Rounding = Field(
        "half_up",
        description="rounding of each projection's removed count s·n (unstructured, block, channel, unify): "
        "half_up, floor or ceil, as a prune's",
    )

    @model_validator(mode="after")
    def _known_projection(self) -> ADMMConfig:
        """The projection and its options are checked when the recipe is read."""
        if self.projection not in PROJECTIONS:
            raise ValueError(
                f"unknown ADMM projection {self.projection!r}; use one of {', '.join(PROJECTIONS.names())}"
            )
        if "sparsity" in self.options:
            raise ValueError("give the ADMM sparsity as admm.sparsity, not among the projection's options")
        options = {**self.options, **({"sparsity": 0.5} if self.projection in NEEDS_SPARSITY else {})}
        try:
            validate_options(
                PROJECTIONS.get(self.projection), options, where=f"ADMM projection {self.projection!r}"
            )
        except ConfigError as err:
            raise ValueError(err.what + (f" ({err.fix})" if err.fix else "")) from None
        return self


@dataclass(frozen=True)
class DualUpdate:
    """One Z/U update: ρ used, and the residuals (relative primal ‖W − Z‖/‖W‖, dual ρ‖Z − Z_prev‖)."""

    step: int
    rho: float
    primal_residual: float
    dual_residual: float


def dual_update(u: Tensor, w: Tensor, z: Tensor) -> Tensor:
    """U + W − Z: the scaled dual ascent step."""
    return u + w - z


class ADMMTraining(Callback):
    """The W-step penalty, the periodic Z/U updates and the final hard prune (see the module doc)."""

    def __init__(self, config: ADMMConfig, names: list[str], sparsity: float | None) -> None:
        if config.projection not in PROJECTIONS:
            raise ConfigError(
                f"unknown ADMM projection {config.projection!r}",
                where="train.admm.projection",
                fix=f"use one of {', '.join(PROJECTIONS.names())}",
            )
        if config.projection in NEEDS_SPARSITY and sparsity is None:
            raise ConfigError(
                f"ADMM projection {config.projection!r} needs a sparsity",
                where="train.admm.sparsity",
                fix="set it, or the recipe's sparsity",
            )
        if not names:
            raise ConfigError("ADMM has no layers to constrain", where="train.admm.layers", fix="select some")
        self.config = config
        self.names = names
        self.options = dict(config.options)
        if config.projection in NEEDS_SPARSITY:
            self.options["sparsity"] = sparsity
        self.rho = config.rho
        self.z: dict[str, Tensor] = {}
        self.u: dict[str, Tensor] = {}
        self.params: dict[str, nn.Parameter] = {}
        self.records: list[DualUpdate] = []
        self.every = 1
        self.codebooks: dict[str, UnifiedBlocks] = {}  # hold + unify: each block's magnitude level

    def project(self, w: Tensor, name: str) -> tuple[Tensor, Tensor]:
        """Π_S(w) and its support; an error names the parameter `name`."""
        try:
            with rounding_rule(self.config.rounding):
                projected, mask = project_with_mask(w.detach(), self.config.projection, **self.options)
        except ConfigError as err:
            raise ConfigError(f"{name}: {err.what}", where="train.admm", fix=err.fix) from None
        return projected, mask

    def on_train_start(self, state: TrainState) -> None:
        named = dict(state.model.named_parameters())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise ConfigError(
                f"ADMM layers not in the model: {', '.join(missing)}", where="train.admm.layers"
            )
        self.params = {n: named[n] for n in self.names}
        self.every = self.config.update_every or state.steps_per_epoch
        if self.config.hold:  # projected training: no Z or U, the first projection happens here
            self._hold()
            return
        for name, p in self.params.items():
            z, _ = self.project(p, name)  # fails early, by name, on a shape the set cannot group
            self.z[name], self.u[name] = z, torch.zeros_like(p.detach())

    def on_backward(self, state: TrainState) -> None:
        if self.config.hold:
            return
        with torch.no_grad():
            for name, p in self.params.items():
                if p.grad is not None:
                    p.grad.add_(p - self.z[name] + self.u[name], alpha=self.rho)

    def on_step_end(self, state: TrainState) -> None:
        if self.config.hold:
            self._hold()
        elif state.step % self.every == 0:
            self._dual_step(state.step)

    def on_train_end(self, state: TrainState) -> None:
        """Hard prune: the weights become their projection, the support the model's mask."""
        masks = {}
        with torch.no_grad():
            for name, p in self.params.items():
                projected, mask = self.project(p, name)
                p.copy_(projected)
                masks[name] = mask
        current, support = masks_of(state.model), MaskSet(masks)  # masks only shrink
        state.install_masks(current.intersect(support) if current is not None else support)

    def _dual_step(self, step: int) -> None:
        primal = dual = total = 0.0
        with torch.no_grad():
            for name, p in self.params.items():
                w = p.detach()
                z, _ = self.project(w + self.u[name], name)
                dual += float((z - self.z[name]).square().sum())
                self.z[name] = z
                self.u[name] = dual_update(self.u[name], w, z)
                primal += float((w - z).square().sum())
                total += float(w.square().sum())
        relative = (primal / max(total, 1e-30)) ** 0.5
        self.records.append(DualUpdate(step, self.rho, relative, self.rho * dual**0.5))
        grown = min(self.rho * self.config.rho_growth, self.config.rho_max)
        if grown != self.rho:
            for name in self.u:
                self.u[name] = self.u[name] * (self.rho / grown)  # the unscaled dual ρU is unchanged
            self.rho = grown

    def _hold(self) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                if name in self.codebooks:
                    p.copy_(self.codebooks[name].project(p))
                else:
                    p.copy_(self.project(p, name)[0])
                    if self.config.projection == "unify":
                        self.codebooks[name] = UnifiedBlocks.of(p, self.options)


@dataclass
class UnifiedBlocks:
    """A unified weight's partition: which blocks are kept, and which magnitude level each one uses.

    Projected training with unification holds this partition fixed after the first projection:
    the nearest point with the same support and the same blocks sharing each level gives each
    block its own signs and each level the mean |w| over its blocks, which costs O(numel) per step
    where a fresh projection re-runs the k-means over the levels (10-100× slower).
    """

    block: Block
    level: Tensor  # per block: its level index, −1 for a pruned block
    levels: int

    @classmethod
    def of(cls, unified: Tensor, options: dict[str, Any]) -> UnifiedBlocks:
        block = Block(int(options.get("bh", 1)), int(options.get("bw", 4)))
        magnitude = block.to_blocks(unified.detach()).abs()[:, 0]
        values, level = torch.unique(magnitude, return_inverse=True)
        level = torch.where(magnitude > 0, level - int(values[0] == 0), -1)
        return cls(block, level, int((values > 0).sum()))

    def project(self, w: Tensor) -> Tensor:
        blocks = self.block.to_blocks(w.detach())
        kept = self.level >= 0
        means = blocks.abs().double().mean(1)
        total = torch.zeros(self.levels, dtype=torch.float64).index_add_(0, self.level[kept], means[kept])
        count = torch.bincount(self.level[kept], minlength=self.levels).clamp_min(1)
        magnitude = torch.zeros_like(means)
        magnitude[kept] = (total / count)[self.level[kept]]
        return self.block.from_blocks(signed_blocks(blocks, magnitude).to(w.dtype), tuple(w.shape))


def unification_report(model: nn.Module, names: list[str], bh: int, bw: int) -> dict[str, float]:
    """Storage (bits) and arithmetic of the unified layers `names`, summed (see `unification_cost`).

    Multiply-adds are counted per output position (each weight once), so the sum weighs a conv's
    kernel like a Linear's weight: exact for Linear layers; for convs, weigh by output positions.
    """
    params = dict(model.named_parameters())
    totals: dict[str, float] = {}
    for name in names:
        cost = unification_cost(params[name].detach(), bh, bw)
        for key, value in cost.items():
            if key not in ("compression", "levels"):
                totals[key] = totals.get(key, 0) + value
    totals["compression"] = totals["dense_bits"] / totals["unified_bits"]
    totals["macs_saved_fraction"] = totals["mults_saved"] / totals["dense_macs"]
    return totals


@TRAINING.register("admm", "ADMM toward a constraint set (a projection), then a hard prune to it")
class ADMMMethod(TrainingMethod):
    name = "admm"
    schema: ClassVar[type] = ADMMConfig
    choices = ("projection", PROJECTIONS)

    def __init__(self, config: ADMMConfig, services: StageServices) -> None:
        super().__init__(config, services)
        layers = config.layers if config.layers is not None else services.layers
        sparsity = stage_sparsity(services, config.sparsity)
        self.callback = ADMMTraining(config, select_parameters(services.model, layers), sparsity)

    def callbacks(self) -> list[Callback]:
        return [self.callback]

    def events(self) -> list[tuple[int, dict[str, Any]]]:
        return [(d.step, asdict(d)) for d in self.callback.records]
