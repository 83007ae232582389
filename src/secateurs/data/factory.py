"""Your own data in a recipe: `data: {factory: "package.module:function", options: {...}}`.

The factory is called with the recipe's options and returns the train and test splits as
- `(train, test)` or `{"train": ..., "test": ...}`, each a torch `Dataset` of (input, label)
  pairs, a `DataLoader` over one (its workers and collate function are kept; the batch size
  and order come from the recipe, seeded, so runs repeat and resume), or an `(x, y)` pair of
  tensors;
- or a ready `DataSplits` / `DatasetSplits`.

Tensors and `TensorDataset`s are held in memory (the fast path); any other Dataset streams.
The input shape is read from the first training sample and the number of classes from the
Dataset's `classes` (as torchvision's have), else from the largest label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from secateurs.core.errors import ConfigError
from secateurs.core.plugins import import_callable
from secateurs.data.core import DatasetInfo, DataSplits
from secateurs.data.streaming import DatasetSplits, Splits

__all__ = ["load_data_factory", "splits_from"]

_FIX = "return (train, test): each a Dataset of (input, label), a DataLoader, or an (x, y) pair of tensors"


def load_data_factory(factory: str | Callable[..., Any], **options: Any) -> Splits:
    """Call the user's data factory with `options` and turn what it returns into splits."""
    fn = import_callable(factory, where="data.factory") if isinstance(factory, str) else factory
    label = factory if isinstance(factory, str) else getattr(factory, "__qualname__", repr(factory))
    return splits_from(fn(**options), name=label)


def splits_from(value: Any, *, name: str = "data") -> Splits:
    """Splits from what a data factory returns (see the module doc)."""
    if isinstance(value, DataSplits | DatasetSplits):
        return value
    if isinstance(value, dict) and set(value) == {"train", "test"}:
        value = (value["train"], value["test"])
    if not (isinstance(value, tuple | list) and len(value) == 2):
        raise ConfigError(f"data factory {name!r} returned a {type(value).__name__}", fix=_FIX)
    train, test = (_split(part, split, name) for part, split in zip(value, ("train", "test"), strict=True))
    if all(isinstance(part, tuple) for part in (train, test)):
        (train_x, train_y), (test_x, test_y) = train, test
        info = _info(name, train_x[0], len(train_x), len(test_x), getattr(value[0], "classes", None), train_y)
        return DataSplits(info, train_x.float(), train_y.long(), test_x.float(), test_y.long())
    loader = next((part for part in value if isinstance(part, DataLoader)), None)
    train_set, test_set = (_dataset(part) for part in (train, test))
    splits = DatasetSplits(
        _info(
            name, train_set[0][0], len(train_set), len(test_set), getattr(train_set, "classes", None), None
        ),  # type: ignore[arg-type]
        train_set,
        test_set,
        num_workers=loader.num_workers if loader is not None else 0,
        collate_fn=loader.collate_fn if loader is not None else None,
    )
    if splits.info.num_classes < 1:  # no `classes`: one more than the largest label
        splits.info = replace(splits.info, num_classes=int(splits.train_labels().max()) + 1)
    return splits


def _split(part: Any, split: str, name: str) -> tuple[Tensor, Tensor] | Dataset[Any]:
    """An (x, y) tensor pair for in-memory data, else the Dataset to stream."""
    if isinstance(part, DataLoader):
        part = part.dataset
    if isinstance(part, TensorDataset) and len(part.tensors) == 2:
        return part.tensors[0], part.tensors[1]
    if isinstance(part, tuple | list) and len(part) == 2 and all(isinstance(t, Tensor) for t in part):
        x, y = part
        if len(x) != len(y):
            raise ConfigError(
                f"data factory {name!r}: the {split} split has {len(x)} inputs but {len(y)} labels"
            )
        return x, y
    if isinstance(part, Dataset) and hasattr(part, "__len__"):
        if len(part) == 0:  # type: ignore[arg-type]
            raise ConfigError(f"data factory {name!r}: the {split} split is empty", fix=_FIX)
        return part
    raise ConfigError(f"data factory {name!r}: the {split} split is a {type(part).__name__}", fix=_FIX)


def _dataset(part: tuple[Tensor, Tensor] | Dataset[Any]) -> Dataset[Any]:
    return TensorDataset(*part) if isinstance(part, tuple) else part


def _info(
    name: str, sample: Any, num_train: int, num_test: int, classes: Any, labels: Tensor | None
) -> DatasetInfo:
    if not isinstance(sample, Tensor):
        raise ConfigError(
            f"data factory {name!r}: a sample's input is a {type(sample).__name__}, not a tensor",
            fix="convert inputs to tensors in the Dataset (a transform such as ToTensor)",
        )
    if classes is not None:
        num_classes = len(classes)
    elif labels is not None:
        num_classes = int(labels.max()) + 1 if len(labels) else 0
    else:
        num_classes = 0  # read from the labels by the caller
    return DatasetInfo(
        name=name,
        input_shape=tuple(int(d) for d in sample.shape),
        num_classes=num_classes,
        num_train=num_train,
        num_test=num_test,
    )
