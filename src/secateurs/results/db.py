"""The results database: one SQLite file that several processes read and write at once.

SQLite (stdlib `sqlite3`, no server) in WAL mode lets readers proceed while one writer commits,
and every write here is one short `BEGIN IMMEDIATE` transaction, so sweep shards and workers on
one machine share a database without a coordinator: a writer that finds the database busy waits
(`busy_timeout`) instead of failing. A run's row is the source of truth for its status; files in
its run directory count only once the row says `finished`.

Opening checks before writing anything: a file that is not SQLite, or a SQLite database without
our `meta` table, is refused, and so is a database written by a newer schema. Readers cannot
write (`query_only`; SQLite's `mode=ro` or `immutable=1` on a read-only disk) and never switch
the journal mode, so a store on a read-only disk reads. Errors say what was found: not SQLite
at all (the only case where moving the file away is the advice), another program's database, a
SQLite file with a damaged page (`StoreError`, quoting `PRAGMA quick_check`), or a read-only
store opened for writing (`StoreError`).

Schema versions: 2 added `metrics.control`, the control experiment (e.g. "reinit") an event
belongs to, NULL for the run's own events. A version-1 database is read as it is (no controls)
and migrated only when a control event is first written to it, so processes of the older
version working on it meanwhile are not refused.

The queries live in `ResultsStore`, written once for every backend; a backend supplies its
dialect (connection, transactions, catalogue queries, placeholders, error mapping): SQLite here
(`ResultsDB`, the embedded default for the processes of one host) and PostgreSQL in
`secateurs.results.postgres` (a store the hosts of a cluster share). `secateurs.results.store.
open_store` opens either, from a path or a `postgresql://` URL.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from secateurs.core.errors import ConfigError, SecateursError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
CREATED_BY = "secateurs"
DB_NAME = "results.db"
STATUSES = ("pending", "running", "finished", "failed")
TIMEOUT_S = 60.0
"""How long a writer waits for another one before giving up (a commit here takes milliseconds)."""

_SQLITE_HEADER = b"SQLite format 3\x00"
# SQLite's primary result codes (an exception's `sqlite_errorcode` is the extended code)
_READONLY, _CORRUPT, _CANTOPEN, _NOTADB = 8, 11, 14, 26
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE runs (
        hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        config TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'running', 'finished', 'failed')),
        created TEXT NOT NULL,
        started TEXT,
        finished TEXT,
        version TEXT,
        git_revision TEXT,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE metrics ({row_id}
        run TEXT NOT NULL REFERENCES runs (hash),
        stage INTEGER NOT NULL,
        kind TEXT NOT NULL,
        level INTEGER,
        step {integer},
        name TEXT NOT NULL,
        value {real},
        control TEXT
    )""",
    "CREATE INDEX metrics_run ON metrics (run, stage)",
    """CREATE TABLE artifacts (
        run TEXT NOT NULL REFERENCES runs (hash),
        kind TEXT NOT NULL,
        path TEXT NOT NULL,
        PRIMARY KEY (run, kind)
    )""",
)
"""The tables, the same for every backend; a dialect fills in its types and the metrics' row id
(SQLite's implicit `rowid`; PostgreSQL needs a column, and REAL there is single precision)."""
_RUN_COLUMNS = (
    "hash, name, config, status, created, started, finished, version, git_revision, error, attempts"
)


def utc_now() -> str:
    """ISO 8601 UTC with microseconds: sortable text, precise enough to tell two runs apart."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class RunRecord:
    """One row of the `runs` table, config parsed."""

    hash: str
    name: str
    config: dict[str, Any]
    status: str
    created: str
    started: str | None
    finished: str | None
    version: str | None
    git_revision: str | None
    error: str | None
    attempts: int

    @property
    def sparsity(self) -> float | None:
        """The recipe's target sparsity (None when the recipe sets it per stage only)."""
        return self.config.get("sparsity")


@dataclass(frozen=True)
class MetricRow:
    """One metric value of one event of a run (see `secateurs.pipeline.runner.MetricEvent`)."""

    stage: int
    kind: str
    level: int | None
    step: int | None
    name: str
    value: float | None
    control: str | None = None  # the control experiment, None for the run itself


class StoreError(SecateursError):
    """The results database cannot be used as it is (damaged, or read-only for a writer).

    No run can go on with it, so a sweep stops at the first one instead of failing each.
    """


def _not_ours(path: Path) -> ConfigError:
    return ConfigError(
        f"{path} is not a secateurs results database (not a SQLite file)",
        fix="pass --root a directory of secateurs results (or a new one), or move this file away",
    )


def _check_header(path: Path) -> None:
    """Refuse a non-SQLite file before sqlite3 touches it (an empty file is a new database)."""
    with path.open("rb") as handle:
        head = handle.read(len(_SQLITE_HEADER))
    if head and head != _SQLITE_HEADER:
        raise _not_ours(path)


def _code(err: sqlite3.Error) -> int | None:
    """SQLite's primary result code of an error, None when sqlite3 did not give one."""
    code = getattr(err, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


class ResultsStore:
    """The results store's queries, written once for every backend; use as a context manager.

    A backend (a subclass) opens `conn` and supplies the dialect: `_transaction`, `_tables`,
    `_columns`, `_error` and the class attributes below. Queries are written with `?`
    placeholders and the standard SQL both backends accept (`ON CONFLICT`, `RETURNING`).
    """

    KIND = "a database"  # "a SQLite database": what a foreign database is called in a refusal
    FOREIGN_FIX = "pass a store of secateurs results, or a new one"
    ROW_ID = "rowid"  # the column that orders metric rows as they were written
    SAME = "IS"  # null-safe equality (`step IS NULL` when the step is None)
    DDL: ClassVar[Mapping[str, str]] = {"row_id": "", "integer": "INTEGER", "real": "REAL"}
    DRIVER_ERRORS: tuple[type[BaseException], ...] = ()

    conn: Any
    where: str  # the store as messages name it (a path; a URL without its password)
    readonly: bool
    root: Path | None = None  # the results root its artifact paths are relative to, when known

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    # -- the dialect --------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        """A query in the backend's placeholder style (`?` here)."""
        return sql

    def _transaction(self) -> AbstractContextManager[Any]:
        """One write transaction that takes the write lock up front (or waits for it)."""
        raise NotImplementedError

    def _tables(self) -> set[str]:
        raise NotImplementedError

    def _columns(self, table: str) -> set[str]:
        raise NotImplementedError

    def _error(self, err: BaseException) -> SecateursError:
        """The user's view of a driver error."""
        raise NotImplementedError

    def _ready_to_write(self) -> None:
        """What a backend does before its first write (SQLite: WAL mode); a reader skips it."""

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """A cursor of one statement (inside `_write` or alone)."""
        return self.conn.execute(self._sql(sql), tuple(params))

    def _execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> int:
        """One statement for each row; the number of rows changed."""
        if not rows:
            return 0
        cursor = self.conn.cursor()
        try:
            cursor.executemany(self._sql(sql), rows)
            return max(cursor.rowcount, 0)
        finally:
            cursor.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One short write transaction; driver errors become the user's view of them."""
        try:
            with self._transaction():
                yield
        except self.DRIVER_ERRORS as err:
            raise self._error(err) from None

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return list(self._execute(sql, params).fetchall())
        except self.DRIVER_ERRORS as err:
            raise self._error(err) from None

    # -- opening ------------------------------------------------------------------------------
    def _foreign(self, found: str) -> ConfigError:
        return ConfigError(
            f"{self.where} is not a secateurs results database ({self.KIND}: {found})",
            fix=self.FOREIGN_FIX,
        )

    def _prepare(self, create: bool) -> None:
        """Check the database is ours and current; create the schema in a new one."""
        if self._inspect() == "ours":
            if not self.readonly:
                self._ready_to_write()
            self._has_control = self._control_column()
            return
        if not create:
            raise self._foreign("it has no tables")
        self._ready_to_write()
        self._create_schema()
        self._has_control = self._control_column()

    def _create_schema(self) -> None:
        with self._write():
            if self._inspect() == "empty":  # another process may have created it meanwhile
                for statement in _SCHEMA:
                    self._execute(statement.format(**self.DDL))
                self._execute_many(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("schema_version", str(SCHEMA_VERSION)), ("created_by", CREATED_BY)],
                )

    def _control_column(self) -> bool:
        """Whether `metrics` has the `control` column (schema version 2)."""
        try:
            return "control" in self._columns("metrics")
        except self.DRIVER_ERRORS as err:
            raise self._error(err) from None

    def _add_control_column(self) -> None:
        """Migrate a version-1 database to version 2 (one added column) before its first control event."""
        with self._write():
            if not self._control_column():  # another process may have migrated it meanwhile
                self._execute("ALTER TABLE metrics ADD COLUMN control TEXT")
                self._execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                )
        self._has_control = True

    def _inspect(self) -> str:
        """'empty' (no tables) or 'ours'; raises for a foreign or a newer database. Reads only.

        A driver error here is not a sign of a foreign database: it is a damaged page, a file
        that cannot be read or a server that failed, and `_error` says which.
        """
        try:
            tables = self._tables()
            if not tables:
                return "empty"
            if "meta" not in tables:
                raise self._foreign("it has no `meta` table")
            meta = dict(self._execute("SELECT key, value FROM meta").fetchall())
        except self.DRIVER_ERRORS as err:
            raise self._error(err) from None
        if meta.get("created_by") != CREATED_BY:
            raise self._foreign(f"created by {meta.get('created_by', 'another program')!r}")
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise self._foreign("its schema version is not a number") from None
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{self.where} was written by a newer secateurs (schema version {version}; "
                f"this one reads version {SCHEMA_VERSION})",
                fix="upgrade secateurs (pip install -U secateurs) to read and extend these results",
            )
        if version < 1:
            raise self._foreign(f"schema version {version}")
        return "ours"

    # -- runs ---------------------------------------------------------------------------------
    @contextmanager
    def exclusive(self, run: str) -> Iterator[bool]:
        """Hold the run against every other process using this store (yields False if one does).

        The run directory's file lock does that on one host; a server store also locks across
        hosts. Here: nothing beyond the file lock (True).
        """
        yield True

    def held(self, run: str) -> bool | None:
        """Whether some process holds the run through the store (None: the store cannot tell;
        the run directory's lock says, on the host that trains it)."""
        return None

    def add_runs(self, runs: Iterable[tuple[str, str, Mapping[str, Any]]]) -> int:
        """Insert (hash, name, config) rows as pending; existing runs are left as they are."""
        rows = [(h, name, json.dumps(config, sort_keys=True), utc_now()) for h, name, config in runs]
        with self._write():
            return self._execute_many(
                "INSERT INTO runs (hash, name, config, status, created) VALUES (?, ?, ?, 'pending', ?)"
                " ON CONFLICT (hash) DO NOTHING",
                rows,
            )

    def get_run(self, run: str) -> RunRecord | None:
        rows = self._read(f"SELECT {_RUN_COLUMNS} FROM runs WHERE hash = ?", (run,))
        return _record(rows[0]) if rows else None

    def find_run(self, prefix: str) -> RunRecord:
        """The run whose hash is `prefix` or starts with it (unique), else a ConfigError."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._read(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE hash LIKE ? ESCAPE '\\' ORDER BY hash LIMIT 3", (pattern,)
        )
        exact = [row for row in rows if row[0] == prefix]
        if exact:
            return _record(exact[0])
        if not rows:
            raise ConfigError(f"no run {prefix!r} in {self.where}", fix="list the runs with `secateurs runs`")
        if len(rows) > 1:
            raise ConfigError(
                f"{prefix!r} matches several runs ({', '.join(r[0] for r in rows)}, ...)",
                fix="give more characters of the hash",
            )
        return _record(rows[0])

    def list_runs(self, *, status: str | None = None, name: str | None = None) -> list[RunRecord]:
        """Runs in creation order, optionally of one status and with a name matching a glob."""
        if status is not None and status not in STATUSES:
            raise ConfigError(f"unknown run status {status!r}", fix=f"use one of {', '.join(STATUSES)}")
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        records = [_record(row) for row in self._read(sql + " ORDER BY created, hash", params)]
        return [r for r in records if name is None or fnmatchcase(r.name, name)]

    def claim(self, run: str, *, version: str, git_revision: str | None) -> int | None:
        """Mark a run running for one more attempt; its attempt number, or None if it is finished.

        One guarded UPDATE: of two processes claiming at once, the second waits for the first's
        row lock and sees its result, so a finished run is never claimed again.
        """
        with self._write():
            row = self._execute(
                "UPDATE runs SET status = 'running', attempts = attempts + 1, started = ?, finished = NULL,"
                " error = NULL, version = ?, git_revision = ? WHERE hash = ? AND status != 'finished'"
                " RETURNING attempts",
                (utc_now(), version, git_revision, run),
            ).fetchone()
        return None if row is None else int(row[0])

    def mark_finished(self, run: str, artifacts: Mapping[str, str]) -> None:
        """Finished, with its files: one transaction, so a finished run always lists them."""
        with self._write():
            self._execute(
                "UPDATE runs SET status = 'finished', finished = ?, error = NULL WHERE hash = ?",
                (utc_now(), run),
            )
            self._put_artifacts(run, artifacts)

    def _put_artifacts(self, run: str, artifacts: Mapping[str, str]) -> None:
        self._execute_many(
            "INSERT INTO artifacts (run, kind, path) VALUES (?, ?, ?)"
            " ON CONFLICT (run, kind) DO UPDATE SET path = excluded.path",
            [(run, kind, path) for kind, path in artifacts.items()],
        )

    def mark_failed(self, run: str, error: str) -> None:
        with self._write():
            self._execute(
                "UPDATE runs SET status = 'failed', finished = ?, error = ? WHERE hash = ?",
                (utc_now(), error, run),
            )

    def put_run(self, record: RunRecord, metrics: list[MetricRow], artifacts: Mapping[str, str]) -> None:
        """Store a complete run as it was recorded elsewhere (`secateurs merge`): one transaction."""
        if any(m.control is not None for m in metrics) and not self._has_control:
            self._add_control_column()
        values = [getattr(record, key) for key in _RUN_COLUMNS.split(", ")]
        values[2] = json.dumps(record.config, sort_keys=True)
        with self._write():
            self._execute(
                f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * len(values))})", values
            )
            self._insert_metrics(
                [(record.hash, m.stage, m.kind, m.level, m.step, m.name, m.value, m.control) for m in metrics]
            )
            self._put_artifacts(record.hash, artifacts)

    # -- metrics and artifacts ----------------------------------------------------------------
    def delete_metrics_after(self, run: str, stage: int) -> int:
        """Drop the rows of stages after `stage` (left by an attempt that did not finish them)."""
        with self._write():
            return int(
                self._execute("DELETE FROM metrics WHERE run = ? AND stage > ?", (run, stage)).rowcount
            )

    def add_metrics(
        self,
        run: str,
        *,
        stage: int,
        kind: str,
        level: int | None,
        step: int | None,
        metrics: Mapping[str, float],
        control: str | None = None,
    ) -> None:
        """One event's metrics; `control` names the control experiment it belongs to (None: the run)."""
        if control is not None and not self._has_control:
            self._add_control_column()
        rows = [
            (run, stage, kind, level, step, name, _real(value), control) for name, value in metrics.items()
        ]
        with self._write():
            self._insert_metrics(rows)

    def _insert_metrics(self, rows: list[tuple[Any, ...]]) -> None:
        """(run, stage, kind, level, step, name, value, control) rows; a version-1 database has no
        `control` column, and only rows without a control reach it."""
        columns = "run, stage, kind, level, step, name, value"
        if self._has_control:
            columns += ", control"
        else:
            rows = [row[:-1] for row in rows]
        marks = ", ".join("?" for _ in columns.split(", "))
        self._execute_many(f"INSERT INTO metrics ({columns}) VALUES ({marks})", rows)

    def _control(self) -> str:
        """The `control` column in a SELECT, NULL for a version-1 database (checked again each time:
        another process may have migrated it since it was opened)."""
        if not self._has_control:
            self._has_control = self._control_column()
        return "control" if self._has_control else "NULL"

    def metrics(self, run: str) -> list[MetricRow]:
        """All metric rows of a run in the order they were recorded."""
        rows = self._read(
            f"SELECT stage, kind, level, step, name, value, {self._control()} FROM metrics WHERE run = ?"
            f" ORDER BY {self.ROW_ID}",
            (run,),
        )
        return [MetricRow(*row) for row in rows]

    def final_metrics(self, run: str) -> dict[str, float | None]:
        """The metrics of the run's last evaluation (or, without one, of its last event).

        Control experiments' events are left out: they are not the run's result.
        """
        own = f"{self._control()} IS NULL"
        last = self._read(
            f"SELECT stage, kind, step FROM metrics WHERE run = ? AND {own}"
            f" ORDER BY kind = 'evaluate' DESC, {self.ROW_ID} DESC LIMIT 1",
            (run,),
        )
        if not last:
            return {}
        stage, kind, step = last[0]
        rows = self._read(
            f"SELECT name, value FROM metrics WHERE run = ? AND stage = ? AND kind = ? AND step {self.SAME} ?"
            f" AND {own} ORDER BY {self.ROW_ID}",
            (run, stage, kind, step),
        )
        return dict(rows)

    def artifacts(self, run: str) -> dict[str, str]:
        return dict(self._read("SELECT kind, path FROM artifacts WHERE run = ? ORDER BY kind", (run,)))


def _real(value: float) -> float | None:
    """A metric as stored: NaN is NULL (SQLite stores it so; every backend must agree)."""
    number = float(value)
    return None if math.isnan(number) else number


class ResultsDB(ResultsStore):
    """A results store in one SQLite file (WAL): the embedded default, for the processes of one host."""

    KIND = "a SQLite database"
    FOREIGN_FIX = "pass --root a directory of secateurs results, or a new one"
    DRIVER_ERRORS = (sqlite3.Error,)

    def __init__(self, path: str | Path, *, create: bool = True, readonly: bool | None = None) -> None:
        """Open (with `create`, make) the database at `path`.

        `readonly` (default: `not create`) opens an existing database for reading only: nothing
        is created or written, and a store on a read-only disk reads.
        """
        self.path = Path(path)
        self.where = str(self.path)
        self.root = self.path.parent
        self.readonly = not create if readonly is None else readonly
        if self.path.is_dir():
            raise ConfigError(f"{self.path} is a directory, not a results database")
        exists = self.path.exists()
        if not exists and (self.readonly or not create):
            raise ConfigError(
                f"no results database at {self.path}",
                fix="run `secateurs sweep` first, or pass the --root that holds results.db",
            )
        if exists:
            _check_header(self.path)
        elif not self.path.parent.is_dir():
            raise ConfigError(f"the directory {self.path.parent} does not exist")
        try:
            self.conn = self._connect()
        except sqlite3.Error as err:
            raise ConfigError(f"cannot open the results database {self.path} ({err})") from None
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {int(TIMEOUT_S * 1000)}")
            self._prepare(create and not self.readonly)
        except BaseException as err:
            self.conn.close()
            if isinstance(err, sqlite3.Error):
                raise self._error(err) from None
            raise

    def _connect(self) -> sqlite3.Connection:
        """A read-write connection, or for a reader one that cannot write (`query_only`).

        A reader opens the file read-write where it can: after a `mode=ro` connection SQLite
        leaves the WAL's `-wal` and `-shm` files behind, litter in a store that was only read.
        Where the disk is read-only it reads with `mode=ro`, and where the directory cannot hold
        the `-shm` file either, as `immutable` (which ignores a `-wal` file: only a writer that
        did not close cleanly leaves one with content).
        """
        if not self.readonly:
            return sqlite3.connect(self.path, timeout=TIMEOUT_S, isolation_level=None)
        uri = self.path.absolute().as_uri()
        for mode in ("rw", "ro"):
            conn = sqlite3.connect(f"{uri}?mode={mode}", uri=True, timeout=TIMEOUT_S, isolation_level=None)
            conn.execute("PRAGMA query_only = ON")
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error as err:
                if _code(err) not in (_CANTOPEN, _READONLY):
                    return conn  # a damaged file: opening goes on to say what is wrong with it
                conn.close()
            else:
                return conn
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            log.warning(
                "%s: its directory is read-only, so the writes left in %s by a writer that did not"
                " close are not shown",
                self.path,
                wal.name,
            )
        conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=TIMEOUT_S, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
        return conn

    # -- the SQLite dialect -------------------------------------------------------------------
    def _tables(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}

    def _ready_to_write(self) -> None:
        """WAL lets readers and one writer work at once; switching writes, so only when needed.

        Switching needs the database to itself and SQLite does not wait for that (no busy
        handler): two sweeps opening a new store at once retry here until the first one is done.
        """
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                mode = self.conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    self.conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE takes the write lock up front (or waits `busy_timeout` for it)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # some errors (a full disk) already rolled it back
                self.conn.execute("ROLLBACK")
            raise

    def _error(self, err: BaseException) -> SecateursError:
        """The user's view of a SQLite error: a damaged file, a read-only one, or a failed write."""
        assert isinstance(err, sqlite3.Error)
        code = _code(err)
        if code in (_CORRUPT, _NOTADB) or "malformed" in str(err):
            return StoreError(
                f"the results database is damaged: {self._damage(err)}",
                where=str(self.path),
                fix=f"restore {self.path.name} from a copy, or salvage what is readable with"
                f" `sqlite3 {self.path.name} .recover | sqlite3 recovered.db` and use that file",
            )
        if code == _READONLY or (code == _CANTOPEN and not self.readonly and self.path.exists()):
            return StoreError(
                f"the results database is read-only ({err})",
                where=str(self.path),
                fix="make it and its directory writable, or copy the results root to a writable"
                " place and pass that --root (reading commands work on it as it is)",
            )
        return SecateursError(
            f"the results database failed ({err})",
            where=str(self.path),
            fix="check free space and permissions; if it stays locked, stop the other processes using it",
        )

    def _damage(self, err: sqlite3.Error) -> str:
        """What `PRAGMA quick_check` finds (its first lines), else SQLite's error, per table when
        the check cannot run over the whole file."""
        if _code(err) == _NOTADB:  # SQLite's magic string, then a header SQLite cannot read
            return f"its SQLite header is damaged ({err})"
        try:
            rows = [str(row[0]) for row in self.conn.execute("PRAGMA quick_check(3)")]
        except sqlite3.Error:
            return self._damaged_tables() or str(err)
        found = [line for text in rows for line in text.splitlines() if not line.startswith("***")]
        return str(err) if not found or found == ["ok"] else "; ".join(found)

    def _damaged_tables(self) -> str:
        """The tables a quick check of its own fails on, with SQLite's message ('' if none)."""
        try:
            names = [row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        except sqlite3.Error:
            return ""
        damaged = []
        for name in names:
            quoted = '"' + name.replace('"', '""') + '"'
            try:
                result = [str(row[0]) for row in self.conn.execute(f"PRAGMA quick_check({quoted})")]
            except sqlite3.Error as table_err:
                damaged.append(f"table {name}: {table_err}")
                continue
            if result != ["ok"]:
                damaged.append(f"table {name}: {result[0].splitlines()[-1]}")
        return "; ".join(damaged)


def _record(row: tuple[Any, ...]) -> RunRecord:
    values = list(row)
    values[2] = json.loads(values[2])
    return RunRecord(*values)


# -- export ---------------------------------------------------------------------------------------
RUN_FIELDS = (
    "hash", "name", "status", "attempts", "created", "started", "finished", "version", "git_revision",
    "error",
)  # fmt: skip


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (`model.options.hidden`); lists and values stay as they are."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def export_rows(db: ResultsDB) -> list[dict[str, Any]]:
    """One flat row per run: its status fields, `config.*` (flattened) and `final.*` metrics."""
    rows = []
    for record in db.list_runs():
        row: dict[str, Any] = {key: getattr(record, key) for key in RUN_FIELDS}
        row.update(flatten(record.config, "config."))
        row.update({f"final.{k}": v for k, v in db.final_metrics(record.hash).items()})
        rows.append(row)
    return rows


EXPORT_FORMATS = ("csv", "json")


def render_export(rows: list[dict[str, Any]], fmt: str) -> str:
    """The rows as JSON (a list of objects) or CSV (one column per key; lists as JSON text)."""
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt != "csv":
        raise ConfigError(f"unknown export format {fmt!r}", fix=f"use one of {', '.join(EXPORT_FORMATS)}")
    columns = dict.fromkeys(RUN_FIELDS)  # an ordered set: first appearance decides the order
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key)) for key in columns})
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return value
