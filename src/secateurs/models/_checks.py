"""Validation shared by the model factories: option values and input sizes.

Factories check before building, so a bad option or an input too small for the architecture
is a `ConfigError` that says which model, which value and what would work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from secateurs.core.errors import ConfigError

_MAX_SEARCHED_SIZE = 4096


def positive_float(model: str, option: str, value: object) -> float:
    """A finite number > 0 (width multipliers)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    raise ConfigError(
        f"option {option}={value!r} of model {model!r} must be a finite number > 0",
        fix=f"set {option} to e.g. 1.0 (full size) or 0.25 (a quarter of the channels)",
    )


def positive_int(model: str, option: str, value: object) -> int:
    """An integer >= 1 (channel counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"option {option}={value!r} of model {model!r} must be an integer >= 1",
            fix=f"set {option} to a positive whole number",
        )
    return value


def positive_ints(model: str, option: str, value: object) -> list[int]:
    """A list of integers >= 1 (hidden layer widths); empty is allowed."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(
            f"option {option}={value!r} of model {model!r} must be a list of integers",
            fix=f"set {option} to a list such as [100, 100]",
        )
    return [positive_int(model, f"{option}[{i}]", v) for i, v in enumerate(value)]


def scale(channels: int, width: float) -> int:
    """Channels after a width multiplier; never below one so every layer stays usable."""
    return max(1, round(channels * width))


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling along one dimension (floor mode); 0 if none."""
    return max(0, (size + 2 * padding - kernel) // stride + 1)


def check_spatial(
    model: str, input_shape: tuple[int, ...], spatial: Sequence[int], out: Callable[[int], int]
) -> list[int]:
    """Sizes after the architecture's size-reducing layers; ConfigError if any collapses to 0.

    `out` maps one input dimension to its final size; the error names the smallest input size
    that works, found by trying sizes upward, so the message is right for every architecture.
    """
    final = [out(s) for s in spatial]
    if all(f >= 1 for f in final):
        return final
    smallest = next((n for n in range(1, _MAX_SEARCHED_SIZE) if out(n) >= 1), None)
    need = f"at least {smallest} along each spatial dimension" if smallest else "a larger input"
    raise ConfigError(
        f"input shape {input_shape} is too small for model {model!r}: its spatial size collapses to 0 "
        f"in the convolutions/poolings (it needs {need})",
        fix="use a data set with larger inputs or a model with fewer down-sampling steps (e.g. mlp)",
    )
