"""How training executes on its device: mixed precision, torch.compile and channels_last.

None of these changes what is trained, only how fast and in which number format:

- `precision: bf16 | fp16` runs the forward pass under `torch.autocast` on the model's device;
  fp16 adds a gradient scaler (small fp16 gradients underflow without one). Gradients are
  unscaled before any callback sees them, so a penalty added to `.grad` (ADMM) and gradient
  clipping work in true units. Parameters, optimizer state and masks stay fp32.
- `compile: true` trains through `torch.compile(model)`; it shares the parameters, so masks
  and callbacks act on the model as before. A mapping gives torch.compile's options.
- `channels_last: true` stores 4-d conv weights and inputs channels-last (faster convs on
  GPUs with tensor cores and on recent CPUs).

Evaluation runs in fp32, so metrics compare across precisions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from secateurs.core.config import StrictModel

__all__ = ["Execution", "MixedPrecision", "prepare_input", "prepare_module"]

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Execution(StrictModel):
    """A run's execution settings (recipe fields `precision`, `compile`, `channels_last`)."""

    precision: Precision = Field("fp32", description="fp32, or mixed precision bf16 / fp16 (grad scaler)")
    compile: bool | dict[str, Any] = Field(
        False, description="train through torch.compile (a mapping: its options, e.g. {mode: max-autotune})"
    )
    channels_last: bool = Field(False, description="4-d conv weights and inputs in channels-last memory")


class MixedPrecision:
    """Autocast for the forward pass and, for fp16, a gradient scaler around backward and step."""

    def __init__(self, precision: Precision, device: torch.device) -> None:
        self.dtype = _DTYPES.get(precision)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.dtype):
            yield

    def backward(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """`loss.backward()`, scaled for fp16 and unscaled again before anyone reads the gradients."""
        if self.scaler is None:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """`optimizer.step()`; fp16 skips a step whose gradients overflowed and adapts the scale."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


def prepare_module(
    model: nn.Module, execution: Execution, wrap: Callable[[nn.Module], nn.Module] = lambda m: m
) -> nn.Module:
    """The module to call forward on: `model` made channels-last in place (if asked), then
    `wrap`ped (DDP: after the memory format is set, since it registers the parameters' storage),
    then compiled (if asked)."""
    if execution.channels_last:
        model.to(memory_format=torch.channels_last)
    module = wrap(model)
    if execution.compile is False:
        return module
    options = execution.compile if isinstance(execution.compile, dict) else {}
    return torch.compile(module, **options)  # type: ignore[return-value]


def prepare_input(x: Tensor, execution: Execution) -> Tensor:
    """A batch in the memory format the module expects."""
    if execution.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
