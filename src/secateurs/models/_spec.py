"""The model registry and the description of one registered architecture.

A `ModelSpec` records which input ranks an architecture accepts, so that a model/data-set
mismatch is reported before any layer is built, with a list of models that would fit.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from secateurs.core.registry import Registry

ModelFactory = Callable[..., nn.Module]

# How an input of each rank is read, and where such inputs come from (used in error messages).
RANK_SHAPES: dict[int, str] = {1: "(L,)", 2: "(C, L)", 3: "(C, H, W)"}
RANK_DATA: dict[int, str] = {
    1: "1-D signals such as MNIST-1D, shape (40,)",
    2: "multi-channel 1-D signals, shape (C, L)",
    3: "images such as MNIST (1, 28, 28), CIFAR (3, 32, 32) or 8x8 digits (1, 8, 8)",
}


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture: `factory(input_shape, num_classes, **options)` builds it."""

    name: str
    factory: ModelFactory
    input_ranks: tuple[int, ...]
    description: str
    task: str = "classification"  # the data sets it fits: "classification" or "language_modeling"
    pretrained: bool = False  # loads trained weights: the recipe's seed does not re-draw them

    def options(self) -> dict[str, Any]:
        """Keyword options of the factory and their defaults (the only options it accepts)."""
        params = inspect.signature(self.factory).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def accepted_shapes(self) -> str:
        """Human-readable list of accepted input shapes, e.g. '(L,) or (C, L)'."""
        return " or ".join(RANK_SHAPES.get(r, f"rank-{r}") for r in self.input_ranks)


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(
    name: str,
    *,
    input_ranks: tuple[int, ...],
    description: str,
    task: str = "classification",
    pretrained: bool = False,
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a factory under `name`; the factory itself is returned unchanged."""

    def deco(factory: ModelFactory) -> ModelFactory:
        spec = ModelSpec(name, factory, input_ranks, description, task, pretrained)
        MODELS.add(name, spec, help=description)
        return factory

    return deco
