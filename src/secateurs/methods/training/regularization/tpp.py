"""Trainability-preserving pruning (TPP, Wang & Fu, ICLR 2023): decorrelate the pruned filters first.

Removing filters breaks a trained network's dynamical isometry (the singular values of its
input-output Jacobian move away from 1), which is why finetuning after pruning is slow and so
sensitive to its learning rate. TPP regularises, before removal, what removal will cut. With W
a layer's filters as rows (a conv's kernels flattened), G = W Wᵀ its Gram matrix and k the
indicator of the kept filters, it penalises every Gram entry that involves a pruned filter:

    L_gram = (1/N²) Σ_ij M_ij G_ij²,  M = 1 − k kᵀ,   ∂L_gram/∂W = (4/N²) (M ⊙ G) W,

so the pruned filters end orthogonal to the kept ones (and, through the diagonal, small):
cutting them leaves the kept filters' correlations, hence the kept network's conditioning, as
they were. `pruned_block: false` keeps only the kept × pruned entries (M = k(1−k)ᵀ + (1−k)kᵀ),
which is zero exactly when the two sets are orthogonal. As in the authors' code, the pruned
groups also get the base penalty (`penalty`, L2 by default, on `sites`) and, with `bn`, the
pruned channels' biases and BatchNorm scales and shifts (every per-channel parameter on their
way) an L2 penalty r·w.

The coefficient grows as GReg's: after k updates (one every `interval` steps, the first at the
start) r = min(k·δ, ceiling); the Gram term is weighted `scale`·r. When r reaches the ceiling
it is held `stabilize` steps, then the pruned set is removed (its masks installed) and the rest
of the stage finetunes; a stage that ends first prunes at its end. Defaults are the authors'
CIFAR settings (δ = 1e-4, τ = 10 steps, ceiling 1, scale 1000, 10000 stabilising steps); short
runs take a larger δ.

The pruned set is the stage's prune step, chosen at its start (any criterion and allocation:
by default the filters' L1 norm, the same fraction per layer) over a structure whose groups
span layers (channels; heads and FFN channels of transformers). The Jacobian singular values
(`eval.isometry`) are published at the start, just before the prune and just after it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.eval.isometry import jsv_stats
from secateurs.methods.training.base import TRAINING, StageServices
from secateurs.methods.training.regularization.base import (
    PenaltyGroups,
    RegularizationMethod,
    RegularizationSpec,
    RegularizedPruning,
)
from secateurs.methods.training.regularization.greg import grown
from secateurs.train.engine import TrainState

__all__ = ["TPPSpec", "TrainabilityPreserving", "gram_penalty", "gram_penalty_grad"]

FILTER_STRUCTURES = ("channel", "heads", "ffn", "heads_ffn")


def _coupling(pruned: Tensor, dtype: torch.dtype, pruned_block: bool) -> Tensor:
    """M: 1 where a Gram entry involves a pruned filter (only kept × pruned without `pruned_block`)."""
    kept = (~pruned).to(dtype)
    if pruned_block:
        return 1 - torch.outer(kept, kept)
    return torch.outer(kept, 1 - kept) + torch.outer(1 - kept, kept)


def gram_penalty(weight: Tensor, pruned: Tensor, *, pruned_block: bool = True) -> Tensor:
    """(1/N²) Σ_ij M_ij (W Wᵀ)_ij² for W = `weight` with its N filters as rows (dim 0)."""
    w = weight.reshape(weight.shape[0], -1)
    m = _coupling(pruned.to(w.device), w.dtype, pruned_block)
    return (m * (w @ w.T).square()).sum() / w.shape[0] ** 2


def gram_penalty_grad(weight: Tensor, pruned: Tensor, *, pruned_block: bool = True) -> Tensor:
    """The gradient of `gram_penalty`: (4/N²)(M ⊙ W Wᵀ) W, shaped like `weight`."""
    w = weight.reshape(weight.shape[0], -1)
    m = _coupling(pruned.to(w.device), w.dtype, pruned_block)
    return ((m * (w @ w.T)) @ w).mul_(4 / w.shape[0] ** 2).reshape(weight.shape)


@dataclass
class PrunedRows:
    """One parameter, a dim, and which of its indices along that dim the pruned groups hold."""

    name: str
    dim: int
    pruned: Tensor  # bool along `dim`, on the parameter's device


def _pruned_rows(groups: PenaltyGroups, picked: Tensor, keep: Any) -> list[PrunedRows]:
    """Per channel site of `groups` that `keep(site)` wants: its indices in picked groups."""
    padded = torch.cat([picked, picked.new_zeros(1)])  # the id num_groups: in no group, kept
    return [
        PrunedRows(site.name, site.dim, padded[site.ids])
        for site in groups.sites
        if site.dim is not None and keep(site)
    ]


class TrainabilityPreserving(RegularizedPruning):
    """TPP's schedule and penalties (see the module docstring)."""

    spec: TPPSpec

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.count = 0  # growth updates so far
        self.filters: list[PrunedRows] = []  # weight matrices whose Gram matrix is penalised
        self.vectors: list[PrunedRows] = []  # biases and per-channel parameters (the `bn` L2)
        self.inputs: Any = None  # () -> samples the Jacobian is measured on; None: not measured
        self.isometry: dict[str, float] = {}
        self.before_prune: dict[str, Tensor] | None = None  # the penalised weights just before the prune

    @property
    def r(self) -> float:
        """The growing coefficient now."""
        return grown(self.count, self.spec.delta, self.spec.ceiling)

    def start(self, state: TrainState) -> None:
        self.pick()

    def on_train_start(self, state: TrainState) -> None:
        fresh = self._restored is None
        super().on_train_start(state)
        assert self.picked is not None
        if not bool(self.picked.any()):
            raise ConfigError(
                "the prune step removes no groups: there is nothing to decorrelate",
                where="train.tpp",
                fix="give a larger sparsity",
            )
        every = PenaltyGroups.from_layout(self._layout(), state.model, "all")
        params = self.params
        self.filters = _pruned_rows(every, self.picked, lambda s: s.role == "producer" and len(s.shape) >= 2)
        if self.spec.bn and self.spec.sites != "all":  # "all" penalises these with the base penalty already
            rows = _pruned_rows(every, self.picked, lambda s: s.role != "consumer" and len(s.shape) == 1)
            self.vectors = [v for v in rows if bool(v.pruned.any())]
        for rows in (*self.filters, *self.vectors):
            rows.pruned = rows.pruned.to(params[rows.name].device)
        if fresh:
            self.measure(state.model, "start")
            self.isometry["gram_penalty_start"] = self.gram_value()

    def update(self, step: int) -> None:
        assert self.picked is not None
        self.count += 1
        r = self.r
        self.coefficients = self.picked.float() * (r if self.spec.l2 else 0.0)
        self.magnitude_ratio(0.9)  # kept/pruned magnitudes, for the records (TPP stops at the ceiling)
        if r >= self.spec.ceiling:
            self.finish(step, "ceiling")

    def coefficient_max(self) -> float:
        return self.r

    def penalty_step(self, state: TrainState) -> None:
        if self.spec.l2:
            super().penalty_step(state)
        r, params = self.r, self.params
        with torch.no_grad():
            for rows in self.filters:
                p = params[rows.name]
                if p.grad is not None:
                    gradient = gram_penalty_grad(
                        p.detach().movedim(rows.dim, 0), rows.pruned, pruned_block=self.spec.pruned_block
                    )
                    p.grad.add_(gradient.movedim(0, rows.dim), alpha=self.spec.scale * r)
            for rows in self.vectors:
                p = params[rows.name]
                if p.grad is not None:
                    p.grad.add_(p.detach() * rows.pruned, alpha=r)

    def gram_value(self) -> float:
        """The Gram term now, summed over the penalised weight matrices (unweighted)."""
        params = self.params
        with torch.no_grad():
            return float(
                sum(
                    float(
                        gram_penalty(
                            params[rows.name].detach().movedim(rows.dim, 0),
                            rows.pruned,
                            pruned_block=self.spec.pruned_block,
                        )
                    )
                    for rows in self.filters
                )
            )

    def measure(self, model: nn.Module, when: str) -> None:
        """The Jacobian singular values' statistics, published as jsv_*_`when`."""
        if self.inputs is None:
            return
        x = self.inputs()
        if not x.is_floating_point():  # token ids: the input-output Jacobian is not defined
            return
        for key, value in jsv_stats(model, x).items():
            self.isometry[f"{key}_{when}"] = value

    def prune(self, state: TrainState) -> None:
        self.measure(state.model, "regularized")
        self.isometry["gram_penalty_regularized"] = self.gram_value()
        params = self.params
        self.before_prune = {rows.name: params[rows.name].detach().clone() for rows in self.filters}
        super().prune(state)
        self.measure(state.model, "pruned")

    def extra_state(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.count = int(state.get("count", 0))

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), **self.isometry}


class TPPSpec(RegularizationSpec):
    """The `tpp` block of a train stage: the prune step picking the filters, and TPP's penalties."""

    criterion: str = "magnitude"
    allocation: str = "uniform"
    structure: str = "channel"
    interval: int = Field(10, gt=0, description="τ: optimizer steps between growths of r")
    stabilize: int = Field(10000, ge=0, description="steps r is held at the ceiling before the prune")
    delta: float = Field(1e-4, gt=0, allow_inf_nan=False, description="δ: growth of r per update")
    ceiling: float = Field(1.0, gt=0, allow_inf_nan=False, description="r stops growing here")
    scale: float = Field(1000.0, gt=0, allow_inf_nan=False, description="the Gram term is weighted scale·r")
    pruned_block: bool = Field(
        True, description="penalise pruned × pruned Gram entries too (the paper); false: kept × pruned only"
    )
    l2: bool = Field(True, description="the base penalty (penalty, sites) on the pruned groups, at r")
    bn: bool = Field(
        True, description="L2 r·w on the pruned channels' biases and BatchNorm scales and shifts"
    )
    jsv_samples: int = Field(
        16, ge=0, description="training samples the Jacobian singular values are measured on (0: none)"
    )

    @model_validator(mode="after")
    def _filters(self) -> TPPSpec:
        if self.structure not in FILTER_STRUCTURES:
            raise ValueError(
                f"trainability-preserving pruning decorrelates whole filters (a Gram matrix of rows): "
                f"structure {self.structure!r} has none; use one of {', '.join(FILTER_STRUCTURES)}"
            )
        if self.delta > self.ceiling:
            raise ValueError(f"delta ({self.delta}) is larger than ceiling ({self.ceiling})")
        if not math.isfinite(self.delta * self.scale):
            raise ValueError("delta × scale overflows")
        return self


@TRAINING.register(
    "tpp",
    "trainability-preserving pruning: a growing Gram penalty decorrelates the pruned filters from the kept",
)
class TPPMethod(RegularizationMethod):
    name = "tpp"
    schema: ClassVar[type] = TPPSpec
    schedule = TrainabilityPreserving

    def __init__(self, config: TPPSpec, services: StageServices) -> None:
        super().__init__(config, services)
        assert isinstance(self.callback, TrainabilityPreserving)
        if config.jsv_samples:
            self.callback.inputs = lambda: services.sample_inputs(config.jsv_samples)
