"""Analysing a model: trace it, run every op's channel rule, and collect the channel groups.

`analyze(model, example_input)` is the entry point; the rules live in `module_rules` and
`tensor_rules` (imported here, so they are registered), the data structures in `core`.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from secateurs.core.errors import ConfigError
from secateurs.graph import module_rules, tensor_rules  # noqa: F401  (registration)
from secateurs.graph.core import (
    CONV_TRANSPOSED,
    CONVS,
    COUNT_ATTRIBUTES,
    OPAQUE,
    PASSIVE,
    RULES,
    ChannelGraph,
    ChannelGroup,
    Context,
    FunctionRule,
    Opaque,
    Tracked,
    module_rule,
)


class _RuleLeafTracer(fx.Tracer):
    """fx's tracer, which also keeps a module whose type has a channel rule as one call (a leaf):
    a rule registered for a custom module (or a subclass of a torch one) is then really used."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_rule(m) is not None or super().is_leaf_module(m, module_qualified_name)


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


def _function_rule(node: fx.Node) -> FunctionRule | None:
    return RULES.get(node.target)


def _owner(node: fx.Node) -> str | None:
    """The qualified name of the module whose forward made `node` ("" for the model's own)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    return str(next(reversed(stack.values()))[0]) if isinstance(stack, dict) else None


def _unknown(node: fx.Node, kind: str, why: str = "") -> ConfigError:
    target = getattr(node.target, "__name__", node.target)
    where = getattr(node.target, "__module__", None) if callable(node.target) else None
    owner = _owner(node)
    named = f"{kind} {target!r}" + (f" (from {where})" if where and kind == "function" else "")
    inside = f" in module {owner!r}" if owner else ""
    exclude = f"exclude={[owner]!r}" if owner else "exclude=[the module's name]"
    return ConfigError(
        f"no channel rule for {named} at graph node {node.name!r}{inside}, which receives channels{why}",
        fix="register one with secateurs.graph.core.register_function_rule / register_module_rule "
        f"(a function(ctx, node) returning the output's Tracked channels), or keep that part whole: "
        f"{exclude}",
    )


def _excluded(node: fx.Node, exclude: Sequence[str]) -> bool:
    """Whether `node` runs inside a module the caller excluded (its channels are kept whole)."""
    owner = _owner(node)
    if not owner or not exclude:
        return False
    parts = owner.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatchcase(p, pattern) for p in prefixes for pattern in exclude)


def _keep_whole(ctx: Context, node: fx.Node) -> Opaque:
    """An op the engine cannot follow inside an excluded module: its inputs' channels are kept."""
    for a in node.all_input_nodes:
        t = ctx.tracked(a)
        if t is not None:
            ctx.labels.freeze(t.labels)
    return OPAQUE


def _calling(call: Any, arity: int) -> nn.Module:
    """A module whose forward takes `arity` tensors and passes them to `call` as a list (fx makes
    one placeholder per named parameter; `*args` would be a single one)."""
    names = ", ".join(f"t{i}" for i in range(arity))
    namespace: dict[str, Any] = {"_call": call}
    exec(f"def forward(self, {names}):\n    return _call([{names}])\n", namespace)
    return type("Call", (nn.Module,), {"forward": namespace["forward"]})()


def _inline(ctx: Context, node: fx.Node, exclude: Sequence[str]) -> Any:
    """A function without a rule that fx kept as one call (`torch.fx.wrap`, a leaf of a model zoo):
    trace into it on the node's own arguments and follow the channels through its graph."""
    fn = node.target
    if not callable(fn) or getattr(fn, "__module__", "").startswith(("torch", "builtins", "_operator")):
        raise _unknown(node, "function")
    positions = [i for i, a in enumerate(node.args) if isinstance(a, fx.Node)]
    keywords = [k for k, v in node.kwargs.items() if isinstance(v, fx.Node)]
    tensor_args = [node.args[i] for i in positions] + [node.kwargs[k] for k in keywords]
    shapes = [ctx.shape(a) for a in tensor_args]
    if any(s is None for s in shapes):
        raise _unknown(node, "function", " (its arguments are not all tensors of known shape)")

    def call(tensors: list[Tensor]) -> Any:
        args = list(node.args)
        for i, t in zip(positions, tensors, strict=False):
            args[i] = t
        kwargs = dict(node.kwargs) | dict(zip(keywords, tensors[len(positions) :], strict=True))
        return fn(*args, **kwargs)

    try:
        inner = fx.symbolic_trace(_calling(call, len(tensor_args)))
        metas = [a.meta["tensor_meta"] for a in tensor_args]
        with torch.no_grad():
            ShapeProp(inner).propagate(*(torch.zeros(m.shape, dtype=m.dtype) for m in metas))
    except Exception as err:  # fx raises many types; the function cannot be followed
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _unknown(node, "function", f", and tracing into it failed ({first})") from None
    placeholders = [n for n in inner.graph.nodes if n.op == "placeholder"]
    for placeholder, outer in zip(placeholders, tensor_args, strict=True):
        ctx.values[placeholder] = ctx.values.get(outer)
    result: Any = None
    for inner_node in inner.graph.nodes:
        if inner_node.op == "placeholder":
            continue
        if inner_node.op == "output":
            out = inner_node.args[0]
            if isinstance(out, fx.Node):
                result = ctx.values.get(out)
            elif isinstance(out, tuple | list):
                result = [ctx.values.get(o) if isinstance(o, fx.Node) else None for o in out]
            break
        inner_node.meta.setdefault("nn_module_stack", node.meta.get("nn_module_stack"))
        ctx.values[inner_node] = _visit(ctx, inner_node, exclude)
    return result


def analyze(
    model: nn.Module,
    example_input: Tensor | tuple[Tensor, ...],
    *,
    exclude: Sequence[str] = (),
    through_norms: bool = False,
) -> ChannelGraph:
    """Trace `model`, follow its channels on `example_input` and return the channel groups.

    `exclude`: module name patterns (shell-style) whose parts are kept whole: their output
    channels stay, and ops inside them the engine cannot follow keep their channels instead of
    failing; a pattern that matches no module is an error. `through_norms`: channels a LayerNorm
    normalises together become prunable (its weight and bias are sliced); the kept channels'
    statistics then change, so removal is no longer exact (`ChannelGraph.approximate` names them).
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
    ctx = Context(gm, model, through_norms=through_norms)
    for node in gm.graph.nodes:
        ctx.values[node] = _visit(ctx, node, exclude)
    for site in ctx.sites:
        if site.role == "producer" and any(fnmatchcase(site.module, p) for p in exclude):
            ctx.labels.freeze(site.labels)
    tied = ctx.freeze_partial_uses()
    graph = _groups(ctx)
    graph.kept_shared = tied
    return graph


def _visit(ctx: Context, node: fx.Node, exclude: Sequence[str] = ()) -> Any:
    ctx.node = node
    if node.op == "placeholder":
        return None  # model inputs: their channels (e.g. RGB) are never removed
    if node.op == "get_attr":  # the ops reading it record its sites, as uses of their own
        return _parameter(ctx, node)
    if node.op == "call_module":  # it reads all its tensors, whichever channels its rule follows
        prefix = f"{node.target}."
        module = ctx.modules[str(node.target)]
        for name, _ in chain(module.named_parameters(), module.named_buffers()):
            ctx.use(prefix + name)
    if node.op == "output":
        for value in node.all_input_nodes:
            t = ctx.tracked(value)
            if t is not None:
                ctx.labels.freeze(t.labels)
        return None
    has_channels = any(
        ctx.tracked(a) is not None or isinstance(ctx.values.get(a), list) for a in node.all_input_nodes
    )
    reads_parameters = node.op != "call_module" and getattr(_function_rule(node), "reads_parameters", False)
    if not reads_parameters and any(ctx.values.get(a) is OPAQUE for a in node.all_input_nodes):
        module = ctx.modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, (*CONVS, *CONV_TRANSPOSED, nn.Linear, nn.MultiheadAttention)):
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
        rule = module_rule(module)
        if rule is None:
            if not has_channels and not any(True for _ in module.parameters(recurse=False)):
                return None
            if _excluded(node, exclude):
                return _keep_whole(ctx, node)
            raise _unknown(node, f"module {type(module).__name__} ({node.target})")
        return rule(ctx, node, module)
    rule = _function_rule(node)
    if rule is None:
        if not has_channels:
            return None
        if _excluded(node, exclude):
            return _keep_whole(ctx, node)
        if node.op == "call_function":
            return _inline(ctx, node, exclude)
        raise _unknown(node, "method")
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
    entries = None
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
        entries = (site_of, position, roots)
        change = np.ones(len(roots), dtype=bool)
        change[1:] = (roots[1:] != roots[:-1]) | (site_of[1:] != site_of[:-1])
        starts = np.flatnonzero(change)
        ends = [*starts[1:].tolist(), len(roots)] if len(starts) else []  # no prunable group: none
        for a, b in zip(starts.tolist(), ends, strict=True):
            root = int(roots[a])
            group = groups.get(root)
            if group is None:
                group = groups[root] = ChannelGroup(root)
            group.sites.append((ctx.sites[int(site_of[a])], position[a:b]))
    ordered = sorted(groups.values(), key=lambda g: g.id)
    return ChannelGraph(
        ctx.model,
        ordered,
        ctx.sites,
        labels,
        frozen_roots,
        ctx.attributes,
        entries,
        approximate=ctx.approximate,
    )
