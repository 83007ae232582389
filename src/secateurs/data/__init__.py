"""Data sets as in-memory tensors, mini-batch loaders and class-balanced sampling.

Every data set is local: generated (mnist1d, synthetic), bundled with a package (digits) or
installed by the OS package manager (fashion_mnist). Nothing downloads at run time.
"""

from secateurs.data import fashion as _fashion
from secateurs.data import sources as _sources
from secateurs.data.cache import cache_dir
from secateurs.data.catalog import DATASETS, load_dataset
from secateurs.data.core import DatasetInfo, DataSplits, TensorLoader, class_balanced_batch

__all__ = [
    "DATASETS",
    "DataSplits",
    "DatasetInfo",
    "TensorLoader",
    "cache_dir",
    "class_balanced_batch",
    "dataset_status",
    "load_dataset",
]


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
    if name == "mnist1d":
        return "generated locally, cached" if _sources.mnist1d_cached() else "generated locally on first use"
    return "available"
