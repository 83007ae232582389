"""The 1-D CNN of the MNIST-1D paper (Greydanus 2020): three strided convolutions, one linear."""

from __future__ import annotations

from torch import Tensor, nn

from secateurs.models._checks import check_spatial, conv_out, positive_int
from secateurs.models._spec import register_model
from secateurs.models.init import init_weights

KERNEL, STRIDE, PADDING, DEPTH = 5, 2, 1, 3


def _final_length(n: int) -> int:
    for _ in range(DEPTH):
        n = conv_out(n, KERNEL, STRIDE, PADDING)
    return n


class CNN1d(nn.Module):
    """Conv1d(kernel 5, stride 2, pad 1) + ReLU three times, flatten, Linear to the classes.

    A (L,) input gets its channel dimension from an `Unflatten` module (not a reshape in
    `forward`) so torch.fx sees an ordinary module call.
    """

    def __init__(self, input_shape: tuple[int, ...], channels: int, num_classes: int) -> None:
        super().__init__()
        in_channels, length = (1, input_shape[0]) if len(input_shape) == 1 else input_shape
        self.to_channels: nn.Module = nn.Unflatten(1, (1, length)) if len(input_shape) == 1 else nn.Identity()
        layers: list[nn.Module] = []
        for i in range(DEPTH):
            conv = nn.Conv1d(in_channels if i == 0 else channels, channels, KERNEL, STRIDE, PADDING)
            layers += [conv, nn.ReLU()]
        self.features = nn.Sequential(*layers)
        flat = channels * _final_length(length)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.to_channels(x)))


@register_model("cnn1d", input_ranks=(1, 2), description="MNIST-1D ConvBase: 3 strided Conv1d of 25 channels")
def make_cnn1d(input_shape: tuple[int, ...], num_classes: int, *, channels: int = 25) -> CNN1d:
    """Needs sequences of at least 15 samples (three stride-2 convolutions)."""
    channels = positive_int("cnn1d", "channels", channels)
    check_spatial("cnn1d", input_shape, input_shape[-1:], _final_length)
    return CNN1d(input_shape, channels, num_classes)
