"""CIFAR ResNets (He et al. 2016, section 4.2): 6n+2 layers in three stages of 16/32/64 channels.

Shortcuts are option B: identity where the shape is kept, 1x1 conv + BN where it changes.
Every operation is a module (including the ReLUs and the addition's inputs), so torch.fx
traces a block into plain calls that a structured pruner can follow.
"""

from __future__ import annotations

from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.models._checks import positive_float, scale
from secateurs.models._spec import register_model
from secateurs.models.init import init_weights

MIN_SIZE = 4  # two stride-2 stages: 4 -> 2 -> 1


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, three stages of `blocks` BasicBlocks (stride 2 entering stages 2 and 3), GAP, Linear."""

    def __init__(self, in_channels: int, blocks: int, widths: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._stage(widths[0], widths[0], blocks, stride=1)
        self.layer2 = self._stage(widths[0], widths[1], blocks, stride=2)
        self.layer3 = self._stage(widths[1], widths[2], blocks, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[2], num_classes)
        init_weights(self)

    @staticmethod
    def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        first = BasicBlock(in_channels, channels, stride)
        return nn.Sequential(first, *(BasicBlock(channels, channels, 1) for _ in range(blocks - 1)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _make(
    name: str, blocks: int, input_shape: tuple[int, ...], num_classes: int, width: float
) -> CifarResNet:
    width = positive_float(name, "width", width)
    if min(input_shape[1:]) < MIN_SIZE:
        raise ConfigError(
            f"input shape {input_shape} is too small for model {name!r}: its two stride-2 stages need "
            f"at least {MIN_SIZE}x{MIN_SIZE} images",
            fix="use a data set with larger images or a model without down-sampling (e.g. mlp)",
        )
    widths = (scale(16, width), scale(32, width), scale(64, width))
    return CifarResNet(input_shape[0], blocks, widths, num_classes)


@register_model("resnet20", input_ranks=(3,), description="CIFAR ResNet-20 (3x3 blocks, 16/32/64, option B)")
def make_resnet20(input_shape: tuple[int, ...], num_classes: int, *, width: float = 1.0) -> CifarResNet:
    """n = 3 blocks per stage; needs images of at least 4x4."""
    return _make("resnet20", 3, input_shape, num_classes, width)


@register_model("resnet32", input_ranks=(3,), description="CIFAR ResNet-32 (3x5 blocks, 16/32/64, option B)")
def make_resnet32(input_shape: tuple[int, ...], num_classes: int, *, width: float = 1.0) -> CifarResNet:
    """n = 5 blocks per stage; needs images of at least 4x4."""
    return _make("resnet32", 5, input_shape, num_classes, width)


@register_model("resnet56", input_ranks=(3,), description="CIFAR ResNet-56 (3x9 blocks, 16/32/64, option B)")
def make_resnet56(input_shape: tuple[int, ...], num_classes: int, *, width: float = 1.0) -> CifarResNet:
    """n = 9 blocks per stage; needs images of at least 4x4."""
    return _make("resnet56", 9, input_shape, num_classes, width)
