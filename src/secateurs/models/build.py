"""`build_model`: check the request against the model's spec, then build and seed it."""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.models._spec import MODELS, RANK_DATA, RANK_SHAPES, ModelSpec
from secateurs.models.init import reinitialize, seeded_rng


def _check_shape(input_shape: object) -> tuple[int, ...]:
    """A non-empty tuple of positive ints (also accepts lists and torch.Size)."""
    dims = tuple(input_shape) if isinstance(input_shape, list | tuple) else None
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ConfigError(
            f"input shape {input_shape!r} must be a non-empty tuple of positive integers",
            fix="pass the shape of one sample without the batch dimension, e.g. (40,) or (1, 28, 28)",
        )
    return dims


def _check_rank(spec: ModelSpec, shape: tuple[int, ...]) -> None:
    """Wrong rank: say what the model needs, which models fit this shape and which data fit the model."""
    if len(shape) in spec.input_ranks:
        return
    fitting = [
        n
        for n in MODELS.names()
        if len(shape) in MODELS.get(n).input_ranks and MODELS.get(n).task == spec.task
    ]
    models = f"models accepting {shape}: {', '.join(fitting)}" if fitting else f"no model accepts {shape}"
    data = "; ".join(RANK_DATA[r] for r in spec.input_ranks if r in RANK_DATA)
    raise ConfigError(
        f"model {spec.name!r} expects inputs of shape {spec.accepted_shapes()}, "
        f"but got {shape}, an input of shape {RANK_SHAPES.get(len(shape), f'rank {len(shape)}')}",
        fix=f"choose one of the {models}; or use {spec.name!r} with {data}",
    )


def _check_options(spec: ModelSpec, options: dict[str, Any]) -> None:
    """Unknown options are errors, never silently ignored."""
    known = spec.options()
    for key in options:
        if key in known:
            continue
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        valid = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "none"
        raise ConfigError(
            f"unknown option {key!r} for model {spec.name!r}.{hint}",
            fix=f"remove or rename it; the options of {spec.name!r} are: {valid}",
        )


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    seed: int | None = None,
    task: str | None = None,
    **options: Any,
) -> nn.Module:
    """Build registered model `name` for samples of `input_shape` and `num_classes` outputs.

    With `seed`, the parameters depend only on the seed (not on the global RNG, which is left as
    it was); without it they are drawn from the global RNG like any PyTorch module. A pretrained
    model keeps its weights. `task` (the data set's) must be the model's.
    """
    spec = MODELS.get(name)
    if task is not None and task != spec.task:
        fitting = ", ".join(n for n in MODELS.names() if MODELS.get(n).task == task)
        raise ConfigError(
            f"model {name!r} is for {spec.task.replace('_', ' ')}, "
            f"but the data set is for {task.replace('_', ' ')}",
            fix=f"use one of the models for it: {fitting or 'none registered'}",
        )
    shape = _check_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(
            f"num_classes={num_classes!r} for model {name!r} must be an integer >= 1",
            fix="take num_classes from the data set",
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"seed={seed!r} must be an integer", fix="pass an int such as 0, or None")
    _check_rank(spec, shape)
    _check_options(spec, options)
    if seed is None or spec.pretrained:  # trained weights are not re-drawn
        return spec.factory(shape, num_classes, **options)
    with seeded_rng(seed):
        model = spec.factory(shape, num_classes, **options)
    reinitialize(model, seed=seed)
    return model
