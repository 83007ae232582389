"""Atomic checkpoints that load without running arbitrary code.

Saving writes a temporary file in the target directory, fsyncs it and renames it over the
target (``os.replace`` is atomic), so a crash or a full disk leaves either the old
checkpoint or the new one at ``path``, never half of one. Loading always uses
``torch.load(weights_only=True)``: a checkpoint is data (tensors, numbers, strings, lists,
dicts), and unpickling anything else could execute code from the file.

On disk a checkpoint is ``{"format": "secateurs-checkpoint", "version": 2, "sha256": hex,
"payload": uint8 tensor}``, written with ``torch.save``: the format tag makes a stray ``.pt`` file
recognised as "not ours" instead of being misread, and the payload is itself a ``torch.save``
file whose bytes are kept with their SHA-256. (A uint8 tensor, not ``bytes``: torch pickles with
protocol 2, where bytes become latin-1 text, 40 % larger and ten times slower to write and read.)
A torch file has no checksum of its tensor data, so a flipped bit inside a weight (a bad disk,
a half-copied file patched up, a hand edit) would otherwise load silently; here it is refused
with an error naming the file. Version 1 files (the payload inline, no checksum) are still read.

A file that does not load is classified by what its bytes hold (`core.torchfile`): empty, cut short,
damaged (a zip member failing its CRC-32), not a PyTorch file, or a pickle asking to run code;
never by the wording of torch's exception.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import secrets
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from secateurs.core.errors import CheckpointError
from secateurs.core.torchfile import Finding, inspect_torch_file

logger = logging.getLogger(__name__)

FORMAT = "secateurs-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: payload inline, no checksum
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_WRITE_FIX = (
    "free disk space or choose a writable directory elsewhere (--out); "
    "an earlier checkpoint at this path is left as it was"
)
_RECREATE_FIX = "delete it and re-create it from an earlier checkpoint or by re-running the recipe"
_CODE_FIX = (
    "re-save it with save_checkpoint using only tensors and plain values; "
    "only if you trust its origin, load it yourself with torch.load(..., weights_only=False)"
)
_DELETE_FIX = (
    "delete the file; a run resumes from an earlier checkpoint or restarts from scratch when re-run "
    "(or restore the file from a backup)"
)

# Exact types only: subclasses (numpy.float64 is a float, an IntEnum is an int, a defaultdict
# is a dict) pickle as their own class, which weights_only loading refuses.
_LEAF_TYPES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)
_MAPPING_TYPES = (dict, OrderedDict)
_SEQUENCE_TYPES = (list, tuple)


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Atomically write `payload` (nested dicts/lists of tensors and plain values) to `path`.

    The payload is checked first so that something `load_checkpoint` would refuse fails
    now, with the key that holds it, rather than after a long training run.
    """
    target = Path(path)
    if type(payload) not in _MAPPING_TYPES:
        raise CheckpointError(
            f"the checkpoint payload must be a dict, got {type(payload).__name__}",
            where=str(target),
            fix='wrap it, e.g. {"model": model.state_dict()}',
        )
    _check_plain(payload, "payload")
    buffer = io.BytesIO()
    torch.save(_on_cpu(payload), buffer)
    blob = buffer.getbuffer()
    envelope = {
        "format": FORMAT,
        "version": VERSION,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "payload": torch.frombuffer(blob, dtype=torch.uint8),  # a view: no copy
    }
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(envelope, target)
    except OSError as err:
        raise CheckpointError(
            f"could not write the checkpoint: {err}", where=str(target), fix=_WRITE_FIX
        ) from err
    except RuntimeError as err:  # torch's zip writer turns a failed write into "[enforce fail ...]"
        raise CheckpointError(
            "could not write the checkpoint: the write failed part-way; is the disk full? "
            f"({_first_line(err)})",
            where=str(target),
            fix=_WRITE_FIX,
        ) from err
    logger.debug("saved checkpoint %s", target)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` onto the CPU and return its payload."""
    source = Path(path)
    if not source.is_file():
        what = (
            "is a directory, not a checkpoint file" if source.is_dir() else "no checkpoint file exists here"
        )
        raise CheckpointError(what, where=str(source), fix="check the path (or train first to create it)")
    try:
        return _unwrap(_safe_load(source, source), source)
    except _Unexpected:
        # torch read it, but not as save_checkpoint wrote it: damage (a flipped bit in the
        # envelope's pickle) explains that better than "not a secateurs checkpoint"
        if (finding := _inspect(source, source)) is None:
            raise
        raise _refusal(finding, source, "the file") from None


# -- saving ---------------------------------------------------------------------------------
def _on_cpu(value: Any) -> Any:
    """`value` with every tensor on the CPU: a checkpoint written on a GPU loads anywhere."""
    if isinstance(value, Tensor):
        return value.cpu()
    if type(value) in _MAPPING_TYPES:
        return type(value)((k, _on_cpu(v)) for k, v in value.items())
    if type(value) in _SEQUENCE_TYPES:
        return type(value)(_on_cpu(v) for v in value)
    return value


def _check_plain(value: object, where: str) -> None:
    """Raise if `value` holds anything that weights_only loading would refuse."""
    if isinstance(value, Tensor) or type(value) in _LEAF_TYPES:
        return
    if type(value) in _MAPPING_TYPES:
        assert isinstance(value, dict)
        for key, item in value.items():
            if type(key) not in (str, int):
                raise _unsupported(key, f"{where} (a key)")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in _SEQUENCE_TYPES:
        assert isinstance(value, list | tuple)
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise _unsupported(value, where)


def _unsupported(value: object, where: str) -> CheckpointError:
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    return CheckpointError(
        f"a {kind} cannot be stored in a checkpoint (only tensors, numbers, strings, bools, None, "
        "and dicts / lists / tuples of them can be loaded safely)",
        where=where,
        fix="convert it first: float(x) for a numpy scalar, x.value for an enum, dict(x) for a dict subclass",
    )


def _atomic_save(obj: object, target: Path) -> None:
    """Write to a fresh temp file beside `target`, fsync, rename over `target`."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: never clobber another writer's file; mode 0o666 lets the umask apply as usual.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- loading --------------------------------------------------------------------------------


class _Unexpected(CheckpointError):
    """A file torch read whose content is not what save_checkpoint writes."""


def _safe_load(file: Path | io.BytesIO, source: Path, what: str = "the file") -> object:
    """`torch.load(weights_only=True)` of `file` (read from `source`; `what` names it in messages).

    A failure is classified by inspecting the bytes (`core.torchfile`), never by torch's wording.
    """
    try:
        with warnings.catch_warnings():
            # Random bytes can look like an old pickle protocol; the error below says it all.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        finding = _inspect(file, source)
        if finding is None:
            raise CheckpointError(
                f"{what} is not a readable checkpoint: PyTorch cannot load it ({_first_line(err)})",
                where=str(source),
                fix=_RECREATE_FIX,
            ) from err
        raise _refusal(finding, source, what) from err


def _inspect(file: Path | io.BytesIO, source: Path) -> Finding | None:
    """What `core.torchfile` finds wrong with `file`; a file that cannot be opened is an error."""
    if isinstance(file, io.BytesIO):
        return inspect_torch_file(file)
    try:
        with file.open("rb") as handle:
            return inspect_torch_file(handle)
    except OSError as err:
        raise CheckpointError(
            f"cannot read the file ({err.strerror or err})", where=str(source), fix="check its permissions"
        ) from None


def _refusal(finding: Finding, source: Path, what: str) -> CheckpointError:
    """The error for what inspecting the file found."""
    if finding.kind == "code":
        return CheckpointError(
            f"{what} asks to load a Python object ({finding.detail}) that could run code, so it was refused",
            where=str(source),
            fix=_CODE_FIX,
        )
    fix = (
        "pass a checkpoint written by secateurs (save_checkpoint)"
        if finding.kind == "not_torch"
        else _RECREATE_FIX
    )
    return CheckpointError(
        f"{what} is not a readable checkpoint: {finding.detail}", where=str(source), fix=fix
    )


def _first_line(err: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, at most `limit` characters (torch's run to pages)."""
    text = str(err).strip().splitlines()
    line = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _unwrap(envelope: object, source: Path) -> dict[str, Any]:
    """Check the envelope written by `save_checkpoint` and return its payload."""
    if not (isinstance(envelope, dict) and envelope.get("format") == FORMAT):
        raise _Unexpected(
            f"the file is a PyTorch file ({type(envelope).__name__}) but not a secateurs checkpoint",
            where=str(source),
            fix="pass a file written by secateurs (save_checkpoint), or load this one with torch.load",
        )
    version = envelope.get("version")
    if version not in READABLE_VERSIONS:
        raise _Unexpected(
            f"checkpoint format version {version!r} is not supported "
            f"(this secateurs reads versions {', '.join(map(str, READABLE_VERSIONS))})",
            where=str(source),
            fix="use the secateurs version that wrote it, or re-create the checkpoint",
        )
    payload = envelope.get("payload") if version == 1 else _verified_payload(envelope, source)
    if not isinstance(payload, dict):
        raise _Unexpected(
            f"the checkpoint payload is a {type(payload).__name__}, not a dict",
            where=str(source),
            fix="re-create the checkpoint with save_checkpoint",
        )
    return payload


def _verified_payload(envelope: dict[str, Any], source: Path) -> object:
    """Check the payload bytes against the stored SHA-256, then load them (weights only)."""
    digest, blob = envelope.get("sha256"), envelope.get("payload")
    well_formed = isinstance(blob, Tensor) and blob.dtype == torch.uint8 and blob.dim() == 1
    if not (isinstance(digest, str) and _HEX_DIGEST.fullmatch(digest) and well_formed):
        raise _Unexpected(
            "the checkpoint envelope is damaged (its checksum or payload is missing or malformed)",
            where=str(source),
            fix=_DELETE_FIX,
        )
    data = blob.contiguous().numpy()
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(
            "the checkpoint does not match its SHA-256 checksum: it was modified or corrupted "
            "after it was written, so it was not loaded",
            where=str(source),
            fix=_DELETE_FIX,
        )
    return _safe_load(io.BytesIO(data.tobytes()), source, "the checkpoint's payload")
