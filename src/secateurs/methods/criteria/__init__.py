"""Criteria registry: importing this package registers every built-in criterion."""

from secateurs.methods.criteria import grasp, magnitude, random_scores, snip, synflow, taylor  # noqa: F401  (registration)
from secateurs.methods.criteria.base import CRITERIA, Criterion, ScoringContext, build_criterion

__all__ = ["CRITERIA", "Criterion", "ScoringContext", "build_criterion"]
