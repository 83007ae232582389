"""Parameter and multiply-accumulate (MAC) counts that see pruned weights.

PyTorch's ``FlopCounterMode`` counts dense work, so a model with 90 % of its weights at zero
reports the same cost as the dense one. Here one forward pass on a zeros input of batch 1
records, for every Linear / ConvNd / ConvTransposeNd module that runs, how often its whole
weight is applied ("positions") and counts per input sample:

* ``macs = positions * weight.numel()`` (dense work) and
* ``nonzero_macs = positions * count_nonzero(weight)`` (work on nonzero weights only).

Conventions (the usual ones for pruning papers):

* Linear: positions = product of the leading dimensions, e.g. sequence length for (1, L, in).
* ConvNd: positions = output spatial size; weight.numel() = out * (in / groups) * prod(kernel).
  Positions that read padding are counted as dense work, like everywhere else.
* ConvTransposeNd: every input position multiplies every weight element
  (in * out / groups * prod(kernel) of them), so positions = input spatial size. Products
  that land in the cropped ``padding`` border are counted too.
* Zero *activations* are not exploited (only zero weights), biases and nonlinearities are
  not MACs, and a module called twice in one forward is counted twice.
* Only modules whose own ``forward`` runs are seen: functional calls (``F.linear`` on a
  module's weight) and ``nn.MultiheadAttention``'s internal projections are not counted.

Effective weights are read through ``module.weight``, so weights masked in place (our
`MaskSet`) and ``torch.nn.utils.prune`` / parametrizations are all counted correctly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from secateurs.core.errors import ConfigError
from secateurs.eval.metrics import eval_mode, model_device, parameter_counts

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_COUNTED = (nn.Linear, *_CONV, *_CONV_T)


@dataclass(frozen=True)
class LayerCost:
    """Cost of one counted module for one input sample."""

    name: str
    kind: str
    params: int
    nonzero_params: int
    macs: int
    nonzero_macs: int


@dataclass(frozen=True)
class CostReport:
    """Per-layer and whole-model costs for one input sample."""

    layers: list[LayerCost]
    params: int
    nonzero_params: int
    macs: int
    nonzero_macs: int

    @property
    def compression_ratio(self) -> float:
        """All parameters / nonzero parameters (1.0 for a dense model)."""
        return self.params / self.nonzero_params if self.nonzero_params else math.inf

    @property
    def theoretical_speedup(self) -> float:
        """Dense MACs / nonzero MACs: the speed-up an ideal sparse kernel would give."""
        return self.macs / self.nonzero_macs if self.nonzero_macs else math.inf

    def table_rows(self) -> list[dict[str, object]]:
        """One plain dict per layer, in module order, for printing or JSON."""
        return [asdict(layer) for layer in self.layers]


class _Tally:
    """MACs accumulated by one module over all its calls in the counting pass."""

    def __init__(self) -> None:
        self.calls = 0
        self.macs = 0
        self.nonzero_macs = 0

    def __call__(
        self, module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object], output: object
    ) -> None:
        weight = module.weight
        positions = _positions(module, args, kwargs, output)
        self.calls += 1
        self.macs += positions * weight.numel()
        self.nonzero_macs += positions * int(torch.count_nonzero(weight.detach()))


def _positions(module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object], output: object) -> int:
    """How many times `module`'s whole weight is applied in this call (batch is 1)."""
    if isinstance(module, _CONV_T):
        inputs = args[0] if args else kwargs["input"]
        assert isinstance(inputs, Tensor)
        return inputs.numel() // max(module.in_channels, 1)
    assert isinstance(output, Tensor)
    width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    return output.numel() // max(width, 1)


def _weights_of(module: nn.Module) -> list[Tensor]:
    """The effective weight and bias (not e.g. ``weight_orig`` of torch's pruning)."""
    return [t for t in (module.weight, module.bias) if isinstance(t, Tensor)]


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ConfigError(
            f"input shape {input_shape!r} is not a non-empty tuple of positive ints",
            fix="pass the shape of ONE sample without the batch dimension, e.g. (1, 28, 28)",
        )
    return shape


def _dummy_input(model: nn.Module, shape: tuple[int, ...]) -> Tensor:
    """A zeros batch of one sample on the model's device, in its floating dtype."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
    return torch.zeros((1, *shape), dtype=dtype, device=model_device(model))


def _run_counting_pass(model: nn.Module, x: Tensor, tallies: dict[nn.Module, _Tally]) -> None:
    """One hooked forward; hooks are removed even if the forward raises."""
    handles: list[RemovableHandle] = []
    try:
        for module in model.modules():
            if isinstance(module, _COUNTED):
                tally = tallies.setdefault(module, _Tally())
                handles.append(module.register_forward_hook(tally, with_kwargs=True))
        with eval_mode(model), torch.no_grad():
            model(x)
    except RuntimeError as err:
        raise ConfigError(
            f"the model's forward pass failed on a zeros input of shape {tuple(x.shape)}: {err}",
            where="count_costs",
            fix="pass the shape of ONE sample without the batch dimension, matching the model's input",
        ) from err
    finally:
        for handle in handles:
            handle.remove()


def count_costs(model: nn.Module, input_shape: tuple[int, ...]) -> CostReport:
    """Count parameters and dense / nonzero MACs per sample of `input_shape` (no batch dim).

    Runs one forward pass in eval mode under ``torch.no_grad``; every module's train/eval
    mode is restored afterwards. Deterministic: it depends only on shapes and zero patterns.
    """
    tallies: dict[nn.Module, _Tally] = {}
    _run_counting_pass(model, _dummy_input(model, _check_shape(input_shape)), tallies)
    layers = []
    for name, module in model.named_modules():
        tally = tallies.get(module)
        if tally is None or tally.calls == 0:
            continue  # not a counted kind, or not used by this forward
        tensors = _weights_of(module)
        layers.append(
            LayerCost(
                name=name,
                kind=type(module).__name__,
                params=sum(t.numel() for t in tensors),
                nonzero_params=sum(int(torch.count_nonzero(t.detach())) for t in tensors),
                macs=tally.macs,
                nonzero_macs=tally.nonzero_macs,
            )
        )
    params, nonzero = parameter_counts(model)
    return CostReport(
        layers=layers,
        params=params,
        nonzero_params=nonzero,
        macs=sum(layer.macs for layer in layers),
        nonzero_macs=sum(layer.nonzero_macs for layer in layers),
    )
