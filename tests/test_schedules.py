"""Specifications of the sparsity schedules: one-shot, iterative levels and the cubic gradual schedule."""

from __future__ import annotations

import itertools
import math

import pytest
from pydantic import ValidationError

from secateurs.core.errors import ConfigError
from secateurs.methods.schedules import SCHEDULE_NAMES, CubicSteps, Gradual, Iterative, OneShot

# -- one-shot -------------------------------------------------------------------------------------


def test_oneshot_is_one_level_at_the_target() -> None:
    assert OneShot(sparsity=0.7).levels() == [0.7]
    assert OneShot().levels(default=0.9) == [0.9]
    assert OneShot(sparsity=0.7).levels(default=0.9) == [0.7]  # its own sparsity wins
    with pytest.raises(ConfigError, match="needs a sparsity"):
        OneShot().levels()
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        OneShot().levels(default=1.0)


# -- iterative ------------------------------------------------------------------------------------


def test_iterative_levels_follow_one_minus_keep_rate_to_the_l() -> None:
    levels = Iterative(rate=0.2, levels=3).levels()
    assert levels == pytest.approx([0.2, 0.36, 0.488], abs=1e-12)
    levels = Iterative(rate=0.5, levels=4).levels()
    assert levels == pytest.approx([0.5, 0.75, 0.875, 0.9375], abs=1e-12)


def test_iterative_with_target_stops_exactly_at_the_target() -> None:
    # ceil(log(1 - 0.9) / log(1 - 0.2)) = ceil(10.32) = 11 levels; the last is 0.9 exactly.
    assert math.ceil(math.log(0.1) / math.log(0.8)) == 11
    levels = Iterative(rate=0.2, sparsity=0.9).levels()
    assert len(levels) == 11
    assert levels[-1] == 0.9
    assert levels[:-1] == pytest.approx([1 - 0.8**level for level in range(1, 11)], abs=1e-12)
    assert all(a < b for a, b in itertools.pairwise(levels))  # strictly increasing


def test_iterative_target_on_a_level_adds_no_extra_level() -> None:
    # 1 - 0.5² = 0.75 exactly: two levels, not three
    assert Iterative(rate=0.5, sparsity=0.75).levels() == [0.5, 0.75]
    # a target below the first level: one level straight to it
    assert Iterative(rate=0.2, sparsity=0.1).levels() == [0.1]
    assert Iterative(rate=0.2).levels(default=0.0) == [0.0]
    # the recipe's default target is used when the schedule has none
    assert Iterative(rate=0.5).levels(default=0.875) == [0.5, 0.75, 0.875]


def test_iterative_validation() -> None:
    with pytest.raises(ValidationError, match="not both"):
        Iterative(rate=0.2, levels=3, sparsity=0.9)
    for bad in (
        {"rate": 0.0},
        {"rate": 1.0},
        {"levels": 0},
        {"sparsity": 1.0},
        {"sparsity": -0.1},
        {"size": 3},
    ):
        with pytest.raises(ValidationError):
            Iterative(**bad)
    with pytest.raises(ConfigError, match="needs `levels` or a target `sparsity`"):
        Iterative(rate=0.2).levels()
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        Iterative(rate=0.2).levels(default=1.5)


# -- gradual (Zhu & Gupta cubic) ------------------------------------------------------------------


def zhu_gupta(t: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """s_t = s_f + (s_i − s_f)·(1 − (t − t0)/(n·Δt))³."""
    return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3


def test_cubic_values_at_every_update_step() -> None:
    steps = Gradual(initial_sparsity=0.1, sparsity=0.9, start_step=10, end_step=50, frequency=10).resolve(
        steps_per_epoch=7, total_steps=100
    )
    assert steps.update_steps() == [10, 20, 30, 40, 50]
    for t in steps.update_steps():
        assert steps.sparsity_at(t) == pytest.approx(zhu_gupta(t, 0.1, 0.9, 10, 4, 10), abs=1e-12)
    # by hand: t = 20 → 0.9 − 0.8·0.75³ = 0.5625; t = 30 → 0.9 − 0.8·0.125 = 0.8
    assert steps.sparsity_at(20) == pytest.approx(0.5625, abs=1e-12)
    assert steps.sparsity_at(30) == pytest.approx(0.8, abs=1e-12)
    assert steps.sparsity_at(10) == pytest.approx(0.1, abs=1e-15)  # the initial sparsity
    assert steps.sparsity_at(50) == 0.9


def test_cubic_before_start_is_zero_and_after_end_is_final() -> None:
    steps = CubicSteps(initial=0.2, final=0.8, start=5, end=25, frequency=5)
    assert [steps.sparsity_at(t) for t in (0, 4)] == [0.0, 0.0]
    assert [steps.sparsity_at(t) for t in (25, 26, 1000)] == [0.8, 0.8, 0.8]


def test_is_update_step() -> None:
    steps = CubicSteps(initial=0.0, final=0.5, start=3, end=12, frequency=4)
    # (12 - 3) // 4 = 2 intervals: the last update step is 3 + 8 = 11, not 12
    assert steps.end == 11
    assert [t for t in range(20) if steps.is_update_step(t)] == [3, 7, 11]
    assert steps.update_steps() == [3, 7, 11]
    assert steps.sparsity_at(11) == 0.5


def test_schedule_of_zero_length_prunes_once_to_the_final_sparsity() -> None:
    steps = CubicSteps(initial=0.0, final=0.6, start=4, end=4, frequency=10)
    assert steps.update_steps() == [4]
    assert steps.sparsity_at(4) == 0.6
    assert steps.sparsity_at(3) == 0.0


def test_gradual_resolves_epochs_and_defaults() -> None:
    steps = Gradual(start_epoch=1, end_epoch=3, frequency=5).resolve(
        steps_per_epoch=10, total_steps=50, default=0.9
    )
    assert (steps.start, steps.end, steps.final, steps.initial) == (10, 30, 0.9, 0.0)
    # no end given: 75 % of training, round(0.75 · 40) = 30
    steps = Gradual(sparsity=0.5, frequency=10).resolve(steps_per_epoch=10, total_steps=40)
    assert (steps.start, steps.end) == (0, 30)


def test_gradual_validation() -> None:
    with pytest.raises(ValidationError, match="start_step or start_epoch"):
        Gradual(start_step=1, start_epoch=1)
    with pytest.raises(ValidationError, match="end_step or end_epoch"):
        Gradual(end_step=1, end_epoch=1)
    for bad in ({"frequency": 0}, {"initial_sparsity": 1.0}, {"sparsity": 1.0}, {"start_step": -1}):
        with pytest.raises(ValidationError):
            Gradual(**bad)
    with pytest.raises(ConfigError, match="needs a final sparsity"):
        Gradual().resolve(10, 100)
    with pytest.raises(ConfigError, match=r"ends \(step 5\) before it starts \(step 8\)"):
        Gradual(sparsity=0.5, start_step=8, end_step=5).resolve(10, 100)
    with pytest.raises(ConfigError, match=r"initial_sparsity 0\.6 exceeds the final sparsity 0\.5"):
        Gradual(sparsity=0.5, initial_sparsity=0.6).resolve(10, 100)
    with pytest.raises(ConfigError, match=r"ends at step 60, after the training stage's last step 50"):
        Gradual(sparsity=0.5, end_epoch=6).resolve(10, 50)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        Gradual().resolve(10, 100, default=1.0)


def test_schedule_names() -> None:
    expected = {"oneshot": OneShot, "iterative": Iterative, "gradual": Gradual}
    assert expected.items() <= SCHEDULE_NAMES.items()
