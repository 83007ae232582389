"""Trainability-preserving pruning (issue 24): the Gram penalty and its gradient by hand, the
coefficient's schedule, the decorrelation it buys, the Jacobian singular values it publishes,
resuming, and option errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from regularized import SHAPE, bn_lenet_recipe, convnet, image_batches, schedule_of
from resuming import assert_same_run, resumed_after_crash
from test_regularization import Loop
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import masks_of
from secateurs.methods.training.regularization.tpp import (
    TrainabilityPreserving,
    gram_penalty,
    gram_penalty_grad,
)
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.result import MetricEvent
from secateurs.pipeline.runner import Pipeline, run_recipe


# -- the Gram penalty ---------------------------------------------------------------------------------
def test_the_penalty_is_zero_when_pruned_and_kept_filters_are_orthogonal() -> None:
    kept = torch.tensor([[1.0, 2.0, 0.0, 0.0], [-2.0, 1.0, 0.0, 0.0]])
    pruned = torch.tensor([[0.0, 0.0, 3.0, 1.0], [0.0, 0.0, 1.0, -1.0]])
    w = torch.cat([kept[:1], pruned[:1], kept[1:], pruned[1:]])  # rows 1 and 3 pruned
    which = torch.tensor([False, True, False, True])
    assert float(gram_penalty(w, which, pruned_block=False)) == 0.0
    block = (pruned @ pruned.T).square().sum() / 16  # the paper's form also shrinks the pruned filters
    assert torch.allclose(gram_penalty(w, which), block)
    tilted = w.clone()
    tilted[1, 0] = 0.5  # a pruned filter leaning on a kept one: the coupling term is positive
    assert float(gram_penalty(tilted, which, pruned_block=False)) > 0
    assert float(gram_penalty(w, torch.zeros(4, dtype=torch.bool))) == 0.0  # nothing pruned: nothing to pay


def test_the_gradient_equals_the_hand_computed_one() -> None:
    # W = [[a, b], [c, d]], row 1 pruned: L = (2(ac + bd)² + (c² + d²)²) / 4, so
    # ∂L/∂a = (ac + bd)c, ∂L/∂b = (ac + bd)d, ∂L/∂c = (ac + bd)a + (c² + d²)c, ∂L/∂d = (ac + bd)b + (c² + d²)d
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    which = torch.tensor([False, True])
    assert torch.equal(gram_penalty_grad(w, which), torch.tensor([[33.0, 44.0], [86.0, 122.0]]))
    assert float(gram_penalty(w, which)) == (2 * 11**2 + 25**2) / 4
    # kept × pruned only: L = 2(ac + bd)²/4, ∂L/∂c = (ac + bd)a, ∂L/∂d = (ac + bd)b
    assert torch.equal(
        gram_penalty_grad(w, which, pruned_block=False), torch.tensor([[33.0, 44.0], [11.0, 22.0]])
    )


@pytest.mark.parametrize("pruned_block", [True, False])
def test_the_gradient_of_a_conv_kernel_agrees_with_autograd(pruned_block: bool) -> None:
    weight = torch.randn(6, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    which = torch.tensor([True, False, False, True, False, True])
    leaf = weight.clone().requires_grad_(True)
    gram_penalty(leaf, which, pruned_block=pruned_block).backward()
    torch.testing.assert_close(gram_penalty_grad(weight, which, pruned_block=pruned_block), leaf.grad)


# -- the schedule -----------------------------------------------------------------------------------
def test_r_grows_by_delta_per_update_to_the_ceiling_then_the_set_is_pruned_after_stabilizing() -> None:
    model = convnet()
    reg = schedule_of("tpp", model, delta=0.01, ceiling=0.04, interval=2, stabilize=3, jsv_samples=0)
    assert isinstance(reg, TrainabilityPreserving)
    loop = Loop(model, reg, lr=0.01).start()
    assert reg.picked is not None and int(reg.picked.sum()) == 4 + 3  # half of each conv's channels
    seen: dict[int, tuple[float, str]] = {}
    loop.after_step.append(lambda s: seen.__setitem__(s, (reg.r, reg.phase)))
    loop.run(image_batches(12))
    for s in range(1, 6):  # updates at the start and after steps 2, 4, …: k = 1 + s // 2
        assert seen[s][0] == min((1 + s // 2) * 0.01, 0.04), s
    assert reg.finished_at == 6 and reg.stopped == "ceiling"
    assert seen[8][1] == "stabilize" and seen[9][1] == "pruned" and reg.pruned_at == 9
    masks = masks_of(model)
    assert masks is not None and masks.equal(reg.masks)
    assert float(model[0].weight.detach()[~masks["0.weight"]].abs().max()) == 0.0


def test_the_added_gradient_is_l2_plus_the_weighted_gram_term_plus_the_pruned_batchnorm() -> None:
    model = convnet()
    reg = schedule_of("tpp", model, delta=0.25, ceiling=1.0, scale=3.0, jsv_samples=0)
    loop = Loop(model, reg).start()
    assert reg.r == 0.25
    params = dict(model.named_parameters())
    for p in params.values():
        p.grad = torch.zeros_like(p)
    reg.on_backward(loop.state)
    masks = reg.masks
    assert masks is not None
    for conv, bn in (("0", "1"), ("3", "4")):
        w = params[f"{conv}.weight"].detach()
        rows = ~masks[f"{conv}.weight"].reshape(w.shape[0], -1).any(1)  # the pruned filters
        expected = 0.25 * w * rows[:, None, None, None] + 3.0 * 0.25 * gram_penalty_grad(w, rows)
        torch.testing.assert_close(params[f"{conv}.weight"].grad, expected)
        for name in (f"{conv}.bias", f"{bn}.weight", f"{bn}.bias"):
            torch.testing.assert_close(params[name].grad, 0.25 * params[name].detach() * rows)
    assert float(params["8.weight"].grad.abs().max()) == 0.0  # the classifier only reads channels


def test_tpp_decorrelates_the_pruned_filters_and_publishes_the_jacobian_singular_values() -> None:
    model = convnet()
    probe = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(3))
    options = {"pruned_block": False, "l2": False, "bn": False}  # the coupling term alone
    reg = schedule_of("tpp", model, delta=0.05, ceiling=0.5, scale=200.0, interval=1, stabilize=40, **options)
    assert isinstance(reg, TrainabilityPreserving)
    reg.inputs = lambda: probe
    w0 = model[0].weight.detach().clone().reshape(8, -1)
    Loop(model, reg, lr=0.05).start().run(image_batches(60))
    assert reg.phase == "pruned" and reg.masks is not None and reg.before_prune is not None
    rows = ~reg.masks["0.weight"].reshape(8, -1).any(1)

    def cosines(w: torch.Tensor) -> float:  # the largest |cos| between a kept and a pruned filter
        unit = w / w.norm(dim=1, keepdim=True)
        return float((unit[~rows] @ unit[rows].T).abs().max())

    before, after = cosines(w0), cosines(reg.before_prune["0.weight"].reshape(8, -1))
    assert before > 0.3 and after < 0.1 * before, (before, after)
    summary = reg.summary()
    for when in ("start", "regularized", "pruned"):
        assert {f"jsv_{k}_{when}" for k in ("mean", "std", "max", "min")} <= set(summary)
    assert summary["jsv_max_start"] >= summary["jsv_min_start"] > 0
    assert summary["gram_penalty_regularized"] < 1e-3 * summary["gram_penalty_start"]


# -- through a recipe ---------------------------------------------------------------------------------
def tpp_recipe(**block: Any) -> Any:
    options = {"delta": 0.01, "ceiling": 0.04, "interval": 2, "stabilize": 2, "jsv_samples": 4, **block}
    return recipe_from_raw(bn_lenet_recipe("tpp", options))


def test_a_recipe_prunes_with_tpp_and_publishes_the_isometry_before_and_after() -> None:
    events: list[MetricEvent] = []
    result = run_recipe(tpp_recipe(), on_metrics=events.append)
    rows = [e.metrics for e in events if e.kind == "tpp"]
    last = rows[-1]
    assert last["pruned"] == 1.0 and last["finished_at"] == 6.0 and last["pruned_at"] == 8.0
    for when in ("start", "regularized", "pruned"):
        assert last[f"jsv_mean_{when}"] > 0
    masks = result.masks
    assert masks is not None
    conv = masks["features.0.weight"].reshape(masks["features.0.weight"].shape[0], -1).any(1)
    assert int(conv.sum()) == 1  # lenet5 at width 0.5: 3 channels, half removed (2, rounded half up)


@pytest.mark.parametrize("crash_stage", [2, 3])  # the TPP stage; the finetuning after it
def test_a_run_resumed_after_a_crash_equals_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_stage: int
) -> None:
    clean = Pipeline(tpp_recipe()).run()
    assert_same_run(resumed_after_crash(tpp_recipe, tmp_path, monkeypatch, crash_stage).run(), clean)


def test_a_schedule_resumed_from_its_state_mid_way_continues_bit_for_bit() -> None:
    options = {"delta": 0.01, "ceiling": 0.05, "interval": 2, "stabilize": 3, "jsv_samples": 0}
    data = image_batches(20)
    model = convnet()
    whole = schedule_of("tpp", model, **options)
    loop = Loop(model, whole, lr=0.02).start()
    loop.run(data[:5])  # mid-way: growing
    saved = whole.state_dict()
    twin = copy.deepcopy(model)
    resumed = schedule_of("tpp", twin, **options)
    resumed.load_state_dict(saved)
    second = Loop(twin, resumed, lr=0.02)
    second.state.step = loop.state.step
    second.start()
    assert resumed.r == whole.r and resumed.phase == whole.phase == "grow"
    loop.run(data[5:])
    second.run(data[5:])
    assert whole.phase == resumed.phase == "pruned" and whole.pruned_at == resumed.pruned_at
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# -- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"structure": "unstructured"}, "structure 'unstructured' has none; use one of channel, heads"),
        ({"structure": "nm"}, "decorrelates whole filters"),
        ({"delta": 2.0}, "delta (2.0) is larger than ceiling (1.0)"),
        ({"scale": 0}, "stages.1.train.tpp.scale"),
        ({"scael": 10}, "did you mean 'scale'?"),
        ({"jsv_samples": -1}, "stages.1.train.tpp.jsv_samples"),
    ],
)
def test_bad_options_give_one_clear_error(block: dict[str, Any], expected: str) -> None:
    raw = {
        "name": "bad",
        "data": {"name": "synthetic", "options": {"input_shape": [20], "num_classes": 3}},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "train": {"iterations": 2},
        "stages": [{"train": {}}, {"train": {"tpp": block}}],
    }
    with pytest.raises(ConfigError) as info:
        recipe_from_raw(raw)
    assert expected in str(info.value) and "Traceback" not in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_tpp_without_a_sparsity_or_with_nothing_to_prune_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    reg = schedule_of("tpp", model, sparsity=0.0, shape=(4,), jsv_samples=0)
    with pytest.raises(ConfigError, match="removes no groups"):
        Loop(model, reg).start()


def test_tpp_on_transformer_heads_decorrelates_the_pruned_heads_projection_rows() -> None:
    pytest.importorskip("transformers")
    from test_llm_structured import IDS, llama

    model = llama().train()
    reg = schedule_of(
        "tpp", model, shape=None, structure="heads", jsv_samples=0, delta=0.5, interval=1, stabilize=1
    )
    assert isinstance(reg, TrainabilityPreserving)
    loop = Loop(model, reg)
    loop.start()
    filters = {rows.name: rows.pruned for rows in reg.filters}
    q, k = (
        filters["model.layers.0.self_attn.q_proj.weight"],
        filters["model.layers.0.self_attn.k_proj.weight"],
    )
    assert (int(q.sum()), int(k.sum())) == (
        32,
        16,
    )  # half of 4 query heads of 16 rows, 1 of 2 key/value heads
    assert torch.equal(q.reshape(4, 16).all(1) | ~q.reshape(4, 16).any(1), torch.ones(4, dtype=torch.bool))
    for _ in range(3):  # a causal-LM step: next-token loss on the ids
        loop.state.optimizer.zero_grad()
        logits = model(input_ids=IDS).logits
        nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), IDS[:, 1:].reshape(-1)
        ).backward()
        reg.on_backward(loop.state)
        loop.state.optimizer.step()
        loop.state.step += 1
        reg.on_step_end(loop.state)
    assert (
        reg.phase == "pruned"
        and reg.summary()["gram_penalty_regularized"] < reg.summary()["gram_penalty_start"]
    )
    masks = masks_of(model)
    assert masks is not None and not bool(masks["model.layers.0.self_attn.q_proj.weight"][q].any())
