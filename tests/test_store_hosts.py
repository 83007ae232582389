"""Stores on several hosts without a server (issue 22, part 4): safe defaults and `secateurs merge`.

A SQLite store on a network filesystem is refused for shards (they may run on other hosts, and
SQLite's locks do not hold between hosts there) and only warned about for one process. The
filesystem type is read from a mounts file; the tests point `netfs.MOUNTS` at one of their own
in which their temporary directory is an NFS mount.

`merge OUT ROOT...` makes one root of per-host roots: the merge of two shards' roots equals the
root of the whole sweep, record for record and metric for metric; a finished copy of a run wins
over an unfinished one; two finished copies that differ are refused, and a refused merge leaves
nothing behind.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from tiny import tiny_recipe
from typer.testing import CliRunner

import secateurs.front.cli as cli
import secateurs.front.console as console_module
import secateurs.results.netfs as netfs
from secateurs.results import ResultsDB

TIMES = ("created", "started", "finished")


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages on one line each, however long the temporary paths."""
    monkeypatch.setattr(cli, "console", Console(width=400))
    monkeypatch.setattr(cli, "err_console", Console(width=400, stderr=True))
    monkeypatch.setattr(console_module, "err_console", Console(width=400, stderr=True))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe()), encoding="utf-8")
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump({"name": "hosts", "recipes": ["tiny.yaml"], "sparsities": [0.25, 0.5, 0.75]}),
        encoding="utf-8",
    )
    return tmp_path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args))


def sweep(folder: Path, root: Path, *extra: str) -> Any:
    result = invoke("sweep", str(folder / "sweep.yaml"), "--root", str(root), "--no-progress", *extra)
    assert result.exit_code == 0, result.output
    return result


def one_error(result: Any, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def contents(root: Path, *, times: bool = False) -> list[tuple[Any, ...]]:
    """Every run of a root's store: its row, metric rows, final metrics, artifacts and files."""
    with ResultsDB(root / "results.db", create=False) as db:
        return [
            (
                {k: v for k, v in vars(r).items() if times or k not in TIMES},
                db.metrics(r.hash),
                db.final_metrics(r.hash),
                db.artifacts(r.hash),
                {p: (root / p).read_bytes() for p in db.artifacts(r.hash).values()},
            )
            for r in sorted(db.list_runs(), key=lambda r: r.hash)
        ]


# -- network filesystems ----------------------------------------------------------------------
MOUNTS = """\
sysfs /sys sysfs rw 0 0
/dev/sda1 / ext4 rw 0 0
server:/export {nfs} nfs4 rw,vers=4.2 0 0
/dev/sdb1 {nfs}/local\\040disk ext4 rw 0 0
"""


def test_the_filesystem_of_a_path_is_the_longest_mount_above_it(tmp_path: Path) -> None:
    mounts = MOUNTS.format(nfs="/shared")
    assert netfs.filesystem_type("/shared/results/results.db", mounts) == "nfs4"
    assert netfs.filesystem_type("/shared", mounts) == "nfs4"
    assert netfs.filesystem_type("/shared/local disk/r", mounts) == "ext4"  # \\040 is a space
    assert netfs.filesystem_type("/sharedother/r", mounts) == "ext4"  # a prefix of the name is not a parent
    assert netfs.network_filesystem("/shared/r", mounts) == "nfs4"
    assert netfs.network_filesystem("/home/r", mounts) is None
    later = mounts + "tmpfs /shared tmpfs rw 0 0\n"  # mounted over: the later mount is what is seen
    assert netfs.network_filesystem("/shared/r", later) is None
    assert netfs.filesystem_type(tmp_path) is not None  # this machine's own /proc/self/mounts


@pytest.fixture
def on_nfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's directory is an NFS mount, as far as secateurs can tell."""
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS.format(nfs=tmp_path.resolve()), encoding="utf-8")
    monkeypatch.setattr(netfs, "MOUNTS", mounts)
    return tmp_path


def test_shards_on_a_sqlite_store_on_nfs_are_refused_with_the_fix(folder: Path, on_nfs: Path) -> None:
    line = one_error(
        invoke("sweep", str(folder / "sweep.yaml"), "--root", str(folder / "r"), "--shard", "1/2"),
        "is on a network filesystem (nfs4)",
        "--store postgresql://",
        "secateurs merge",
    )
    assert str(folder / "r" / "results.db") in line
    assert not (folder / "r").exists()


def test_one_process_on_a_sqlite_store_on_nfs_is_warned_and_runs(folder: Path, on_nfs: Path) -> None:
    result = sweep(folder, folder / "r")
    assert "network filesystem (nfs4)" in result.stderr and "never run shards" in result.stderr
    assert "3 finished" in result.stdout
    local = folder / "local disk" / "r"  # a local disk mounted inside the NFS tree is fine for shards
    result = sweep(folder, local, "--shard", "1/2")
    assert "network filesystem" not in result.stderr


@pytest.mark.parametrize(
    "flags",
    [("--backend", "ray", "--address", "10.0.0.5:6379"), ("--backend", "slurm")],
    ids=["ray cluster", "slurm"],
)
def test_backends_that_reach_other_hosts_refuse_a_sqlite_store_on_nfs(
    folder: Path, on_nfs: Path, flags: tuple[str, ...]
) -> None:
    one_error(
        invoke("sweep", str(folder / "sweep.yaml"), "--root", str(folder / "r"), *flags),
        "is on a network filesystem (nfs4)",
        "--store postgresql://",
    )
    assert not (folder / "r").exists()  # refused before the cluster is probed or anything written


@pytest.mark.parametrize(
    "flags", [("--backend", "ray"), ("--backend", "slurm", "--cluster", "local")], ids=["ray", "submitit"]
)
def test_backends_on_this_machine_are_only_warned_about_a_sqlite_store_on_nfs(
    folder: Path, on_nfs: Path, monkeypatch: pytest.MonkeyPatch, flags: tuple[str, ...]
) -> None:
    import secateurs.results.sweep as sweep_module

    def stop(*args: Any, **kwargs: Any) -> None:  # the check passed: stop before starting the backend
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_module, "run_sweep", stop)
    result = invoke("sweep", str(folder / "sweep.yaml"), "--root", str(folder / "r"), *flags)
    assert result.exit_code == 130 and "interrupted" in result.stderr, result.output
    assert "network filesystem (nfs4)" in result.stderr and "never run shards" in result.stderr


def test_only_backends_that_may_leave_this_machine_span_hosts() -> None:
    from secateurs.results.sweep import make_backend

    spans = {
        "local, 2 workers": make_backend("local", workers=2),
        "ray, local instance": make_backend("ray"),
        "ray, address local": make_backend("ray", options={"address": "local"}),
        "ray, auto": make_backend("ray", options={"address": "auto"}),
        "ray, host:port": make_backend("ray", options={"address": "10.0.0.5:6379"}),
        "slurm": make_backend("slurm"),
        "slurm, local executor": make_backend("slurm", options={"cluster": "local"}),
    }
    assert [name for name, backend in spans.items() if backend.spans_hosts()] == [
        "ray, auto",
        "ray, host:port",
        "slurm",
    ]


# -- merge ------------------------------------------------------------------------------------
def test_merging_two_shards_roots_equals_the_single_store_sweep(folder: Path) -> None:
    whole, one, two = folder / "whole", folder / "host1", folder / "host2"
    sweep(folder, whole)
    sweep(folder, one, "--shard", "1/2")
    sweep(folder, two, "--shard", "2/2")
    result = invoke("merge", str(folder / "merged"), str(one), str(two))
    assert result.exit_code == 0, result.output
    assert f"3 runs merged into {folder / 'merged'}" in result.stdout
    merged = contents(folder / "merged")
    assert len(merged) == 3 and merged == contents(whole)  # rows, metrics bit for bit, files byte for byte
    by_hash = {c[0]["hash"]: c for c in contents(one, times=True) + contents(two, times=True)}
    assert contents(folder / "merged", times=True) == [by_hash[h] for h in sorted(by_hash)]  # times too
    # the merged root is a root like any other: a sweep on it finds every run finished
    assert "0 finished, 3 skipped" in sweep(folder, folder / "merged").stdout
    assert not list(folder.glob(".merged*"))
    # identical duplicates are one run
    again = invoke("merge", str(folder / "again"), str(whole), str(one), str(two))
    assert again.exit_code == 0, again.output
    assert "3 in several roots" in again.stdout and contents(folder / "again") == merged


def test_a_finished_copy_wins_over_pending_failed_and_running_ones(folder: Path) -> None:
    done, other = folder / "done", folder / "other"
    sweep(folder, done)
    sweep(folder, other, "--shard", "1/3")  # one run finished here too
    with ResultsDB(done / "results.db") as db:
        records = db.list_runs()
    runs = sorted(r.hash for r in records)
    with ResultsDB(other / "results.db") as db:
        db.add_runs([(r.hash, r.name, r.config) for r in records])  # pending where the shard did not run
        statuses = {r.hash: r.status for r in db.list_runs()}
        unfinished = [h for h in runs if statuses[h] == "pending"]
        assert len(unfinished) == 2
        db.claim(unfinished[0], version="v", git_revision=None)  # running
        db.claim(unfinished[1], version="v", git_revision=None)
        db.mark_failed(unfinished[1], "SecateursError: broke")
    for order in ((other, done), (done, other)):
        target = folder / f"merged-{order[0].name}"
        assert invoke("merge", str(target), *map(str, order)).exit_code == 0
        assert contents(target) == contents(done)


def test_two_finished_copies_that_differ_are_refused_and_nothing_is_written(folder: Path) -> None:
    one = folder / "host1"
    sweep(folder, one)
    shutil.copytree(one, folder / "host2")
    conn = sqlite3.connect(folder / "host2" / "results.db")
    run = conn.execute("SELECT hash FROM runs ORDER BY hash LIMIT 1").fetchone()[0]
    conn.execute("UPDATE metrics SET value = value + 0.01 WHERE run = ? AND name = 'accuracy'", (run,))
    conn.commit()
    conn.close()
    before = sorted(p.name for p in folder.iterdir())
    line = one_error(
        invoke("merge", str(folder / "merged"), str(one), str(folder / "host2")),
        f"run {run} conflicts between {one} and {folder / 'host2'}",
        "different metrics",
        "accuracy",
        "Fix: keep one copy",
    )
    assert "evaluate" in line
    assert sorted(p.name for p in folder.iterdir()) == before  # no OUT, no temporary directory


def test_merge_refuses_what_it_cannot_merge_and_writes_nothing(folder: Path) -> None:
    root = folder / "host1"
    sweep(folder, root)
    (folder / "full").mkdir()
    (folder / "full" / "x").write_text("x")
    before = sorted(p.name for p in folder.iterdir())
    one_error(invoke("merge", str(folder / "full"), str(root)), "already exists")
    one_error(invoke("merge", str(folder / "m"), str(root), str(folder / "none")), "no results database at")
    one_error(invoke("merge", str(folder / "m"), str(root), str(root)), "is named twice")
    one_error(invoke("merge", str(root / "inside"), str(root)), "overlaps the root")
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_merge_that_fails_while_copying_leaves_nothing_behind(folder: Path) -> None:
    """A file that cannot be copied (a link to nothing) fails the merge after its store was
    written: the temporary directory goes, and OUT never appears."""
    one, two = folder / "host1", folder / "host2"
    sweep(folder, one, "--shard", "1/2")
    sweep(folder, two, "--shard", "2/2")
    run_dirs = sorted((two / "runs").iterdir())
    (run_dirs[0] / "broken").symlink_to(folder / "nowhere")
    before = sorted(p.name for p in folder.iterdir())
    one_error(invoke("merge", str(folder / "merged"), str(one), str(two)), "cannot write the merged root")
    assert sorted(p.name for p in folder.iterdir()) == before
