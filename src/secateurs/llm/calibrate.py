"""Sequential, block-by-block one-shot pruning of a transformer.

Why sequential: layer l must be calibrated on what it will really see at inference, the outputs
of the already pruned layers 0..l-1, so errors of earlier layers are compensated (SparseGPT)
or at least measured (Wanda) downstream. Why block by block: only one block's inputs and
outputs for the calibration set are held in memory (2 · samples · seq_len · hidden floats)
plus that block's statistics (one Hessian per distinct linear input), never the whole model's.

Loop: run the model on the calibration batches until the first block, capturing its input and
keyword arguments (attention mask, rotary embeddings) with a pre-hook that then stops the
forward; then for each block: run it with hooks on its Linear layers that accumulate input
statistics, prune those Linears, and run the pruned block again to get the next block's input.
Linears that read the same tensor (q/k/v; gate/up) share one accumulator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.llm.methods import Pattern, check_method, magnitude_mask, sparsegpt_prune, wanda_mask
from secateurs.llm.models import decoder_layers, layer_linears


class _Stop(Exception):
    """Raised by the capture hook to end the forward pass at the first block."""


@dataclass
class _Stats:
    """Running input statistics of one Linear input: token count, Σx² per feature, Σxxᵀ."""

    features: int
    hessian: bool
    tokens: int = 0
    sq: Tensor = field(init=False)
    xtx: Tensor | None = field(init=False)

    def __post_init__(self) -> None:
        self.sq = torch.zeros(self.features, dtype=torch.float64)
        # Σxxᵀ in float32 (as SparseGPT does; 2-3× faster than float64 on CPU), inverted in float64
        self.xtx = torch.zeros(self.features, self.features, dtype=torch.float32) if self.hessian else None

    def add(self, x: Tensor) -> None:
        x = x.detach().reshape(-1, self.features)
        self.tokens += x.shape[0]
        x64 = x.to(torch.float64)
        self.sq += (x64 * x64).sum(0)
        if self.xtx is not None:
            x32 = x.to(torch.float32)
            self.xtx += x32.T @ x32

    def act_norm(self) -> Tensor:
        """‖X_j‖₂ over all calibration tokens (Wanda's activation norm)."""
        return self.sq.sqrt().to(torch.float32)

    def hessian_matrix(self) -> Tensor:
        """H = 2XXᵀ/n (the scale does not change the OBS solution; dampening is relative)."""
        if self.xtx is None:
            raise RuntimeError("these statistics were collected without the Hessian")
        return 2.0 * self.xtx.to(torch.float64) / max(self.tokens, 1)


class _Collector:
    """Forward pre-hooks on a block's Linears; one accumulator per distinct input tensor."""

    def __init__(self, linears: dict[str, nn.Linear], hessian: bool) -> None:
        self.stats: dict[str, _Stats] = {}
        self.alias: dict[str, str] = {}  # linear name → name whose accumulator it shares
        self._first_pass = True
        self._last: tuple[Tensor, str] | None = None
        self._handles = [
            lin.register_forward_pre_hook(self._hook(name, lin.in_features, hessian))
            for name, lin in linears.items()
        ]

    def _hook(self, name: str, features: int, hessian: bool) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if self._first_pass and self._last is not None and self._last[0] is x:
                self.alias[name] = self.alias.get(self._last[1], self._last[1])
            self._last = (x, name)
            if name in self.alias:
                return
            if name not in self.stats:
                self.stats[name] = _Stats(features, hessian)
            self.stats[name].add(x)

        return hook

    def end_pass(self) -> None:
        self._first_pass = False
        self._last = None

    def get(self, name: str) -> _Stats:
        return self.stats[self.alias.get(name, name)]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


_POSITIONAL = "__positional__"


def _block_output(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple | list) else out


def call_block(block: nn.Module, hidden: Tensor, kwargs: dict[str, Any]) -> Tensor:
    """Run one block on hidden states with the arguments captured by `capture_block_inputs`."""
    kw = dict(kwargs)
    rest = kw.pop(_POSITIONAL, ())
    return _block_output(block(hidden, *rest, **kw))


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, batches: Sequence[Tensor]
) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Hidden states and keyword arguments with which the model calls its first block, per batch."""
    layers = decoder_layers(model)
    inputs: list[Tensor] = []
    kwargs_list: list[dict[str, Any]] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kw = dict(kwargs)
        if args:
            hidden, rest = args[0], args[1:]
        else:
            hidden, rest = kw.pop("hidden_states"), ()
        inputs.append(hidden.detach())
        kw[_POSITIONAL] = rest  # BERT passes the attention mask positionally
        kwargs_list.append(kw)
        raise _Stop

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in batches:
            with contextlib.suppress(_Stop):
                model(input_ids=ids, use_cache=False) if _is_causal(model) else model(input_ids=ids)
    finally:
        handle.remove()
    return inputs, kwargs_list


def _is_causal(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForCausalLM")


@torch.no_grad()
def _run_block(block: nn.Module, inputs: list[Tensor], kwargs_list: list[dict[str, Any]]) -> list[Tensor]:
    return [call_block(block, x, kw) for x, kw in zip(inputs, kwargs_list, strict=True)]


@dataclass
class LayerReport:
    """What happened to one Linear: its pruned count and the calibration tokens behind it."""

    name: str
    numel: int
    pruned: int
    tokens: int


@torch.no_grad()
def prune_model(
    model: nn.Module,
    method: str,
    pattern: Pattern,
    calibration: Tensor | None = None,
    *,
    batch_size: int = 8,
    blocksize: int = 128,
    percdamp: float = 0.01,
    on_block: Callable[[int, list[Tensor]], None] | None = None,
) -> list[LayerReport]:
    """Prune every nn.Linear inside the transformer blocks in place; returns one report per Linear.

    `calibration` is a [samples, seq_len] LongTensor of token ids (needed by wanda and sparsegpt;
    magnitude ignores it). `on_block(index, inputs)` sees the hidden states each block is
    calibrated on (the outputs of the already pruned blocks before it).
    """
    check_method(method)
    layers = decoder_layers(model)
    reports: list[LayerReport] = []
    if method == "magnitude":
        for li, block in enumerate(layers):
            for name, lin in layer_linears(block).items():
                mask = magnitude_mask(lin.weight, pattern)
                lin.weight.mul_(mask.to(lin.weight.dtype))
                reports.append(LayerReport(f"{li}.{name}", mask.numel(), int((~mask).sum()), 0))
        return reports
    if calibration is None or calibration.numel() == 0:
        raise ConfigError(
            f"method {method!r} needs calibration token ids", where="prune_model", fix="pass calibration="
        )
    if calibration.dim() != 2:
        raise ConfigError(
            f"calibration must be [samples, seq_len], got shape {list(calibration.shape)}",
            where="prune_model",
            fix="use secateurs.llm.text.calibration_batch",
        )
    batches = list(calibration.split(batch_size))
    inputs, kwargs_list = capture_block_inputs(model, batches)
    for li, block in enumerate(layers):
        if on_block is not None:
            on_block(li, inputs)
        linears = layer_linears(block)
        collector = _Collector(linears, hessian=method == "sparsegpt")
        try:
            for x, kw in zip(inputs, kwargs_list, strict=True):
                call_block(block, x, kw)
                collector.end_pass()
        finally:
            collector.remove()
        for name, lin in linears.items():
            stats = collector.get(name)
            if method == "wanda":
                mask = wanda_mask(lin.weight, stats.act_norm(), pattern)
                lin.weight.mul_(mask.to(lin.weight.dtype))
            else:
                new, mask = sparsegpt_prune(
                    lin.weight, stats.hessian_matrix(), pattern, blocksize=blocksize, percdamp=percdamp
                )
                lin.weight.copy_(new)
            reports.append(LayerReport(f"{li}.{name}", mask.numel(), int((~mask).sum()), stats.tokens))
        del collector
        inputs = _run_block(block, inputs, kwargs_list)
    return reports
