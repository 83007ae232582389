"""Dynamic sparse training: exact counts, zero-started regrowth, reset optimizer state, RigL's growth rule."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_recipe
from torch import nn

import secateurs
from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, masks_of
from secateurs.core.topk import topk_mask
from secateurs.core.topk_sieve import flat_nonzero
from secateurs.eval.training_flops import TrainingFlops, forward_cost
from secateurs.methods.pruning import prune
from secateurs.methods.training import dst
from secateurs.methods.training.dst import (
    UPDATERS,
    DsrUpdater,
    DynamicSparseTraining,
    DynamicSparsity,
    LayerView,
    RigLUpdater,
    SnfsUpdater,
    distribute,
    drop_fraction_at,
)
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.runner import MetricEvent, run_recipe
from secateurs.train import TrainConfig, train
from secateurs.train.engine import Callback, TrainState
from secateurs.train.optim import zero_at, zero_optimizer_state

METHODS = ["set", "dsr", "snfs", "rigl"]


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return prune(model, 0.7, criterion="random", allocation="erk", seed=seed)


def _loader(seed: int = 0, n: int = 64, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


class Recorder(Callback):
    """Masks, weights and optimizer state right after every step (after the DST update)."""

    def __init__(self) -> None:
        self.masks: list[MaskSet] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.momenta: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, state: TrainState) -> None:
        masks = masks_of(state.model)
        assert masks is not None
        params = dict(state.model.named_parameters())
        self.masks.append(MaskSet(masks))
        self.weights.append({n: params[n].detach().clone() for n in masks})
        self.momenta.append({n: state.optimizer.state[params[n]]["momentum_buffer"].clone() for n in masks})


def _run(method: str, seed: int = 0, **dst: object) -> tuple[nn.Module, DynamicSparseTraining, Recorder]:
    model = _model(seed)
    options = {"update_every": 2, "drop_fraction": 0.5, "end_fraction": 1.0, **dst}
    updater = DynamicSparseTraining(DynamicSparsity(method=method, **options), seed=seed)
    recorder = Recorder()
    config = TrainConfig(epochs=3, optimizer={"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3})
    train(model, _loader(seed), config, callbacks=[updater, recorder], seed=seed)
    return model, updater, recorder


@pytest.mark.parametrize("method", METHODS)
def test_every_update_keeps_the_exact_number_of_active_weights(method: str) -> None:
    _, updater, recorder = _run(method)
    first = recorder.masks[0]
    assert len(updater.records) == 5  # steps 2, 4, 6, 8, 10 of 12 (end_fraction 1: not at the last step)
    assert [r.step for r in updater.records] == [2, 4, 6, 8, 10]
    for masks in recorder.masks:
        assert masks.kept() == first.kept()
        if method in ("set", "rigl"):  # per-layer counts are fixed; DSR and SNFS move weights between layers
            assert [int(m.sum()) for m in masks.values()] == [int(m.sum()) for m in first.values()]
    assert sum(r.moved for r in updater.records) > 0
    changed = [not recorder.masks[i].equal(recorder.masks[i - 1]) for i in range(1, len(recorder.masks))]
    assert changed == [i + 1 in (2, 4, 6, 8, 10) for i in range(1, len(recorder.masks))]  # at updates only


@pytest.mark.parametrize("method", METHODS)
def test_grown_weights_start_at_zero_with_reset_optimizer_state(method: str) -> None:
    _, updater, recorder = _run(method)
    for i, step in enumerate(range(1, len(recorder.masks) + 1)):
        if not updater.is_update_step(step):
            continue
        before, after = recorder.masks[i - 1], recorder.masks[i]
        for name in after:
            grown = after[name] & ~before[name]
            assert torch.equal(recorder.weights[i][name][grown], torch.zeros(int(grown.sum())))
            assert torch.equal(recorder.momenta[i][name][grown], torch.zeros(int(grown.sum())))
            dropped = before[name] & ~after[name]
            assert torch.equal(recorder.momenta[i][name][dropped], torch.zeros(int(dropped.sum())))
            # pruned weights are zero throughout
            assert torch.equal(
                recorder.weights[i][name][~after[name]], torch.zeros(int((~after[name]).sum()))
            )


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_gives_the_same_masks_at_every_step(method: str) -> None:
    _, _, first = _run(method, seed=3)
    _, _, second = _run(method, seed=3)
    assert all(a.equal(b) for a, b in zip(first.masks, second.masks, strict=True))
    _, _, other = _run(method, seed=4)
    assert not all(a.equal(b) for a, b in zip(first.masks, other.masks, strict=True))


def _view(weight: list[float], mask: list[bool], grad: list[float] | None = None) -> LayerView:
    g = torch.tensor(grad) if grad is not None else None
    return LayerView("w", torch.tensor(weight), torch.tensor(mask), g, None)


def test_rigl_grows_exactly_the_largest_dense_gradients_among_inactive_weights() -> None:
    layer = _view(
        weight=[0.9, -0.1, 0.5, 0.0, 0.0, 0.0, 0.3, 0.0],
        mask=[True, True, True, False, False, False, True, False],
        grad=[5.0, 9.0, 0.1, 0.2, 3.0, -4.0, 0.0, 1.0],
    )
    # 4 active, fraction 0.5 -> drop 2: the smallest magnitudes |-0.1| (1) and |0.3| (6).
    update = RigLUpdater().update([layer], 0.5, torch.Generator())["w"]
    assert update.kept.tolist() == [True, False, True, False, False, False, False, False]
    # grow 2 among the inactive (3, 4, 5, 7 and the just-dropped 1, 6): |g| 9 (1) and 4 (5), never 0 (active)
    assert update.mask.tolist() == [True, True, True, False, False, True, False, False]


def test_snfs_shares_regrowth_by_mean_momentum_and_grows_by_momentum() -> None:
    weight, mask = torch.tensor([1.0, 2.0, 0, 0, 0, 0]), torch.tensor([1, 1, 0, 0, 0, 0]).bool()
    a = LayerView("a", weight, mask, None, torch.tensor([1.0, 1.0, 0.5, 3.0, 0.1, 0.2]))
    b = LayerView("b", weight, mask, None, torch.tensor([3.0, 3.0, 0.5, 0.4, 0.7, 0.2]))
    out = SnfsUpdater().update([a, b], 0.5, torch.Generator())
    # each layer drops 1 (its weight 1.0 at index 0); the 2 to regrow are shared by mean |momentum| of the
    # active weights, 1 : 3 -> 0.5 : 1.5 -> 0 : 1 plus the remainder, tied at .5, to the lower index (a).
    assert int(out["a"].mask.sum()) + int(out["b"].mask.sum()) == 4
    assert out["a"].mask.tolist() == [False, True, False, True, False, False]  # largest inactive |m|: 3 (3)
    assert out["b"].mask.tolist() == [True, True, False, False, False, False]  # 3 at the just-dropped 0


def test_distribute_is_proportional_capped_and_exact() -> None:
    assert distribute(10, [1, 1, 2], [100, 100, 100]) == [
        3,
        2,
        5,
    ]  # ideal 2.5, 2.5, 5: tie to the lower index
    assert distribute(10, [1, 1, 8], [100, 100, 3]) == [4, 3, 3]  # the capped layer's excess is shared again
    assert distribute(4, [0, 0], [2, 5]) == [2, 2]  # no weight: equal shares
    assert sum(distribute(97, [0.3, 2.0, 0.01, 5.0], [10, 40, 30, 25])) == 97
    with pytest.raises(Exception, match="room for 3"):
        distribute(4, [1.0], [3])


def test_dsr_threshold_starts_at_the_target_and_adapts() -> None:
    weights = torch.arange(1.0, 21.0)
    layer = LayerView("w", weights, torch.ones(20, dtype=torch.bool), None, None)
    dsr = DsrUpdater()
    out = dsr.update([layer], 0.25, torch.Generator().manual_seed(0))["w"]
    # it started at the 5th smallest magnitude, 5, which drops 1..4 (strictly below): 4 of the target 5
    assert out.kept.tolist() == [False] * 4 + [True] * 16
    assert int(out.mask.sum()) == 20
    assert dsr.threshold == 10.0  # 4 < (1 - 0.1) * 5: the threshold doubled
    over = DsrUpdater(threshold=100.0)
    over.update([layer], 0.25, torch.Generator())
    assert over.threshold == 50.0  # pruned 19 (a layer keeps one) > 1.1 * 5: halved


def test_cosine_drop_fraction() -> None:
    config = DynamicSparsity(drop_fraction=0.3, drop_schedule="cosine")
    assert drop_fraction_at(config, 0, 100) == pytest.approx(0.3)
    assert drop_fraction_at(config, 50, 100) == pytest.approx(0.15)
    assert drop_fraction_at(config, 25, 100) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert drop_fraction_at(config, 100, 100) == pytest.approx(0.0)
    assert drop_fraction_at(DynamicSparsity(drop_schedule="constant"), 70, 100) == 0.3


def test_updates_stop_at_the_end_fraction() -> None:
    callback = DynamicSparseTraining(DynamicSparsity(update_every=10, end_fraction=0.75))
    callback.end_step = math.floor(0.75 * 100)
    assert [s for s in range(101) if callback.is_update_step(s)] == [10, 20, 30, 40, 50, 60, 70]
    assert [s for s in range(101) if callback.dense_gradient_at(s)] == [10, 20, 30, 40, 50, 60, 70]


def test_training_flops_follow_the_rigl_paper() -> None:
    model = _model()
    cost = forward_cost(model, (12,))
    assert cost.dense == 12 * 16 + 16 * 8 + 8 * 3
    masks = masks_of(model)
    assert masks is not None
    f_s = sum(int(m.sum()) for m in masks.values())
    assert cost.sparse(masks) == f_s
    dst = DynamicSparseTraining(DynamicSparsity(method="rigl", update_every=2, end_fraction=1.0))
    flops = TrainingFlops(cost, 16, dst.dense_gradient_at)
    train(model, _loader(), TrainConfig(epochs=3), callbacks=[flops, dst])
    steps, updates = 12, 5
    assert flops.flops == 2 * 16 * (3 * f_s * steps + (cost.dense - f_s) * updates)
    assert flops.dense_flops == 2 * 16 * 3 * cost.dense * steps


def test_recipe_runs_dst_and_records_updates_and_flops() -> None:
    raw = tiny_recipe(
        {"prune": {"criterion": "random", "allocation": "erk"}},
        {"train": {"dst": {"method": "set", "update_every": 2, "end_fraction": 1.0}}},
        {"evaluate": {"label": "final"}},
        iterations=6,
    )
    events: list[MetricEvent] = []
    result = run_recipe(recipe_from_raw(raw), on_metrics=events.append)
    final = result.records[-1]
    assert final["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert final["train_flops_vs_dense"] == pytest.approx(0.5, abs=0.01)
    assert [e.step for e in events if e.kind == "dst"] == [2, 4]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"train": {"dst": {"method": "rigl"}}}], "needs a sparse model"),
        (
            [{"prune": {}}, {"train": {"dst": {"method": "sett"}}}],
            "unknown dynamic sparse training method 'sett'",
        ),
        ([{"prune": {}}, {"train": {"dst": {}, "prune": {}}}], "has dst and prune: split it"),
        (
            [{"prune": {}}, {"train": {"mask_grads": True, "dst": {"method": "rigl"}}}],
            "needs dense gradients",
        ),
    ],
)
def test_bad_dst_recipes_are_clear_errors(stages: list[dict], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        secateurs.run(tiny_recipe(*stages))


def test_registry_lists_the_four_methods_and_checks_options() -> None:
    assert UPDATERS.names() == ["dsr", "rigl", "set", "snfs"]
    with pytest.raises(ValueError, match="no option 'tolerence'"):  # when the recipe is read
        DynamicSparsity(method="dsr", options={"tolerence": 0.2})
    with pytest.raises(ConfigError, match="no option 'tolerence'"):  # and when built directly
        DynamicSparseTraining(DynamicSparsity.model_construct(method="dsr", options={"tolerence": 0.2}))


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_grown_weights_train_after_they_are_grown(method: str) -> None:
    """The optimizer hooks keep the new masks, not the old ones that would zero grown weights forever."""
    _, _, recorder = _run(method)
    before, after, next_step = recorder.masks[0], recorder.masks[1], recorder.weights[2]  # update at step 2
    grown = {n: after[n] & ~before[n] for n in after}
    assert sum(int(g.sum()) for g in grown.values()) > 0
    # a stale hook would zero every one of them (a grown weight behind a dead unit may stay 0)
    trained = sum(int((next_step[n][g] != 0).sum()) for n, g in grown.items())
    assert trained > sum(int(g.sum()) for g in grown.values()) // 2


def test_rigl_in_a_recipe_grows_by_gradients_that_reach_every_inactive_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A masked gradient (zero off the mask) would make RigL grow the lowest indices, not the steepest."""
    seen: list[tuple[int, int]] = []
    grow_scores = RigLUpdater.grow_scores

    def spy(self: RigLUpdater, layer: LayerView, generator: torch.Generator) -> torch.Tensor:
        assert layer.grad is not None
        inactive = ~layer.mask
        seen.append((int(torch.count_nonzero(layer.grad[inactive])), int(inactive.sum())))
        return grow_scores(self, layer, generator)

    monkeypatch.setattr(RigLUpdater, "grow_scores", spy)
    raw = tiny_recipe(
        {"prune": {"criterion": "random", "allocation": "uniform"}},
        {"train": {"dst": {"method": "rigl", "update_every": 2, "end_fraction": 1.0}}},
        iterations=6,
    )
    run_recipe(recipe_from_raw(raw))
    assert len(seen) == 4  # two updates, two layers
    # a masked gradient is 0 at every inactive weight; a dense one only behind a dead ReLU unit
    assert all(inactive > 0 and nonzero > inactive // 2 for nonzero, inactive in seen), seen


# -- the update path against the code before it was made faster (issue 18) ------------------------------
def _old_grow_strongest(kept: torch.Tensor, scores: torch.Tensor, n: int) -> dst.LayerUpdate:
    """`grow_strongest` as it was: one topk_mask over every entry, the active ones at -inf."""
    flat = kept.reshape(-1)
    candidates = scores.detach().reshape(-1).float().masked_fill(flat, -math.inf)
    return dst.LayerUpdate(kept, (flat | topk_mask(candidates, n)).reshape(kept.shape))


def _old_drop_weakest(layer: LayerView, n: int) -> torch.Tensor:
    active = torch.nonzero(layer.mask.reshape(-1)).reshape(-1)
    magnitudes = layer.weight.detach().reshape(-1)[active].abs().float()
    kept = torch.zeros(layer.mask.numel(), dtype=torch.bool, device=layer.mask.device)
    kept[active[topk_mask(magnitudes, active.numel() - n)]] = True
    return kept.reshape(layer.mask.shape)


@torch.no_grad()
def _old_update(self: DynamicSparseTraining, state: TrainState) -> None:
    """`DynamicSparseTraining.update` as it was."""
    masks = masks_of(state.model)
    assert masks is not None
    params = dict(state.model.named_parameters())
    layers = [
        LayerView(n, params[n], masks[n], params[n].grad, dst.momentum_of(state.optimizer, params[n]))
        for n in masks
    ]
    drop_fraction = drop_fraction_at(self.config, state.step, self.end_step)
    updates = self.updater.update(layers, drop_fraction, self.generator)
    after = sum(int(torch.count_nonzero(updates[n].mask)) for n in masks)
    moved = 0
    for layer in layers:
        u = updates[layer.name]
        grown, dropped = u.mask & ~layer.mask, layer.mask & ~u.mask
        layer.weight.masked_fill_(grown, 0.0)
        zero_optimizer_state(state.optimizer, params[layer.name], grown | dropped)
        moved += int(torch.count_nonzero(grown))
    state.install_masks(MaskSet({n: updates[n].mask for n in masks}))
    self.records.append(dst.UpdateRecord(state.step, drop_fraction, moved, after))


class BitRecorder(Callback):
    """The raw bytes of masks, weights and optimizer state after every step (signed zeros count)."""

    def __init__(self) -> None:
        self.steps: list[list[bytes]] = []

    def on_step_end(self, state: TrainState) -> None:
        masks = masks_of(state.model)
        assert masks is not None
        row = [m.numpy().tobytes() for m in masks.values()]
        row += [p.detach().numpy().tobytes() for p in state.model.parameters()]
        for p in state.model.parameters():
            state_tensors = [v for v in state.optimizer.state[p].values() if isinstance(v, torch.Tensor)]
            row += [v.numpy().tobytes() for v in state_tensors]
        self.steps.append(row)


def _run_wide(method: str, optimizer: dict[str, object]) -> tuple[BitRecorder, DynamicSparseTraining]:
    """A layer of 32,768 weights, large enough for the sieve's fast path, at 90 % sparsity."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    prune(model, 0.9, criterion="random", allocation="erk", seed=0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 256, generator=g), torch.randint(0, 10, (96,), generator=g)
    loader = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 96, 16)]
    updater = DynamicSparseTraining(
        DynamicSparsity(method=method, update_every=2, drop_fraction=0.3, end_fraction=1.0), seed=5
    )
    recorder = BitRecorder()
    train(model, loader, TrainConfig(epochs=2, optimizer=optimizer), callbacks=[updater, recorder], seed=2)
    return recorder, updater


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "optimizer",
    [{"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}, {"name": "adam", "lr": 1e-3}],
    ids=["sgd", "adam"],
)
def test_updates_are_bit_identical_to_the_code_before_the_speed_up(
    monkeypatch: pytest.MonkeyPatch, method: str, optimizer: dict[str, object]
) -> None:
    """Masks, weights (signed zeros included) and optimizer state at every step equal the old path's."""
    recorder, updater = _run_wide(method, optimizer)
    with monkeypatch.context() as patch:
        patch.setattr(dst, "grow_strongest", _old_grow_strongest)
        patch.setattr(dst, "drop_weakest", _old_drop_weakest)
        patch.setattr(DynamicSparseTraining, "update", _old_update)
        reference, old = _run_wide(method, optimizer)
    assert len(updater.records) == 5 and sum(r.moved for r in updater.records) > 0
    assert updater.records == old.records
    assert recorder.steps == reference.steps


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_zeroing_by_index_writes_what_masked_fill_writes(layout: torch.memory_format) -> None:
    """The update zeroes grown weights and moved optimizer state by flat index: +0, in any layout."""
    g = torch.Generator().manual_seed(0)
    value = torch.randn(4, 3, 5, 5, generator=g).to(memory_format=layout)
    where = torch.rand(4, 3, 5, 5, generator=g) < 0.2
    expected = value.clone().masked_fill_(where, 0.0)
    zero_at(value, flat_nonzero(where))
    assert torch.equal(value.contiguous().view(torch.int32), expected.contiguous().view(torch.int32))
    assert value.is_contiguous(memory_format=layout)
