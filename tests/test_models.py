"""Specification of the model zoo: shapes, exact parameter counts, seeding, re-init, fx, errors."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.models import MODELS, build_model, reinitialize

# One input shape per model that exercises it quickly (small widths where the model is large).
CASES: list[tuple[str, tuple[int, ...], dict[str, object]]] = [
    ("mlp", (40,), {}),
    ("mlp", (1, 8, 8), {"hidden": [16]}),
    ("mlp", (40,), {"hidden": [12, 12], "residual": True}),
    ("lenet300", (1, 28, 28), {}),
    ("lenet5", (1, 28, 28), {}),
    ("lenet5", (3, 12, 12), {}),
    ("conv2", (3, 16, 16), {"width": 0.25}),
    ("conv4", (3, 16, 16), {"width": 0.25}),
    ("conv6", (1, 8, 8), {"width": 0.25}),
    ("cnn1d", (40,), {}),
    ("cnn1d", (2, 40), {"channels": 8}),
    ("vgg11", (1, 8, 8), {"width": 0.25}),
    ("vgg16", (3, 32, 32), {"width": 0.125}),
    ("resnet20", (3, 32, 32), {}),
    ("resnet32", (1, 8, 8), {"width": 0.5}),
    ("resnet56", (3, 16, 16), {"width": 0.5}),
]
CASE_IDS = [f"{n}-{'x'.join(map(str, s))}" for n, s, _ in CASES]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_registered_names() -> None:
    expected = ["mlp", "lenet300", "lenet5", "conv2", "conv4", "conv6", "cnn1d"]
    expected += ["vgg11", "vgg16", "resnet20", "resnet32", "resnet56", "hf"]
    assert MODELS.names() == sorted(expected)


def test_spec_lists_options_and_ranks() -> None:
    assert MODELS.get("mlp").options() == {"hidden": (100, 100), "activation": "relu", "residual": False}
    assert MODELS.get("conv2").options() == {"width": 1.0}
    assert MODELS.get("cnn1d").options() == {"channels": 25}
    assert MODELS.get("lenet300").options() == {}
    assert MODELS.get("cnn1d").input_ranks == (1, 2)
    assert MODELS.get("resnet20").input_ranks == (3,)
    assert MODELS.get("lenet300").input_ranks == (1, 2, 3)


@pytest.mark.parametrize(("name", "shape", "options"), CASES, ids=CASE_IDS)
def test_output_shape(name: str, shape: tuple[int, ...], options: dict[str, object]) -> None:
    model = build_model(name, shape, 7, seed=0, **options)
    assert model(torch.randn(3, *shape)).shape == (3, 7)


def test_lenet300_param_count() -> None:
    # 784*300+300 + 300*100+100 + 100*10+10 = 235500 + 30100 + 1010
    assert n_params(build_model("lenet300", (1, 28, 28), 10, seed=0)) == 266_610


def test_mlp_default_is_100_100() -> None:
    # 40*100+100 + 100*100+100 + 100*10+10 = 4100 + 10100 + 1010
    assert n_params(build_model("mlp", (40,), 10, seed=0)) == 15_210


def test_lenet5_param_count() -> None:
    conv1 = 1 * 6 * 5 * 5 + 6  # 156, output 6x28x28 (pad 2), pooled to 14x14
    conv2 = 6 * 16 * 5 * 5 + 16  # 2416, output 16x10x10, pooled to 5x5
    fc1 = 16 * 5 * 5 * 120 + 120  # 48120
    fc2 = 120 * 84 + 84  # 10164
    fc3 = 84 * 10 + 10  # 850
    assert conv1 + conv2 + fc1 + fc2 + fc3 == 61_706
    assert n_params(build_model("lenet5", (1, 28, 28), 10, seed=0)) == 61_706


def test_conv2_param_count() -> None:
    convs = (3 * 64 * 9 + 64) + (64 * 64 * 9 + 64)  # 1792 + 36928
    fc1 = 64 * 16 * 16 * 256 + 256  # one 2x2 pool: 32x32 -> 16x16; 4194560
    fc2 = 256 * 256 + 256  # 65792
    fc3 = 256 * 10 + 10  # 2570
    assert convs + fc1 + fc2 + fc3 == 4_301_642
    assert n_params(build_model("conv2", (3, 32, 32), 10, seed=0)) == 4_301_642


def test_resnet20_param_count() -> None:
    # Convolutions have no bias; every BN has 2 parameters per channel.
    stem = 3 * 16 * 9 + 2 * 16  # 464
    block16 = 2 * (16 * 16 * 9 + 2 * 16)  # 4672
    block32 = 2 * (32 * 32 * 9 + 2 * 32)  # 18560
    block64 = 2 * (64 * 64 * 9 + 2 * 64)  # 73984
    down32 = (16 * 32 * 9 + 2 * 32) + (32 * 32 * 9 + 2 * 32) + (16 * 32 + 2 * 32)  # 14528, option B
    down64 = (32 * 64 * 9 + 2 * 64) + (64 * 64 * 9 + 2 * 64) + (32 * 64 + 2 * 64)  # 57728, option B
    fc = 64 * 10 + 10  # 650
    total = stem + 3 * block16 + down32 + 2 * block32 + down64 + 2 * block64 + fc
    assert total == 272_474
    assert n_params(build_model("resnet20", (3, 32, 32), 10, seed=0)) == 272_474


def test_cnn1d_param_count() -> None:
    # Length 40 -> 19 -> 9 -> 4 through three (kernel 5, stride 2, pad 1) convolutions.
    convs = (1 * 25 * 5 + 25) + 2 * (25 * 25 * 5 + 25)  # 150 + 2 * 3150
    linear = 25 * 4 * 10 + 10  # 1010
    assert convs + linear == 7_460
    assert n_params(build_model("cnn1d", (40,), 10, seed=0)) == 7_460


def test_options_change_the_architecture() -> None:
    assert n_params(build_model("mlp", (40,), 10, hidden=[])) == 40 * 10 + 10
    conv2 = build_model("conv2", (3, 32, 32), 10, width=0.5)
    assert [m.out_channels for m in conv2.modules() if isinstance(m, nn.Conv2d)] == [32, 32]
    cnn = build_model("cnn1d", (40,), 10, channels=8)
    assert [m.out_channels for m in cnn.modules() if isinstance(m, nn.Conv1d)] == [8, 8, 8]
    resnet = build_model("resnet20", (3, 32, 32), 10, width=0.5)
    assert resnet.fc.in_features == 32


def test_vgg_skips_pools_that_would_empty_the_map() -> None:
    def pools(shape: tuple[int, ...]) -> int:
        model = build_model("vgg11", shape, 10, width=0.125)
        return sum(isinstance(m, nn.MaxPool2d) for m in model.modules())

    assert pools((3, 32, 32)) == 5
    assert pools((1, 8, 8)) == 3  # 8 -> 4 -> 2 -> 1, the last two pools are left out
    assert pools((1, 8, 3)) == 1  # the narrower side decides


def test_last_module_is_the_classifier() -> None:
    # "skip the last layer" selections rely on the output layer coming last in definition order.
    for name, shape, options in CASES:
        model = build_model(name, shape, 5, **options)
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        assert last.out_features == 5
        assert next(reversed(list(model.named_parameters())))[1] is last.bias


def test_init_kaiming_conv_and_unit_bn() -> None:
    model = build_model("resnet20", (3, 32, 32), 10, seed=0)
    weight = model.layer3[1].conv1.weight  # 64x64x3x3, fan_out = 64 * 9
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    bn = model.layer3[1].bn1
    assert torch.equal(bn.weight, torch.ones(64)) and torch.equal(bn.bias, torch.zeros(64))
    lenet = build_model("lenet5", (1, 28, 28), 10, seed=0)
    assert torch.equal(lenet.features[0].bias, torch.zeros(6))


def test_same_seed_same_parameters_whatever_the_global_seed() -> None:
    torch.manual_seed(1)
    a = build_model("resnet20", (3, 16, 16), 10, seed=3, width=0.5)
    torch.manual_seed(2)
    b = build_model("resnet20", (3, 16, 16), 10, seed=3, width=0.5)
    assert same_state(a, b)


def test_different_seeds_differ_in_every_weight() -> None:
    a = build_model("lenet5", (1, 28, 28), 10, seed=0)
    b = build_model("lenet5", (1, 28, 28), 10, seed=1)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        if name.endswith("weight"):
            assert not torch.equal(pa, pb), name


def test_seeded_build_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    build_model("conv4", (3, 16, 16), 10, seed=0, width=0.25)
    assert torch.equal(torch.get_rng_state(), before)


def test_unseeded_build_draws_from_global_rng() -> None:
    torch.manual_seed(5)
    a = build_model("mlp", (40,), 10)
    torch.manual_seed(5)
    b = build_model("mlp", (40,), 10)
    c = build_model("mlp", (40,), 10)
    assert same_state(a, b) and not same_state(b, c)


def test_reinitialize_in_place_deterministic() -> None:
    model = build_model("resnet20", (3, 8, 8), 10, seed=0, width=0.5)
    params = list(model.parameters())  # what an optimizer holds on to
    old = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model(torch.randn(4, 3, 8, 8))  # moves the BN running statistics
    torch.manual_seed(0)
    before = torch.get_rng_state()

    reinitialize(model, seed=7)

    assert torch.equal(torch.get_rng_state(), before)
    assert all(p is q for p, q in zip(model.parameters(), params, strict=True))
    for name, p in model.named_parameters():
        if name.endswith("weight") and "bn" not in name and "shortcut.1" not in name:
            assert not torch.equal(p, old[name]), name
    assert torch.equal(model.bn1.running_mean, torch.zeros(8))
    assert same_state(model, build_model("resnet20", (3, 8, 8), 10, seed=7, width=0.5))


def test_reinitialize_warns_about_parameters_it_cannot_reset(caplog: pytest.LogCaptureFixture) -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.scale = nn.Parameter(torch.full((2,), 3.0))

    model = Scaled()
    with caplog.at_level(logging.WARNING, logger="secateurs.models.init"):
        reinitialize(model, seed=0)
    assert "scale" in caplog.text and "linear" not in caplog.text
    assert torch.equal(model.scale.detach(), torch.full((2,), 3.0))


@pytest.mark.parametrize(("name", "shape", "options"), CASES, ids=CASE_IDS)
def test_fx_traceable_same_output(name: str, shape: tuple[int, ...], options: dict[str, object]) -> None:
    model = build_model(name, shape, 4, seed=0, **options).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(traced(x), model(x))


def test_wrong_rank_explains_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"'lenet5' expects inputs of shape \(C, H, W\).*\(40,\)") as info:
        build_model("lenet5", (40,), 10)
    assert "cnn1d, lenet300, mlp" in str(info.value)  # the models that accept (40,)
    assert "MNIST (1, 28, 28)" in str(info.value)  # data that fit lenet5
    with pytest.raises(ConfigError, match=r"'cnn1d' expects inputs of shape \(L,\) or \(C, L\)"):
        build_model("cnn1d", (1, 28, 28), 10)
    with pytest.raises(ConfigError, match=r"no model accepts \(1, 1, 28, 28\)"):
        build_model("mlp", (1, 1, 28, 28), 10)


@pytest.mark.parametrize(
    ("name", "shape", "need"),
    [
        ("lenet5", (1, 8, 8), "at least 12"),
        ("conv6", (3, 4, 4), "at least 8"),
        ("conv2", (3, 32, 1), "at least 2"),
        ("cnn1d", (14,), "at least 15"),
        ("resnet20", (3, 3, 32), "at least 4x4"),
    ],
)
def test_too_small_input(name: str, shape: tuple[int, ...], need: str) -> None:
    with pytest.raises(ConfigError, match=rf"too small for model '{name}'.*{need}"):
        build_model(name, shape, 10)


def test_smallest_accepted_inputs_build() -> None:
    assert build_model("lenet5", (1, 12, 12), 3)(torch.zeros(1, 1, 12, 12)).shape == (1, 3)
    assert build_model("cnn1d", (15,), 3)(torch.zeros(1, 15)).shape == (1, 3)
    assert build_model("conv6", (1, 8, 8), 3, width=0.1)(torch.zeros(1, 1, 8, 8)).shape == (1, 3)


def test_unknown_model() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'lenet-5'.*Did you mean 'lenet5'"):
        build_model("lenet-5", (1, 28, 28), 10)


def test_unknown_option() -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'widht' for model 'vgg11'.*'width'"):
        build_model("vgg11", (3, 32, 32), 10, widht=0.5)
    with pytest.raises(ConfigError, match=r"unknown option 'width' for model 'lenet300'.*are: none"):
        build_model("lenet300", (1, 28, 28), 10, width=0.5)


@pytest.mark.parametrize(
    ("name", "shape", "kwargs", "pattern"),
    [
        ("conv2", (3, 32, 32), {"width": 0}, r"width=0 of model 'conv2' must be a finite number > 0"),
        ("resnet20", (3, 32, 32), {"width": float("nan")}, r"width=nan .* finite number > 0"),
        ("mlp", (40,), {"hidden": [100, 0]}, r"hidden\[1\]=0 of model 'mlp' must be an integer >= 1"),
        ("mlp", (40,), {"hidden": "100"}, r"hidden='100' .* list of integers"),
        ("cnn1d", (40,), {"channels": 2.5}, r"channels=2.5 .* integer >= 1"),
        ("mlp", (0, 28), {}, r"input shape \(0, 28\) must be a non-empty tuple of positive integers"),
        ("mlp", (), {}, r"input shape \(\) must be"),
        ("mlp", (40,), {"num_classes": 0}, r"num_classes=0 for model 'mlp' must be an integer >= 1"),
        ("mlp", (40,), {"seed": "0"}, r"seed='0' must be an integer"),
    ],
)
def test_bad_values(name: str, shape: tuple[int, ...], kwargs: dict[str, object], pattern: str) -> None:
    options = dict(kwargs)
    num_classes = options.pop("num_classes", 10)
    with pytest.raises(ConfigError, match=pattern):
        build_model(name, shape, num_classes, **options)  # type: ignore[arg-type]


def test_mlp_activation_option_builds_a_deep_linear_network() -> None:
    linear = build_model("mlp", (6,), 3, seed=0, hidden=[5, 4], activation="linear")
    x = torch.randn(7, 6)
    w1, w2, w3 = (m.weight for m in linear.modules() if isinstance(m, nn.Linear))
    b1, b2, b3 = (m.bias for m in linear.modules() if isinstance(m, nn.Linear))
    expected = ((x @ w1.T + b1) @ w2.T + b2) @ w3.T + b3  # no nonlinearity anywhere
    torch.testing.assert_close(linear(x), expected)
    with pytest.raises(ConfigError, match=r"activation='gelu' is not known.*relu, tanh, leaky_relu, linear"):
        build_model("mlp", (6,), 3, activation="gelu")


def test_mlp_residual_option_is_the_mnist1d_papers_mlp() -> None:
    """h1 = relu(W1 x), h2 = h1 + relu(W2 h1), out = W3 h2: a skip only where the widths agree."""
    net = build_model("mlp", (6,), 3, seed=0, hidden=[5, 5], residual=True)
    x = torch.randn(7, 6)
    (w1, b1), (w2, b2), (w3, b3) = ((m.weight, m.bias) for m in net.modules() if isinstance(m, nn.Linear))
    h1 = torch.relu(x @ w1.T + b1)
    h2 = h1 + torch.relu(h1 @ w2.T + b2)
    torch.testing.assert_close(net(x), h2 @ w3.T + b3)
    plain = build_model("mlp", (6,), 3, seed=0, hidden=[5, 5])
    assert [p.shape for p in net.parameters()] == [p.shape for p in plain.parameters()]
    assert not torch.allclose(net(x), plain(x))  # same weights (same seed), the skip changes the output
    with pytest.raises(ConfigError, match=r"residual='yes' must be true or false"):
        build_model("mlp", (6,), 3, residual="yes")


def test_lenet5_width_and_batchnorm_options() -> None:
    from torch import nn

    from secateurs.models import build_model

    plain = build_model("lenet5", (1, 28, 28), 10, seed=0)
    assert sum(p.numel() for p in plain.parameters()) == 61706  # the classic count, unchanged
    slim = build_model("lenet5", (1, 28, 28), 10, seed=0, batchnorm=True, width=2.0)
    norms = [m for m in slim.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    assert [m.num_features for m in norms] == [12, 32, 240, 168]
    assert slim(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
