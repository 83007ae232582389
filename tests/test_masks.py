"""Specifications of `MaskSet`: applying, keeping masks through training, persistence, statistics."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
from torch import nn

from secateurs import CheckpointError, ConfigError, MaskSet, masks_of, prune, remove_masks, set_masks


def tiny_net() -> nn.Sequential:
    """Linear(4, 3) -> ReLU -> Linear(3, 2), deterministic weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def checker_masks() -> MaskSet:
    """Half of layer 0 (alternating entries) and the first row of layer 2 pruned."""
    keep0 = torch.arange(12).reshape(3, 4) % 2 == 0
    keep2 = torch.ones(2, 3, dtype=torch.bool)
    keep2[0] = False
    return MaskSet({"0.weight": keep0, "2.weight": keep2})


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)


# -- apply ------------------------------------------------------------------------------------


def test_apply_zeroes_exactly_the_masked_entries_and_keeps_parameter_identity() -> None:
    model = tiny_net()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = {n: id(p) for n, p in model.named_parameters()}
    masks = checker_masks()
    masks.apply(model)
    params = dict(model.named_parameters())
    for name in ("0.weight", "2.weight"):
        keep = masks[name]
        assert torch.equal(params[name][keep], before[name][keep])  # kept entries untouched
        assert torch.all(params[name][~keep] == 0)
    for name in ("0.bias", "2.bias"):  # unmasked parameters untouched
        assert torch.equal(params[name], before[name])
    assert {n: id(p) for n, p in model.named_parameters()} == ids
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())


def test_mask_for_missing_parameter_or_wrong_shape_is_a_config_error() -> None:
    model = tiny_net()
    with pytest.raises(ConfigError, match=r"'9\.weight'"):
        MaskSet({"9.weight": torch.ones(3, 4, dtype=torch.bool)}).apply(model)
    with pytest.raises(ConfigError, match=r"shape \(4, 3\).*\(3, 4\)"):
        MaskSet({"0.weight": torch.ones(4, 3, dtype=torch.bool)}).apply(model)


def test_dense_accepts_any_iterable_of_names() -> None:
    model = tiny_net()
    masks = MaskSet.dense(model, (n for n in ["0.weight", "2.weight"]))
    assert list(masks) == ["0.weight", "2.weight"]
    assert masks.kept() == masks.numel() == 18
    with pytest.raises(ConfigError, match="nope"):
        MaskSet.dense(model, ["nope"])


# -- attach: pruned weights stay exactly zero through training ---------------------------------

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd-nesterov-wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
}


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 30) -> None:
    x, y = batch()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("mask_grads", [False, True])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_attach_keeps_pruned_weights_exactly_zero(opt: str, mask_grads: bool) -> None:
    model = tiny_net()
    masks = checker_masks()
    optimizer = OPTIMIZERS[opt](list(model.parameters()))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks.attach(model, optimizer, mask_grads=mask_grads)
    train_steps(model, optimizer)
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        assert torch.count_nonzero(params[name][~keep]) == 0
        assert not torch.equal(params[name][keep], start[name][keep])  # the kept weights did train


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_mask_grads_keeps_optimizer_state_of_pruned_entries_zero(opt: str) -> None:
    model = tiny_net()
    masks = checker_masks()
    optimizer = OPTIMIZERS[opt](list(model.parameters()))
    masks.attach(model, optimizer, mask_grads=True)
    train_steps(model, optimizer)
    params = dict(model.named_parameters())
    keys = ["momentum_buffer"] if opt.startswith("sgd") else ["exp_avg", "exp_avg_sq"]
    for name, keep in masks.items():
        state = optimizer.state[params[name]]
        for key in keys:
            assert torch.count_nonzero(state[key][~keep]) == 0, key
            assert torch.count_nonzero(state[key][keep]) > 0, key
        assert torch.count_nonzero(params[name].grad[~keep]) == 0


def test_without_mask_grads_the_gradients_and_momentum_are_left_alone() -> None:
    """mask_grads=False only re-masks the weights: the optimizer still sees the full gradient."""
    model = tiny_net()
    masks = checker_masks()
    optimizer = OPTIMIZERS["sgd-nesterov-wd"](list(model.parameters()))
    masks.attach(model, optimizer, mask_grads=False)
    train_steps(model, optimizer, steps=3)
    p = dict(model.named_parameters())["0.weight"]
    assert torch.count_nonzero(optimizer.state[p]["momentum_buffer"][~masks["0.weight"]]) > 0


def test_removed_handle_stops_keeping_masks() -> None:
    model = tiny_net()
    masks = checker_masks()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = masks.attach(model, optimizer, mask_grads=True)
    train_steps(model, optimizer, steps=2)
    w = dict(model.named_parameters())["0.weight"]
    assert torch.count_nonzero(w[~masks["0.weight"]]) == 0
    handle.remove()
    handle.remove()  # idempotent
    train_steps(model, optimizer, steps=2)
    assert torch.count_nonzero(w[~masks["0.weight"]]) > 0


def test_attach_applies_the_masks_immediately() -> None:
    model = tiny_net()
    masks = checker_masks()
    masks.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    w = dict(model.named_parameters())["0.weight"]
    assert torch.count_nonzero(w[~masks["0.weight"]]) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_masks_apply_and_attach_to_a_cuda_model() -> None:
    """Masks loaded from a checkpoint live on the CPU; the model's device is taken from its tensors."""
    model = tiny_net().to("cuda")
    masks = checker_masks()
    masks.apply(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    masks.attach(model, optimizer)
    x, y = batch()
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x.cuda()), y.cuda()).backward()
        optimizer.step()
    for name, keep in masks.items():
        weight = dict(model.named_parameters())[name]
        assert torch.count_nonzero(weight[~keep.cuda()]) == 0


# -- persistence --------------------------------------------------------------------------------


def test_state_dict_round_trip_through_torch_save_with_weights_only() -> None:
    masks = checker_masks()
    buffer = io.BytesIO()
    torch.save(masks.state_dict(), buffer)
    buffer.seek(0)
    loaded = MaskSet.from_state_dict(torch.load(buffer, weights_only=True), tiny_net())
    assert loaded.equal(masks)
    assert all(loaded[n].dtype == torch.bool for n in loaded)


def test_state_dict_is_a_copy() -> None:
    masks = checker_masks()
    state = masks.state_dict()
    state["0.weight"].fill_(False)
    assert masks.kept() == 6 + 3


def test_from_state_dict_rejects_wrong_shape_unknown_name_and_non_bool() -> None:
    model = tiny_net()
    with pytest.raises(CheckpointError, match=r"shape \(2, 2\)"):
        MaskSet.from_state_dict({"0.weight": torch.ones(2, 2, dtype=torch.bool)}, model)
    with pytest.raises(CheckpointError, match=r"'head\.weight'"):
        MaskSet.from_state_dict({"head.weight": torch.ones(3, 4, dtype=torch.bool)}, model)
    with pytest.raises(CheckpointError, match="not a boolean tensor"):
        MaskSet.from_state_dict({"0.weight": torch.ones(3, 4)}, model)


def test_model_state_dict_keys_unchanged_by_set_masks_and_prune() -> None:
    model = tiny_net()
    keys = list(model.state_dict())
    set_masks(model, checker_masks())
    assert list(model.state_dict()) == keys
    assert masks_of(model) is not None
    prune(model, 0.5)
    assert list(model.state_dict()) == keys
    assert remove_masks(model) is not None
    assert masks_of(model) is None


def test_set_masks_zeroes_weights_and_none_forgets() -> None:
    model = tiny_net()
    masks = checker_masks()
    set_masks(model, masks)
    assert masks_of(model) is masks
    assert torch.count_nonzero(model[0].weight) == 6
    set_masks(model, None)
    assert masks_of(model) is None
    assert torch.count_nonzero(model[0].weight) == 6  # forgetting masks keeps the zeros


# -- statistics ---------------------------------------------------------------------------------


def test_sparsity_and_report_counts() -> None:
    a = torch.zeros(10, dtype=torch.bool)
    a[[1, 4, 8]] = True  # 3 of 10 kept
    masks = MaskSet({"a": a, "b": torch.ones(2, 3, dtype=torch.bool)})  # 6 of 6 kept
    assert (masks.numel(), masks.kept()) == (16, 9)
    assert masks.sparsity() == 7 / 16
    assert masks.density() == 9 / 16
    rows = masks.report()
    assert [(r.name, r.shape, r.numel, r.kept, r.pruned) for r in rows] == [
        ("a", (10,), 10, 3, 7),
        ("b", (2, 3), 6, 6, 0),
    ]
    assert [r.sparsity for r in rows] == [0.7, 0.0]
    assert MaskSet({}).sparsity() == 0.0


def test_intersect_only_shrinks() -> None:
    a = MaskSet({"w": torch.tensor([True, True, False, False])})
    b = MaskSet({"w": torch.tensor([True, False, True, False]), "v": torch.tensor([True])})
    out = a.intersect(b)
    assert list(out) == ["w", "v"]
    assert out["w"].tolist() == [True, False, False, False]
    assert out["v"].tolist() == [True]


def test_constructor_copies_and_converts_to_bool() -> None:
    source = torch.tensor([1, 0, 2])
    masks = MaskSet({"w": source})
    source.zero_()
    assert masks["w"].dtype == torch.bool
    assert masks["w"].tolist() == [True, False, True]
    with pytest.raises(TypeError, match="must be a tensor"):
        MaskSet({"w": [True]})  # type: ignore[dict-item]


def test_updated_merges_like_the_constructor_without_copying() -> None:
    a = MaskSet({"x": torch.tensor([True, False]), "y": torch.tensor([False, True])})
    b = MaskSet({"y": torch.tensor([True, True]), "z": torch.tensor([False])})
    merged = a.updated(b)
    expected = MaskSet({**dict(a), **dict(b)})
    assert list(merged) == list(expected) == ["x", "y", "z"]
    assert all(torch.equal(merged[n], expected[n]) for n in expected)
    assert merged["x"] is a["x"] and merged["y"] is b["y"]  # shared, not cloned
    assert list(a) == ["x", "y"] and torch.equal(a["y"], torch.tensor([False, True]))  # a unchanged
    from_dict = a.updated({"w": torch.tensor([1, 0])})  # a plain mapping is made a MaskSet first
    assert from_dict["w"].dtype == torch.bool
