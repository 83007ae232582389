"""Sparse selection (edge-popup, supermask): only scores train, masks are exact, runs repeat bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_recipe
from torch import Tensor, nn

import secateurs
from secateurs.core.errors import ConfigError
from secateurs.core.masks import masks_of
from secateurs.methods.allocations import round_half_up
from secateurs.methods.training.selection import attach_selection
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.runner import Pipeline

MLP_NAMES = ["0.weight", "2.weight"]
CONV_NAMES = ["0.weight", "3.weight"]


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, groups=2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3),
    )


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def originals(model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """Current values of the model's original parameters, by their pre-attach names, while attached."""
    out = {}
    for n, p in model.named_parameters():
        if n.endswith(".scores"):
            continue
        out[n.replace("parametrizations.", "").replace(".original", "")] = p.detach().clone()
    return out


def train(model: nn.Module, x: Tensor, y: Tensor, steps: int = 4) -> None:
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=5e-4
    )
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


# -- edge-popup -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_edge_popup_keeps_exact_count_and_forward_is_w_times_mask(sparsity: float) -> None:
    model = mlp()
    handle = attach_selection(model, MLP_NAMES, method="edge_popup", sparsity=sparsity, weight_init="keep")
    masks = handle.masks()
    for name, numel in [("0.weight", 48), ("2.weight", 18)]:
        assert int(masks[name].sum()) == numel - round_half_up(numel * sparsity)
        # the kept entries are the largest |s|
        s = handle.scores[name].detach().abs()
        if not masks[name].all():
            assert s[masks[name]].min() >= s[~masks[name]].max()
    x = torch.randn(5, 8)
    w0 = model[0].parametrizations.weight.original
    w2 = model[2].parametrizations.weight.original
    h = F.relu(F.linear(x, w0 * masks["0.weight"], model[0].bias))
    manual = F.linear(h, w2 * masks["2.weight"], model[2].bias)
    assert torch.equal(model(x), manual)


def test_edge_popup_counts_like_the_uniform_allocation() -> None:
    model = nn.Sequential(nn.Linear(5, 1))  # 5 entries at 0.5: prune round_half_up(2.5) = 3, keep 2
    handle = attach_selection(model, ["0.weight"], method="edge_popup", sparsity=0.5)
    assert int(handle.masks()["0.weight"].sum()) == 2


def test_edge_popup_ties_go_to_lower_index() -> None:
    model = nn.Sequential(nn.Linear(4, 1))
    handle = attach_selection(model, ["0.weight"], method="edge_popup", sparsity=0.5)
    with torch.no_grad():
        handle.scores["0.weight"].copy_(torch.tensor([[1.0, -2.0, 2.0, 2.0]]))
    assert handle.masks()["0.weight"].tolist() == [[False, True, True, False]]


def test_edge_popup_gradient_is_straight_through() -> None:
    model = mlp()
    handle = attach_selection(model, MLP_NAMES, method="edge_popup", sparsity=0.5)
    x, y = torch.randn(7, 8), torch.randint(0, 3, (7,))
    F.cross_entropy(model(x), y).backward()

    masks = handle.masks()
    w0 = model[0].parametrizations.weight.original.detach()
    w2 = model[2].parametrizations.weight.original.detach()
    eff0 = (w0 * masks["0.weight"]).requires_grad_(True)
    eff2 = (w2 * masks["2.weight"]).requires_grad_(True)
    out = F.linear(F.relu(F.linear(x, eff0, model[0].bias)), eff2, model[2].bias)
    F.cross_entropy(out, y).backward()
    # through |s|, as the paper's code: a score grows in magnitude when its weight would help
    sign0, sign2 = handle.scores["0.weight"].detach().sign(), handle.scores["2.weight"].detach().sign()
    assert torch.equal(handle.scores["0.weight"].grad, eff0.grad * w0 * sign0)
    assert torch.equal(handle.scores["2.weight"].grad, eff2.grad * w2 * sign2)
    # pruned entries get a gradient too (that is how they can come back)
    assert (handle.scores["0.weight"].grad[~masks["0.weight"]] != 0).any()
    # no original parameter received a gradient
    assert all(p.grad is None for n, p in model.named_parameters() if not n.endswith("scores"))


@pytest.mark.parametrize("method,sparsity", [("edge_popup", 0.5), ("supermask", None)])
@pytest.mark.parametrize("factory,names", [(mlp, MLP_NAMES), (conv_net, CONV_NAMES)])
def test_training_changes_only_scores_and_finish_restores_a_plain_model(
    factory, names, method: str, sparsity: float | None
) -> None:
    model = factory()
    keys_before = list(model.state_dict())
    param_names_before = [n for n, _ in model.named_parameters()]
    identities = [id(p) for p in model.parameters()]
    model[0].bias.requires_grad_(False)  # a pre-existing freeze must survive finish()
    handle = attach_selection(model, names, method=method, sparsity=sparsity, seed=3)
    at_attach = originals(model, names)
    scores_at_attach = {n: s.detach().clone() for n, s in handle.scores.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == len(names)
    assert {id(p) for p in trainable} == {id(s) for s in handle.scores.values()}

    x = torch.randn(16, 8) if factory is mlp else torch.randn(16, 2, 5, 5)
    train(model, x, torch.randint(0, 3, (16,)))

    after = originals(model, names)
    assert list(after) == list(at_attach)
    assert all(torch.equal(after[n], at_attach[n]) for n in at_attach)  # weights AND biases (and BN affine)
    assert all(not torch.equal(handle.scores[n], scores_at_attach[n]) for n in names)

    masks = handle.finish()
    assert list(masks) == names
    assert list(model.state_dict()) == keys_before
    assert [n for n, _ in model.named_parameters()] == param_names_before
    assert [id(p) for p in model.parameters()] == identities  # optimizers elsewhere stay valid
    assert type(model[0]) in (nn.Linear, nn.Conv2d)  # the parametrized subclass is gone
    params = dict(model.named_parameters())
    for n in names:
        assert torch.equal(params[n], at_attach[n] * masks[n])
        if method == "edge_popup":
            assert int(masks[n].sum()) == masks[n].numel() - round_half_up(masks[n].numel() * 0.5)
        else:
            assert torch.equal(masks[n], torch.sigmoid(handle.scores[n].detach()) > 0.5)
    for n, p in params.items():
        assert p.requires_grad == (n != "0.bias")
        if n not in names:
            assert torch.equal(p, at_attach[n])


# -- weight initialisations ---------------------------------------------------------------------
def test_signed_constant_is_plus_minus_kaiming_std() -> None:
    model = conv_net()
    attach_selection(model, [*CONV_NAMES, "5.weight"], method="edge_popup", sparsity=0.5)
    fan_ins = {"0": 2 * 9, "3": (4 // 2) * 9, "5": 36}
    for prefix, fan_in in fan_ins.items():
        w = model.get_submodule(prefix).parametrizations.weight.original
        assert torch.equal(w.abs(), torch.full_like(w, math.sqrt(2 / fan_in)))
        assert (w > 0).any() and (w < 0).any()


def test_kaiming_normal_std_and_keep() -> None:
    big = nn.Sequential(nn.Linear(200, 100))
    attach_selection(big, ["0.weight"], method="edge_popup", sparsity=0.5, weight_init="kaiming_normal")
    w = big[0].parametrizations.weight.original
    std = math.sqrt(2 / 200)
    assert abs(w.std().item() / std - 1) < 0.03  # 20000 draws: the sample std is within ~0.5 %
    assert abs(w.mean().item()) < 0.03 * std

    model = mlp()
    before = snapshot(model)
    attach_selection(model, MLP_NAMES, method="supermask", weight_init="keep")
    assert torch.equal(model[0].parametrizations.weight.original, before["0.weight"])
    assert torch.equal(model[2].parametrizations.weight.original, before["2.weight"])


def test_reinit_is_in_place_and_seeded() -> None:
    a, b, c = mlp(), mlp(), mlp()
    w_id = id(a[0].weight)
    attach_selection(a, MLP_NAMES, method="edge_popup", sparsity=0.5, weight_init="kaiming_normal", seed=1)
    attach_selection(b, MLP_NAMES, method="edge_popup", sparsity=0.5, weight_init="kaiming_normal", seed=1)
    attach_selection(c, MLP_NAMES, method="edge_popup", sparsity=0.5, weight_init="kaiming_normal", seed=2)
    wa, wb, wc = (m[0].parametrizations.weight.original for m in (a, b, c))
    assert id(wa) == w_id
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


# -- supermask ------------------------------------------------------------------------------------
def test_supermask_samples_in_training_and_is_deterministic_in_eval() -> None:
    model = mlp()
    handle = attach_selection(model, MLP_NAMES, method="supermask", seed=0)
    w = model[0].parametrizations.weight.original  # signed constant: never zero, so W_eff / W = m
    samples = [model[0].weight / w for _ in range(3)]
    assert all(set(s.unique().tolist()) <= {0.0, 1.0} for s in samples)
    assert not torch.equal(samples[0], samples[1]) and not torch.equal(samples[1], samples[2])

    model.eval()
    expected = torch.sigmoid(handle.scores["0.weight"].detach()) > 0.5
    assert torch.equal(model[0].weight, w * expected)
    assert torch.equal(model[0].weight, w * expected)
    assert torch.equal(handle.masks()["0.weight"], expected)
    x = torch.randn(3, 8)
    assert torch.equal(model(x), model(x))


def test_supermask_gradient_is_straight_through_sigmoid() -> None:
    model = mlp()
    handle = attach_selection(model, ["0.weight"], method="supermask", seed=0)
    w = model[0].parametrizations.weight.original.detach()
    gen_state = handle._parametrizations["0.weight"].generator.get_state()
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    F.cross_entropy(model(x), y).backward()

    gen = torch.Generator().set_state(gen_state)
    p = torch.sigmoid(handle.scores["0.weight"].detach())
    m = torch.bernoulli(p, generator=gen)  # the same sample the forward drew
    eff = (w * m).requires_grad_(True)
    F.cross_entropy(model[2](F.relu(F.linear(x, eff, model[0].bias))), y).backward()
    expected = eff.grad * w * p * (1 - p)
    torch.testing.assert_close(handle.scores["0.weight"].grad, expected, rtol=1e-6, atol=1e-12)


def _mask_sequence(seed: int, calls: int = 5) -> list[Tensor]:
    model = mlp()
    attach_selection(model, MLP_NAMES, method="supermask", seed=seed)
    w = model[2].parametrizations.weight.original
    return [model[2].weight / w for _ in range(calls)]


def test_supermask_sampling_is_reproducible_per_seed() -> None:
    a, b, c = _mask_sequence(5), _mask_sequence(5), _mask_sequence(6)
    assert all(torch.equal(s, t) for s, t in zip(a, b, strict=True))
    assert not all(torch.equal(s, t) for s, t in zip(a, c, strict=True))


def test_supermask_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    model = mlp()
    torch.manual_seed(123)
    attach_selection(model, MLP_NAMES, method="supermask", seed=0)
    model(torch.ones(2, 8))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("method,sparsity", [("edge_popup", 0.7), ("supermask", None)])
def test_same_seed_same_masks_after_training(method: str, sparsity: float | None) -> None:
    def run(seed: int):
        model = mlp()
        handle = attach_selection(model, MLP_NAMES, method=method, sparsity=sparsity, seed=seed)
        g = torch.Generator().manual_seed(0)
        train(model, torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g), steps=5)
        return handle.finish(), model.state_dict()

    (m1, s1), (m2, s2), (m3, _) = run(0), run(0), run(1)
    assert m1.equal(m2)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not m1.equal(m3)


# -- errors ---------------------------------------------------------------------------------------
def test_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"no parameter 'fc9.weight'.*0.weight, 2.weight"):
        attach_selection(mlp(), ["fc9.weight"], method="edge_popup", sparsity=0.5)
    with pytest.raises(ConfigError, match=r"'0.bias' is not the weight of a Linear or Conv"):
        attach_selection(mlp(), ["0.bias"], method="edge_popup", sparsity=0.5)
    with pytest.raises(ConfigError, match=r"'1.weight' is not the weight of a Linear or Conv"):
        attach_selection(conv_net(), ["1.weight"], method="edge_popup", sparsity=0.5)  # BatchNorm
    with pytest.raises(ConfigError, match=r"supermask takes no sparsity.*learns its own sparsity"):
        attach_selection(mlp(), MLP_NAMES, method="supermask", sparsity=0.5)
    with pytest.raises(ConfigError, match=r"edge_popup needs a sparsity in \[0, 1\), got None"):
        attach_selection(mlp(), MLP_NAMES, method="edge_popup")
    with pytest.raises(ConfigError, match=r"edge_popup needs a sparsity in \[0, 1\), got 1.0"):
        attach_selection(mlp(), MLP_NAMES, method="edge_popup", sparsity=1.0)
    with pytest.raises(ConfigError, match=r"unknown selection method 'popup'.*edge_popup, supermask"):
        attach_selection(mlp(), MLP_NAMES, method="popup", sparsity=0.5)
    with pytest.raises(ConfigError, match=r"unknown weight_init 'zeros'.*signed_constant"):
        attach_selection(mlp(), MLP_NAMES, method="edge_popup", sparsity=0.5, weight_init="zeros")
    with pytest.raises(ConfigError, match=r"keeps no weight of '0.weight'"):
        attach_selection(nn.Sequential(nn.Linear(1, 1)), ["0.weight"], method="edge_popup", sparsity=0.6)


def test_errors_do_not_leave_the_model_half_attached() -> None:
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ConfigError):
        attach_selection(model, ["0.weight", "nope"], method="edge_popup", sparsity=0.5)
    assert list(snapshot(model)) == list(before)
    assert all(torch.equal(p, before[n]) and p.requires_grad for n, p in model.named_parameters())


def test_finish_twice_and_attach_twice() -> None:
    model = mlp()
    handle = attach_selection(model, MLP_NAMES, method="edge_popup", sparsity=0.5)
    with pytest.raises(ConfigError, match=r"already has a parametrization.*finish"):
        attach_selection(model, ["0.weight"], method="edge_popup", sparsity=0.5)
    handle.finish()
    with pytest.raises(ConfigError, match=r"already finished"):
        handle.finish()
    # after finish a new selection can be attached to the plain model
    attach_selection(model, MLP_NAMES, method="supermask").finish()


# -- through the recipe pipeline ------------------------------------------------------------------
def _select_recipe(**select: object) -> dict:
    return tiny_recipe({"train": {"select": select}}, {"evaluate": {"label": "final"}}, iterations=6)


def test_a_selecting_train_stage_leaves_the_frozen_weights_and_installs_the_mask() -> None:

    pipeline = Pipeline(recipe_from_raw(_select_recipe(method="edge_popup", weight_init="keep")))
    before = {n: p.detach().clone() for n, p in pipeline.model.named_parameters()}
    result = pipeline.run()
    masks = masks_of(pipeline.model)
    assert masks is not None and list(masks) == ["features.1.weight", "classifier.weight"]
    assert result.records[-1]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    for name, p in pipeline.model.named_parameters():
        expected = before[name] * masks[name] if name in masks else before[name]
        assert torch.equal(p.detach(), expected), name  # weights and biases: bit-identical, masked
    parent = pipeline.dense_parent()
    assert parent is not None
    assert all(torch.equal(p, before[n]) for n, p in parent.named_parameters())


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"prune": {}}, {"train": {"select": {}}}], "cannot start from a pruned model"),
        ([{"train": {"select": {"method": "supermask", "sparsity": 0.5}}}], "learns its own sparsity"),
        ([{"train": {"select": {}, "dst": {}}}], "select and dst|dst and select"),
    ],
)
def test_bad_selection_recipes_are_clear_errors(stages: list[dict], message: str) -> None:

    with pytest.raises(ConfigError, match=message):
        secateurs.run(tiny_recipe(*stages))
