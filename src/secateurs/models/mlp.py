"""Fully connected networks: a configurable MLP and LeNet-300-100."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.models._checks import positive_ints
from secateurs.models._spec import register_model
from secateurs.models.init import init_weights

LEAKY_SLOPE = 0.1  # leaky_relu's negative slope: invertible, and its inverse (x / 0.1) stays tame
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "leaky_relu": functools.partial(nn.LeakyReLU, LEAKY_SLOPE),
    "linear": nn.Identity,
}


class Residual(nn.Module):
    """`x + block(x)`: a hidden layer of the residual MLP (input and output of one width)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class MLP(nn.Module):
    """Flatten, then Linear+activation per hidden width, then a Linear classifier.

    `features` holds the hidden layers and `classifier` the output layer, which is the last
    module in definition order (so "skip the last layer" selections find it). With
    `activation="linear"` the network is a deep linear network (dynamical isometry studies);
    `tanh` and `leaky_relu` (slope 0.1) are invertible, as the closed-form trainer needs.
    With `residual=True` a hidden layer as wide as its input adds its input to its output,
    `h + act(W h + b)`: the MNIST-1D paper's MLP (Greydanus 2020), whose tickets we reproduce.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        activation: str = "relu",
        residual: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            pair = [nn.Linear(width, h), ACTIVATIONS[activation]()]
            layers += [Residual(nn.Sequential(*pair))] if residual and h == width else pair
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_model("mlp", input_ranks=(1, 2, 3), description="MLP on flattened inputs (MNIST-1D: 100-100)")
def make_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: Sequence[int] = (100, 100),
    activation: str = "relu",
    residual: bool = False,
) -> MLP:
    """Any input is flattened; `hidden` lists the hidden widths ([] gives a linear model);
    `residual` adds a skip connection around each hidden layer as wide as its input."""
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"mlp option activation={activation!r} is not known",
            fix=f"use one of: {', '.join(ACTIVATIONS)}",
        )
    if not isinstance(residual, bool):
        raise ConfigError(f"mlp option residual={residual!r} must be true or false", fix="use residual: true")
    widths = positive_ints("mlp", "hidden", hidden)
    return MLP(math.prod(input_shape), widths, num_classes, activation, residual)


@register_model("lenet300", input_ranks=(1, 2, 3), description="LeNet-300-100 on flattened inputs")
def make_lenet300(input_shape: tuple[int, ...], num_classes: int) -> MLP:
    """LeCun et al.'s 300-100 fully connected net, the classic unstructured-pruning benchmark."""
    return MLP(math.prod(input_shape), [300, 100], num_classes)
