"""Channel rules of modules: how a layer creates, passes or ties the channels of its input and output.

One rule per module type (`register_module_rule`); a rule for a custom module type makes it a leaf
of the trace, so its own forward is not traced into.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import fx, nn

from secateurs.graph.core import (
    CONV_TRANSPOSED,
    CONVS,
    PASSIVE,
    PRODUCER,
    Context,
    Tracked,
    arg,
    passthrough,
    register_module_rule,
    reshape,
)
from secateurs.graph.tensor_rules import pixel_shuffle_channels, softmax_over


@register_module_rule(*CONVS, *CONV_TRANSPOSED)
def conv_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked:
    assert isinstance(module, CONVS + CONV_TRANSPOSED)
    name = str(node.target)
    transposed = isinstance(module, CONV_TRANSPOSED)
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


def _channel_labels(ctx: Context, node: fx.Node) -> tuple[Tracked | None, np.ndarray | None]:
    """A norm's input tracking and its labels along the channel dim (1); a tracked input whose
    channels are not (only) there is frozen, and its labels are None."""
    t = ctx.tracked(node.args[0])
    if t is None:
        return None, None
    x = t.on(1)
    if x is None:
        ctx.labels.freeze(t.labels)
    return t, x


@register_module_rule(
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d
)
def channel_norm_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked | None:
    t, x = _channel_labels(ctx, node)
    if t is None or x is None:
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
    t, x = _channel_labels(ctx, node)
    if t is None or x is None:
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
    if not normalized & set(t.dims):
        return t
    last = t.on(len(shape) - 1)
    if (
        ctx.through_norms
        and last is not None
        and module.elementwise_affine
        and normalized == {len(shape) - 1}
    ):
        # opted in: slice its weight and bias like a BatchNorm's; the statistics of the channels
        # kept change, so the output deviates (measured by secateurs.structured.prune_channels)
        name = str(node.target)
        for tensor in ("weight", "bias"):
            if getattr(module, tensor, None) is not None:
                ctx.site(name, tensor, 0, last, "passive")
        ctx.approximate.append(name)
        return t
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
    return softmax_over(ctx, node, getattr(module, "dim", None))


@register_module_rule(nn.Flatten)
def flatten_module_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked | None:
    assert isinstance(module, nn.Flatten)
    return reshape(ctx, node, node.args[0], [])


@register_module_rule(nn.PixelShuffle)
def pixel_shuffle_module_rule(ctx: Context, node: fx.Node, module: nn.Module) -> Tracked | None:
    return pixel_shuffle_channels(ctx, node)


# -- function and method rules -------------------------------------------------------------------------
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
        t, shape = ctx.tracked(arg(node, index, arg_name)), ctx.shape(arg(node, index, arg_name))
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
    shape = ctx.shape(arg(node, 0, "query"))
    assert shape is not None
    return [Tracked((len(shape) - 1,), out), None]
