"""Regularization-based pruning (issue 24): penalties on a structure's groups while training.

`base` holds the shared mechanism (groups of any structure as id maps, the penalties, the
schedule skeleton and its saved state; its docstring is the contract other methods build on);
each method is one file registered in `TRAINING`: `fixed` (a fixed penalty for a number of
steps, then prune) and `greg` (growing regularization, GReg-1 and GReg-2).
"""

from secateurs.methods.training.regularization import fixed, greg, merging, tpp  # noqa: F401  (registration)
from secateurs.methods.training.regularization.base import (
    PENALTIES,
    SITES,
    GroupSite,
    Penalty,
    PenaltyGroups,
    RegularizationMethod,
    RegularizationSpec,
    RegularizedPruning,
    ScheduleRecord,
    structure_layout,
)

__all__ = [
    "PENALTIES",
    "SITES",
    "GroupSite",
    "Penalty",
    "PenaltyGroups",
    "RegularizationMethod",
    "RegularizationSpec",
    "RegularizedPruning",
    "ScheduleRecord",
    "structure_layout",
]
