"""Which parameters a prune step may touch.

By default: the weights of every Linear and Conv layer (biases and norm layers stay dense).
Layers are chosen by module type and by name pattern (shell-style, matched against the module
name and the parameter name); the first/last prunable layer can be skipped, as most papers do.
A pattern or type that matches nothing is an error, never silently ignored.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from pydantic import Field
from torch import nn

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError

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
    """Names of the parameters to prune, in module definition order."""
    sel = selection or LayerSelection()
    present_types = {type(m).__name__ for m in model.modules()}
    for t in [*sel.types, *sel.exclude_types]:
        if t not in present_types and not _is_module_type(getattr(nn, t, None)):
            raise ConfigError(
                f"layer type {t!r} is not a torch.nn module type",
                fix=f"use class names such as {', '.join(DEFAULT_TYPES)}",
            )

    candidates: list[tuple[str, str]] = []  # (module name, parameter name)
    for mod_name, module in model.named_modules():
        kind = type(module).__name__
        if kind not in sel.types or kind in sel.exclude_types:
            continue
        for p_name, _ in module.named_parameters(recurse=False):
            if p_name == "weight" or (sel.include_bias and p_name == "bias"):
                candidates.append((mod_name, f"{mod_name}.{p_name}" if mod_name else p_name))
    if not candidates:
        raise ConfigError(
            f"no parameters of types {sel.types} in the model",
            fix="set layers.types to module types the model has",
        )
    if sel.skip_first or sel.skip_last:
        modules = list(dict.fromkeys(m for m, _ in candidates))
        drop = ({modules[0]} if sel.skip_first else set()) | ({modules[-1]} if sel.skip_last else set())
        candidates = [(m, p) for m, p in candidates if m not in drop]

    all_names = [p for _, p in candidates]
    for pattern in [*sel.include, *sel.exclude]:
        if not any(_matches(pattern, m, p) for m, p in candidates):
            raise ConfigError(
                f"layer pattern {pattern!r} matches no prunable layer",
                fix=f"prunable parameters are: {', '.join(all_names)}",
            )
    if sel.include:
        candidates = [(m, p) for m, p in candidates if any(_matches(pat, m, p) for pat in sel.include)]
    chosen = [p for m, p in candidates if not any(_matches(pat, m, p) for pat in sel.exclude)]
    if not chosen:
        raise ConfigError("the layer selection is empty", fix="loosen include/exclude")
    return chosen
