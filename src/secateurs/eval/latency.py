"""Measured inference latency.

Nonzero MACs say what an ideal sparse kernel could save; wall-clock time says what PyTorch's
dense kernels actually do with an unstructured-sparse model (usually nothing), and what a
structurally smaller model gains. `cpu_latency` reports the median over repeats (it resists
scheduler hiccups); `forward_latency` times on the model's own device (an accelerator is
synchronised around each forward) and reports the minimum by default, the least noisy estimate
of what the kernels cost when comparing nearly equal models (a latency table of pruned widths).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.eval.metrics import eval_mode, model_device

__all__ = ["Timer", "batch_like", "cpu_latency", "forward_latency"]

Inputs = torch.Tensor | tuple[torch.Tensor, ...]
# seconds per forward of `model` on `inputs`: `forward_latency`, or a fake one in tests
Timer = Callable[[nn.Module, Inputs], float]


def _positive(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


def cpu_latency(
    model: nn.Module, input_shape: Sequence[int], batch_size: int, *, repeats: int = 30, warmup: int = 5
) -> float:
    """Median seconds per forward of a batch of `batch_size` samples of `input_shape`.

    Runs `warmup` untimed forwards (allocator and kernel selection), then `repeats` timed ones
    with `time.perf_counter`, in eval mode under `torch.inference_mode`; the model's modes are
    restored and its weights untouched. Uses the current torch thread count.
    """
    _positive("batch_size", batch_size)
    _positive("repeats", repeats)
    _positive("warmup", warmup, minimum=0)
    device = model_device(model)
    if device.type != "cpu":
        raise ConfigError(
            f"cpu_latency times CPU inference, but the model is on {device}",
            fix="time a CPU copy: copy.deepcopy(model).cpu()",
        )
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
    x = torch.randn((batch_size, *input_shape), generator=torch.Generator().manual_seed(0), dtype=dtype)
    times = []
    with eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op on the CPU, where calls return when done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        torch.accelerator.synchronize(device)


def batch_like(example: Inputs, batch_size: int, *, seed: int = 0) -> Inputs:
    """A batch of `batch_size` samples shaped like `example`'s (on its device, in its dtype).

    Floating inputs are fresh normal samples (fixed seed); integer inputs (token ids) repeat the
    example's first sample, so they stay valid ids.
    """
    _positive("batch_size", batch_size)
    generator = torch.Generator().manual_seed(seed)

    def one(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0:
            raise ConfigError("an example input needs a batch dimension", fix="pass one batch, e.g. x[:2]")
        shape = (batch_size, *x.shape[1:])
        if x.is_floating_point():
            return torch.randn(shape, generator=generator, dtype=x.dtype).to(x.device)
        return x[:1].expand(shape).clone()

    return tuple(one(x) for x in example) if isinstance(example, tuple) else one(example)


def forward_latency(
    model: nn.Module,
    inputs: Inputs,
    *,
    repeats: int = 10,
    warmup: int = 2,
    reduce: Literal["min", "median"] = "min",
) -> float:
    """Seconds per forward of `model` on `inputs`, on the model's device, in eval mode.

    `warmup` untimed forwards, then `repeats` timed ones (accelerators synchronised before and
    after each); the minimum (default) or the median. The inputs are moved to the model's device;
    modes are restored and weights untouched. Uses the current torch thread count.
    """
    _positive("repeats", repeats)
    _positive("warmup", warmup, minimum=0)
    if reduce not in ("min", "median"):
        raise ConfigError(f"reduce must be 'min' or 'median', got {reduce!r}")
    device = model_device(model)
    args = tuple(x.to(device) for x in (inputs if isinstance(inputs, tuple) else (inputs,)))
    times = []
    with eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(*args)
        for _ in range(repeats):
            _synchronize(device)
            start = time.perf_counter()
            model(*args)
            _synchronize(device)
            times.append(time.perf_counter() - start)
    return min(times) if reduce == "min" else statistics.median(times)
