"""Files that are not what a command expects are one `error:` line (issue 19, failure 6)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from test_markup import error_line, secateurs


@pytest.mark.parametrize(("command", "what"), [("run", "recipe"), ("sweep", "sweep")])
def test_a_binary_file_is_named_as_not_utf8_text(tmp_path: Path, command: str, what: str) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"a:\xca\xfe\x00\x01 binary")
    result = secateurs(command, "bin.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    assert f"bin.yaml: the {what} file is not UTF-8 text (byte 2: b'\\xca')" in line
    assert "saved as UTF-8" in line


def test_a_report_into_an_existing_file_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "taken.md").write_text("mine\n")
    result = secateurs("report", "--root", str(tmp_path), "--out", "taken.md", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--out taken.md is an existing file; a report is a directory" in error_line(result.stderr)
    assert (tmp_path / "taken.md").read_text() == "mine\n"


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_yaml_nested_too_deeply_is_one_error_line(tmp_path: Path, command: str) -> None:
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 100_000 + "\n")
    result = secateurs(command, "deep.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "deep.yaml: the YAML is nested too deeply to read" in error_line(result.stderr)


def test_an_override_nested_too_deeply_is_one_error_line(tmp_path: Path) -> None:
    result = secateurs("run", "oneshot-magnitude", "--set", "a=" + "[" * 50_000, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "override 'a': the YAML is nested too deeply to read" in error_line(result.stderr)


# -- a full disk during the checkpoint save -------------------------------------------------------

_FULL_DISK = """
import errno, os, runpy, sys

real_fdopen = os.fdopen


class FullDisk:
    '''A file on a disk that fills after {limit} bytes: every later write fails with ENOSPC.'''

    def __init__(self, handle):
        self.handle, self.written = handle, 0

    def write(self, data):
        if self.written + len(data) > {limit}:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def fdopen(fd, *args, **kwargs):
    name = os.readlink(f"/proc/self/fd/{{fd}}")
    handle = real_fdopen(fd, *args, **kwargs)
    return FullDisk(handle) if name.endswith(".tmp") and ".pt." in name else handle


os.fdopen = fdopen
sys.argv[0] = "secateurs"
runpy.run_module("secateurs", run_name="__main__")
"""


def _full_disk_after(limit: int) -> str:
    """Code running the CLI with checkpoint files (``.model.pt.*.tmp``) on a disk full at `limit` bytes."""
    return _FULL_DISK.format(limit=limit)


def test_torch_s_error_for_a_write_failing_part_way_is_a_checkpoint_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save turns a failed write after its first record into RuntimeError "[enforce fail at
    inline_container.cc ...]": that too is "could not write", and the previous checkpoint stays."""
    import errno
    import os

    import torch

    from secateurs.core import checkpoint
    from secateurs.core.errors import CheckpointError

    path = tmp_path / "ck.pt"
    checkpoint.save_checkpoint(path, {"w": torch.arange(10.0)})
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, handle: Any) -> None:
            self.handle, self.written = handle, 0

        def write(self, data: bytes) -> int:
            if self.written + len(data) > 1000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.handle.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    monkeypatch.setattr(checkpoint.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(CheckpointError) as caught:
        checkpoint.save_checkpoint(path, {"w": torch.zeros(1000)})
    assert isinstance(caught.value.__cause__, RuntimeError)  # torch's own error, not a stand-in
    assert str(caught.value).startswith(
        f"{path}: could not write the checkpoint: the write failed part-way; "
        "is the disk full? (RuntimeError: "
    )
    assert "Fix: free disk space or choose a writable directory elsewhere (--out)" in str(caught.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


@pytest.mark.parametrize("limit", [0, 1000])
def test_a_run_on_a_full_disk_is_one_error_line_and_leaves_no_checkpoint(tmp_path: Path, limit: int) -> None:
    import yaml
    from tiny import tiny_recipe

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe()))
    result = secateurs("run", "tiny.yaml", "--out", "out", cwd=tmp_path, code=_full_disk_after(limit))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # after the log
    assert re.search(r"out/\w+\.pt: could not write the checkpoint", line) and "Fix: free disk space" in line
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.tmp"))
