"""Prune potential with a paired bootstrap interval over the test samples (issue 21)."""

from __future__ import annotations

import pytest
import torch

from secateurs.core.errors import ConfigError
from secateurs.eval import prune_potential, prune_potential_interval


def with_accuracy(n: int, correct: int, seed: int) -> torch.Tensor:
    """n samples of which exactly `correct` are right, at random positions."""
    out = torch.zeros(n, dtype=torch.bool)
    out[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:correct]] = True
    return out


def test_a_model_right_on_the_same_samples_as_dense_qualifies_in_every_resample() -> None:
    dense = with_accuracy(50, 30, seed=0)  # 60 %: a tiny, noisy test set
    got = prune_potential_interval({0.5: dense.clone(), 0.9: dense & (torch.arange(50) % 2 == 0)}, dense)
    # paired resampling: the 0.5 model equals dense on every draw; the 0.9 one, right on a subset of
    # dense's samples, falls short on every draw that picks one of the others
    assert (got.potential, got.low, got.high) == (0.5, 0.5, 0.5)


def test_two_samples_by_hand() -> None:
    """Dense right on both; the pruned model on the first only. A draw keeps it within δ only when
    it picks the first sample twice (probability 1/4): potential 0 on 75 % of draws, 0.5 on 25 %."""
    dense, pruned = torch.tensor([True, True]), torch.tensor([True, False])
    wide = prune_potential_interval({0.5: pruned}, dense, resamples=4000, level=0.95)
    assert (wide.potential, wide.low, wide.high) == (0.0, 0.0, 0.5)
    narrow = prune_potential_interval({0.5: pruned}, dense, resamples=4000, level=0.4)  # quantiles 0.3, 0.7
    assert (narrow.low, narrow.high) == (0.0, 0.0)


def test_a_borderline_model_gives_an_interval_from_zero_to_its_sparsity() -> None:
    n = 1000
    dense = with_accuracy(n, 800, seed=1)
    pruned = with_accuracy(n, 796, seed=2)  # 0.4 points below dense, δ = 0.5: in on this test set
    got = prune_potential_interval({0.9: pruned}, dense, delta=0.005, seed=3)
    assert got.potential == prune_potential([(0.9, 0.796)], 0.8) == 0.9
    assert (got.low, got.high) == (0.0, 0.9)  # independent errors: 1000 samples cannot tell
    assert got.text() == "90 [0, 90]"


def test_seeded_and_reproducible() -> None:
    dense = with_accuracy(300, 200, seed=4)
    points = {s: with_accuracy(300, c, seed=5 + i) for i, (s, c) in enumerate([(0.5, 201), (0.8, 197)])}
    first = prune_potential_interval(points, dense, seed=7, resamples=500)
    assert first == prune_potential_interval(points, dense, seed=7, resamples=500)
    assert first.potential == prune_potential([(0.5, 201 / 300), (0.8, 197 / 300)], 200 / 300)


@pytest.mark.parametrize(
    ("correct", "dense", "kwargs", "match"),
    [
        ({0.5: [True, False, True]}, [True, True], {}, r"correct\[0.5\] has 3 samples, expected 2"),
        ({0.5: [1, 0]}, [True, True], {}, "must hold one bool per test sample"),
        ({}, [True], {}, "at least one pruned model"),
        ({1.5: [True]}, [True], {}, r"sparsity=1.5 is not a fraction"),
        ({0.5: [True]}, [True], {"resamples": 0}, "resamples=0 must be a positive integer"),
        ({0.5: [True]}, [True], {"level": 1.0}, "level=1.0 must lie strictly between 0 and 1"),
    ],
)
def test_bad_input_is_one_error(correct: dict, dense: list, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        prune_potential_interval(correct, dense, **kwargs)
