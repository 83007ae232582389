"""Specification of a results store that is read-only or damaged, through the CLI (subprocesses).

Reading commands (`runs`, `report`, `export`) open the database read-only and write nothing, so
a store on a read-only disk reads; `sweep` says the store is read-only and how to go on. A
damaged page is named (what `PRAGMA quick_check` finds) once, with a fix that never moves a good
file away: only a file that is not SQLite at all gets that advice.

A read-only disk is a read-only bind mount in a private mount namespace when running as root
(where chmod changes nothing), else the files' and directory's write bits are removed.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny import tiny_recipe

from secateurs.core.errors import ConfigError
from secateurs.results import ResultsDB
from secateurs.results.db import StoreError
from secateurs.results.sweep import expand_sweep, load_sweep, run_sweep

COMMAND = [sys.executable, "-m", "secateurs"]
ENV = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
MOUNT_RO = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with tiny.yaml, sweep.yaml and results/ holding the sweep's two finished runs."""
    folder = tmp_path_factory.mktemp("store")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe()), encoding="utf-8")
    sweep = folder / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "recipes": ["tiny.yaml"], "sparsities": [0.5, 0.75]}))
    summary = run_sweep(expand_sweep(load_sweep(sweep), folder), folder / "results")
    assert summary.finished == 2
    return folder


@pytest.fixture
def folder(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the pristine folder for one test."""
    return Path(shutil.copytree(pristine, tmp_path / "folder"))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


ReadOnlyCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def read_only_cli(tmp_path_factory: pytest.TempPathFactory) -> ReadOnlyCli:
    """`run(root, *args, cwd=...)`: the CLI while the directory `root` and its files are read-only."""
    if os.geteuid() != 0:

        def run_chmod(root: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
            paths = [root, *root.rglob("*")]
            modes = {p: p.stat().st_mode for p in paths}
            for p in paths:
                p.chmod(modes[p] & ~0o222)
            try:
                return cli(*args, cwd=cwd)
            finally:
                for p in paths:
                    p.chmod(modes[p])

        return run_chmod
    probe = tmp_path_factory.mktemp("probe")
    try:
        mounted = subprocess.run(
            ["unshare", "-m", "sh", "-c", MOUNT_RO, str(probe), "sh", "-c", f"! touch {probe}/x 2>/dev/null"],
            capture_output=True,
            timeout=60,
        )
    except OSError:
        pytest.skip("running as root without unshare: no way to make a directory read-only")
    if mounted.returncode != 0:
        pytest.skip(f"running as root and cannot bind-mount read-only ({mounted.stderr.decode().strip()})")

    def run_mounted(root: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["unshare", "-m", "sh", "-c", MOUNT_RO, str(root), *COMMAND, *args],
            cwd=cwd,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run_mounted


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a user error prints (exit code 2), nothing else on stderr and no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- a read-only store ----------------------------------------------------------------------------
READING = {
    "runs": ["runs", "--root", "results"],
    "export": ["export", "--root", "results", "--out", "{out}/runs.json"],
    "report": ["report", "--root", "results", "--out", "{out}/report"],
}


@pytest.mark.parametrize("command", sorted(READING))
def test_reading_commands_read_a_store_on_a_read_only_disk_and_write_nothing(
    folder: Path, tmp_path: Path, read_only_cli: ReadOnlyCli, command: str
) -> None:
    root = folder / "results"
    before = files(root)
    with ResultsDB(root / "results.db") as db:
        hashes = [r.hash for r in db.list_runs()]
    args = [arg.format(out=tmp_path) for arg in READING[command]]
    result = read_only_cli(root, *args, cwd=folder)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "not a secateurs results database" not in result.stdout + result.stderr
    if command == "runs":
        assert all(h in result.stdout for h in hashes), result.stdout
    elif command == "export":
        assert "2 runs written" in result.stdout
    else:
        assert (tmp_path / "report" / "report.md").is_file()
    assert files(root) == before


def test_sweep_on_a_read_only_store_says_so_and_how_to_go_on(
    folder: Path, read_only_cli: ReadOnlyCli
) -> None:
    root = folder / "results"
    before = files(root)
    line = error_line(read_only_cli(root, "sweep", "sweep.yaml", "--root", "results", cwd=folder))
    assert "results.db: the results database is read-only" in line
    assert "copy the results root to a writable place and pass that --root" in line
    assert "move" not in line and "not a secateurs" not in line
    assert files(root) == before


def test_a_reader_never_switches_the_journal_mode(folder: Path) -> None:
    path = folder / "results" / "results.db"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    conn.close()
    before = files(path.parent)
    with ResultsDB(path, create=False) as db:
        assert len(db.list_runs()) == 2
        with pytest.raises(StoreError, match="read-only"):
            db.add_runs([("new", "n", {})])
    assert files(path.parent) == before  # still a rollback-journal database, not a byte changed


def test_a_reader_reads_where_the_wal_files_cannot_be_made(folder: Path) -> None:
    # a directory in the way of results.db-shm and -wal, as a read-only directory would be (even for root)
    path = folder / "results" / "results.db"
    for suffix in ("-shm", "-wal"):
        path.with_name(path.name + suffix).mkdir()
    before = files(path.parent)
    with ResultsDB(path, create=False) as db:
        runs = db.list_runs()
        assert len(runs) == 2 and all(db.final_metrics(r.hash) for r in runs)
    assert files(path.parent) == before


# -- a damaged store ------------------------------------------------------------------------------
def damage_table(path: Path, table: str) -> None:
    """Overwrite the root page of `table` with garbage; the file's header stays intact."""
    conn = sqlite3.connect(path)
    (page,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    assert page > 1
    with path.open("r+b") as handle:
        handle.seek((page - 1) * size)
        handle.write(b"\x07" * size)


DAMAGED = {**READING, "sweep": ["sweep", "sweep.yaml", "--root", "results"]}


@pytest.mark.parametrize("command", sorted(DAMAGED))
def test_a_damaged_metrics_page_is_named_once_with_a_fix_that_keeps_the_file(
    folder: Path, tmp_path: Path, command: str
) -> None:
    path = folder / "results" / "results.db"
    damage_table(path, "metrics")
    args = [arg.format(out=tmp_path) for arg in DAMAGED[command]]
    result = cli(*args, cwd=folder)
    line = error_line(result)
    assert (
        "results.db: the results database is damaged: table metrics: database disk image is malformed" in line
    )
    assert "restore results.db from a copy" in line and ".recover" in line
    assert "move" not in line and "not a secateurs" not in line
    assert "failed" not in result.stdout  # a sweep lists no run as failed: the runs are fine
    conn = sqlite3.connect(path)
    assert [row[0] for row in conn.execute("SELECT status FROM runs")] == ["finished", "finished"]
    conn.close()


def test_damage_found_by_quick_check_is_quoted(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    with ResultsDB(path) as db:
        db.add_runs([("abc", "a", {})])
        db.add_metrics("abc", stage=1, kind="evaluate", level=None, step=None, metrics={"accuracy": 0.5})
    conn = sqlite3.connect(path)
    (page,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'metrics'").fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with path.open("r+b") as handle:  # the end of the page (its one row), not the page header
        handle.seek(page * size - 96)
        handle.write(b"\x07" * 60)
    with ResultsDB(path, create=False) as db, pytest.raises(StoreError) as caught:
        db.final_metrics("abc")
    assert f"damaged: Fragmentation of 29 bytes reported as 0 on page {page}" in str(caught.value)
    assert "Fix: restore results.db from a copy" in str(caught.value)


@pytest.mark.parametrize(
    ("make", "message", "moves"),
    [
        (
            lambda p: p.write_text("just some notes\n"),
            "is not a secateurs results database (not a SQLite file)",
            True,
        ),
        (
            lambda p: sqlite3.connect(p).execute("CREATE TABLE notes (text TEXT)").connection.close(),
            "is not a secateurs results database (a SQLite database: it has no `meta` table)",
            False,
        ),
    ],
    ids=["text", "foreign-sqlite"],
)
def test_only_a_file_that_is_not_sqlite_is_to_be_moved_away(
    tmp_path: Path, make: Any, message: str, moves: bool
) -> None:
    make(tmp_path / "results.db")
    with pytest.raises(ConfigError) as caught:
        ResultsDB(tmp_path / "results.db", create=False)
    assert message in str(caught.value)
    assert ("move this file away" in str(caught.value)) == moves
