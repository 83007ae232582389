"""Every registered component of the pruning framework, in one list (what `secateurs methods` prints).

Built from the registries themselves, so a criterion, allocation, structure, schedule, reset,
sanity check, control or training-time method registered anywhere, by this package or by a
user's own module, is listed without touching this file. A training-time method that picks
among registered choices (the DST updaters, selection methods, ADMM projections) names its
registry in `choices`, and those are listed under its block.
"""

from __future__ import annotations

from secateurs.core.registry import Registry
from secateurs.methods.allocations import ALLOCATIONS
from secateurs.methods.closed_form import TRAINERS
from secateurs.methods.controls import CONTROLS
from secateurs.methods.criteria import CRITERIA
from secateurs.methods.reconstruction import RECONSTRUCTIONS
from secateurs.methods.resets import RESETS
from secateurs.methods.sanity import SANITY
from secateurs.methods.schedules import SCHEDULES, STEP_SCHEDULES
from secateurs.methods.structures import POOLINGS, STRUCTURES
from secateurs.methods.training import TRAINING


def axes() -> list[tuple[str, Registry]]:
    """(axis, registry) of every component kind, in the order a recipe meets them."""
    out: list[tuple[str, Registry]] = [
        ("criterion", CRITERIA),
        ("structure", STRUCTURES),
        ("pooling", POOLINGS),
        ("allocation", ALLOCATIONS),
        ("schedule", SCHEDULES),
        ("schedule (in training)", STEP_SCHEDULES),
        ("reconstruction", RECONSTRUCTIONS),
        ("reset", RESETS),
        ("sanity check", SANITY),
        ("control", CONTROLS),
        ("training-time method", TRAINING),
        ("train method", TRAINERS),
    ]
    for name in TRAINING.names():
        choices = TRAINING.get(name).choices
        if choices is not None:
            field, registry = choices
            out.append((f"train.{name}.{field}", registry))
    return out


def catalog() -> list[tuple[str, str, str]]:
    """(axis, name, what it does) of every registered component."""
    return [(axis, name, registry.help(name)) for axis, registry in axes() for name in registry.names()]
