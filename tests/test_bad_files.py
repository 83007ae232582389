"""Files that are not what a command expects are one `error:` line (issue 19, failure 6)."""

from __future__ import annotations

from pathlib import Path

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
