"""Filter merging: cluster similar filters, pull each cluster to its centre, then merge it into one.

Centripetal SGD (Ding et al. 2019) shrinks a layer to k filters without discarding any. The
layer's filters are clustered into k clusters (seeded k-means++ on the filters scaled to unit
length, so filters alike up to scale group together; k is what the stage's prune step keeps),
and while training each member w_i of a cluster H is pulled toward the cluster's centre
c_H = mean_{j∈H} w_j:

    grad_i ← mean_{j∈H} grad_j + ε·(w_i − c_H),

where ε·(w_i − c_H) is the gradient of the centripetal penalty ε/2·Σ_H Σ_{i∈H} ‖w_i − c_H‖²
and, with `average_gradients` (the paper's rule), the members share their mean gradient so they
move together. It acts on everything that makes the channel or acts on it alone: filters,
biases, BatchNorm shifts, and BatchNorm scales at `norm_scale_factor`·ε (0.1, as in the paper's
code). Once the spread of every cluster falls below `tolerance` (checked every `interval`
steps), or at the stage's end, each cluster is merged into its first member and the merge folded
into the layers reading it (`graph.merge`: their input weights for the cluster's channels are
summed); the merged-away channels are masked like pruned ones, so the rest of the stage (or the
next) finetunes the smaller network and `secateurs.structured.shrink` cuts it. When the members
have met, the merged network computes exactly what the trained one did.

Only the `channel` structure has filters to merge; residual streams, concatenations, BatchNorm
and attention heads are followed by the channel graph, and a layer whose channels do not all
take the same path cannot be clustered (a clear error names it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import masks_of
from secateurs.graph.core import ChannelGraph, ChannelGroup
from secateurs.graph.merge import group_vectors, merge_groups
from secateurs.graph.removal import channel_masks
from secateurs.methods.structures.groups import GraphLayout
from secateurs.methods.training.base import TRAINING, StageServices
from secateurs.methods.training.regularization.base import (
    RegularizationMethod,
    RegularizationSpec,
    RegularizedPruning,
)
from secateurs.train.engine import TrainState

__all__ = ["FilterMerging", "MergeSpec", "kmeans", "set_mean"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


# -- clustering ----------------------------------------------------------------------------------
def _nearest(points: Tensor, centres: Tensor) -> Tensor:
    """Each point's nearest centre (ties to the lower index)."""
    return torch.cdist(points, centres).argmin(dim=1)


def _means(points: Tensor, label: Tensor, k: int) -> Tensor:
    counts = torch.bincount(label, minlength=k).to(points.dtype).clamp_min(1)
    return torch.zeros(k, points.shape[1], dtype=points.dtype).index_add_(0, label, points) / counts[:, None]


def _fill_empty(points: Tensor, centres: Tensor, label: Tensor, k: int) -> Tensor:
    """Give each empty cluster the point farthest from its centre among clusters of two or more."""
    label = label.clone()
    for c in range(k):
        counts = torch.bincount(label, minlength=k)
        if counts[c] > 0:
            continue
        distance = (points - centres[label]).square().sum(1)
        distance[counts[label] < 2] = -1.0
        label[int(distance.argmax())] = c  # the first of equal distances
    return label


def _kmeans_once(points: Tensor, k: int, generator: torch.Generator, iterations: int) -> tuple[Tensor, float]:
    """One k-means++ start, then Lloyd's iterations; every cluster ends non-empty."""
    n = points.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    closest = (points - points[chosen[0]]).square().sum(1)
    for _ in range(1, k):
        total = float(closest.sum())
        if total > 0:
            pick = int(torch.multinomial(closest / total, 1, generator=generator))
        else:  # every point sits on a chosen one: take the first point not chosen
            pick = next(i for i in range(n) if i not in chosen)
        chosen.append(pick)
        closest = torch.minimum(closest, (points - points[pick]).square().sum(1))
    centres = points[chosen].clone()
    label = _fill_empty(points, centres, _nearest(points, centres), k)
    for _ in range(iterations):
        centres = _means(points, label, k)
        new = _fill_empty(points, centres, _nearest(points, centres), k)
        if torch.equal(new, label):
            break
        label = new
    inertia = float((points - _means(points, label, k)[label]).square().sum())
    return label, inertia


def kmeans(
    points: Tensor, k: int, *, seed: int = 0, restarts: int = 3, iterations: int = 100
) -> list[list[int]]:
    """`k` clusters of the rows of `points`, as sorted index lists ordered by their first index.

    k-means++ starts and Lloyd's iterations in float64 on the CPU; of `restarts` starts the one
    of least inertia wins. Deterministic for a seed; every cluster is non-empty.
    """
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"cannot make {k} clusters of {n} filters", fix="keep 1 to n filters per layer")
    if k == n:
        return [[i] for i in range(n)]
    x = points.detach().to(device="cpu", dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    best: tuple[Tensor, float] | None = None
    for _ in range(restarts):
        label, inertia = _kmeans_once(x, k, generator, iterations)
        if best is None or inertia < best[1]:
            best = (label, inertia)
    assert best is not None
    clusters: dict[int, list[int]] = {}
    for i, c in enumerate(best[0].tolist()):
        clusters.setdefault(c, []).append(i)
    return sorted(clusters.values(), key=lambda members: members[0])


# -- the centripetal pull -----------------------------------------------------------------------------
def set_mean(values: Tensor, sets: Tensor, count: int) -> Tensor:
    """Each row (dim 0) replaced by the mean of the rows in its set (`sets`: a set number per row)."""
    flat = values.reshape(values.shape[0], -1)
    sums = torch.zeros(count, flat.shape[1], dtype=flat.dtype, device=flat.device).index_add_(0, sets, flat)
    sizes = torch.bincount(sets, minlength=count).to(flat.dtype)
    return (sums / sizes[:, None])[sets].reshape(values.shape)


@dataclass
class Pulled:
    """A parameter and its averaging sets along `dim` (a set number per index, singletons alone)."""

    name: str
    dim: int
    sets: Tensor
    count: int
    factor: float  # multiple of ε


def pulled_parameters(
    model: nn.Module, graph: ChannelGraph, clusters: list[list[int]], norm_scale_factor: float
) -> list[Pulled]:
    """Every producer and passive parameter site of the clustered groups, with one averaging set
    per (cluster, position among a group's indices there); buffers (running statistics) follow."""
    by_id = {g.id: g for g in graph.groups}
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    assignment: dict[tuple[str, int], dict[int, int]] = {}
    for cluster in clusters:
        if len(cluster) < 2:
            continue
        members: list[ChannelGroup] = [by_id[i] for i in cluster]
        for position, (site, _) in enumerate(members[0].sites):
            if site.role == "consumer" or site.name not in params:
                continue
            sets = assignment.setdefault((site.name, site.dim), {})
            indices = [sorted(g.sites[position][1].tolist()) for g in members]
            for offset in range(len(indices[0])):
                number = len(sets)  # fresh: larger than every number given before
                for idx in indices:
                    sets[idx[offset]] = number
    out = []
    for (name, dim), sets in assignment.items():
        p = params[name]
        numbers = torch.arange(p.shape[dim]) + len(sets)  # an index in no set is alone
        for index, number in sets.items():
            numbers[index] = number
        _, dense = torch.unique(numbers, return_inverse=True)
        scale = isinstance(modules.get(name.rpartition(".")[0]), _NORMS) and name.endswith("weight")
        out.append(
            Pulled(name, dim, dense.to(p.device), int(dense.max()) + 1, norm_scale_factor if scale else 1.0)
        )
    return out


class FilterMerging(RegularizedPruning):
    """Centripetal training, then the merge (see the module docstring)."""

    spec: MergeSpec

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed = 0
        self.layout: GraphLayout | None = None
        self.cluster_of: Tensor | None = None  # per group (layout order): its cluster, −1 if removed before
        self.pulled: list[Pulled] = []
        self.result: dict[str, float] = {}

    # -- clusters --------------------------------------------------------------------------------
    def _graph_layout(self) -> GraphLayout:
        if self.layout is None:
            layout = self._layout()
            if not isinstance(layout, GraphLayout):
                raise ConfigError(
                    "filter merging needs channel groups", where="train.merge", fix="structure: channel"
                )
            self.layout = layout
        return self.layout

    def start(self, state: TrainState) -> None:
        self.pick()
        assert self.groups is not None and self.picked is not None
        layout = self._graph_layout()
        gone = self.groups.removed(masks_of(state.model)).cpu()
        picked = self.picked.cpu()
        cluster_of = torch.full((self.groups.num_groups,), -1, dtype=torch.int64)
        position, next_cluster = 0, 0
        for number, groups in enumerate(layout.groups.values()):
            live = [i for i in range(len(groups)) if not gone[position + i]]
            k = sum(not picked[position + i] for i in live)
            if live:
                members = [groups[i] for i in live]
                vectors = group_vectors(state.model, members)
                if self.spec.normalize:
                    vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-30)
                for cluster in kmeans(
                    vectors, max(k, 1), seed=self.seed * 1_000_003 + number, restarts=self.spec.restarts
                ):
                    for i in cluster:
                        cluster_of[position + live[i]] = next_cluster
                    next_cluster += 1
            position += len(groups)
        self.cluster_of = cluster_of

    def clusters(self) -> list[list[int]]:
        """The clusters as lists of channel-group ids, each led by its first group."""
        assert self.cluster_of is not None
        groups = self._graph_layout().all_groups()
        out: dict[int, list[int]] = {}
        for position, c in enumerate(self.cluster_of.tolist()):
            if c >= 0:
                out.setdefault(c, []).append(groups[position].id)
        return list(out.values())

    def on_train_start(self, state: TrainState) -> None:
        super().on_train_start(state)
        graph = self._graph_layout().graph
        self.pulled = pulled_parameters(state.model, graph, self.clusters(), self.spec.norm_scale_factor)

    # -- training ----------------------------------------------------------------------------
    def strength(self, step: int) -> float:
        """ε at a step: constant, or growing linearly from 0 over `ramp_steps`."""
        ramp = self.spec.ramp_steps
        return self.spec.strength * (min(1.0, step / ramp) if ramp else 1.0)

    def update(self, step: int) -> None:
        assert self.groups is not None
        self.coefficients = torch.zeros(self.groups.num_groups, device=self.groups.device)
        tolerance = self.spec.tolerance
        if tolerance is not None and self.spread() <= tolerance:
            self.finish(step, "merged")

    def coefficient_max(self) -> float:
        return self.spec.strength

    def penalty_step(self, state: TrainState) -> None:
        epsilon, params = self.strength(state.step), self.params
        with torch.no_grad():
            for t in self.pulled:
                p = params[t.name]
                if p.grad is None:
                    continue
                w, g = p.detach().movedim(t.dim, 0), p.grad.movedim(t.dim, 0)
                new = set_mean(g, t.sets, t.count) if self.spec.average_gradients else g.clone()
                new.add_(w - set_mean(w, t.sets, t.count), alpha=epsilon * t.factor)
                g.copy_(new)  # a view of the gradient

    def spread(self) -> float:
        """The largest distance of a pulled entry from its cluster's centre, over the largest |w| of
        that parameter (0 once every cluster has met at its centre)."""
        params, worst = self.params, 0.0
        with torch.no_grad():
            for t in self.pulled:
                w = params[t.name].detach().movedim(t.dim, 0)
                scale = float(w.abs().max())
                if scale > 0:
                    worst = max(worst, float((w - set_mean(w, t.sets, t.count)).abs().max()) / scale)
        return worst

    # -- the merge --------------------------------------------------------------------------------
    def prune(self, state: TrainState) -> None:
        """Merge every cluster, fold it into the layers reading it, mask the merged-away channels."""
        graph = self._graph_layout().graph
        spread = self.spread()
        removed = merge_groups(state.model, graph, self.clusters())
        self.masks = channel_masks(state.model, graph, removed, roles=("producer", "consumer"), complete=True)
        current = masks_of(state.model)
        state.install_masks(current.intersect(self.masks) if current is not None else self.masks)
        self.phase, self.pruned_at = "pruned", state.step
        self.result = {"spread_before_merge": spread, "merged_away": float(len(removed))}
        self.record(state.step, force=True)

    def extra_state(self) -> dict[str, Any]:
        return {"cluster_of": None if self.cluster_of is None else self.cluster_of.clone()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if state.get("cluster_of") is not None:
            self.cluster_of = state["cluster_of"].to(torch.int64)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), **self.result}


class MergeSpec(RegularizationSpec):
    """The `merge` block of a train stage: the prune step giving each layer's channel count, and
    the centripetal pull."""

    criterion: str = "magnitude"
    allocation: str = "uniform"
    structure: str = "channel"
    strength: float = Field(
        3e-3, gt=0, allow_inf_nan=False, description="centripetal strength ε (the paper: 3e-3)"
    )
    ramp_steps: int = Field(0, ge=0, description="grow ε linearly from 0 over this many steps (0: constant)")
    norm_scale_factor: float = Field(
        0.1, ge=0, allow_inf_nan=False, description="norm layers' scales are pulled at this multiple of ε"
    )
    average_gradients: bool = Field(True, description="a cluster's members share their mean gradient")
    normalize: bool = Field(True, description="cluster the filters scaled to unit length")
    restarts: int = Field(3, ge=1, description="k-means++ starts per layer (the least inertia wins)")
    tolerance: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="merge once every cluster's spread is below this (relative "
        "to the largest |w| of the parameter; checked every interval steps); null: at the stage's end",
    )

    @model_validator(mode="after")
    def _channels_only(self) -> MergeSpec:
        if self.structure != "channel":
            raise ValueError(
                f"filter merging merges filters into filters: structure {self.structure!r} has none; "
                "use structure: channel"
            )
        if self.structure_options.get("through_norms"):
            raise ValueError("filter merging cannot go through LayerNorms (removal there is not exact)")
        if self.penalty != "l2" or self.sites != "producers":
            raise ValueError(
                "filter merging pulls each cluster to its centre: penalty and sites do not apply "
                "(leave them out)"
            )
        return self


@TRAINING.register(
    "merge",
    "filter merging (Centripetal SGD): cluster each layer's filters, pull them to their centres, merge",
)
class MergeMethod(RegularizationMethod):
    name = "merge"
    schema: ClassVar[type] = MergeSpec
    schedule = FilterMerging

    def __init__(self, config: MergeSpec, services: StageServices) -> None:
        super().__init__(config, services)
        assert isinstance(self.callback, FilterMerging)
        self.callback.seed = services.seed
