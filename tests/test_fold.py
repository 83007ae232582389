"""BatchNorm folding: same outputs in eval mode, BNs gone where foldable, left where not."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize, prune

from secateurs.core.errors import ConfigError
from secateurs.graph.fold import fold_batchnorm, folded_count
from secateurs.models import build_model

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, BATCHNORMS) for m in model.modules())


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial parameters and running statistics everywhere; returns the model in eval mode."""
    g = gen(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BATCHNORMS):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                    m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.3)
            elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    return model.eval()


def check_same(model: nn.Module, x: Tensor, *, bns_left: int, atol: float = 1e-5) -> fx.GraphModule:
    before = model(x)
    folded = fold_batchnorm(model)
    assert isinstance(folded, fx.GraphModule)
    torch.testing.assert_close(folded(x), before, atol=atol, rtol=atol)
    assert count_bn(folded) == bns_left
    assert folded_count(model, folded) == count_bn(model) - bns_left
    return folded


@pytest.mark.parametrize(
    ("layer", "bn", "shape"),
    [
        (lambda: nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), (2, 3, 6, 6)),
        (lambda: nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), (2, 3, 6, 6)),
        (lambda: nn.Conv2d(4, 4, 3, groups=4, bias=False), nn.BatchNorm2d(4), (2, 4, 6, 6)),
        (lambda: nn.Conv2d(4, 4, 3, groups=4, bias=True), nn.BatchNorm2d(4), (2, 4, 6, 6)),
        (lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, bias=True), nn.BatchNorm2d(4), (2, 3, 5, 5)),
        (lambda: nn.ConvTranspose2d(4, 6, 3, groups=2, bias=False), nn.BatchNorm2d(6), (2, 4, 5, 5)),
        (lambda: nn.Linear(5, 7), nn.BatchNorm1d(7), (3, 5)),
        (lambda: nn.Linear(5, 7, bias=False), nn.BatchNorm1d(7), (3, 5)),
        (lambda: nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4), (2, 3, 9)),
        (lambda: nn.Conv3d(2, 3, 2, bias=False), nn.BatchNorm3d(3), (2, 2, 4, 4, 4)),
        (lambda: nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), (2, 3, 6, 6)),
    ],
)
def test_single_pair_folds_to_same_outputs(layer, bn: nn.Module, shape: tuple[int, ...]) -> None:
    model = randomize(nn.Sequential(layer(), bn, nn.ReLU()))
    folded = check_same(model, torch.randn(shape, generator=gen(1)), bns_left=0)
    assert folded.get_submodule("0").bias is not None  # a bias-free layer gains one


def test_fold_is_the_float64_formula_cast_back() -> None:
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)))
    conv, bn = model[0], model[1]
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    want_w = (conv.weight.double() * s.view(-1, 1, 1, 1)).float()
    want_b = ((0 - bn.running_mean.double()) * s + bn.bias.double()).float()
    folded = fold_batchnorm(model)
    assert torch.equal(folded.get_submodule("0").weight, want_w)
    assert torch.equal(folded.get_submodule("0").bias, want_b)


def test_grouped_transposed_conv_scales_each_output_channel() -> None:
    """ConvTranspose weight is (in, out/groups, k): channel g*(out/groups)+j is [group g rows, j]."""
    model = randomize(nn.Sequential(nn.ConvTranspose2d(4, 6, 1, groups=2, bias=False), nn.BatchNorm2d(6)))
    conv, bn = model[0], model[1]
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    want = conv.weight.detach().double().clone()
    for i in range(4):
        for j in range(3):
            want[i, j] *= s[(i // 2) * 3 + j]
    assert torch.equal(fold_batchnorm(model).get_submodule("0").weight, want.float())


def test_resnet20_folds_every_batchnorm() -> None:
    model = randomize(build_model("resnet20", (3, 32, 32), 10, seed=0), seed=3)
    assert count_bn(model) == 21
    x = torch.randn(2, 3, 32, 32, generator=gen(2))
    assert model(x).abs().max() > 1e-2  # the comparison below is not between two zero tensors
    folded = check_same(model, x, bns_left=0, atol=1e-4)
    assert folded_count(model, folded) == 21


class AddThenBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.a(x) + self.b(x))


class SharedOutput(nn.Module):
    """conv -> bn, and the conv's output also reaches the result directly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class ConvCalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.bn(self.conv(x)))


@pytest.mark.parametrize("cls", [AddThenBN, SharedOutput, ConvCalledTwice])
def test_unfoldable_batchnorm_is_left_in_place(cls: type[nn.Module]) -> None:
    model = randomize(cls())
    c = 4 if cls is ConvCalledTwice else 3
    folded = check_same(model, torch.randn(2, c, 5, 5, generator=gen(1)), bns_left=1)
    assert torch.equal(folded.get_submodule("bn").running_mean, model.bn.running_mean)


def test_batchnorm_without_running_stats_is_left() -> None:
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)))
    check_same(model, torch.randn(2, 3, 6, 6, generator=gen(1)), bns_left=1)


def test_mixed_model_folds_only_the_foldable_pair() -> None:
    model = randomize(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), AddThenBN()))
    check_same(model, torch.randn(2, 3, 8, 8, generator=gen(1)), bns_left=1)


def test_training_mode_is_refused() -> None:
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).train()
    with pytest.raises(ConfigError, match=r"training mode.*model\.eval\(\)"):
        fold_batchnorm(model)
    model.eval()
    model[1].train()  # an eval model with one BN still in training mode would use batch statistics
    with pytest.raises(ConfigError, match="training mode"):
        fold_batchnorm(model)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            x = -x
        return self.bn(self.conv(x))


def test_untraceable_model_names_the_problem_and_fix() -> None:
    with pytest.raises(ConfigError, match=r"torch\.fx.*fx-traceable.*traceable submodules"):
        fold_batchnorm(randomize(DataDependent()))


def test_input_model_is_unchanged() -> None:
    model = randomize(build_model("resnet20", (3, 32, 32), 10, seed=0), seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_batchnorm(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert count_bn(model) == 21 and model.conv1.bias is None


def test_layer_pruned_by_torch_prune_is_refused_with_the_fix() -> None:
    """torch.nn.utils.prune keeps a computed (non-leaf) `weight` that cannot be deep-copied."""
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    with pytest.raises(ConfigError, match=r"cannot copy.*prune\.remove"):
        fold_batchnorm(model)


def test_parametrized_layer_is_left() -> None:
    """A parametrization recomputes `weight` at each call: a fold written into it would be lost."""
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    parametrize.register_parametrization(model[0], "weight", Halve())
    check_same(model, torch.randn(2, 3, 6, 6, generator=gen(1)), bns_left=1)


class Halve(nn.Module):
    def forward(self, w: Tensor) -> Tensor:
        return w * 0.5
