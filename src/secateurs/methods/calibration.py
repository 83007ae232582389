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

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secateurs.core.errors import ConfigError

_CONVS = (nn.Conv1d, nn.Conv2d)


_SQ_CHUNK = 64  # rows squared in float64 at a time: the copy stays in cache (12x faster than whole)
_PANELS = 4  # Σxxᵀ is accumulated in its upper block triangle of 4 × 4 panels: 10/16 of the work


@dataclass
class InputStats:
    """Running statistics of one layer input: token count, Σx² per feature (`norms`), Σxxᵀ (`hessian`).

    Only what a method reads is collected: Wanda reads Σx², SparseGPT Σxxᵀ. Σx² is summed in float64
    (each float32 square is exact there): summed in float32 instead, about 30 % of the norms of
    4096 random rows land a float32 step away, enough to flip Wanda's near-tied scores.
    """

    features: int
    hessian: bool
    norms_wanted: bool = True
    tokens: int = 0
    sq: Tensor | None = field(init=False)
    xtx: Tensor | None = field(init=False)
    _memo: dict[Any, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.sq = torch.zeros(self.features, dtype=torch.float64) if self.norms_wanted else None
        # Σxxᵀ in float32 (as SparseGPT does; 2-3× faster than float64 on CPU), inverted in float64;
        # only the panels on and above the diagonal are summed (`hessian_matrix` mirrors them)
        self.xtx = torch.zeros(self.features, self.features, dtype=torch.float32) if self.hessian else None
        self._memo = {}

    def add(self, rows: Tensor, weights: Tensor | None = None) -> None:
        """Add [n, features] input rows; `weights` (0/1 per row, e.g. an attention mask) leaves rows out."""
        rows = rows.detach()
        if weights is not None:
            counted = weights.to(rows.device) != 0
            if not bool(counted.all()):
                rows = rows[counted]
        self.tokens += rows.shape[0]
        if self.sq is not None:
            self.sq = self.sq.to(rows.device)
            for chunk in rows.split(_SQ_CHUNK):
                c = chunk.to(torch.float64)
                self.sq += (c * c).sum(0)
        if self.xtx is not None:
            self.xtx = self.xtx.to(rows.device)
            x32 = rows.to(torch.float32)
            width = -(-self.features // _PANELS)
            for j0 in range(0, self.features, width):
                j1 = min(j0 + width, self.features)
                self.xtx[:j1, j0:j1].addmm_(x32[:, :j1].T, x32[:, j0:j1])
        self._memo.clear()

    def norms(self) -> Tensor:
        """‖X_j‖₂ over all calibration tokens (Wanda's activation norm), float32."""
        if self.sq is None:
            raise RuntimeError("these statistics were collected without the norms")
        return self.sq.sqrt().to(torch.float32)

    def hessian_matrix(self) -> Tensor:
        """H = 2XXᵀ/n (the scale does not change the OBS solution; dampening is relative), exactly
        symmetric: the upper triangle summed, mirrored."""
        if self.xtx is None:
            raise RuntimeError("these statistics were collected without the Hessian")
        upper = self.xtx.to(torch.float64).triu()
        return 2.0 * (upper + upper.triu(1).T) / max(self.tokens, 1)

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """`compute()` once per key while the statistics stay as they are: layers sharing this input
        (q/k/v, gate/up) share what is derived from it, e.g. one factorisation of H."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


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


class _PassDone(Exception):
    """Raised by the last layer's hook to end a forward whose remaining work feeds no statistic."""


class StatsCollector:
    """Forward pre-hooks on layers; one accumulator per distinct input tensor.

    Layers fed the very same tensor object (q, k and v; gate and up) are noticed on the first
    pass and share the first one's accumulator, so each input is counted once. The first pass
    also records the order in which the layers run: when each ran exactly once, a later pass that
    has run them in the same order ends at the last one's input (`_PassDone`), since nothing after
    it is read (in a transformer block the down projection itself and the residual add).
    """

    def __init__(self, layers: Mapping[str, nn.Module], hessian: bool, norms: bool = True) -> None:
        self.stats: dict[str, InputStats] = {}
        self.alias: dict[str, str] = {}  # layer name → name whose accumulator it shares
        self.weights: Tensor | None = None  # rows of the current batch to count (attention mask != 0)
        self._first_pass = True
        self._last: tuple[Tensor, str] | None = None
        self._order: list[str] = []  # layers in the order the first pass ran them
        self._ran: list[str] = []  # … and the current pass
        self._stop_after: str | None = None
        self._handles = [
            layer.register_forward_pre_hook(self._hook(name, layer, hessian, norms))
            for name, layer in layers.items()
        ]
        self._count = len(self._handles)

    def _hook(self, name: str, layer: nn.Module, hessian: bool, norms: bool) -> Callable[..., None]:
        features = in_features(layer)

        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            self._ran.append(name)
            if self._first_pass and self._last is not None and self._last[0] is x:
                self.alias[name] = self.alias.get(self._last[1], self._last[1])
            self._last = (x, name)
            if name not in self.alias:
                if name not in self.stats:
                    self.stats[name] = InputStats(features, hessian, norms)
                weights = None
                if (
                    self.weights is not None
                    and isinstance(layer, nn.Linear)
                    and x.dim() == 3
                    and x.shape[:2] == self.weights.shape
                ):
                    weights = self.weights.reshape(-1)
                self.stats[name].add(input_rows(layer, x), weights)
            if name == self._stop_after and self._ran == self._order:
                raise _PassDone

        return hook

    def end_pass(self) -> None:
        if self._first_pass:
            self._order = list(self._ran)
            once = len(self._order) == self._count and len(set(self._order)) == self._count
            self._stop_after = self._order[-1] if once else None
        self._first_pass = False
        self._last = None
        self._ran = []

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
    norms: bool = True,
    run: Callable[[Any], Any] | None = None,
) -> StatsCollector:
    """Run `model` in eval mode on every calibration input and return the layers' statistics.

    `hessian`: collect Σxxᵀ; `norms`: collect Σx². `run(x)` does one forward (default:
    `call(model, x)`; its result is not used, and after the first input it may be cut short once
    the last layer has its input); sequential calibration passes a function running one block.
    Modes are restored afterwards.
    """
    collector = StatsCollector(layers, hessian, norms)
    was_training = model.training
    model.eval()
    try:
        seen = 0
        for x in inputs_of(batches):
            mask = x.get("attention_mask") if isinstance(x, Mapping) else None
            collector.weights = None if mask is None else mask != 0
            with contextlib.suppress(_PassDone):
                (run or (lambda b: call(model, b)))(x)
            collector.end_pass()
            seen += 1
        if not seen:
            raise ConfigError("no calibration data was given", fix="pass data= with at least one batch")
    finally:
        collector.remove()
        model.train(was_training)
    return collector
