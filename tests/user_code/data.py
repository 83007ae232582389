"""A user's data set: small 3x8x8 images whose class is the brightest of three colour patterns."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset


class Patterns(Dataset[tuple[Tensor, int]]):
    """Items computed on access, as a dataset reading files would produce them."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.noise = torch.randn(n, 3, 8, 8, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        label = int(self.labels[index])
        x = 0.5 * self.noise[index]
        x[label] += 1.0
        return x, label


def patterns(
    n_train: int = 192, n_test: int = 96
) -> tuple[Dataset[tuple[Tensor, int]], Dataset[tuple[Tensor, int]]]:
    """The factory a recipe names: `data: {factory: "user_code.data:patterns"}` (streamed)."""
    return Patterns(n_train, seed=0), Patterns(n_test, seed=1)


def pattern_tensors(
    n_train: int = 192, n_test: int = 96
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The same samples as tensors (held in memory)."""
    train, test = patterns(n_train, n_test)
    return tuple(  # type: ignore[return-value]
        (torch.stack([d[i][0] for i in range(len(d))]), d.labels.clone()) for d in (train, test)
    )
