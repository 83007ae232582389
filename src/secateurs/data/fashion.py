"""Fashion-MNIST from the files of the Debian package `dataset-fashion-mnist`.

The package installs the original gzip-compressed idx files; we parse them with numpy
(decompressing and decoding takes well under two seconds, so no cache is needed) and never
download anything.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from secateurs.core.errors import ConfigError, DataUnavailableError
from secateurs.data.catalog import dataset
from secateurs.data.core import DatasetInfo, DataSplits

__all__ = ["DEFAULT_ROOT", "INSTALL_COMMAND", "load_fashion_mnist", "read_idx"]

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "SECATEURS_FASHION_MNIST_DIR"
INSTALL_COMMAND = "apt-get update && apt-get install -y dataset-fashion-mnist"
FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
# Per-pixel statistics of the training images after scaling to [0, 1].
MEAN, STD = 0.2860, 0.3530
_UBYTE = 0x08


def _corrupt(path: Path, why: str) -> DataUnavailableError:
    return DataUnavailableError(
        f"Fashion-MNIST file {path} is corrupt: {why}",
        fix=f"reinstall it with `apt-get install --reinstall -y dataset-fashion-mnist` ({INSTALL_COMMAND})",
    )


def _decompress(path: Path) -> bytes:
    try:
        compressed = path.read_bytes()
    except OSError as exc:
        raise DataUnavailableError(
            f"cannot read Fashion-MNIST file {path}: {exc}", fix="check the file's permissions"
        ) from exc
    try:
        return gzip.decompress(compressed)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise _corrupt(path, f"not a valid gzip file ({exc})") from exc


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Decode a gzip-compressed idx file of unsigned bytes with `ndim` dimensions.

    The idx header is two zero bytes, a type byte (0x08 = ubyte), a dimension count, then one
    big-endian uint32 per dimension; we check all of it and the payload length, so a truncated
    or foreign file is reported instead of producing garbage.
    """
    raw = _decompress(path)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _corrupt(path, f"only {len(raw)} bytes, shorter than the idx header")
    magic = bytes([0, 0, _UBYTE, ndim])
    if raw[:4] != magic:
        raise _corrupt(path, f"bad idx magic number 0x{raw[:4].hex()}, expected 0x{magic.hex()}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(dims)):
        raise _corrupt(path, f"payload has {len(raw) - header} bytes, header promises {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def data_root(root: str | os.PathLike[str] | None) -> Path:
    """`root` option, else `$SECATEURS_FASHION_MNIST_DIR`, else the Debian package's directory."""
    if root is not None and not isinstance(root, str | os.PathLike):
        raise ConfigError(f"fashion_mnist option root={root!r} is not a path", fix="give a directory path")
    chosen = root if root is not None else os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(chosen).expanduser()


def require_files(root: Path) -> dict[str, Path]:
    paths = {key: root / name for key, name in FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataUnavailableError(
            f"Fashion-MNIST is not installed: missing {', '.join(missing)}",
            fix=f"run `{INSTALL_COMMAND}`, or point the root= option or ${ENV_VAR} at a directory "
            f"holding {', '.join(FILES.values())}",
        )
    return paths


def _images(path: Path) -> Tensor:
    images = read_idx(path, ndim=3)
    if images.shape[1:] != (28, 28):
        raise _corrupt(path, f"images are {images.shape[1:]}, expected 28x28")
    pixels = torch.from_numpy(images.copy()).unsqueeze(1)
    # (p / 255 - MEAN) / STD in two in-place passes over the float copy.
    return pixels.to(torch.float32).mul_(1.0 / (255.0 * STD)).sub_(MEAN / STD)


def _labels(path: Path, count: int) -> Tensor:
    labels = read_idx(path, ndim=1)
    if labels.shape != (count,):
        raise _corrupt(path, f"{labels.shape[0]} labels for {count} images")
    if labels.size and labels.max() > 9:
        raise _corrupt(path, f"label {int(labels.max())} is outside 0..9")
    return torch.from_numpy(labels.astype(np.int64))


@dataset("fashion_mnist", help="Fashion-MNIST: 60000/10000 images 1x28x28, 10 classes (Debian package)")
def load_fashion_mnist(root: str | os.PathLike[str] | None = None) -> DataSplits:
    """Fashion-MNIST, pixels scaled to [0, 1] then standardised with mean 0.2860, std 0.3530."""
    paths = require_files(data_root(root))
    train_x, test_x = _images(paths["train_x"]), _images(paths["test_x"])
    train_y = _labels(paths["train_y"], train_x.shape[0])
    test_y = _labels(paths["test_y"], test_x.shape[0])
    info = DatasetInfo("fashion_mnist", (1, 28, 28), 10, train_x.shape[0], test_x.shape[0])
    return DataSplits(info, train_x, train_y, test_x, test_y)
