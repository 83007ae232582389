"""Data that does not fit in memory: torch Datasets read batch by batch by a DataLoader.

`DatasetSplits` offers what the in-memory `DataSplits` offers (a seeded training loader, a
test loader, class-balanced scoring batches, moving to a device), so every stage, criterion and
metric takes either. The batches are those of the in-memory path: the same seeded `BatchOrder`
picks the samples, a DataLoader's workers only read and collate them, so a data set streamed
gives the same training, bit for bit, as the same data set held as tensors. Random transforms
draw from RNGs seeded by (seed, epoch) (the workers', or one kept apart from the global RNG
when the main process reads), so they repeat too; batches are pinned for a CUDA device.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from secateurs.core.distributed import World
from secateurs.core.errors import ConfigError
from secateurs.data.core import (
    BatchOrder,
    DatasetInfo,
    DataSplits,
    EpochLoader,
    derive_seed,
    seeded_generator,
    subset_size,
)

__all__ = ["DatasetSplits", "Splits", "StreamLoader"]


class _Batches(torch.utils.data.Sampler[list[int]]):
    """A DataLoader batch sampler over one epoch of a `BatchOrder`."""

    def __init__(self, order: BatchOrder, epoch: int) -> None:
        self.order, self.epoch = order, epoch

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.order.batches(self.epoch):
            if isinstance(batch, slice):
                yield list(range(batch.start, batch.stop))
            else:
                yield batch.tolist()


class StreamLoader(EpochLoader):
    """(x, y) mini-batches of a Dataset, in the seeded `BatchOrder` (epochs as `EpochLoader`)."""

    def __init__(self, dataset: Dataset[Any], order: BatchOrder, settings: dict[str, Any]) -> None:
        super().__init__(order)
        self._dataset = dataset
        self._settings = settings

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self._next_epoch()
        loader = DataLoader(
            self._dataset,
            batch_sampler=_Batches(self._order, epoch),
            generator=seeded_generator(self._order.seed, epoch, 1),  # the workers' seeds
            **self._settings,
        )
        if self._settings["num_workers"] > 0:  # each worker's RNG is seeded from the generator
            yield from loader
            return
        # Read in this process: random transforms draw from an RNG of the (seed, epoch) alone, kept
        # apart from the global one, which training's own randomness (dropout) goes on using.
        batches = iter(loader)
        rng = torch.Generator().manual_seed(derive_seed(self._order.seed, epoch, 2)).get_state()
        while True:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng)
                batch = next(batches, None)
                rng = torch.get_rng_state()
            if batch is None:
                return
            yield batch


class DatasetSplits:
    """A train and a test split held as torch Datasets whose items are (input tensor, int label)."""

    def __init__(
        self,
        info: DatasetInfo,
        train: Dataset[Any],
        test: Dataset[Any],
        *,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
    ) -> None:
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        self.info = info
        self.train = train
        self.test = test
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.pin_memory = pin_memory
        self._labels: Tensor | None = None

    def _settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
        if self.collate_fn is not None:
            settings["collate_fn"] = self.collate_fn
        return settings

    def train_loader(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        world: World | None = None,
    ) -> StreamLoader:
        """Shuffled mini-batches; with a distributed `world`, this rank's share of each global batch."""
        order = BatchOrder(
            self.info.num_train, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, world=world
        )
        return StreamLoader(self.train, order, self._settings())

    def test_loader(self, batch_size: int = 1024) -> StreamLoader:
        return StreamLoader(
            self.test, BatchOrder(self.info.num_test, batch_size, shuffle=False), self._settings()
        )

    def to(self, device: torch.device | str) -> DatasetSplits:
        """The splits for a model on `device`: they stay where they are, batches are pinned for CUDA."""
        pin = torch.device(device).type == "cuda"
        if pin == self.pin_memory:
            return self
        moved = copy.copy(self)  # the same Datasets and label cache
        moved.pin_memory = pin
        return moved

    def train_labels(self) -> Tensor:
        """Every training label, read once (from a `targets` attribute when the Dataset has one)."""
        if self._labels is None:
            targets = getattr(self.train, "targets", None)
            if targets is not None and len(targets) == self.info.num_train:
                self._labels = torch.as_tensor(targets, dtype=torch.int64)
            else:
                labels = [y for _, y in self.train_loader(1024, shuffle=False)]
                self._labels = torch.cat(labels).to(torch.int64)
        return self._labels

    def train_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """The training samples at `indices`, read and collated as one batch."""
        loader = DataLoader(Subset(self.train, indices.tolist()), batch_size=len(indices), **self._settings())
        x, y = next(iter(loader))
        return x, y

    def test_in_memory(self) -> DataSplits:
        """The test split as tensors (no training samples), for metrics that corrupt test inputs."""
        xs, ys = zip(*self.test_loader(), strict=True)
        info = replace(self.info, num_train=0)
        empty = torch.empty((0, *self.info.input_shape), dtype=xs[0].dtype)
        return DataSplits(info, empty, torch.empty(0, dtype=torch.int64), torch.cat(xs), torch.cat(ys))

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> DatasetSplits:
        """The first `n_train` / `n_test` samples (None keeps a split whole), for quick runs."""
        n_train = subset_size("n_train", n_train, self.info.num_train)
        n_test = subset_size("n_test", n_test, self.info.num_test)
        return DatasetSplits(
            replace(self.info, num_train=n_train, num_test=n_test),
            Subset(self.train, range(n_train)),
            Subset(self.test, range(n_test)),
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
        )


Splits = DataSplits | DatasetSplits
"""Either kind of splits: tensors in memory, or Datasets streamed by a DataLoader."""
