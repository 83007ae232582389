"""Specifications of `round_to` and of the latency allocation: exact counts, hand-computed greedy
steps on injected tables, determinism with a fake timer, and every option checked when read."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import masks_of, set_masks
from secateurs.eval.latency import batch_like, forward_latency
from secateurs.graph.analysis import analyze
from secateurs.graph.masking import removed_groups
from secateurs.graph.removal import remove_channels
from secateurs.methods.allocations import ALLOCATIONS, AllocationContext, LayerInfo, allocate, round_counts
from secateurs.methods.allocations.base import legal_counts
from secateurs.methods.allocations.latency import LatencyTable, measure_table, plan_latency
from secateurs.methods.pruning import compute_masks, plan
from secateurs.methods.spec import PruneSpec
from secateurs.methods.structures import Channel, LayoutContext


def unit(name: str, scores: list[float], floor: int = 1) -> LayerInfo:
    return LayerInfo(name, (len(scores), 9), 1, torch.tensor(scores, dtype=torch.float64), floor)


def linear_table(layers: list[LayerInfo], base: float, per_group: dict[str, float]) -> LatencyTable:
    """A table where each group of a unit costs `per_group[unit]` ms, measured at every count."""
    points = {
        layer.name: {
            c: base - per_group[layer.name] * (layer.num_groups - c) for c in range(1, layer.num_groups + 1)
        }
        for layer in layers
    }
    return LatencyTable(base, points)


# -- round_to ------------------------------------------------------------------------------------
WIDTHS = (3, 16, 24, 40, 64, 12)


def _units() -> list[LayerInfo]:
    gen = torch.Generator().manual_seed(0)
    return [unit(f"u{i}", torch.rand(n, generator=gen).tolist()) for i, n in enumerate(WIDTHS)]


def _options(name: str, layers: list[LayerInfo]) -> tuple[float | None, dict]:
    if name == "explicit":
        return 0.5, {"sparsities": {"u1": 0.3}}
    if name == "latency":
        per = {layer.name: 0.1 * (i + 1) for i, layer in enumerate(layers)}
        return None, {"table": linear_table(layers, 100.0, per), "target": {"speedup": 1.3}}
    return 0.5, {}


@pytest.mark.parametrize("name", ALLOCATIONS.names())
def test_round_to_gives_multiples_for_every_allocation(name: str) -> None:
    layers = _units()
    sparsity, options = _options(name, layers)
    plain = allocate(name, layers, sparsity, **options)
    keep = allocate(name, layers, sparsity, round_to=8, **options)
    for layer in layers:
        count, n = keep[layer.name], layer.num_groups
        if n < 8:
            assert count == n  # a unit smaller than round_to stays whole
        else:
            assert count % 8 == 0 or count == n, (layer.name, count)
            assert count >= 8  # never rounded to 0 (nor below one step)
    # the total stays within one step of what the allocation asked for
    assert abs(sum(keep.values()) - sum(plain.values())) <= 8
    assert allocate(name, layers, sparsity, round_to=1, **options) == plain


def test_round_counts_hand_computed() -> None:
    layers = [unit("a", [1.0] * 16), unit("b", [1.0] * 24), unit("c", [1.0] * 32), unit("d", [1.0] * 5)]
    # uniform 50 %: 8, 12, 16, 3 → down 8, 8, 16, (d: smaller than 8, whole) 5; b's raise to 16 would
    # overshoot by 4 what it closes (4): a tie is not closer, so b stays at 8
    assert allocate("uniform", layers, 0.5, round_to=8) == {"a": 8, "b": 8, "c": 16, "d": 5}
    # counts 11, 13, 30 of 16, 24, 32 at round_to 4 (54 asked) → down 8, 12, 28 (48); raises by
    # largest remainder: a (3/4) to 52, then c (2/4) would land 2 above as a is 2 below (not closer),
    # and b (1/4) likewise
    assert round_counts(layers[:3], {"a": 11, "b": 13, "c": 30}, 4) == {"a": 12, "b": 12, "c": 28}
    # a count of 1 goes up to one step, never to 0; with collapse allowed it may go to 0
    assert round_counts(layers[:1], {"a": 1}, 8) == {"a": 8}
    assert round_counts([unit("a", [1.0] * 16, floor=0)], {"a": 1}, 8, allow_collapse=True) == {"a": 0}
    assert legal_counts(20, 8, 1) == [8, 16, 20]
    assert legal_counts(5, 8, 1) == [5]


def _convnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 40, 3, padding=1), nn.BatchNorm2d(40), nn.ReLU(),
        nn.Conv2d(40, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )  # fmt: skip
    return model.eval(), torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("allocation", ["uniform", "global", "erk"])
def test_channel_round_to_prunes_multiples_and_one_is_the_old_masks(allocation: str) -> None:
    model, x = _convnet()
    before = compute_masks(model, 0.4, structure="channel", allocation=allocation, example_input=x)
    same = compute_masks(
        model,
        0.4,
        structure="channel",
        allocation=allocation,
        example_input=x,
        structure_options={"round_to": 1},
    )
    assert before.keys() == same.keys()
    assert all(torch.equal(before[n], same[n]) for n in before)
    result = plan(
        model,
        0.4,
        structure="channel",
        allocation=allocation,
        example_input=x,
        structure_options={"round_to": 8},
    )
    kept = {u: int(k.sum()) for u, k in result.keep.items()}
    assert all(c % 8 == 0 for c in kept.values()), kept
    small = remove_channels(model, result.layout.graph, result.layout.removed_ids(result.keep, None))
    assert [m.out_channels for m in small if isinstance(m, nn.Conv2d)] == [
        kept["0"],
        kept["3"],
        kept["6"],
    ]


@pytest.mark.parametrize("bad", [0, -8, 2.5, "8", True])
def test_round_to_is_checked_when_the_recipe_is_read(bad: object) -> None:
    with pytest.raises(ConfigError, match="round_to must be a positive integer"):
        Channel(round_to=bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="round_to must be a positive integer"):
        PruneSpec(structure="channel", structure_options={"round_to": bad})


# -- the latency allocation on injected tables ---------------------------------------------------
def _two() -> tuple[list[LayerInfo], LatencyTable]:
    layers = [unit("a", [4.0, 3.0, 2.0, 1.0]), unit("b", [8.0, 6.0, 4.0, 2.0])]
    return layers, linear_table(layers, 10.0, {"a": 1.0, "b": 0.25})


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # a's groups cost 1 ms each, b's 0.25: a's lowest scores per ms go first (1/1, 2/1, 3/1),
        # then b's (2/0.25, 4/0.25); the target met on the table stops it
        ({"latency_ms": 9.5}, {"a": 3, "b": 4}),
        ({"latency_ms": 8.0}, {"a": 2, "b": 4}),
        ({"latency_ms": 7.0}, {"a": 1, "b": 4}),
        ({"latency_ms": 6.5}, {"a": 1, "b": 2}),
        ({"speedup": 1.25}, {"a": 2, "b": 4}),  # 10 / 1.25 = 8 ms
    ],
)
def test_latency_removes_the_lowest_score_per_millisecond_first(target: dict, expected: dict) -> None:
    layers, table = _two()
    keep = allocate("latency", layers, None, table=table, target=target)
    assert keep == expected
    goal = target.get("latency_ms") or 10.0 / target["speedup"]
    assert table.predict(keep) <= goal


def test_latency_steps_by_round_to_and_ties_go_to_the_earlier_unit() -> None:
    layers, table = _two()
    # round_to 2: a 4 → 2 removes scores 2 + 1 for 2 ms (1.5 per ms), b 4 → 2 removes 6 for 0.5 ms
    assert allocate("latency", layers, None, round_to=2, table=table, target={"latency_ms": 8.0}) == {
        "a": 2,
        "b": 4,
    }
    twins = [unit("x", [1.0, 1.0]), unit("y", [1.0, 1.0])]
    flat = linear_table(twins, 4.0, {"x": 1.0, "y": 1.0})
    assert allocate("latency", twins, None, table=flat, target={"latency_ms": 3.0}) == {"x": 1, "y": 2}


def test_latency_crosses_a_plateau_to_the_saving_behind_it() -> None:
    layers = [unit("a", [1.0, 1.0, 1.0, 1.0]), unit("b", [5.0, 5.0, 5.0, 5.0])]
    # a saves nothing from 4 to 3 groups, 2 ms at 2 (kernels in steps): one step of 2 groups
    table = LatencyTable(10.0, {"a": {2: 8.0, 3: 10.0, 4: 10.0}, "b": {1: 9.0, 4: 10.0}})
    assert allocate("latency", layers, None, table=table, target={"latency_ms": 9.0}) == {"a": 2, "b": 4}


def test_latency_out_of_reach_is_a_clear_error() -> None:
    layers, table = _two()
    with pytest.raises(
        ConfigError,
        match=r"out of reach.*6\.25 ms.*Fix: ask for at least 6\.25 ms \(a speedup of at most 1\.6\)",
    ):
        allocate("latency", layers, None, table=table, target={"latency_ms": 6.0})


def test_latency_table_is_monotone_and_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    noisy = LatencyTable(10.0, {"a": {1: 7.0, 2: 7.5, 3: 7.2, 4: 10.0}})
    assert noisy.at("a", 3) == 7.5  # a narrower layer is never slower
    assert noisy.at("a", 0) == 7.0 and math.isclose(noisy.at("a", 3.5), 8.75)  # type: ignore[arg-type]
    path = tmp_path / "table.json"
    noisy.save(path)
    assert LatencyTable.load(path) == noisy
    layers = [unit("a", [1.0, 2.0, 3.0, 4.0])]
    assert allocate("latency", layers, None, table=str(path), target={"latency_ms": 7.5}) == {"a": 3}
    # below 7.5 ms: 3 → 2 saves nothing on the monotone curve, so the step goes on to 1 (7 ms)
    assert allocate("latency", layers, None, table=str(path), target={"latency_ms": 7.4}) == {"a": 1}
    with pytest.raises(ConfigError, match="no unit 'b'"):
        plan_latency([unit("b", [1.0])], noisy, 5.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target": {"speedup": 0.5}}, "greater than 1"),
        ({"target": {"latency_ms": 1.0, "speedup": 2.0}}, "exactly one of latency_ms and speedup"),
        ({"target": {}}, "exactly one of latency_ms and speedup"),
        ({}, "target"),
        ({"target": {"speedup": 2.0}, "batch_size": 0}, "batch_size"),
        ({"target": {"speedup": 2.0}, "widths": 1}, "widths"),
        ({"target": {"speedup": 2.0}, "normalize": "max"}, "normalize"),
        ({"target": {"speedup": 2.0}, "refine": -1}, "refine"),
    ],
)
def test_latency_options_are_checked_when_the_recipe_is_read(options: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PruneSpec(allocation="latency", structure="channel", allocation_options=options)


def test_latency_takes_no_sparsity_and_needs_a_model_or_a_table() -> None:
    layers, table = _two()
    with pytest.raises(ConfigError, match="latency target, not a sparsity"):
        allocate("latency", layers, 0.5, table=table, target={"speedup": 2.0})
    with pytest.raises(ConfigError, match="structure channel, heads, ffn or heads_ffn"):
        allocate("latency", layers, None, target={"speedup": 2.0})
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ConfigError, match="structure channel"):
        compute_masks(model, None, allocation="latency", allocation_options={"target": {"speedup": 2.0}})


# -- measuring: a fake timer makes the masks exact ------------------------------------------------
def param_timer(model: nn.Module, inputs: object) -> float:
    """Seconds = parameters / 1e6: what a latency proportional to the weights would be."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def _params_ms(model: nn.Module) -> float:
    return 1000.0 * param_timer(model, None)


def test_latency_measures_the_pruned_model_and_meets_the_target() -> None:
    model, x = _convnet()
    options = {"target": {"speedup": 1.6}, "timer": param_timer, "batch_size": 3}
    runs = [
        plan(
            model,
            None,
            structure="channel",
            allocation="latency",
            example_input=x,
            allocation_options=options,
        )
        for _ in range(2)
    ]
    assert runs[0].keep.keys() == runs[1].keep.keys()
    assert all(torch.equal(runs[0].keep[u], runs[1].keep[u]) for u in runs[0].keep)
    masks = [r.masks for r in runs]
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    layout = runs[0].layout
    small = remove_channels(model, layout.graph, layout.removed_ids(runs[0].keep, None))
    assert _params_ms(small) <= _params_ms(model) / 1.6
    # with the structure's round_to every width is a multiple of it
    rounded = plan(
        model,
        None,
        structure="channel",
        allocation="latency",
        example_input=x,
        structure_options={"round_to": 8},
        allocation_options=options,
    )
    assert all(int(k.sum()) % 8 == 0 for k in rounded.keep.values())


def test_measured_table_holds_the_timer_of_each_narrowed_model() -> None:
    model, x = _convnet()
    layout = Channel().layout(LayoutContext(model, [n for n, _ in model.named_parameters()], example_input=x))
    table = measure_table(AllocationContext(model, layout, x), widths=3, round_to=8, timer=param_timer)
    assert table.base_ms == _params_ms(model)
    assert {u: sorted(p) for u, p in table.points.items()} == {
        "0": [8, 16, 24],
        "3": [8, 24, 40],
        "6": [8, 16],
    }
    groups = layout.groups["3"]
    narrowed = remove_channels(model, layout.graph, {g.id for g in groups[24:]})
    assert table.points["3"][24] == _params_ms(narrowed)


def test_a_second_latency_prune_starts_from_the_masked_model() -> None:
    model, x = _convnet()
    options = {"target": {"speedup": 1.3}, "timer": param_timer}
    graph = analyze(model, x)

    def prune_ms() -> float:
        masks = compute_masks(
            model,
            None,
            structure="channel",
            allocation="latency",
            example_input=x,
            allocation_options=options,
        )
        set_masks(model, masks)
        return _params_ms(remove_channels(model, graph, removed_groups(graph, masks_of(model))))

    first = prune_ms()
    assert first <= _params_ms(model) / 1.3
    assert prune_ms() <= first / 1.3  # the speedup is over the model as it is (its masks removed)


def test_forward_latency_and_batch_like() -> None:
    model = nn.Linear(8, 4)
    x = batch_like(torch.zeros(2, 8), 5)
    assert x.shape == (5, 8) and x.dtype == torch.float32
    ids = batch_like(torch.tensor([[3, 1, 2], [0, 0, 0]]), 4)
    assert ids.tolist() == [[3, 1, 2]] * 4
    assert forward_latency(model, x, repeats=2, warmup=0) > 0
    with pytest.raises(ConfigError, match="reduce"):
        forward_latency(model, x, reduce="mean")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="repeats"):
        forward_latency(model, x, repeats=0)
