"""The structured-pruning test architectures are small, deterministic, fx-traceable classifiers."""

import pytest
import torch
import torch.fx
from structured_archs import ARCHITECTURES, build
from torch import nn

NAMES = sorted(ARCHITECTURES)
MAX_PARAMETERS = 200_000


@pytest.mark.parametrize("name", NAMES)
def test_eval_forward_gives_finite_logits(name: str) -> None:
    model, x = build(name)
    assert not model.training
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1])  # the two samples are told apart: outputs are not degenerate


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_reproduces_the_output_exactly(name: str) -> None:
    model, x = build(name)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_small_enough(name: str) -> None:
    model, _ = build(name)
    assert sum(p.numel() for p in model.parameters()) <= MAX_PARAMETERS


@pytest.mark.parametrize("name", NAMES)
def test_build_is_deterministic_and_batchnorm_stats_are_real(name: str) -> None:
    (a, xa), (b, xb) = build(name), build(name)
    assert torch.equal(xa, xb)
    for (key, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), key
    for bn in (m for m in a.modules() if isinstance(m, nn.BatchNorm2d)):
        assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_building_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    build("vit_tiny")
    assert torch.equal(torch.random.get_rng_state(), state)
