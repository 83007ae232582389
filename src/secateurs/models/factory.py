"""Your own model in a recipe: `model: {factory: "package.module:function", options: {...}}`.

The factory is any importable callable that returns an `nn.Module` (a function or the class
itself). It is called with the recipe's options, plus `input_shape` and `num_classes` from the
data set when its signature has parameters of those names that the options leave out. It runs
with the global RNG seeded from the recipe's seed (and restored afterwards), so a factory that
draws its weights from torch's RNG gives the same weights for the same seed; anything else it
does (numpy's RNG, files it reads, pretrained weights it loads) is the factory's own to keep
reproducible. The run hash covers the import path and the options, not the factory's code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.core.plugins import import_callable
from secateurs.models.init import seeded_rng

__all__ = ["DATA_FILLED", "build_from_factory", "model_factory"]

DATA_FILLED = ("input_shape", "num_classes")
"""Factory parameters filled from the data set when the recipe's options leave them out."""


def model_factory(factory: str | Callable[..., Any]) -> Callable[..., Any]:
    """The callable behind `factory` (an import path or the callable itself)."""
    if isinstance(factory, str):
        return import_callable(factory, where="model.factory")
    if not callable(factory):
        raise ConfigError(
            f"a model factory must be callable, got {type(factory).__name__}",
            fix="pass an nn.Module, a function returning one, or an import path package.module:function",
        )
    return factory


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return name in params and params[name].kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def build_from_factory(
    factory: str | Callable[..., Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    seed: int | None = None,
    **options: Any,
) -> nn.Module:
    """Call the user's model factory (see the module doc) and check that it made an nn.Module."""
    fn = model_factory(factory)
    filled = {"input_shape": tuple(input_shape), "num_classes": num_classes}
    kwargs = {k: v for k, v in filled.items() if k not in options and _accepts(fn, k)}
    kwargs.update(options)
    label = factory if isinstance(factory, str) else getattr(factory, "__qualname__", repr(factory))
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as err:
        raise ConfigError(
            f"model factory {label!r} cannot be called with {sorted(kwargs) or 'no arguments'} ({err})",
            fix="give its required arguments under model.options",
        ) from None
    except ValueError:  # no signature to check against: let the call speak
        pass
    if seed is None:
        model = fn(**kwargs)
    else:
        with seeded_rng(seed):
            model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model factory {label!r} returned a {type(model).__name__}, not an nn.Module",
            fix="make the factory return the model",
        )
    return model
