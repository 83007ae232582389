"""Measured CPU inference latency.

Nonzero MACs say what an ideal sparse kernel could save; wall-clock time says what PyTorch's
dense kernels actually do with an unstructured-sparse model (usually nothing), and what a
structurally smaller model gains. The median over repeats resists scheduler hiccups.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.eval.metrics import eval_mode, model_device

__all__ = ["cpu_latency"]


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
