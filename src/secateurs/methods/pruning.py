"""The one place where scores become masks, and the `prune()` entry point.

criterion (scores) × structure (groups) × allocation (keep counts per unit) → masks, for every
structure alike: the structure lays the model out in units of groups (`methods.structures`), the
criterion's element scores are pooled into group scores (or the criterion scores groups itself),
the allocation decides how many groups each unit keeps, and the layout selects them (top-k,
ties to the lower index, so the requested count is exact even when scores tie) and expands them
to element masks. `rounding` (how a removed count is rounded, `secateurs.core.sparsity`) and
`ties` (the rule among scores tied at the cut, `secateurs.core.topk`) let a prune match a
reference implementation; their defaults are the rules above. A prune respects the model's
existing mask: already-pruned groups score −∞ and stay pruned.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from secateurs.core.distributed import sync_scores
from secateurs.core.errors import ConfigError, check_choice
from secateurs.core.masks import MaskSet, masks_of, set_masks
from secateurs.core.registry import check_options
from secateurs.core.sparsity import check_rounding
from secateurs.core.topk import check_ties, has_nan, topk_mask
from secateurs.methods.allocations import AllocationContext, LayerInfo, allocate, check_sparsity
from secateurs.methods.criteria import ScoringContext, build_criterion
from secateurs.methods.criteria.base import Batch, Criterion, module_mode
from secateurs.methods.entry import as_batches, check_model, checked_loss, explained_failures
from secateurs.methods.layers import LayerSelection, select_parameters
from secateurs.methods.sanity import SANITY, CorruptedBatches, sanity_seed, shuffle_masks
from secateurs.methods.structures import (
    POOLINGS,
    ElementLayout,
    ElementStructure,
    Layout,
    LayoutContext,
    PoolSpec,
    Structure,
    Unstructured,
    build_structure,
)

__all__ = [
    "compute_masks",
    "masks_from_scores",
    "plan",
    "prune",
    "round_sparsity",
    "score_groups",
    "topk_mask",
]


def _check_nan(values: Mapping[Any, Tensor]) -> None:
    for name, value in values.items():
        if has_nan(value):
            raise ConfigError(
                f"criterion produced NaN scores for {name!r}", fix="check the model and data for NaNs"
            )


def _check_scores(values: Mapping[str, Tensor], criterion: Criterion) -> None:
    """A criterion's scores rank: NaN or +inf means inf/NaN weights (or an overflow) went in, and
    ranking them would keep arbitrary weights or collapse the other layers; −inf (a group already
    removed, or one to remove first) is fine."""
    _check_nan(values)
    for name, value in values.items():
        if value.is_floating_point() and not bool(value.sum() < math.inf) and bool((value == math.inf).any()):
            count = int((value == math.inf).sum())
            raise ConfigError(
                f"criterion {criterion.name!r} produced {count:,} infinite scores of {value.numel():,} "
                f"for {name!r}: its weights or the data hold inf/NaN values, or the scores overflowed",
                fix="check the weights and data for inf/NaN (`secateurs inspect` counts them per tensor); "
                "for synflow on a deep model use criterion_options={'dtype': 'float64'}",
            )


def select_masks(
    layout: Layout,
    group_scores: Mapping[str, Tensor],
    sparsity: float | None,
    *,
    allocation: str = "global",
    current: MaskSet | None = None,
    allow_collapse: bool = False,
    allocation_options: Mapping[str, Any] | None = None,
    layer_sparsities: Mapping[str, float] | None = None,
    rounding: str = "half_up",
    ties: str = "index",
    generator: torch.Generator | None = None,
) -> tuple[dict[str, Tensor], MaskSet]:
    """Allocate keep counts to the layout's units from their group scores, select, expand to masks.

    Returns the selection (per unit, a bool per group) and the masks.
    """
    chosen = select_groups(
        layout,
        group_scores,
        sparsity,
        allocation=allocation,
        allow_collapse=allow_collapse,
        allocation_options=allocation_options,
        layer_sparsities=layer_sparsities,
        rounding=rounding,
        ties=ties,
        generator=generator,
    )
    return chosen, layout.masks(chosen, current)


def select_groups(
    layout: Layout,
    group_scores: Mapping[str, Tensor],
    sparsity: float | None,
    *,
    allocation: str = "global",
    allow_collapse: bool = False,
    allocation_options: Mapping[str, Any] | None = None,
    layer_sparsities: Mapping[str, float] | None = None,
    context: AllocationContext | None = None,
    rounding: str = "half_up",
    ties: str = "index",
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Allocate keep counts to the layout's units from their group scores and select: per unit, a
    bool per group (kept). `context` is for allocations that measure the model (latency);
    `rounding` rounds the removed counts, `ties` breaks ties at the cut (`generator` seeds "random")."""
    layers = [
        LayerInfo(u.name, u.shape, u.group_size, group_scores[u.name], u.floor, u.rows) for u in layout.units
    ]
    keep = allocate(
        allocation,
        layers,
        sparsity,
        allow_collapse=allow_collapse,
        layer_sparsities=layer_sparsities,
        defaults=layout.allocation_defaults,
        context=context,
        rounding=rounding,
        ties=ties,
        generator=generator,
        **dict(allocation_options or {}),
    )
    # a unit's part of a global ranking is its own top k: reused where the layout selects the top k
    # (`allocate` hands on only the selections whose counts it left as they were)
    chosen = keep.chosen if layout.selects_top_k() else {}
    if ties == "index":
        return {
            u.name: chosen[u.name]
            if u.name in chosen
            else layout.select(u, group_scores[u.name], keep[u.name])
            for u in layout.units
        }
    return {
        u.name: chosen[u.name]
        if u.name in chosen
        else layout.select(u, group_scores[u.name], keep[u.name], ties=ties, generator=generator)
        for u in layout.units
    }


def masks_from_scores(
    scores: Mapping[str, Tensor],
    sparsity: float | None,
    *,
    allocation: str = "global",
    structure: ElementStructure | None = None,
    current: MaskSet | None = None,
    allow_collapse: bool = False,
    allocation_options: Mapping[str, Any] | None = None,
    layer_sparsities: Mapping[str, float] | None = None,
    pooling: str | None = None,
    rounding: str = "half_up",
    ties: str = "index",
    seed: int = 0,
) -> MaskSet:
    """Masks from per-parameter element scores (higher = keep), for a structure inside parameters.

    `layer_sparsities` (name pattern → sparsity) overrides the allocation for matching layers;
    `rounding`, `ties` (and `seed`, for ties "random") as in `compute_masks`.
    """
    structure = structure or Unstructured()
    _check_nan(scores)
    layout = ElementLayout(structure, {n: tuple(s.shape) for n, s in scores.items()})
    pool = PoolSpec(POOLINGS.get(pooling or structure.pool or structure.default_pool))
    groups = layout.group_scores(scores, current, pool)
    _, masks = select_masks(
        layout,
        groups,
        sparsity,
        allocation=allocation,
        current=current,
        allow_collapse=allow_collapse,
        allocation_options=allocation_options,
        layer_sparsities=layer_sparsities,
        rounding=check_rounding(rounding),
        ties=check_ties(ties),
        generator=torch.Generator().manual_seed(seed),
    )
    return masks


def layer_selection(layers: LayerSelection | Mapping[str, Any] | None) -> LayerSelection:
    """A LayerSelection from a mapping; an invalid field is a ConfigError, not a pydantic trace."""
    if isinstance(layers, LayerSelection):
        return layers
    try:
        return LayerSelection(**dict(layers or {}))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'layers'}: {e['msg']}" for e in err.errors())
        fields = ", ".join(LayerSelection.model_fields)
        raise ConfigError(f"invalid layer selection: {problems}", fix=f"valid fields: {fields}") from None


ROUND_SCHEDULES = ("exponential", "linear")
"""How `rounds` > 1 reach the target: density d^(k/n) after round k of n, or 1 − s·k/n."""


def round_sparsity(sparsity: float, k: int, rounds: int, schedule: str = "exponential") -> float:
    """Sparsity after round k of n: 1 − (1 − s)^(k/n) on the exponential schedule (the density falls
    by the same factor each round, SynFlow's), s·k/n on the linear one; exactly s at k = n."""
    if k == rounds:
        return sparsity
    if schedule == "linear":
        return sparsity * k / rounds
    return 1.0 - (1.0 - sparsity) ** (k / rounds)


def _check_round_schedule(schedule: object) -> str:
    return check_choice(
        schedule,
        ROUND_SCHEDULES,
        "round_schedule",
        fix="exponential: density d^(k/n) after round k of n (SynFlow's); linear: 1 − s·k/n",
    )


def _check_rounds(rounds: object, sparsity: float | None) -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(
            f"rounds must be a positive integer, got {rounds!r}", fix="use rounds: 1 for one prune"
        )
    if rounds > 1 and sparsity is None:
        raise ConfigError(
            "pruning in several rounds needs a target sparsity to split over the rounds",
            fix="set `sparsity`, or use rounds: 1",
        )
    return rounds


@contextmanager
def _masked_weights(model: nn.Module, masks: MaskSet | None) -> Iterator[None]:
    """Temporarily zero the masked-out weights, so a criterion scores the masked model."""
    if masks is None:
        yield
        return
    named = dict(model.named_parameters())
    saved = {n: named[n].detach().clone() for n in masks}
    try:
        masks.apply(model)  # exactly +0.0, also where a masked-out weight held NaN/inf
        yield
    finally:
        with torch.no_grad():
            for n, value in saved.items():
                named[n].copy_(value)


def _merged(base: MaskSet | None, new: MaskSet) -> MaskSet:
    """`base` with the masks of `new` replacing (or adding) theirs."""
    if base is None:
        return new
    out = {n: base[n] for n in base}
    out.update(new)
    return MaskSet(out)


def check_supported(criterion: Criterion, structure: Structure, name: str) -> None:
    allowed = criterion.structures
    if allowed is not None and structure.name not in allowed:
        raise ConfigError(
            f"criterion {criterion.name or name!r} scores the structures {', '.join(allowed)}, "
            f"not {structure.name!r}",
            fix=f"use structure {allowed[0]!r}, or another criterion (magnitude, taylor, …) "
            f"for {structure.name!r}",
        )


def group_scores(
    criterion: Criterion,
    ctx: ScoringContext,
    layout: Layout,
    pool: PoolSpec,
    current: MaskSet | None,
    *,
    invert: bool = False,
) -> dict[str, Tensor]:
    """Per unit, one score per group: the criterion's own group scores, or its pooled element scores.

    Under torchrun every rank uses rank 0's scores (`secateurs.core.distributed.sync_scores`).
    """
    if criterion.scores_groups(layout):
        with explained_failures(ctx.model):
            native = layout.mark_removed(criterion.group_scores(ctx, layout), current)  # type: ignore[attr-defined]
        scores = sync_scores(native)
        _check_scores(scores, criterion)
        return {n: -s if invert else s for n, s in scores.items()}
    signed = layout.pools and pool.pooling.signed
    with explained_failures(ctx.model):
        values = sync_scores(criterion.contributions(ctx) if signed else criterion.score(ctx))
    _check_scores(values, criterion)
    if invert:  # negated element scores: exact where selection ranks them (Layout.invertible)
        values = {n: -s for n, s in values.items()}
    return layout.group_scores(values, current, pool)


class Plan:
    """What a prune computed: the layout, the groups the last round kept in each unit, and the new
    masks (all of the model's), expanded from them when first asked for (physical removal of
    channel groups needs only `keep`)."""

    def __init__(self, layout: Layout, keep: dict[str, Tensor], masks: Callable[[], MaskSet]) -> None:
        self.layout = layout
        self.keep = keep
        self._masks = masks

    @cached_property
    def masks(self) -> MaskSet:
        return self._masks()


@dataclass
class _Setup:
    """A prune's parts, built and checked before any scoring."""

    criterion: Criterion
    structure: Structure
    layout: Layout
    pool: PoolSpec
    ctx: ScoringContext
    names: list[str]
    example_input: Tensor | tuple[Tensor, ...] | None = None


def _setup(
    model: nn.Module,
    *,
    criterion: str | Criterion,
    structure: str | Structure,
    layers: LayerSelection | Mapping[str, Any] | None,
    data: Any,
    seed: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    criterion_options: Mapping[str, Any] | None,
    structure_options: Mapping[str, Any] | None,
    input_shape: tuple[int, ...] | None,
    example_input: Tensor | tuple[Tensor, ...] | None,
    sanity: str = "none",
    invert: bool = False,
) -> _Setup:
    check_model(model)
    check = SANITY.get(sanity)
    selection = layer_selection(layers)
    built = build_structure(structure, **dict(structure_options or {}))
    built.check_model(model)
    names = select_parameters(model, selection)
    crit = build_criterion(criterion, **dict(criterion_options or {}))
    check_supported(crit, built, str(criterion))
    if check.level == "masks" and not isinstance(built, Unstructured):
        raise ConfigError(
            f"sanity check {sanity!r} permutes single weights, which would break the {built.name!r} pattern",
            fix="run the shuffle check with structure unstructured",
        )
    batches = as_batches(data)
    if check.level == "data":
        if not crit.needs_data:
            raise ConfigError(
                f"sanity check {sanity!r} corrupts the scoring data, but criterion {crit.name!r} uses none",
                fix="use it with a data-dependent criterion (snip, grasp, taylor)",
            )
        if batches is not None:  # without data the criterion's own error says what is missing
            batches = CorruptedBatches(batches, sanity, sanity_seed(seed, sanity))
    if example_input is None and input_shape is not None:
        device = next(iter(model.parameters())).device
        example_input = torch.zeros(2, *input_shape, device=device)
    layout = built.layout(LayoutContext(model, names, selection, example_input))
    pool = built.pool_spec(crit)
    if invert and not (crit.scores_groups(layout) or layout.invertible(pool)):
        raise ConfigError(
            f"invert (sanity check 'invert') is not defined for structure {built.name!r} with pooling "
            f"{pool.pooling.name!r}: negating the element scores does not reverse the order of its "
            "group scores",
            fix="run the invert sanity check with structure unstructured or nm, or with pool: sum",
        )
    existing = masks_of(model)
    ctx = ScoringContext(
        model=model,
        names=layout.scored(pool),
        masks=existing if existing is not None else MaskSet({}),
        batches=batches,
        loss_fn=checked_loss(loss_fn),
        generator=torch.Generator().manual_seed(seed),
        input_shape=tuple(input_shape) if input_shape is not None else None,
    )
    return _Setup(crit, built, layout, pool, ctx, names, example_input)


def _setup_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's arguments that `_setup` takes: one list of them, the signature of `_setup`."""
    wanted = inspect.signature(_setup).parameters
    return {k: v for k, v in arguments.items() if k in wanted and k != "model"}


def score_groups(
    model: nn.Module,
    *,
    criterion: str | Criterion = "magnitude",
    structure: str | Structure = "unstructured",
    layers: LayerSelection | Mapping[str, Any] | None = None,
    data: Any = None,
    seed: int = 0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    criterion_options: Mapping[str, Any] | None = None,
    structure_options: Mapping[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    example_input: Tensor | tuple[Tensor, ...] | None = None,
) -> tuple[Layout, dict[str, Tensor]]:
    """The layout and, per unit, one score per group, exactly as a prune would rank them.

    Higher = keep; −∞ for groups the model's masks removed already. For comparing criteria on a
    structure without pruning anything.
    """
    s = _setup(model, **_setup_arguments(locals()))
    return s.layout, group_scores(s.criterion, s.ctx, s.layout, s.pool, masks_of(model))


def plan(
    model: nn.Module,
    sparsity: float | None,
    *,
    criterion: str | Criterion = "magnitude",
    allocation: str = "global",
    structure: str | Structure = "unstructured",
    layers: LayerSelection | Mapping[str, Any] | None = None,
    data: Batch | Iterable[Batch] | Any | None = None,
    seed: int = 0,
    allow_collapse: bool = False,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    criterion_options: Mapping[str, Any] | None = None,
    allocation_options: Mapping[str, Any] | None = None,
    structure_options: Mapping[str, Any] | None = None,
    layer_sparsities: Mapping[str, float] | None = None,
    input_shape: tuple[int, ...] | None = None,
    example_input: Tensor | tuple[Tensor, ...] | None = None,
    rounds: int = 1,
    round_schedule: str = "exponential",
    rounding: str = "half_up",
    ties: str = "index",
    invert: bool = False,
    sanity: str = "none",
) -> Plan:
    """`compute_masks`, returning the layout too (physical removal of channel groups needs it)."""
    invert = invert or SANITY.get(sanity).level == "scores"
    if sparsity is not None:
        check_sparsity(sparsity)
    rounds = _check_rounds(rounds, sparsity)
    schedule = _check_round_schedule(round_schedule)
    rules = {
        "rounding": check_rounding(rounding),
        "ties": check_ties(ties),
        "generator": torch.Generator().manual_seed(seed),  # ties "random": the same seed, the same mask
    }
    s = _setup(model, **_setup_arguments(locals()))
    existing = masks_of(model)
    current = existing
    chosen: dict[str, Tensor] = {}
    mode = s.criterion.scoring_mode
    with module_mode(model, mode) if rounds > 1 and mode else nullcontext():
        for k in range(1, rounds + 1):
            level = None if sparsity is None else round_sparsity(sparsity, k, rounds, schedule)
            overrides = {
                p: round_sparsity(v, k, rounds, schedule) for p, v in (layer_sparsities or {}).items()
            }
            masking = k > 1 and not s.criterion.applies_masks
            with _masked_weights(model, current) if masking else nullcontext():
                scores = group_scores(s.criterion, s.ctx, s.layout, s.pool, current, invert=invert)
            chosen = select_groups(
                s.layout,
                scores,
                level,
                allocation=allocation,
                allow_collapse=allow_collapse,
                allocation_options=allocation_options,
                layer_sparsities=overrides or None,
                context=AllocationContext(model, s.layout, s.example_input, current),
                **rules,
            )
            if k < rounds:
                current = _merged(current, s.layout.masks(chosen, current))
                s.ctx.masks = current
    final = chosen, current

    def masks() -> MaskSet:
        keep, before = final
        result = _merged(before, s.layout.masks(keep, before))
        if SANITY.get(sanity).level != "masks":
            return result
        dense = MaskSet.dense(model, s.names)
        allowed = MaskSet(
            {n: existing[n] if existing is not None and n in existing else dense[n] for n in s.names}
        )
        shuffled = shuffle_masks(
            MaskSet({n: result[n] for n in s.names}), sanity_seed(seed, sanity), allowed=allowed
        )
        return _merged(result, shuffled)

    return Plan(s.layout, chosen, masks)


def compute_masks(model: nn.Module, sparsity: float | None, **options: Any) -> MaskSet:
    """Masks for `model` at `sparsity` (fraction removed), without changing the model.

    Options: `criterion`, `allocation`, `structure` (names, or instances), with
    `criterion_options`, `allocation_options`, `structure_options`; `layers` (a LayerSelection
    or mapping); `data` (an (x, y) batch, a bare input, or a loader) for data-dependent
    criteria; `seed`; `allow_collapse`; `loss_fn`.

    The result covers the selected parameters plus any previously masked ones, and is a subset
    of the model's current masks (masks only shrink). `layer_sparsities` maps name patterns to a
    sparsity of their own (see `secateurs.methods.allocations.allocate`). `input_shape` (one
    sample, no batch dimension) or `example_input` (one batch) are for data-free criteria that
    build their own input and for structures that trace the model (channel).

    `rounds` > 1 prunes in n rounds, re-scoring the model with the previous round's masks applied
    (SynFlow's 100 rounds; any criterion may use it). `round_schedule` "exponential" (default):
    round k reaches sparsity 1 − (1 − s)^(k/n), i.e. density d^(k/n); "linear": sparsity s·k/n,
    i.e. density 1 − s·k/n (each layer override likewise).

    `rounding` ("half_up" default, "floor", "ceil") rounds every removed count, s·n → an integer,
    in every round and allocation (`secateurs.core.sparsity`); `ties` ("index" default: the lower
    index kept; "reverse"; "random", seeded by `seed`; "original": the reference codes' torch.topk /
    torch.sort order) breaks ties among scores at the cut (`secateurs.core.topk`).

    `invert` keeps the lowest scores instead of the highest. `sanity` names a sanity check
    (`secateurs.methods.sanity`): "invert" sets `invert`, "shuffle" permutes each layer's new
    mask, "random_labels"/"random_pixels" corrupt `data`; "reinit" acts on weights, in `prune()`.
    """
    check_options(plan, options, where="compute_masks()")
    return plan(model, sparsity, **options).masks


def prune(model: nn.Module, sparsity: float | None, **options: Any) -> nn.Module:
    """Prune `model` in place to `sparsity` and return it (see `compute_masks` for options).

    The pruned weights are zeroed and the masks are recorded on the model
    (`secateurs.masks_of(model)`); its `state_dict` keys do not change. Keep the masks applied
    during training with `masks_of(model).attach(model, optimizer)`.
    """
    check_options(plan, options, where="prune()")
    set_masks(model, plan(model, sparsity, **options).masks)
    sanity = options.get("sanity", "none")
    weights = SANITY.get(sanity).weights
    if weights is not None:
        weights(model, sanity_seed(int(options.get("seed", 0)), sanity))
    return model
