"""What a file meant for `torch.load` holds, found by reading its bytes, never by unpickling it.

A refused checkpoint must be reported by what is wrong with the file, not by matching the wording
of torch's exception (which changes between releases): is it empty, a zip archive cut short, an
archive whose members fail their CRC-32, no PyTorch file at all, or a pickle that names a Python
callable a weights-only load would refuse (``os.system``: it asks to run code). The pickle is read
with `pickletools.genops`, which decodes opcodes without executing any of them.
"""

from __future__ import annotations

import functools
import io
import pickletools
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_LEGACY_PICKLES = 5  # the pre-zip torch format is several pickles in a row, then raw storage bytes
_CHUNK = 1 << 20
_MODULE_ALIASES = {"posix": "os", "nt": "os"}  # os.system pickles as posix.system
_STRING_OPS = frozenset(
    ["UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING", "SHORT_BINSTRING"]
)
_GET_OPS = frozenset(("GET", "BINGET", "LONG_BINGET"))
_PUT_OPS = frozenset(("PUT", "BINPUT", "LONG_BINPUT"))
_SILENT_OPS = frozenset(("PROTO", "FRAME", "MEMOIZE", *_PUT_OPS))  # push nothing onto the stack

_UNNAMED = "a global named only at load time"
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    zlib.error,
)
_FALLBACK_ALLOWED = frozenset(
    ("collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.bytearray", "builtins.complex")
)

Kind = Literal["empty", "truncated", "damaged", "not_torch", "code"]


@dataclass(frozen=True)
class Finding:
    """Why a file cannot be a loadable checkpoint: `kind`, and `detail` for the message."""

    kind: Kind
    detail: str


def inspect_torch_file(file: BinaryIO) -> Finding | None:
    """The first thing wrong with `file` (seekable, read from its start) that explains a failed
    `torch.load`, or None when its structure is sound and it asks to run no code."""
    file.seek(0, io.SEEK_END)
    size = file.tell()
    file.seek(0)
    if size == 0:
        return Finding("empty", "it is empty (0 bytes)")
    head = file.read(4)
    file.seek(0)
    if zipfile.is_zipfile(file):
        return _inspect_zip(file)
    if head.startswith(_ZIP_LOCAL_HEADER):
        return Finding(
            "truncated",
            f"it is cut short (a zip archive of {size:,} bytes whose directory at the end is missing)",
        )
    file.seek(0)
    names, complete = pickle_globals(file, pickles=_LEGACY_PICKLES)
    if (code := _code(names)) is not None:
        return code
    if not complete:
        return Finding(
            "not_torch", f"it is not a PyTorch file (neither a zip archive nor a pickle: starts {head!r})"
        )
    return None


def pickle_globals(file: BinaryIO, pickles: int = 1) -> tuple[list[str], bool]:
    """The ``module.name`` of every global the first `pickles` pickles in `file` name, in order,
    and whether at least one whole pickle was read (False: `file` is no pickle, or a damaged one)."""
    names: list[str] = []
    complete = False
    for _ in range(pickles):
        if not file.read(1):
            break
        file.seek(-1, io.SEEK_CUR)
        try:
            names.extend(_globals_of_one_pickle(file))
        except (ValueError, EOFError, UnicodeDecodeError):  # genops' words for "not a pickle here"
            return names, complete
        complete = True
    return names, complete


def _globals_of_one_pickle(file: BinaryIO) -> Iterator[str]:
    """Globals named by GLOBAL / INST (``module name`` inline) and STACK_GLOBAL (the two strings
    pushed before it, literal or fetched from the memo), up to the pickle's STOP."""
    memo: dict[int, object] = {}
    recent: list[object] = []  # what the last opcodes pushed; None for anything but a string
    for op, arg, _ in pickletools.genops(file):
        if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
            yield arg.replace(" ", ".", 1)
        elif op.name == "STACK_GLOBAL":
            module, name = recent[-2:] if len(recent) >= 2 else [None, None]
            known = isinstance(module, str) and isinstance(name, str)
            yield f"{module}.{name}" if known else _UNNAMED
        if op.name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif op.name in _PUT_OPS and isinstance(arg, int):
            memo[arg] = recent[-1] if recent else None
        elif op.name in _GET_OPS and isinstance(arg, int):
            recent.append(memo.get(arg))
        elif op.name in _STRING_OPS:
            recent.append(arg if isinstance(arg, str) else None)
        elif op.name not in _SILENT_OPS:
            recent.append(None)
        del recent[:-2]
        if op.name == "STOP":
            return


def _inspect_zip(file: BinaryIO) -> Finding | None:
    """A damaged directory or member (CRC-32, cut short), a missing data.pkl, or code in it."""
    try:
        archive = zipfile.ZipFile(file)
    except _ZIP_ERRORS as err:
        return Finding("damaged", f"it is damaged (its zip directory cannot be read: {err})")
    with archive:
        members = archive.infolist()
        file.seek(0)
        if file.read(4) == _ZIP_LOCAL_HEADER and min((i.header_offset for i in members), default=0) > 0:
            # the directory found is that of a zip stored inside (a checkpoint's payload): the
            # archive's own directory, at its end, was cut off
            return Finding("truncated", "it is cut short (the zip directory at its end is missing)")
        for info in members:
            if (problem := _read_member(archive, info)) is not None:
                return problem
        pickled = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pickled:
            return Finding("not_torch", "it is a zip archive but not a PyTorch file (it holds no data.pkl)")
        with archive.open(pickled[0]) as member:
            names, complete = pickle_globals(io.BytesIO(member.read()))
    if (code := _code(names)) is not None:
        return code
    if not complete:
        return Finding("damaged", f"it is damaged ({pickled[0]} is not a whole pickle)")
    return None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Finding | None:
    """Read one member to its end, which checks its CRC-32."""
    try:
        with archive.open(info) as member:
            while member.read(_CHUNK):
                pass
    except zipfile.BadZipFile as err:
        if "CRC" in str(err):
            return Finding("damaged", f"it is damaged ({info.filename} fails its CRC-32 check)")
        return Finding("damaged", f"it is damaged ({info.filename} cannot be read: {err})")
    except _ZIP_ERRORS as err:
        return Finding(
            "damaged", f"it is damaged or cut short ({info.filename} cannot be read: {err or 'end of file'})"
        )
    return None


def _code(names: list[str]) -> Finding | None:
    """A 'code' finding naming the globals a weights-only load refuses, if there are any."""
    refused = list(dict.fromkeys(_alias(n) for n in names if not is_allowed_global(n)))
    if not refused:
        return None
    shown = ", ".join(refused[:3]) + (f" and {len(refused) - 3} more" if len(refused) > 3 else "")
    return Finding("code", shown)


def _alias(name: str) -> str:
    """`name` as users know it: ``posix.system`` is ``os.system``."""
    if name == _UNNAMED:
        return name
    module, _, rest = name.partition(".")
    return f"{_MODULE_ALIASES.get(module, module)}.{rest}"


def is_allowed_global(name: str) -> bool:
    """Whether `torch.load(weights_only=True)` accepts global ``module.name``: its defaults or one the
    user added. torch's default table is private; should it move, any ``torch.*`` name and the few
    builtins torch files use count as allowed, so that only foreign callables are reported."""
    import torch.serialization

    defaults = _torch_defaults()
    if name in defaults or (defaults is _FALLBACK_ALLOWED and name.startswith("torch.")):
        return True
    for entry in torch.serialization.get_safe_globals():
        if isinstance(entry, tuple):  # (object, "module.name")
            if name == entry[1]:
                return True
        elif name == f"{getattr(entry, '__module__', '')}.{getattr(entry, '__qualname__', '')}":
            return True
    return False


@functools.cache
def _torch_defaults() -> frozenset[str]:
    try:
        from torch import _weights_only_unpickler as unpickler

        return frozenset(unpickler._get_allowed_globals())
    except (ImportError, AttributeError):
        return _FALLBACK_ALLOWED
