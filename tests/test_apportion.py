"""The one capped proportional split (ER/ERK densities, DST regrowth shares)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secateurs.core.apportion import Infeasible, apportion, largest_remainder, water_fill


def test_shares_are_proportional_until_a_cap_binds_then_the_rest_is_shared_again() -> None:
    assert water_fill(60.0, [1.0, 2.0, 3.0], [100, 100, 100]) == pytest.approx([10.0, 20.0, 30.0])
    # the third part would get 30 of 60 but holds 20: the other 40 split 1:2
    assert water_fill(60.0, [1.0, 2.0, 3.0], [100, 100, 20]) == pytest.approx([40 / 3, 80 / 3, 20.0])
    # a floor binds the other way
    shares = water_fill(30.0, [1.0, 1.0, 8.0], [100, 100, 100], [5, 0, 0])
    assert shares == pytest.approx([5.0, 25 / 9, 200 / 9])


def test_sizes_make_the_weights_per_unit_like_er_densities() -> None:
    """ER: a layer's density ∝ its weight; its share is density × size."""
    shares = water_fill(30.0, [1.0, 1.0], [100, 20], sizes=[100, 20])
    assert shares == pytest.approx([25.0, 5.0])  # both at density 0.25


def test_zero_weights_share_equally_and_impossible_totals_say_so() -> None:
    assert water_fill(6.0, [0.0, -1.0, 0.0], [10, 10, 10]) == pytest.approx([2.0, 2.0, 2.0])
    with pytest.raises(Infeasible):
        water_fill(31.0, [1.0, 1.0], [10, 20])


def test_largest_remainder_rounds_to_the_exact_total_ties_to_the_lower_index() -> None:
    assert largest_remainder([1.5, 1.5, 1.0], [5, 5, 5], 4) == [2, 1, 1]
    assert largest_remainder([0.2, 0.9, 0.9], [5, 5, 5], 2) == [0, 1, 1]
    assert largest_remainder([2.5, 0.5], [2, 5], 3) == [2, 1]  # a capped part passes its turn


@given(
    st.lists(st.tuples(st.floats(0, 10), st.integers(0, 50)), min_size=1, max_size=6),
    st.integers(0, 300),
)
def test_apportion_hits_the_total_within_the_caps(parts: list[tuple[float, int]], total: int) -> None:
    weights, caps = [w for w, _ in parts], [c for _, c in parts]
    total = min(total, sum(caps))
    counts = apportion(total, weights, caps)
    assert sum(counts) == total
    assert all(0 <= n <= c for n, c in zip(counts, caps, strict=True))
