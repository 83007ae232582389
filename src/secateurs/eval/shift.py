"""Corrupted and shifted test data, generated locally and deterministically.

Pruned networks can match the dense test accuracy and still lose robustness (Hooker et al.
2019; Liebenwein et al. 2021), so we also measure accuracy on inputs the model never saw:

* `CORRUPTIONS`: named corruptions ``fn(x, severity, generator) -> x'`` of one batch (noise,
  contrast, blur, translation, amplitude scale). Random ones draw only from `generator`, so the
  same seed gives the same tensors bit for bit; nothing is downloaded (no CIFAR-10-C).
* `default_shifts`: a small fixed grid of (corruption, severity) per input kind.
* `shifted_test_split`: the test set under a *covariate shift* — every sample translated by its
  own random offset (plus mild noise for 1-D signals). Labels are unchanged and the model never
  saw translated inputs in training, so the accuracy drop measures how far its decision rule
  relies on exact positions.

Severities are in the data's own (standardized) units: noise σ = 0.3 on MNIST-1D, whose values
have unit standard deviation, is 30 % of the signal's spread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from secateurs.core.errors import ConfigError
from secateurs.core.registry import Registry
from secateurs.data.core import DatasetInfo, DataSplits, seeded_generator

__all__ = [
    "CORRUPTIONS",
    "Corruption",
    "ShiftSpec",
    "corrupt_splits",
    "default_shifts",
    "shifted_test_split",
    "translate",
]

Corruption = Callable[[Tensor, float, torch.Generator], Tensor]

CORRUPTIONS: Registry[Corruption] = Registry("corruption")

_IMAGES = (4,)  # (N, C, H, W)
_SEQUENCES = (2, 3)  # (N, L) or (N, C, L)
_RANK_NAMES = {2: "(N, L)", 3: "(N, C, L)", 4: "(N, C, H, W)"}

_SHIFTED_MAX_1D = 3  # positions
_SHIFTED_NOISE_1D = 0.05  # σ in standardized units: mild next to MNIST-1D's own noise
_SHIFTED_MAX_IMAGE = 2  # pixels, along each axis


@dataclass(frozen=True)
class ShiftSpec:
    """One corrupted test set: `label` names it in metrics, e.g. ``acc@gaussian_noise:0.3``."""

    label: str
    corruption: str
    severity: float

    @classmethod
    def of(cls, corruption: str, severity: float) -> ShiftSpec:
        """The spec labelled ``corruption:severity`` (severity in shortest form, 0.3 not 0.30)."""
        return cls(f"{corruption}:{severity:g}", corruption, float(severity))


def _require_rank(name: str, x: Tensor, ranks: tuple[int, ...]) -> None:
    """A corruption applied to data it does not fit is an error, never a silent no-op."""
    if x.dim() in ranks:
        return
    wanted = " or ".join(_RANK_NAMES[r] for r in ranks)
    raise ConfigError(
        f"corruption {name!r} needs batches of shape {wanted}, got rank {x.dim()} (shape {tuple(x.shape)})",
        fix="use gaussian_noise or scale, which fit any input, or a corruption made for this kind of data",
    )


def _non_negative(name: str, severity: float) -> float:
    if not math.isfinite(severity) or severity < 0:
        raise ConfigError(f"corruption {name!r} got severity {severity!r}", fix="use a finite severity >= 0")
    return float(severity)


def _noise_like(x: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise drawn on the generator's device (CPU), then moved to `x`'s."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


@CORRUPTIONS.register("gaussian_noise", "add N(0, σ²) noise, σ = severity in data units")
def gaussian_noise(x: Tensor, severity: float, generator: torch.Generator) -> Tensor:
    """Additive white noise: the simplest corruption, defined for any input rank."""
    sigma = _non_negative("gaussian_noise", severity)
    return x + sigma * _noise_like(x, generator)


@CORRUPTIONS.register("contrast", "images: blend toward each image's mean, m + severity·(x − m)")
def contrast(x: Tensor, severity: float, generator: torch.Generator) -> Tensor:
    """Lower (severity < 1) or raise contrast around each image's own mean over C, H, W."""
    _require_rank("contrast", x, _IMAGES)
    factor = _non_negative("contrast", severity)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + factor * (x - mean)


def gaussian_kernel(sigma: float) -> Tensor:
    """Normalised 1-D Gaussian of std `sigma`, size 2·ceil(2σ)+1 (±2σ covers 95 % of its mass)."""
    radius = math.ceil(2 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


@CORRUPTIONS.register("blur", "images: depthwise Gaussian blur, std = severity pixels, reflect padding")
def blur(x: Tensor, severity: float, generator: torch.Generator) -> Tensor:
    """Separable Gaussian blur of every channel on its own (a defocused camera)."""
    _require_rank("blur", x, _IMAGES)
    sigma = _non_negative("blur", severity)
    if sigma == 0:
        return x.clone()
    kernel = gaussian_kernel(sigma).to(dtype=x.dtype, device=x.device)
    radius = kernel.numel() // 2
    if radius >= min(x.shape[2], x.shape[3]):
        raise ConfigError(
            f"blur severity {severity} needs a kernel radius of {radius} pixels, too large for "
            f"{x.shape[2]}x{x.shape[3]} images (reflect padding needs radius < image size)",
            fix=f"use a blur severity below {min(x.shape[2], x.shape[3]) / 2}",
        )
    channels = x.shape[1]
    rows = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    cols = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    out = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), rows, groups=channels)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), cols, groups=channels)


def translate(x: Tensor, shifts: Tensor, dim: int, *, fill: Literal["zero", "edge"] = "zero") -> Tensor:
    """Move every sample `n` by `shifts[n]` positions along `dim` (positive: toward higher index).

    Positions the content left are filled with zeros (``fill="zero"``) or by repeating the
    nearest edge value (``fill="edge"``). One gather for the whole batch, no Python loop.
    """
    length = x.shape[dim]
    position_shape = [1] * x.dim()
    position_shape[dim] = length
    sample_shape = [x.shape[0]] + [1] * (x.dim() - 1)
    positions = torch.arange(length, device=x.device).view(position_shape)
    source = positions - shifts.to(device=x.device, dtype=torch.int64).view(sample_shape)
    index = source.clamp(0, length - 1).expand(x.shape)
    out = torch.gather(x, dim, index)
    if fill == "zero":
        out = out * ((source >= 0) & (source < length)).to(x.dtype)
    elif fill != "edge":
        raise ValueError(f"fill must be 'zero' or 'edge', got {fill!r}")
    return out


@CORRUPTIONS.register("shift", "1-D signals: translate by int(severity) positions, zero fill")
def shift(x: Tensor, severity: float, generator: torch.Generator) -> Tensor:
    """The same translation for every sample along the last axis; int() truncates toward zero."""
    _require_rank("shift", x, _SEQUENCES)
    if not math.isfinite(severity):
        raise ConfigError(f"corruption 'shift' got severity {severity!r}", fix="use a finite number")
    offsets = torch.full((x.shape[0],), int(severity), dtype=torch.int64)
    return translate(x, offsets, x.dim() - 1)


@CORRUPTIONS.register("scale", "multiply the amplitude by severity (any input)")
def scale(x: Tensor, severity: float, generator: torch.Generator) -> Tensor:
    """A gain change (a quieter or louder sensor): x' = severity·x."""
    return x * _non_negative("scale", severity)


def _input_kind(info: DatasetInfo) -> str:
    if len(info.input_shape) == 3:
        return "image"
    if len(info.input_shape) in (1, 2):
        return "sequence"
    raise ConfigError(
        f"data set {info.name!r} has samples of shape {info.input_shape}; shifts are defined for "
        "1-D signals (L,) / (C, L) and images (C, H, W)",
        fix="pass an explicit list of ShiftSpec whose corruptions fit this data",
    )


def default_shifts(info: DatasetInfo) -> list[ShiftSpec]:
    """A small fixed grid of corruptions and severities for this kind of input."""
    grid: list[tuple[str, float]] = [
        ("gaussian_noise", 0.1),
        ("gaussian_noise", 0.3),
        ("gaussian_noise", 0.5),
    ]
    if _input_kind(info) == "image":
        grid += [("contrast", 0.5), ("contrast", 0.25), ("blur", 0.7), ("blur", 1.2)]
    else:
        grid += [("shift", 2), ("shift", 4), ("scale", 0.5)]
    return [ShiftSpec.of(name, severity) for name, severity in grid]


def _with_test_x(splits: DataSplits, test_x: Tensor) -> DataSplits:
    """The same splits with another test input tensor (train and labels shared, not copied)."""
    return DataSplits(splits.info, splits.train_x, splits.train_y, test_x.contiguous(), splits.test_y)


def corrupt_splits(splits: DataSplits, spec: ShiftSpec, seed: int = 0) -> DataSplits:
    """`splits` with the test inputs corrupted by `spec`; the training split is untouched."""
    fn = CORRUPTIONS.get(spec.corruption)
    with torch.no_grad():
        test_x = fn(splits.test_x, spec.severity, seeded_generator(seed))
    return _with_test_x(splits, test_x)


def shifted_test_split(splits: DataSplits, seed: int = 0) -> DataSplits:
    """The test set under a covariate shift the model never saw in training.

    1-D signals: each sample translated by its own random offset in [-3, 3] positions, plus
    N(0, 0.05²) noise. Images: each image translated by its own random offset in [-2, 2] pixels
    along both axes. Borders repeat the edge value, so no constant band appears in standardized
    data whose background is not 0. Deterministic for `seed`; labels unchanged.
    """
    kind = _input_kind(splits.info)
    gen = seeded_generator(seed)
    x = splits.test_x
    n = x.shape[0]
    with torch.no_grad():
        if kind == "sequence":
            offsets = torch.randint(-_SHIFTED_MAX_1D, _SHIFTED_MAX_1D + 1, (n,), generator=gen)
            x = translate(x, offsets, x.dim() - 1, fill="edge")
            x = x + _SHIFTED_NOISE_1D * _noise_like(x, gen)
        else:
            for dim in (2, 3):
                offsets = torch.randint(-_SHIFTED_MAX_IMAGE, _SHIFTED_MAX_IMAGE + 1, (n,), generator=gen)
                x = translate(x, offsets, dim, fill="edge")
    return _with_test_x(splits, x)
