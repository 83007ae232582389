"""Criteria registry: importing this package registers every built-in criterion."""

from secateurs.criteria import magnitude, random_scores, taylor  # noqa: F401  (registration side effects)
from secateurs.criteria.base import CRITERIA, Criterion, ScoringContext, build_criterion

__all__ = ["CRITERIA", "Criterion", "ScoringContext", "build_criterion"]
