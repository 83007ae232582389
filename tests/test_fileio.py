"""Result files are written all or nothing, with the permissions a plain open() would give."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import secateurs.core.fileio as fileio
from secateurs.core.fileio import atomic_write_text


def test_atomic_write_replaces_the_file_with_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]  # no temp files left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_an_atomic_directory_replaces_the_old_one_whole_or_leaves_it(tmp_path: Path) -> None:
    target = tmp_path / "run"
    with fileio.atomic_directory(target) as staging:
        (staging / "a.txt").write_text("one")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's private 0700
    with pytest.raises(RuntimeError, match="interrupted"), fileio.atomic_directory(target) as staging:
        (staging / "b.txt").write_text("two")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]  # the old directory, untouched
    with fileio.atomic_directory(target) as staging:
        (staging / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging or set-aside directories left


def test_an_atomic_directory_that_cannot_be_created_names_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    expected = r"cannot create the output directory .*file/run"
    with pytest.raises(fileio.ConfigError, match=expected), fileio.atomic_directory(blocker / "run"):
        pass
