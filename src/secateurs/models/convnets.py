"""Conv-2/4/6 of Frankle & Carbin (2019), the lottery-ticket convolutional benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from secateurs.models._checks import check_spatial, positive_float, scale
from secateurs.models._spec import register_model
from secateurs.models.init import init_weights

POOL = "M"
CONFIGS: dict[str, list[int | str]] = {
    "conv2": [64, 64, POOL],
    "conv4": [64, 64, POOL, 128, 128, POOL],
    "conv6": [64, 64, POOL, 128, 128, POOL, 256, 256, POOL],
}


class ConvNet(nn.Module):
    """3x3 conv (pad 1) + ReLU per channel count, 2x2 max-pool per 'M', then fc 256-256-classes."""

    def __init__(
        self, in_channels: int, spatial: Sequence[int], cfg: Sequence[int | str], num_classes: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == POOL:
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * spatial[0] * spatial[1], 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _make(name: str, input_shape: tuple[int, ...], num_classes: int, width: float) -> ConvNet:
    """Scale the conv widths (the fc layers stay 256 wide, as in the paper's width sweeps)."""
    width = positive_float(name, "width", width)
    cfg = [item if item == POOL else scale(int(item), width) for item in CONFIGS[name]]
    pools = cfg.count(POOL)

    def final_size(n: int) -> int:
        for _ in range(pools):
            n = n // 2
        return n

    spatial = check_spatial(name, input_shape, input_shape[1:], final_size)
    return ConvNet(input_shape[0], spatial, cfg, num_classes)


@register_model("conv2", input_ranks=(3,), description="Conv-2 (Frankle & Carbin): 64-64-pool, fc 256-256")
def make_conv2(input_shape: tuple[int, ...], num_classes: int, *, width: float = 1.0) -> ConvNet:
    """Needs images of at least 2x2."""
    return _make("conv2", input_shape, num_classes, width)


@register_model("conv4", input_ranks=(3,), description="Conv-4 (Frankle & Carbin): 64-64-pool-128-128-pool")
def make_conv4(input_shape: tuple[int, ...], num_classes: int, *, width: float = 1.0) -> ConvNet:
    """Needs images of at least 4x4."""
    return _make("conv4", input_shape, num_classes, width)


@register_model("conv6", input_ranks=(3,), description="Conv-6 (Frankle & Carbin): 3 stages 64/128/256")
def make_conv6(input_shape: tuple[int, ...], num_classes: int, *, width: float = 1.0) -> ConvNet:
    """Needs images of at least 8x8."""
    return _make("conv6", input_shape, num_classes, width)
