"""Specifications for secateurs.data: data sets, loaders, caching and class-balanced sampling."""

from __future__ import annotations

import gzip
import logging
import random
import re
import shutil
import socket
from pathlib import Path

import mnist1d.data
import numpy as np
import pytest
import torch

from secateurs.core.errors import ConfigError, DataUnavailableError
from secateurs.data import (
    DATASETS,
    DatasetInfo,
    DataSplits,
    TensorLoader,
    cache_dir,
    class_balanced_batch,
    load_dataset,
)
from secateurs.data.fashion import DEFAULT_ROOT, FILES, MEAN, STD, read_idx

FASHION_PRESENT = all((DEFAULT_ROOT / name).is_file() for name in FILES.values())
INSTALL = re.escape("apt-get install -y dataset-fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache dir, so none touches the user's real cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SECATEURS_CACHE", str(cache))
    monkeypatch.delenv("SECATEURS_FASHION_MNIST_DIR", raising=False)
    return cache


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("a data loader tried to open a network connection")


def _assert_same(a: DataSplits, b: DataSplits) -> None:
    assert a.info == b.info
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def _toy(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """x = 10 * y, so a batch whose x and y got separated is detectable."""
    y = torch.arange(n)
    return (10 * y).float().unsqueeze(1), y


# ----------------------------------------------------------------------------- registry


def test_registered_names() -> None:
    assert DATASETS.names() == [
        "cifar10",
        "cifar100",
        "digits",
        "fashion_mnist",
        "image_folder",
        "mnist1d",
        "random_tokens",
        "synthetic",
        "text",
    ]


def test_unknown_dataset_is_config_error_listing_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown data set 'mnist2d'.*mnist1d"):
        load_dataset("mnist2d")


def test_unknown_option_names_it_and_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"'nmu_train'.*synthetic.*num_train"):
        load_dataset("synthetic", nmu_train=3)


def test_option_on_optionless_dataset_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"'root'.*'digits'.*takes no options"):
        load_dataset("digits", root="/tmp")


# ----------------------------------------------------------------------------- TensorLoader


def test_shuffled_epoch_covers_every_sample_once_and_keeps_pairs() -> None:
    x, y = _toy(10)
    loader = TensorLoader(x, y, 3, shuffle=True, seed=7)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [3, 3, 3, 1]
    assert len(loader) == 4
    ys = torch.cat([b[1] for b in batches])
    assert sorted(ys.tolist()) == list(range(10))
    assert not torch.equal(ys, y), "seed 7 should not give the identity order"
    for bx, by in batches:
        assert torch.equal(bx.squeeze(1), 10 * by.float())


def test_unshuffled_order_is_natural() -> None:
    x, y = _toy(5)
    loader = TensorLoader(x, y, 2, shuffle=False)
    assert [b[1].tolist() for b in loader] == [[0, 1], [2, 3], [4]]


def _orders(loader: TensorLoader, epochs: int) -> list[list[int]]:
    return [torch.cat([b[1] for b in loader]).tolist() for _ in range(epochs)]


def test_same_seed_and_epoch_give_same_order_and_epochs_differ() -> None:
    x, y = _toy(50)
    a = _orders(TensorLoader(x, y, 8, shuffle=True, seed=3), 3)
    b = _orders(TensorLoader(x, y, 8, shuffle=True, seed=3), 3)
    assert a == b
    assert a[0] != a[1] and a[1] != a[2] and a[0] != a[2]
    other_seed = _orders(TensorLoader(x, y, 8, shuffle=True, seed=4), 1)
    assert other_seed[0] != a[0]


def test_set_epoch_replays_and_skips_ahead() -> None:
    x, y = _toy(50)
    reference = _orders(TensorLoader(x, y, 8, shuffle=True, seed=3), 3)
    loader = TensorLoader(x, y, 8, shuffle=True, seed=3)
    loader.set_epoch(2)
    assert loader.epoch == 2
    assert _orders(loader, 1) == [reference[2]]
    assert loader.epoch == 3
    loader.set_epoch(0)
    assert _orders(loader, 2) == reference[:2]


def test_iter_advances_epoch_even_if_not_consumed() -> None:
    x, y = _toy(4)
    loader = TensorLoader(x, y, 2, shuffle=True)
    iter(loader)
    iter(loader)
    assert loader.epoch == 2


def test_order_ignores_and_preserves_global_rng() -> None:
    x, y = _toy(50)
    torch.manual_seed(1)
    first = _orders(TensorLoader(x, y, 8, shuffle=True, seed=0), 1)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = _orders(TensorLoader(x, y, 8, shuffle=True, seed=0), 1)
    assert first == second
    assert torch.equal(torch.get_rng_state(), state)


def test_drop_last() -> None:
    x, y = _toy(10)
    loader = TensorLoader(x, y, 3, shuffle=True, drop_last=True)
    batches = list(loader)
    assert len(loader) == 3
    assert [len(b[1]) for b in batches] == [3, 3, 3]
    assert len(set(torch.cat([b[1] for b in batches]).tolist())) == 9
    too_big = TensorLoader(x, y, 11, shuffle=False, drop_last=True)
    assert len(too_big) == 0 and list(too_big) == []


def test_len_and_properties() -> None:
    x, y = _toy(10)
    loader = TensorLoader(x, y, 4, shuffle=False)
    assert (len(loader), loader.batch_size, loader.dataset_size) == (3, 4, 10)
    assert len(TensorLoader(x, y, 5, shuffle=False)) == 2
    assert len(TensorLoader(x, y, 10, shuffle=False)) == 1


def test_loader_rejects_bad_arguments() -> None:
    x, y = _toy(10)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, got 0"):
        TensorLoader(x, y, 0, shuffle=True)
    with pytest.raises(ConfigError, match="non-negative integers, got -1"):
        TensorLoader(x, y, 2, shuffle=True, seed=-1)
    with pytest.raises(ValueError, match="x has 10 samples but y has 9"):
        TensorLoader(x, y[:9], 2, shuffle=True)


# ----------------------------------------------------------------------------- DataSplits


def test_loaders_from_splits() -> None:
    splits = load_dataset("synthetic", num_train=100, num_test=30)
    train = splits.train_loader(32, seed=1)
    assert len(train) == 4 and train.dataset_size == 100
    assert torch.cat([b[1] for b in train]).tolist() != splits.train_y.tolist()  # shuffled
    test = splits.test_loader()
    assert len(test) == 1 and test.batch_size == 1024
    (tx, ty), *rest = list(test)
    assert rest == [] and torch.equal(tx, splits.test_x) and torch.equal(ty, splits.test_y)
    assert len(splits.train_loader(32, drop_last=True)) == 3


def test_subset_takes_first_samples() -> None:
    splits = load_dataset("synthetic")
    small = splits.subset(10, 5)
    assert (small.info.num_train, small.info.num_test) == (10, 5)
    assert small.info.input_shape == splits.info.input_shape
    assert torch.equal(small.train_x, splits.train_x[:10])
    assert torch.equal(small.test_y, splits.test_y[:5])
    assert splits.subset(n_test=3).info.num_train == 256
    with pytest.raises(ConfigError, match=r"n_train=257 is out of range.*between 1 and 256"):
        splits.subset(257)


def test_splits_reject_inconsistent_tensors() -> None:
    info = DatasetInfo("x", (2,), 2, 3, 1)
    good = (torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"train_x has shape \(3, 3\), expected \(3, 2\)"):
        DataSplits(info, torch.zeros(3, 3), good[1], good[2], torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="test_y must be int64"):
        DataSplits(info, *good, torch.zeros(1, dtype=torch.int32))


# ----------------------------------------------------------------------------- class_balanced_batch


def test_class_balanced_batch_exact_counts_grouped_and_from_train() -> None:
    splits = load_dataset("synthetic", num_classes=4, num_train=40)
    x, y = class_balanced_batch(splits, 3, seed=5)
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    # Every row is a distinct training sample carrying its own label.
    matches = (x.flatten(1)[:, None, :] == splits.train_x.flatten(1)[None, :, :]).all(-1)
    rows = matches.float().argmax(1)
    assert matches.any(1).all()
    assert len(set(rows.tolist())) == 12
    assert torch.equal(splits.train_y[rows], y)


def test_class_balanced_batch_is_deterministic_per_seed() -> None:
    splits = load_dataset("synthetic", num_train=200)
    a, b = class_balanced_batch(splits, 10, seed=1), class_balanced_batch(splits, 10, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = class_balanced_batch(splits, 10, seed=2)
    assert not torch.equal(a[0], c[0])


def test_class_balanced_batch_errors_when_a_class_is_too_small() -> None:
    splits = load_dataset("synthetic", num_classes=4, num_train=10)  # class sizes 3, 3, 2, 2
    assert splits.train_y.bincount().tolist() == [3, 3, 2, 2]
    assert class_balanced_batch(splits, 2)[1].bincount().tolist() == [2, 2, 2, 2]
    with pytest.raises(ConfigError, match=r"class 2 of 'synthetic' has only 2 .*per_class <= 2"):
        class_balanced_batch(splits, 3)
    with pytest.raises(ConfigError, match="per_class must be a positive integer"):
        class_balanced_batch(splits, 0)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_defaults() -> None:
    s = load_dataset("synthetic")
    assert s.info == DatasetInfo("synthetic", (1, 8, 8), 4, 256, 64)
    assert s.train_x.shape == (256, 1, 8, 8) and s.train_x.dtype == torch.float32
    assert s.train_y.dtype == torch.int64
    assert s.train_y.bincount().tolist() == [64] * 4
    assert s.test_y.bincount().tolist() == [16] * 4


def test_synthetic_options_and_determinism() -> None:
    a = load_dataset("synthetic", input_shape=[5], num_classes=3, num_train=30, num_test=9, seed=2)
    assert a.info == DatasetInfo("synthetic", (5,), 3, 30, 9)
    _assert_same(
        a, load_dataset("synthetic", input_shape=(5,), num_classes=3, num_train=30, num_test=9, seed=2)
    )
    other = load_dataset("synthetic", input_shape=[5], num_classes=3, num_train=30, num_test=9, seed=3)
    assert not torch.equal(a.train_x, other.train_x)
    bigger = load_dataset("synthetic", input_shape=[5], num_classes=3, num_train=60, num_test=9, seed=2)
    assert torch.equal(bigger.test_x, a.test_x), "the test set must not depend on num_train"


def test_synthetic_is_learnable() -> None:
    """A nearest-class-mean classifier fitted on the training split generalises to the test split."""
    s = load_dataset("synthetic", seed=0)
    train, test = s.train_x.flatten(1), s.test_x.flatten(1)
    centroids = torch.stack([train[s.train_y == c].mean(0) for c in range(4)])
    predicted = torch.cdist(test, centroids).argmin(1)
    accuracy = (predicted == s.test_y).float().mean().item()
    assert accuracy >= 0.9  # chance is 0.25


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_classes": 1}, r"num_classes=1 is invalid.*>= 2"),
        ({"num_train": 0}, r"num_train=0 is invalid"),
        ({"input_shape": []}, r"input_shape=\[\] is invalid"),
        ({"input_shape": "1x8x8"}, r"input_shape='1x8x8' is invalid"),
        ({"input_shape": [1, 0]}, r"input_shape=0 is invalid"),
        ({"seed": -1}, r"seed=-1 is invalid"),
    ],
)
def test_synthetic_rejects_bad_values(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_dataset("synthetic", **options)


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_range_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    d = load_dataset("digits")
    assert d.info == DatasetInfo("digits", (1, 8, 8), 10, 1437, 360)
    assert d.train_x.dtype == torch.float32 and d.test_y.dtype == torch.int64
    assert d.train_x.min().item() == 0.0 and d.train_x.max().item() == 1.0
    # sklearn values are integers 0..16, so x * 16 must be integral.
    assert torch.equal(d.train_x * 16, (d.train_x * 16).round())
    # Stratified: each class's test share is within one sample of 360/1797 of its size.
    totals = torch.cat([d.train_y, d.test_y]).bincount()
    test_counts = d.test_y.bincount()
    assert ((test_counts - totals * 360 / 1797).abs() <= 1).all()
    _assert_same(d, load_dataset("digits"))


# ----------------------------------------------------------------------------- mnist1d


@pytest.fixture(scope="module")
def real_mnist1d(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataSplits, Path]:
    """Generate MNIST-1D once (a few seconds) with the network blocked; return it and its cache file."""
    cache = tmp_path_factory.mktemp("mnist1d-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SECATEURS_CACHE", str(cache))
        mp.setattr(socket.socket, "connect", _no_network)
        splits = load_dataset("mnist1d")
    (cache_file,) = cache.glob("mnist1d-*.npz")
    return splits, cache_file


def test_mnist1d_shapes_and_scale(real_mnist1d: tuple[DataSplits, Path]) -> None:
    d, _ = real_mnist1d
    assert d.info == DatasetInfo("mnist1d", (40,), 10, 4000, 1000)
    assert d.train_x.shape == (4000, 40) and d.train_x.dtype == torch.float32
    assert d.train_y.dtype == torch.int64
    assert torch.cat([d.train_y, d.test_y]).bincount().tolist() == [500] * 10
    # Kept raw: mnist1d already standardises the whole set.
    assert abs(d.train_x.mean().item()) < 0.01 and abs(d.train_x.std().item() - 1) < 0.01


def test_mnist1d_cache_is_reused_bit_for_bit(
    real_mnist1d: tuple[DataSplits, Path], _isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original, cache_file = real_mnist1d
    _isolated_cache.mkdir()
    shutil.copy(cache_file, _isolated_cache / cache_file.name)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("make_dataset called although the cache is valid")

    monkeypatch.setattr(mnist1d.data, "make_dataset", forbidden)
    _assert_same(load_dataset("mnist1d"), original)


def test_mnist1d_extra_test_appends_fresh_samples_and_keeps_the_rest(
    real_mnist1d: tuple[DataSplits, Path], _isolated_cache: Path
) -> None:
    original, cache_file = real_mnist1d
    _isolated_cache.mkdir()
    shutil.copy(cache_file, _isolated_cache / cache_file.name)
    more = load_dataset("mnist1d", extra_test=30)
    assert more.info == DatasetInfo("mnist1d", (40,), 10, 4000, 1030)
    assert torch.equal(more.train_x, original.train_x) and torch.equal(more.train_y, original.train_y)
    assert torch.equal(more.test_x[:1000], original.test_x) and torch.equal(
        more.test_y[:1000], original.test_y
    )
    fresh = more.test_x[1000:]
    assert more.test_y[1000:].bincount().tolist() == [3] * 10  # the generator makes each class alike
    assert torch.cdist(fresh, torch.cat([original.train_x, original.test_x])).min() > 0.1  # new samples
    assert abs(fresh.mean().item()) < 1e-4 and abs(fresh.std().item() - 1) < 0.05  # standardised alike
    _assert_same(load_dataset("mnist1d", extra_test=30), more)  # cached: the same samples again
    for bad in (-10, 15, True, "100"):
        with pytest.raises(ConfigError, match=r"extra_test=.* is invalid.*multiple of 10"):
            load_dataset("mnist1d", extra_test=bad)


class FakeMaker:
    """Stands in for mnist1d's slow generator; reseeds the global RNGs like the real one."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, args: object = None) -> dict[str, np.ndarray]:
        self.calls += 1
        random.seed(42)
        np.random.seed(42)
        rng = np.random.default_rng(0)
        return {
            "x": rng.standard_normal((4000, 40)),
            "y": rng.integers(0, 10, 4000),
            "x_test": rng.standard_normal((1000, 40)),
            "y_test": rng.integers(0, 10, 1000),
        }


@pytest.fixture
def fake_maker(monkeypatch: pytest.MonkeyPatch) -> FakeMaker:
    maker = FakeMaker()
    monkeypatch.setattr(mnist1d.data, "make_dataset", maker)
    return maker


def test_mnist1d_generates_once_then_uses_cache(fake_maker: FakeMaker, _isolated_cache: Path) -> None:
    first = load_dataset("mnist1d")
    second = load_dataset("mnist1d")
    assert fake_maker.calls == 1
    _assert_same(first, second)
    assert [p.name.startswith("mnist1d-") for p in _isolated_cache.iterdir()] == [True]  # no temp files left


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_shape(path: Path) -> None:
    np.savez(path, x=np.zeros((3, 40), np.float32), y=np.zeros(3, np.int64), x_test=0, y_test=0)


@pytest.mark.parametrize(
    "damage",
    [lambda p: p.write_bytes(b"not a zip file"), _truncate, _wrong_shape],
    ids=["garbage", "truncated", "wrong-shape"],
)
def test_mnist1d_corrupt_cache_is_regenerated(
    fake_maker: FakeMaker, _isolated_cache: Path, caplog: pytest.LogCaptureFixture, damage: object
) -> None:
    original = load_dataset("mnist1d")
    (cache_file,) = _isolated_cache.glob("mnist1d-*.npz")
    damage(cache_file)  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="secateurs.data"):
        regenerated = load_dataset("mnist1d")
    assert fake_maker.calls == 2
    _assert_same(regenerated, original)
    assert any("regenerating" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    load_dataset("mnist1d")
    assert fake_maker.calls == 2, "the rewritten cache file must be valid"


def test_mnist1d_unwritable_cache_still_loads(
    fake_maker: FakeMaker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SECATEURS_CACHE", str(blocker / "cache"))  # parent is a file: mkdir fails
    with caplog.at_level(logging.WARNING, logger="secateurs.data"):
        d = load_dataset("mnist1d")
    assert d.info.num_train == 4000
    assert any("continuing without the cache" in r.message for r in caplog.records)


def test_mnist1d_leaves_global_rng_untouched(fake_maker: FakeMaker) -> None:
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    load_dataset("mnist1d")
    assert fake_maker.calls == 1
    assert (random.random(), np.random.rand()) == expected


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SECATEURS_CACHE", str(tmp_path / "override"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "override"
    monkeypatch.delenv("SECATEURS_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "secateurs"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "secateurs"


# ----------------------------------------------------------------------------- fashion_mnist


def _idx(path: Path, array: np.ndarray, magic: bytes | None = None) -> None:
    header = magic or bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + dims + array.astype(np.uint8).tobytes()))


@pytest.fixture
def tiny_fashion(tmp_path: Path) -> Path:
    """A fake Fashion-MNIST root: 2 training images (all 0, all 255) and 1 test image."""
    root = tmp_path / "fashion"
    root.mkdir()
    _idx(root / FILES["train_x"], np.stack([np.zeros((28, 28)), np.full((28, 28), 255)]))
    _idx(root / FILES["train_y"], np.array([3, 9]))
    _idx(root / FILES["test_x"], np.full((1, 28, 28), 51))
    _idx(root / FILES["test_y"], np.array([0]))
    return root


def test_fashion_parses_and_normalises_tiny_files(tiny_fashion: Path) -> None:
    d = load_dataset("fashion_mnist", root=tiny_fashion)
    assert d.info == DatasetInfo("fashion_mnist", (1, 28, 28), 10, 2, 1)
    assert d.train_y.tolist() == [3, 9] and d.test_y.tolist() == [0]
    # (0/255 - 0.2860)/0.3530, (255/255 - 0.2860)/0.3530, (51/255 - 0.2860)/0.3530
    expected = {"black": -0.8101983, "white": 2.0226629, "grey": -0.2436261}
    assert torch.allclose(d.train_x[0], torch.full((1, 28, 28), expected["black"]), atol=1e-6)
    assert torch.allclose(d.train_x[1], torch.full((1, 28, 28), expected["white"]), atol=1e-6)
    assert torch.allclose(d.test_x[0], torch.full((1, 28, 28), expected["grey"]), atol=1e-6)


def test_fashion_env_var_and_option_precedence(
    tiny_fashion: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECATEURS_FASHION_MNIST_DIR", str(tiny_fashion))
    assert load_dataset("fashion_mnist").info.num_train == 2
    with pytest.raises(DataUnavailableError, match=re.escape(str(tmp_path / "elsewhere"))):
        load_dataset("fashion_mnist", root=tmp_path / "elsewhere")


def test_fashion_missing_files_explain_install(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataUnavailableError, match=re.escape(str(missing / FILES["train_x"]))) as err:
        load_dataset("fashion_mnist", root=missing)
    assert re.search(INSTALL, str(err.value))
    assert "apt-get update" in str(err.value)


def test_fashion_root_must_be_a_path() -> None:
    with pytest.raises(ConfigError, match="root=3 is not a path"):
        load_dataset("fashion_mnist", root=3)


def _bad_magic(root: Path) -> None:
    _idx(root / FILES["train_x"], np.zeros((2, 28, 28)), magic=bytes([0, 0, 0x0D, 3]))


def _short_payload(root: Path) -> None:
    data = gzip.decompress((root / FILES["test_x"]).read_bytes())
    (root / FILES["test_x"]).write_bytes(gzip.compress(data[:-5]))


def _not_gzip(root: Path) -> None:
    (root / FILES["train_y"]).write_bytes(b"plain bytes")


def _truncated_gzip(root: Path) -> None:
    raw = (root / FILES["train_x"]).read_bytes()
    (root / FILES["train_x"]).write_bytes(raw[: len(raw) // 2])


def _label_count(root: Path) -> None:
    _idx(root / FILES["train_y"], np.array([1, 2, 3]))


def _label_range(root: Path) -> None:
    _idx(root / FILES["test_y"], np.array([10]))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_bad_magic, r"bad idx magic number 0x00000d03, expected 0x00000803"),
        (_short_payload, r"payload has 779 bytes"),
        (_not_gzip, r"not a valid gzip file"),
        (_truncated_gzip, r"not a valid gzip file"),
        (_label_count, r"3 labels for 2 images"),
        (_label_range, r"label 10 is outside 0\.\.9"),
    ],
)
def test_fashion_corrupt_files_are_reported(tiny_fashion: Path, damage: object, message: str) -> None:
    damage(tiny_fashion)  # type: ignore[operator]
    with pytest.raises(DataUnavailableError, match=rf"is corrupt: {message}.*--reinstall"):
        load_dataset("fashion_mnist", root=tiny_fashion)


def test_read_idx_hand_made(tmp_path: Path) -> None:
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])))
    assert read_idx(path, ndim=2).tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.fixture(scope="module")
def real_fashion() -> DataSplits:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SECATEURS_FASHION_MNIST_DIR", raising=False)
        mp.setattr(socket.socket, "connect", _no_network)
        return load_dataset("fashion_mnist")


@pytest.mark.skipif(not FASHION_PRESENT, reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_real_data(real_fashion: DataSplits) -> None:
    d = real_fashion
    assert d.info == DatasetInfo("fashion_mnist", (1, 28, 28), 10, 60000, 10000)
    assert d.train_x.shape == (60000, 1, 28, 28) and d.train_x.dtype == torch.float32
    assert d.train_y.dtype == torch.int64
    assert d.train_y.bincount().tolist() == [6000] * 10
    assert d.test_y.bincount().tolist() == [1000] * 10
    # MEAN and STD are the training set's own statistics, so standardised data is ~N(0, 1).
    assert abs(d.train_x.mean().item()) < 1e-3 and abs(d.train_x.std().item() - 1) < 1e-3
    raw = read_idx(DEFAULT_ROOT / FILES["test_x"], ndim=3)[:5].astype(np.float32)
    expected = torch.from_numpy((raw / 255 - MEAN) / STD).unsqueeze(1)
    assert torch.allclose(d.test_x[:5], expected, atol=1e-5)
