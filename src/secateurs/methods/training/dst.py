"""Dynamic sparse training: the mask changes during training while the sparsity stays fixed.

A mask *updater* runs every `update_every` optimizer steps until `end_fraction` of training.
Each update drops the weakest active weights and grows as many inactive ones; the method is
only the rule that picks them:

- SET (Mocanu et al. 2018): per layer, drop by magnitude, grow at random.
- DSR (Mostafa & Wang 2019): drop below one global, adaptive magnitude threshold; grow at
  random, giving each layer a share proportional to its surviving weights.
- SNFS (Dettmers & Zettlemoyer 2019): drop by magnitude; grow where the momentum is largest,
  giving each layer a share proportional to the mean momentum magnitude of its active weights.
- RigL (Evci et al. 2020): per layer, drop by magnitude, grow where the dense gradient is largest.

The rules every method shares are enforced once, here, not per method: the number of active
weights is exactly the same after an update (per layer for SET and RigL, in total for DSR and
SNFS); grown weights start at zero; the optimizer state (momentum, Adam moments) of dropped and
grown weights is reset; an active weight is never grown (a weight dropped and grown back in one
update keeps its value, as in RigL's implementation); the drop fraction decays by cosine
(or stays constant). The initial distribution (ERK, uniform …) and which layers are sparse
(first/last) are those of the prune step before training: the updater moves the masks it finds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from secateurs.core.apportion import apportion
from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError, SecateursError
from secateurs.core.masks import MaskSet, masks_of
from secateurs.core.registry import Registry
from secateurs.core.sparsity import Rounding, removed_count, rounding_rule
from secateurs.core.topk import topk_mask
from secateurs.core.topk_sieve import flat_nonzero, sieved_topk_mask
from secateurs.methods.training.base import TRAINING, StageServices, TrainingMethod
from secateurs.train.engine import Callback, TrainState
from secateurs.train.optim import zero_at, zero_optimizer_entries

DenseGradients = Literal["never", "update", "always"]


class DynamicSparsity(StrictModel):
    """The `dst` block of a train stage: which updater, how often, how much it moves."""

    method: str = Field("rigl", description="an updater: set, dsr, snfs or rigl (`secateurs methods`)")
    options: dict[str, Any] = Field(default_factory=dict, description="the method's own options")
    update_every: int = Field(100, gt=0, description="optimizer steps between mask updates (ΔT)")
    drop_fraction: float = Field(0.3, gt=0, lt=1, description="fraction of active weights moved per update")
    drop_schedule: Literal["cosine", "constant"] = "cosine"
    end_fraction: float = Field(0.75, gt=0, le=1, description="no updates after this fraction of the steps")
    rounding: Rounding = Field(
        "half_up",
        description="rounding of each update's drop count drop_fraction·active: half_up, floor (RigL's "
        "code, int(n·fraction)) or ceil (sparse_learning's SET and SNFS, math.ceil)",
    )

    @model_validator(mode="after")
    def _known_updater(self) -> DynamicSparsity:
        """The updater and its options are checked when the recipe is read."""
        try:
            build_updater(self.method, self.options)
        except ConfigError as err:
            raise ValueError(err.what + (f" ({err.fix})" if err.fix else "")) from None
        return self


@dataclass(frozen=True)
class LayerUpdate:
    """One layer's update: `kept` = the active weights that survived the drop, `mask` = kept + grown."""

    kept: Tensor
    mask: Tensor


@dataclass
class LayerView:
    """What an updater may read of one sparse layer (tensors are not to be modified)."""

    name: str
    weight: Tensor
    mask: Tensor  # bool, True = active
    grad: Tensor | None
    momentum: Tensor | None

    active: int = -1  # number of active weights (computed when not given)

    def __post_init__(self) -> None:
        if self.active < 0:
            self.active = int(torch.count_nonzero(self.mask))


# -- the shared building blocks ---------------------------------------------------------------------
def drop_weakest(layer: LayerView, n: int) -> Tensor:
    """The layer's mask without its `n` smallest-magnitude active weights (ties: the lower index goes).

    Only the active entries are ranked (a tenth of the layer at 90 % sparsity), in index order,
    so ties are broken as everywhere else.
    """
    active = flat_nonzero(layer.mask)
    magnitudes = layer.weight.detach().reshape(-1)[active].abs().float()
    kept = torch.zeros(layer.mask.numel(), dtype=torch.bool, device=layer.mask.device)
    kept[active[topk_mask(magnitudes, active.numel() - n)]] = True
    return kept.reshape(layer.mask.shape)


def grow_strongest(kept: Tensor, scores: Tensor, n: int) -> LayerUpdate:
    """`kept` plus the `n` inactive positions of highest score; an active position is never chosen."""
    flat = kept.reshape(-1)
    inactive = flat.numel() - int(torch.count_nonzero(flat))
    if n > inactive:
        raise SecateursError(f"cannot grow {n} weights in a layer with {inactive} inactive ones")
    # = topk_mask(scores with the active entries at -inf, n), by a sieve: most of an update's time
    grown = sieved_topk_mask(scores.detach().reshape(-1).float(), n, exclude=flat)
    return LayerUpdate(kept, (flat | grown).reshape(kept.shape))


def random_scores(mask: Tensor, generator: torch.Generator) -> Tensor:
    """Uniform scores drawn on the CPU (the same on every device), placed beside the mask."""
    return torch.rand(mask.shape, generator=generator).to(mask.device)


def distribute(total: int, weights: list[float], caps: list[int]) -> list[int]:
    """Integer shares of `total` proportional to `weights`, each at most its cap (`core.apportion`)."""
    if total > sum(caps):
        raise SecateursError(f"cannot place {total} weights in layers with room for {sum(caps)}")
    return apportion(total, weights, caps)


# -- the methods ---------------------------------------------------------------------------------------
class Updater:
    """One mask update rule: `update(layers, drop_fraction)` returns the new mask of every layer."""

    dense_gradients: DenseGradients = "never"  # when the method needs the dense gradient (training FLOPs)

    def update(
        self, layers: list[LayerView], drop_fraction: float, generator: torch.Generator
    ) -> dict[str, LayerUpdate]:
        raise NotImplementedError

    def per_layer_drop(self, layers: list[LayerView], drop_fraction: float) -> dict[str, Tensor]:
        """Each layer without drop_fraction × active of its weakest weights, the count rounded by the
        rule in force (the stage's `rounding`), for SET, SNFS and RigL."""
        return {
            layer.name: drop_weakest(layer, removed_count(drop_fraction * layer.active)) for layer in layers
        }


UPDATERS: Registry[Callable[..., Updater]] = Registry("dynamic sparse training method")


class PerLayerUpdater(Updater):
    """Each layer drops drop_fraction × active (rounded) of its weakest weights and grows as many back,
    the inactive positions of highest `grow_scores` (SET, RigL): per-layer counts never change.
    """

    def grow_scores(self, layer: LayerView, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def update(
        self, layers: list[LayerView], drop_fraction: float, generator: torch.Generator
    ) -> dict[str, LayerUpdate]:
        dropped = self.per_layer_drop(layers, drop_fraction)
        return {
            layer.name: grow_strongest(
                dropped[layer.name],
                self.grow_scores(layer, generator),
                layer.active - int(torch.count_nonzero(dropped[layer.name])),
            )
            for layer in layers
        }


@UPDATERS.register("set", "SET: drop by magnitude, regrow at random positions (per layer)")
class SetUpdater(PerLayerUpdater):
    def grow_scores(self, layer: LayerView, generator: torch.Generator) -> Tensor:
        return random_scores(layer.mask, generator)


@UPDATERS.register("rigl", "RigL: drop by magnitude, regrow where the dense gradient is largest (per layer)")
class RigLUpdater(PerLayerUpdater):
    dense_gradients: DenseGradients = "update"

    def grow_scores(self, layer: LayerView, generator: torch.Generator) -> Tensor:
        if layer.grad is None:
            raise SecateursError(
                f"RigL found no gradient for {layer.name} at a mask update",
                fix="train the layer (requires_grad) and keep mask_grads false so gradients stay dense",
            )
        return layer.grad.abs()


@UPDATERS.register("snfs", "SNFS: drop by magnitude, regrow by momentum, layers shared by mean momentum")
class SnfsUpdater(Updater):
    dense_gradients: DenseGradients = "always"  # the momentum of inactive weights needs dense gradients

    def update(
        self, layers: list[LayerView], drop_fraction: float, generator: torch.Generator
    ) -> dict[str, LayerUpdate]:
        dropped = self.per_layer_drop(layers, drop_fraction)
        total = sum(layer.active - int(torch.count_nonzero(dropped[layer.name])) for layer in layers)
        momenta = [_momentum(layer) for layer in layers]
        means = [
            float(m[layer.mask].abs().mean()) if layer.active else 0.0
            for m, layer in zip(momenta, layers, strict=True)
        ]
        caps = [int((~dropped[layer.name]).sum()) for layer in layers]
        shares = distribute(total, means, caps)
        return {
            layer.name: grow_strongest(dropped[layer.name], m.abs(), n)
            for layer, m, n in zip(layers, momenta, shares, strict=True)
        }


def _momentum(layer: LayerView) -> Tensor:
    if layer.momentum is None:
        raise SecateursError(
            f"SNFS found no momentum for {layer.name}",
            fix="train with momentum (sgd momentum > 0, or adam) and mask_grads false",
        )
    return layer.momentum


@UPDATERS.register("dsr", "DSR: one adaptive global magnitude threshold, regrowth shared by survivors")
class DsrUpdater(Updater):
    """`tolerance`: the threshold doubles (halves) when an update prunes fewer (more) than the target
    fraction by more than this relative margin. `threshold`: the starting value; by default the
    magnitude that drops exactly the target at the first update. A layer keeps at least one weight.
    """

    def __init__(self, tolerance: float = 0.1, threshold: float | None = None) -> None:
        if not 0 <= tolerance < 1:
            raise ConfigError(f"DSR tolerance {tolerance} is outside [0, 1)", fix="use e.g. tolerance: 0.1")
        if threshold is not None and threshold <= 0:
            raise ConfigError(f"DSR threshold {threshold} is not positive", fix="omit it or give e.g. 0.001")
        self.tolerance, self.threshold = tolerance, threshold

    def update(
        self, layers: list[LayerView], drop_fraction: float, generator: torch.Generator
    ) -> dict[str, LayerUpdate]:
        active = sum(layer.active for layer in layers)
        target = drop_fraction * active
        if self.threshold is None:
            magnitudes = torch.cat([layer.weight.detach().abs()[layer.mask].float() for layer in layers])
            k = max(1, removed_count(target))
            self.threshold = float(magnitudes.kthvalue(k).values) if k <= magnitudes.numel() else math.inf
        dropped = {}
        for layer in layers:
            below = int((layer.weight.detach().abs()[layer.mask] < self.threshold).sum())
            dropped[layer.name] = drop_weakest(layer, min(below, max(layer.active - 1, 0)))
        removed = active - sum(int(m.sum()) for m in dropped.values())
        if removed < (1 - self.tolerance) * target:
            self.threshold *= 2
        elif removed > (1 + self.tolerance) * target:
            self.threshold /= 2
        survivors = [float(dropped[layer.name].sum()) for layer in layers]
        caps = [int((~dropped[layer.name]).sum()) for layer in layers]
        shares = distribute(removed, survivors, caps)
        return {
            layer.name: grow_strongest(dropped[layer.name], random_scores(layer.mask, generator), n)
            for layer, n in zip(layers, shares, strict=True)
        }


def build_updater(method: str, options: dict[str, Any] | None = None) -> Updater:
    """The registered updater `method` with its options (unknown names and options are ConfigErrors)."""
    updater = UPDATERS.build(method, **(options or {}))
    assert isinstance(updater, Updater)
    return updater


# -- the training callback -----------------------------------------------------------------------------
def drop_fraction_at(config: DynamicSparsity, step: int, end_step: int) -> float:
    """The fraction moved at `step`: constant, or α/2·(1 + cos(π·step/end)) (RigL's cosine decay)."""
    if config.drop_schedule == "constant":
        return config.drop_fraction
    return config.drop_fraction / 2 * (1 + math.cos(math.pi * min(step, end_step) / end_step))


@dataclass
class UpdateRecord:
    """One mask update, for the run's metrics."""

    step: int
    drop_fraction: float
    moved: int  # weights new to the mask (= weights that left it)
    active: int


class DynamicSparseTraining(Callback):
    """Runs an updater every `update_every` steps during one training stage."""

    def __init__(self, config: DynamicSparsity, *, seed: int = 0) -> None:
        self.config = config
        self.updater = build_updater(config.method, config.options)
        self.generator = torch.Generator().manual_seed(seed)
        self.end_step = 0
        self.records: list[UpdateRecord] = []

    def is_update_step(self, step: int) -> bool:
        return step > 0 and step % self.config.update_every == 0 and step < self.end_step

    def dense_gradient_at(self, step: int) -> bool:
        """Whether the method computes the dense gradient at `step` (for training-FLOPs accounting)."""
        rule = self.updater.dense_gradients
        return rule == "always" or (rule == "update" and self.is_update_step(step))

    def on_train_start(self, state: TrainState) -> None:
        if masks_of(state.model) is None:
            raise ConfigError(
                "dynamic sparse training needs a sparse model to start from",
                where="train.dst",
                fix="add a prune stage before this train stage, e.g. {criterion: random, allocation: erk}",
            )
        if state.mask_grads and self.updater.dense_gradients != "never":
            raise ConfigError(
                f"{self.config.method} needs dense gradients, but the stage masks gradients",
                where="train.mask_grads",
                fix="set mask_grads: false (pruned weights are kept at zero after every step anyway)",
            )
        self.end_step = math.floor(self.config.end_fraction * state.total_steps)

    def on_step_end(self, state: TrainState) -> None:
        if self.is_update_step(state.step):
            self.update(state)

    @torch.no_grad()
    def update(self, state: TrainState) -> None:
        masks = masks_of(state.model)
        assert masks is not None
        params = dict(state.model.named_parameters())
        layers = [
            LayerView(n, params[n], masks[n], params[n].grad, momentum_of(state.optimizer, params[n]))
            for n in masks
        ]
        drop_fraction = drop_fraction_at(self.config, state.step, self.end_step)
        with rounding_rule(self.config.rounding):
            updates = self.updater.update(layers, drop_fraction, self.generator)
        before = sum(layer.active for layer in layers)
        after = sum(int(torch.count_nonzero(updates[n].mask)) for n in masks)
        if before != after:
            raise SecateursError(
                f"{self.config.method} changed the number of active weights ({before} → {after})"
            )
        moved = 0
        for layer in layers:
            u = updates[layer.name]
            # kept must lie in the old and the new mask (count_nonzero: `any` on bools is slow on a CPU)
            if int(torch.count_nonzero(u.kept & ~(layer.mask & u.mask))):
                raise SecateursError(f"{self.config.method} grew an active weight of {layer.name}")
            # As in RigL, a weight dropped and grown back in the same update was never moved: it keeps
            # its value and state. Only weights new to the mask start at zero with fresh state.
            changed = flat_nonzero(u.mask ^ layer.mask)  # grown or dropped, as flat indices
            grown = changed[u.mask.reshape(-1)[changed]]
            zero_at(layer.weight, grown)
            zero_optimizer_entries(state.optimizer, params[layer.name], changed)
            moved += grown.numel()
        state.install_masks(MaskSet({n: updates[n].mask for n in masks}))
        self.records.append(UpdateRecord(state.step, drop_fraction, moved, after))


def momentum_of(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> Tensor | None:
    """The optimizer's first moment of `param`: SGD's momentum buffer or Adam's exp_avg (else None)."""
    state = optimizer.state.get(param, {})
    for key in ("momentum_buffer", "exp_avg"):
        value = state.get(key)
        if isinstance(value, Tensor) and value.shape == param.shape:
            return value
    return None


@TRAINING.register("dst", "dynamic sparse training: an updater moves the mask at a fixed sparsity")
class DynamicSparseMethod(TrainingMethod):
    name = "dst"
    schema: ClassVar[type] = DynamicSparsity
    choices = ("method", UPDATERS)

    def __init__(self, config: DynamicSparsity, services: StageServices) -> None:
        super().__init__(config, services)
        self.callback = DynamicSparseTraining(config, seed=services.seed)
        self.dense_gradient_at = self.callback.dense_gradient_at

    def callbacks(self) -> list[Callback]:
        return [self.callback]

    def events(self) -> list[tuple[int, dict[str, Any]]]:
        return [(r.step, asdict(r)) for r in self.callback.records]
