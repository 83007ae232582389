"""Fold BatchNorm into the convolution or Linear that feeds it, for inference.

In eval mode a BatchNorm is a fixed per-channel affine map, y = (x - mu) * s + beta with
s = gamma / sqrt(var + eps); when x is the output of a conv/Linear, the map can be absorbed into
that layer's weight and bias, so the folded model does one layer's work where it did two and has
fewer parameters to ship. This is only exact with the running statistics: the folded model is for
inference, and a model in training mode (where BN uses batch statistics) is refused.

The data flow is read with `torch.fx` rather than guessed from module order: a BN is folded only
when its single input is a Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear call whose output is
used by nothing else (folding a conv whose output also feeds a residual add would change that
add). Anything else (BN after an add, BN without running statistics, a layer called twice, a
module with hooks or parametrizations) is left as it was.

API: `fold_batchnorm(model)` returns a new `fx.GraphModule` (the input is untouched) and
`folded_count(original, folded)` says how many BatchNorm modules it removed.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

from secateurs.core.errors import ConfigError

__all__ = ["fold_batchnorm", "folded_count"]

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PRODUCERS = (*_CONVS, *_TRANSPOSED, nn.Linear)


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """Return a copy of eval-mode `model` with every foldable BatchNorm folded into its producer.

    Folded BNs are removed from the graph (and their modules from the result); the producer gains
    W' = W * s per output channel and b' = (b - mu) * s + beta (b = 0 if it had no bias), computed
    in float64 and cast back to the parameter's dtype. The result is for inference only.

    A Linear followed by BatchNorm1d is assumed to see (batch, features) input, the usual case;
    BatchNorm1d over the length of a (batch, length, features) Linear output is not told apart.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"fold_batchnorm needs an nn.Module, got {type(model).__name__}", fix="pass the model itself"
        )
    # the root's flag is the user's intent; a BN left in training mode would use batch statistics
    training = [
        name or "<root>"
        for name, m in model.named_modules()
        if m.training and (m is model or isinstance(m, _BATCHNORMS))
    ]
    if training:
        raise ConfigError(
            f"cannot fold BatchNorm in a model in training mode (modules in training mode: "
            f"{', '.join(training[:5])}{', …' if len(training) > 5 else ''})",
            where=type(model).__name__,
            fix="folding uses the running statistics and the folded model is for inference: call "
            "model.eval() first",
        )
    try:
        work = copy.deepcopy(model)
    except RuntimeError as err:  # e.g. torch.nn.utils.prune / weight_norm keep non-leaf weight tensors
        raise ConfigError(
            f"cannot copy {type(model).__name__} to fold it: {err}",
            fix="make the weights plain parameters first (torch.nn.utils.prune.remove, "
            "torch.nn.utils.parametrize.remove_parametrizations)",
        ) from err
    try:
        gm = fx.symbolic_trace(work)
    except Exception as err:  # fx raises many kinds (TraceError, TypeError, …) for dynamic code
        raise ConfigError(
            f"cannot trace {type(model).__name__} with torch.fx to find conv -> BatchNorm pairs: {err}",
            fix="make the model fx-traceable (no data-dependent control flow such as `if x.sum() > 0:`), "
            "or call fold_batchnorm on its traceable submodules and put them back",
        ) from err
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    folded = False
    for node in list(gm.graph.nodes):
        producer = _foldable_producer(node, modules, calls)
        if producer is None:
            continue
        _fold_into(modules[str(producer.target)], modules[str(node.target)])
        node.replace_all_uses_with(producer)
        gm.graph.erase_node(node)
        calls[str(node.target)] -= 1
        folded = True
    if folded:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return gm


def folded_count(original: nn.Module, folded: nn.Module) -> int:
    """How many BatchNorm modules `fold_batchnorm(original)` removed (modules, not call sites)."""
    return _count_batchnorms(original) - _count_batchnorms(folded)


def _count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, _BATCHNORMS) for m in model.modules())


def _plain(module: nn.Module) -> bool:
    """No hooks or parametrizations, whose effect a fold would silently drop or fight."""
    return not (
        parametrize.is_parametrized(module)
        or module._forward_hooks
        or module._forward_pre_hooks
        or hasattr(module, "weight_orig")  # torch.nn.utils.prune recomputes `weight` before each call
    )


def _foldable_producer(node: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> fx.Node | None:
    """The producer node `node` (a BN call) can be folded into, or None."""
    if node.op != "call_module":
        return None
    bn = modules[str(node.target)]
    if not isinstance(bn, _BATCHNORMS) or not _plain(bn):
        return None
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return None  # eval-mode BN without running statistics normalises by the batch: not affine
    if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
        return None
    producer = node.args[0]
    if producer.op != "call_module" or len(producer.users) != 1 or calls[str(producer.target)] != 1:
        return None
    layer = modules[str(producer.target)]
    if not isinstance(layer, _PRODUCERS) or not _plain(layer):
        return None
    if _out_channels(layer) != bn.num_features:
        return None
    return producer


def _out_channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    return layer.out_channels  # type: ignore[return-value]


def _fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Absorb eval-mode `bn` into `layer` in float64; new Parameters, so tied weights stay intact."""
    weight: Tensor = layer.weight  # type: ignore[assignment]
    bias: Tensor | None = layer.bias  # type: ignore[assignment]
    mean = cast(Tensor, bn.running_mean).detach().double()  # present: checked by the caller
    var = cast(Tensor, bn.running_var).detach().double()
    if bn.affine:
        gamma = bn.weight.detach().double()
        beta = bn.bias.detach().double()
    else:
        gamma = torch.ones_like(mean)
        beta = torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    w = weight.detach().double()
    if isinstance(layer, _TRANSPOSED):
        # weight is (in, out/groups, *k): output channel g*(out/groups)+j sits at [i in group g, j]
        groups = layer.groups
        shape = w.shape
        grouped = w.reshape(groups, shape[0] // groups, shape[1], *shape[2:])
        s = scale.reshape(groups, 1, shape[1], *([1] * (w.dim() - 2)))
        new_w = (grouped * s).reshape(shape)
    else:
        new_w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    b = torch.zeros_like(mean) if bias is None else bias.detach().double()
    new_b = (b - mean) * scale + beta
    bias_dtype = weight.dtype if bias is None else bias.dtype
    layer.weight = nn.Parameter(new_w.to(weight.dtype), requires_grad=weight.requires_grad)
    layer.bias = nn.Parameter(
        new_b.to(device=weight.device, dtype=bias_dtype),
        requires_grad=weight.requires_grad if bias is None else bias.requires_grad,
    )
