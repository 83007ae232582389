"""A refused checkpoint is reported by what the file holds, not by torch's wording (issue 19, failure 9).

Before: a pickle calling ``os.system`` was "truncated or corrupt" (torch 2.13 words the refusal
differently from the pattern matched), and a bit flip at byte 100 was "not a secateurs checkpoint".
Now `secateurs.core.torchfile` reads the bytes: empty, zip cut short, a member failing its CRC-32,
no PyTorch file at all, or a pickle naming a callable a weights-only load refuses.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from secateurs.core.checkpoint import load_checkpoint, save_checkpoint
from secateurs.core.errors import CheckpointError
from secateurs.core.torchfile import inspect_torch_file, pickle_globals

RUNS_CODE = r"asks to load a Python object \(os\.system\) that could run code, so it was refused"


class _System:
    """Unpickling this calls os.system(command): what a malicious checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def _refusal(path: Path) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    return str(caught.value)


def _checkpoint(path: Path) -> bytes:
    save_checkpoint(path, {"model": {"w": torch.arange(1000.0)}, "step": 7})
    return path.read_bytes()


# -- a file that asks to run code -----------------------------------------------------------------


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda p, obj: p.write_bytes(pickle.dumps(obj, protocol=2)), id="pickle-protocol-2"),
        pytest.param(lambda p, obj: p.write_bytes(pickle.dumps(obj, protocol=4)), id="pickle-stack-global"),
        pytest.param(lambda p, obj: p.write_bytes(pickle.dumps(obj, protocol=0)), id="pickle-text"),
        pytest.param(lambda p, obj: torch.save({"model": obj}, p), id="torch-zip"),
        pytest.param(
            lambda p, obj: torch.save({"m": obj}, p, _use_new_zipfile_serialization=False), id="torch-legacy"
        ),
    ],
)
def test_a_pickle_calling_os_system_asks_to_run_code_and_is_not_run(tmp_path: Path, write) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    write(path, _System(f"touch {marker}"))
    message = _refusal(path)
    assert re.search(rf"^{re.escape(str(path))}: the file {RUNS_CODE} Fix: ", message), message
    assert "truncated" not in message and "corrupt" not in message
    assert not marker.exists()


def test_code_is_found_whatever_torch_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The class comes from the file: a torch release that words its refusal differently changes nothing."""
    path = tmp_path / "evil.pt"
    torch.save({"model": _System("true")}, path)

    def reworded(*_: object, **__: object) -> None:
        raise pickle.UnpicklingError("a wording no pattern has seen")

    monkeypatch.setattr(torch, "load", reworded)
    assert re.search(RUNS_CODE, _refusal(path))


def test_code_inside_a_payload_with_a_matching_checksum_is_named(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"x": _System("true")}, buffer)
    blob = buffer.getvalue()
    envelope = {
        "format": "secateurs-checkpoint",
        "version": 2,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "payload": torch.frombuffer(bytearray(blob), dtype=torch.uint8),
    }
    path = tmp_path / "crafted.pt"
    torch.save(envelope, path)
    assert f"{path}: the checkpoint's payload asks to load a Python object (os.system)" in _refusal(path)


def test_globals_are_read_through_the_memo_of_a_protocol_4_pickle() -> None:
    data = pickle.dumps([_System("a"), _System("b"), print], protocol=4)
    names, complete = pickle_globals(io.BytesIO(data))
    assert complete and set(names) >= {f"{os.system.__module__}.system", "builtins.print"}


def test_a_good_checkpoint_has_nothing_to_report(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    _checkpoint(path)
    with path.open("rb") as file:
        assert inspect_torch_file(file) is None


# -- damage -------------------------------------------------------------------------------------------


def test_a_bit_flip_at_byte_100_is_damage_not_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    data = bytearray(_checkpoint(path))
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    message = _refusal(path)
    assert re.search(
        r"not a readable checkpoint: it is damaged \(\S*data\.pkl fails its CRC-32 check\)", message
    )
    assert "not a secateurs checkpoint" not in message
    assert "Fix: delete it and re-create it" in message


def test_every_bit_flip_in_the_envelope_pickle_is_damage_or_harmless(tmp_path: Path) -> None:
    """Whatever a flip inside data.pkl turns the envelope into (another version, another format
    tag, a broken pickle), it is named as damage; or it changed nothing that is read (a memo index)."""
    path = tmp_path / "ck.pt"
    good = _checkpoint(path)
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    start = good.index(b"\x80\x02", info.header_offset)  # the pickle: PROTO 2
    refused = 0
    for at in range(start, start + info.file_size, 3):
        flipped = bytearray(good)
        flipped[at] ^= 0x10
        path.write_bytes(bytes(flipped))
        try:
            payload = load_checkpoint(path)
        except CheckpointError as err:
            assert "it is damaged" in str(err) or "SHA-256" in str(err), (at, str(err))
            refused += 1
        else:
            assert torch.equal(payload["model"]["w"], torch.arange(1000.0)) and payload["step"] == 7
    assert refused > info.file_size // 6


@pytest.mark.parametrize("keep", [0.01, 0.1, 0.5, 0.9, 0.99, 0.999])
def test_a_truncated_file_is_cut_short(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "ck.pt"
    data = _checkpoint(path)
    path.write_bytes(data[: int(len(data) * keep)])
    assert re.search(r"not a readable checkpoint: it is (cut short|damaged)", _refusal(path))


def test_an_empty_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    path.write_bytes(b"")
    assert f"{path}: the file is not a readable checkpoint: it is empty (0 bytes) Fix: delete it" in _refusal(
        path
    )


# -- not a checkpoint at all ---------------------------------------------------------------------------


def test_random_bytes_are_not_a_pytorch_file(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    message = _refusal(path)
    assert (
        "not a readable checkpoint: it is not a PyTorch file (neither a zip archive nor a pickle" in message
    )
    assert "Fix: pass a checkpoint written by secateurs" in message


def test_a_zip_that_is_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "docs.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert "it is a zip archive but not a PyTorch file (it holds no data.pkl)" in _refusal(path)


def test_a_plain_torch_save_of_a_tensor_is_a_valid_file_but_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save(torch.ones(3), path)
    assert "the file is a PyTorch file (Tensor) but not a secateurs checkpoint" in _refusal(path)


def test_the_cli_prints_the_class_as_one_line(tmp_path: Path) -> None:
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(_System(f"touch {tmp_path / 'ran'}"), protocol=2))
    command = [sys.executable, "-m", "secateurs", "inspect", "evil.pt"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(RUNS_CODE, lines[0]), result.stderr
    assert not (tmp_path / "ran").exists()
