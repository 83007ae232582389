"""Specification of agreement, latency, prune potential, excess error and `beyond_accuracy`."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
from torch import nn

from secateurs import ConfigError, prune
from secateurs.data import DataSplits, TensorLoader, load_dataset
from secateurs.eval import evaluate
from secateurs.eval.agreement import agreement, per_class_accuracy, per_class_drop, predict
from secateurs.eval.beyond import beyond_accuracy
from secateurs.eval.calibration import expected_calibration_error
from secateurs.eval.isometry import jsv_stats
from secateurs.eval.latency import cpu_latency
from secateurs.eval.potential import excess_error, prune_potential
from secateurs.eval.shift import ShiftSpec, corrupt_splits, shifted_test_split
from secateurs.models import build_model

NAN = float("nan")


def one_hot_logits(classes: list[int], num_classes: int = 3) -> torch.Tensor:
    return torch.eye(num_classes)[torch.tensor(classes)]


# -- predictions and agreement ---------------------------------------------------------------------
def test_predict_returns_eval_mode_logits_in_order_and_restores_modes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[2].eval()  # a deliberate mix that must survive
    x, y = torch.randn(10, 4), torch.arange(10) % 3
    logits, labels = predict(model, TensorLoader(x, y, 4, shuffle=False))
    assert [m.training for m in model.modules()] == [True, True, True, False]
    with torch.no_grad():
        # batch by batch as the loader gives them: a matmul's last bits depend on the batch size
        expected = torch.cat([copy.deepcopy(model).eval()(part) for part in x.split(4)])
    assert torch.equal(logits, expected) and torch.equal(labels, y)
    with pytest.raises(ConfigError, match="no samples"):
        predict(model, [])


def test_agreement_and_per_class_accuracy_by_hand() -> None:
    a = one_hot_logits([0, 1, 2, 1])
    b = one_hot_logits([0, 2, 2, 0])
    assert agreement(a, b) == 0.5 and agreement(a, a) == 1.0
    labels = torch.tensor([0, 0, 1, 1, 1])
    preds = one_hot_logits([0, 1, 1, 1, 0])
    acc = per_class_accuracy(preds, labels, 3)
    assert acc[:2].tolist() == [0.5, 2 / 3] and math.isnan(acc[2])  # class 2 has no samples
    drop = per_class_drop(one_hot_logits([0, 0, 1, 1, 1]), preds, labels, 3)
    assert drop[:2].tolist() == pytest.approx([0.5, 1 / 3]) and math.isnan(drop[2])
    with pytest.raises(ConfigError, match=r"shapes \(4, 3\) and \(2, 3\) cannot be compared"):
        agreement(a, b[:2])
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 2\)"):
        per_class_accuracy(preds, labels + 1, 2)


# -- latency ---------------------------------------------------------------------------------------
def test_latency_is_a_positive_median_and_changes_nothing() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 2))
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    seconds = cpu_latency(model, (8,), 4, repeats=3, warmup=1)
    assert 0 < seconds < math.inf
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="batch_size=0 must be an integer >= 1"):
        cpu_latency(model, (8,), 0)
    with pytest.raises(ConfigError, match="repeats=0"):
        cpu_latency(model, (8,), 1, repeats=0)


# -- prune potential and excess error ----------------------------------------------------------------
def test_prune_potential_hand_cases() -> None:
    points = [(0.9, 0.90), (0.5, 0.92), (0.7, 0.93), (0.95, 0.80)]  # unsorted on purpose
    assert prune_potential(points, 0.93) == 0.7  # threshold 0.925: only 0.7 qualifies (0.5 does not)
    assert prune_potential(points, 0.93, delta=0.03) == 0.9
    assert prune_potential(points, 0.99) == 0.0  # none qualifies
    assert prune_potential([], 0.9) == 0.0
    assert prune_potential([(0.8, 0.895)], 0.9) == 0.8  # exactly dense − δ counts, despite float noise
    assert prune_potential([(0.8, 0.70), (0.8, 0.90), (0.6, 0.90)], 0.9) == 0.8  # ties in sparsity
    with pytest.raises(ConfigError, match=r"accuracy=93 is not a fraction in \[0, 1\]"):
        prune_potential([(0.5, 93)], 0.93)


def test_excess_error_is_the_extra_error_increase_under_shift() -> None:
    # clean: error rises 0.02 (0.10 -> 0.12); shifted: 0.10 (0.30 -> 0.40); excess 0.08
    assert excess_error(0.90, 0.88, 0.70, 0.60) == pytest.approx(0.08, abs=1e-12)
    assert excess_error(0.90, 0.88, 0.70, 0.68) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match=r"pruned_shift_acc=1\.5"):
        excess_error(0.9, 0.9, 0.9, 1.5)


# -- beyond_accuracy ----------------------------------------------------------------------------------
def mnist1d_sized() -> DataSplits:
    """Synthetic data of MNIST-1D's exact size (4000/1000 × 40, 10 classes): no 9 s generation in tests."""
    return load_dataset("synthetic", input_shape=[40], num_classes=10, num_train=4000, num_test=1000)


@pytest.fixture(scope="module")
def pair() -> tuple[nn.Module, nn.Module, DataSplits]:
    splits = mnist1d_sized()
    dense = build_model("mlp", (40,), 10, seed=0)
    opt = torch.optim.SGD(dense.parameters(), lr=0.05)
    for x, y in splits.train_loader(128, seed=0):  # one epoch: accurate enough to have something to lose
        opt.zero_grad()
        nn.functional.cross_entropy(dense(x), y).backward()
        opt.step()
    pruned = copy.deepcopy(dense)
    prune(pruned, 0.95)
    return dense, pruned, splits


LABELS = ["gaussian_noise:0.1", "gaussian_noise:0.3", "gaussian_noise:0.5", "shift:2", "shift:4", "scale:0.5"]


def test_beyond_accuracy_keys_and_values(pair: tuple[nn.Module, nn.Module, DataSplits]) -> None:
    dense, pruned, splits = pair
    start = time.perf_counter()
    metrics = beyond_accuracy(pruned, splits, dense=dense)
    assert time.perf_counter() - start < 3.0  # the budget of one evaluate stage on MNIST-1D
    shifted = [*LABELS, "shifted_split"]
    assert set(metrics) == {
        "ece",
        "agreement",
        "per_class_drop_max",
        "per_class_drop_mean",
        *(f"acc@{s}" for s in shifted),
        *(f"excess_error@{s}" for s in shifted),
        "latency_b1_ms",
        "latency_b64_ms",
        "jsv_mean",
        "jsv_std",
        "jsv_max",
        "jsv_min",
    }
    logits, labels = predict(pruned, splits.test_loader())
    dense_logits, _ = predict(dense, splits.test_loader())
    assert metrics["ece"] == expected_calibration_error(logits, labels)
    assert metrics["agreement"] == agreement(logits, dense_logits)
    drop = per_class_drop(dense_logits, logits, labels, 10)
    assert metrics["per_class_drop_max"] == float(drop.max())
    noisy = corrupt_splits(splits, ShiftSpec.of("gaussian_noise", 0.3), seed=0)
    assert metrics["acc@gaussian_noise:0.3"] == evaluate(pruned, noisy.test_loader())["accuracy"]
    dense_noisy = evaluate(dense, noisy.test_loader())["accuracy"]
    clean = (
        evaluate(pruned, splits.test_loader())["accuracy"],
        evaluate(dense, splits.test_loader())["accuracy"],
    )
    assert metrics["excess_error@gaussian_noise:0.3"] == pytest.approx(
        excess_error(clean[1], clean[0], dense_noisy, metrics["acc@gaussian_noise:0.3"])
    )
    moved = shifted_test_split(splits, seed=0)
    assert metrics["acc@shifted_split"] == evaluate(pruned, moved.test_loader())["accuracy"]
    assert metrics["jsv_mean"] == jsv_stats(pruned, splits.test_x[:32])["jsv_mean"]
    assert metrics["latency_b1_ms"] > 0 and metrics["latency_b64_ms"] > 0


def test_beyond_accuracy_is_deterministic_except_latency(
    pair: tuple[nn.Module, nn.Module, DataSplits],
) -> None:
    dense, pruned, splits = pair
    a = beyond_accuracy(pruned, splits, dense=dense, latency=False, seed=1)
    assert a == beyond_accuracy(pruned, splits, dense=dense, latency=False, seed=1)
    assert "latency_b1_ms" not in a
    other = beyond_accuracy(pruned, splits, dense=dense, latency=False, seed=2)
    assert (
        other["acc@shifted_split"] != a["acc@shifted_split"]
        or other["acc@gaussian_noise:0.5"] != a["acc@gaussian_noise:0.5"]
    )


def test_a_model_compared_with_itself(pair: tuple[nn.Module, nn.Module, DataSplits]) -> None:
    dense, _, splits = pair
    metrics = beyond_accuracy(dense, splits, dense=dense, shifts=[], latency=False)
    assert metrics["agreement"] == 1.0 and metrics["per_class_drop_max"] == 0.0
    assert metrics["excess_error@shifted_split"] == 0.0
    assert [k for k in metrics if k.startswith("acc@")] == ["acc@shifted_split"]


def test_without_dense_there_are_no_comparison_metrics() -> None:
    splits = load_dataset("synthetic", input_shape=[1, 8, 8], num_classes=3, num_train=8, num_test=16)
    model = build_model("conv2", (1, 8, 8), 3, seed=0)
    metrics = beyond_accuracy(model, splits, latency=False)
    assert "agreement" not in metrics and not any(k.startswith("excess") for k in metrics)
    assert {"acc@contrast:0.25", "acc@blur:1.2", "acc@shifted_split"} <= set(metrics)
