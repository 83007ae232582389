"""Channel dependency graph, its core: which channels of a model must be removed together.

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
frozen too (they are the classes). A tensor that several layers share (tied weights), or that one
layer reads in several calls, is one tensor with one set of sites, under its canonical name: its
channels are tied across the uses, and a dim that one use does not follow (a tied Linear reading
the model's input) is frozen, since the one tensor cannot shrink for some uses only.

Memory is a few integers per channel per tensor; no per-weight structure is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import fx, nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import canonical_names

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


def opaque(ctx: Context, t: Tracked) -> Opaque:
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
    # every group's (site, index) entries as flat arrays (site number in `sites`, index along its
    # dim, group id), sorted by group id, then site, then index: what `groups` lists, for
    # vectorised scoring; None when the graph was built another way
    entries: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    # modules whose removal is not exact (LayerNorms pruned through with through_norms=True)
    approximate: list[str] = field(default_factory=list)
    # shared tensors (tied weights) some of whose channels were kept: a use did not follow them
    kept_shared: list[str] = field(default_factory=list)

    def group_of_root(self) -> dict[int, ChannelGroup]:
        return {g.id: g for g in self.groups}


# -- the tracing context ------------------------------------------------------------------------------
class Context:
    """What rules see: labels, shapes, modules, and where to record sites."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module, *, through_norms: bool = False) -> None:
        self.gm = gm
        self.model = model
        self.through_norms = through_norms  # prune channels LayerNorm normalises together (not exact)
        self.approximate: list[str] = []
        self.modules = dict(model.named_modules())
        self.labels = Labels()
        self.sites: list[Site] = []
        self._site_keys: dict[tuple[str, str, int], Site] = {}
        self.attributes: dict[tuple[str, str], np.ndarray] = {}  # module size attributes and their units
        self.values: dict[fx.Node, Any] = {}
        # a tensor under several names (tied weights) is one tensor: its sites go under its canonical name
        self.canonical = canonical_names(model)
        self.node: fx.Node | None = None  # the node whose rule runs: the use a site belongs to
        self.uses: dict[str, dict[fx.Node | None, set[int]]] = {}  # tensor -> use -> dims it tracks

    def shape(self, node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def tracked(self, value: Any) -> Tracked | None:
        found = self.values.get(value) if isinstance(value, fx.Node) else None
        return found if isinstance(found, Tracked) else None

    def site(self, module: str, tensor: str, dim: int, labels: np.ndarray, role: str) -> None:
        """Record where channels live; a module called twice must see the same channels each time,
        and so must every layer sharing a tensor (it is recorded under its canonical name)."""
        qualified = f"{module}.{tensor}" if module else tensor
        name = self.canonical.get(qualified, qualified)
        if name != qualified:
            module, _, tensor = name.rpartition(".")
        self.uses.setdefault(name, {}).setdefault(self.node, set()).add(dim)
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

    def use(self, tensor: str) -> None:
        """The running node reads `tensor` (by any of its names), whether or not it tracks its channels."""
        name = self.canonical.get(tensor, tensor)
        self.uses.setdefault(name, {}).setdefault(self.node, set())

    def freeze_partial_uses(self) -> list[str]:
        """Freeze a dim of a tensor that several uses read when one of them does not track it.

        Removing channels slices the one tensor for every use: a dim may shrink only if each use
        follows its channels along it (a head tied to its embedding reads its columns as input
        channels; a Linear on the model's input reads them as fixed features). Returns the tensors
        whose channels were kept for that reason.
        """
        kept = []
        for name, uses in self.uses.items():
            if len(uses) < 2:
                continue
            module, _, tensor = name.rpartition(".")
            partial = set.union(*uses.values()) - set.intersection(*uses.values())
            labels = [self._site_keys[(module, tensor, dim)].labels for dim in sorted(partial)]
            if any(not self.labels.frozen.issuperset(a.tolist()) for a in labels):
                kept.append(name)  # not kept for another reason already (e.g. the model's output)
            for a in labels:
                self.labels.freeze(a)
        return kept

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


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def ndim_of(ctx: Context, node: fx.Node) -> int:
    shape = ctx.shape(node)
    if shape is None:
        raise ConfigError(
            f"no shape recorded for node {node.name}", fix="report this model to the developers"
        )
    return len(shape)


def norm_dim(dim: int, ndim: int) -> int:
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


def broadcast(ctx: Context, node: fx.Node) -> Tracked | None:
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


def reshape(ctx: Context, node: fx.Node, source: fx.Node, sizes: Sequence[Any]) -> Tracked | None:
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
        return opaque(ctx, t)
    tracked_dims = set(t.dims)
    for in_dims, out_dims in blocks:
        if not tracked_dims & set(in_dims):
            continue
        if not tracked_dims <= set(in_dims) or not out_dims:
            return opaque(ctx, t)  # channels spread over several blocks: not followed
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


CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def module_rule(module: nn.Module) -> ModuleRule | None:
    """The rule registered for the module's type (or the nearest base class), if any."""
    for cls in type(module).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
    return None
