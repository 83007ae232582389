"""The structure axis: which entries of a model's parameters are kept or pruned together.

A structure turns a model and its selected parameters into a *layout*, the one interface the
pruning step uses for every structure:

- `units`: what an allocation hands keep counts to, each with its number of groups, entries per
  group, a shape (for ER/ERK) and a floor (groups that must stay). For structures whose groups
  lie inside one parameter (unstructured, N:M, rows, blocks) a unit is a parameter; for groups
  that span layers (channels, attention heads, FFN channels) it is the layer producing them.
- `group_scores`: the criterion's element scores pooled over each group (`pooling.py`); groups
  removed by an earlier prune score −∞, so they stay removed and count towards the target.
- `select`: which k groups of a unit to keep: the top k (ties to the lower index), or a count
  spread evenly over sub-groups (N:M, rows).
- `masks`: the element masks of the kept groups.

So every criterion scores every structure, and every allocation allocates it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError, check_choice
from secateurs.core.masks import MaskSet, keep_bits
from secateurs.core.registry import Registry
from secateurs.core.topk import select_topk, topk_mask
from secateurs.methods.layers import LayerSelection
from secateurs.methods.structures.pooling import POOLINGS, SIDES, Pooling

_RANKED_AS_IS = (torch.float32, torch.float64)
_MINUS_INF_BITS = {
    dtype: int(torch.tensor(float("-inf"), dtype=dtype).view(ints))
    for dtype, ints in ((torch.float64, torch.int64), (torch.float32, torch.int32))
}


def removed_to_minus_inf(scores: Tensor, keep: Tensor) -> Tensor:
    """`scores` (float32 or float64) with −∞ where `keep` is False: `masked_fill(~keep, -inf)`, bit
    for bit, done as a bitwise select on the floats' bit patterns: masked_fill branches on every
    entry and is about three times slower on the random masks pruning makes (this runs every round
    of SynFlow's hundred, on every layer)."""
    kept = keep_bits(keep.reshape(scores.shape), scores)  # all bits set where kept, none where removed
    bits = scores.contiguous().view(kept.dtype)
    return (
        (bits & kept)
        .bitwise_or_(kept.bitwise_not_().bitwise_and_(_MINUS_INF_BITS[scores.dtype]))
        .view(scores.dtype)
    )


def _removed_to_minus_inf_all(scores: Mapping[str, Tensor], current: MaskSet) -> dict[str, Tensor]:
    """`removed_to_minus_inf` of every layer's scores, as one call per dtype and device over their
    concatenation: a call per layer costs more in dispatch than in work on small layers (SynFlow's
    hundred rounds do this on every layer each round)."""
    by_kind: dict[tuple[torch.dtype, torch.device], list[str]] = {}
    for n, s in scores.items():
        by_kind.setdefault((s.dtype, s.device), []).append(n)
    out = {}
    for (_, device), names in by_kind.items():
        flat = removed_to_minus_inf(
            torch.cat([scores[n].reshape(-1) for n in names]),
            torch.cat([current[n].to(device).reshape(-1) for n in names]),
        )
        for n, part in zip(names, flat.split([scores[n].numel() for n in names]), strict=True):
            out[n] = part.view(scores[n].shape)
    return out


@dataclass(frozen=True)
class Unit:
    """What an allocation distributes: `num_groups` groups of `group_size` entries each."""

    name: str
    shape: tuple[int, ...]
    group_size: int
    num_groups: int
    floor: int = 0  # groups this unit always keeps (a layer cannot lose every channel)
    rows: int = 1  # >1: its groups form `rows` equal rows, each counted on its own (`layer_kept`)


@dataclass(frozen=True)
class PoolSpec:
    """How a layout pools element scores into group scores, resolved for one prune."""

    pooling: Pooling
    side: str = "producers"
    tensors: str = (
        "weights"  # of a group spanning layers: its weight matrices, or "all" its tensors (biases too)
    )


@dataclass
class LayoutContext:
    """What a structure may look at to lay out a model."""

    model: nn.Module
    names: list[str]  # the parameters the layer selection chose
    selection: LayerSelection = field(default_factory=LayerSelection)
    example_input: Tensor | tuple[Tensor, ...] | None = None


class Layout(ABC):
    """Groups of one model under one structure (see the module docstring)."""

    units: list[Unit]
    pools: bool = False  # groups hold several entries whose scores are pooled
    allocation_defaults: Mapping[str, Any] = {}  # default options of allocations that take them

    @abstractmethod
    def scored(self, pool: PoolSpec) -> list[str]:
        """The parameters whose element scores `group_scores` reads."""

    @abstractmethod
    def group_scores(
        self, values: Mapping[str, Tensor], current: MaskSet | None, pool: PoolSpec
    ) -> dict[str, Tensor]:
        """Per unit, one score per group (−∞: removed before): float64 where entries were pooled;
        element scores that are their own group keep float32 (widening is exact: same ranking)."""

    def select(
        self,
        unit: Unit,
        scores: Tensor,
        k: int,
        ties: str = "index",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The groups of `unit` kept (bool per group): the top k, ties to the lower index (or by the
        rule `ties`, `secateurs.core.topk.TIES`; `generator` seeds the random one)."""
        return topk_mask(scores, k) if ties == "index" else select_topk(scores, k, ties, generator)

    def selects_top_k(self) -> bool:
        """Whether `select` is the plain top k (then a global allocation's own selection is it)."""
        return type(self).select is Layout.select

    @abstractmethod
    def masks(self, keep: Mapping[str, Tensor], current: MaskSet | None) -> MaskSet:
        """Element masks keeping the groups marked True (and nothing `current` removed)."""

    def invertible(self, pool: PoolSpec) -> bool:
        """Whether negating element scores reverses the selection order (the invert check)."""
        return not self.pools or pool.pooling.linear


class Structure:
    """Base of every structure: its options, preferences and layout.

    `pool` and `side` (options of the structures that pool) override the criterion's preference;
    `default_pool` / `default_side` apply when neither chooses.
    """

    name: str = ""
    default_pool: str = "l1"
    default_side: str = "producers"
    pool: str | None = None
    side: str | None = None

    def check_model(self, model: nn.Module) -> None:
        """Reject a model this structure cannot lay out, before anything else looks at it."""

    def layout(self, ctx: LayoutContext) -> Layout:
        raise NotImplementedError

    def pool_spec(self, criterion: Any) -> PoolSpec:
        """The pooling of this prune: the structure's option, else the criterion's, else the default."""
        name = self.pool or getattr(criterion, "pooling", None) or self.default_pool
        side = self.side or getattr(criterion, "side", None) or self.default_side
        tensors = getattr(criterion, "pool_tensors", "weights")
        return PoolSpec(POOLINGS.get(name), side, tensors)


STRUCTURES: Registry[type[Structure]] = Registry("structure")


def positive_int(value: object, what: str, where: str = "structure_options") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}", where=where)
    return value


def check_pooling(structure: str, pool: object, side: object = None) -> None:
    """`pool` and `side` options name a registered pooling and a side (or are left unset)."""
    if pool is not None:
        check_choice(
            pool,
            POOLINGS.names(),
            f"{structure} option pool",
            where="structure_options",
            fix="e.g. pool: l1 (sum of |scores|) or pool: l2 (root of the sum of squares)",
        )
    if side is not None:
        check_choice(
            side,
            SIDES,
            f"{structure} option side",
            where="structure_options",
            fix="producers: the filters making the channels; consumers: the columns reading them",
        )


def build_structure(name: str | Structure, **options: object) -> Structure:
    """A registered structure by name with its options (an instance is returned as it is)."""
    if isinstance(name, Structure):
        if options:
            raise ConfigError("structure options go with a structure name, not an instance")
        return name
    return STRUCTURES.build(name, **options)  # type: ignore[return-value]


class ElementStructure(Structure):
    """Groups that lie inside one parameter: a unit per parameter, masks expanded per parameter.

    Subclasses give `num_groups`, `group_size`, `group_scores` and `expand`, and may give
    `check(name, shape)` (reject a shape the structure cannot group, by name) and
    `select(scores, k, shape, ties, generator)` (spread the count instead of a plain top-k; `ties`
    other than "index" is passed only when a prune asks for it).
    """

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        """Accept every shape (structures with a tiling override this)."""

    def num_groups(self, shape: tuple[int, ...]) -> int:
        raise NotImplementedError

    def group_size(self, shape: tuple[int, ...]) -> int:
        raise NotImplementedError

    def group_scores(self, scores: Tensor, pooling: str | None = None) -> Tensor:
        raise NotImplementedError

    def count_rows(self, shape: tuple[int, ...]) -> int:
        """Rows whose kept counts the allocation works out one by one (1: the unit as a whole)."""
        return 1

    def expand(self, keep: Tensor, shape: tuple[int, ...]) -> Tensor:
        raise NotImplementedError

    def select(
        self,
        scores: Tensor,
        k: int,
        shape: tuple[int, ...],
        ties: str = "index",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return topk_mask(scores, k) if ties == "index" else select_topk(scores, k, ties, generator)

    @property
    def pools(self) -> bool:
        return False

    def layout(self, ctx: LayoutContext) -> Layout:
        params = dict(ctx.model.named_parameters())
        return ElementLayout(self, {n: tuple(params[n].shape) for n in ctx.names})


class ElementLayout(Layout):
    """The layout of an `ElementStructure`: one unit per selected parameter, in selection order."""

    def __init__(self, structure: ElementStructure, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.structure = structure
        self.pools = structure.pools
        self.names = list(shapes)
        self.shapes = dict(shapes)
        self.units = []
        for n in self.names:
            shape = self.shapes[n]
            structure.check(n, shape)
            size, groups = structure.group_size(shape), structure.num_groups(shape)
            self.units.append(Unit(n, shape, size, groups, rows=structure.count_rows(shape)))

    def scored(self, pool: PoolSpec) -> list[str]:
        return list(self.names)

    def group_scores(
        self, values: Mapping[str, Tensor], current: MaskSet | None, pool: PoolSpec
    ) -> dict[str, Tensor]:
        ranked = {}
        for n in self.names:
            s = values[n].detach()
            if self.pools or s.dtype not in _RANKED_AS_IS:
                s = s.to(torch.float64)  # pooled sums are float64; unpooled scores rank the same as they are
            ranked[n] = s
        if current is not None:
            pruned_before = {n: s for n, s in ranked.items() if n in current}
            ranked.update(_removed_to_minus_inf_all(pruned_before, current))
        return {n: self.structure.group_scores(ranked[n], pool.pooling.name) for n in self.names}

    def select(
        self,
        unit: Unit,
        scores: Tensor,
        k: int,
        ties: str = "index",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if ties == "index":  # a structure of a plug-in may not take the tie rule: it needs none here
            return self.structure.select(scores, k, unit.shape)
        return self.structure.select(scores, k, unit.shape, ties=ties, generator=generator)

    def selects_top_k(self) -> bool:
        return type(self.structure).select is ElementStructure.select

    def masks(self, keep: Mapping[str, Tensor], current: MaskSet | None) -> MaskSet:
        out = {}
        for n in self.names:
            mask = self.structure.expand(keep[n], self.shapes[n])
            if current is not None and n in current:
                mask = mask & current[n].to(mask.device)
            out[n] = mask
        return MaskSet(out)
