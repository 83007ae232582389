"""Data sets that are generated or shipped with a Python package: mnist1d, digits, synthetic."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from secateurs.core.errors import ConfigError
from secateurs.data.cache import cache_dir, read_npz, write_npz_atomic
from secateurs.data.catalog import dataset
from secateurs.data.core import DatasetInfo, DataSplits, seeded_generator

log = logging.getLogger(__name__)

_SPLIT_KEYS = ("x", "y", "x_test", "y_test")


def _splits(name: str, num_classes: int, arrays: dict[str, np.ndarray]) -> DataSplits:
    """Wrap numpy arrays (keys x, y, x_test, y_test) as float32 / int64 tensors."""
    train_x = torch.from_numpy(np.ascontiguousarray(arrays["x"], dtype=np.float32))
    test_x = torch.from_numpy(np.ascontiguousarray(arrays["x_test"], dtype=np.float32))
    info = DatasetInfo(
        name=name,
        input_shape=tuple(train_x.shape[1:]),
        num_classes=num_classes,
        num_train=int(train_x.shape[0]),
        num_test=int(test_x.shape[0]),
    )
    return DataSplits(
        info=info,
        train_x=train_x,
        train_y=torch.from_numpy(np.asarray(arrays["y"], dtype=np.int64)),
        test_x=test_x,
        test_y=torch.from_numpy(np.asarray(arrays["y_test"], dtype=np.int64)),
    )


# --------------------------------------------------------------------------- mnist1d


def _mnist1d_args() -> dict[str, object]:
    from mnist1d.data import get_dataset_args

    return get_dataset_args(as_dict=True)


def _mnist1d_cache_path(args: dict[str, object]) -> Path:
    """Name the cache after the package version and generation arguments, so changing either
    produces a new file instead of silently reusing stale data."""
    relevant = {k: v for k, v in args.items() if k != "url"}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]
    version = importlib.metadata.version("mnist1d")
    return cache_dir() / f"mnist1d-{version}-{digest}.npz"


def mnist1d_cached() -> bool:
    """Whether MNIST-1D has already been generated into the cache."""
    return _mnist1d_cache_path(_mnist1d_args()).is_file()


def _mnist1d_expected(args: dict[str, object]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    n_train = int(int(args["num_samples"]) * float(args["train_split"]))
    n_test = int(args["num_samples"]) - n_train
    length = int(args["final_seq_length"])
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    return {
        "x": ((n_train, length), f32),
        "y": ((n_train,), i64),
        "x_test": ((n_test, length), f32),
        "y_test": ((n_test,), i64),
    }


@contextlib.contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """mnist1d reseeds the global `random` and `numpy.random` states; undo that so loading
    data does not change the random numbers the caller draws afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _generate_mnist1d(args: dict[str, object] | None = None) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset
    from mnist1d.utils import ObjectView

    log.info("generating MNIST-1D (a few seconds, cached afterwards)")
    with _global_rng_preserved():
        raw = make_dataset(get_dataset_args() if args is None else ObjectView(dict(args)))
    return {
        "x": raw["x"].astype(np.float32),
        "y": raw["y"].astype(np.int64),
        "x_test": raw["x_test"].astype(np.float32),
        "y_test": raw["y_test"].astype(np.int64),
    }


def _mnist1d_arrays(args: dict[str, object]) -> dict[str, np.ndarray]:
    path = _mnist1d_cache_path(args)
    arrays = read_npz(path, _mnist1d_expected(args))
    if arrays is None:
        arrays = _generate_mnist1d(args)
        write_npz_atomic(path, arrays)
    return arrays


@dataset("mnist1d", help="MNIST-1D: 4000/1000 sequences of length 40, 10 classes (generated locally)")
def load_mnist1d(extra_test: int = 0) -> DataSplits:
    """MNIST-1D with the package's default arguments, generated once and cached as .npz.

    Values are kept as generated: `make_dataset` already centres the whole set and scales it
    to unit standard deviation (train mean ~0.0, std ~1.0), so no further normalisation.

    `extra_test` (a multiple of 10) appends that many test samples drawn from the same
    distribution by the generator with the next seed (as the MNIST-1D paper's notebook makes "a new
    dataset from the same distribution"), standardised by their own mean and std as make_dataset
    does; the training set and the first 1000 test samples are unchanged. 1000 test samples give
    one accuracy a standard error of about 1.5 points, too coarse for half-point comparisons.
    """
    if isinstance(extra_test, bool) or not isinstance(extra_test, int) or extra_test < 0 or extra_test % 10:
        raise ConfigError(
            f"mnist1d option extra_test={extra_test!r} is invalid",
            fix="use a non-negative multiple of 10 (the generator makes as many samples of each class)",
        )
    args = _mnist1d_args()
    arrays = _mnist1d_arrays(args)
    if extra_test:
        more = _mnist1d_arrays(
            {**args, "seed": int(args["seed"]) + 1, "num_samples": extra_test, "train_split": 0.0}
        )
        arrays = {**arrays, **{k: np.concatenate([arrays[k], more[k]]) for k in ("x_test", "y_test")}}
    return _splits("mnist1d", 10, arrays)


# --------------------------------------------------------------------------- digits

_DIGITS_TEST_SIZE = 360
_DIGITS_SPLIT_SEED = 0


@dataset("digits", help="scikit-learn digits: 1437/360 images 8x8 in [0, 1], 10 classes")
def load_digits() -> DataSplits:
    """scikit-learn's bundled 8x8 digits scaled to [0, 1], with a fixed stratified split.

    The split seed is fixed (not an option) so that every run reports accuracy on the same
    360 test images.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=_DIGITS_TEST_SIZE, stratify=y, random_state=_DIGITS_SPLIT_SEED
    )
    return _splits("digits", 10, {"x": x_tr, "y": y_tr, "x_test": x_te, "y_test": y_te})


# --------------------------------------------------------------------------- synthetic


def _positive_int(option: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"synthetic option {option}={value!r} is invalid",
            fix=f"use an integer >= {minimum}",
        )
    return value


def _shape(value: object) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) == 0:
        raise ConfigError(
            f"synthetic option input_shape={value!r} is invalid",
            fix="use a non-empty list of positive integers, e.g. [1, 8, 8]",
        )
    return tuple(_positive_int("input_shape", dim) for dim in value)


def _clusters(means: Tensor, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """`n` samples with balanced labels (in shuffled order), each its class mean plus N(0, 1)."""
    k = means.shape[0]
    y = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]
    x = means[y] + torch.randn((n, *means.shape[1:]), generator=gen)
    return x, y


@dataset("synthetic", help="Gaussian class clusters for tests (learnable, deterministic per seed)")
def load_synthetic(
    input_shape: Sequence[int] = (1, 8, 8),
    num_classes: int = 4,
    num_train: int = 256,
    num_test: int = 64,
    seed: int = 0,
) -> DataSplits:
    """Learnable toy data: each class is a unit Gaussian around a random N(0, 1) mean.

    With the default 64 features, class means are ~11 noise standard deviations apart, so a
    small model separates them within a few steps. Means, train and test samples use separate
    random streams of `seed`, so changing `num_train` does not change the test set.
    """
    shape = _shape(input_shape)
    k = _positive_int("num_classes", num_classes, minimum=2)
    n_train = _positive_int("num_train", num_train)
    n_test = _positive_int("num_test", num_test)
    _positive_int("seed", seed, minimum=0)
    means = torch.randn((k, *shape), generator=seeded_generator(seed, 0))
    train_x, train_y = _clusters(means, n_train, seeded_generator(seed, 1))
    test_x, test_y = _clusters(means, n_test, seeded_generator(seed, 2))
    info = DatasetInfo("synthetic", shape, k, n_train, n_test)
    return DataSplits(info, train_x, train_y, test_x, test_y)
