"""What a run produces: metric events as they happen, records of evaluations, the final result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from secateurs.core.masks import MaskSet
from secateurs.data import DatasetInfo
from secateurs.pipeline.recipe import Recipe


@dataclass
class MetricEvent:
    """Metrics as they are produced, for a results store: one per evaluation (or training eval row)."""

    stage: int  # sequence number of the stage in execution order (repeat levels unrolled)
    kind: str  # "train", "evaluate", or the training-time method that published it ("dst", "admm")
    level: int | None  # repeat level (1-based), None outside repeats
    step: int | None  # optimizer step within the training stage; None for evaluate stages
    metrics: dict[str, float]
    control: str | None = None  # the control experiment (e.g. "reinit") it belongs to; None: the run itself


def numeric(row: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a record (labels, levels and per-layer tables left out)."""
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("level",)
    }


@dataclass
class RunResult:
    """What a recipe produced: the pruned model, its masks and one record per evaluation."""

    recipe: Recipe
    model: nn.Module
    masks: MaskSet | None
    data_info: DatasetInfo
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        """The last evaluation of the run itself (control records left out)."""
        return next((r for r in reversed(self.records) if r.get("control") is None), {})


def best_of(history: list[dict[str, float]], metric: str = "test_accuracy") -> dict[str, float]:
    """Where a training stage's `metric` peaked (the earliest evaluation on ties): early stopping's pick.

    Returns `best_step` (the optimizer step within the stage) and `best_accuracy`; empty when
    the stage never evaluated.
    """
    rows = [r for r in history if metric in r]
    if not rows:
        return {}
    best = max(rows, key=lambda r: r[metric])  # max keeps the first of equal values
    return {"best_step": int(best["step"]), "best_accuracy": float(best[metric])}
