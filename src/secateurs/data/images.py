"""Image data sets a user has on disk: CIFAR-10/100 in their python-pickle layout, and image folders.

Nothing downloads: `cifar10` reads `ROOT/cifar-10-batches-py/` (data_batch_1..5, test_batch,
batches.meta) and `cifar100` reads `ROOT/cifar-100-python/` (train, test, meta), as the official
archives unpack. Their pickles are read by an unpickler that builds only dicts, lists, strings,
numbers and numpy arrays, so a tampered file cannot run code. `image_folder` reads
`DIR/<class>/<image>` for a train and a test directory (class names sorted, as torchvision's
ImageFolder does), with the standard transforms: resize and centre-crop to `size`, scale to
[0, 1], normalise by `mean` / `std`, and for training an optional random horizontal flip.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from secateurs.core.errors import ConfigError, DataUnavailableError
from secateurs.data.catalog import dataset
from secateurs.data.core import DatasetInfo, DataSplits
from secateurs.data.streaming import DatasetSplits

__all__ = ["ImageFolder", "load_cifar10", "load_cifar100", "load_image_folder"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class _DataOnly(pickle.Unpickler):
    """Unpickles CIFAR's batches: plain containers and numpy arrays, nothing that could run code."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")


def _read_batch(path: Path) -> dict[bytes, Any]:
    try:
        with path.open("rb") as f:
            batch = _DataOnly(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise DataUnavailableError(
            f"cannot read CIFAR batch {path} ({err})",
            fix="unpack the official python version of the archive (cifar-*-python.tar.gz) there again",
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch:
        raise DataUnavailableError(f"{path} is not a CIFAR batch (no data array)", fix="check the directory")
    return batch


def _cifar_dir(root: str | os.PathLike[str] | None, folder: str, files: tuple[str, ...]) -> Path:
    if root is None:
        name = "cifar10" if "10-" in folder else "cifar100"
        raise ConfigError(
            f"the CIFAR data set needs root: the directory that holds {folder}/",
            fix=f"write data: {{name: {name}, options: {{root: DIR}}}}",
        )
    base = Path(root).expanduser()
    directory = base if base.name == folder else base / folder
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        raise DataUnavailableError(
            f"{directory} lacks {', '.join(missing)}",
            fix=f"unpack the python version of the official archive so that {folder}/ is under {base}",
        )
    return directory


def _cifar_tensors(batches: list[dict[bytes, Any]], label_key: bytes) -> tuple[Tensor, Tensor]:
    data = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
    labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(labels)


def _cifar(
    name: str, directory: Path, train: list[str], test: list[str], label_key: bytes, classes: int
) -> DataSplits:
    train_x, train_y = _cifar_tensors([_read_batch(directory / f) for f in train], label_key)
    test_x, test_y = _cifar_tensors([_read_batch(directory / f) for f in test], label_key)
    info = DatasetInfo(name, (3, 32, 32), classes, int(train_x.shape[0]), int(test_x.shape[0]))
    return DataSplits(info, train_x, train_y, test_x, test_y)


@dataset("cifar10", help="CIFAR-10 from your copy (python-pickle layout under root): 3x32x32, 10 classes")
def load_cifar10(root: str | None = None) -> DataSplits:
    """CIFAR-10, standardised per channel with the training set's mean and std."""
    train = [f"data_batch_{i}" for i in range(1, 6)]
    directory = _cifar_dir(root, "cifar-10-batches-py", (*train, "test_batch"))
    return _cifar("cifar10", directory, train, ["test_batch"], b"labels", 10)


@dataset("cifar100", help="CIFAR-100 from your copy (python-pickle layout under root): 100 fine classes")
def load_cifar100(root: str | None = None, coarse: bool = False) -> DataSplits:
    """CIFAR-100 with its 100 fine labels (or the 20 coarse ones), standardised per channel."""
    directory = _cifar_dir(root, "cifar-100-python", ("train", "test"))
    key, classes = (b"coarse_labels", 20) if coarse else (b"fine_labels", 100)
    return _cifar("cifar100", directory, ["train"], ["test"], key, classes)


class ImageFolder(Dataset[tuple[Tensor, int]]):
    """`DIR/<class>/<image>` files as (C, H, W) float tensors with their class index."""

    def __init__(
        self,
        root: Path,
        classes: list[str],
        *,
        size: tuple[int, int] | None,
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
        flip: bool = False,
        grayscale: bool = False,
    ) -> None:
        self.root = root
        self.classes = classes
        self.samples = [
            (path, index)
            for index, name in enumerate(classes)
            for path in sorted((root / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        self.targets = [label for _, label in self.samples]
        self.size, self.mean, self.std, self.flip, self.grayscale = size, mean, std, flip, grayscale

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as image:
            image = image.convert("L" if self.grayscale else "RGB")
            if self.size is not None:
                image = _resize_crop(image, self.size)
            array = np.asarray(image, dtype=np.float32) / 255.0
        x = torch.from_numpy(array.reshape(*array.shape[:2], -1).transpose(2, 0, 1).copy())
        if self.flip and torch.rand(()) < 0.5:  # the loader seeds the workers' RNG per epoch
            x = x.flip(-1)
        if self.mean is not None and self.std is not None:
            x = (x - torch.tensor(self.mean).view(-1, 1, 1)) / torch.tensor(self.std).view(-1, 1, 1)
        return x, label


def _resize_crop(image: Any, size: tuple[int, int]) -> Any:
    """Resize so the image covers `size` (H, W), keeping its aspect, then crop the centre."""
    from PIL import Image

    height, width = size
    scale = max(height / image.height, width / image.width)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
        Image.Resampling.BILINEAR,
    )
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def _classes(directory: Path, split: str) -> list[str]:
    if not directory.is_dir():
        raise DataUnavailableError(
            f"image folder {split}: {directory} is not a directory", fix="check the path"
        )
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir())
    if not classes:
        raise DataUnavailableError(
            f"image folder {split}: {directory} has no class subdirectories",
            fix="lay the images out as DIR/<class name>/<image file>",
        )
    return classes


@dataset("image_folder", help="your images: train and test directories of <class>/<image> (streamed)")
def load_image_folder(
    *,
    train: str,
    test: str,
    size: int | list[int] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    flip: bool = False,
    grayscale: bool = False,
    num_workers: int = 0,
) -> DatasetSplits:
    """Images streamed from disk: resized and centre-cropped to `size` (needed unless every image
    has one size), normalised by `mean` / `std`, randomly flipped for training if `flip`."""
    train_dir, test_dir = Path(train).expanduser(), Path(test).expanduser()
    classes = _classes(train_dir, "train")
    test_classes = _classes(test_dir, "test")
    if test_classes != classes:
        raise DataUnavailableError(
            f"image folder: the test classes {test_classes} differ from the train classes {classes}",
            fix="give both directories the same class subdirectories",
        )
    hw = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)
    if hw is not None and (len(hw) != 2 or min(hw) < 1):
        raise ConfigError(f"image folder: size {size!r} must be an int or [height, width]")
    common: dict[str, Any] = {
        "size": hw,
        "mean": tuple(mean) if mean else None,
        "std": tuple(std) if std else None,
        "grayscale": grayscale,
    }
    train_set = ImageFolder(train_dir, classes, flip=flip, **common)
    test_set = ImageFolder(test_dir, classes, **common)
    for split, data in (("train", train_set), ("test", test_set)):
        if len(data) == 0:
            raise DataUnavailableError(
                f"image folder {split}: no images under {data.root}",
                fix=f"put image files ({', '.join(IMAGE_SUFFIXES)}) in the class subdirectories",
            )
    first = train_set[0][0]
    info = DatasetInfo("image_folder", tuple(first.shape), len(classes), len(train_set), len(test_set))
    return DatasetSplits(info, train_set, test_set, num_workers=num_workers)
