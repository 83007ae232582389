"""Specifications of the resets after a prune step: keep, rewind (weights, buffers, optimizer) and reinit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secateurs import ConfigError, masks_of, prune
from secateurs.core.masks import MaskSet
from secateurs.methods.allocations import round_half_up
from secateurs.methods.resets import Snapshot, apply_reset
from secateurs.models import build_model

SHAPE = (3, 8, 8)


def resnet(seed: int = 0) -> nn.Module:
    """A tiny ResNet-20 (BatchNorm everywhere) on 8x8 inputs."""
    return build_model("resnet20", SHAPE, 3, seed=seed, width=0.25)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(4, *SHAPE, generator=g), torch.randint(0, 3, (4,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def cloned_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def masks(model: nn.Module) -> MaskSet:
    found = masks_of(model)
    assert found is not None
    return found


def test_keep_leaves_weights_and_reapplies_masks() -> None:
    model = resnet()
    prune(model, 0.5)
    before = cloned_state(model)
    assert apply_reset(model, "keep", snapshots={}) is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # a masked weight that became non-zero is zeroed again by any reset
    name = next(iter(masks(model)))
    weight = dict(model.named_parameters())[name]
    with torch.no_grad():
        weight[~masks(model)[name]] = 1.0
    apply_reset(model, "keep", snapshots={})
    assert torch.count_nonzero(weight[~masks(model)[name]]) == 0


def test_rewind_restores_weights_buffers_and_optimizer_state() -> None:
    model = resnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    snapshots = {0: Snapshot.take(model, 0)}
    train_steps(model, optimizer, 2, seed=1)
    snapshots[2] = Snapshot.take(model, 2, optimizer)
    saved = cloned_state(model)
    saved_momentum = {n: optimizer.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()}
    train_steps(model, optimizer, 3, seed=2)  # weights, running stats and momentum all move on
    assert not torch.equal(model.state_dict()["bn1.running_mean"], saved["bn1.running_mean"])
    prune(model, 0.6)
    ids = [id(p) for p in model.parameters()]

    optimizer_state = apply_reset(model, "rewind", snapshots=snapshots, step=2)

    keep = masks(model)
    state = model.state_dict()
    assert list(state) == list(saved)
    for k, v in saved.items():
        expected = v * keep[k] if k in keep else v  # pruned entries zero, everything else as saved
        assert torch.equal(state[k], expected), k
    assert any(k.endswith("running_var") for k in saved) and state["bn1.num_batches_tracked"] == 2
    assert [id(p) for p in model.parameters()] == ids

    # the optimizer state saved at step 2, as a copy the next stage can load
    assert optimizer_state is not None
    assert optimizer_state is not snapshots[2].optimizer_state
    fresh = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fresh.load_state_dict(optimizer_state)
    for n, p in model.named_parameters():
        assert torch.equal(fresh.state[p]["momentum_buffer"], saved_momentum[n]), n


def test_rewind_to_initialisation_is_the_lottery_ticket_reset() -> None:
    model = resnet()
    init = cloned_state(model)
    snapshots = {0: Snapshot.take(model, 0)}
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.05), 2, seed=1)
    prune(model, 0.8)
    assert apply_reset(model, "rewind", snapshots=snapshots, step=0) is None  # no optimizer saved
    keep = masks(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, init[k] * keep[k] if k in keep else init[k]), k
    assert keep.kept() == keep.numel() - round_half_up(0.8 * keep.numel())


def test_rewind_to_an_absent_step_lists_the_saved_steps() -> None:
    model = resnet()
    snapshots = {0: Snapshot.take(model, 0), 40: Snapshot.take(model, 40)}
    with pytest.raises(ConfigError, match=r"no snapshot at training step 5 .*saved steps: 0, 40"):
        apply_reset(model, "rewind", snapshots=snapshots, step=5)
    with pytest.raises(ConfigError, match=r"saved steps: none"):
        apply_reset(model, "rewind", snapshots={}, step=0)


def test_snapshot_is_a_copy() -> None:
    model = resnet()
    snap = Snapshot.take(model, 0)
    with torch.no_grad():
        model.conv1.weight.add_(1.0)
    assert not torch.equal(snap.model_state["conv1.weight"], model.conv1.weight)


def test_reinit_draws_the_weights_of_a_fresh_model_with_that_seed() -> None:
    model = resnet(seed=0)
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.05), 2, seed=1)
    prune(model, 0.7)
    ids = [id(p) for p in model.parameters()]
    assert apply_reset(model, "reinit", snapshots={}, seed=5) is None
    fresh = resnet(seed=5).state_dict()
    other = resnet(seed=6).state_dict()
    keep = masks(model)
    state = model.state_dict()
    for k, v in state.items():
        if k in keep:
            assert torch.equal(v[keep[k]], fresh[k][keep[k]]), k
            assert torch.count_nonzero(v[~keep[k]]) == 0, k
        else:  # biases, BatchNorm affine parameters and running statistics
            assert torch.equal(v, fresh[k]), k
    assert not torch.equal(state["conv1.weight"], other["conv1.weight"] * keep["conv1.weight"])
    assert [id(p) for p in model.parameters()] == ids


def test_unknown_reset_mode_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown reset mode 'restart'.*keep, lr_rewind, orthp, reinit, rewind"
    ):
        apply_reset(resnet(), "restart", snapshots={})  # type: ignore[arg-type]
