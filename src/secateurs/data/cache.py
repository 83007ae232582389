"""A small on-disk cache for generated data sets.

Files are written to a temporary name in the cache directory and renamed into place, so a
crash or a concurrent run never leaves a half-written file under the final name. A file that
cannot be read back (truncated, corrupt, wrong contents) is treated as a miss.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = ["cache_dir", "read_npz", "write_npz_atomic"]

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """`$SECATEURS_CACHE`, else `$XDG_CACHE_HOME/secateurs`, else `~/.cache/secateurs`."""
    override = os.environ.get("SECATEURS_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "secateurs"


def read_npz(
    path: Path, expected: dict[str, tuple[tuple[int, ...], np.dtype]]
) -> dict[str, np.ndarray] | None:
    """Arrays from `path` if it exists and holds exactly the expected shapes and dtypes, else None.

    A corrupt or mismatching file is logged as a warning, because the caller will silently
    spend time regenerating it otherwise.
    """
    if not path.is_file():
        return None
    try:
        arrays = _load_arrays(path, list(expected))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        log.warning("cache file %s is unreadable (%s); regenerating it", path, exc)
        return None
    for key, (shape, dtype) in expected.items():
        if arrays[key].shape != shape or arrays[key].dtype != dtype:
            log.warning("cache file %s has unexpected %r; regenerating it", path, key)
            return None
    return arrays


def _load_arrays(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive")
    with loaded as npz:
        return {key: npz[key] for key in keys}


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Write `arrays` to `path` atomically; return False (and warn) if the cache is not writable.

    A read-only cache must not stop a run: the data are simply regenerated next time.
    """
    # A unique sibling name (not tempfile's 0600 files) so the result gets the usual umask mode.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write cache file %s (%s); continuing without the cache", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True
