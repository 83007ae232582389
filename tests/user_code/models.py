"""A user's residual net with depthwise convolutions and stochastic depth, as model zoos build them."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch of some samples while training."""
    if not training or p == 0.0:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) >= p
    return x * keep / (1.0 - p)


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 project, added to the input (MobileNetV2's block)."""

    def __init__(self, channels: int, expand: int, drop: float) -> None:
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.drop = drop

    def forward(self, x: Tensor) -> Tensor:
        return x + drop_path(self.project(self.depthwise(self.expand(x))), self.drop, self.training)


class ResidualNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int, blocks: int, drop: float) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.blocks = nn.Sequential(*(InvertedResidual(width, 2, drop) for _ in range(blocks)))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def residual_net(
    input_shape: tuple[int, ...], num_classes: int, width: int = 8, blocks: int = 2, drop: float = 0.1
) -> nn.Module:
    """The factory a recipe names: `model: {factory: "user_code.models:residual_net"}`."""
    return ResidualNet(input_shape[0], num_classes, width, blocks, drop)


def needs_depth(depth: int) -> nn.Module:
    """A factory with a required option."""
    return nn.Sequential(*(nn.Identity() for _ in range(depth)))


def not_a_module() -> str:
    return "a string"
