"""Specifications of the allocations: exact per-layer keep counts, hand-computed."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from secateurs.core.errors import ConfigError
from secateurs.methods.allocations import ALLOCATIONS, LayerInfo, allocate, check_sparsity, round_half_up


def layer(name: str, shape: tuple[int, ...], scores: list[float] | None = None) -> LayerInfo:
    n = math.prod(shape)
    s = (
        torch.tensor(scores, dtype=torch.float64)
        if scores is not None
        else torch.arange(n, dtype=torch.float64)
    )
    assert s.numel() == n
    return LayerInfo(name, shape, 1, s)


# -- rounding and validation -------------------------------------------------------------------


def test_round_half_up() -> None:
    assert [round_half_up(x) for x in (3.5, 2.5, 0.5, 3.4999, 0.1 * 30, 1.5)] == [4, 3, 1, 3, 3, 2]
    # float noise: 0.7·45 is 31.499999999999996, meant as 31.5 → 32
    assert 0.7 * 45 < 31.5
    assert round_half_up(0.7 * 45) == 32
    assert allocate("uniform", [layer("a", (45,))], 0.7) == {"a": 13}


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "a", True, float("nan"), None])
def test_sparsity_outside_unit_interval_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"must be a number in \[0, 1\)"):
        check_sparsity(bad)  # type: ignore[arg-type]
    if bad is not None:  # None means "no target", which only `explicit` accepts (tested below)
        with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
            allocate("uniform", [layer("a", (4,))], bad)  # type: ignore[arg-type]


def test_sparsity_zero_and_ints_are_accepted() -> None:
    assert check_sparsity(0) == 0.0
    assert check_sparsity(0.999) == 0.999


# -- uniform ------------------------------------------------------------------------------------


def test_uniform_rounds_half_up_per_layer() -> None:
    # 10·0.5 = 5 pruned; 30·0.5 = 15 pruned; 7·0.5 = 3.5 → 4 pruned (round half up), 3 kept.
    layers = [layer("a", (10,)), layer("b", (3, 10)), layer("c", (7,))]
    assert allocate("uniform", layers, 0.5) == {"a": 5, "b": 15, "c": 3}
    # 0.1·30 is 3.0000000000000004 in floating point: still 3 pruned, not 4.
    assert allocate("uniform", [layer("b", (30,))], 0.1) == {"b": 27}
    assert allocate("uniform", layers, 0.0) == {"a": 10, "b": 30, "c": 7}


# -- global -------------------------------------------------------------------------------------


def test_global_keeps_the_top_scores_across_layers() -> None:
    a = layer("a", (4,), [0.1, 0.9, 0.3, 0.7])
    b = layer("b", (2,), [0.8, 0.2])
    # N = 6, sparsity 0.5 → keep 3: 0.9 (a), 0.8 (b), 0.7 (a).
    assert allocate("global", [a, b], 0.5) == {"a": 2, "b": 1}


def test_global_ties_go_to_the_earlier_layer_then_lower_index() -> None:
    a = layer("a", (3,), [2.0, 2.0, 1.0])
    b = layer("b", (2,), [2.0, 2.0])
    # Four scores tie at 2.0; keep 3 of 5 (round(0.4·5) = 2 pruned): a[0], a[1], then b[0].
    assert allocate("global", [a, b], 0.4) == {"a": 2, "b": 1}
    # The same layers in the other order: b first wins the ties.
    assert allocate("global", [b, a], 0.4) == {"b": 2, "a": 1}


def test_global_ignores_already_pruned_groups() -> None:
    a = layer("a", (4,), [float("-inf"), 5.0, float("-inf"), 1.0])
    b = layer("b", (2,), [3.0, 2.0])
    # keep 6 - round(0.5·6) = 3: 5.0, 3.0, 2.0
    assert allocate("global", [a, b], 0.5) == {"a": 1, "b": 2}


@pytest.mark.parametrize("sparsity", [0.0, 0.13, 0.5, 0.77, 0.9, 0.99])
def test_global_total_is_exact(sparsity: float) -> None:
    g = torch.Generator().manual_seed(0)
    layers = [
        LayerInfo(f"l{i}", (n,), 1, torch.rand(n, generator=g, dtype=torch.float64))
        for i, n in enumerate([37, 100, 9, 250])
    ]
    total = 396
    keep = allocate("global", layers, sparsity, allow_collapse=True)
    assert sum(keep.values()) == total - round_half_up(sparsity * total)


# -- ER / ERK -----------------------------------------------------------------------------------
# A toy model: Conv2d(3, 8, 3) weight (8, 3, 3, 3), Linear(72, 20) weight (20, 72), Linear(20, 4)
# weight (4, 20). Sizes n = 216, 1440, 80; N = 1736.


def toy_layers() -> list[LayerInfo]:
    return [layer("conv", (8, 3, 3, 3)), layer("fc1", (20, 72)), layer("fc2", (4, 20))]


def largest_remainder(ideal: list[Fraction], total: int) -> list[int]:
    """Reference rounding: floors, then +1 to the largest remainders (ties: earlier layer)."""
    counts = [math.floor(x) for x in ideal]
    order = sorted(range(len(ideal)), key=lambda i: (-(ideal[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def test_erk_at_0_8_by_hand() -> None:
    n = [216, 1440, 80]
    # ERK raw density = sum(dims) / prod(dims)
    raw = [Fraction(8 + 3 + 3 + 3, 216), Fraction(20 + 72, 1440), Fraction(20 + 4, 80)]
    assert [r * k for r, k in zip(raw, n, strict=True)] == [17, 92, 24]  # sum(raw·n) = 133
    target = Fraction(2, 10) * 1736  # (1 - s)·N = 347.2 weights kept, before rounding
    eps = target / 133  # ≈ 2.6105
    densities = [eps * r for r in raw]  # ≈ 0.2055, 0.1668, 0.7832: none exceeds 1
    assert max(densities) < 1
    ideal = [d * k for d, k in zip(densities, n, strict=True)]  # ≈ 44.38, 240.17, 62.65
    kept_total = 1736 - round_half_up(0.8 * 1736)  # 1736 - round(1388.8) = 347
    assert kept_total == 347
    # floors 44 + 240 + 62 = 346; the one left goes to the largest remainder (fc2, .65)
    assert largest_remainder(ideal, kept_total) == [44, 240, 63]
    assert allocate("erk", toy_layers(), 0.8) == {"conv": 44, "fc1": 240, "fc2": 63}


def test_er_at_0_8_by_hand() -> None:
    # ER ignores the kernel: conv raw = (8 + 3) / (8·3) = 11/24, times 216 weights = 99.
    n = [216, 1440, 80]
    raw = [Fraction(11, 24), Fraction(92, 1440), Fraction(24, 80)]
    assert [r * k for r, k in zip(raw, n, strict=True)] == [99, 92, 24]  # sum = 215
    eps = Fraction(2, 10) * 1736 / 215
    ideal = [eps * r * k for r, k in zip(raw, n, strict=True)]  # ≈ 159.87, 148.57, 38.76
    # floors 159 + 148 + 38 = 345; two left: conv (.87) then fc2 (.76)
    assert largest_remainder(ideal, 347) == [160, 148, 39]
    assert allocate("er", toy_layers(), 0.8) == {"conv": 160, "fc1": 148, "fc2": 39}


def test_erk_makes_the_small_last_layer_dense_and_resolves_epsilon() -> None:
    n = [216, 1440, 80]
    raw = [Fraction(17, 216), Fraction(92, 1440), Fraction(24, 80)]
    target = Fraction(5, 10) * 1736  # sparsity 0.5: 868 kept
    eps = target / 133  # ≈ 6.526
    assert eps * raw[2] > 1  # fc2 would get density ≈ 1.958: it becomes dense (80 weights)
    eps2 = (target - 80) / (17 + 92)  # re-solved over conv and fc1: 788 / 109 ≈ 7.229
    assert eps2 * raw[0] < 1 and eps2 * raw[1] < 1
    ideal = [eps2 * raw[0] * n[0], eps2 * raw[1] * n[1], Fraction(80)]  # ≈ 122.90, 665.10, 80
    kept_total = 1736 - round_half_up(0.5 * 1736)  # 868
    assert largest_remainder(ideal, kept_total) == [123, 665, 80]
    assert allocate("erk", toy_layers(), 0.5) == {"conv": 123, "fc1": 665, "fc2": 80}


@pytest.mark.parametrize("name", ["er", "erk"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.8, 0.95])
def test_er_totals_are_exact(name: str, sparsity: float) -> None:
    keep = allocate(name, toy_layers(), sparsity)
    assert sum(keep.values()) == 1736 - round_half_up(sparsity * 1736)
    assert all(0 < k <= n for k, n in zip(keep.values(), [216, 1440, 80], strict=True))


@pytest.mark.parametrize("name", ["er", "erk"])
def test_er_at_sparsity_zero_keeps_everything(name: str) -> None:
    # A single (9, 2) layer: ε·raw is 1.0000000000000002 in floating point; it must not count
    # as "denser than 1" (which used to leave no layer to solve for and raise).
    assert allocate(name, [layer("w", (9, 2))], 0.0) == {"w": 18}
    assert allocate(name, [layer("a", (34, 17, 7, 4)), layer("b", (5, 3))], 0.0) == {"a": 16184, "b": 15}


# -- explicit -----------------------------------------------------------------------------------


def test_explicit_patterns_and_default() -> None:
    layers = [
        layer("features.0.weight", (10,)),
        layer("features.2.weight", (20,)),
        layer("head.weight", (8,)),
    ]
    keep = allocate("explicit", layers, 0.25, sparsities={"features.0": 0.5, "features.*": 0.9})
    # features.0 (module-name match, first pattern wins): 10 - 5; features.2: 20 - 18;
    # head gets the default 0.25: 8 - 2.
    assert keep == {"features.0.weight": 5, "features.2.weight": 2, "head.weight": 6}


def test_explicit_without_default_needs_every_layer_covered() -> None:
    layers = [layer("a.weight", (10,)), layer("b.weight", (10,))]
    assert allocate("explicit", layers, None, sparsities={"*": 0.3}) == {"a.weight": 7, "b.weight": 7}
    with pytest.raises(ConfigError, match=r"no sparsity for layer 'b.weight'"):
        allocate("explicit", layers, None, sparsities={"a": 0.3})


def test_explicit_pattern_matching_nothing_is_a_config_error() -> None:
    layers = [layer("a.weight", (10,))]
    with pytest.raises(ConfigError, match=r"'conv\*' matches no prunable layer.*a\.weight"):
        allocate("explicit", layers, 0.5, sparsities={"conv*": 0.5})
    with pytest.raises(ConfigError, match="explicit sparsity for 'a'"):
        allocate("explicit", layers, 0.5, sparsities={"a": 1.0})
    with pytest.raises(ConfigError, match="needs `sparsities`"):
        allocate("explicit", layers, 0.5)


def test_other_allocations_need_a_target_sparsity() -> None:
    with pytest.raises(ConfigError, match="'uniform' needs a target sparsity"):
        allocate("uniform", [layer("a", (4,))], None)


# -- collapse guard, names ------------------------------------------------------------------------


def test_collapse_guard() -> None:
    layers = [layer("big", (10,)), layer("one", (1,))]
    # uniform 0.5: the single weight of "one" is pruned (round(0.5) = 1), collapsing the layer
    with pytest.raises(ConfigError, match=r"removes every weight of one.*allow_collapse"):
        allocate("uniform", layers, 0.5)
    assert allocate("uniform", layers, 0.5, allow_collapse=True) == {"big": 5, "one": 0}
    # global with all of one layer's scores below the other's
    low = layer("low", (3,), [0.0, 0.1, 0.2])
    high = layer("high", (3,), [1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="removes every weight of low"):
        allocate("global", [low, high], 0.5)


def test_unknown_allocation_or_option_lists_valid_names() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown allocation 'globl'.*Did you mean 'global'.*erk, explicit"
    ):
        allocate("globl", [layer("a", (4,))], 0.5)
    with pytest.raises(ConfigError, match=r"has no option 'temperature'"):
        allocate("uniform", [layer("a", (4,))], 0.5, temperature=2)
    assert {"er", "erk", "explicit", "global", "uniform"} <= set(ALLOCATIONS.names())


def _global_by_sorting(layers: list[LayerInfo], sparsity: float) -> dict[str, int]:
    """The global rule written as a full stable sort: what the selection must reproduce exactly."""
    from secateurs.methods.allocations.base import kept_after

    budget = kept_after(sum(x.numel for x in layers), sparsity)
    scores = torch.cat([x.scores.double() for x in layers])
    owner = torch.cat([torch.full((x.num_groups,), i) for i, x in enumerate(layers)])
    sizes = torch.cat([torch.full((x.num_groups,), x.group_size) for x in layers])
    order = torch.argsort(scores, descending=True, stable=True)
    taken = torch.cumsum(sizes[order], 0) <= budget
    counts = torch.bincount(owner[order][taken], minlength=len(layers))
    return {x.name: int(counts[i]) for i, x in enumerate(layers)}


@pytest.mark.parametrize("seed", range(40))
def test_global_selection_equals_the_full_sort_with_ties_and_pruned_groups(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    group = int(torch.randint(1, 4, (1,), generator=g))  # one group size for all: the selection path
    layers = []
    for i in range(int(torch.randint(1, 6, (1,), generator=g))):
        n = int(torch.randint(1, 60, (1,), generator=g))
        scores = torch.randint(0, 6, (n,), generator=g).float() / 4  # many ties
        scores[torch.rand(n, generator=g) < 0.2] = -math.inf  # already pruned
        layers.append(LayerInfo(f"l{i}", (n * group,), group, scores))
    for sparsity in (0.0, 0.3, 0.5, 0.9, 0.99):
        got = allocate("global", layers, sparsity, allow_collapse=True)
        assert got == _global_by_sorting(layers, sparsity)
