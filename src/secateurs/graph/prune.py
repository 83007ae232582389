"""Choose channel groups to remove: a criterion scores each group, an allocation picks the lowest.

Criteria (all computed on the model as given, before anything is removed):
- `l1`, `l2`: norm of the group's filters, over every layer producing those channels (Li et al. 2017);
- `bn_scale`: |γ| of the BatchNorms the group passes through (network slimming, Liu et al. 2017);
- `taylor`: (Σ g·θ)² over the group's filters on a batch, first-order loss change (Molchanov et al. 2019);
- `fpgm`: distance of each filter to the others of its layer; filters near the geometric median are
  the replaceable ones (He et al. 2019);
- `random`: seeded uniform scores.
Allocations: `uniform` removes the same fraction of every layer's groups; `global` ranks all groups
by score divided by the mean score of their layer (raw norms are not comparable across layers),
with at most `max_per_layer` of any layer removed. A "layer" is the module that first produces a
group's channels (for residual channels shared by many convs: the first of them). Every layer
keeps at least one channel.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.core.registry import Registry
from secateurs.graph.core import ChannelGraph, ChannelGroup, analyze
from secateurs.graph.removal import remove_channels
from secateurs.methods.allocations import check_sparsity, round_half_up

Batch = tuple[Tensor, Tensor]
ChannelCriterion = Callable[[nn.Module, ChannelGraph, Batch | None, int], dict[int, float]]
CHANNEL_CRITERIA: Registry[ChannelCriterion] = Registry("channel criterion")


def _per_group(
    model: nn.Module,
    graph: ChannelGraph,
    statistic: Callable[[Tensor], Tensor],
    tensors: tuple[str, ...] = ("weight",),
) -> dict[int, float]:
    """Σ over the group's producer positions of a per-position `statistic` of the producing tensors.

    The statistic is computed once per producing tensor, on its positions laid out as rows.
    """
    modules = dict(model.named_modules())
    cache: dict[tuple[str, str, int], np.ndarray] = {}
    scores = dict.fromkeys((g.id for g in graph.groups), 0.0)
    for g in graph.groups:
        for site, index in g.producers():
            if site.tensor not in tensors:
                continue
            key = (site.module, site.tensor, site.dim)
            if key not in cache:
                rows = getattr(modules[site.module], site.tensor).detach().movedim(site.dim, 0)
                cache[key] = statistic(rows.reshape(rows.shape[0], -1).double()).numpy()
            scores[g.id] += float(cache[key][index].sum())
    return scores


@CHANNEL_CRITERIA.register("l1", "L1 norm of the group's filters (Li et al. 2017)")
def l1_scores(model: nn.Module, graph: ChannelGraph, data: Batch | None, seed: int) -> dict[int, float]:
    return _per_group(model, graph, lambda rows: rows.abs().sum(1))


@CHANNEL_CRITERIA.register("l2", "L2 norm of the group's filters")
def l2_scores(model: nn.Module, graph: ChannelGraph, data: Batch | None, seed: int) -> dict[int, float]:
    squares = _per_group(model, graph, lambda rows: rows.pow(2).sum(1))
    return {gid: math.sqrt(v) for gid, v in squares.items()}


@CHANNEL_CRITERIA.register("bn_scale", "|γ| of the group's BatchNorms (network slimming)")
def bn_scores(model: nn.Module, graph: ChannelGraph, data: Batch | None, seed: int) -> dict[int, float]:
    modules = dict(model.named_modules())
    scores = {}
    for g in graph.groups:
        gammas = [
            modules[s.module].weight.detach()[torch.as_tensor(i)].abs().sum()
            for s, i in g.sites
            if s.tensor == "weight" and isinstance(modules[s.module], nn.modules.batchnorm._BatchNorm)
        ]
        if not gammas:
            (site, _), *_ = g.producers()
            raise ConfigError(
                f"criterion bn_scale needs a BatchNorm on every pruned channel; {site.module}'s have none",
                fix=f"exclude the layer (exclude=[{site.module!r}]) or use another criterion (l1, taylor …)",
            )
        scores[g.id] = float(sum(gammas))
    return scores


@CHANNEL_CRITERIA.register(
    "taylor", "(Σ g·θ)² over the group's filters and biases on a batch (Molchanov 2019)"
)
def taylor_scores(model: nn.Module, graph: ChannelGraph, data: Batch | None, seed: int) -> dict[int, float]:
    if data is None:
        raise ConfigError("criterion taylor needs a batch of data", fix="pass data=(inputs, targets)")
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    model.zero_grad(set_to_none=True)
    x, y = data
    F.cross_entropy(model(x), y).backward()
    modules = dict(model.named_modules())
    scores = {}
    try:
        for g in graph.groups:
            total = 0.0  # Σ g·θ over every parameter producing the group's channels (weights, biases)
            for site, index in g.producers():
                tensor = getattr(modules[site.module], site.tensor)
                if tensor.grad is not None:
                    product = tensor.detach() * tensor.grad
                    total += float(product.index_select(site.dim, torch.as_tensor(index)).sum())
            scores[g.id] = total**2
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g
    return scores


@CHANNEL_CRITERIA.register("fpgm", "distance to the layer's other filters (geometric median, He et al. 2019)")
def fpgm_scores(model: nn.Module, graph: ChannelGraph, data: Batch | None, seed: int) -> dict[int, float]:
    return _per_group(model, graph, lambda rows: torch.cdist(rows, rows).sum(1))


@CHANNEL_CRITERIA.register("random", "uniform random scores (seeded)")
def random_scores(model: nn.Module, graph: ChannelGraph, data: Batch | None, seed: int) -> dict[int, float]:
    values = torch.rand(len(graph.groups), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return {g.id: float(v) for g, v in zip(graph.groups, values, strict=True)}


def layer_of(group: ChannelGroup) -> str:
    """The module that first produces the group's channels (its "layer" for allocation)."""
    producers = group.producers()
    return producers[0][0].module if producers else ""


def select_groups(
    graph: ChannelGraph,
    scores: dict[int, float],
    amount: float,
    *,
    allocation: str = "uniform",
    max_per_layer: float = 0.9,
) -> list[int]:
    """Ids of the groups to remove: the lowest-scoring `amount` of them, allocated per layer or globally.

    Ties go to the group created first. Every layer keeps at least one group.
    """
    check_sparsity(amount, "amount")
    if not 0 < max_per_layer <= 1:
        raise ConfigError(f"max_per_layer {max_per_layer} is outside (0, 1]", fix="use e.g. 0.9")
    layers: dict[str, list[ChannelGroup]] = defaultdict(list)
    for g in graph.groups:
        layers[layer_of(g)].append(g)

    def ranked(groups: list[ChannelGroup], key: Callable[[ChannelGroup], float]) -> list[ChannelGroup]:
        return sorted(groups, key=lambda g: (key(g), g.id))

    chosen: list[int] = []
    if allocation == "uniform":
        for groups in layers.values():
            n = min(round_half_up(amount * len(groups)), len(groups) - 1)
            chosen += [g.id for g in ranked(groups, lambda g: scores[g.id])[:n]]
        return sorted(chosen)
    if allocation != "global":
        raise ConfigError(f"unknown channel allocation {allocation!r}", fix="use uniform or global")
    mean = {}
    for name, gs in layers.items():
        finite = [scores[g.id] for g in gs if math.isfinite(scores[g.id])]  # -inf: removed already
        mean[name] = sum(finite) / len(finite) if finite else 0.0
    caps = {name: min(math.floor(max_per_layer * len(gs)), len(gs) - 1) for name, gs in layers.items()}

    def normalised(g: ChannelGroup) -> float:
        m, score = mean[layer_of(g)], scores[g.id]
        return score / m if m > 0 and math.isfinite(score) else (score if not math.isfinite(score) else 0.0)

    target = round_half_up(amount * len(graph.groups))
    taken: dict[str, int] = defaultdict(int)
    for g in ranked(list(graph.groups), normalised):
        if len(chosen) == target:
            break
        name = layer_of(g)
        if taken[name] < caps[name]:
            taken[name] += 1
            chosen.append(g.id)
    return sorted(chosen)


def prune_channels(
    model: nn.Module,
    example_input: Tensor,
    amount: float,
    *,
    criterion: str = "l1",
    allocation: str = "uniform",
    max_per_layer: float = 0.9,
    data: Batch | None = None,
    seed: int = 0,
    exclude: Sequence[str] = (),
) -> nn.Module:
    """A smaller copy of `model` with `amount` of its prunable channel groups removed.

    `example_input` (one batch) is only used to trace shapes. `data` is the batch data-dependent
    criteria (taylor) score on. `exclude`: module name patterns whose output channels are kept.
    """
    graph = analyze(model, example_input, exclude=exclude)
    if not graph.groups:
        raise ConfigError("the model has no prunable channels", fix="check the exclude patterns")
    score = CHANNEL_CRITERIA.get(criterion)
    scores = score(model, graph, data, seed)
    chosen = select_groups(graph, scores, amount, allocation=allocation, max_per_layer=max_per_layer)
    return remove_channels(model, graph, chosen)
