"""ADMM training: the penalty gradient, the Z/U updates and ρ schedule by formula, the hard prune."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import tiny_recipe
from torch import Tensor, nn

import secateurs
from secateurs.core.errors import ConfigError
from secateurs.core.masks import masks_of
from secateurs.methods.projections import project, unification_cost
from secateurs.methods.training.admm import ADMMConfig, ADMMTraining, dual_update, unification_report
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.runner import MetricEvent, run_recipe
from secateurs.train import TrainConfig, train
from secateurs.train.engine import Callback, TrainState

SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.0}


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))


def _loader(seed: int = 0, n: int = 64, batch: int = 16) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 12, generator=g), torch.randint(0, 4, (n,), generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


NAMES = ["0.weight", "2.weight"]


class Snapshots(Callback):
    """Weights after every step, and the ADMM state (Z, U, ρ) after its update at that step."""

    def __init__(self, admm: ADMMTraining) -> None:
        self.admm = admm
        self.weights: list[dict[str, Tensor]] = []
        self.state: list[tuple[dict[str, Tensor], dict[str, Tensor], float]] = []

    def on_step_end(self, state: TrainState) -> None:
        params = dict(state.model.named_parameters())
        self.weights.append({n: params[n].detach().clone() for n in NAMES})
        self.state.append(
            (
                {n: z.clone() for n, z in self.admm.z.items()},
                {n: u.clone() for n, u in self.admm.u.items()},
                self.admm.rho,
            )
        )


def test_dual_update_is_u_plus_w_minus_z() -> None:
    u, w, z = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 3.0]), torch.tensor([1.5, 0.0])
    assert torch.equal(dual_update(u, w, z), torch.tensor([1.0, 2.0]))


def test_the_w_step_adds_rho_times_w_minus_z_plus_u_to_the_gradient() -> None:
    config = ADMMConfig(projection="nm", options={"n": 2, "m": 4}, rho=0.5, update_every=100)
    model, loader = _model(), _loader()
    reference = copy.deepcopy(model)
    admm = ADMMTraining(config, NAMES, None)
    train(model, loader[:1], TrainConfig(iterations=1, optimizer=SGD), callbacks=[admm])
    # by hand: one SGD step on loss + ρ/2‖W − Π(W0)‖² (U = 0), then the hard prune to Π(W1)
    x, y = loader[0]
    nn.functional.cross_entropy(reference(x), y).backward()
    params = dict(reference.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            grad = p.grad + (0.5 * (p - project(p, "nm", n=2, m=4)) if name in NAMES else 0)
            p.sub_(0.05 * grad)
    got = dict(model.named_parameters())
    for name, p in params.items():
        expected = project(p.detach(), "nm", n=2, m=4) if name in NAMES else p.detach()
        torch.testing.assert_close(got[name].detach(), expected, rtol=0, atol=1e-7)


def test_z_and_u_follow_their_formulas_and_rho_grows_with_u_rescaled() -> None:
    config = ADMMConfig(projection="unstructured", rho=0.1, rho_growth=2.0, rho_max=0.3, update_every=2)
    admm = ADMMTraining(config, NAMES, 0.75)
    snaps = Snapshots(admm)
    train(_model(), _loader(), TrainConfig(iterations=6, optimizer=SGD), callbacks=[admm, snaps])
    assert [r.step for r in admm.records] == [2, 4, 6]
    assert [r.rho for r in admm.records] == [0.1, 0.2, 0.3]  # growth 2×, capped at 0.3
    for k, (scale, step) in enumerate([(0.1 / 0.2, 2), (0.2 / 0.3, 4)]):
        u_prev = snaps.state[step - 3][1] if step > 2 else {n: torch.zeros(1) for n in NAMES}
        z, u, rho = snaps.state[step - 1]
        w = snaps.weights[step - 1]
        for n in NAMES:
            expected_z = project(w[n] + u_prev[n], "unstructured", sparsity=0.75)
            assert torch.equal(z[n], expected_z)
            torch.testing.assert_close(u[n], (u_prev[n] + w[n] - expected_z) * scale, rtol=0, atol=1e-7)
        assert rho == admm.records[k + 1].rho


def test_the_hard_prune_installs_the_projection_and_its_support_as_the_mask() -> None:
    model = _model()
    config = ADMMConfig(projection="block", options={"bh": 2, "bw": 2}, update_every=1)
    train(
        model,
        _loader(),
        TrainConfig(iterations=4, optimizer=SGD),
        callbacks=[ADMMTraining(config, NAMES, 0.5)],
    )
    masks = masks_of(model)
    assert masks is not None and sorted(masks) == NAMES
    params = dict(model.named_parameters())
    for n in NAMES:
        assert int(masks[n].sum()) == masks[n].numel() // 2
        blocks = masks[n].reshape(masks[n].shape[0] // 2, 2, -1, 2).permute(0, 2, 1, 3).flatten(2)
        assert bool((blocks.all(-1) | ~blocks.any(-1)).all())  # whole 2×2 blocks
        assert torch.equal(params[n].detach() != 0, masks[n])


def test_the_residual_vanishes_as_rho_grows() -> None:
    """With ρ growing, W is pulled into the set: ‖W − Z‖/‖W‖ falls from ~0.7 to almost 0."""
    config = ADMMConfig(
        projection="nm", options={"n": 1, "m": 4}, rho=0.2, rho_growth=1.3, rho_max=5.0, update_every=4
    )
    admm = ADMMTraining(config, NAMES, None)
    train(_model(), _loader(), TrainConfig(iterations=80, optimizer=SGD), callbacks=[admm])
    residuals = [r.primal_residual for r in admm.records]
    assert residuals[0] > 0.5 and residuals[-1] < 0.01


def _nm_recipe(seed: int = 0) -> dict:
    return tiny_recipe(
        {"train": {}},
        {"train": {"admm": {"projection": "nm", "options": {"n": 2, "m": 4}, "update_every": 1}}},
        {"train": {}},
        {"evaluate": {"label": "final"}},
        seed=seed,
    )


def test_a_recipe_trains_with_admm_then_finetunes_exactly_n_m_sparse() -> None:
    events: list[MetricEvent] = []
    result = run_recipe(recipe_from_raw(_nm_recipe()), on_metrics=events.append)
    masks = masks_of(result.model)
    assert masks is not None
    for name, mask in masks.items():
        assert bool((mask.reshape(-1, 4).sum(1) == 2).all()), name
    params = dict(result.model.named_parameters())
    assert all(bool((params[n].detach()[~m] == 0).all()) for n, m in masks.items())
    assert [e.step for e in events if e.kind == "admm"] == [1, 2, 3]
    again = run_recipe(recipe_from_raw(_nm_recipe()))
    assert all(torch.equal(masks[n], masks_of(again.model)[n]) for n in masks)


def test_projected_finetuning_keeps_every_block_unified() -> None:
    unify = {"projection": "unify", "options": {"bh": 1, "bw": 4, "levels": 3}, "sparsity": 0.5}
    raw = tiny_recipe(
        {"train": {"admm": {**unify, "update_every": 1}}},
        {"train": {"admm": {**unify, "hold": True}}},
        {"evaluate": {"label": "final"}},
    )
    model = run_recipe(recipe_from_raw(raw)).model
    names = [n for n, _ in model.named_parameters() if n.endswith("weight")]
    for name in names:
        cost = unification_cost(dict(model.named_parameters())[name].detach(), 1, 4)  # raises unless unified
        assert cost["levels"] <= 3
        assert cost["kept_blocks"] == cost["blocks"] - round(cost["blocks"] * 0.5)
    report = unification_report(model, names, 1, 4)
    assert report["compression"] > 1 and 0 < report["macs_saved_fraction"] < 1


@pytest.mark.parametrize(
    ("admm", "message"),
    [
        ({"projection": "topk"}, "unknown ADMM projection 'topk'.*use one of"),
        (
            {"projection": "nm", "options": {"n": 2, "m": 5}},
            r"classifier\.weight.*m that divides 16",
        ),
        ({"projection": "block", "options": {"bh": 2, "bw": 2, "pool": "l1"}}, "no option 'pool'"),
    ],
)
def test_bad_admm_blocks_are_clear_errors(admm: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        secateurs.run(tiny_recipe({"train": {"admm": admm}}))


def test_a_sparsity_is_required_where_the_set_has_one() -> None:
    with pytest.raises(ConfigError, match="ADMM projection 'unstructured' needs a sparsity"):
        ADMMTraining(ADMMConfig(), NAMES, None)


def test_held_unification_keeps_support_and_levels_and_moves_each_level_to_its_mean() -> None:
    from secateurs.methods.training.admm import UnifiedBlocks

    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 8, generator=g)
    unified = project(w, "unify", sparsity=0.5, bh=1, bw=4, levels=2)
    held = UnifiedBlocks.of(unified, {"bh": 1, "bw": 4})
    assert held.levels == 2 and int((held.level < 0).sum()) == 6  # 12 blocks, half pruned
    assert torch.equal(held.project(unified), unified)  # a point of the set stays put
    moved = unified + 0.1 * torch.randn(6, 8, generator=g)
    out = held.project(moved).reshape(12, 4)
    means = moved.reshape(12, 4).abs().double().mean(1)
    for level in range(2):
        members = held.level == level
        expected = means[members].mean().float()
        torch.testing.assert_close(out[members].abs(), expected.expand(int(members.sum()), 4))
    assert torch.equal(out[held.level < 0], torch.zeros(6, 4))
    signs = torch.where(moved.reshape(12, 4) >= 0, 1.0, -1.0)
    assert torch.equal(torch.sign(out[held.level >= 0]), signs[held.level >= 0])
