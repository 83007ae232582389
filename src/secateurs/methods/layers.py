"""Which parameters a prune step may touch.

By default: the weights of every Linear and Conv layer (biases and norm layers stay dense).
Layers are chosen by module type and by name pattern (shell-style, matched against the module
name and the parameter name); the first/last prunable layer can be skipped, as most papers do.
A pattern or type that matches nothing is an error, never silently ignored.

A parameter shared by several layers (a head tied to its embedding, two tied Linears) is selected
once, under its canonical name (the first name `model.named_parameters()` gives it), and only if
none of its layers is skipped or excluded: patterns match any of its names. A parameter with no
entries (nn.Linear(0, 4)) is never selected: there is nothing in it to prune.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from pydantic import Field
from torch import nn

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError
from secateurs.core.masks import canonical_names

DEFAULT_TYPES = ["Linear", "Conv1d", "Conv2d", "Conv3d"]


class LayerSelection(StrictModel):
    """Options choosing the prunable parameters of a model."""

    include: list[str] = Field(
        default_factory=list, description="name patterns; empty = all layers of `types`"
    )
    exclude: list[str] = Field(default_factory=list, description="name patterns removed from the selection")
    types: list[str] = Field(default_factory=lambda: list(DEFAULT_TYPES))
    exclude_types: list[str] = Field(default_factory=list)
    skip_first: bool = False
    skip_last: bool = False
    include_bias: bool = False


def _is_module_type(obj: object) -> bool:
    """True for module classes such as nn.Linear (not for nn.functional, nn.init, …)."""
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _matches(pattern: str, module_name: str, param_name: str) -> bool:
    return fnmatchcase(module_name, pattern) or fnmatchcase(param_name, pattern)


def select_parameters(model: nn.Module, selection: LayerSelection | None = None) -> list[str]:
    """Canonical names of the parameters to prune, in module definition order, each once."""
    sel = selection or LayerSelection()
    present_types = {type(m).__name__ for m in model.modules()}
    for t in [*sel.types, *sel.exclude_types]:
        if t not in present_types and not _is_module_type(getattr(nn, t, None)):
            raise ConfigError(
                f"layer type {t!r} is not a torch.nn module type",
                fix=f"use class names such as {', '.join(DEFAULT_TYPES)}",
            )

    candidates: list[tuple[str, str]] = []  # (module name, parameter name)
    empty: set[str] = set()  # parameters of no entries (nn.Linear(0, 4)): nothing to prune
    for mod_name, module in model.named_modules():
        kind = type(module).__name__
        if kind not in sel.types or kind in sel.exclude_types:
            continue
        for p_name, param in module.named_parameters(recurse=False):
            if p_name == "weight" or (sel.include_bias and p_name == "bias"):
                candidates.append((mod_name, f"{mod_name}.{p_name}" if mod_name else p_name))
                if param.numel() == 0:
                    empty.add(candidates[-1][1])
    if not candidates:
        raise ConfigError(
            f"no parameters of types {sel.types} in the model",
            fix="set layers.types to module types the model has",
        )
    canonical = canonical_names(model)  # a tied parameter: the same canonical name in every layer
    if sel.skip_first or sel.skip_last:  # the first/last layer that has weights
        modules = list(dict.fromkeys(m for m, p in candidates if p not in empty))
        drop = set(modules[:1] if sel.skip_first else []) | set(modules[-1:] if sel.skip_last else [])
        dropped = {canonical[p] for m, p in candidates if m in drop}
        candidates = [(m, p) for m, p in candidates if canonical[p] not in dropped]

    def hit(pattern: str, module_name: str, param_name: str) -> bool:
        return _matches(pattern, module_name, param_name) or fnmatchcase(canonical[param_name], pattern)

    all_names = list(dict.fromkeys(p for _, p in candidates))
    for pattern in [*sel.include, *sel.exclude]:
        if not any(hit(pattern, m, p) for m, p in candidates):
            raise ConfigError(
                f"layer pattern {pattern!r} matches no prunable layer",
                fix=f"prunable parameters are: {', '.join(all_names)}",
            )
    if sel.include:
        candidates = [(m, p) for m, p in candidates if any(hit(pat, m, p) for pat in sel.include)]
    excluded = {canonical[p] for m, p in candidates if any(hit(pat, m, p) for pat in sel.exclude)}
    chosen = [n for n in dict.fromkeys(canonical[p] for _, p in candidates) if n not in excluded | empty]
    if not chosen and all(p in empty for _, p in candidates):
        raise ConfigError(
            "every selected layer has 0 weights (a dimension of size 0): there is nothing to prune",
            fix="select layers that have weights (layers.types / layers.include)",
        )
    if not chosen:
        raise ConfigError("the layer selection is empty", fix="loosen include/exclude")
    return chosen
