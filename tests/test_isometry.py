"""Specification of Jacobian singular values, OrthP and the orthp reset."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from secateurs import ConfigError, MaskSet, masks_of, prune, set_masks
from secateurs.eval.isometry import jacobian_singular_values, jsv_stats, orthogonalize_, polar_factor
from secateurs.methods.resets import apply_reset
from secateurs.structured import neuron_masks

ATOL = 1e-5


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def orthogonal_net(width: int = 6, depth: int = 3) -> nn.Sequential:
    layers = [nn.Linear(width, width, bias=False) for _ in range(depth)]
    for i, layer in enumerate(layers):
        nn.init.orthogonal_(layer.weight, generator=gen(i))
    return nn.Sequential(*layers)


# -- Jacobian singular values ------------------------------------------------------------------------
def test_an_orthogonal_linear_network_is_exactly_isometric() -> None:
    net = orthogonal_net()
    values = jacobian_singular_values(net, torch.randn(5, 6, generator=gen()))
    assert values.shape == (5 * 6,)
    assert torch.allclose(values, torch.ones(30), atol=ATOL)
    stats = jsv_stats(net, torch.randn(5, 6, generator=gen()))
    assert stats["jsv_mean"] == pytest.approx(1.0, abs=ATOL) and stats["jsv_std"] == pytest.approx(
        0.0, abs=ATOL
    )
    assert stats["jsv_max"] == pytest.approx(1.0, abs=ATOL) and stats["jsv_min"] == pytest.approx(
        1.0, abs=ATOL
    )


def test_one_linear_layer_has_the_singular_values_of_its_weight() -> None:
    layer = nn.Linear(5, 3)  # bias does not enter the Jacobian
    x = torch.randn(4, 5, generator=gen())
    expected = torch.linalg.svdvals(layer.weight.detach())
    assert torch.allclose(jacobian_singular_values(layer, x), expected.repeat(4), atol=1e-6)
    with torch.no_grad():
        layer.weight.mul_(2)
    assert torch.allclose(jacobian_singular_values(layer, x), 2 * expected.repeat(4), atol=1e-6)


def test_jsv_stats_hand_case() -> None:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
    stats = jsv_stats(layer, torch.zeros(3, 2))
    assert stats == pytest.approx({"jsv_mean": 2.0, "jsv_std": 1.0, "jsv_max": 3.0, "jsv_min": 1.0})


def test_jacobians_are_per_sample_through_relu_and_image_inputs() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(3, 1, 3, 4, generator=gen())
    values = jacobian_singular_values(net, x)
    for i in range(3):  # each sample's own Jacobian, as torch.autograd computes it alone
        jac = torch.autograd.functional.jacobian(lambda v: net(v.unsqueeze(0))[0], x[i]).reshape(3, 12)
        assert torch.allclose(values[3 * i : 3 * i + 3], torch.linalg.svdvals(jac), atol=1e-6)


def test_jsv_uses_eval_mode_and_leaves_the_model_alone() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9), nn.Linear(4, 2))
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    a = jacobian_singular_values(net, torch.randn(8, 4, generator=gen()))
    assert torch.equal(a, jacobian_singular_values(net, torch.randn(8, 4, generator=gen())))  # no dropout
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))
    assert all(p.grad is None for p in net.parameters())


def test_jsv_needs_a_batch() -> None:
    with pytest.raises(ConfigError, match="not a batch"):
        jacobian_singular_values(nn.Linear(2, 2), torch.zeros(0, 2))


# -- OrthP ---------------------------------------------------------------------------------------------
def structured_mask(shape: tuple[int, int], rows: list[int], cols: list[int]) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = True
    return mask


@pytest.mark.parametrize(
    ("rows", "cols"),
    [([0, 2, 3], [1, 2, 4]), ([1, 4], [0, 2, 3, 5]), ([0, 1, 2, 4], [3, 5])],  # square, wide, tall
)
def test_orthp_makes_a_structured_submatrix_exactly_orthogonal(rows: list[int], cols: list[int]) -> None:
    weight = torch.randn(5, 6, generator=gen())
    mask = structured_mask((5, 6), rows, cols)
    orthogonalize_(weight, mask)
    assert torch.count_nonzero(weight[~mask]) == 0
    q = weight[torch.tensor(rows)][:, torch.tensor(cols)]
    gram = q @ q.T if len(rows) <= len(cols) else q.T @ q
    assert torch.allclose(gram, torch.eye(min(len(rows), len(cols))), atol=ATOL)


def test_orthp_without_mask_gives_the_polar_factor() -> None:
    weight = torch.randn(4, 4, generator=gen())
    u, _, vh = torch.linalg.svd(weight.double())
    orthogonalize_(weight)
    assert torch.allclose(weight.double(), u @ vh, atol=ATOL)
    assert torch.allclose(weight @ weight.T, torch.eye(4), atol=ATOL)


def test_orthp_on_an_unstructured_mask_is_the_masked_polar_factor() -> None:
    weight = torch.randn(4, 5, generator=gen())
    mask = torch.rand(4, 5, generator=gen(1)) > 0.4
    expected = polar_factor((weight * mask).double()) * mask
    orthogonalize_(weight, mask)
    assert torch.count_nonzero(weight[~mask]) == 0
    assert torch.allclose(weight.double(), expected, atol=1e-6)


def test_orthp_flattens_conv_kernels_per_output_channel() -> None:
    weight = torch.randn(3, 2, 3, 3, generator=gen())
    mask = torch.ones_like(weight, dtype=torch.bool)
    mask[1] = False  # output channel 1 pruned: a structured (rows) mask
    orthogonalize_(weight, mask)
    assert weight.shape == (3, 2, 3, 3) and torch.count_nonzero(weight[1]) == 0
    kept = weight[[0, 2]].reshape(2, -1)
    assert torch.allclose(kept @ kept.T, torch.eye(2), atol=ATOL)


def test_orthp_rejects_vectors_and_wrong_masks() -> None:
    with pytest.raises(ConfigError, match=r"cannot orthogonalize a parameter of shape \(4,\)"):
        orthogonalize_(torch.zeros(4))
    with pytest.raises(ConfigError, match=r"mask of shape \(2, 2\) does not fit weight \(2, 3\)"):
        orthogonalize_(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))


def neuron_pruned_net() -> tuple[nn.Sequential, MaskSet]:
    """4 -> 6 -> 6 -> 4, two hidden neurons of each hidden layer removed: every kept block is 4x4."""
    net = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 4))
    torch.manual_seed(0)
    for layer in net:
        nn.init.normal_(layer.weight, generator=gen(1))
    masks = neuron_masks(net, 1 / 3)
    assert [r.kept for r in masks.report()] == [16, 4, 16, 4, 16]  # 4x4 blocks and 4 biases
    return net, masks


def test_orthp_on_every_layer_of_a_neuron_pruned_linear_net_gives_exact_isometry() -> None:
    net, masks = neuron_pruned_net()
    masks.apply(net)
    x = torch.randn(3, 4, generator=gen())
    assert not torch.allclose(jacobian_singular_values(net, x), torch.ones(12), atol=0.1)
    for name, layer in net.named_children():
        orthogonalize_(layer.weight.data, masks[f"{name}.weight"])
    assert torch.allclose(jacobian_singular_values(net, x), torch.ones(12), atol=ATOL)


def test_orthp_reset_orthogonalizes_every_masked_weight_and_keeps_masks() -> None:
    net, masks = neuron_pruned_net()
    set_masks(net, masks)
    biases = [layer.bias.detach().clone() for layer in net]
    assert apply_reset(net, "orthp", snapshots={}) is None
    x = torch.randn(3, 4, generator=gen())
    assert torch.allclose(jacobian_singular_values(net, x), torch.ones(12), atol=ATOL)
    params = dict(net.named_parameters())
    for name, mask in masks.items():
        assert torch.count_nonzero(params[name][~mask]) == 0, name
    for layer, bias in zip(
        net, biases, strict=True
    ):  # masked biases keep their values (1-D: not orthogonalized)
        assert torch.equal(layer.bias, bias)


def test_orthp_reset_after_unstructured_pruning_keeps_zeros() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    prune(net, 0.5)
    masks = masks_of(net)
    assert masks is not None
    expected = {name: p.detach().clone() for name, p in net.named_parameters()}
    for name, mask in masks.items():
        orthogonalize_(expected[name], mask)
    apply_reset(net, "orthp", snapshots={})
    for name, param in net.named_parameters():
        assert torch.equal(param, expected[name]), name  # biases untouched, weights = masked OrthP
    assert torch.count_nonzero(net[0].weight[~masks["0.weight"]]) == 0


def test_orthp_reset_needs_masks() -> None:
    with pytest.raises(ConfigError, match=r"orthp reset needs a pruned model.*prune stage"):
        apply_reset(nn.Linear(3, 3), "orthp", snapshots={})
