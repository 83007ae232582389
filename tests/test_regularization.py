"""Regularization-based pruning (issue 24): the penalties' gradients by hand, the schedules by
formula, GReg's pruned groups near zero, GReg-2's pick, resuming, and option errors."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from secateurs.methods.layers import LayerSelection, select_parameters
from secateurs.methods.structures import LayoutContext, build_structure
from secateurs.methods.training.regularization import PENALTIES, PenaltyGroups


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
