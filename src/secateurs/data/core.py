"""In-memory data sets and mini-batch iteration.

Every data set we use fits in memory, so a split is just a pair of tensors and a mini-batch is
an index into them. That is far faster on CPU than `torch.utils.data.DataLoader` (no worker
processes, no per-sample collation) and makes the batch order a pure function of
(seed, epoch), which is what bit-for-bit resuming needs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from secateurs.core.distributed import World, shard_batch
from secateurs.core.errors import ConfigError

__all__ = [
    "BatchOrder",
    "DataSplits",
    "DatasetInfo",
    "EpochLoader",
    "TensorLoader",
    "class_balanced_batch",
    "derive_seed",
    "seeded_generator",
]


def derive_seed(*parts: int) -> int:
    """Mix several non-negative integers into one 64-bit seed.

    `seed + epoch` would make (seed=1, epoch=0) and (seed=0, epoch=1) identical; SeedSequence
    hashes the tuple so that nearby tuples give unrelated streams.
    """
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, numbers.Integral) or part < 0:
            raise ConfigError(
                f"seeds and epochs must be non-negative integers, got {part!r}",
                fix="use a seed >= 0",
            )
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return int(state[0])


def seeded_generator(*parts: int) -> torch.Generator:
    """A private CPU generator seeded from `parts`, independent of the global RNG."""
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass(frozen=True)
class DatasetInfo:
    """What a model builder needs to know about a data set without touching the tensors."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int  # classes; for language modelling, the vocabulary size
    num_train: int
    num_test: int
    task: str = "classification"  # or "language_modeling": x and y are token windows, y = x


class BatchOrder:
    """Which samples make up each mini-batch of an epoch: the one batch order of every loader.

    With `shuffle=True` the order of epoch `e` is a permutation drawn from a generator seeded by
    (seed, e), so it does not depend on the global RNG or on how many epochs ran before. The
    in-memory and the streaming loaders share it, so the two give the same batches.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        world: World | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        derive_seed(seed)  # validate early rather than on the first epoch
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.world = world if world is not None and world.active else None
        if self.world is not None and not shuffle:
            raise ValueError("a sharded loader shards the shuffled training order; use shuffle=True")

    def __len__(self) -> int:
        if self.drop_last:
            return self.size // self.batch_size
        return math.ceil(self.size / self.batch_size)

    def batches(self, epoch: int, device: torch.device | None = None) -> Iterator[Tensor | slice]:
        """Each batch of `epoch`: a slice in the natural order, else an index tensor (on `device`)."""
        order = None
        if self.shuffle:
            order = torch.randperm(self.size, generator=seeded_generator(self.seed, epoch)).to(device)
        step = self.batch_size
        for start in range(0, len(self) * step, step):
            stop = min(start + step, self.size)
            if order is None:  # slices are views: no copy for evaluation passes
                yield slice(start, stop)
                continue
            idx = order[start:stop]
            if self.world is not None:  # this rank's part of the global batch (core.distributed)
                idx = shard_batch(idx, order, self.world)
            yield idx


class EpochLoader:
    """A loader over a `BatchOrder` that knows its epoch: each `__iter__` call uses the current
    epoch and then advances it by one; `set_epoch` rewinds or skips ahead (e.g. when resuming
    from a checkpoint). Subclasses say how a batch of indices becomes (x, y)."""

    def __init__(self, order: BatchOrder) -> None:
        self._order = order
        self._epoch = 0

    @property
    def batch_size(self) -> int:
        return self._order.batch_size

    @property
    def dataset_size(self) -> int:
        return self._order.size

    @property
    def epoch(self) -> int:
        """The epoch the next `__iter__` call will use."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next `__iter__` use `epoch` (same seed and epoch give the same order)."""
        derive_seed(self._order.seed, epoch)
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self._order)

    def _next_epoch(self) -> int:
        epoch = self._epoch
        self._epoch += 1
        return epoch


class TensorLoader(EpochLoader):
    """Iterates (x, y) mini-batches over in-memory tensors, in the seeded `BatchOrder`."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        world: World | None = None,
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        super().__init__(
            BatchOrder(
                int(x.shape[0]), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, world=world
            )
        )
        self._x = x
        self._y = y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self._next_epoch()
        return ((self._x[i], self._y[i]) for i in self._order.batches(epoch, self._x.device))


@dataclass
class DataSplits:
    """A train and a test split held as tensors, plus their description."""

    info: DatasetInfo
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor

    def __post_init__(self) -> None:
        self._check("train", self.train_x, self.train_y, self.info.num_train)
        self._check("test", self.test_x, self.test_y, self.info.num_test)

    def _check(self, split: str, x: Tensor, y: Tensor, n: int) -> None:
        """Catch a loader that disagrees with its own `DatasetInfo` at construction time."""
        expected = (n, *self.info.input_shape)
        if tuple(x.shape) != expected:
            raise ValueError(f"{self.info.name} {split}_x has shape {tuple(x.shape)}, expected {expected}")
        tokens = self.info.task == "language_modeling"
        if x.dtype != (torch.int64 if tokens else torch.float32):
            raise ValueError(
                f"{self.info.name} {split}_x must be {'int64' if tokens else 'float32'}, got {x.dtype}"
            )
        labels = expected if tokens else (n,)
        if tuple(y.shape) != labels or y.dtype != torch.int64:
            raise ValueError(f"{self.info.name} {split}_y must be int64 of shape {labels}")

    def train_loader(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        world: World | None = None,
    ) -> TensorLoader:
        """Shuffled mini-batches; with a distributed `world`, this rank's share of each global batch."""
        x, y = self.train_x, self.train_y
        return TensorLoader(x, y, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, world=world)

    def train_labels(self) -> Tensor:
        """Every training label, in sample order."""
        return self.train_y

    def train_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """The training samples at `indices`, as one batch."""
        indices = indices.to(self.train_y.device)
        return self.train_x[indices], self.train_y[indices]

    def test_in_memory(self) -> DataSplits:
        """Splits whose test samples are tensors (beyond-accuracy metrics corrupt them): these."""
        return self

    def to(self, device: torch.device | str) -> DataSplits:
        """The splits on `device` (the same object when they are there already): an in-memory set
        lives beside the model, so a batch is an index into device memory, not a copy."""
        device = torch.device(device)
        if self.train_x.device == device:
            return self
        tensors = (self.train_x, self.train_y, self.test_x, self.test_y)
        return DataSplits(self.info, *(t.to(device) for t in tensors))

    def test_loader(self, batch_size: int = 1024) -> TensorLoader:
        return TensorLoader(self.test_x, self.test_y, batch_size, shuffle=False)

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> DataSplits:
        """The first `n_train` / `n_test` samples (None keeps a split whole), for quick runs."""
        n_train = subset_size("n_train", n_train, self.info.num_train)
        n_test = subset_size("n_test", n_test, self.info.num_test)
        return DataSplits(
            info=replace(self.info, num_train=n_train, num_test=n_test),
            train_x=self.train_x[:n_train],
            train_y=self.train_y[:n_train],
            test_x=self.test_x[:n_test],
            test_y=self.test_y[:n_test],
        )


def subset_size(label: str, n: int | None, available: int) -> int:
    """`n` samples of a split of `available` (None: all of them), or a ConfigError saying the range."""
    if n is None:
        return available
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= available:
        raise ConfigError(
            f"{label}={n!r} is out of range",
            fix=f"use an integer between 1 and {available}, or None for all samples",
        )
    return n


def class_balanced_batch(splits: DataSplits, per_class: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Exactly `per_class` training samples of every class, grouped by class in label order.

    Data-dependent pruning criteria (e.g. SNIP, GraSP) score weights on one batch; a batch
    that misses a class biases the scores, so we sample each class separately. The choice
    depends only on `seed`.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"per_class must be a positive integer, got {per_class!r}")
    gen = seeded_generator(seed)
    labels = splits.train_labels().cpu()
    chosen = [_pick_class(splits, labels, label, per_class, gen) for label in range(splits.info.num_classes)]
    return splits.train_batch(torch.cat(chosen))


def _pick_class(
    splits: DataSplits, labels: Tensor, label: int, per_class: int, gen: torch.Generator
) -> Tensor:
    members = torch.nonzero(labels == label).flatten()
    if members.numel() < per_class:
        raise ConfigError(
            f"class {label} of {splits.info.name!r} has only {members.numel()} training samples, "
            f"fewer than per_class={per_class}",
            fix=f"use per_class <= {members.numel()}",
        )
    return members[torch.randperm(members.numel(), generator=gen)[:per_class]]
