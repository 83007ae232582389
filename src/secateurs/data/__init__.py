"""Data sets as in-memory tensors, mini-batch loaders and class-balanced sampling.

Every data set is local: generated (mnist1d, synthetic), bundled with a package (digits),
installed by the OS package manager (fashion_mnist), or a copy the user has (cifar10, cifar100,
image_folder, or a factory of their own). Nothing downloads at run time.
"""

from typing import Any

from secateurs.data import fashion as _fashion
from secateurs.data import images as _images  # noqa: F401  (registers cifar10, cifar100, image_folder)
from secateurs.data import sources as _sources
from secateurs.data.cache import cache_dir
from secateurs.data.catalog import DATASETS, load_dataset
from secateurs.data.core import DatasetInfo, DataSplits, TensorLoader, class_balanced_batch
from secateurs.data.factory import load_data_factory, splits_from
from secateurs.data.streaming import DatasetSplits, Splits, StreamLoader

__all__ = [
    "DATASETS",
    "DataSplits",
    "DatasetInfo",
    "DatasetSplits",
    "Splits",
    "StreamLoader",
    "TensorLoader",
    "cache_dir",
    "class_balanced_batch",
    "dataset_status",
    "load_data_factory",
    "load_dataset",
    "load_recipe_data",
    "splits_from",
]


def load_recipe_data(source: Any) -> Splits:
    """A recipe's `data` (a registered name or a factory, with options) loaded."""
    if source.factory is not None:
        return load_data_factory(source.factory, **source.options)
    return load_dataset(source.name, **source.options)


def dataset_status(name: str) -> str:
    """One line saying whether data set `name` can be loaded here, and how if not."""
    from secateurs.core.errors import DataUnavailableError

    DATASETS.get(name)
    if name == "fashion_mnist":
        try:
            _fashion.require_files(_fashion.data_root(None))
        except DataUnavailableError:
            return "missing: apt-get update && apt-get install -y dataset-fashion-mnist"
        return "installed"
    if name in ("cifar10", "cifar100", "image_folder"):
        return "your copy: give its directory in the data options"
    if name == "mnist1d":
        return "generated locally, cached" if _sources.mnist1d_cached() else "generated locally on first use"
    return "available"
