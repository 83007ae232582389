"""LeNet-5 (LeCun et al. 1998, with ReLU and max-pooling as in the pruning literature)."""

from __future__ import annotations

from torch import Tensor, nn

from secateurs.models._checks import check_spatial, conv_out, positive_float, scale
from secateurs.models._spec import register_model
from secateurs.models.init import init_weights


def _lenet5_size(n: int) -> int:
    """Spatial size after conv(5, pad 2), pool 2, conv(5), pool 2; 0 once it collapses."""
    n = conv_out(conv_out(n, 5, padding=2), 2, 2)
    return conv_out(conv_out(n, 5), 2, 2)


class LeNet5(nn.Module):
    """Two conv+pool stages, then fully connected 120-84-classes.

    `width` scales every hidden layer (6, 16, 120, 84); `batchnorm` adds BatchNorm after each conv
    and hidden linear (what network slimming prunes by).
    """

    def __init__(
        self,
        in_channels: int,
        spatial: tuple[int, int],
        num_classes: int,
        *,
        width: float = 1.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        c1, c2, f1, f2 = (scale(n, width) for n in (6, 16, 120, 84))

        def norm(kind: type[nn.Module], n: int) -> list[nn.Module]:
            return [kind(n)] if batchnorm else []

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2),
            *norm(nn.BatchNorm2d, c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5),
            *norm(nn.BatchNorm2d, c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * spatial[0] * spatial[1], f1),
            *norm(nn.BatchNorm1d, f1),
            nn.ReLU(),
            nn.Linear(f1, f2),
            *norm(nn.BatchNorm1d, f2),
            nn.ReLU(),
            nn.Linear(f2, num_classes),
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_model("lenet5", input_ranks=(3,), description="LeNet-5: 2 conv+pool stages, fc 120-84")
def make_lenet5(
    input_shape: tuple[int, ...], num_classes: int, *, width: float = 1.0, batchnorm: bool = False
) -> LeNet5:
    """Needs images of at least 12x12 (the second pooling would otherwise leave nothing)."""
    h, w = check_spatial("lenet5", input_shape, input_shape[1:], _lenet5_size)
    width = positive_float("lenet5", "width", width)
    return LeNet5(input_shape[0], (h, w), num_classes, width=width, batchnorm=batchnorm)
