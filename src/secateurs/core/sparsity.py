"""What a sparsity is, and the one rule that turns a sparsity into a count.

"Sparsity" is always the fraction removed, in [0, 1); "density" the fraction kept. A group of n
pruned to sparsity s loses `removed_count(s·n)` entries and keeps the rest. The rounding of that
removed count is a choice (documented because tests pin it, and because reference codes differ):

- `half_up` (the default): round to nearest, halves up.
- `floor`: round the removed count down, so one weight more may stay. The Synaptic-Flow and Wanda
  codes remove `int((1 - density)·N)` = `int(s·N)` weights: this rule.
- `ceil`: round the removed count up, so the density never exceeds 1 − s.

Every rule tolerates float noise of 1e-9 (0.3·10 = 3.0000000000000004 removes 3 under `ceil`).
The rule in force is set for a stretch of code by `rounding_rule` (the pruning step sets it from
its `rounding` option around the allocation), so every allocation and schedule that counts through
`removed_count` honours it without taking an option of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

from secateurs.core.errors import ConfigError, check_choice

_TOLERANCE = 1e-9


def round_half_up(x: float) -> int:
    """Round to nearest, halves up; tolerant of float noise such as 0.1·30 = 3.0000000000000004."""
    return math.floor(x + 0.5 + _TOLERANCE)


def _floor(x: float) -> int:
    return math.floor(x + _TOLERANCE)


def _ceil(x: float) -> int:
    return math.ceil(x - _TOLERANCE)


Rounding = Literal["half_up", "floor", "ceil"]
"""The type of a `rounding` option (the keys of `ROUNDINGS`)."""

ROUNDINGS: dict[str, Callable[[float], int]] = {"half_up": round_half_up, "floor": _floor, "ceil": _ceil}
"""The rules for a removed count, by name (`rounding` option of a prune)."""

_RULE: ContextVar[str] = ContextVar("secateurs_rounding", default="half_up")


def check_rounding(rounding: object, where: str = "rounding") -> str:
    """`rounding` names one of `ROUNDINGS`."""
    return check_choice(
        rounding,
        ROUNDINGS,
        where,
        fix="half_up rounds the removed count to nearest; floor removes int(s·n) as the "
        "Synaptic-Flow and Wanda codes do; ceil never keeps more than the density",
    )


@contextmanager
def rounding_rule(rounding: str) -> Iterator[None]:
    """Count removed entries by `rounding` inside the block (`removed_count`)."""
    token = _RULE.set(check_rounding(rounding))
    try:
        yield
    finally:
        _RULE.reset(token)


def current_rounding() -> str:
    """The rounding rule in force (`rounding_rule`; half_up outside one)."""
    return _RULE.get()


def removed_count(x: float, rounding: str | None = None) -> int:
    """The removed count for an ideal count `x` (= sparsity · n), by `rounding` (default: the rule in
    force, `rounding_rule`; half_up outside one)."""
    return ROUNDINGS[rounding or _RULE.get()](x)


def check_sparsity(sparsity: float, where: str = "sparsity") -> float:
    """Sparsity is the fraction removed and must lie in [0, 1)."""
    if not isinstance(sparsity, int | float) or isinstance(sparsity, bool) or not 0.0 <= sparsity < 1.0:
        raise ConfigError(
            f"{where} must be a number in [0, 1), got {sparsity!r}",
            fix="sparsity is the fraction of weights removed, e.g. 0.9 keeps 10 %",
        )
    return float(sparsity)
