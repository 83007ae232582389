"""The schedule axis: the target sparsity as a function of pruning level or training step.

A level schedule (one-shot, iterative, levels) answers "what sparsity after level l?" for a
`repeat` stage; a step schedule (gradual cubic) answers "is step t a pruning step, and to what
sparsity?" for pruning during training. Both are plain, validated configs registered by their
`name`, so they appear in recipes and hash the same way everywhere; a new one is one file here.

A schedule gives sparsities, not counts: the prune stages it drives turn each into counts with
their own `rounding` (and `ties`), so every schedule honours those options (`rounds` within one
prune stage take `round_schedule`, `secateurs.methods.pruning.round_sparsity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from secateurs.core.config import StrictModel
from secateurs.core.registry import Registry


@dataclass(frozen=True)
class LevelTarget:
    """What one level of a repeat prunes to.

    `sparsity` is the target of the level's prune stages; `layer_sparsities` (name pattern →
    sparsity) gives some layers a target of their own (see `secateurs.methods.allocations.allocate`).
    """

    sparsity: float | None
    layer_sparsities: dict[str, float] = field(default_factory=dict)


class LevelSchedule(StrictModel):
    """A schedule of sparsity per level; `targets` adds the per-layer overrides of each level."""

    def levels(self, default: float | None = None) -> list[float]:  # pragma: no cover - overridden
        raise NotImplementedError

    def targets(self, default: float | None = None) -> list[LevelTarget]:
        return [LevelTarget(s) for s in self.levels(default)]


SCHEDULES: Registry[type[LevelSchedule]] = Registry("level schedule")
STEP_SCHEDULES: Registry[type[StrictModel]] = Registry("step schedule")
