"""Regularization-based pruning (issue 24): the penalties' gradients by hand, the schedules by
formula, GReg's pruned groups near zero, GReg-2's pick, resuming, and option errors."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from regularized import schedule_of
from resuming import assert_same_run, resumed_after_crash
from tiny import tiny_recipe
from torch import Tensor, nn
from typer.testing import CliRunner

from secateurs.core.errors import ConfigError
from secateurs.core.masks import masks_of
from secateurs.front import cli
from secateurs.methods.layers import LayerSelection, select_parameters
from secateurs.methods.pruning import compute_masks, score_groups
from secateurs.methods.structures import LayoutContext, build_structure
from secateurs.methods.training.regularization import PENALTIES, PenaltyGroups, RegularizedPruning
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.runner import MetricEvent, Pipeline, run_recipe
from secateurs.train.engine import TrainState


def groups_of(model: nn.Module, structure: str, sites: str = "producers", **options: object) -> PenaltyGroups:
    selection = LayerSelection()
    names = select_parameters(model, selection)
    example = torch.zeros(2, model[0].in_features) if structure == "channel" else None
    layout = build_structure(structure, **options).layout(LayoutContext(model, names, selection, example))
    return PenaltyGroups.from_layout(layout, model, sites)


def gradient(
    model: nn.Module, groups: PenaltyGroups, penalty: str, coefficients: Tensor
) -> dict[str, Tensor]:
    """The gradient `add_gradient` adds to zero grads, and a check that autograd of `value` agrees."""
    params = dict(model.named_parameters())
    for p in params.values():
        p.grad = torch.zeros_like(p)
    PENALTIES.get(penalty).add_gradient(groups, params, coefficients)
    added = {n: p.grad.clone() for n, p in params.items()}
    for p in params.values():
        p.grad = None
    PENALTIES.get(penalty).value(groups, params, coefficients).backward()
    for n, p in params.items():
        expected = p.grad if p.grad is not None else torch.zeros_like(p)
        assert torch.allclose(added[n], expected, atol=1e-6), n
    return added


# -- penalties on weights: hand-computed ---------------------------------------------------------
W = torch.tensor([[3.0, -4.0, 0.0, 1.0], [0.0, 0.0, -2.0, 2.0]])


def linear_pair() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(4, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(W)
        model[2].weight.copy_(torch.tensor([[1.0, 2.0], [-2.0, 0.5]]))
    return model


def test_l2_and_l1_gradients_on_single_weights_are_c_w_and_c_sign_w() -> None:
    model = linear_pair()
    groups = groups_of(model, "unstructured")
    assert groups.num_groups == 8 + 4 and groups.units == ["0.weight", "2.weight"]
    c = torch.arange(12, dtype=torch.float32) / 10  # one coefficient per weight, in row-major order
    l2 = gradient(model, groups, "l2", c)
    assert torch.equal(l2["0.weight"], c[:8].reshape(2, 4) * W)
    l1 = gradient(model, groups, "l1", c)
    assert torch.equal(l1["0.weight"], c[:8].reshape(2, 4) * torch.sign(W))
    assert l1["0.weight"][0, 2] == 0  # the subgradient at 0 is 0
    assert torch.allclose(
        PENALTIES.get("l2").value(groups, dict(model.named_parameters()), c),
        torch.tensor(
            0.5
            * float(
                (c[:8].reshape(2, 4) * W**2).sum()
                + (c[8:].reshape(2, 2) * model[2].weight.detach() ** 2).sum()
            )
        ),
    )


def test_group_lasso_on_blocks_is_c_w_over_the_block_norm() -> None:
    model = linear_pair()
    groups = groups_of(model, "block", bh=1, bw=2)  # blocks (3, -4), (0, 1), (0, 0), (-2, 2) of layer 0
    c = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.0, 0.0])
    g = gradient(model, groups, "group_lasso", c)["0.weight"]
    expected = torch.tensor(
        [[3 / 5, -4 / 5, 0.0, 2 * 1 / 1], [0.0, 0.0, 0.5 * -2 / math.sqrt(8), 0.5 * 2 / math.sqrt(8)]]
    )
    expected[1, :2] = 0  # a zero block has gradient 0 (the smallest subgradient), not NaN
    assert torch.allclose(g, expected)
    value = PENALTIES.get("group_lasso").value(groups, dict(model.named_parameters()), c)
    assert math.isclose(float(value.detach()), 1 * 5 + 2 * 1 + 3 * 0 + 0.5 * math.sqrt(8), rel_tol=1e-6)


def test_channel_groups_penalise_filters_or_every_tensor_of_the_group() -> None:
    model = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(W)
        model[0].bias.copy_(torch.tensor([1.0, -1.0]))
        model[2].weight.copy_(torch.tensor([[1.0, 2.0], [-2.0, 0.5]]))
    c = torch.tensor([2.0, 3.0])  # one per hidden neuron (the output layer's channels are kept)
    filters = groups_of(model, "channel", sites="producers")
    assert filters.num_groups == 2
    g = gradient(model, filters, "l2", c)
    assert torch.equal(g["0.weight"], c[:, None] * W)
    assert torch.equal(g["0.bias"], torch.zeros(2)) and torch.equal(g["2.weight"], torch.zeros(2, 2))

    every = groups_of(model, "channel", sites="all")  # the filter, its bias and the column reading it
    g = gradient(model, every, "group_lasso", c)
    w2 = model[2].weight.detach()
    norms = torch.sqrt((W**2).sum(1) + torch.tensor([1.0, 1.0]) + (w2**2).sum(0))
    assert torch.allclose(g["0.weight"], (c / norms)[:, None] * W)
    assert torch.allclose(g["0.bias"], c / norms * torch.tensor([1.0, -1.0]))
    assert torch.allclose(g["2.weight"], (c / norms)[None, :] * w2)
    assert torch.allclose(every.counts(), torch.tensor([4.0 + 1 + 2, 4.0 + 1 + 2]))
    assert torch.allclose(filters.mean_abs(dict(model.named_parameters())), torch.tensor([2.0, 1.0]))


def small_convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


@pytest.mark.parametrize(
    ("structure", "options"),
    [("unstructured", {}), ("nm", {"n": 2, "m": 4}), ("block", {"bh": 2, "bw": 4}), ("channel", {})],
)
def test_penalty_group_g_is_the_group_the_structure_scores_at_position_g(
    structure: str, options: dict[str, Any]
) -> None:
    model = small_convnet()
    layout, scores = score_groups(
        model, criterion="magnitude", structure=structure, structure_options=options, input_shape=(4, 6, 6)
    )
    groups = PenaltyGroups.from_layout(layout, model, "producers")
    expected = torch.cat([scores[u.name] for u in layout.units]).float()  # Σ|w| per group, layout order
    assert groups.num_groups == expected.numel() and groups.units == [u.name for u in layout.units]
    assert torch.allclose(groups.group_sum(dict(model.named_parameters()), torch.abs).detach(), expected)


# -- schedules, driven step by step ----------------------------------------------------------------
def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))


def batches(n: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 12, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(n)]


def schedule(kind: str, model: nn.Module, sparsity: float = 0.5, **options: Any) -> RegularizedPruning:
    """A `RegularizedPruning` of method `kind` on `model` (12 inputs), picking as a prune stage would."""
    return schedule_of(kind, model, sparsity, shape=(12,), **options)


class Loop:
    """The training loop's calls to a callback, one step at a time (plain SGD, no state)."""

    def __init__(self, model: nn.Module, callback: Any, lr: float = 0.1) -> None:
        self.model, self.callback = model, callback
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        self.state = TrainState(model, optimizer, scheduler, 0, 0, 10_000, 100, 0.0)
        self.after_step: list[Callable[[int], None]] = []

    def start(self) -> Loop:
        self.callback.on_train_start(self.state)
        return self

    def step(self, x: Tensor, y: Tensor) -> None:
        s = self.state
        device = next(self.model.parameters()).device
        x, y = x.to(device), y.to(device)
        s.optimizer.zero_grad()
        nn.functional.cross_entropy(self.model(x), y).backward()
        self.callback.on_backward(s)
        s.optimizer.step()
        s.step += 1
        self.callback.on_step_end(s)
        for fn in self.after_step:
            fn(s.step)

    def run(self, data: list[tuple[Tensor, Tensor]]) -> None:
        for x, y in data:
            self.step(x, y)


def picked_coefficients(reg: RegularizedPruning) -> set[float]:
    assert reg.coefficients is not None and reg.picked is not None
    return set(reg.coefficients[reg.picked].tolist())


def test_greg1_coefficient_after_k_updates_is_k_delta_capped_then_prunes_after_stabilizing() -> None:
    model = mlp()
    reg = schedule("greg1", model, delta=0.25, ceiling=1.0, interval=2, stabilize=3, ratio_limit=1e30)
    loop = Loop(model, reg).start()
    assert reg.picked is not None and int(reg.picked.sum()) == 64  # half of the 128 weights
    assert picked_coefficients(reg) == {0.25} and set(reg.coefficients[~reg.picked].tolist()) == {0.0}
    seen: dict[int, tuple[set[float], str]] = {}
    loop.after_step.append(lambda s: seen.__setitem__(s, (picked_coefficients(reg), reg.phase)))
    loop.run(batches(14))
    for s in range(1, 12):  # updates at the start and after steps 2, 4, …: k = 1 + s // 2
        assert seen[s][0] == {min((1 + s // 2) * 0.25, 1.0)}, s
    assert reg.finished_at == 6 and reg.stopped == "ceiling"  # k = 4: 4·0.25 reaches the ceiling
    assert seen[8][1] == "stabilize" and seen[9][1] == "pruned" and reg.pruned_at == 9  # 6 + 3
    masks = masks_of(model)
    assert masks is not None and masks.equal(reg.masks)
    assert (
        float(model[0].weight.detach()[~masks["0.weight"]].abs().max()) == 0.0
    )  # stays pruned while finetuning


@pytest.mark.parametrize("stop", ["each", "all"])
def test_greg1_stops_growing_when_the_smoothed_magnitude_ratios_pass_the_limit(stop: str) -> None:
    model = mlp()
    options = {"delta": 0.5, "ceiling": 100.0, "interval": 1, "stabilize": 1, "ratio_limit": 20.0}
    reg = schedule("greg1", model, stop=stop, **options)
    loop = Loop(model, reg, lr=0.2).start()
    assert reg.groups is not None and reg.picked is not None
    groups, picked = reg.groups, reg.picked
    expected: Tensor | None = None
    history: list[tuple[int, Tensor, Tensor]] = []

    def check(step: int) -> None:
        nonlocal expected
        if reg.phase == "pruned":
            return
        assert reg.ratio is not None and reg.grown is not None
        w = groups.mean_abs(dict(model.named_parameters())).detach()
        ratio = torch.stack(
            [
                w[(groups.unit_of == u) & ~picked].mean() / w[(groups.unit_of == u) & picked].mean()
                for u in range(2)
            ]
        )
        expected = ratio if expected is None else 0.9 * expected + 0.1 * ratio
        assert torch.allclose(reg.ratio, expected), step  # the callback's, updated at this step
        history.append((step, expected.clone(), reg.grown.clone()))

    check(0)
    loop.after_step.append(check)
    loop.run(batches(60))
    assert reg.stopped == "ratio" and reg.finished_at is not None
    first = {u: next(step for step, smoothed, _ in history if smoothed[u] >= 20.0) for u in range(2)}
    together = next(step for step, smoothed, _ in history if bool((smoothed >= 20.0).all()))
    assert min(first.values()) < together  # one unit passed first: the two rules differ here
    stops = first if stop == "each" else dict.fromkeys(range(2), together)
    assert reg.finished_at == max(stops.values())
    for u in range(2):  # grew at every update up to and including its stop, never after
        assert int(reg.grown[u]) == stops[u] + 1


def test_greg2_grows_a_uniform_penalty_and_picks_by_magnitude_at_the_picking_ceiling() -> None:
    model = mlp()
    reg = schedule(
        "greg2",
        model,
        pick_delta=0.125,
        pick_ceiling=0.5,
        delta=0.25,
        ceiling=2.0,
        recover=-0.0625,
        interval=1,
    )
    loop = Loop(model, reg).start()
    seen: dict[int, Any] = {}

    def check(step: int) -> None:
        assert reg.coefficients is not None
        if step < 3:  # updates at the start and after steps 1, 2: k·δ on every group, nothing picked
            assert reg.phase == "pick" and reg.masks is None
            assert set(reg.coefficients.tolist()) == {(step + 1) * 0.125}
        elif step == 3:  # the 4th update reaches 0.5: the set is picked on these very weights
            assert reg.phase == "grow" and reg.masks is not None
            assert reg.masks.equal(compute_masks(model, 0.5, input_shape=(12,)))
            seen["picked"] = reg.picked.clone()
        elif step < 6:  # then the picked groups grow on from the picking ceiling, the kept recover
            assert picked_coefficients(reg) == {0.5 + (step - 3) * 0.25}
            assert set(reg.coefficients[~reg.picked].tolist()) == {-0.0625}

    loop.after_step.append(check)
    loop.run(batches(6))
    assert "picked" in seen and torch.equal(reg.picked, seen["picked"])  # picked once


def test_fixed_penalty_holds_its_coefficient_for_its_steps_then_prunes() -> None:
    model = mlp()
    reg = schedule("reg_fixed", model, strength=0.25, steps=5, penalty="group_lasso", interval=2)
    loop = Loop(model, reg).start()
    phases = {}
    loop.after_step.append(lambda s: phases.__setitem__(s, (reg.phase, picked_coefficients(reg))))
    loop.run(batches(8))
    assert all(phases[s] == ("grow", {0.25}) for s in range(1, 5))
    assert reg.finished_at == 5 and reg.pruned_at == 5 and reg.stopped == "steps"
    assert masks_of(model) is not None and masks_of(model).equal(reg.masks)


def test_after_greg_the_pruned_channels_are_near_zero_and_removing_them_barely_changes_the_output() -> None:
    model = mlp()
    reg = schedule(
        "greg1",
        model,
        structure="channel",
        allocation="uniform",
        sites="all",
        delta=0.5,
        ceiling=50.0,
        interval=1,
        stabilize=0,
        ratio_limit=1e4,
    )
    loop = Loop(model, reg, lr=0.1).start()
    probe = torch.randn(64, 12, generator=torch.Generator().manual_seed(5))
    before: dict[str, Tensor] = {}

    class Before:  # sees each step's weights before the schedule prunes them
        def on_step_end(self, state: TrainState) -> None:
            with torch.no_grad():
                before["out"] = model(probe)
                before["mag"] = reg.groups.mean_abs(dict(model.named_parameters()))

    watcher, schedule_end = Before(), reg.on_step_end
    reg.on_step_end = lambda state: (watcher.on_step_end(state), schedule_end(state))  # type: ignore[method-assign]
    loop.run(batches(80))
    assert reg.phase == "pruned" and reg.stopped == "ratio" and reg.picked is not None
    assert int(reg.picked.sum()) == 4  # half of the 8 hidden neurons
    assert float(before["mag"][reg.picked].max()) < 1e-3  # every entry of the pruned groups ~0
    with torch.no_grad():
        after = model(probe)
    scale = float(before["out"].abs().max())
    assert float((after - before["out"]).abs().max()) < 1e-3 * scale


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_schedule_runs_on_the_models_device_and_picks_as_on_the_cpu() -> None:
    options = {
        "structure": "channel",
        "sites": "all",
        "delta": 0.25,
        "interval": 1,
        "stabilize": 2,
        "ratio_limit": 1e30,
    }
    data = batches(12)
    results = {}
    for device in ("cpu", "cuda"):
        model = mlp().to(device)
        reg = schedule("greg1", model, **options)
        Loop(model, reg).start().run(data)
        assert reg.coefficients is not None and reg.coefficients.device.type == device
        assert all(site.ids.device.type == device for site in reg.groups.sites)
        results[device] = (reg.picked.cpu(), reg.coefficients.cpu(), reg.phase)
    assert torch.equal(results["cpu"][0], results["cuda"][0]) and results["cpu"][2] == results["cuda"][2]
    assert torch.allclose(results["cpu"][1], results["cuda"][1])


def test_a_recipe_prunes_channels_with_greg_and_publishes_its_schedule() -> None:
    block = {"structure": "channel", "allocation": "uniform", "sites": "all", "delta": 0.5, "interval": 1}
    block |= {"stabilize": 2, "ratio_limit": 100.0}
    raw = tiny_recipe({"train": {"greg1": block}}, {"train": {}}, {"evaluate": {}}, iterations=40)
    events: list[MetricEvent] = []
    result = run_recipe(recipe_from_raw(raw), on_metrics=events.append)
    rows = [e for e in events if e.kind == "greg1"]
    assert rows[0].step == 0 and rows[0].metrics["coefficient_max"] == 0.5  # the first update, at the start
    summary = rows[-1].metrics
    assert summary["pruned"] == 1.0 and summary["stopped_by_budget"] == 0.0 and summary["picked_groups"] == 8
    assert summary["pruned_at"] == summary["finished_at"] + 2 < 40  # pruned by the rule, then finetuned
    hidden = result.masks["features.1.weight"].all(1)  # the MLP's 16 hidden neurons (20 inputs each)
    assert int(hidden.sum()) == 8 and not bool(result.masks["features.1.weight"][~hidden].any())
    assert torch.equal(result.masks["classifier.weight"].all(0), hidden)  # the columns reading them went too


# -- saving and resuming ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["greg1", "greg2"])
def test_a_schedule_resumed_from_its_state_mid_way_continues_bit_for_bit(kind: str) -> None:
    options = {"delta": 0.25, "ceiling": 4.0, "interval": 2, "stabilize": 3, "ratio_limit": 30.0}
    if kind == "greg2":
        options.update(pick_delta=0.125, pick_ceiling=0.5)
    data = batches(40)
    model = mlp()
    whole = schedule(kind, model, **options)
    loop = Loop(model, whole).start()
    loop.run(data[:7])  # mid-way: growing (greg2: just picked)
    saved = whole.state_dict()
    copy_ = copy.deepcopy(model)
    resumed = schedule(kind, copy_, **options)
    resumed.load_state_dict(saved)
    second = Loop(copy_, resumed)
    second.state.step = loop.state.step
    second.start()
    assert resumed.phase == whole.phase and torch.equal(resumed.coefficients, whole.coefficients)
    loop.run(data[7:])
    second.run(data[7:])
    assert whole.phase == resumed.phase == "pruned" and whole.pruned_at == resumed.pruned_at
    assert masks_of(model).equal(masks_of(copy_))
    for (name, a), b in zip(model.state_dict().items(), copy_.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert whole.records == resumed.records and whole.records[-1].phase == "pruned"


def greg_recipe() -> Any:
    return recipe_from_raw(
        tiny_recipe(
            {"train": {}},
            {"train": {"greg1": {"delta": 0.5, "interval": 1, "stabilize": 2, "ratio_limit": 50.0}}},
            {"train": {}},
            {"evaluate": {"label": "final"}},
            iterations=12,
        )
    )


@pytest.mark.parametrize("crash_stage", [2, 3])  # the regularized stage; the finetuning after it
def test_a_run_resumed_after_a_crash_equals_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_stage: int
) -> None:
    clean = Pipeline(greg_recipe())
    clean_result = clean.run()
    resumed = resumed_after_crash(greg_recipe, tmp_path, monkeypatch, crash_stage)
    if crash_stage == 3:  # the schedule's state was saved with the regularized stage
        assert resumed.state.kept["greg1"]["phase"] == "pruned"
    assert_same_run(resumed.run(), clean_result)
    assert clean.state.kept == {}  # the finetuning stage drops what described the weights before it


# -- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"greg1": {"delta": 0}}, "stages.1.train.greg1.delta"),
        ({"greg1": {"ratio_limit": 1}}, "stages.1.train.greg1.ratio_limit"),
        ({"greg1": {"penalty": "l3"}}, "unknown penalty 'l3'; use one of group_lasso, l1, l2"),
        ({"greg1": {"sites": "filters"}}, "stages.1.train.greg1.sites"),
        ({"greg2": {"pick_ceiling": 2.0}}, "pick_ceiling (2.0) must be below ceiling (1.0)"),
        ({"greg2": {"pick_delta": 0.1}}, "pick_delta (0.1) is larger than pick_ceiling (0.01)"),
        ({"reg_fixed": {"strenght": 1e-3}}, "did you mean 'strength'?"),
        ({"reg_fixed": {"steps": 0}}, "stages.1.train.reg_fixed.steps"),
        ({"reg_fixed": {"structure": "chanel"}}, "Did you mean 'channel'?"),
        ({"greg1": {"reconstruct": "obs"}}, "reconstruction apply to prune stages"),
    ],
)
def test_bad_options_give_one_clear_error(block: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        recipe_from_raw(tiny_recipe({"train": {}}, {"train": block}))
    assert expected in str(info.value) and "Traceback" not in str(info.value)


def test_the_cli_names_a_bad_option_in_one_line(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe({"train": {"greg1": {"ceiling": -1}}})))
    result = CliRunner().invoke(cli.app, ["run", str(recipe), "--no-progress"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "stages.0.train.greg1.ceiling" in lines[0]
