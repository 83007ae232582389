"""Splitting a total into parts proportional to weights, each part within its bounds.

Used wherever counts are shared out: ER/ERK and Smart-Ratio densities (a layer cannot be denser
than 1 nor keep fewer than its floor) and the regrowth shares of dynamic sparse training (a layer
cannot grow more weights than it has room for). `water_fill` gives real shares; `largest_remainder`
rounds them to integers with an exact total; `apportion` does both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class Infeasible(ValueError):
    """The total cannot be reached within the bounds."""


def water_fill(
    target: float,
    weights: Sequence[float],
    caps: Sequence[float],
    floors: Sequence[float] | None = None,
    sizes: Sequence[float] | None = None,
) -> list[float]:
    """Real shares summing to `target`, each within [floor, cap]: share_i = ε·weight_i·size_i.

    ε is solved over the parts not held at a bound; a part whose share would pass its cap is held
    at the cap (below its floor, at the floor) and ε is solved again (water-filling). With
    `sizes` (default 1) the weights are per unit of size: ER/ERK give a layer a density ∝ its
    weight, and its share is that density times its size. Weights ≤ 0 count as 0; when every
    remaining weight is 0 the rest is shared equally. Bounds are compared per unit of size with
    relative tolerances, so a part exactly at its cap is not over it.
    """
    n = len(caps)
    floors = list(floors) if floors is not None else [0.0] * n
    sizes = list(sizes) if sizes is not None else [1.0] * n
    high: set[int] = {i for i in range(n) if caps[i] <= 0}
    low: set[int] = set()
    while True:
        free = [i for i in range(n) if i not in high and i not in low]
        budget = target - sum(caps[i] for i in high) - sum(floors[i] for i in low)
        mass = sum(max(weights[i], 0.0) * sizes[i] for i in free)
        if not free:
            if abs(budget) > 1e-9 * max(1.0, abs(target)):
                raise Infeasible(f"cannot place {target} within parts of room {sum(caps)}")
            return [caps[i] if i in high else floors[i] for i in range(n)]
        if mass > 0 and math.isfinite(budget / mass):
            scale = budget / mass
            density = {i: scale * max(weights[i], 0.0) for i in free}
        elif mass > 0:  # subnormal weights: ε overflows, the ratios do not
            density = {i: budget * (max(weights[i], 0.0) * sizes[i] / mass) / sizes[i] for i in free}
        else:
            density = {i: budget / len(free) / sizes[i] for i in free}
        over = [i for i in free if density[i] > caps[i] / sizes[i] * (1.0 + 1e-9)]
        if over:
            high.update(over)
            continue
        under = [i for i in free if density[i] < floors[i] / sizes[i] - 1e-12]
        if under:
            low.update(under)
            continue
        return [caps[i] if i in high else floors[i] if i in low else density[i] * sizes[i] for i in range(n)]


def largest_remainder(
    ideal: Sequence[float], caps: Sequence[int], total: int, floors: Sequence[int] | None = None
) -> list[int]:
    """Integer counts close to `ideal`, each within [floor, cap], summing to `total`.

    Each part gets its ideal rounded down; the rest goes one by one to the largest fractional parts
    (ties: the lower index).
    """
    floors = floors or [0] * len(ideal)
    counts = [max(min(math.floor(x + 1e-9), c), f) for x, c, f in zip(ideal, caps, floors, strict=True)]
    rest = total - sum(counts)
    order = sorted(range(len(ideal)), key=lambda i: (-(ideal[i] - counts[i]), i))
    for i in order:
        if rest <= 0:
            break
        if counts[i] < caps[i]:
            counts[i] += 1
            rest -= 1
    return counts


def apportion(
    total: int, weights: Sequence[float], caps: Sequence[int], floors: Sequence[int] | None = None
) -> list[int]:
    """Integer parts of `total` ∝ `weights` within [floor, cap]: `water_fill`, then `largest_remainder`."""
    return largest_remainder(water_fill(total, weights, caps, floors), caps, total, floors)
