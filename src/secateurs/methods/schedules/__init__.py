"""Schedules registry: importing this package registers every built-in schedule.

A new level schedule is one file here (a `LevelSchedule` registered in `SCHEDULES`) and one
import below; `repeat` stages then take it by its `name`.
"""

from secateurs.methods.schedules import gradual, iterative, levels, oneshot  # noqa: F401  (registration)
from secateurs.methods.schedules.base import SCHEDULES, STEP_SCHEDULES, LevelSchedule, LevelTarget
from secateurs.methods.schedules.gradual import CubicSteps, Gradual
from secateurs.methods.schedules.iterative import Iterative
from secateurs.methods.schedules.levels import Levels
from secateurs.methods.schedules.oneshot import OneShot

SCHEDULE_NAMES = {
    **{name: SCHEDULES.get(name) for name in SCHEDULES.names()},
    **{name: STEP_SCHEDULES.get(name) for name in STEP_SCHEDULES.names()},
}
"""Every schedule by name: the level schedules of `repeat`, the step schedules of pruning while training."""

__all__ = [
    "SCHEDULES",
    "SCHEDULE_NAMES",
    "STEP_SCHEDULES",
    "CubicSteps",
    "Gradual",
    "Iterative",
    "LevelSchedule",
    "LevelTarget",
    "Levels",
    "OneShot",
]
