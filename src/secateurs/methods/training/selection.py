"""Sparse selection: train which weights to keep, never the weights themselves.

Two methods learn a real score `s` per selected weight while every original parameter of the model
stays frozen; the layer computes with `W ⊙ m`:

* ``edge_popup`` (Ramanujan et al. 2020): `m` keeps the top-k of `|s|` per layer, k fixed by the target
  sparsity (`numel - removed_count(numel·sparsity)` entries, the count rounded by `rounding` as in a
  prune: half_up by default, floor for the edge-popup code's int(s·numel); ties to the
  lower index). The gradient reaches the scores straight through the top-k of |s|:
  dL/ds = sign(s) ⊙ dL/dm = sign(s) ⊙ (dL/dW_eff) ⊙ W.
* ``supermask`` (Zhou et al. 2019): in training mode `m ~ Bernoulli(sigmoid(s))`, drawn anew on every
  forward from a generator the selection owns (seeded, so a run repeats bit for bit); the gradient
  passes straight through the sampling: dL/ds = dL/dm · sigmoid'(s). In eval mode the mask is the
  deterministic `sigmoid(s) > 0.5`. The method learns its own sparsity, so none is given.

Scores start Kaiming-uniform, as in the edge-popup paper (so a supermask starts near p = 0.5).
The frozen weights are optionally re-drawn first: ``signed_constant`` (±sqrt(2/fan_in), the
"signed Kaiming constant" both papers found best), ``kaiming_normal`` or ``keep``.

The masking is a `torch.nn.utils.parametrize` parametrization on each weight, so `model.forward`
is untouched. While attached, the scores are the only parameters with `requires_grad=True`, so an
optimizer over `[p for p in model.parameters() if p.requires_grad]` trains only them. `finish()`
removes the parametrizations, restores parameter names, order and `requires_grad`, and zeroes the
unselected weights, leaving a plain pruned model and its `MaskSet`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn.utils import parametrize

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, masks_of
from secateurs.core.registry import Registry
from secateurs.core.sparsity import Rounding, check_rounding, removed_count
from secateurs.core.topk import topk_mask
from secateurs.methods.layers import LayerSelection, select_parameters
from secateurs.methods.spec import known
from secateurs.methods.training.base import TRAINING, TrainingMethod, stage_sparsity

_SELECTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# -- straight-through estimators ---------------------------------------------------------------
class _TopK(torch.autograd.Function):
    """Top-k of its input as a 0/1 tensor; the backward passes the gradient through unchanged."""

    @staticmethod
    def forward(ctx: Any, scores: Tensor, k: int) -> Tensor:
        keep = topk_mask(scores.detach().reshape(-1), k)
        return keep.reshape(scores.shape).to(scores.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class _Bernoulli(torch.autograd.Function):
    """A 0/1 sample of Bernoulli(probs); the backward treats the sample as if it were `probs`."""

    @staticmethod
    def forward(ctx: Any, probs: Tensor, generator: torch.Generator) -> Tensor:
        p = probs.detach()
        if p.device != generator.device:  # model moved after attach: draw where the generator lives
            return torch.bernoulli(p.to(generator.device), generator=generator).to(p.device)
        return torch.bernoulli(p, generator=generator)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


# -- parametrizations ----------------------------------------------------------------------------
class _EdgePopup(nn.Module):
    """Parametrization W -> W ⊙ topk(|scores|)."""

    def __init__(self, scores: Tensor, k: int) -> None:
        super().__init__()
        self.scores = nn.Parameter(scores)
        self.k = k

    def mask(self) -> Tensor:
        """The deterministic boolean mask (the same one the forward uses)."""
        return topk_mask(self.scores.detach().abs().reshape(-1), self.k).reshape(self.scores.shape)

    def forward(self, weight: Tensor) -> Tensor:
        # through |s| with autograd, as the paper's code: dL/ds = sign(s) · dL/dm, so a score moves
        # away from zero (towards selection) when selecting its weight would lower the loss
        return weight * _TopK.apply(self.scores.abs(), self.k)


class _Supermask(nn.Module):
    """Parametrization W -> W ⊙ m, m ~ Bernoulli(sigmoid(scores)) in training, sigmoid > 0.5 in eval."""

    def __init__(self, scores: Tensor, generator: torch.Generator) -> None:
        super().__init__()
        self.scores = nn.Parameter(scores)
        self.generator = generator  # shared by all layers of one selection

    def mask(self) -> Tensor:
        """The deterministic boolean mask (the eval-mode one)."""
        return torch.sigmoid(self.scores.detach()) > 0.5

    def forward(self, weight: Tensor) -> Tensor:
        probs = torch.sigmoid(self.scores)
        if self.training:
            m = _Bernoulli.apply(probs, self.generator)
        else:
            m = (probs.detach() > 0.5).to(weight.dtype)
        return weight * m


# -- the selection methods ----------------------------------------------------------------------
@dataclass(frozen=True)
class Selector:
    """A selection method: whether it keeps a fixed top-k (needs a sparsity), and its parametrization."""

    takes_sparsity: bool
    build: Callable[[Tensor, int, torch.Generator], nn.Module]  # (initial scores, k, sampling generator)


SELECTORS: Registry[Selector] = Registry("selection method")
SELECTORS.add(
    "edge_popup",
    Selector(True, lambda scores, k, _: _EdgePopup(scores, k)),
    "train scores, keep the top-k per layer; weights frozen (Ramanujan et al. 2020)",
)
SELECTORS.add(
    "supermask",
    Selector(False, lambda scores, _, generator: _Supermask(scores, generator)),
    "train Bernoulli mask probabilities; weights frozen (Zhou et al. 2019)",
)
WEIGHT_INITS = ("signed_constant", "kaiming_normal", "keep")


class SparseSelection(StrictModel):
    """The `select` block of a train stage: the stage trains scores that choose the mask, not weights."""

    method: str = Field("edge_popup", description="a selection method: edge_popup or supermask")
    sparsity: float | None = Field(
        None, ge=0, lt=1, description="edge_popup: per-layer sparsity (default: the recipe's or level's)"
    )
    weight_init: Literal["signed_constant", "kaiming_normal", "keep"] = "signed_constant"
    layers: LayerSelection | None = Field(None, description="the selected layers (default: the recipe's)")
    rounding: Rounding = Field(
        "half_up",
        description="edge_popup: rounding of each layer's removed count s·n: half_up, floor (the edge-popup "
        "code's int(s·n)) or ceil",
    )

    @model_validator(mode="after")
    def _known_method(self) -> SparseSelection:
        known(SELECTORS, self.method)
        learns_sparsity = not SELECTORS.get(self.method).takes_sparsity
        if learns_sparsity and self.sparsity is not None:
            raise ValueError(f"{self.method} learns its own sparsity: leave `sparsity` out")
        if learns_sparsity and self.rounding != "half_up":
            raise ValueError(
                f"{self.method} learns its own sparsity, so it has no count to round: leave `rounding` out"
            )
        return self


# -- attach / finish -----------------------------------------------------------------------------
class SelectionHandle:
    """Returned by `attach_selection`: the scores to train, the current masks, and `finish()`."""

    def __init__(
        self,
        model: nn.Module,
        targets: dict[str, tuple[nn.Module, str]],
        parametrizations: dict[str, nn.Module],
        requires_grad: list[tuple[nn.Parameter, bool]],
        param_order: dict[int, tuple[nn.Module, list[str]]],
        method: str,
    ) -> None:
        self.model = model
        self.method = method
        self._targets = targets
        self._parametrizations = parametrizations
        self._requires_grad = requires_grad
        self._param_order = param_order
        self._finished = False
        self.scores: dict[str, nn.Parameter] = {n: p.scores for n, p in parametrizations.items()}

    @property
    def finished(self) -> bool:
        return self._finished

    @torch.no_grad()
    def frozen_weights(self) -> dict[str, Tensor]:
        """Copies of the frozen weights the masks select from (unmasked): the selection's dense parent."""
        if self._finished:
            raise ConfigError("the selection was finished", fix="read frozen_weights() before finish()")
        return {
            n: getattr(module.parametrizations, attr).original.detach().clone()
            for n, (module, attr) in self._targets.items()
        }

    @torch.no_grad()
    def masks(self) -> MaskSet:
        """The current deterministic masks (edge-popup: top-k of |s|; supermask: sigmoid(s) > 0.5)."""
        return MaskSet({n: p.mask() for n, p in self._parametrizations.items()})

    def finish(self) -> MaskSet:
        """Detach the selection: plain frozen weights back under their own names, unselected ones zeroed."""
        if self._finished:
            raise ConfigError(
                "this selection was already finished",
                where="SelectionHandle.finish",
                fix="call finish() once; attach_selection again to select anew",
            )
        masks = self.masks()
        for module, attr in self._targets.values():
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        for module, order in self._param_order.values():
            # remove_parametrizations re-adds the weight last; restore the original order of the keys
            params = dict(module._parameters)
            module._parameters.clear()
            module._parameters.update({k: params[k] for k in order})
        for p, flag in self._requires_grad:
            p.requires_grad_(flag)
        masks.apply(self.model)
        self._finished = True
        return masks


def _fan_in(weight: Tensor) -> int:
    """in_features (Linear) or in_channels/groups · prod(kernel) (Conv): one output unit's inputs."""
    return weight[0].numel()


def _check_options(method: str, sparsity: float | None, weight_init: str) -> None:
    where = "attach_selection"
    selector = SELECTORS.get(method)
    if weight_init not in WEIGHT_INITS:
        raise ConfigError(
            f"unknown weight_init {weight_init!r}", where=where, fix=f"use one of {', '.join(WEIGHT_INITS)}"
        )
    if not selector.takes_sparsity and sparsity is not None:
        raise ConfigError(
            f"{method} takes no sparsity (got {sparsity!r}): the {method} learns its own sparsity",
            where=where,
            fix="leave sparsity=None, or use method='edge_popup' for a fixed sparsity",
        )
    if selector.takes_sparsity:
        ok = isinstance(sparsity, int | float) and not isinstance(sparsity, bool) and 0.0 <= sparsity < 1.0
        if not ok:
            raise ConfigError(
                f"{method} needs a sparsity in [0, 1), got {sparsity!r}",
                where=where,
                fix="pass sparsity=, the fraction of each layer's weights left out, e.g. 0.5",
            )


def _resolve(model: nn.Module, names: list[str]) -> dict[str, tuple[nn.Module, str]]:
    """Map each parameter name to (owning module, 'weight'), refusing anything else."""
    where = "attach_selection"
    if isinstance(names, str) or not names:
        raise ConfigError(
            f"names must be a non-empty list of parameter names, got {names!r}",
            where=where,
            fix="pass e.g. ['fc1.weight'] (see secateurs.methods.layers.select_parameters)",
        )
    modules = dict(model.named_modules())
    selectable = [
        f"{m}.weight" if m else "weight"
        for m, mod in modules.items()
        if isinstance(mod, _SELECTABLE) and not parametrize.is_parametrized(mod, "weight")
    ]
    params = dict(model.named_parameters())
    out: dict[str, tuple[nn.Module, str]] = {}
    for name in names:
        if name in out:
            raise ConfigError(f"parameter {name!r} is named twice", where=where, fix="name each weight once")
        mod_name, _, attr = name.rpartition(".")
        module = modules.get(mod_name)
        if module is not None and parametrize.is_parametrized(module, attr):
            raise ConfigError(
                f"{name!r} already has a parametrization (a selection still attached?)",
                where=where,
                fix="finish() the earlier selection before attaching a new one",
            )
        if name not in params:
            raise ConfigError(
                f"the model has no parameter {name!r}",
                where=where,
                fix=f"selectable weights are: {', '.join(selectable) or 'none'}",
            )
        if attr != "weight" or not isinstance(module, _SELECTABLE):
            raise ConfigError(
                f"{name!r} is not the weight of a Linear or Conv layer",
                where=where,
                fix=f"selectable weights are: {', '.join(selectable) or 'none'}",
            )
        out[name] = (module, attr)
    return out


def attach_selection(
    model: nn.Module,
    names: list[str],
    *,
    method: str,
    sparsity: float | None = None,
    weight_init: str = "signed_constant",
    seed: int = 0,
    rounding: str = "half_up",
) -> SelectionHandle:
    """Freeze `model` and attach a trainable score per named weight (see the module docstring).

    Re-initialisation and score initialisation draw, layer by layer in the order of `names`, from a
    CPU generator seeded with `seed` (the same on every device); supermask sampling draws from a
    generator on the weights' device, seeded from that one. Attach after moving the model to its device.
    """
    _check_options(method, sparsity, weight_init)
    rounding = check_rounding(rounding, where="attach_selection rounding")
    targets = _resolve(model, list(names))

    selector = SELECTORS.get(method)
    k_of: dict[str, int] = {}
    if selector.takes_sparsity:
        for name, (module, attr) in targets.items():
            n = getattr(module, attr).numel()
            k_of[name] = n - removed_count(n * float(sparsity or 0.0), rounding)  # as the uniform allocation
            if k_of[name] == 0:
                raise ConfigError(
                    f"sparsity {sparsity} keeps no weight of {name!r} ({n} entries)",
                    where="attach_selection",
                    fix="lower the sparsity or leave this layer out of the selection",
                )

    init_gen = torch.Generator().manual_seed(seed)
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    param_order = {id(m): (m, list(m._parameters)) for m, _ in targets.values()}

    inits: dict[str, Tensor] = {}
    for name, (module, attr) in targets.items():
        w = getattr(module, attr)
        std = math.sqrt(2.0 / _fan_in(w))
        with torch.no_grad():
            if weight_init == "signed_constant":
                signs = torch.randint(0, 2, w.shape, generator=init_gen).to(w.dtype) * 2 - 1
                w.copy_(signs * std)
            elif weight_init == "kaiming_normal":
                w.copy_(torch.randn(w.shape, generator=init_gen, dtype=w.dtype) * std)
        scores = torch.empty(w.shape, dtype=w.dtype)
        nn.init.kaiming_uniform_(scores, a=math.sqrt(5), generator=init_gen)
        inits[name] = scores.to(w.device)

    # drawn after the inits, so edge-popup and supermask runs of one seed start from the same weights
    sample_seed = int(torch.randint(0, 2**62, (1,), generator=init_gen))
    device = next(iter(targets.values()))[0].weight.device
    sample_gen = torch.Generator(device=device).manual_seed(sample_seed)

    for p, _ in requires_grad:
        p.requires_grad_(False)

    parametrizations: dict[str, nn.Module] = {}
    for name, (module, attr) in targets.items():
        par = selector.build(inits[name], k_of.get(name, 0), sample_gen)
        par.train(module.training)
        # unsafe=True skips torch's trial forward, which would consume a supermask sample at attach time
        parametrize.register_parametrization(module, attr, par, unsafe=True)
        parametrizations[name] = par

    return SelectionHandle(model, targets, parametrizations, requires_grad, param_order, method)


@TRAINING.register("select", "sparse selection: train a mask over frozen weights (edge_popup, supermask)")
class SelectionMethod(TrainingMethod):
    """Freezes the model and trains scores during the stage; the selected mask becomes the model's
    masks, the frozen unmasked weights its dense parent."""

    name = "select"
    schema: ClassVar[type] = SparseSelection
    choices = ("method", SELECTORS)

    def before_training(self) -> None:
        spec: SparseSelection = self.config
        model = self.services.model
        if masks_of(model) is not None:
            raise ConfigError(
                "sparse selection learns its own mask and cannot start from a pruned model",
                where="train.select",
                fix="remove the prune stages before the selecting train stage",
            )
        sparsity = None
        if SELECTORS.get(spec.method).takes_sparsity:
            sparsity = stage_sparsity(self.services, spec.sparsity)
            if sparsity is None:
                raise ConfigError(
                    "edge-popup needs a sparsity",
                    where="train.select.sparsity",
                    fix="set it, or the recipe's sparsity",
                )
        layers = spec.layers if spec.layers is not None else self.services.layers
        self.handle = attach_selection(
            model,
            select_parameters(model, layers),
            method=spec.method,
            sparsity=sparsity,
            weight_init=spec.weight_init,
            seed=self.services.seed,
            rounding=spec.rounding,
        )

    def after_training(self) -> None:
        model = self.services.model
        frozen = self.handle.frozen_weights()
        masks = self.handle.finish()
        dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.services.set_masks(masks)
        self.services.set_dense_state({**dense, **frozen})
