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


# -- size limits (issue 19, failure 11) -----------------------------------------------------------


@pytest.mark.parametrize(("command", "what"), [("run", "recipe"), ("sweep", "sweep")])
def test_a_2_mib_file_is_refused_before_it_is_parsed(tmp_path: Path, command: str, what: str) -> None:
    (tmp_path / "big.yaml").write_text("description: " + "x" * (2 * 1024 * 1024) + "\n")
    result = secateurs(command, "big.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert (
        f"big.yaml: the {what} file is 2.0 MiB (2,097,166 bytes), over the limit of 1.0 MiB (1,048,576 bytes)"
        in error_line(result.stderr)
    )


def test_the_size_limit_is_checked_before_reading_the_whole_file(tmp_path: Path) -> None:
    import time

    from secateurs.core.errors import ConfigError
    from secateurs.core.fileio import MAX_CONFIG_BYTES, read_config_text

    path = tmp_path / "huge.yaml"
    with path.open("wb") as file:  # 4 GiB, sparse: reading it all would take seconds and the memory
        file.truncate(4 * 2**30)
    started = time.perf_counter()
    with pytest.raises(
        ConfigError, match=r"huge.yaml: the recipe file is 4096.0 MiB \(4,294,967,296 bytes\)"
    ):
        read_config_text(path, "recipe")
    assert time.perf_counter() - started < 1.0
    path.write_text("a: " + "x" * (MAX_CONFIG_BYTES - 4) + "\n")  # exactly at the limit: read
    assert len(read_config_text(path, "recipe")) == MAX_CONFIG_BYTES


def test_a_long_override_value_is_refused(tmp_path: Path) -> None:
    result = secateurs("run", "oneshot-magnitude", "--set", "description=" + "x" * 70_000, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    assert "override 'description': the YAML is 70,000 characters long; the limit is 65,536" in line
    assert len(line) < 300


def test_a_long_description_is_refused(tmp_path: Path) -> None:
    result = secateurs("run", "oneshot-magnitude", "--set", "description=" + "x" * 20_000, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    assert "description:" in line and re.search(r"at most 10,?000 characters", line), line


def test_the_error_for_100_nested_stages_is_one_short_line(tmp_path: Path) -> None:
    import yaml
    from tiny import tiny_recipe

    stages: list[dict[str, Any]] = [{"prune": {}}]
    for _ in range(100):  # a typo at every level: one problem per level, each with a 100-part path
        stages = [{"repeat": {"schedule": {"name": "iterative"}, "stages": stages, "bogus": 1}}]
    (tmp_path / "deep.yaml").write_text(yaml.safe_dump(tiny_recipe(*stages)))
    result = secateurs("run", "deep.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    assert len(line) <= len("error: ") + 2000 + 40
    assert line.startswith("error: deep.yaml: invalid recipe: stages.0.repeat.")
    assert re.search(r" … \([\d,]+ characters omitted\) … ", line)


def test_error_line_keeps_the_start_and_the_end_of_a_long_message() -> None:
    from secateurs.front.console import MAX_ERROR_CHARS, error_line

    message = "where: " + "x" * 10_000 + " Fix: do this"
    shown = error_line(message).plain
    assert len(shown) <= len("error: ") + MAX_ERROR_CHARS + 40
    assert shown.startswith("error: where: xxx") and shown.endswith("xxx Fix: do this")
    omitted = int(re.search(r"\(([\d,]+) characters omitted\)", shown).group(1).replace(",", ""))
    assert omitted == len(message) - MAX_ERROR_CHARS
    assert error_line("short").plain == "error: short"
