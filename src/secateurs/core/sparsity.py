"""What a sparsity is, and the one rounding every keep count uses.

"Sparsity" is always the fraction removed, in [0, 1); "density" the fraction kept. A group of n
pruned to sparsity s loses `round_half_up(s·n)` entries (documented because tests pin it).
"""

from __future__ import annotations

import math

from secateurs.core.errors import ConfigError


def round_half_up(x: float) -> int:
    """Round to nearest, halves up; tolerant of float noise such as 0.1·30 = 3.0000000000000004."""
    return math.floor(x + 0.5 + 1e-9)


def check_sparsity(sparsity: float, where: str = "sparsity") -> float:
    """Sparsity is the fraction removed and must lie in [0, 1)."""
    if not isinstance(sparsity, int | float) or isinstance(sparsity, bool) or not 0.0 <= sparsity < 1.0:
        raise ConfigError(
            f"{where} must be a number in [0, 1), got {sparsity!r}",
            fix="sparsity is the fraction of weights removed, e.g. 0.9 keeps 10 %",
        )
    return float(sparsity)
