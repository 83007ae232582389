"""VGG-11/16 with BatchNorm, CIFAR style (Simonyan & Zisserman 2015; one Linear classifier).

Max-pools that would shrink a spatial dimension below 1 are left out at construction, so
small images (8x8 digits) work; global average pooling makes the classifier size-independent.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from secateurs.models._checks import positive_float, scale
from secateurs.models._spec import register_model
from secateurs.models.init import init_weights

POOL = "M"
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "vgg16": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL],
}


class VGG(nn.Module):
    """Conv3x3 (no bias) + BN + ReLU blocks with max-pools, global average pool, Linear."""

    def __init__(
        self, in_channels: int, spatial: Sequence[int], cfg: Sequence[int | str], num_classes: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, list(spatial)
        for item in cfg:
            if item != POOL:
                channels, previous = int(item), channels
                layers += [nn.Conv2d(previous, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)]
                layers.append(nn.ReLU())
            elif min(size) >= 2:
                layers.append(nn.MaxPool2d(2))
                size = [s // 2 for s in size]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def _make(name: str, input_shape: tuple[int, ...], num_classes: int, width: float) -> VGG:
    width = positive_float(name, "width", width)
    cfg = [item if item == POOL else scale(int(item), width) for item in CONFIGS[name]]
    return VGG(input_shape[0], input_shape[1:], cfg, num_classes)


@register_model("vgg11", input_ranks=(3,), description="VGG-11 with BatchNorm, global average pool")
def make_vgg11(input_shape: tuple[int, ...], num_classes: int, *, width: float = 1.0) -> VGG:
    """Any image size: pools that would empty the feature map are skipped."""
    return _make("vgg11", input_shape, num_classes, width)


@register_model("vgg16", input_ranks=(3,), description="VGG-16 with BatchNorm, global average pool")
def make_vgg16(input_shape: tuple[int, ...], num_classes: int, *, width: float = 1.0) -> VGG:
    """Any image size: pools that would empty the feature map are skipped."""
    return _make("vgg16", input_shape, num_classes, width)
