"""Calibration statistics: what the inputs of a model's layers look like on calibration data.

Criteria and updates defined on a layer's inputs read them from here, for any model: Wanda's
‖X_j‖ (the norm of input feature j over all calibration tokens or patches) and SparseGPT's
Hessian H = 2XXᵀ/n. Statistics are collected by forward pre-hooks while the model (or one block
of it, in sequential calibration) runs on the calibration inputs, in eval mode and without
gradients. A Linear's input features are its input columns; a convolution's are the columns of
its unfolded input (one per input channel and kernel offset, in the weight's (in, kh, kw) order),
so |W|·‖X‖ and H are defined for convs exactly as for Linears. Layers that read the same tensor
(q/k/v, gate/up) share one accumulator. Padding tokens (attention_mask == 0) are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secateurs.core.errors import ConfigError

_CONVS = (nn.Conv1d, nn.Conv2d)


@dataclass
class InputStats:
    """Running statistics of one layer input: token count, Σx² per feature, Σxxᵀ (optional)."""

    features: int
    hessian: bool
    tokens: int = 0
    sq: Tensor = field(init=False)
    xtx: Tensor | None = field(init=False)

    def __post_init__(self) -> None:
        self.sq = torch.zeros(self.features, dtype=torch.float64)
        # Σxxᵀ in float32 (as SparseGPT does; 2-3× faster than float64 on CPU), inverted in float64
        self.xtx = torch.zeros(self.features, self.features, dtype=torch.float32) if self.hessian else None

    def add(self, rows: Tensor, weights: Tensor | None = None) -> None:
        """Add [n, features] input rows (weighted 0/1 by `weights`, e.g. an attention mask)."""
        rows = rows.detach()
        if self.sq.device != rows.device:
            self.sq = self.sq.to(rows.device)
            self.xtx = self.xtx.to(rows.device) if self.xtx is not None else None
        x64 = rows.to(torch.float64)
        if weights is not None:
            x64 = x64 * weights.to(torch.float64)[:, None]
            self.tokens += int(weights.sum())
        else:
            self.tokens += rows.shape[0]
        self.sq += (x64 * x64).sum(0)
        if self.xtx is not None:
            x32 = rows.to(torch.float32) if weights is None else x64.to(torch.float32)
            self.xtx += x32.T @ x32

    def norms(self) -> Tensor:
        """‖X_j‖₂ over all calibration tokens (Wanda's activation norm), float32."""
        return self.sq.sqrt().to(torch.float32)

    def hessian_matrix(self) -> Tensor:
        """H = 2XXᵀ/n (the scale does not change the OBS solution; dampening is relative)."""
        if self.xtx is None:
            raise RuntimeError("these statistics were collected without the Hessian")
        return 2.0 * self.xtx.to(torch.float64) / max(self.tokens, 1)


def input_rows(module: nn.Module, x: Tensor) -> Tensor:
    """The module's input as [rows, features] in the order of its weight's input columns."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, _CONVS):
        two_d = isinstance(module, nn.Conv2d)
        if not two_d:  # [B, C, L] → [B, C, 1, L]
            x = x.unsqueeze(2)
        padding = module._reversed_padding_repeated_twice
        if any(padding):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, padding if two_d else [padding[0], padding[1], 0, 0], mode=mode)
        kernel = module.kernel_size if two_d else (1, module.kernel_size[0])
        stride = module.stride if two_d else (1, module.stride[0])
        dilation = module.dilation if two_d else (1, module.dilation[0])
        cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # [B, C·k, L]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise ConfigError(
        f"calibration statistics are defined for Linear, Conv1d and Conv2d inputs, "
        f"not {type(module).__name__}",
        fix="exclude the layer via the layer selection, or use a criterion that needs no activations",
    )


def in_features(module: nn.Module) -> int:
    """Input columns of a layer's full input (all groups of a grouped conv)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, _CONVS):
        return module.in_channels * int(torch.tensor(module.kernel_size).prod())
    input_rows(module, torch.empty(0))  # raises the error naming the type
    raise AssertionError


class StatsCollector:
    """Forward pre-hooks on layers; one accumulator per distinct input tensor.

    Layers fed the very same tensor object (q, k and v; gate and up) are noticed on the first
    pass and share the first one's accumulator, so each input is counted once.
    """

    def __init__(self, layers: Mapping[str, nn.Module], hessian: bool) -> None:
        self.stats: dict[str, InputStats] = {}
        self.alias: dict[str, str] = {}  # layer name → name whose accumulator it shares
        self.weights: Tensor | None = None  # per-row weights of the current batch (attention mask)
        self._first_pass = True
        self._last: tuple[Tensor, str] | None = None
        self._handles = [
            layer.register_forward_pre_hook(self._hook(name, layer, hessian))
            for name, layer in layers.items()
        ]

    def _hook(self, name: str, layer: nn.Module, hessian: bool) -> Callable[..., None]:
        features = in_features(layer)

        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if self._first_pass and self._last is not None and self._last[0] is x:
                self.alias[name] = self.alias.get(self._last[1], self._last[1])
            self._last = (x, name)
            if name in self.alias:
                return
            if name not in self.stats:
                self.stats[name] = InputStats(features, hessian)
            weights = None
            if (
                self.weights is not None
                and isinstance(layer, nn.Linear)
                and x.dim() == 3
                and x.shape[:2] == self.weights.shape
            ):
                weights = self.weights.reshape(-1)
            self.stats[name].add(input_rows(layer, x), weights)

        return hook

    def end_pass(self) -> None:
        self._first_pass = False
        self._last = None

    def get(self, name: str) -> InputStats:
        return self.stats[self.alias.get(name, name)]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def call(model: nn.Module, x: Any) -> Any:
    """One forward on a calibration input: keyword arguments for a mapping (tokenizer output)."""
    return model(**x) if isinstance(x, Mapping) else model(x)


def inputs_of(batches: Iterable[Any]) -> list[Any]:
    """Calibration inputs from batches: (x, y) pairs, bare tensors or tokenizer outputs."""
    out = []
    for batch in batches:
        out.append(batch[0] if isinstance(batch, tuple | list) and len(batch) == 2 else batch)
    return out


@torch.no_grad()
def collect(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    batches: Iterable[Any],
    *,
    hessian: bool = False,
    run: Callable[[Any], Any] | None = None,
) -> StatsCollector:
    """Run `model` in eval mode on every calibration input and return the layers' statistics.

    `run(x)` does one forward (default: `call(model, x)`); sequential calibration passes a
    function running one block. Modes are restored afterwards.
    """
    collector = StatsCollector(layers, hessian)
    was_training = model.training
    model.eval()
    try:
        seen = 0
        for x in inputs_of(batches):
            mask = x.get("attention_mask") if isinstance(x, Mapping) else None
            collector.weights = None if mask is None else mask.to(torch.float64)
            (run or (lambda b: call(model, b)))(x)
            collector.end_pass()
            seen += 1
        if not seen:
            raise ConfigError("no calibration data was given", fix="pass data= with at least one batch")
    finally:
        collector.remove()
        model.train(was_training)
    return collector
