"""Writing result files all or nothing: a temp file in the same directory, then a rename."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from secateurs.core.errors import ConfigError

MAX_CONFIG_BYTES = 1024 * 1024
"""The largest recipe or sweep file read. The longest preset is a few KiB; a 50 MB recipe took 100 s
and 500 MB of memory to validate, and its description was copied into every checkpoint."""
MAX_OVERRIDE_CHARS = 64 * 1024
"""The longest `--set` value: a whole stage list fits many times over."""


def read_config_text(path: str | os.PathLike[str], what: str) -> str:
    """The text of a YAML file the user gave (a recipe, a sweep): one ConfigError naming the file
    when it cannot be read, is larger than `MAX_CONFIG_BYTES`, or is not UTF-8 text (a binary file,
    a wrong encoding), never a traceback. At most the limit is read (a device or a pipe never ends)."""
    source = Path(path)
    try:
        with source.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
            if len(data) > MAX_CONFIG_BYTES:
                size = os.fstat(file.fileno()).st_size
                raise ConfigError(
                    f"the {what} file is {_size(size) + ', ' if size > MAX_CONFIG_BYTES else ''}"
                    f"over the limit of {_size(MAX_CONFIG_BYTES)}",
                    where=str(source),
                    fix=f"give a {what} file of a few KiB: it names components and options, it holds no data",
                )
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = err.object[err.start : err.start + 1]
        raise ConfigError(
            f"the {what} file is not UTF-8 text (byte {err.start}: {bad!r})",
            where=str(source),
            fix=f"give a YAML {what} file saved as UTF-8",
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read the {what} file ({err.strerror or err})", where=str(source)) from None


def load_yaml(text: str, origin: str, limit: int = MAX_CONFIG_BYTES) -> Any:
    """`yaml.safe_load(text)`, with text longer than `limit` characters or nesting too deep for the
    parser (thousands of `[`, hundreds of nested stages) one ConfigError instead of minutes of parsing
    or a RecursionError traceback; YAML syntax errors are left to the caller, which knows what the
    text was."""
    import yaml

    if len(text) > limit:
        raise ConfigError(
            f"the YAML is {len(text):,} characters long; the limit is {limit:,}",
            where=origin,
            fix="shorten it: a value names a component and its options, it does not hold data",
        )
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(
            "the YAML is nested too deeply to read", where=origin, fix="flatten it: recipes nest a few levels"
        ) from None


def _size(n: int) -> str:
    """``2.0 MiB (2,097,152 bytes)``."""
    return f"{n / 2**20:.1f} MiB ({n:,} bytes)"


def _umask_mode() -> int:
    """0o666 less the process umask: the mode `open()` would give a new file (mkstemp gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` so that readers see the old file or the new one, never half of it."""
    return _atomic_write(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """`atomic_write_text` for bytes (model exports, images)."""
    return _atomic_write(path, data)


def _atomic_write(path: str | os.PathLike[str], data: bytes) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A staging directory beside `path` to write into; when the block ends without error it
    replaces `path` (an existing directory is set aside, then deleted), otherwise it is deleted.
    Readers see the old directory or the new one, never a half-written one.

    The staging directory gets the umask's mode (tempfile.mkdtemp would make it private, 0700).
    A directory that cannot be created is a ConfigError naming it.
    """
    target = Path(path)
    staging = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as err:
        raise ConfigError(
            f"cannot create the output directory {target} ({err})", fix="choose another --out"
        ) from None
    try:
        yield staging
        if target.exists():
            aside = staging.with_suffix(".old")
            os.replace(target, aside)
            os.replace(staging, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_figure(
    fig: Any, path: str | os.PathLike[str], *, dpi: int = 120, formats: tuple[str, ...] = ("png",)
) -> Path:
    """Save a matplotlib figure atomically as `path`, and in each other format beside it (same stem,
    e.g. `formats=("png", "svg")`), then close it; returns `path`."""
    import matplotlib.pyplot as plt

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        for fmt in formats:
            out = target if target.suffix == f".{fmt}" else target.with_suffix(f".{fmt}")
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{out.name}.", suffix=f".{fmt}")
            os.close(fd)
            try:  # no date in an SVG, so a figure drawn again from the same data is the same file
                fig.savefig(tmp, format=fmt, dpi=dpi, metadata={"Date": None} if fmt == "svg" else None)
                os.chmod(tmp, _umask_mode())
                os.replace(tmp, out)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    finally:
        plt.close(fig)
    return target
