"""Criteria registry: importing this package registers every built-in criterion.

A new criterion is one file here (a `Criterion` subclass registered in `CRITERIA`) and one
import below.
"""

from secateurs.methods.criteria import (  # noqa: F401  (registration)
    bn_scale,
    fpgm,
    grasp,
    magnitude,
    random_scores,
    snip,
    synflow,
    taylor,
    wanda,
)
from secateurs.methods.criteria.base import CRITERIA, Criterion, ScoringContext, build_criterion

__all__ = ["CRITERIA", "Criterion", "ScoringContext", "build_criterion"]
