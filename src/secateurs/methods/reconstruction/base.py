"""The reconstruction axis: after a mask is chosen, update the kept weights to make up for the pruned.

A reconstruction works layer by layer on the layer's calibration statistics
(`secateurs.methods.calibration`): given the dense weight, the input statistics and the keep-mask,
it rewrites the weight in place and returns the layer's final keep-mask. It never adds pruned
weights: the returned mask is the given one (or, for an update that re-chooses the mask itself,
one with the same count), and the pruned weights are exactly zero. So it composes with any
criterion × structure × allocation: choose the mask as usual, then reconstruct.

`reconstruct(model, masks, reconstruction, data=...)` applies one to every masked weight of a
model; it must see the *dense* weights (call it before the masks are applied: `plan()` returns
masks without touching the model), and collects the statistics it needs on `data` unless given
them (sequential calibration passes the current block's). Recipe form:
`reconstruct: {method: obs, select: fixed, blocksize: 128, percdamp: 0.01}`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, masks_of
from secateurs.core.registry import Registry
from secateurs.core.topk import tie_rule
from secateurs.methods.calibration import InputStats, collect
from secateurs.methods.pruning import as_batches
from secateurs.methods.structures import Structure, Unstructured, build_structure


def non_negative_option(method: str, option: str, value: object, fix: str) -> float:
    """A reconstruction's option that must be a finite number >= 0 (not a bool), as a float; else one
    error naming the option and `fix` (an example)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"{method} option {option} must be a non-negative number, got {value!r}",
            where="reconstruct",
            fix=fix,
        )
    return float(value)


class Reconstruction:
    """Base class: subclasses set `name` and implement `check_layer` and `apply`."""

    name: str = ""
    needs_hessian: bool = True  # collect Σxxᵀ with the input statistics

    def check(self, structure: Structure) -> None:
        """Reject a structure whose masks this update cannot keep, before anything is pruned."""

    def check_layer(self, name: str, module: nn.Module, *, pruned_before: bool = False) -> None:
        """Reject a layer this update cannot reconstruct (`name`: its weight's parameter name;
        `pruned_before`: the weight had pruned entries before this prune)."""
        raise NotImplementedError

    def apply(
        self, name: str, module: nn.Module, mask: Tensor, stats: InputStats, *, structure: Structure
    ) -> Tensor:
        """Rewrite `module.weight` (dense on entry) to fit `mask`; return the final keep-mask."""
        raise NotImplementedError


RECONSTRUCTIONS: Registry[type[Reconstruction]] = Registry("reconstruction")


def build_reconstruction(
    spec: str | Mapping[str, Any] | Reconstruction | None, **options: object
) -> Reconstruction | None:
    """A reconstruction from a name and options, a recipe mapping `{method: obs, ...}`, or an instance.

    None (or the name "none") is no reconstruction.
    """
    if spec is None or spec == "none":
        if options:
            raise ConfigError("reconstruction options given without a reconstruction", where="reconstruct")
        return None
    if isinstance(spec, Reconstruction):
        if options:
            raise ConfigError("reconstruction options go with a name, not an instance", where="reconstruct")
        return spec
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if "method" not in spec:
            raise ConfigError(
                "a reconstruction mapping needs a `method`",
                where="reconstruct",
                fix=f"e.g. reconstruct: {{method: obs}}; methods: {', '.join(RECONSTRUCTIONS.names())}",
            )
        name = spec.pop("method")
        return build_reconstruction(name, **{**spec, **options})
    return RECONSTRUCTIONS.build(spec, **options)  # type: ignore[return-value]


def weight_module(model: nn.Module, name: str) -> nn.Module | None:
    """The module owning parameter `name` when it is that module's `weight`, else None (a bias)."""
    module_name, _, tensor = name.rpartition(".")
    return model.get_submodule(module_name) if tensor == "weight" else None


def reconstruct(
    model: nn.Module,
    masks: MaskSet,
    reconstruction: str | Mapping[str, Any] | Reconstruction,
    *,
    data: Any = None,
    stats: Any = None,
    structure: str | Structure | None = None,
    current: MaskSet | None = None,
    ties: str = "index",
    generator: torch.Generator | None = None,
) -> MaskSet:
    """Reconstruct every masked weight of `model` in place; returns the masks after reconstruction.

    The weights must still be dense (the masks not yet applied). `stats` is an object whose
    `get(module_name)` gives the `InputStats` of that layer (a `StatsCollector`); without it they
    are collected on `data` (calibration batches) with one forward pass of the whole model.
    `structure` is the structure the masks were chosen with (a name or an instance, default
    unstructured; `select: adaptive` follows an `nm` one) and `current` the model's masks before
    this prune (default: the recorded ones). `ties` is the prune's tie rule, for a reconstruction
    that chooses its own mask (SparseGPT's `select: adaptive`; `generator` seeds "random").
    Masks of other tensors (biases) and of weights that keep every entry are returned unchanged,
    those weights left as they are; the caller applies and records the result (`set_masks`).
    """
    built = build_reconstruction(reconstruction)
    assert built is not None
    structure = build_structure(structure or Unstructured())
    built.check(structure)
    current = masks_of(model) if current is None else current
    owners: dict[str, nn.Module] = {}
    for name in masks:
        module = weight_module(model, name)
        if module is not None and not bool(masks[name].all()):  # a layer keeping every weight stays
            before = current is not None and name in current and not bool(current[name].all())
            built.check_layer(name, module, pruned_before=before)
            owners[name] = module
    if stats is None:
        if data is None:
            raise ConfigError(
                f"reconstruction {built.name!r} needs calibration data for the layers' inputs",
                where="reconstruct",
                fix="pass data= (calibration batches)",
            )
        modules = {name.rpartition(".")[0]: module for name, module in owners.items()}
        stats = collect(model, modules, as_batches(data), hessian=built.needs_hessian, norms=False)
    out = dict(masks.items())
    with torch.no_grad(), tie_rule(ties, generator):
        for name, module in owners.items():
            layer_stats = stats.get(name.rpartition(".")[0])
            out[name] = built.apply(name, module, masks[name], layer_stats, structure=structure)
    return MaskSet(out)
