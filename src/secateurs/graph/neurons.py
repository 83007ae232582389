"""Neuron removal for chains of Linear layers (MLPs, LeNet-300-100, classifier heads).

Removing neuron j of a hidden Linear deletes row j of its weight and entry j of its bias, and
column j of the next Linear's weight; what lies between the two must act on every neuron on its
own (an activation, dropout) or be sliced alongside (BatchNorm1d). The model's data flow is read
with `torch.fx` rather than guessed from module order, and anything else between two Linears
(a Conv, a reshape, a residual branch) is a `ConfigError` naming it. A general dependency graph
for convolutions and residual blocks is a separate, later engine.

Scores: the L1 norm of each neuron's incoming weights (Li et al. 2017 use the same criterion for
filters), all computed on the original weights, so pruning one layer does not change the scores
of the next. The output layer is never pruned: its neurons are the classes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, remove_masks
from secateurs.core.sparsity import check_sparsity, removed_count

__all__ = ["neuron_masks", "neuron_scores_l1", "prune_neurons"]

_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Identity,
    nn.Dropout,
    nn.AlphaDropout,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.gelu,
    F.silu,
    F.mish,
    torch.sigmoid,
    F.sigmoid,
    torch.tanh,
    F.tanh,
    F.hardtanh,
    F.softplus,
    F.dropout,
}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh"}


@dataclass(frozen=True)
class _Link:
    """A hidden Linear, the Linear that reads its neurons, and BatchNorm1d layers in between."""

    layer: str
    next_layer: str
    norms: tuple[str, ...]


def neuron_scores_l1(linear: nn.Linear) -> Tensor:
    """The L1 norm of each output neuron's incoming weights (one score per weight row)."""
    return linear.weight.detach().abs().sum(dim=1)


# -- reading the model's data flow ----------------------------------------------------------------
def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # fx raises many kinds (TraceError, TypeError, …) for dynamic code
        raise ConfigError(
            f"cannot trace {type(model).__name__} with torch.fx to find its Linear chain: {err}",
            fix="neuron removal needs an fx-traceable model (no data-dependent control flow)",
        ) from err


def _is_linear(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules[str(node.target)], nn.Linear)


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(modules[str(node.target)]).__name__})"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)}"
    return f"{node.op} {node.target!r}"


def _passes_through(node: fx.Node, source: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether `node` maps each neuron of `source` on its own (an activation, dropout, …)."""
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _ELEMENTWISE_MODULES)
    if node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS:
        return node.args[0] is source and all(not isinstance(a, fx.Node) for a in node.args[1:])
    return node.op == "call_method" and node.target in _ELEMENTWISE_METHODS and len(node.args) == 1


def _feeds_linear(graph: fx.Graph, modules: dict[str, nn.Module]) -> dict[fx.Node, bool]:
    """For every node: does any Linear read (directly or indirectly) what it computes?"""
    reaches: dict[fx.Node, bool] = {}
    for node in reversed(list(graph.nodes)):
        reaches[node] = any(_is_linear(u, modules) or reaches[u] for u in node.users)
    return reaches


def _follow(start: fx.Node, modules: dict[str, nn.Module]) -> _Link:
    """Walk from a hidden Linear's output to the next Linear; anything unknown is an error."""
    name, node, norms = str(start.target), start, []
    while True:
        users = list(node.users)
        if len(users) != 1:
            uses = ", ".join(_describe(u, modules) for u in users)
            raise ConfigError(
                f"the neurons of Linear {name!r} reach the next Linear along {len(users)} paths ({uses})",
                fix="neuron removal handles plain chains; exclude this layer with `layers=[...]`",
            )
        user = users[0]
        if _is_linear(user, modules):
            return _Link(name, str(user.target), tuple(norms))
        if user.op == "call_module" and type(modules[str(user.target)]) is nn.BatchNorm1d:
            norms.append(str(user.target))
        elif not _passes_through(user, node, modules):
            raise ConfigError(
                f"{_describe(user, modules)} lies between Linear {name!r} and the next Linear and does not "
                "act on each neuron on its own, so removing neurons there is not defined",
                fix="neuron removal supports activations, dropout and BatchNorm1d between Linears; "
                "exclude this layer with `layers=[...]`",
            )
        node = user


def _links(model: nn.Module, layers: list[str] | None) -> list[_Link]:
    """The hidden Linears to prune (all, or the named ones), in forward order."""
    graph = _trace(model).graph
    modules = dict(model.named_modules())
    linear_nodes = [n for n in graph.nodes if _is_linear(n, modules)]
    names = [str(n.target) for n in linear_nodes]
    shared = sorted({n for n in names if names.count(n) > 1})
    if shared:
        raise ConfigError(f"Linear {shared[0]!r} is called more than once in the forward pass")
    feeds = _feeds_linear(graph, modules)
    hidden = [n for n in linear_nodes if feeds[n]]
    if layers is not None:
        hidden = _select(hidden, names, layers)
    return [_follow(node, modules) for node in hidden]


def _select(hidden: list[fx.Node], names: list[str], layers: list[str]) -> list[fx.Node]:
    by_name = {str(n.target): n for n in hidden}
    for layer in layers:
        if layer not in by_name:
            what = (
                "the output layer (no Linear reads its neurons)"
                if layer in names
                else "not a Linear used in the forward pass"
            )
            raise ConfigError(
                f"layer {layer!r} is {what}; neurons can only be removed from hidden Linears",
                fix=f"choose among: {', '.join(by_name) or '(none)'}",
            )
    return [n for n in hidden if str(n.target) in set(layers)]


def _kept_neurons(model: nn.Module, links: list[_Link], sparsity: float) -> dict[str, Tensor]:
    """Indices (ascending) of the neurons each hidden Linear keeps: the highest L1 scores.

    sparsity · width neurons go (rounded by the rule in force, `core.sparsity`), at least one stays;
    ties keep the lower index.
    """
    check_sparsity(sparsity)
    kept = {}
    for link in links:
        linear = model.get_submodule(link.layer)
        assert isinstance(linear, nn.Linear)
        width = linear.out_features
        keep = max(width - removed_count(sparsity * width), 1)
        order = torch.argsort(neuron_scores_l1(linear), descending=True, stable=True)
        kept[link.layer] = order[:keep].sort().values
    return kept


# -- building the smaller model ---------------------------------------------------------------------
def _sliced_linear(linear: nn.Linear, rows: Tensor | None, cols: Tensor | None) -> nn.Linear:
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    new = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.requires_grad_(linear.weight.requires_grad)
    return new


def _sliced_norm(norm: nn.BatchNorm1d, keep: Tensor) -> nn.BatchNorm1d:
    new = copy.deepcopy(norm)
    new.num_features = keep.numel()
    for key, tensor in list(new.named_parameters(recurse=False)) + list(new.named_buffers(recurse=False)):
        if tensor is not None and tensor.dim() == 1:
            sliced = tensor.detach()[keep].clone()
            setattr(new, key, nn.Parameter(sliced) if isinstance(tensor, nn.Parameter) else sliced)
    return new


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def prune_neurons(
    model: nn.Module, sparsity: float, *, layers: list[str] | None = None
) -> tuple[nn.Module, dict[str, Tensor]]:
    """A smaller copy of `model` without the lowest-L1 `sparsity` fraction of hidden neurons.

    Every hidden Linear (or those named in `layers`) loses round(sparsity · width) neurons, the
    next Linear the matching input columns, BatchNorm1d layers between them the matching
    features. Returns the new model (a deep copy with contiguous, plain Linear weights, no
    masks; `model` is untouched) and the kept neuron indices per pruned layer.
    """
    links = _links(model, layers)
    kept = _kept_neurons(model, links, sparsity)
    reads = {link.next_layer: kept[link.layer] for link in links}
    small = copy.deepcopy(model)
    remove_masks(small)
    for name in dict.fromkeys([link.layer for link in links] + list(reads)):
        linear = small.get_submodule(name)
        assert isinstance(linear, nn.Linear)
        _replace(small, name, _sliced_linear(linear, kept.get(name), reads.get(name)))
    for link in links:
        for norm_name in link.norms:
            norm = small.get_submodule(norm_name)
            assert isinstance(norm, nn.BatchNorm1d)
            _replace(small, norm_name, _sliced_norm(norm, kept[link.layer]))
    return small, kept


def neuron_masks(model: nn.Module, sparsity: float, layers: list[str] | None = None) -> MaskSet:
    """The masks that zero exactly what `prune_neurons` removes, on the unremoved model.

    Rows of each pruned Linear's weight and entries of its bias, and columns of the Linear
    reading it. A masked model computes the same outputs as the removed one.
    """
    links = _links(model, layers)
    kept = _kept_neurons(model, links, sparsity)
    reads = {link.next_layer: kept[link.layer] for link in links}
    masks: dict[str, Tensor] = {}
    for name, module in model.named_modules():
        if name not in kept and name not in reads:
            continue
        assert isinstance(module, nn.Linear)
        rows = _keep_vector(module.out_features, kept.get(name), module.weight.device)
        cols = _keep_vector(module.in_features, reads.get(name), module.weight.device)
        masks[f"{name}.weight"] = rows[:, None] & cols[None, :]
        if module.bias is not None and name in kept:
            masks[f"{name}.bias"] = rows
    return MaskSet(masks)


def _keep_vector(size: int, keep: Tensor | None, device: torch.device) -> Tensor:
    """Boolean vector True at `keep` (all True when None)."""
    if keep is None:
        return torch.ones(size, dtype=torch.bool, device=device)
    vector = torch.zeros(size, dtype=torch.bool, device=device)
    vector[keep.to(device)] = True
    return vector
