"""The allocation axis: how a target sparsity is split across layers.

An allocation is a plain function from the prunable units (shapes, group scores) and a target
sparsity to the number of groups each unit keeps. It is an axis of its own, so every criterion
and every structure works with every allocation (no "global" twin of each criterion). A unit is
a parameter for structures inside one parameter, or the layer producing a channel group.

Rounding (documented because tests pin it): a unit of n groups pruned to sparsity s keeps
`n - round_half_up(s·n)` groups; global and ER/ERK allocations hit the total count exactly
(`N - round_half_up(s·N)` elements kept), ER/ERK by largest-remainder rounding of the ideal
per-layer counts (ties to the earlier layer). A unit never keeps fewer than its `floor` groups
(1 for channel groups: a layer cannot lose all its channels).

Per-layer overrides (`layer_sparsities`, name pattern → sparsity) work with every allocation:
a matching layer keeps exactly `n - round_half_up(s_layer·n)` groups, and the named allocation
splits the target sparsity over the other layers only (so `global` reaches `sparsity` on them).
The lottery ticket's "output layer at half the rate" is such an override, set per level by the
iterative schedule's `layer_rates`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from torch import Tensor

from secateurs.core.apportion import Infeasible, water_fill
from secateurs.core.errors import ConfigError
from secateurs.core.registry import Registry, check_options
from secateurs.core.sparsity import check_sparsity, round_half_up


@dataclass(frozen=True)
class LayerInfo:
    """What an allocation may look at for one unit (a parameter, or the layer of channel groups)."""

    name: str
    shape: tuple[int, ...]
    group_size: int
    scores: Tensor  # one score per group, 1-D; -inf for groups already pruned
    floor: int = 0  # groups the unit keeps whatever the allocation says

    @property
    def num_groups(self) -> int:
        return self.scores.numel()

    @property
    def numel(self) -> int:
        return self.num_groups * self.group_size


Allocation = Callable[..., dict[str, int]]
ALLOCATIONS: Registry[Allocation] = Registry("allocation")


def kept_after(n: int, sparsity: float, floor: int = 0) -> int:
    """Groups a unit of n keeps at `sparsity` (never fewer than `floor`)."""
    return max(n - round_half_up(sparsity * n), min(floor, n))


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


def _layer_matches(layer: LayerInfo, pattern: str) -> bool:
    return fnmatchcase(layer.name, pattern) or fnmatchcase(_module(layer.name), pattern)


def unmatched_patterns(names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The patterns that match none of the parameter names (nor their module names)."""
    names = list(names)
    return [p for p in patterns if not any(fnmatchcase(n, p) or fnmatchcase(_module(n), p) for n in names)]


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
    for layer in layers:
        value = next((v for p, v in layer_sparsities.items() if _layer_matches(layer, p)), None)
        if value is not None:
            out[layer.name] = kept_after(layer.num_groups, value, layer.floor)
    return out


def accepted_options(fn: Callable[..., Any]) -> set[str]:
    """Keyword options an allocation function takes (besides layers and sparsity)."""
    params = inspect.signature(fn).parameters
    return {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}


def allocate(
    name: str,
    layers: list[LayerInfo],
    sparsity: float | None,
    *,
    allow_collapse: bool = False,
    layer_sparsities: Mapping[str, float] | None = None,
    defaults: Mapping[str, Any] | None = None,
    **options: object,
) -> dict[str, int]:
    """Per-unit keep counts (in groups) from the named allocation, with the collapse guard.

    `layer_sparsities` (name pattern → sparsity) fixes the matching layers' counts; the
    allocation then splits `sparsity` over the remaining layers. `defaults` (from the structure,
    e.g. mean-normalised scores for channel groups) fill the options the allocation takes and
    the caller left unset.
    """
    fn = ALLOCATIONS.get(name)
    check_options(fn, options, where=f"allocation {name!r}")
    takes = accepted_options(fn)
    options = {**{k: v for k, v in (defaults or {}).items() if k in takes}, **options}
    fixed = override_counts(layers, layer_sparsities or {})
    rest = [layer for layer in layers if layer.name not in fixed]
    if sparsity is not None:
        check_sparsity(sparsity)
    elif name != "explicit" and rest:
        raise ConfigError(f"allocation {name!r} needs a target sparsity", fix="set `sparsity`")
    keep = {**fixed, **(fn(rest, sparsity, **options) if rest else {})}
    keep = {layer.name: keep[layer.name] for layer in layers}
    collapsed = [layer.name for layer in layers if keep[layer.name] == 0]
    if collapsed and not allow_collapse:
        raise ConfigError(
            f"allocation {name!r} at sparsity {sparsity} removes every weight of {', '.join(collapsed)} "
            "(layer collapse disconnects the network)",
            fix="lower the sparsity, use the 'erk' allocation, exclude the layer, "
            "or set allow_collapse: true",
        )
    return keep
