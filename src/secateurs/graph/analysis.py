"""Analysing a model: trace it, run every op's channel rule, and collect the channel groups.

`analyze(model, example_input)` is the entry point; the rules live in `module_rules` and
`tensor_rules` (imported here, so they are registered), the data structures in `core`.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
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
        for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(roots)], strict=True):
            root = int(roots[a])
            group = groups.get(root)
            if group is None:
                group = groups[root] = ChannelGroup(root)
            group.sites.append((ctx.sites[int(site_of[a])], position[a:b]))
    ordered = sorted(groups.values(), key=lambda g: g.id)
    return ChannelGraph(ctx.model, ordered, ctx.sites, labels, frozen_roots, ctx.attributes, entries)
