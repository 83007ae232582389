"""Specification of the corruptions, the default shift grid and the shifted test split."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from secateurs import ConfigError
from secateurs.data import DatasetInfo, DataSplits, load_dataset
from secateurs.data.core import seeded_generator
from secateurs.eval.shift import (
    CORRUPTIONS,
    ShiftSpec,
    corrupt_splits,
    default_shifts,
    gaussian_kernel,
    shifted_test_split,
    translate,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def corrupt(name: str, x: torch.Tensor, severity: float, seed: int = 0) -> torch.Tensor:
    return CORRUPTIONS.get(name)(x, severity, gen(seed))


def sequences() -> DataSplits:
    return load_dataset("synthetic", input_shape=[40], num_classes=3, num_train=30, num_test=20)


def images() -> DataSplits:
    return load_dataset("synthetic", input_shape=[2, 6, 7], num_classes=3, num_train=30, num_test=20)


# -- corruptions ------------------------------------------------------------------------------------
def test_registry_lists_the_corruptions() -> None:
    assert CORRUPTIONS.names() == ["blur", "contrast", "gaussian_noise", "scale", "shift"]
    with pytest.raises(ConfigError, match=r"unknown corruption 'noise'.*gaussian_noise"):
        CORRUPTIONS.get("noise")


def test_gaussian_noise_adds_sigma_times_the_generators_normals() -> None:
    x = torch.arange(12.0).reshape(3, 4)
    out = corrupt("gaussian_noise", x, 0.3, seed=5)
    assert torch.equal(out, x + 0.3 * torch.randn(3, 4, generator=gen(5)))
    assert torch.equal(out, corrupt("gaussian_noise", x, 0.3, seed=5))  # same seed, same bits
    assert not torch.equal(out, corrupt("gaussian_noise", x, 0.3, seed=6))
    assert torch.equal(corrupt("gaussian_noise", x, 0.0), x)
    with pytest.raises(ConfigError, match=r"'gaussian_noise' got severity -0.1"):
        corrupt("gaussian_noise", x, -0.1)


def test_contrast_blends_each_image_toward_its_own_mean() -> None:
    x = torch.tensor([[0.0, 2.0], [4.0, 6.0]]).reshape(1, 1, 2, 2)
    x = torch.cat([x, x + 10])  # second image: mean 13 instead of 3
    out = corrupt("contrast", x, 0.5)
    assert torch.equal(out[0, 0], torch.tensor([[1.5, 2.5], [3.5, 4.5]]))
    assert torch.equal(out[1, 0], torch.tensor([[11.5, 12.5], [13.5, 14.5]]))
    assert torch.equal(corrupt("contrast", x, 1.0), x)


def test_blur_kernel_size_and_normalisation() -> None:
    assert gaussian_kernel(0.7).numel() == 5  # 2·ceil(1.4)+1
    assert gaussian_kernel(1.2).numel() == 7  # 2·ceil(2.4)+1
    k = gaussian_kernel(0.5)
    a, b = math.exp(-1 / (2 * 0.25)), 1.0
    assert torch.allclose(k, torch.tensor([a, b, a], dtype=torch.float64) / (2 * a + b))


def test_blur_is_depthwise_separable_with_reflect_padding() -> None:
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 1, 1] = 1.0  # channel 1 stays zero: no mixing between channels
    out = corrupt("blur", x, 0.5)
    a, b = gaussian_kernel(0.5)[:2].tolist()
    assert torch.equal(out[0, 1], torch.zeros(4, 4))
    assert out[0, 0, 1, 1].item() == pytest.approx(b * b)
    assert out[0, 0, 1, 2].item() == pytest.approx(b * a)
    # reflect padding mirrors row/column 1 into the border: the corner sees the impulse twice per axis
    assert out[0, 0, 0, 0].item() == pytest.approx((2 * a) * (2 * a))
    const = torch.full((2, 3, 5, 5), 0.25)
    assert torch.allclose(corrupt("blur", const, 1.2), const)


def test_blur_rejects_a_kernel_wider_than_the_image() -> None:
    with pytest.raises(ConfigError, match=r"radius of 3 pixels, too large for 3x3 images"):
        corrupt("blur", torch.zeros(1, 1, 3, 3), 1.2)


def test_shift_translates_along_the_last_axis_with_zero_fill() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    assert torch.equal(corrupt("shift", x, 2), torch.tensor([[0.0, 0.0, 1.0, 2.0, 3.0]]))
    assert torch.equal(corrupt("shift", x, 2.9), corrupt("shift", x, 2))  # int() truncates
    assert torch.equal(corrupt("shift", x, -1), torch.tensor([[2.0, 3.0, 4.0, 5.0, 0.0]]))
    assert torch.equal(corrupt("shift", x, 7), torch.zeros(1, 5))
    channels = torch.stack([x, 10 * x], dim=1)  # (N, C, L)
    assert torch.equal(corrupt("shift", channels, 1)[0, 1], torch.tensor([0.0, 10.0, 20.0, 30.0, 40.0]))


def test_translate_per_sample_with_edge_fill() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    out = translate(x, torch.tensor([1, -2]), 1, fill="edge")
    assert torch.equal(out, torch.tensor([[1.0, 1.0, 2.0, 3.0], [3.0, 4.0, 4.0, 4.0]]))


def test_scale_multiplies_the_amplitude() -> None:
    x = torch.tensor([[1.0, -2.0]])
    assert torch.equal(corrupt("scale", x, 0.5), torch.tensor([[0.5, -1.0]]))


@pytest.mark.parametrize(
    ("name", "shape", "rank"),
    [("blur", (2, 40), 2), ("contrast", (2, 3, 40), 3), ("shift", (2, 1, 8, 8), 4)],
)
def test_a_corruption_that_does_not_fit_the_rank_is_an_error(
    name: str, shape: tuple[int, ...], rank: int
) -> None:
    with pytest.raises(ConfigError, match=rf"corruption '{name}' needs .* got rank {rank}"):
        corrupt(name, torch.zeros(shape), 1.0)


# -- shift grids and corrupted splits ------------------------------------------------------------------
def test_default_shifts_per_input_kind() -> None:
    seq = DatasetInfo("s", (40,), 10, 1, 1)
    img = DatasetInfo("i", (1, 8, 8), 10, 1, 1)
    noise = ["gaussian_noise:0.1", "gaussian_noise:0.3", "gaussian_noise:0.5"]
    assert [s.label for s in default_shifts(seq)] == [*noise, "shift:2", "shift:4", "scale:0.5"]
    assert [s.label for s in default_shifts(img)] == [
        *noise,
        "contrast:0.5",
        "contrast:0.25",
        "blur:0.7",
        "blur:1.2",
    ]
    assert default_shifts(seq)[3] == ShiftSpec("shift:2", "shift", 2.0)
    with pytest.raises(ConfigError, match=r"shape \(1, 2, 3, 4\).*explicit list of ShiftSpec"):
        default_shifts(DatasetInfo("v", (1, 2, 3, 4), 2, 1, 1))


@pytest.mark.parametrize("make", [sequences, images])
def test_every_default_shift_applies_to_its_kind_of_data(make: Callable[[], DataSplits]) -> None:
    splits = make()
    for spec in default_shifts(splits.info):
        out = corrupt_splits(splits, spec, seed=0)
        assert out.test_x.shape == splits.test_x.shape and out.test_x.dtype == torch.float32
        assert not torch.equal(out.test_x, splits.test_x), spec


def test_corrupt_splits_changes_only_the_test_inputs_deterministically() -> None:
    splits = sequences()
    train_x = splits.train_x.clone()
    spec = ShiftSpec.of("gaussian_noise", 0.3)
    a, b = corrupt_splits(splits, spec, seed=3), corrupt_splits(splits, spec, seed=3)
    assert torch.equal(a.test_x, b.test_x)
    assert not torch.equal(a.test_x, corrupt_splits(splits, spec, seed=4).test_x)
    noise = torch.randn(20, 40, generator=seeded_generator(3))  # the generator seeded_generator(seed) gives
    assert torch.equal(a.test_x, splits.test_x + 0.3 * noise)
    assert torch.equal(a.train_x, train_x) and torch.equal(a.test_y, splits.test_y)
    assert torch.equal(splits.train_x, train_x)  # the input splits are not modified


# -- the shifted split ----------------------------------------------------------------------------------
def test_shifted_images_are_per_sample_translations_of_at_most_two_pixels() -> None:
    splits = images()
    out = shifted_test_split(splits, seed=1)
    assert torch.equal(out.test_x, shifted_test_split(splits, seed=1).test_x)
    assert torch.equal(out.train_x, splits.train_x) and torch.equal(out.test_y, splits.test_y)
    found = []
    for i in range(splits.info.num_test):
        x = splits.test_x[i : i + 1]
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(
                translate(
                    translate(x, torch.tensor([dy]), 2, fill="edge"), torch.tensor([dx]), 3, fill="edge"
                ),
                out.test_x[i : i + 1],
            )
        ]
        assert len(matches) == 1, i
        found.append(matches[0])
    assert len(set(found)) > 5  # offsets differ between samples


def test_shifted_sequences_are_translated_by_at_most_three_plus_mild_noise() -> None:
    splits = load_dataset("synthetic", input_shape=[40], num_classes=3, num_train=30, num_test=40)
    x = 5 * torch.randn(40, 40, generator=gen(0))  # large variance: a wrong offset leaves a large residual
    splits = DataSplits(splits.info, splits.train_x, splits.train_y, x, splits.test_y)
    out = shifted_test_split(splits, seed=0).test_x
    offsets = []
    for i in range(40):
        residuals = {
            s: (out[i] - translate(x[i : i + 1], torch.tensor([s]), 1, fill="edge")[0]).std().item()
            for s in range(-3, 4)
        }
        best = min(residuals, key=residuals.__getitem__)
        assert 0.02 < residuals[best] < 0.08, (i, residuals[best])  # the mild noise, σ = 0.05
        offsets.append(best)
    assert set(offsets) == set(range(-3, 4))
    assert not torch.equal(out, shifted_test_split(splits, seed=1).test_x)
