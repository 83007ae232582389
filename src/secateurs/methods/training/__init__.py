"""Training-time methods registry: importing this package registers every built-in one.

A new training-time method is one file here (a `TrainingMethod` registered in `TRAINING`) and
one import below; it then appears as a block of train stages and in `secateurs methods`.
"""

from secateurs.methods.training import (  # noqa: F401  (registration)
    admm,
    dst,
    gradual,
    param_stats,
    regularization,
    selection,
    slimming,
)
from secateurs.methods.training.base import TRAINING, StageServices, TrainingMethod, stage_sparsity

__all__ = ["TRAINING", "StageServices", "TrainingMethod", "stage_sparsity"]
