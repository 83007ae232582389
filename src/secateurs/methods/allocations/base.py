"""The allocation axis: how a target sparsity is split across layers.

An allocation is a plain function from the prunable units (shapes, group scores) and a target
sparsity to the number of groups each unit keeps. It is an axis of its own, so every criterion
and every structure works with every allocation (no "global" twin of each criterion). A unit is
a parameter for structures inside one parameter, or the layer producing a channel group.

Rounding (documented because tests pin it): a unit of n groups pruned to sparsity s keeps
`n - removed_count(s·n)` groups, the removed count rounded by the prune's `rounding` rule
(`secateurs.core.sparsity`: half_up by default, floor, ceil); global and ER/ERK allocations hit
the total count exactly (`N - removed_count(s·N)` elements kept), ER/ERK by largest-remainder
rounding of the ideal per-layer counts (ties to the earlier layer). `allocate(rounding=...)` sets
the rule around the allocation, so an allocation that counts through `kept_after` honours it. A unit
never keeps fewer than its `floor` groups (1 for channel groups: a layer cannot lose all its
channels). A unit of no weights (a dimension of size 0) is left out of every allocation: it keeps
what it has and is never a collapse.

Per-layer overrides (`layer_sparsities`, name pattern → sparsity) work with every allocation:
a matching layer keeps exactly `n - removed_count(s_layer·n)` groups, and the named allocation
splits the target sparsity over the other layers only (so `global` reaches `sparsity` on them).
The lottery ticket's "output layer at half the rate" is such an override, set per level by the
iterative schedule's `layer_rates`. Besides name patterns, `$first` and `$last` name the first and
the last prunable unit in model order, so one recipe reaches the output layer of every model
(`classifier`, `classifier.5`, `fc`, `lm_head`).

`round_to: k` (an option of the channel-like structures, passed here through the layout's
`allocation_defaults`, or `allocate(round_to=k)`) makes every unit's kept count a multiple of k,
so the pruned widths suit SIMD lanes and tensor-core tiles. It applies after any allocation
(`round_counts`): a unit of n >= k groups keeps a multiple of k, or all n (a unit left whole is
not rounded down); a unit smaller than k stays whole; no unit is rounded to 0
unless collapse is allowed, nor below its floor. Each count goes down to its legal value below,
then units are raised to their legal value above, largest fractional remainder first (ties to the
earlier unit), while that brings the total kept elements closer to the allocation's total. An
allocation that takes `round_to` itself (latency) allocates legal counts directly.

An allocation may take `context` (`AllocationContext`: the model, its layout, an example input):
the pruning step fills it, for allocations that measure the model (latency).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor, nn

from secateurs.core.apportion import Infeasible, water_fill
from secateurs.core.errors import ConfigError
from secateurs.core.registry import Registry, check_options
from secateurs.core.sparsity import check_sparsity, current_rounding, removed_count, rounding_rule
from secateurs.core.topk import current_tie_rule, tie_rule


@dataclass(frozen=True)
class LayerInfo:
    """What an allocation may look at for one unit (a parameter, or the layer of channel groups)."""

    name: str
    shape: tuple[int, ...]
    group_size: int
    scores: Tensor  # one score per group, 1-D; -inf for groups already pruned
    floor: int = 0  # groups the unit keeps whatever the allocation says
    rows: int = 1  # >1: the groups form equal rows and a sparsity is counted per row (`layer_kept`)

    @property
    def num_groups(self) -> int:
        return self.scores.numel()

    @property
    def numel(self) -> int:
        return self.num_groups * self.group_size


@dataclass(frozen=True)
class AllocationContext:
    """The model an allocation allocates, for the allocations that measure it (latency).

    `layout` is the structure's layout of `model` (`methods.structures.Layout`); `example_input`
    one batch (None when the step was given none); `current`: the model's masks before this prune.
    """

    model: nn.Module
    layout: Any
    example_input: Tensor | tuple[Tensor, ...] | None = None
    current: Any = None


class Allocated(dict[str, int]):
    """Keep counts per unit; `chosen` holds, per unit, the groups an allocation that ranked them
    itself already picked (global's one ranking), so they need not be selected a second time."""

    def __init__(self, counts: Mapping[str, int], chosen: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(counts)
        self.chosen = dict(chosen or {})


Allocation = Callable[..., dict[str, int]]
ALLOCATIONS: Registry[Allocation] = Registry("allocation")
INTERNAL_OPTIONS = ("context", "round_to")  # `allocate` fills them (from its own arguments)


def sparsity_free(fn: Allocation) -> Allocation:
    """Mark an allocation that takes its target from elsewhere (its own options), not `sparsity`."""
    fn.sparsity_free = True  # type: ignore[attr-defined]
    return fn


def check_round_to(value: object, where: str = "structure_options") -> int:
    """`round_to` is a positive integer (1: no rounding)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"round_to must be a positive integer, got {value!r}",
            where=where,
            fix="e.g. round_to: 8 keeps channel counts that are multiples of 8 (1: no rounding)",
        )
    return value


def legal_counts(n: int, round_to: int, lowest: int) -> list[int]:
    """The kept counts a unit of n groups may have under `round_to`, ascending, none below `lowest`.

    Multiples of `round_to` up to n, and n itself; a unit smaller than `round_to` only n.
    """
    if round_to == 1:
        values = list(range(n + 1))
    elif n < round_to:
        values = [n]
    else:
        values = [*range(0, n + 1, round_to), *([] if n % round_to == 0 else [n])]
    legal = [v for v in values if v >= lowest]
    return legal or [n]


def unit_lowest(layer: LayerInfo, allow_collapse: bool) -> int:
    """The fewest groups a unit may keep: its floor, and 1 unless collapse is allowed."""
    return min(max(layer.floor, 0 if allow_collapse else 1), layer.num_groups)


def round_counts(
    layers: list[LayerInfo], keep: Mapping[str, int], round_to: int, *, allow_collapse: bool = False
) -> dict[str, int]:
    """Per-unit counts made legal under `round_to`, the total kept elements kept close (module doc)."""
    if round_to == 1:
        return dict(keep)
    out: dict[str, int] = {}
    raises: list[tuple[float, int, int]] = []  # (−remainder, unit index, elements gained)
    for i, layer in enumerate(layers):
        count = keep[layer.name]
        legal = legal_counts(layer.num_groups, round_to, unit_lowest(layer, allow_collapse))
        below = [v for v in legal if v <= count]
        down = below[-1] if below else legal[0]
        above = [v for v in legal if v >= count]
        up = above[0] if above else legal[-1]
        out[layer.name] = down
        if up > down:
            raises.append((-(count - down) / (up - down), i, (up - down) * layer.group_size))
    wanted = sum(keep[layer.name] * layer.group_size for layer in layers)
    total = sum(out[layer.name] * layer.group_size for layer in layers)
    for _, i, gain in sorted(raises):
        if total + gain - wanted < wanted - total:  # closer to the allocation's total
            layer = layers[i]
            out[layer.name] += gain // layer.group_size
            total += gain
    return out


def kept_after(n: int, sparsity: float, floor: int = 0) -> int:
    """Groups a unit of n keeps at `sparsity` (never fewer than `floor`), the removed count rounded
    by the rule in force (`secateurs.core.sparsity.rounding_rule`)."""
    return max(n - removed_count(sparsity * n), min(floor, n))


def layer_kept(layer: LayerInfo, sparsity: float) -> int:
    """Groups `layer` keeps at its own `sparsity`: `kept_after` of the whole unit, or, for a unit
    counted per row (`rows` > 1: the rows structure with `count: row`), every row's `kept_after`
    times the rows, as Wanda's code removes int(s·d) weights of every row."""
    if layer.rows <= 1:
        return kept_after(layer.num_groups, sparsity, layer.floor)
    per_row = layer.num_groups // layer.rows
    return max(layer.rows * kept_after(per_row, sparsity), min(layer.floor, layer.num_groups))


def scaled_shares(layers: list[LayerInfo], sparsity: float, raw: list[float]) -> list[float]:
    """Elements kept per layer, ε·raw_l·n_l, hitting the total density, each layer's density in
    [floor_l / n_l, 1]: layers that would exceed density 1 are made dense, layers below their floor
    held at it, and ε re-solved over the rest (`water_fill`), so the total stays exact."""
    numel = [layer.numel for layer in layers]
    floors = [min(layer.floor, layer.num_groups) * layer.group_size for layer in layers]
    try:
        return water_fill((1.0 - sparsity) * sum(numel), raw, numel, floors, sizes=numel)
    except Infeasible:
        raise ConfigError(
            f"cannot reach sparsity {sparsity} with this allocation",
            fix="lower the sparsity or choose another allocation",
        ) from None


def _module(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


PLACES = {"$first": 0, "$last": -1}
"""Patterns that name a unit by its place among the prunable ones (model order), not by its name."""


def _name_matches(name: str, pattern: str, names: list[str]) -> bool:
    """`name` is matched by `pattern`: a glob on it or its module's name, or its place (`PLACES`)."""
    if pattern in PLACES:
        return bool(names) and name == names[PLACES[pattern]]
    return fnmatchcase(name, pattern) or fnmatchcase(_module(name), pattern)


def unmatched_patterns(names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The patterns that match none of the parameter names (nor their module names)."""
    names = list(names)
    return [p for p in patterns if not any(_name_matches(n, p, names) for n in names)]


def override_counts(
    layers: list[LayerInfo], layer_sparsities: Mapping[str, float], *, what: str = "layer"
) -> dict[str, int]:
    """Keep counts of the layers named by an override pattern (first matching pattern wins).

    Every pattern must match a prunable layer: a typo would otherwise silently prune the
    layer at the common rate.
    """
    for pattern, value in layer_sparsities.items():
        check_sparsity(value, where=f"{what} sparsity for {pattern!r}")
    for pattern in unmatched_patterns((layer.name for layer in layers), layer_sparsities):
        raise ConfigError(
            f"{what} sparsity pattern {pattern!r} matches no prunable layer",
            fix=f"prunable parameters are: {', '.join(layer.name for layer in layers)}",
        )
    out = {}
    names = [layer.name for layer in layers]
    for layer in layers:
        value = next((v for p, v in layer_sparsities.items() if _name_matches(layer.name, p, names)), None)
        if value is not None:
            out[layer.name] = layer_kept(layer, value)
    return out


def accepted_options(fn: Callable[..., Any]) -> set[str]:
    """Keyword options an allocation function takes (besides layers and sparsity)."""
    params = inspect.signature(fn).parameters
    return {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in INTERNAL_OPTIONS}


def _takes(fn: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(fn).parameters


def allocate(
    name: str,
    layers: list[LayerInfo],
    sparsity: float | None,
    *,
    allow_collapse: bool = False,
    layer_sparsities: Mapping[str, float] | None = None,
    defaults: Mapping[str, Any] | None = None,
    round_to: int | None = None,
    context: AllocationContext | None = None,
    rounding: str = "half_up",
    ties: str = "index",
    generator: torch.Generator | None = None,
    **options: object,
) -> Allocated:
    """Per-unit keep counts (in groups) from the named allocation, with the collapse guard.

    `layer_sparsities` (name pattern → sparsity) fixes the matching layers' counts; the
    allocation then splits `sparsity` over the remaining layers. `defaults` (from the structure,
    e.g. mean-normalised scores for channel groups, `round_to`) fill the options the allocation
    takes and the caller left unset. `round_to` (default: the defaults' value, else 1) makes every
    count a multiple of it (`round_counts`); `context` goes to allocations that measure the model.
    `rounding` rounds every removed count (module doc); `ties` (and `generator`, for "random") is
    the rule in force for allocations that rank groups themselves (global: `current_tie_rule`), so
    their cut breaks ties as the structure's selection does (`secateurs.core.topk.TIES`). Both are
    set around the allocation (context variables), so no allocation takes them as options.
    """
    fn = ALLOCATIONS.get(name)
    check_options(fn, options, where=f"allocation {name!r}")
    takes = accepted_options(fn)
    options = {**{k: v for k, v in (defaults or {}).items() if k in takes}, **options}
    given = round_to if round_to is not None else (defaults or {}).get("round_to", 1)
    step = check_round_to(given, where=f"allocation {name!r}")
    if _takes(fn, "round_to"):
        options["round_to"] = step
    if _takes(fn, "context"):
        options["context"] = context
    arguments = (name, fn, layers, sparsity, step, allow_collapse, layer_sparsities, options)
    if rounding == current_rounding() and (ties, generator) == current_tie_rule():  # already in force
        return _allocate(*arguments)
    with rounding_rule(rounding), tie_rule(ties, generator):
        return _allocate(*arguments)


def _allocate(
    name: str,
    fn: Allocation,
    layers: list[LayerInfo],
    sparsity: float | None,
    step: int,
    allow_collapse: bool,
    layer_sparsities: Mapping[str, float] | None,
    options: dict[str, Any],
) -> Allocated:
    """`allocate` once its options are resolved, under the rounding rule of the prune."""
    fixed = override_counts(layers, layer_sparsities or {})
    # a unit of no weights (nn.Linear(0, 4)) has nothing to allocate: it keeps what it has, takes
    # no share of the budget (ERK's fan terms would divide by zero) and cannot collapse
    empty = {layer.name: layer.num_groups for layer in layers if layer.numel == 0}
    rest = [layer for layer in layers if layer.name not in fixed and layer.name not in empty]
    if sparsity is not None:
        check_sparsity(sparsity)
    elif not getattr(fn, "sparsity_free", False) and rest:
        raise ConfigError(f"allocation {name!r} needs a target sparsity", fix="set `sparsity`")
    counts = fn(rest, sparsity, **options) if rest else {}
    keep = {**fixed, **counts, **empty}
    keep = {layer.name: keep[layer.name] for layer in layers}
    keep = round_counts(layers, keep, step, allow_collapse=allow_collapse)
    collapsed = [layer.name for layer in layers if keep[layer.name] == 0 and layer.name not in empty]
    if collapsed and not allow_collapse:
        raise ConfigError(
            f"allocation {name!r} at sparsity {sparsity} removes every weight of {', '.join(collapsed)} "
            "(layer collapse disconnects the network)",
            fix="lower the sparsity, use the 'erk' allocation, exclude the layer, "
            "or set allow_collapse: true",
        )
    chosen = getattr(counts, "chosen", {})  # a selection stays valid where rounding kept its count
    return Allocated(keep, {n: c for n, c in chosen.items() if keep[n] == counts[n]})
