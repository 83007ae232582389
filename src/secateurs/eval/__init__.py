"""Evaluation: accuracy / loss, parameter and MAC counts that see pruned weights, and metrics
beyond test accuracy (calibration, agreement, robustness to shifts, latency, isometry)."""

from secateurs.eval.agreement import agreement, per_class_accuracy, per_class_drop, predict
from secateurs.eval.beyond import beyond_accuracy
from secateurs.eval.calibration import expected_calibration_error
from secateurs.eval.isometry import jacobian_singular_values, jsv_stats, orthogonalize_
from secateurs.eval.latency import cpu_latency
from secateurs.eval.macs import CostReport, LayerCost, count_costs
from secateurs.eval.metrics import evaluate, parameter_counts
from secateurs.eval.potential import (
    PotentialInterval,
    excess_error,
    prune_potential,
    prune_potential_interval,
)
from secateurs.eval.shift import CORRUPTIONS, ShiftSpec, corrupt_splits, default_shifts, shifted_test_split

__all__ = [
    "CORRUPTIONS",
    "CostReport",
    "LayerCost",
    "PotentialInterval",
    "ShiftSpec",
    "agreement",
    "beyond_accuracy",
    "corrupt_splits",
    "count_costs",
    "cpu_latency",
    "default_shifts",
    "evaluate",
    "excess_error",
    "expected_calibration_error",
    "jacobian_singular_values",
    "jsv_stats",
    "orthogonalize_",
    "parameter_counts",
    "per_class_accuracy",
    "per_class_drop",
    "predict",
    "prune_potential",
    "prune_potential_interval",
    "shifted_test_split",
]
