"""Latency-aware allocation: prune toward a measured latency instead of a sparsity.

Equal sparsity is not equal speed: a channel of a wide early conv on a large feature map costs far
more time than one of a late narrow conv, and kernels run in SIMD-width steps. This allocation
measures, on the model's own device and at the target batch size, how the model's latency moves
as each unit (the layer producing a channel group) is narrowed alone, at a few widths per unit
(`LatencyTable`: the minimum over timed forwards of the physically pruned model), and treats the
total as additive: the model as it is, plus each unit's change. It then removes groups greedily,
always the step with the lowest score per millisecond saved (scores normalised per unit, by
default by the unit's mean, as for the global allocation), in steps of the structure's
`round_to`, until the table predicts the target (`target: {latency_ms: X}`, or
`{speedup: Y}` over the model as it is). Interactions between units make the sum approximate,
so the physically pruned result is measured, and while it misses the target the table's goal is
lowered in proportion (`refine` rounds); the measured latencies are logged.

Deterministic given a table: the greedy reads only scores and the table (ties to the earlier
unit), so a table written once (`LatencyTable.save`, `table: path.json`) gives the same masks
every time; measuring again re-times and may differ by the timing noise.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field, ValidationError, model_validator
from torch import Tensor, nn

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError
from secateurs.core.topk import topk_mask
from secateurs.eval.latency import Timer, batch_like, forward_latency
from secateurs.graph.removal import remove_channels
from secateurs.methods.allocations.base import (
    ALLOCATIONS,
    AllocationContext,
    LayerInfo,
    legal_counts,
    sparsity_free,
    unit_lowest,
)

log = logging.getLogger(__name__)

__all__ = ["LatencyTable", "LatencyTarget", "latency", "measure_counts", "measure_table", "plan_latency"]


class LatencyTarget(StrictModel):
    """What the pruned model must reach: `latency_ms` per batch, or a `speedup` over the model as it is."""

    latency_ms: float | None = Field(None, gt=0)
    speedup: float | None = Field(None, gt=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> LatencyTarget:
        if (self.latency_ms is None) == (self.speedup is None):
            raise ValueError("give exactly one of latency_ms and speedup, e.g. target: {speedup: 2.0}")
        return self

    def milliseconds(self, base_ms: float) -> float:
        """The target in milliseconds per batch, for a model that takes `base_ms` as it is."""
        return self.latency_ms if self.latency_ms is not None else base_ms / float(self.speedup)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LatencyTable:
    """Milliseconds per batch of a model as it is (`base_ms`) and, per unit, with that unit alone
    kept at each measured count (`points`: unit → {kept groups: ms}, its largest count the unit
    as it is). Between counts the curve is linear; it is made non-decreasing in the count first
    (a narrower layer is never predicted slower: timing noise otherwise makes a saving negative).
    """

    base_ms: float
    points: Mapping[str, Mapping[int, float]]
    batch_size: int | None = None
    device: str | None = None
    _curves: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not math.isfinite(self.base_ms) or self.base_ms <= 0:
            raise ConfigError(f"latency table base_ms must be a positive number, got {self.base_ms!r}")
        for unit, pts in self.points.items():
            if not pts or any(int(w) < 0 or not math.isfinite(float(ms)) for w, ms in pts.items()):
                raise ConfigError(f"latency table: unit {unit!r} needs finite times at counts >= 0")
            widths = sorted(int(w) for w in pts)
            values = [float(pts[w]) for w in widths]
            for i in range(1, len(values)):
                values[i] = max(values[i], values[i - 1])
            self._curves[unit] = (widths, values)

    def full(self, unit: str) -> int:
        """The unit's count as it is (its largest measured count)."""
        return self._curve(unit)[0][-1]

    def _curve(self, unit: str) -> tuple[list[int], list[float]]:
        try:
            return self._curves[unit]
        except KeyError:
            raise ConfigError(
                f"the latency table has no unit {unit!r}",
                fix="measure the table on this model and structure (measure_table), or leave `table` unset",
            ) from None

    def at(self, unit: str, count: int) -> float:
        """Milliseconds of the model with `unit` alone at `count` groups (linear between counts;
        below the smallest measured count, the smallest count's time)."""
        widths, values = self._curve(unit)
        if count <= widths[0]:
            return values[0]
        if count >= widths[-1]:
            return values[-1]
        i = next(i for i, w in enumerate(widths) if w >= count)
        w0, w1, v0, v1 = widths[i - 1], widths[i], values[i - 1], values[i]
        return v0 + (v1 - v0) * (count - w0) / (w1 - w0)

    def predict(self, counts: Mapping[str, int]) -> float:
        """Milliseconds predicted for the model with every unit at `counts` (changes add up)."""
        return self.base_ms + sum(self.at(u, c) - self.at(u, self.full(u)) for u, c in counts.items())

    def to_dict(self) -> dict[str, object]:
        return {
            "base_ms": self.base_ms,
            "batch_size": self.batch_size,
            "device": self.device,
            "points": {u: {str(w): ms for w, ms in sorted(p.items())} for u, p in self.points.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LatencyTable:
        try:
            points = {u: {int(w): float(ms) for w, ms in p.items()} for u, p in data["points"].items()}  # type: ignore[union-attr]
            return cls(float(data["base_ms"]), points, data.get("batch_size"), data.get("device"))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(
                f"not a latency table ({err})", fix="write one with LatencyTable.save or leave `table` unset"
            ) from None

    def save(self, path: str | Path) -> None:
        """Write the table as JSON (`table: path` in a recipe reuses it: same masks every time)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read latency table {str(path)!r}: {err.strerror}") from None
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError:
            raise ConfigError(f"latency table {str(path)!r} is not JSON") from None


# -- measuring ----------------------------------------------------------------------------------
def _graph_layout(context: AllocationContext | None) -> object:
    layout = getattr(context, "layout", None)
    if context is None or not hasattr(layout, "graph") or not hasattr(layout, "removed_ids"):
        raise ConfigError(
            "the latency allocation measures a model whose channels it can remove",
            fix="use it with structure channel, heads, ffn or heads_ffn (with an example input), "
            "or pass a measured `table`",
        )
    if context.example_input is None:
        raise ConfigError(
            "the latency allocation times the model and needs an example input",
            fix="pass input_shape= or example_input= to prune()/compute_masks()",
        )
    return layout


def _alive(layout: object, current: object) -> dict[str, list[int]]:
    """Per unit, the ids of its groups not removed yet (in unit order)."""
    groups = layout.groups  # type: ignore[attr-defined]
    gone = layout.removed_ids({u: torch.ones(len(m), dtype=torch.bool) for u, m in groups.items()}, current)  # type: ignore[attr-defined]
    return {u: [g.id for g in members if g.id not in gone] for u, members in groups.items()}


def _clock(timer: Timer | None, repeats: int) -> Timer:
    """The timer given, else the minimum over `repeats` forwards on the model's device."""
    if timer is not None:
        return timer
    return lambda model, inputs: forward_latency(model, inputs, repeats=repeats)


def _timed_ms(model: nn.Module, layout: object, removed: set[int], inputs: object, timer: Timer) -> float:
    small = remove_channels(model, layout.graph, removed) if removed else model  # type: ignore[attr-defined]
    return 1000.0 * timer(small, inputs)  # type: ignore[arg-type]


def measure_table(
    context: AllocationContext,
    *,
    batch_size: int = 1,
    widths: int = 4,
    round_to: int = 1,
    timer: Timer | None = None,
    repeats: int = 10,
) -> LatencyTable:
    """Time the model as it is and, per unit, with that unit alone narrowed to `widths` counts.

    The counts are the unit's current one and evenly spaced legal ones (multiples of `round_to`)
    down to the fewest it may keep; the narrowed copies are the physically pruned model
    (`remove_channels`), timed on the model's device by `timer` (default: the minimum over
    `repeats` forwards) on a batch of `batch_size` samples shaped like the example input.
    """
    layout = _graph_layout(context)
    clock = _clock(timer, repeats)
    inputs = batch_like(context.example_input, batch_size)  # type: ignore[arg-type]
    alive = _alive(layout, context.current)
    before = {g.id for members in layout.groups.values() for g in members} - {  # type: ignore[attr-defined]
        i for ids in alive.values() for i in ids
    }
    base = _timed_ms(context.model, layout, before, inputs, clock)
    points: dict[str, dict[int, float]] = {}
    for unit, ids in alive.items():
        counts = _table_counts(len(ids), round_to, widths)
        points[unit] = {len(ids): base}
        for count in counts[:-1]:
            points[unit][count] = _timed_ms(context.model, layout, before | set(ids[count:]), inputs, clock)
    device = str(next(iter(context.model.parameters())).device)
    return LatencyTable(base, points, batch_size, device)


def _table_counts(n: int, round_to: int, widths: int) -> list[int]:
    """`widths` counts of a unit of n, ascending, from the fewest legal (>= 1) to n."""
    legal = legal_counts(n, round_to, 1)
    if len(legal) <= widths:
        return legal
    picks = {legal[round(i * (len(legal) - 1) / (widths - 1))] for i in range(widths)}
    return sorted(picks)


def measure_counts(
    context: AllocationContext,
    keep: Mapping[str, Tensor],
    *,
    batch_size: int = 1,
    timer: Timer | None = None,
    repeats: int = 10,
) -> float:
    """Milliseconds per batch of the model with only the groups `keep` marks (per unit) left."""
    layout = _graph_layout(context)
    inputs = batch_like(context.example_input, batch_size)  # type: ignore[arg-type]
    removed = layout.removed_ids(keep, context.current)  # type: ignore[attr-defined]
    return _timed_ms(context.model, layout, removed, inputs, _clock(timer, repeats))


# -- allocating ---------------------------------------------------------------------------------
def _normalised(scores: Tensor, normalize: str) -> list[float]:
    """Finite scores in descending order, divided by their mean when `normalize` is mean
    (a mean <= 0 gives zeros): groups of different layers' widths become comparable."""
    s = scores.detach().reshape(-1).double().cpu()
    finite = s[torch.isfinite(s)]
    if normalize == "mean" and finite.numel():
        mean = float(finite.mean())
        finite = finite / mean if mean > 0 else torch.zeros_like(finite)
    return sorted(finite.tolist(), reverse=True)


def plan_latency(
    layers: Sequence[LayerInfo],
    table: LatencyTable,
    target_ms: float,
    *,
    round_to: int = 1,
    normalize: str = "none",
    max_per_layer: float = 1.0,
    allow_collapse: bool = False,
) -> dict[str, int]:
    """Kept groups per unit: remove the step with the lowest score per millisecond saved until the
    table predicts at most `target_ms` (ties to the earlier unit).

    A step takes a unit from its count to the next legal count below (multiples of `round_to`),
    or further while the table shows no saving on the way (flat stretches of the curve), so a
    plateau does not hide a cheaper width beyond it.
    """
    ranked = [_normalised(layer.scores, normalize) for layer in layers]
    counts = {layer.name: len(r) for layer, r in zip(layers, ranked, strict=True)}
    lowest = {}
    for layer, r in zip(layers, ranked, strict=True):
        keep_at_least = layer.num_groups - math.floor(max_per_layer * layer.num_groups)
        lowest[layer.name] = max(unit_lowest(layer, allow_collapse), min(keep_at_least, len(r)))
    prefix = {}
    for layer, r in zip(layers, ranked, strict=True):
        sums = [0.0]
        for v in r:
            sums.append(sums[-1] + v)
        prefix[layer.name] = sums

    def step(layer: LayerInfo) -> tuple[float, int] | None:
        name = layer.name
        now = counts[name]
        legal = [v for v in legal_counts(layer.num_groups, round_to, lowest[name]) if v < now]
        for new in reversed(legal):
            saved = table.at(name, now) - table.at(name, new)
            if saved > 0:
                return (prefix[name][now] - prefix[name][new]) / saved, new
        return None

    candidates = {layer.name: step(layer) for layer in layers}
    predicted = table.predict(counts)
    while predicted > target_ms:
        best = None
        for i, layer in enumerate(layers):
            c = candidates[layer.name]
            if c is not None and (best is None or c[0] < best[0][0]):
                best = (c, i)
        if best is None:
            most = table.base_ms / predicted
            raise ConfigError(
                f"latency target {target_ms:.4g} ms is out of reach: with every layer at the fewest "
                f"groups it may keep the table predicts {predicted:.4g} ms (the model as it is: "
                f"{table.base_ms:.4g} ms)",
                fix=f"ask for at least {predicted:.4g} ms (a speedup of at most {most:.3g}), "
                "raise max_per_layer, exclude fewer layers or lower round_to",
            )
        (_, new), i = best
        layer = layers[i]
        predicted -= table.at(layer.name, counts[layer.name]) - table.at(layer.name, new)
        counts[layer.name] = new
        candidates[layer.name] = step(layer)
    return counts


def _selection(layers: Sequence[LayerInfo], counts: Mapping[str, int]) -> dict[str, Tensor]:
    """The groups a prune keeps at `counts`: each unit's top k (ties to the lower index)."""
    return {layer.name: topk_mask(layer.scores, counts[layer.name]) for layer in layers}


Fraction = Annotated[float, Field(gt=0, le=1)]
Positive = Annotated[int, Field(ge=1)]


@ALLOCATIONS.register("latency", "prune toward a measured latency: lowest score per millisecond saved first")
@sparsity_free
def latency(
    layers: list[LayerInfo],
    sparsity: float | None,
    *,
    target: LatencyTarget,
    batch_size: Positive = 1,
    table: LatencyTable | str | None = None,
    widths: Annotated[int, Field(ge=2)] = 4,
    repeats: Positive = 10,
    refine: Annotated[int, Field(ge=0)] = 2,
    normalize: Literal["none", "mean"] = "none",
    max_per_layer: Fraction = 1.0,
    timer: Timer | None = None,
    allow_collapse: bool = False,
    round_to: int = 1,
    context: AllocationContext | None = None,
) -> dict[str, int]:
    """Keep counts reaching `target` on the device the model is on (see the module docstring).

    `batch_size`: the batch the latency is measured at. `table`: a measured `LatencyTable` (or a
    JSON path of one) instead of measuring; `widths` counts per unit and `repeats` timed forwards
    per point when measuring. `refine`: rounds of re-measuring the physically pruned model and
    lowering the goal while it misses the target (0: trust the table). `normalize`,
    `max_per_layer`: as for the global allocation. `timer`: seconds per forward of (model, batch),
    replacing the built-in timer (a profiler, a remote device, a fake one in tests).
    """
    if sparsity is not None:
        raise ConfigError(
            f"the latency allocation prunes to a latency target, not a sparsity (got sparsity {sparsity})",
            fix="leave `sparsity` unset and give allocation_options: {target: {latency_ms: 5.0}}",
        )
    try:
        goal = target if isinstance(target, LatencyTarget) else LatencyTarget.model_validate(target)
    except (ValidationError, TypeError, ValueError) as err:
        raise ConfigError(
            f"latency allocation option target is invalid: {err}",
            where="allocation_options",
            fix="target: {latency_ms: 5.0} (per batch) or target: {speedup: 2.0}",
        ) from None
    if context is not None and len(layers) != len(getattr(context.layout, "units", layers)):
        raise ConfigError(
            "the latency allocation cannot take per-layer sparsities (layer_sparsities)",
            fix="exclude the layers from the structure instead",
        )
    clock = _clock(timer, repeats)
    if isinstance(table, str):
        table = LatencyTable.load(table)
    if table is None:
        table = measure_table(
            context,  # type: ignore[arg-type]
            batch_size=batch_size,
            widths=widths,
            round_to=round_to,
            timer=clock,
        )
    target_ms = goal.milliseconds(table.base_ms)
    options = {
        "round_to": round_to,
        "normalize": normalize,
        "max_per_layer": max_per_layer,
        "allow_collapse": allow_collapse,
    }
    counts = plan_latency(layers, table, target_ms, **options)  # type: ignore[arg-type]
    if context is None or refine == 0:
        predicted = table.predict(counts)
        log.info("latency allocation: table predicts %.4g ms (target %.4g ms)", predicted, target_ms)
        return counts
    aim = target_ms
    for attempt in range(refine + 1):
        measured = measure_counts(context, _selection(layers, counts), batch_size=batch_size, timer=clock)
        log.info(
            "latency allocation, round %d: table predicts %.4g ms, measured %.4g ms (target %.4g ms, "
            "model as it is %.4g ms)",
            attempt,
            table.predict(counts),
            measured,
            target_ms,
            table.base_ms,
        )
        if measured <= target_ms or attempt == refine:
            if measured > target_ms:
                log.warning(
                    "latency allocation: measured %.4g ms, above the target %.4g ms after %d refinements",
                    measured,
                    target_ms,
                    refine,
                )
            return counts
        aim *= target_ms / measured
        try:
            counts = plan_latency(layers, table, aim, **options)  # type: ignore[arg-type]
        except ConfigError:
            log.warning("latency allocation: the table cannot go below %.4g ms; keeping the last plan", aim)
            return counts
    return counts
