"""Specification of `secateurs.eval`: MAC / parameter counts and evaluate()."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from secateurs.core.errors import ConfigError
from secateurs.eval import CostReport, LayerCost, count_costs, evaluate, parameter_counts


def _only_layer(report: CostReport) -> LayerCost:
    assert len(report.layers) == 1
    return report.layers[0]


# -- count_costs: hand-computed values -------------------------------------------------------


def test_linear_with_two_zeroed_weights() -> None:
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 4.0]]))
        lin.bias.copy_(torch.tensor([0.5, 0.0]))
    layer = _only_layer(count_costs(lin, (3,)))
    assert layer == LayerCost(name="", kind="Linear", params=8, nonzero_params=5, macs=6, nonzero_macs=4)


def test_linear_on_a_sequence_counts_every_position() -> None:
    lin = nn.Linear(8, 4, bias=False)
    with torch.no_grad():
        lin.weight[:, :3] = 0.0  # 12 of 32 weights are zero
    layer = _only_layer(count_costs(lin, (5, 8)))
    assert (layer.macs, layer.nonzero_macs) == (5 * 8 * 4, 5 * 20)


def test_conv2d_with_stride_padding_and_groups() -> None:
    conv = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1, groups=2)
    with torch.no_grad():
        conv.weight[0] = 0.0  # one whole filter: 2 * 3 * 3 = 18 zeros
        conv.weight[1, 0, 0, 0] = 0.0  # one more
    # output side: floor((7 + 2 - 3) / 2) + 1 = 4 -> 16 positions; weight: 6 * (4 / 2) * 3 * 3 = 108
    layer = _only_layer(count_costs(conv, (4, 7, 7)))
    assert (layer.macs, layer.nonzero_macs) == (16 * 108, 16 * (108 - 19))
    assert (layer.params, layer.nonzero_params) == (108 + 6, 108 - 19 + 6)


def test_depthwise_conv2d() -> None:
    conv = nn.Conv2d(3, 3, kernel_size=3, groups=3, bias=False)
    layer = _only_layer(count_costs(conv, (3, 6, 6)))
    assert layer.macs == 4 * 4 * 3 * 1 * 3 * 3 == 432


def test_conv1d_with_dilation() -> None:
    conv = nn.Conv1d(2, 4, kernel_size=3, dilation=2)
    with torch.no_grad():
        conv.weight[:, 1, :] = 0.0  # half of the 24 weights
    layer = _only_layer(count_costs(conv, (2, 10)))
    # output length 10 - 2 * (3 - 1) = 6
    assert (layer.macs, layer.nonzero_macs) == (6 * 4 * 2 * 3, 6 * 12)


def test_conv_transpose2d_counts_input_positions_times_weights() -> None:
    deconv = nn.ConvTranspose2d(4, 6, kernel_size=3, stride=2, padding=1, groups=2)
    with torch.no_grad():
        deconv.weight[3] = 0.0  # weight (4, 3, 3, 3): 27 of 108 zero
    layer = _only_layer(count_costs(deconv, (4, 5, 5)))
    assert (layer.macs, layer.nonzero_macs) == (25 * 108, 25 * 81)


def test_lenet300_dense_macs() -> None:
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )
    report = count_costs(model, (1, 28, 28))
    assert report.macs == report.nonzero_macs == 784 * 300 + 300 * 100 + 100 * 10 == 266_200
    assert report.params == report.nonzero_params == 266_200 + 300 + 100 + 10
    assert [(layer.name, layer.macs) for layer in report.layers] == [
        ("1", 235_200),
        ("3", 30_000),
        ("5", 1000),
    ]
    assert report.theoretical_speedup == 1.0 and report.compression_ratio == 1.0


# -- count_costs: independent cross-check -----------------------------------------------------


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (nn.Linear(6, 5, bias=False), (4, 6)),
        (nn.Conv1d(4, 6, 3, stride=2, groups=2, bias=False), (4, 11)),
        (nn.Conv2d(4, 4, (3, 2), stride=(1, 2), dilation=(2, 1), groups=4, bias=False), (4, 9, 8)),
        (nn.Conv3d(2, 3, 2, bias=False), (2, 4, 3, 5)),
        (nn.ConvTranspose1d(4, 2, 3, stride=3, groups=2, bias=False), (4, 5)),
        (nn.ConvTranspose2d(3, 2, (2, 3), stride=2, bias=False), (3, 4, 3)),
    ],
)
def test_nonzero_macs_equal_products_actually_performed(module: nn.Module, shape: tuple[int, ...]) -> None:
    """With unpadded layers, an all-ones input and weights set to their 0/1 keep-mask, the
    output sums to the number of weight-input products with a nonzero weight."""
    gen = torch.Generator().manual_seed(0)
    keep = torch.rand(module.weight.shape, generator=gen) < 0.6
    with torch.no_grad():
        module.weight.copy_(keep.float())
    layer = _only_layer(count_costs(module, shape))
    performed = module(torch.ones(1, *shape)).sum().item()
    assert layer.nonzero_macs == performed
    assert layer.macs * int(keep.sum()) == layer.nonzero_macs * keep.numel()


# -- count_costs: model-level behaviour -------------------------------------------------------


def test_report_totals_include_uncounted_modules_and_exact_ratios() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight[1] = 0.0  # 9 of 18 conv weights
        model[3].weight.zero_()  # all 16 linear weights
        model[3].bias.fill_(1.0)
    report = count_costs(model, (1, 4, 4))
    assert [layer.name for layer in report.layers] == ["0", "3"]
    # conv 18 + BN 4 + linear 16 + 2 = 40 params; zero: 9 conv, 2 BN biases (init 0), 16 linear
    assert (report.params, report.nonzero_params) == (40, 13)
    assert (report.macs, report.nonzero_macs) == (4 * 18 + 16, 4 * 9)
    assert report.theoretical_speedup == 88 / 36
    assert report.compression_ratio == 40 / 13
    assert report.table_rows()[1] == {
        "name": "3",
        "kind": "Linear",
        "params": 18,
        "nonzero_params": 2,
        "macs": 16,
        "nonzero_macs": 0,
    }


def test_module_used_twice_is_counted_twice_and_unused_module_is_skipped() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.shared(self.shared(x))

    report = count_costs(Twice(), (4,))
    assert [(layer.name, layer.macs) for layer in report.layers] == [("shared", 32)]
    assert report.params == 40


def test_torch_prune_masks_are_seen_through_module_weight() -> None:
    lin = nn.Linear(10, 10, bias=False)
    prune.l1_unstructured(lin, "weight", amount=30)
    layer = _only_layer(count_costs(lin, (10,)))
    assert (layer.params, layer.nonzero_params, layer.nonzero_macs) == (100, 70, 70)


def test_count_costs_is_deterministic_and_restores_every_module_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    model[1].eval()  # a deliberately frozen BN inside a training model
    first = count_costs(model, (4,))
    assert first == count_costs(model, (4,))
    assert [m.training for m in model.modules()] == [True, True, False, True, True]


def test_hooks_removed_after_success_and_user_hooks_kept() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    calls: list[str] = []
    model[2].register_forward_hook(lambda *_: calls.append("user"))
    count_costs(model, (1, 4, 4))
    assert calls == ["user"]
    assert len(model[0]._forward_hooks) == 0
    assert len(model[2]._forward_hooks) == 1


def test_hooks_removed_and_mode_restored_when_forward_raises() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(7, 3))  # 8 features arrive, not 7
    model.train()
    with pytest.raises(ConfigError, match=r"forward pass failed on a zeros input of shape \(1, 1, 4, 4\)"):
        count_costs(model, (1, 4, 4))
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("shape", [(), (0, 4), (3, -1), (2.0,), (True, 3), 784])
def test_bad_input_shape_is_a_config_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match="shape of ONE sample without the batch dimension"):
        count_costs(nn.Linear(4, 2), shape)


# -- parameter_counts -------------------------------------------------------------------------


def test_parameter_counts_counts_shared_parameters_once() -> None:
    first = nn.Linear(3, 3, bias=False)
    model = nn.Sequential(first, nn.ReLU(), first, nn.Linear(3, 1))
    with torch.no_grad():
        first.weight.fill_(1.0)
        first.weight[0] = 0.0
        model[3].weight.fill_(2.0)
        model[3].bias.zero_()
    assert parameter_counts(model) == (9 + 3 + 1, 6 + 3)


# -- evaluate ---------------------------------------------------------------------------------


def _identity_classifier() -> nn.Module:
    """Logits equal the inputs in eval mode; dropout would scramble them in train mode."""
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
    return nn.Sequential(nn.Dropout(0.9), lin)


def _ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def test_evaluate_exact_accuracy_and_per_sample_mean_loss() -> None:
    batches = [
        ([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]], [0, 0, 1]),  # predictions 0, 1, 1: two right
        ([[5.0, 1.0]], [1]),  # prediction 0: wrong
    ]
    loader = [(torch.tensor(x), torch.tensor(y)) for x, y in batches]
    model = _identity_classifier()
    model.train()
    model[1].eval()  # frozen linear; the dropout stays in train mode and must be switched off
    result = evaluate(model, loader)
    expected_loss = sum(_ce(row, t) for x, y in batches for row, t in zip(x, y, strict=True)) / 4
    assert result["n"] == 4
    assert result["accuracy"] == 0.5
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert [m.training for m in model.modules()] == [True, True, False]


def test_evaluate_accepts_another_loss_function() -> None:
    loader = [(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]))]
    result = evaluate(_identity_classifier(), loader, loss_fn=F.multi_margin_loss)
    # margin loss per sample: sum over j != y of max(0, 1 - x[y] + x[j]) / C -> 0 and 3 / 2
    assert result["loss"] == pytest.approx((0.0 + 3 / 2) / 2)
    assert result["accuracy"] == 0.5


def test_evaluate_empty_loader_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="yielded no samples"):
        evaluate(_identity_classifier(), [])
