"""Channel rules of tensor functions and methods: how an op moves, ties or freezes channels.

One rule per function (`torch.cat`, `operator.add` …) or tensor method name ("view", "permute" …),
registered with `register_function_rule`.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx

from secateurs.graph.core import (
    PASSIVE,
    Context,
    Tracked,
    arg,
    broadcast,
    ndim_of,
    norm_dim,
    opaque,
    passthrough,
    register_function_rule,
    reshape,
)

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
    return broadcast(ctx, node)


@register_function_rule("size", "dim", getattr, operator.floordiv, operator.mod, "numel")
def shape_query_rule(ctx: Context, node: fx.Node) -> None:
    return None


@register_function_rule(torch.cat, torch.concat)
def cat_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    tensors = list(arg(node, 0, "tensors"))
    shape = ctx.shape(node)
    assert shape is not None
    dim = norm_dim(int(arg(node, 1, "dim", 0)), len(shape))
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
    dim = norm_dim(int(arg(node, 2, "dim", 0)), len(shape))
    if t.on(dim) is None:
        return [t] * _pieces(node, shape[dim]) if dim not in t.dims else opaque(ctx, t)
    size_arg = arg(node, 1, "chunks" if is_chunk else "split_size_or_sections")
    if is_chunk:
        n = int(size_arg)
        pieces = np.array_split(t.labels, n)
        if len({len(p) for p in pieces}) != 1:
            return opaque(ctx, t)
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
        return opaque(ctx, t)
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
                return opaque(ctx, t)  # a slice of channels: positions are literal
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
    dim = norm_dim(int(arg(node, 1, "dim", 0)), len(shape))
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
    return reshape(ctx, node, node.args[0], node.args[1:])


@register_function_rule(torch.flatten, "flatten")
def flatten_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    return reshape(ctx, node, node.args[0], [])


@register_function_rule("unsqueeze", torch.unsqueeze, "squeeze", torch.squeeze, "expand", "expand_as")
def unit_dims_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    t = ctx.tracked(node.args[0])
    if t is None:
        return None
    in_shape, out_shape = ctx.shape(node.args[0]), ctx.shape(node)
    assert in_shape is not None and out_shape is not None
    if node.target in ("expand", "expand_as"):
        return t if len(in_shape) == len(out_shape) else opaque(ctx, t)
    return reshape(ctx, node, node.args[0], [])


@register_function_rule("permute", torch.permute)
def permute_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    t = ctx.tracked(node.args[0])
    if t is None:
        return None
    order = node.args[1:] if not isinstance(node.args[1], list | tuple) else node.args[1]
    ndim = len(order)
    order = [norm_dim(int(o), ndim) for o in order]  # type: ignore[arg-type]
    return Tracked(tuple(order.index(d) for d in t.dims), t.labels)


@register_function_rule("transpose", torch.transpose)
def transpose_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    t = ctx.tracked(node.args[0])
    if t is None:
        return None
    ndim = ndim_of(ctx, node)
    a, b = (norm_dim(int(x), ndim) for x in node.args[1:3])  # type: ignore[arg-type]
    swap = {a: b, b: a}
    return Tracked(tuple(swap.get(d, d) for d in t.dims), t.labels)


def _reduce(ctx: Context, node: fx.Node, summing: bool) -> Tracked | None:
    t = ctx.tracked(node.args[0])
    shape = ctx.shape(node.args[0])
    if t is None or shape is None:
        return None
    dims_arg = arg(node, 1, "dim")
    keepdim = bool(arg(node, 2, "keepdim", False))
    ndim = len(shape)
    reduced = (
        set(range(ndim))
        if dims_arg is None
        else {
            norm_dim(int(d), ndim) for d in (dims_arg if isinstance(dims_arg, list | tuple) else [dims_arg])
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


def softmax_over(ctx: Context, node: fx.Node, dim: Any) -> Tracked | None:
    t, shape = ctx.tracked(node.args[0]), ctx.shape(node.args[0])
    if t is None or shape is None:
        return None
    if dim is None or norm_dim(int(dim), len(shape)) in t.dims:
        ctx.labels.freeze(t.labels)
    return t


@register_function_rule(F.softmax, torch.softmax, "softmax", F.log_softmax, "log_softmax")
def softmax_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    return softmax_over(ctx, node, arg(node, 1, "dim"))


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
                return opaque(ctx, t)
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
    return _product(ctx, out)


def _product(ctx: Context, out: dict[int, np.ndarray]) -> Tracked | None:
    """The channels of a product's output from the labels of each of its channel dims.

    Several channel dims (heads × head positions): each position carries its first-dim label, and
    the other dims' labels are tied to the first one's first label, a conservative coarsening (in
    attention those labels are already tied within each head).
    """
    if not out:
        return None
    dims = tuple(sorted(out))
    if len(dims) == 1:
        return Tracked(dims, out[dims[0]])
    first = out[dims[0]]
    shape = [len(out[d]) for d in dims]
    grid = np.broadcast_to(first.reshape(-1, *[1] * (len(dims) - 1)), shape).copy()
    for d in dims[1:]:
        ctx.labels.union(np.full(len(out[d]), first[0]), out[d])
    return Tracked(dims, grid)


def pixel_shuffle_channels(ctx: Context, node: fx.Node) -> Tracked | None:
    t = ctx.tracked(node.args[0])
    in_shape, out_shape = ctx.shape(node.args[0]), ctx.shape(node)
    if t is None or in_shape is None or out_shape is None:
        return None
    x = t.on(1)
    if x is None:
        return opaque(ctx, t)
    block = in_shape[1] // out_shape[1]
    grid = x.reshape(out_shape[1], block)
    for i in range(1, block):
        ctx.labels.union(grid[:, 0], grid[:, i])  # an output channel gathers a block of r² inputs
    return Tracked((1,), grid[:, 0].copy())


@register_function_rule(F.pixel_shuffle, torch.pixel_shuffle)
def pixel_shuffle_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    return pixel_shuffle_channels(ctx, node)


def _einsum_subscripts(equation: str, ranks: Sequence[int]) -> tuple[list[str], str] | None:
    """Each operand's subscripts and the output's, with `...` spelled out as digits (right-aligned
    across operands, as einsum broadcasts them); None for what it cannot read."""
    equation = equation.replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    operands = inputs.split(",")
    if len(operands) != len(ranks):
        return None
    widest = max(
        (r - len(s.replace("...", "")) for s, r in zip(operands, ranks, strict=True) if "..." in s), default=0
    )
    batch = "".join(chr(ord("0") + i) for i in range(widest))  # digits: never an einsum letter
    spelled = []
    for s, r in zip(operands, ranks, strict=True):
        if "..." in s:
            n = r - len(s.replace("...", ""))
            s = s.replace("...", batch[len(batch) - n :] if n else "")
        if len(s) != r:
            return None
        spelled.append(s)
    if arrow:
        output = output.replace("...", batch)
    else:  # implicit: the ellipsis dims, then every letter used once, in alphabetical order
        counts = {c: "".join(spelled).count(c) for c in "".join(spelled)}
        output = batch + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in batch))
    return spelled, output


def _weight_sites(
    ctx: Context,
    node: fx.Node,
    subscripts: str,
    shape: tuple[int, ...],
    others: str,
    output: str,
    by_letter: dict[str, list[np.ndarray]],
) -> None:
    """Sites of a parameter in an einsum, as a layer's weight has them: a letter only it and the
    output share is new output channels (producer), a letter it shares with another operand is
    sliced with that operand's channels (consumer if contracted, else passive)."""
    module, _, tensor = str(node.target).rpartition(".")
    for dim, letter in enumerate(subscripts):
        if shape[dim] == 1 or (letter not in others and letter not in output):
            continue  # broadcast, or summed within the weight alone: not a channel
        if letter in others:
            labels = ctx.labels.fresh((shape[dim],), PASSIVE)
            ctx.site(module, tensor, dim, labels, "passive" if letter in output else "consumer")
        else:
            labels = ctx.fresh_channels(module, [(tensor, dim)], shape[dim])
        by_letter.setdefault(letter, []).append(labels)


@register_function_rule(torch.einsum, torch.functional.einsum)
def einsum_rule(ctx: Context, node: fx.Node) -> Tracked | None:
    """torch.einsum from its subscripts: a letter kept in the output ties the channels of every
    operand on it position by position (like broadcasting), a contracted letter ties the operands
    that carry it (like matmul's inner dim); channels meeting untracked data of the same size, a
    letter repeated within one operand, or a contraction of one operand alone are kept whole."""
    equation = node.args[0]
    operands = (
        list(node.args[1])
        if len(node.args) == 2 and isinstance(node.args[1], list | tuple)
        else list(node.args[1:])
    )
    weights = [isinstance(o, fx.Node) and o.op == "get_attr" for o in operands]
    tracked = [
        ctx.tracked(o) if isinstance(o, fx.Node) and not w else None
        for o, w in zip(operands, weights, strict=True)
    ]
    shapes = [ctx.shape(o) if isinstance(o, fx.Node) else None for o in operands]
    if all(t is None for t in tracked):
        return None
    parsed = None
    if isinstance(equation, str) and all(s is not None for s in shapes):
        parsed = _einsum_subscripts(equation, [len(s) for s in shapes])  # type: ignore[arg-type]
    if parsed is None or any(len(set(s)) != len(s) for s in parsed[0]):
        for t in tracked:
            if t is not None:
                ctx.labels.freeze(t.labels)
        return None
    subscripts, output = parsed
    by_letter: dict[str, list[np.ndarray]] = {}
    untracked: set[str] = set()
    for k, (operand, s, shape) in enumerate(zip(operands, subscripts, shapes, strict=True)):
        if weights[k]:  # a parameter used directly: its subscripts say which dims are channels
            others = "".join(sub for j, sub in enumerate(subscripts) if j != k)
            _weight_sites(ctx, operand, s, shape, others, output, by_letter)  # type: ignore[arg-type]
    for t, s, shape, weight in zip(tracked, subscripts, shapes, weights, strict=True):
        assert shape is not None
        if weight:
            continue
        for dim, letter in enumerate(s):
            labels = _axis_labels(t, dim) if t is not None else None
            if labels is not None:
                by_letter.setdefault(letter, []).append(labels)
            elif shape[dim] > 1:
                untracked.add(letter)
        if t is not None:
            _tie_within(ctx, t, [d for d in t.dims if s[d] in output] or list(t.dims[:1]))
    out: dict[int, np.ndarray] = {}
    for letter, labels in by_letter.items():
        if letter in untracked or (letter not in output and len(labels) < 2):
            for lab in labels:
                ctx.labels.freeze(lab)  # fixed data on the other side, or summed away within one operand
            continue
        for lab in labels[1:]:
            ctx.labels.union(labels[0], lab)
        if letter in output:
            out[output.index(letter)] = labels[0]
    return _product(ctx, out)


einsum_rule.reads_parameters = True  # type: ignore[attr-defined]  (its weights are not opaque tables)
