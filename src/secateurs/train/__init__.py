"""Training: validated configs, optimizers and LR schedules, the training loop and its callbacks."""

from secateurs.train.callbacks import AtStep, EveryNEpochs, EveryNSteps, LambdaCallback, StopAtStep
from secateurs.train.config import LRScheduleConfig, OptimizerConfig, TrainConfig
from secateurs.train.engine import Callback, TrainResult, TrainState, train
from secateurs.train.optim import LRMultiplier, build_lr_scheduler, build_optimizer

__all__ = [
    "AtStep",
    "Callback",
    "EveryNEpochs",
    "EveryNSteps",
    "LRMultiplier",
    "LRScheduleConfig",
    "LambdaCallback",
    "OptimizerConfig",
    "StopAtStep",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "build_lr_scheduler",
    "build_optimizer",
    "train",
]
