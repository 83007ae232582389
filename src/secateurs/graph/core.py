"""Channel dependency graph: which channels of a model must be removed together.

The model is traced with `torch.fx` and run once on an example input to learn every tensor's
shape. Each tensor that carries channels gets a *label* per channel position (an integer array
over the dimensions the channels lie on). Layers create labels (a conv's output channels), the
ops between layers move them (activations, pooling, flatten, transpose, view), and ops that tie
channels together unify labels in a union-find: a residual `add` ties channel i of both inputs,
a grouped conv ties the same offset in every group, a view that splits channels into a literal
number of groups ties each offset across the groups. After tracing, each union-find class is one
**channel group**: removing it deletes every position that carries one of its labels, in every
weight, bias, norm parameter and buffer those positions reach.

Every op has exactly one rule (see `RULES` and `MODULE_RULES`). An op without a rule that
receives a tensor with channels raises a `ConfigError` naming the op and the graph node, with
the way to add a rule (`register_function_rule` / `register_module_rule`): never a silent guess.
Ops whose result would change if channels disappeared (a softmax or a mean over channels, a
LayerNorm or GroupNorm computing statistics over them, a reshape into literal sizes) *freeze*
the channels they see: such groups are never pruned, so removal stays exactly equivalent to
zeroing the removed channels where they are consumed. Channels reaching the model's output are
frozen too (they are the classes).

Memory is a few integers per channel per tensor; no per-weight structure is built.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from secateurs.core.errors import ConfigError

PRODUCER, PASSIVE = 1, 0
RULE_HELP = "secateurs.graph.core.register_function_rule or register_module_rule"


# -- union-find over labels -------------------------------------------------------------------------
class Labels:
    """Integer labels with a union-find and a kind (a producer's channels, or passive ones)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.kind: list[int] = []
        self.frozen: set[int] = set()  # labels (not roots): resolved at the end
        self._root_of: np.ndarray | None = None  # cached classes, reset by every union

    def fresh(self, shape: Sequence[int], kind: int) -> np.ndarray:
        n = math.prod(shape)
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.kind.extend([kind] * n)
        return np.arange(start, start + n, dtype=np.int64).reshape(tuple(shape))

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)
                self._root_of = None

    def freeze(self, labels: np.ndarray) -> None:
        self.frozen.update(labels.reshape(-1).tolist())

    def roots(self, labels: np.ndarray) -> np.ndarray:
        """The class (root label) of every label; one vectorised lookup once classes are final."""
        if self._root_of is None or len(self._root_of) != len(self.parent):
            n = len(self.parent)
            self._root_of = np.fromiter((self.find(i) for i in range(n)), np.int64, n)
        return self._root_of[labels]


class Opaque:
    """A tensor whose channels came from tracked ones along a path no rule follows: anything it
    meets is frozen (never pruned), since its channel layout is unknown."""


OPAQUE = Opaque()


def _opaque(ctx: Context, t: Tracked) -> Opaque:
    ctx.labels.freeze(t.labels)
    return OPAQUE


@dataclass
class Tracked:
    """The channel labels of one tensor: `labels` has one axis per entry of `dims` (tensor dims)."""

    dims: tuple[int, ...]
    labels: np.ndarray

    def on(self, dim: int) -> np.ndarray | None:
        """The 1-D labels along tensor dim `dim` when that is the only tracked dim."""
        return self.labels if self.dims == (dim,) else None


@dataclass(frozen=True)
class Site:
    """Channels of a module's parameter or buffer: `labels[i]` is the label of index i along `dim`."""

    module: str
    tensor: str
    dim: int
    labels: np.ndarray
    role: str  # "producer" (output channels), "consumer" (input channels) or "passive" (sliced along)

    @property
    def name(self) -> str:
        """The tensor's qualified name, as in `model.named_parameters()`."""
        return f"{self.module}.{self.tensor}" if self.module else self.tensor


@dataclass
class ChannelGroup:
    """Channels that are removed together: every position whose label is in this class."""

    id: int
    sites: list[tuple[Site, np.ndarray]] = field(default_factory=list)  # (site, indices along its dim)

    def producers(self) -> list[tuple[Site, np.ndarray]]:
        return [(s, i) for s, i in self.sites if s.role == "producer"]

    def consumers(self) -> list[tuple[Site, np.ndarray]]:
        return [(s, i) for s, i in self.sites if s.role == "consumer"]


@dataclass
class ChannelGraph:
    """The result of `analyze`: the prunable groups, and every site channels live in."""

    model: nn.Module
    groups: list[ChannelGroup]
    sites: list[Site]
    labels: Labels
    frozen_roots: set[int]
    attributes: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def group_of_root(self) -> dict[int, ChannelGroup]:
        return {g.id: g for g in self.groups}


# -- the tracing context ------------------------------------------------------------------------------
class Context:
    """What rules see: labels, shapes, modules, and where to record sites."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module) -> None:
        self.gm = gm
        self.model = model
        self.modules = dict(model.named_modules())
        self.labels = Labels()
        self.sites: list[Site] = []
        self._site_keys: dict[tuple[str, str, int], Site] = {}
        self.attributes: dict[tuple[str, str], np.ndarray] = {}  # module size attributes and their units
        self.values: dict[fx.Node, Any] = {}

    def shape(self, node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def tracked(self, value: Any) -> Tracked | None:
        found = self.values.get(value) if isinstance(value, fx.Node) else None
        return found if isinstance(found, Tracked) else None

    def site(self, module: str, tensor: str, dim: int, labels: np.ndarray, role: str) -> None:
        """Record where channels live; a module called twice must see the same channels each time."""
        key = (module, tensor, dim)
        known = self._site_keys.get(key)
        if known is not None:
            if known.labels.shape != labels.reshape(-1).shape:
                raise ConfigError(f"module {module!r} is called on different channel counts", fix="")
            self.labels.union(known.labels, labels)
            return
        site = Site(module, tensor, dim, labels.reshape(-1).copy(), role)
        self._site_keys[key] = site
        self.sites.append(site)

    def attribute_site(self, module: str, attribute: str, labels: np.ndarray) -> None:
        """`module.attribute` counts the positions `labels` (one per unit): pruning sets it to those kept."""
        key = (module, attribute)
        known = self.attributes.get(key)
        if known is None:
            self.attributes[key] = labels.reshape(-1).copy()
        elif known.shape == labels.reshape(-1).shape:
            self.labels.union(known, labels)
        else:  # one attribute sizing different things: it cannot follow both
            self.labels.freeze(known)
            self.labels.freeze(labels)

    def fresh_channels(self, module: str, tensors: Sequence[tuple[str, int]], count: int) -> np.ndarray:
        """New producer labels for `count` output channels, recorded at each (tensor, dim) of `module`."""
        labels = self.labels.fresh((count,), PRODUCER)
        for tensor, dim in tensors:
            self.site(module, tensor, dim, labels, "producer")
        return labels


FunctionRule = Callable[[Context, fx.Node], Any]
ModuleRule = Callable[[Context, fx.Node, nn.Module], Any]
RULES: dict[Any, FunctionRule] = {}  # call_function targets and call_method names
MODULE_RULES: dict[type, ModuleRule] = {}


R = TypeVar("R")


def _registrar(table: dict[Any, R], keys: tuple[Any, ...]) -> Callable[[R], R]:
    """A decorator that files its rule under every key of `keys` in `table`."""

    def deco(rule: R) -> R:
        for key in keys:
            table[key] = rule
        return rule

    return deco


def register_function_rule(*targets: Any) -> Callable[[FunctionRule], FunctionRule]:
    """Register a rule for functions (e.g. `torch.cat`) or tensor method names (e.g. "view")."""
    return _registrar(RULES, targets)


def register_module_rule(*types: type) -> Callable[[ModuleRule], ModuleRule]:
    """Register a rule for module types (subclasses match too, nearest class first)."""
    return _registrar(MODULE_RULES, types)


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _ndim(ctx: Context, node: fx.Node) -> int:
    shape = ctx.shape(node)
    if shape is None:
        raise ConfigError(
            f"no shape recorded for node {node.name}", fix="report this model to the developers"
        )
    return len(shape)


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


# -- generic rules -------------------------------------------------------------------------------------
def passthrough(ctx: Context, node: fx.Node, *_: Any) -> Tracked | None:
    """Same shape, each channel on its own (activations, dropout, pooling over space)."""
    source = next((ctx.tracked(a) for a in node.all_input_nodes if ctx.tracked(a) is not None), None)
    if source is None:
        return None
    out_shape, in_shape = ctx.shape(node), ctx.shape(node.all_input_nodes[0])
    if out_shape is not None and in_shape is not None and len(out_shape) != len(in_shape):
        raise ConfigError(
            f"op {node.target} at node {node.name} changes the rank of a tensor with channels",
            fix="register a channel rule for it (secateurs.graph.core.register_function_rule)",
        )
    return source


def freeze_inputs(ctx: Context, node: fx.Node, *_: Any) -> None:
    """The op's result depends on the set of channels: none of them may be removed."""
    for a in node.all_input_nodes:
        t = ctx.tracked(a)
        if t is not None:
            ctx.labels.freeze(t.labels)


def untracked(ctx: Context, node: fx.Node, *_: Any) -> None:
    return None


def _broadcast(ctx: Context, node: fx.Node) -> Tracked | None:
    """Elementwise ops with broadcasting: channels on the same output dim are tied position by position."""
    out_shape = ctx.shape(node)
    if out_shape is None:
        return None
    ndim = len(out_shape)
    per_dim: dict[int, np.ndarray] = {}
    for a in node.all_input_nodes:
        t, shape = ctx.tracked(a), ctx.shape(a)
        if t is None or shape is None:
            continue
        offset = ndim - len(shape)
        if len(t.dims) != 1:
            # several tracked dims (e.g. a split view): require identical layout, tie elementwise
            key = tuple(d + offset for d in t.dims)
            existing = per_dim.get(key)  # type: ignore[call-overload]
            if existing is not None:
                ctx.labels.union(existing, t.labels)
            else:
                per_dim[key] = t.labels  # type: ignore[index]
            continue
        dim = t.dims[0] + offset
        if shape[t.dims[0]] == 1:
            continue  # broadcast along this dim: a single label for all channels cannot be split
        if dim in per_dim:
            ctx.labels.union(per_dim[dim], t.labels)
        else:
            per_dim[dim] = t.labels
    if not per_dim:
        return None
    if len(per_dim) > 1:
        raise ConfigError(
            f"node {node.name} ({node.target}) combines channels on different dimensions",
            fix=f"register a channel rule for this pattern ({RULE_HELP})",
        )
    ((dims, labels),) = per_dim.items()
    return Tracked(dims if isinstance(dims, tuple) else (dims,), labels)


def _reshape(ctx: Context, node: fx.Node, source: fx.Node, sizes: Sequence[Any]) -> Tracked | None:
    """view / reshape / flatten: follow channels through merged and split dimensions.

    Input and output dims are matched into blocks of equal element count. A block holding the
    tracked dims either keeps them, merges them with untracked dims (labels repeat) or splits
    one tracked dim into several: sub-dims whose size is a literal in the code cannot shrink,
    so channels are tied across them (each keeps its offset), and if every sub-dim is literal
    the channels are frozen.
    """
    t = ctx.tracked(source)
    if t is None:
        return None
    in_shape, out_shape = ctx.shape(source), ctx.shape(node)
    assert in_shape is not None and out_shape is not None
    blocks = _blocks(in_shape, out_shape)
    if blocks is None:
        return _opaque(ctx, t)
    tracked_dims = set(t.dims)
    for in_dims, out_dims in blocks:
        if not tracked_dims & set(in_dims):
            continue
        if not tracked_dims <= set(in_dims) or not out_dims:
            return _opaque(ctx, t)  # channels spread over several blocks: not followed
        # the block's labels over its input dims (untracked dims broadcast)
        order = [t.dims.index(d) for d in sorted(t.dims)]
        labels = np.transpose(t.labels, order) if len(order) > 1 else t.labels
        full_shape = [in_shape[d] for d in in_dims]
        expand = [in_shape[d] if d in tracked_dims else 1 for d in in_dims]
        block = np.broadcast_to(labels.reshape(expand), full_shape).reshape(-1)
        out_sizes = [out_shape[d] for d in out_dims]
        grid = block.reshape(out_sizes) if out_sizes else block.reshape(())
        kept_dims = [d for d in out_dims if out_shape[d] > 1]
        kinds = _size_kinds(ctx, node, sizes, out_dims)
        shrinkable = [d for d in kept_dims if kinds[d] != LITERAL]
        if len(shrinkable) != 1:
            ctx.labels.freeze(block)  # fixed by the code, or a grid of two free sizes: not followed
        for d in kept_dims if len(shrinkable) == 1 else []:
            axis = out_dims.index(d)
            if d in shrinkable:
                if kinds[d] != DYNAMIC:  # a module attribute holds this size: pruning updates it
                    others = tuple(i for i in range(grid.ndim) if i != axis)
                    along = grid.transpose((axis, *others)).reshape(grid.shape[axis], -1)[:, 0]
                    ctx.attribute_site(*kinds[d], along)
                continue
            first = np.take(grid, 0, axis=axis)  # a literal sub-dim keeps its size: tie channels across it
            for i in range(1, grid.shape[axis]):
                ctx.labels.union(first, np.take(grid, i, axis=axis))
        dims = tuple(d for d in out_dims if out_shape[d] > 1) or tuple(out_dims[:1])
        squeezed = grid.reshape([out_shape[d] for d in dims]) if dims else grid
        return Tracked(dims, squeezed)
    return None


# Module attributes that a reshape may read its size from and that pruning keeps up to date: a
# count of units (heads) or a total width. Only these names, and only when exactly one of them
# equals the literal, so a coincidental attribute is never rewritten.
COUNT_ATTRIBUTES = ("num_heads", "n_heads", "heads", "num_attention_heads", "n_head")
WIDTH_ATTRIBUTES = ("hidden_dim", "inner_dim", "all_head_size", "embed_dim", "dim", "channels", "hidden_size")
LITERAL, DYNAMIC = "literal", "dynamic"


def _owner(ctx: Context, node: fx.Node) -> str | None:
    """The qualified name of the module whose forward created `node` (from fx's module stack)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    key, value = list(stack.items())[-1]
    path = value[0] if isinstance(value, tuple) else key
    return path if path in ctx.modules else None


def _size_attribute(ctx: Context, node: fx.Node, value: int, names: Sequence[str]) -> tuple[str, str] | None:
    owner = _owner(ctx, node)
    if owner is None:
        return None
    module = ctx.modules[owner]
    found = [n for n in names if type(getattr(module, n, None)) is int and getattr(module, n) == value]
    return (owner, found[0]) if len(found) == 1 else None


def _size_kinds(ctx: Context, node: fx.Node, sizes: Sequence[Any], out_dims: Sequence[int]) -> dict[int, Any]:
    """For each output dim: LITERAL (an int in the code), DYNAMIC (computed at run time), or the
    (module, attribute) an int literal was read from, which pruning may rewrite."""
    flat = list(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], list | tuple) else list(sizes)
    if node.target in ("flatten",) or node.target is torch.flatten or not flat:
        return dict.fromkeys(out_dims, DYNAMIC)  # flatten / squeeze compute the sizes from the input
    out: dict[int, Any] = {}
    for d in out_dims:
        value = flat[d] if d < len(flat) else None
        if not isinstance(value, int) or value == -1:
            out[d] = DYNAMIC
        else:
            out[d] = _size_attribute(ctx, node, value, (*COUNT_ATTRIBUTES, *WIDTH_ATTRIBUTES)) or LITERAL
    return out


def _blocks(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Match input and output dims of a reshape into blocks of equal products (None if impossible).

    A size-1 dim on one side only is a block of its own (an added or removed unit dim).
    """
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    n_in, n_out = len(in_shape), len(out_shape)
    while i < n_in or j < n_out:
        unit_in, unit_out = i < n_in and in_shape[i] == 1, j < n_out and out_shape[j] == 1
        if unit_in and not unit_out:
            blocks.append(([i], []))
            i += 1
            continue
        if unit_out and not unit_in:
            blocks.append(([], [j]))
            j += 1
            continue
        if i >= n_in or j >= n_out:
            return None
        a, b, pa, pb = [i], [j], in_shape[i], out_shape[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < n_in:
                pa, i = pa * in_shape[i], i + 1
                a.append(i - 1)
            elif pb < pa and j < n_out:
                pb, j = pb * out_shape[j], j + 1
                b.append(j - 1)
            else:
                return None
        blocks.append((a, b))
    return blocks


# -- module rules --------------------------------------------------------------------------------------
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@register_module_rule(*_CONV, *_CONV_T)
def conv_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked:
    assert isinstance(module, _CONV + _CONV_T)
    name = str(node.target)
    transposed = isinstance(module, _CONV_T)
    in_dim, out_dim = (0, 1) if transposed else (1, 0)  # weight dims of input / output channels
    groups = module.groups
    cin, cout = module.in_channels, module.out_channels
    t = ctx.tracked(node.args[0])
    x = t.on(1) if t is not None else None
    if t is not None and x is None:
        ctx.labels.freeze(t.labels)
    bias = [("bias", 0)] if module.bias is not None else []
    if groups == 1:
        if x is not None:
            ctx.site(name, "weight", in_dim, x, "consumer")
        return Tracked((1,), ctx.fresh_channels(name, [("weight", out_dim), *bias], cout))
    if groups == cin and not transposed:
        # depthwise: output channel c·k + m reads only input channel c; it carries c's label
        mult = cout // cin
        source = x if x is not None else ctx.labels.fresh((cin,), PASSIVE)
        out = np.repeat(source, mult)
        ctx.site(name, "weight", 0, out, "passive")
        for tensor, dim in bias:
            ctx.site(name, tensor, dim, out, "passive")
        return Tracked((1,), out)
    # grouped: every group must keep the same channel offsets, so offsets are tied across groups
    if x is not None:
        per_group = x.reshape(groups, cin // groups)
        for g in range(1, groups):
            ctx.labels.union(per_group[0], per_group[g])
        ctx.site(name, "weight", in_dim, per_group[0], "consumer")
    out = ctx.labels.fresh((groups, cout // groups), PRODUCER)
    for g in range(1, groups):
        ctx.labels.union(out[0], out[g])
    weight_out = out.reshape(-1) if not transposed else out[0]
    ctx.site(name, "weight", out_dim, weight_out, "producer")
    for tensor, dim in bias:
        ctx.site(name, tensor, dim, out.reshape(-1), "producer")
    return Tracked((1,), out.reshape(-1))


@register_module_rule(nn.Linear)
def linear_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked:
    assert isinstance(module, nn.Linear)
    name = str(node.target)
    t, shape = ctx.tracked(node.args[0]), ctx.shape(node.args[0])
    assert shape is not None
    last = len(shape) - 1
    other: Tracked | None = None
    if t is not None:
        if t.dims == (last,):
            ctx.site(name, "weight", 1, t.labels, "consumer")
        elif last in t.dims:
            ctx.labels.freeze(t.labels)
        else:
            other = t  # channels on another dim (e.g. tokens) pass through
    bias = [("bias", 0)] if module.bias is not None else []
    out = ctx.fresh_channels(name, [("weight", 0), *bias], module.out_features)
    if other is not None:
        ctx.labels.freeze(other.labels)  # two tracked dims on one tensor: keep it simple and safe
    return Tracked((last,), out)


@register_module_rule(
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d
)
def channel_norm_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked | None:
    t = ctx.tracked(node.args[0])
    if t is None:
        return None
    x = t.on(1)
    if x is None:
        ctx.labels.freeze(t.labels)
        return None
    name = str(node.target)
    for tensor in ("weight", "bias", "running_mean", "running_var"):
        if getattr(module, tensor, None) is not None:
            ctx.site(name, tensor, 0, x, "passive")
    return t


@register_module_rule(nn.Embedding)
def embedding_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked:
    """An embedding's vectors are new channels on the last dim (columns of its weight)."""
    assert isinstance(module, nn.Embedding)
    shape = ctx.shape(node)
    assert shape is not None
    labels = ctx.fresh_channels(str(node.target), [("weight", 1)], module.embedding_dim)
    return Tracked((len(shape) - 1,), labels)


@register_module_rule(nn.GroupNorm)
def group_norm_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked | None:
    assert isinstance(module, nn.GroupNorm)
    t = ctx.tracked(node.args[0])
    if t is None:
        return None
    x = t.on(1)
    if x is None:
        ctx.labels.freeze(t.labels)
        return t
    # Statistics are per group: a group can only go whole (its channels are tied), and then the
    # other groups compute exactly what they did. num_groups and num_channels follow.
    groups = x.reshape(module.num_groups, -1)
    for j in range(1, groups.shape[1]):
        ctx.labels.union(groups[:, 0], groups[:, j])
    name = str(node.target)
    for tensor in ("weight", "bias"):
        if getattr(module, tensor, None) is not None:
            ctx.site(name, tensor, 0, x, "passive")
    ctx.attribute_site(name, "num_groups", groups[:, 0])
    ctx.attribute_site(name, "num_channels", x)
    return t


@register_module_rule(nn.LayerNorm)
def layer_norm_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked | None:
    assert isinstance(module, nn.LayerNorm)
    t, shape = ctx.tracked(node.args[0]), ctx.shape(node.args[0])
    if t is None or shape is None:
        return None
    normalized = set(range(len(shape) - len(module.normalized_shape), len(shape)))
    if normalized & set(t.dims):
        ctx.labels.freeze(t.labels)  # mean and variance over the channels depend on every channel
    return t


_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.ZeroPad2d,
)  # fmt: skip


@register_module_rule(*_ELEMENTWISE)
def elementwise_module_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked | None:
    if isinstance(module, nn.PReLU) and module.num_parameters > 1:
        t = ctx.tracked(node.args[0])
        if t is not None and t.on(1) is not None:
            ctx.site(str(node.target), "weight", 0, t.labels, "passive")
    return passthrough(ctx, node)


@register_module_rule(nn.Softmax, nn.LogSoftmax)
def softmax_module_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked | None:
    return _softmax(ctx, node, getattr(module, "dim", None))


@register_module_rule(nn.Flatten)
def flatten_module_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked | None:
    assert isinstance(module, nn.Flatten)
    return _reshape(ctx, node, node.args[0], [])


@register_module_rule(nn.PixelShuffle)
def pixel_shuffle_module_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked | None:
    return _pixel_shuffle(ctx, node)


# -- function and method rules -------------------------------------------------------------------------
_POINTWISE_FUNCS = [
    F.relu, F.relu6, F.gelu, F.silu, F.elu, F.leaky_relu, F.hardswish, F.hardsigmoid, F.mish, F.dropout,
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d, F.interpolate, F.pad, torch.relu, torch.sigmoid, torch.tanh, F.sigmoid,
    torch.exp, torch.abs, torch.neg, operator.neg,
    "relu", "sigmoid", "tanh", "contiguous", "clone", "float", "double", "half", "to", "detach", "exp", "abs",
    "neg", "relu_", "sigmoid_", "clamp", "clamp_min", torch.clamp,
]  # fmt: skip


@register_function_rule(*_POINTWISE_FUNCS)
def pointwise_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    return passthrough(ctx, node)


@register_function_rule(
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
    torch.add, torch.sub, torch.mul, torch.div, "add", "sub", "mul", "div", "add_", "mul_",
)  # fmt: skip
def arithmetic_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    return _broadcast(ctx, node)


@register_function_rule("size", "dim", getattr, operator.floordiv, operator.mod, "numel")
def shape_query_rule(ctx: Context, node: fx.Node) -> None:
    return None


@register_function_rule(torch.cat, torch.concat)
def cat_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    tensors = list(_arg(node, 0, "tensors"))
    shape = ctx.shape(node)
    assert shape is not None
    dim = _norm_dim(int(_arg(node, 1, "dim", 0)), len(shape))
    infos = [ctx.tracked(t) for t in tensors]
    if all(i is None for i in infos):
        return None
    if all(i is None or i.dims == (dim,) for i in infos):
        parts = []
        for t, info in zip(tensors, infos, strict=True):
            tshape = ctx.shape(t)
            assert tshape is not None
            parts.append(info.labels if info is not None else ctx.labels.fresh((tshape[dim],), PASSIVE))
        out = np.concatenate(parts)
        for part, info in zip(parts, infos, strict=True):
            if info is None:  # channels we do not track (e.g. the image) cannot be removed
                ctx.labels.freeze(part)
        return Tracked((dim,), out)
    # concatenation along another dim (e.g. a class token before the patches): channels tie
    return _broadcast_same_shape(ctx, infos)


def _broadcast_same_shape(ctx: Context, infos: Sequence[Tracked | None]) -> Tracked | None:
    present = [i for i in infos if i is not None]
    first = present[0]
    for other in present[1:]:
        if other.dims != first.dims or other.labels.shape != first.labels.shape:
            for i in present:
                ctx.labels.freeze(i.labels)
            return None
        ctx.labels.union(first.labels, other.labels)
    if len(present) != len(infos):
        ctx.labels.freeze(first.labels)  # tied to channels we do not track
    return first


@register_function_rule(torch.chunk, "chunk", torch.split, "split", torch.tensor_split)
def split_rule(ctx: Context, node: fx.Node) -> list[Tracked | None] | None:
    source = node.args[0]
    t = ctx.tracked(source)
    shape = ctx.shape(source)
    if t is None or shape is None:
        return None
    is_chunk = node.target in ("chunk", torch.chunk)
    dim = _norm_dim(int(_arg(node, 2, "dim", 0)), len(shape))
    if t.on(dim) is None:
        return [t] * _pieces(node, shape[dim]) if dim not in t.dims else _opaque(ctx, t)
    size_arg = _arg(node, 1, "chunks" if is_chunk else "split_size_or_sections")
    if is_chunk:
        n = int(size_arg)
        pieces = np.array_split(t.labels, n)
        if len({len(p) for p in pieces}) != 1:
            return _opaque(ctx, t)
        for p in pieces[1:]:
            ctx.labels.union(pieces[0], p)  # chunk splits at equal sizes: every piece keeps the same offsets
        return [Tracked((dim,), p) for p in pieces]
    # split with literal sizes: the sizes cannot follow pruning
    ctx.labels.freeze(t.labels)
    sizes = [size_arg] * (shape[dim] // size_arg) if isinstance(size_arg, int) else list(size_arg)
    bounds = np.cumsum([0, *sizes])
    return [Tracked((dim,), t.labels[a:b]) for a, b in itertools.pairwise(bounds)]


def _pieces(node: fx.Node, length: int) -> int:
    size_arg = node.args[1] if len(node.args) > 1 else None
    if node.target in ("chunk", torch.chunk):
        return int(size_arg)  # type: ignore[arg-type]
    return len(size_arg) if isinstance(size_arg, list | tuple) else math.ceil(length / int(size_arg))  # type: ignore[arg-type]


@register_function_rule(operator.getitem)
def getitem_rule(ctx: Context, node: fx.Node) -> Any:
    source, index = node.args[0], node.args[1]
    value = ctx.values.get(source) if isinstance(source, fx.Node) else None
    if isinstance(value, list):  # the pieces of a split
        return value[index]  # type: ignore[index]
    t = ctx.tracked(source)
    if t is None:
        return None
    shape = ctx.shape(source)
    assert shape is not None
    items = list(index) if isinstance(index, tuple) else [index]
    if any(i is Ellipsis for i in items):
        pos = items.index(Ellipsis)
        items = items[:pos] + [slice(None)] * (len(shape) - len(items) + 1) + items[pos + 1 :]
    gathered = _gather_positions(ctx, node, t, shape, items)
    if gathered is not None:
        return gathered
    if any(isinstance(i, fx.Node | Tensor) or i is None for i in items):
        return _opaque(ctx, t)
    items += [slice(None)] * (len(shape) - len(items))
    labels, dims, out_dim = t.labels, list(t.dims), 0
    new_dims = []
    for d, item in enumerate(items):
        if d in t.dims:
            axis = t.dims.index(d)
            if isinstance(item, int):
                labels = np.take(labels, item, axis=axis)
                dims = [x for x in dims if x != d]
                continue
            if item != slice(None):
                return _opaque(ctx, t)  # a slice of channels: positions are literal
            new_dims.append((axis, out_dim))
        if isinstance(item, int):
            continue
        out_dim += 1
    if not new_dims:
        return None
    order = [axis for axis, _ in new_dims]
    remaining_axes = sorted(order)
    labels = np.transpose(labels, [remaining_axes.index(a) for a in order]) if len(order) > 1 else labels
    return Tracked(tuple(od for _, od in new_dims), labels)


def _gather_positions(
    ctx: Context, node: fx.Node, t: Tracked, shape: tuple[int, ...], items: list[Any]
) -> Tracked | None:
    """`x[..., index, ...]` with one tensor index on a dim that holds no channels (a table of
    positions, e.g. a relative position bias gathered by an index buffer): channels pass through,
    shifted by the rank the index adds."""
    advanced = [d for d, i in enumerate(items) if isinstance(i, fx.Node | Tensor)]
    if len(advanced) != 1 or any(i is None for i in items):
        return None
    (d,) = advanced
    if d in t.dims or any(i != slice(None) for j, i in enumerate(items) if j != d):
        return None
    out_shape = ctx.shape(node)
    if out_shape is None:
        return None
    shift = len(out_shape) - len(shape)
    return Tracked(tuple(x if x < d else x + shift for x in t.dims), t.labels)


@register_function_rule("unbind", torch.unbind)
def unbind_rule(ctx: Context, node: fx.Node) -> list[Any] | None:
    """`x.unbind(d)`: the pieces along d, as `x[i]` would give them (see getitem_rule)."""
    t, shape = ctx.tracked(node.args[0]), ctx.shape(node.args[0])
    if t is None or shape is None:
        return None
    dim = _norm_dim(int(_arg(node, 1, "dim", 0)), len(shape))
    pieces: list[Any] = []
    for i in range(shape[dim]):
        if dim in t.dims:
            axis = t.dims.index(dim)
            dims = tuple(d - (d > dim) for d in t.dims if d != dim)
            pieces.append(Tracked(dims, np.take(t.labels, i, axis=axis)) if dims else None)
        else:
            pieces.append(Tracked(tuple(d - (d > dim) for d in t.dims), t.labels))
    return pieces


@register_function_rule("view", "reshape", torch.reshape)
def view_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    return _reshape(ctx, node, node.args[0], node.args[1:])


@register_function_rule(torch.flatten, "flatten")
def flatten_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    return _reshape(ctx, node, node.args[0], [])


@register_function_rule("unsqueeze", torch.unsqueeze, "squeeze", torch.squeeze, "expand", "expand_as")
def unit_dims_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    t = ctx.tracked(node.args[0])
    if t is None:
        return None
    in_shape, out_shape = ctx.shape(node.args[0]), ctx.shape(node)
    assert in_shape is not None and out_shape is not None
    if node.target in ("expand", "expand_as"):
        return t if len(in_shape) == len(out_shape) else _opaque(ctx, t)
    return _reshape(ctx, node, node.args[0], [])


@register_function_rule("permute", torch.permute)
def permute_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    t = ctx.tracked(node.args[0])
    if t is None:
        return None
    order = node.args[1:] if not isinstance(node.args[1], list | tuple) else node.args[1]
    ndim = len(order)
    order = [_norm_dim(int(o), ndim) for o in order]  # type: ignore[arg-type]
    return Tracked(tuple(order.index(d) for d in t.dims), t.labels)


@register_function_rule("transpose", torch.transpose)
def transpose_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    t = ctx.tracked(node.args[0])
    if t is None:
        return None
    ndim = _ndim(ctx, node)
    a, b = (_norm_dim(int(x), ndim) for x in node.args[1:3])  # type: ignore[arg-type]
    swap = {a: b, b: a}
    return Tracked(tuple(swap.get(d, d) for d in t.dims), t.labels)


def _reduce(ctx: Context, node: fx.Node, summing: bool) -> Tracked | None:
    t = ctx.tracked(node.args[0])
    shape = ctx.shape(node.args[0])
    if t is None or shape is None:
        return None
    dims_arg = _arg(node, 1, "dim")
    keepdim = bool(_arg(node, 2, "keepdim", False))
    ndim = len(shape)
    reduced = (
        set(range(ndim))
        if dims_arg is None
        else {
            _norm_dim(int(d), ndim) for d in (dims_arg if isinstance(dims_arg, list | tuple) else [dims_arg])
        }
    )
    if reduced & set(t.dims):
        if not summing:
            ctx.labels.freeze(t.labels)  # a mean divides by the number of channels
        return None
    if keepdim:
        return t
    return Tracked(tuple(d - sum(r < d for r in reduced) for d in t.dims), t.labels)


@register_function_rule("mean", torch.mean, "amax", "max", torch.amax)
def mean_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    return _reduce(ctx, node, summing=False)


@register_function_rule("sum", torch.sum)
def sum_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    return _reduce(ctx, node, summing=True)


def _softmax(ctx: Context, node: fx.Node, dim: Any) -> Tracked | None:
    t, shape = ctx.tracked(node.args[0]), ctx.shape(node.args[0])
    if t is None or shape is None:
        return None
    if dim is None or _norm_dim(int(dim), len(shape)) in t.dims:
        ctx.labels.freeze(t.labels)
    return t


@register_function_rule(F.softmax, torch.softmax, "softmax", F.log_softmax, "log_softmax")
def softmax_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    return _softmax(ctx, node, _arg(node, 1, "dim"))


def _axis_labels(t: Tracked, dim: int) -> np.ndarray | None:
    """Labels along tensor dim `dim` of `t` (positions tied across its other tracked dims)."""
    if dim not in t.dims:
        return None
    axis = t.dims.index(dim)
    others = tuple(i for i in range(t.labels.ndim) if i != axis)
    return t.labels.transpose((axis, *others)).reshape(t.labels.shape[axis], -1)[:, 0]


def _tie_within(ctx: Context, t: Tracked, keep: Sequence[int]) -> None:
    """Tie `t`'s labels across every tracked dim not in `keep`, so each `keep` position is one unit."""
    axes = [t.dims.index(d) for d in keep]
    rest = [i for i in range(t.labels.ndim) if i not in axes]
    if not rest:
        return
    grid = t.labels.transpose((*axes, *rest)).reshape(*[t.labels.shape[a] for a in axes], -1)
    for i in range(1, grid.shape[-1]):
        ctx.labels.union(grid[..., 0], grid[..., i])


@register_function_rule(operator.matmul, torch.matmul, "matmul", torch.bmm, "bmm")
def matmul_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    """a @ b over (..., n, k) @ (..., k, m): batch dims tie position by position, the contracted
    k tie between a and b (removing a pair of them is zeroing both), n and m carry on."""
    a, b = node.args[0], node.args[1]
    ta, tb = ctx.tracked(a), ctx.tracked(b)
    sa, sb, so = ctx.shape(a), ctx.shape(b), ctx.shape(node)
    if (ta is None and tb is None) or sa is None or sb is None or so is None or len(sa) < 2 or len(sb) < 2:
        for t in (ta, tb):
            if t is not None:
                return _opaque(ctx, t)
        return None
    na, nb, no = len(sa), len(sb), len(so)
    ka, kb = na - 1, nb - 2
    if (ta is not None and ka in ta.dims) != (tb is not None and kb in tb.dims):
        for t in (ta, tb):
            if t is not None:
                ctx.labels.freeze(t.labels)  # contracted channels on one side only: fixed on the other
    elif ta is not None and tb is not None and ka in ta.dims:
        la, lb = _axis_labels(ta, ka), _axis_labels(tb, kb)
        assert la is not None and lb is not None
        ctx.labels.union(la, lb)
    out: dict[int, np.ndarray] = {}
    for t, n in ((ta, na), (tb, nb)):
        if t is None:
            continue
        for d in t.dims:
            if d == (ka if n == na and t is ta else kb):
                continue
            od = d + (no - n)
            if d >= n - 2:
                od = no - 2 if (t is ta and d == n - 2) else no - 1
            labels = _axis_labels(t, d)
            assert labels is not None
            if od in out:
                ctx.labels.union(out[od], labels)
            else:
                out[od] = labels
        _tie_within(ctx, t, [d for d in t.dims if d != (ka if t is ta else kb)] or list(t.dims[:1]))
    if not out:
        return None
    dims = tuple(sorted(out))
    if len(dims) == 1:
        return Tracked(dims, out[dims[0]])
    # Several channel dims in the product (heads × head positions): each position carries its
    # first-dim label, and the other dims' labels are tied to the first one's first label, a
    # conservative coarsening (in attention those labels are already tied within each head).
    first = out[dims[0]]
    shape = [len(out[d]) for d in dims]
    grid = np.broadcast_to(first.reshape(-1, *[1] * (len(dims) - 1)), shape).copy()
    for d in dims[1:]:
        ctx.labels.union(np.full(len(out[d]), first[0]), out[d])
    return Tracked(dims, grid)


@register_module_rule(nn.MultiheadAttention)
def multihead_attention_rule(ctx: Context, node: fx.Node, module: nn.Module) -> list[Any]:
    """`nn.MultiheadAttention`: the inputs' channels are consumed by the q/k/v projections' columns,
    the heads are new channels (one group per head: q, k, v rows and out_proj columns), and the
    output projection makes new channels. Removal turns the module into a
    `PrunedMultiheadAttention`, whose widths may differ (see `secateurs.graph.attention`)."""
    assert isinstance(module, nn.MultiheadAttention)
    name = str(node.target)
    fused = module._qkv_same_embed_dim
    for index, arg_name, own in ((0, "query", "q"), (1, "key", "k"), (2, "value", "v")):
        t, shape = ctx.tracked(_arg(node, index, arg_name)), ctx.shape(_arg(node, index, arg_name))
        if t is None or shape is None:
            continue
        x = t.on(len(shape) - 1)
        if x is None:
            ctx.labels.freeze(t.labels)  # channels on a token or batch dim are mixed by attention
        else:
            ctx.site(name, "in_proj_weight" if fused else f"{own}_proj_weight", 1, x, "consumer")
    heads = ctx.labels.fresh((module.num_heads, module.head_dim), PRODUCER)
    for j in range(1, module.head_dim):
        ctx.labels.union(heads[:, 0], heads[:, j])  # a head goes whole: its scale 1/sqrt(head_dim) stays
    inner = heads.reshape(-1)
    if fused:
        ctx.site(name, "in_proj_weight", 0, np.concatenate([inner] * 3), "producer")
    else:
        for own in ("q", "k", "v"):
            ctx.site(name, f"{own}_proj_weight", 0, inner, "producer")
    if module.in_proj_bias is not None:
        ctx.site(name, "in_proj_bias", 0, np.concatenate([inner] * 3), "producer")
    for tensor in ("bias_k", "bias_v"):
        if getattr(module, tensor) is not None:
            ctx.site(name, tensor, 2, inner, "passive")
    out_proj = f"{name}.out_proj"
    ctx.site(out_proj, "weight", 1, inner, "consumer")
    bias = [("bias", 0)] if module.out_proj.bias is not None else []
    out = ctx.fresh_channels(out_proj, [("weight", 0), *bias], module.out_proj.out_features)
    shape = ctx.shape(_arg(node, 0, "query"))
    assert shape is not None
    return [Tracked((len(shape) - 1,), out), None]


def _pixel_shuffle(ctx: Context, node: fx.Node) -> Tracked | None:
    t = ctx.tracked(node.args[0])
    in_shape, out_shape = ctx.shape(node.args[0]), ctx.shape(node)
    if t is None or in_shape is None or out_shape is None:
        return None
    x = t.on(1)
    if x is None:
        return _opaque(ctx, t)
    block = in_shape[1] // out_shape[1]
    grid = x.reshape(out_shape[1], block)
    for i in range(1, block):
        ctx.labels.union(grid[:, 0], grid[:, i])  # an output channel gathers a block of r² inputs
    return Tracked((1,), grid[:, 0].copy())


@register_function_rule(F.pixel_shuffle, torch.pixel_shuffle)
def pixel_shuffle_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    return _pixel_shuffle(ctx, node)


# -- analysis ------------------------------------------------------------------------------------------
class _RuleLeafTracer(fx.Tracer):
    """fx's tracer, which also keeps a module whose type has a channel rule as one call (a leaf):
    a rule registered for a custom module (or a subclass of a torch one) is then really used."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _module_rule(m) is not None or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """`torch.fx.symbolic_trace`, with a ConfigError that says what to do when it fails."""
    try:
        tracer = _RuleLeafTracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as err:  # fx raises many types (TraceError, TypeError, …)
        raise ConfigError(
            f"cannot trace the model with torch.fx ({type(err).__name__}: {str(err).splitlines()[0]})",
            fix="remove data-dependent Python control flow from forward(), or prune traceable submodules",
        ) from None


def _module_rule(module: nn.Module) -> ModuleRule | None:
    for cls in type(module).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
    return None


def _function_rule(node: fx.Node) -> FunctionRule | None:
    return RULES.get(node.target)


def _unknown(node: fx.Node, kind: str) -> ConfigError:
    target = getattr(node.target, "__name__", node.target)
    return ConfigError(
        f"no channel rule for {kind} {target!r} at graph node {node.name!r}, which receives channels",
        fix="register one with secateurs.graph.core.register_function_rule / register_module_rule "
        "(a function(ctx, node) returning the output's Tracked channels), or exclude this part of the model",
    )


def analyze(
    model: nn.Module, example_input: Tensor | tuple[Tensor, ...], *, exclude: Sequence[str] = ()
) -> ChannelGraph:
    """Trace `model`, follow its channels on `example_input` and return the channel groups.

    `exclude`: module name patterns (shell-style) whose output channels must be kept; a pattern
    that matches no module is an error.
    """
    names = [n for n, _ in model.named_modules() if n]
    for pattern in exclude:
        if not any(fnmatchcase(n, pattern) for n in names):
            raise ConfigError(
                f"exclude pattern {pattern!r} matches no module",
                fix=f"modules are: {', '.join(names[:20])} …",
            )
    was_training = model.training
    model.eval()
    try:
        gm = trace(model)
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        with torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    finally:
        model.train(was_training)
    ctx = Context(gm, model)
    for node in gm.graph.nodes:
        ctx.values[node] = _visit(ctx, node)
    for site in ctx.sites:
        if site.role == "producer" and any(fnmatchcase(site.module, p) for p in exclude):
            ctx.labels.freeze(site.labels)
    return _groups(ctx)


def _visit(ctx: Context, node: fx.Node) -> Any:
    if node.op == "placeholder":
        return None  # model inputs: their channels (e.g. RGB) are never removed
    if node.op == "get_attr":
        return _parameter(ctx, node)
    if node.op == "output":
        for value in node.all_input_nodes:
            t = ctx.tracked(value)
            if t is not None:
                ctx.labels.freeze(t.labels)
        return None
    has_channels = any(
        ctx.tracked(a) is not None or isinstance(ctx.values.get(a), list) for a in node.all_input_nodes
    )
    if any(ctx.values.get(a) is OPAQUE for a in node.all_input_nodes):
        module = ctx.modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, (*_CONV, *_CONV_T, nn.Linear, nn.MultiheadAttention)):
            pass  # unknown input channels are simply not prunable here; its outputs are new
        elif node.target in ("size", "dim", getattr, "numel"):
            return None
        else:
            for a in node.all_input_nodes:
                t = ctx.tracked(a)
                if t is not None:
                    ctx.labels.freeze(t.labels)
            return OPAQUE
    if node.op == "call_module":
        module = ctx.modules[str(node.target)]
        rule = _module_rule(module)
        if rule is None:
            if not has_channels and not any(True for _ in module.parameters(recurse=False)):
                return None
            raise _unknown(node, f"module {type(module).__name__} ({node.target})")
        return rule(ctx, node, module)
    rule = _function_rule(node)
    if rule is None:
        if not has_channels:
            return None
        raise _unknown(node, "function" if node.op == "call_function" else "method")
    return rule(ctx, node)


def _parameter(ctx: Context, node: fx.Node) -> Tracked | Opaque | None:
    """A parameter or buffer used directly in forward (a layer scale, a position embedding, a token)."""
    shape = ctx.shape(node)
    if not shape:
        return None
    path = str(node.target)
    module_name, _, tensor = path.rpartition(".")
    dims = [d for d, n in enumerate(shape) if n > 1]
    if not dims:
        return None  # a scalar-like tensor: broadcast, it constrains no channel
    if len(dims) > 1:
        owner = ctx.modules.get(module_name)
        counts = {getattr(owner, a) for a in COUNT_ATTRIBUTES if type(getattr(owner, a, None)) is int}
        along = [d for d in dims if shape[d] in counts]
        if len(along) != 1:
            return OPAQUE  # e.g. a table of unknown layout: channels it meets are kept, never guessed
        dims = along  # a table per head (Swin's relative position bias): its other dims are positions
    labels = ctx.labels.fresh((shape[dims[0]],), PASSIVE)
    ctx.site(module_name, tensor, dims[0], labels, "passive")
    return Tracked((dims[0],), labels)


def _groups(ctx: Context) -> ChannelGraph:
    labels = ctx.labels
    n = len(labels.parent)
    root_of = labels.roots(np.arange(n))
    frozen_roots = set(root_of[np.fromiter(labels.frozen, np.int64, len(labels.frozen))].tolist())
    prunable = np.zeros(n, dtype=bool)
    prunable[root_of[np.asarray(labels.kind, dtype=bool)]] = True  # classes holding a producer's channels
    prunable[np.fromiter(frozen_roots, np.int64, len(frozen_roots))] = False
    groups: dict[int, ChannelGroup] = {}
    if ctx.sites:
        # every (site, position) of a prunable class, sorted by class, then site, then position:
        # one vectorised sort instead of one per site; each run of equal (class, site) is one entry
        lengths = [len(site.labels) for site in ctx.sites]
        site_of = np.repeat(np.arange(len(ctx.sites)), lengths)
        position = np.concatenate([np.arange(n) for n in lengths])
        roots = root_of[np.concatenate([site.labels for site in ctx.sites])]
        keep = prunable[roots]
        site_of, position, roots = site_of[keep], position[keep], roots[keep]
        order = np.lexsort((position, site_of, roots))
        site_of, position, roots = site_of[order], position[order], roots[order]
        change = np.ones(len(roots), dtype=bool)
        change[1:] = (roots[1:] != roots[:-1]) | (site_of[1:] != site_of[:-1])
        starts = np.flatnonzero(change)
        for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(roots)], strict=True):
            root = int(roots[a])
            group = groups.get(root)
            if group is None:
                group = groups[root] = ChannelGroup(root)
            group.sites.append((ctx.sites[int(site_of[a])], position[a:b]))
    ordered = sorted(groups.values(), key=lambda g: g.id)
    return ChannelGraph(ctx.model, ordered, ctx.sites, labels, frozen_roots, ctx.attributes)
