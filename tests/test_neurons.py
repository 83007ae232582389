"""Specification of neuron removal in Linear chains: exact equivalence to masks, sizes, MACs, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secateurs import ConfigError, masks_of, prune
from secateurs.eval.macs import count_costs
from secateurs.eval.metrics import parameter_counts
from secateurs.models import build_model
from secateurs.structured import neuron_masks, neuron_scores_l1, prune_neurons


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def masked_copy(model: nn.Module, sparsity: float, layers: list[str] | None = None) -> nn.Module:
    masked = copy.deepcopy(model)
    neuron_masks(model, sparsity, layers).apply(masked)
    return masked


def assert_same_outputs(a: nn.Module, b: nn.Module, x: Tensor) -> None:
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)


def test_l1_scores_are_row_norms() -> None:
    layer = nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 3.0], [-1.0, -0.5]]))
    assert torch.equal(neuron_scores_l1(layer), torch.tensor([3.0, 3.0, 1.5]))


def test_mlp_neuron_removal_matches_masks_counts_and_macs() -> None:
    model = build_model("mlp", (40,), 10, seed=0)  # 40 -> 100 -> 100 -> 10
    state = {k: v.clone() for k, v in model.state_dict().items()}
    small, kept = prune_neurons(model, 0.5)
    assert list(kept) == ["features.1", "features.3"] and all(v.numel() == 50 for v in kept.values())
    assert_same_outputs(small, masked_copy(model, 0.5), torch.randn(16, 40, generator=gen()))
    # 40·50+50 + 50·50+50 + 50·10+10 parameters; 40·50 + 50·50 + 50·10 MACs (dense: 4000 + 10000 + 1000)
    assert parameter_counts(small) == (5110, 5110)
    assert count_costs(small, (40,)).macs == 5000 and count_costs(model, (40,)).macs == 15000
    assert [layer.weight.shape for layer in (small.features[1], small.features[3], small.classifier)] == [
        (50, 40),
        (50, 50),
        (10, 50),
    ]
    assert all(p.is_contiguous() for p in small.parameters())
    for k, v in model.state_dict().items():  # the original model is untouched
        assert torch.equal(v, state[k]), k


def test_the_lowest_l1_neurons_go_and_indices_are_sorted() -> None:
    model = build_model("mlp", (40,), 10, seed=1)
    _, kept = prune_neurons(model, 0.3)
    scores = neuron_scores_l1(model.features[1])
    removed = torch.ones(100, dtype=torch.bool)
    removed[kept["features.1"]] = False
    assert kept["features.1"].numel() == 70 and torch.equal(
        kept["features.1"], kept["features.1"].sort().values
    )
    assert scores[kept["features.1"]].min() > scores[removed].max()


def test_rounding_ties_and_at_least_one_neuron() -> None:
    net = nn.Sequential(nn.Linear(3, 10), nn.ReLU(), nn.Linear(10, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)  # all scores equal: the lower indices are kept
    assert prune_neurons(net, 0.25)[1]["0"].tolist() == list(range(7))  # round(2.5) = 3 removed
    assert prune_neurons(net, 0.99)[1]["0"].tolist() == [0]
    assert prune_neurons(net, 0.0)[1]["0"].tolist() == list(range(10))
    with pytest.raises(ConfigError, match="sparsity"):
        prune_neurons(net, 1.0)


def test_sequential_with_batchnorm_dropout_and_functional_activations() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 8)
            self.norm = nn.BatchNorm1d(8)
            self.drop = nn.Dropout(0.5)
            self.b = nn.Linear(8, 5)
            self.c = nn.Linear(5, 3)

        def forward(self, x: Tensor) -> Tensor:
            x = self.drop(F.relu(self.norm(self.a(x))))
            return self.c(torch.tanh(self.b(x)))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.norm.running_mean.normal_()
        net.norm.running_var.uniform_(0.5, 2.0)
        net.norm.weight.normal_()
        net.norm.bias.normal_()
    small, kept = prune_neurons(net, 0.5)
    assert [small.a.out_features, small.norm.num_features, small.b.in_features, small.b.out_features] == [
        4,
        4,
        4,
        2,
    ]
    assert torch.equal(small.norm.running_var, net.norm.running_var[kept["a"]])
    assert small.c.in_features == 2 and isinstance(small.norm.weight, nn.Parameter)
    assert_same_outputs(small, masked_copy(net, 0.5), torch.randn(9, 6, generator=gen()))


def test_only_the_named_layers_lose_neurons() -> None:
    model = build_model("lenet300", (1, 8, 8), 10, seed=0)
    small, kept = prune_neurons(model, 0.5, layers=["features.3"])
    assert list(kept) == ["features.3"]
    assert (small.features[1].weight.shape, small.features[3].weight.shape) == ((300, 64), (50, 300))
    assert small.classifier.weight.shape == (10, 50)
    assert_same_outputs(
        small, masked_copy(model, 0.5, ["features.3"]), torch.randn(4, 1, 8, 8, generator=gen())
    )


def test_neuron_masks_cover_rows_biases_and_next_columns() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1, 1], [0.1, 0, 0], [2, 2, 2], [0, 0.2, 0]]))
    masks = neuron_masks(net, 0.5)
    assert list(masks) == ["0.weight", "0.bias", "2.weight"]
    assert masks["0.bias"].tolist() == [True, False, True, False]
    assert torch.equal(masks["0.weight"], torch.tensor([[True] * 3, [False] * 3, [True] * 3, [False] * 3]))
    assert torch.equal(masks["2.weight"], torch.tensor([[True, False, True, False]] * 2))


def test_removed_model_carries_no_masks_of_the_old_shapes() -> None:
    model = build_model("mlp", (40,), 10, seed=0)
    prune(model, 0.5)
    small, _ = prune_neurons(model, 0.5)
    assert masks_of(model) is not None and masks_of(small) is None


class ConvBetween(nn.Module):
    """Linear on (N, 1, 8) sequences, a Conv1d, then another Linear: the Conv mixes neurons."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.conv = nn.Conv1d(1, 1, 3, padding=1)
        self.out = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.conv(self.fc(x)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        return self.out(h + torch.relu(h))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (ConvBetween(), r"module 'conv' \(Conv1d\) lies between Linear 'fc' and the next Linear"),
        (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)), r"module '1' \(LayerNorm\)"),
        (Residual(), r"the neurons of Linear 'fc' reach the next Linear along 2 paths"),
    ],
)
def test_unknown_structure_between_linears_is_an_error(model: nn.Module, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        prune_neurons(model, 0.5)
    with pytest.raises(ConfigError, match=message):
        neuron_masks(model, 0.5)


def test_the_output_layer_and_unknown_names_cannot_be_chosen() -> None:
    model = build_model("mlp", (40,), 10, seed=0)
    with pytest.raises(ConfigError, match=r"'classifier' is the output layer.*features.1, features.3"):
        prune_neurons(model, 0.5, layers=["classifier"])
    with pytest.raises(ConfigError, match=r"'features.0' is not a Linear used in the forward pass"):
        prune_neurons(model, 0.5, layers=["features.0"])


def test_a_linear_after_convolutions_is_still_a_chain() -> None:
    model = build_model("lenet5", (1, 12, 12), 10, seed=0)  # conv stages, then fc 16 -> 120 -> 84 -> 10
    small, kept = prune_neurons(model, 0.5)
    assert list(kept) == ["classifier.1", "classifier.3"]
    assert small.classifier[1].weight.shape[0] == 60 and small.classifier[5].weight.shape == (10, 42)
    assert_same_outputs(small, masked_copy(model, 0.5), torch.randn(3, 1, 12, 12, generator=gen()))
