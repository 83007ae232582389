"""The results store on a PostgreSQL server (issue 22, part 1), against a real server: no mocks.

The server is `SECATEURS_TEST_POSTGRES` (a URL whose user may CREATE DATABASE; .ci/run sets it),
else a throwaway cluster these tests start (tests/pg_server.py: Debian's initdb and pg_ctl),
else the tests are skipped saying what to install. Each test gets a database of its own.

The store must behave as the SQLite one does: the same records for the same sweep, finished runs
skipped, an interrupted run resumed after its last stage, every run finished exactly once by
processes sharing it (one of them killed mid-run), the same refusals of a database that is not
ours or is newer; and every bad `--store` is one error line that writes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pg_server
import pytest
import yaml
from tiny import tiny_recipe
from typer.testing import CliRunner

import secateurs.front.cli as cli
from secateurs.core.errors import ConfigError, SecateursError
from secateurs.results import ResultsDB
from secateurs.results.db import SCHEMA_VERSION, StoreError
from secateurs.results.postgres import PostgresStore
from secateurs.results.store import open_store

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[str]:
    """A server for the session: the URL of a database whose user may create databases."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'secateurs[postgres]'")
    if os.environ.get(pg_server.ENV):
        yield os.environ[pg_server.ENV]
        return
    if not pg_server.available():
        pytest.skip(pg_server.MISSING)
    directory = Path(tempfile.mkdtemp(prefix="secateurs-pg-"))  # the server's user must reach it
    try:
        yield pg_server.start(directory)
    finally:
        pg_server.stop(directory)


@pytest.fixture
def pg_url(pg_admin: str) -> Iterator[str]:
    """A new, empty database on the server."""
    url = pg_server.fresh_database(pg_admin)
    yield url
    pg_server.drop_database(pg_admin, url)


def sql(url: str, statement: str) -> list[tuple[Any, ...]]:
    """One statement on its own connection, as another program would run it."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def tables(url: str) -> set[str]:
    rows = sql(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
    return {row[0] for row in rows}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe()), encoding="utf-8")
    return tmp_path


def write_sweep(folder: Path, **axes: Any) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "pg", "recipes": ["tiny.yaml"], **axes}), encoding="utf-8")
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args))


def assert_one_error(result: Any, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


TIMES = ("created", "started", "finished")


def contents(db: Any) -> list[tuple[Any, ...]]:
    """Every run of a store with its metric rows, final metrics and artifacts; times left out."""
    return [
        (
            {k: v for k, v in vars(r).items() if k not in TIMES},
            db.metrics(r.hash),
            db.final_metrics(r.hash),
            db.artifacts(r.hash),
        )
        for r in sorted(db.list_runs(), key=lambda r: r.hash)
    ]


# -- the same records as SQLite ---------------------------------------------------------------
def test_a_sweep_into_postgres_records_exactly_what_sqlite_records(folder: Path, pg_url: str) -> None:
    path = write_sweep(folder, sparsities=[0.25, 0.75], seeds=[0, 1])
    lite, server = folder / "lite", folder / "server"
    assert invoke("sweep", str(path), "--root", str(lite)).exit_code == 0
    result = invoke("sweep", str(path), "--root", str(server), "--store", pg_url)
    assert result.exit_code == 0, result.output
    assert "4 finished, 0 skipped, 0 failed" in result.stdout
    assert not (server / "results.db").exists()  # the root holds only the run directories
    with ResultsDB(lite / "results.db") as a, open_store(pg_url, create=False) as b:
        assert isinstance(b, PostgresStore)
        expected, got = contents(a), contents(b)
        assert len(got) == 4 and got == expected  # metric values bit for bit, rows in order
        assert {r.status for r in b.list_runs()} == {"finished"}
    for record in expected:
        for file in record[3].values():
            assert (server / file).is_file()
    # finished runs are skipped; every reading command reads the server store
    again = invoke("sweep", str(path), "--root", str(server), "--store", pg_url)
    assert "0 finished, 4 skipped, 0 failed" in again.stdout, again.output
    listed = invoke("runs", "--root", str(server), "--store", pg_url, "--json")
    assert listed.exit_code == 0, listed.output
    assert {r["hash"]: r["final"] for r in json.loads(listed.stdout)} == {
        e[0]["hash"]: e[2] for e in expected
    }
    exported = [invoke("export", "--root", str(root), *extra, "--format", "json") for root, extra in
                ((lite, ()), (server, ("--store", pg_url)))]  # fmt: skip
    rows = [[{k: v for k, v in r.items() if k not in TIMES} for r in json.loads(e.stdout)] for e in exported]
    assert rows[0] == rows[1] and len(rows[0]) == 4
    run = expected[0][0]["hash"]
    shown = invoke("runs", "--root", str(server), "--store", pg_url, "--show", run[:6], "--json")
    assert json.loads(shown.stdout)["files"]["model"] == str(server / "runs" / run / "model.pt")
    reports = []
    for root, extra in ((lite, ()), (server, ("--store", pg_url))):
        made = invoke("report", "--root", str(root), *extra)
        assert made.exit_code == 0, made.output
        reports.append((root / "report" / "report.md").read_text(encoding="utf-8").splitlines())
    assert reports[1][2] == f"4 finished runs from `{pg_url}`."
    assert reports[0][3:] == reports[1][3:]  # the same tables from either store


def test_a_claim_is_atomic_between_connections(pg_url: str) -> None:
    """Eight sessions claim one run at once: attempts 1..8, none lost; a finished run is never claimed."""
    with open_store(pg_url) as db:
        db.add_runs([("0123456789abcdef", "r", {})])
    attempts: list[int | None] = []
    start = threading.Barrier(8)

    def claim() -> None:
        with open_store(pg_url) as db:
            start.wait()
            attempts.append(db.claim("0123456789abcdef", version="v", git_revision=None))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(attempts) == list(range(1, 9))  # type: ignore[type-var]
    with open_store(pg_url) as db:
        db.mark_finished("0123456789abcdef", {})
        assert db.claim("0123456789abcdef", version="v", git_revision=None) is None
        assert db.get_run("0123456789abcdef").attempts == 8  # type: ignore[union-attr]


HOLDER = """
import sys, time
from secateurs.results.store import open_store
db = open_store(sys.argv[1])
with db.exclusive("0123456789abcdef") as mine:
    print(mine, flush=True)
    time.sleep(600)
"""


def test_a_run_held_by_a_killed_process_is_free_again_and_listed_as_interrupted(
    pg_url: str, tmp_path: Path
) -> None:
    """The server's lock on a run covers every host, and dies with its process (SIGKILL included)."""
    with open_store(pg_url) as db:
        db.add_runs([("0123456789abcdef", "r", {})])
        db.claim("0123456789abcdef", version="v", git_revision=None)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, pg_url], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        with open_store(pg_url) as db, db.exclusive("0123456789abcdef") as mine:
            assert not mine and db.held("0123456789abcdef")
        listed = invoke("runs", "--root", str(tmp_path / "elsewhere"), "--store", pg_url, "--json")
        assert [r["status"] for r in json.loads(listed.stdout)] == ["running"]  # another host has it
    finally:
        holder.kill()
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    with open_store(pg_url) as db:
        while db.held("0123456789abcdef") and time.monotonic() < deadline:
            time.sleep(0.05)  # the server notices the closed connection
        with db.exclusive("0123456789abcdef") as mine:
            assert mine
    listed = invoke("runs", "--root", str(tmp_path / "elsewhere"), "--store", pg_url, "--json")
    assert [r["status"] for r in json.loads(listed.stdout)] == ["interrupted"]
    assert not (tmp_path / "elsewhere").exists()  # reading creates nothing


# -- four processes, one killed ---------------------------------------------------------------
HOOKED = """
import os, runpy, time
from pathlib import Path
from secateurs.pipeline.hashing import run_hash
from secateurs.pipeline.runner import Pipeline

publish = Pipeline._publish
marker = Path(os.environ["MARKER"]) if os.environ.get("MARKER") else None

def hooked_publish(self, *args, **kwargs):
    publish(self, *args, **kwargs)
    # stop the first run at its evaluation (stage 3): stages 1 and 2 are saved to resume from
    if marker is not None and self.counter >= 3 and not marker.exists():
        marker.write_text(run_hash(self.recipe))
        time.sleep(600)

Pipeline._publish = hooked_publish

if __name__ == "__main__":
    runpy.run_module("secateurs", run_name="__main__")
"""


def test_four_processes_on_one_postgres_store_finish_every_run_exactly_once_after_a_kill(
    folder: Path, pg_url: str
) -> None:
    """Four sweeps of one grid share the store and the root. The first stops inside a run; the
    other three finish every other run and skip that one (held by the server's lock); the first
    is SIGKILLed and started again: it resumes its run after the last saved stage. Every run is
    finished once, the killed one on its second attempt, and no metric row is duplicated."""
    path = write_sweep(folder, seeds=[0, 1, 2, 3, 4])
    (folder / "hooked.py").write_text(HOOKED, encoding="utf-8")
    marker = folder / "paused"
    args = [
        "sweep",
        str(path),
        "--root",
        str(folder / "results"),
        "--store",
        pg_url,
        "--json",
        "--no-progress",
    ]

    def start(pause: bool) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(folder / "hooked.py"), *args], cwd=folder, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(SRC), "MARKER": str(marker) if pause else ""},
        )  # fmt: skip

    def outcomes(child: subprocess.Popen[str]) -> dict[str, tuple[str, int]]:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, out + err
        return {o["hash"]: (o["status"], o["resumed_from"]) for o in json.loads(out)["runs"]}

    children = [start(pause=True)]
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert children[0].poll() is None, children[0].communicate()
            assert time.monotonic() < deadline, "the run did not reach its pause"
            time.sleep(0.05)
        killed_run = marker.read_text()
        children += [start(pause=False) for _ in range(3)]
        others = [outcomes(child) for child in children[1:]]
        os.killpg(children[0].pid, signal.SIGKILL)
        children[0].wait(timeout=60)
        restarted = start(pause=False)
        children.append(restarted)
        last = outcomes(restarted)
    finally:
        for child in children:
            with contextlib.suppress(OSError):
                os.killpg(child.pid, signal.SIGKILL)
    with open_store(pg_url, create=False) as db:
        records = {r.hash: r for r in db.list_runs()}
        shapes = {
            h: [(m.stage, m.kind, m.level, m.step, m.name, m.control) for m in db.metrics(h)] for h in records
        }
    assert len(records) == 5 and killed_run in records
    assert all(seen[killed_run] == ("busy", 0) for seen in others)  # held while its process lived
    finished = [h for seen in [*others, last] for h, (status, _) in seen.items() if status == "finished"]
    assert sorted(finished) == sorted(records)  # each run finished by one process, once
    assert last[killed_run] == ("finished", 2)  # resumed after stage 2: train and prune not run again
    assert {h: (r.status, r.attempts) for h, r in records.items()} == {
        h: ("finished", 2 if h == killed_run else 1) for h in records
    }
    reference = next(iter(shapes.values()))
    assert reference and all(shape == reference for shape in shapes.values())
    assert len(set(reference)) == len(reference)  # no duplicated row


# -- bad stores: one error each, nothing written ----------------------------------------------
@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("mysql://me@db.example/results", ["unknown store URL scheme 'mysql'", "postgresql://USER"]),
        ("postgresql://me@db.example:port/results", ["is malformed", "Fix: write --store postgresql://"]),
        ("postgresql://me@db.example", ["names no database"]),
        ("postgresql://me:secret@[::1/results", ["is malformed"]),
        (
            "postgresql://me:secret@127.0.0.1:1/results",
            ["cannot connect to the results store postgresql://me:***@127.0.0.1:1/results",
             "Connection refused", "Fix: start the server"],
        ),
    ],
    ids=["scheme", "port", "no-database", "bracket", "unreachable"],
)  # fmt: skip
def test_a_bad_store_url_or_an_unreachable_server_is_one_error_and_writes_nothing(
    folder: Path, url: str, fragments: list[str]
) -> None:
    path = write_sweep(folder, seeds=[0])
    root = folder / "results"
    for args in (["sweep", str(path)], ["runs"], ["export"]):
        line = assert_one_error(invoke(*args, "--root", str(root), "--store", url), *fragments)
        assert "secret" not in line  # a password is never shown
    assert not root.exists()


def test_a_server_database_that_does_not_exist_says_how_to_create_it(folder: Path, pg_url: str) -> None:
    missing = pg_server.with_database(pg_url, "no_such_database")
    path = write_sweep(folder, seeds=[0])
    assert_one_error(
        invoke("sweep", str(path), "--root", str(folder / "r"), "--store", missing),
        'database "no_such_database" does not exist',
        "Fix: create it",
    )
    assert not (folder / "r").exists()


def test_without_the_driver_a_server_store_is_one_error_naming_the_extra(folder: Path) -> None:
    """psycopg made unimportable in a child process: the import fails as it would if not installed."""
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.argv[0] = 'secateurs'; "
        "from secateurs.front.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "runs", "--root", str(folder / "r"), "--store", "postgresql://u@h/db"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "250"},
        check=False,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "needs the psycopg driver, which is not installed" in lines[0]
    assert "pip install 'secateurs[postgres]'" in lines[0]
    assert not (folder / "r").exists()


# -- not ours, newer: refused, left alone -----------------------------------------------------
def _foreign_tables(url: str) -> None:
    sql(url, "CREATE TABLE notes (text TEXT)")


def _foreign_meta(url: str) -> None:
    sql(url, "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    sql(url, "INSERT INTO meta VALUES ('created_by', 'someone-else'), ('schema_version', '1')")


def _newer_schema(url: str) -> None:
    with open_store(url):
        pass
    sql(url, f"UPDATE meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_foreign_tables, r"is not a secateurs results database \(a PostgreSQL database: it has no `meta`"),
        (_foreign_meta, r"is not a secateurs results database .*created by 'someone-else'"),
        (_newer_schema, r"was written by a newer secateurs \(schema version 3; .*Fix: upgrade secateurs"),
    ],
    ids=["foreign-tables", "foreign-meta", "newer-schema"],
)
def test_a_database_that_is_not_ours_or_is_newer_is_refused_and_left_alone(
    folder: Path, pg_url: str, make: Any, message: str
) -> None:
    make(pg_url)
    before = {table: sql(pg_url, f"SELECT * FROM {table}") for table in tables(pg_url)}
    with pytest.raises(ConfigError, match=message):
        open_store(pg_url)
    with pytest.raises(ConfigError, match=message):
        open_store(pg_url, create=False)
    path = write_sweep(folder, seeds=[0])
    line = assert_one_error(invoke("sweep", str(path), "--root", str(folder / "r"), "--store", pg_url))
    assert "secateurs results database" in line or "newer secateurs" in line
    assert {table: sql(pg_url, f"SELECT * FROM {table}") for table in tables(pg_url)} == before
    assert not (folder / "r").exists()


def test_reading_an_empty_database_creates_nothing_and_a_reader_cannot_write(
    folder: Path, pg_url: str
) -> None:
    assert_one_error(invoke("runs", "--store", pg_url, "--root", str(folder / "r")), "it has no tables")
    assert tables(pg_url) == set()
    with open_store(pg_url) as db:
        db.add_runs([("abc", "a", {})])
    with open_store(pg_url, create=False) as reader, pytest.raises(StoreError, match="read-only"):
        reader.add_runs([("def", "d", {})])
    with open_store(pg_url, create=False) as reader:
        assert [r.hash for r in reader.list_runs()] == ["abc"]
    assert isinstance(StoreError("x"), SecateursError)


def test_shards_with_a_server_store_may_keep_their_run_directories_on_nfs(
    folder: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal is of SQLite on a network filesystem: a shared root is what a server store wants."""
    import secateurs.results.netfs as netfs

    mounts = folder / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {folder.resolve()} nfs4 rw 0 0\n")
    monkeypatch.setattr(netfs, "MOUNTS", mounts)
    path = write_sweep(folder, seeds=[0, 1])
    refused = invoke("sweep", str(path), "--root", str(folder / "r"), "--shard", "1/2")
    assert_one_error(refused, "is on a network filesystem (nfs4)")
    result = invoke("sweep", str(path), "--root", str(folder / "r"), "--shard", "1/2", "--store", pg_url)
    assert result.exit_code == 0, result.output
    assert "1 finished, 0 skipped, 0 failed" in result.stdout


def test_a_version_1_store_is_read_as_it_is_and_migrated_by_its_first_control_event(pg_url: str) -> None:
    """Schema versioning as on SQLite: version 1 (no `metrics.control`) is read, then migrated once."""
    with open_store(pg_url) as db:
        db.add_runs([("abc", "a", {})])
        db.add_metrics("abc", stage=1, kind="evaluate", level=None, step=None, metrics={"accuracy": 0.5})
    sql(pg_url, "ALTER TABLE metrics DROP COLUMN control")
    sql(pg_url, "UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with open_store(pg_url, create=False) as reader:
        assert [(m.name, m.control) for m in reader.metrics("abc")] == [("accuracy", None)]
    assert sql(pg_url, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]  # read only
    with open_store(pg_url) as db:
        db.add_metrics("abc", stage=2, kind="evaluate", level=None, step=None, metrics={"accuracy": 0.1},
                       control="reinit")  # fmt: skip
        assert db.final_metrics("abc") == {"accuracy": 0.5}  # a control's event is not the run's result
        assert [(m.stage, m.control) for m in db.metrics("abc")] == [(1, None), (2, "reinit")]
    assert sql(pg_url, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
