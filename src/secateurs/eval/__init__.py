"""Evaluation: accuracy / loss, parameter counts, and MAC counts that see pruned weights."""

from secateurs.eval.macs import CostReport, LayerCost, count_costs
from secateurs.eval.metrics import evaluate, parameter_counts

__all__ = ["CostReport", "LayerCost", "count_costs", "evaluate", "parameter_counts"]
