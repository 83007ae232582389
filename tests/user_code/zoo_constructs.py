"""Constructs of real model zoos the channel engine must follow without hand-written rules."""

from __future__ import annotations

import torch
import torch.fx
from torch import Tensor, nn


def stochastic_depth(x: Tensor, p: float, training: bool) -> Tensor:
    """torchvision's stochastic_depth: fx keeps it as one call (it is wrapped below)."""
    if not training or p == 0.0:
        return x
    keep = torch.rand((x.shape[0], 1, 1, 1), device=x.device) >= p
    return x * keep / (1.0 - p)


torch.fx.wrap("stochastic_depth")


def scale_shift(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """A fused affine, wrapped like a custom kernel would be: channels pass through it."""
    return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


torch.fx.wrap("scale_shift")


def data_dependent(x: Tensor) -> Tensor:
    """Control flow on tensor values: fx cannot trace into it."""
    if x.sum() > 0:
        return x
    return -x


torch.fx.wrap("data_dependent")


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        y = scale_shift(torch.relu(self.conv(x)), self.scale, self.shift)
        return x + stochastic_depth(y, 0.2, self.training)


class LeafNet(nn.Module):
    """Wrapped (leaf) functions between convs, an einsum mixing channels, a linear head."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.block = Block(width)
        self.mix = nn.Parameter(torch.randn(2 * width, width) / width**0.5)  # einsum "oc"
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(torch.relu(self.stem(x)))
        y = torch.einsum("bchw,oc->bohw", y, self.mix)
        return self.head(y.mean(dim=(2, 3)))


class Odd(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return data_dependent(self.conv(x))


class OddNet(nn.Module):
    """A part no engine can follow (data-dependent control flow) inside module `odd`."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.odd = Odd(width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(torch.relu(self.odd(torch.relu(self.stem(x)))))
        return self.head(torch.relu(y).mean(dim=(2, 3)))
