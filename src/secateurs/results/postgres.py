"""A results store on a PostgreSQL server: one store for the hosts of a cluster.

SQLite's locking needs every process on one host (WAL's shared memory) and is unreliable on
the network filesystems clusters share, so a sweep spread over hosts writes to a server. The
schema, the queries and the refusals are `ResultsStore`'s; this module is the dialect: psycopg 3
(an optional extra, `pip install secateurs[postgres]`, imported only when a URL is opened),
`%s` placeholders, `BEGIN` transactions in autocommit mode, the catalogue of the connection's
schema, and PostgreSQL's errors as one line each. Two processes claiming one run are serialised
by the row lock of `claim`'s guarded UPDATE; `exclusive` holds a session advisory lock on the
run for as long as it trains, which the server frees when the process dies, however it dies.
A reader's session is read-only (`default_transaction_read_only`), so it writes nothing.

The run directories (saved state and final files) stay under `--root`: with several hosts, a
shared filesystem, or each host its own root (a run interrupted on one host then starts afresh
on another).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar
from urllib.parse import urlsplit

from secateurs.core.errors import ConfigError, SecateursError
from secateurs.results.db import ResultsStore, StoreError

SCHEMES = ("postgresql", "postgres")
CONNECT_TIMEOUT_S = 5
"""How long opening waits for a server that does not answer (libpq's `connect_timeout`)."""
_CREATE_LOCK = 0x5ECA7E05  # the advisory lock that serialises creating the schema
_URL_FIX = "write --store postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"


def is_url(location: object) -> bool:
    """Whether `location` names a server store (any `scheme://`), not a SQLite path."""
    return isinstance(location, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location) is not None


def display(url: str) -> str:
    """The URL as messages show it: without its password (also in a URL too malformed to parse)."""
    shown = re.sub(r"^([^:/]+://[^:/@]*):[^/]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", shown)


def check_url(url: str) -> None:
    """Refuse a URL that is not a PostgreSQL store's before anything connects (one ConfigError)."""
    shown = display(url)
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            f"unknown store URL scheme {scheme!r} in {shown} (a server store is PostgreSQL)",
            fix=f"{_URL_FIX}, or pass --root alone for a SQLite store",
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise ConfigError(f"the store URL {shown} is malformed ({err})", fix=_URL_FIX) from None
    if port == 0:
        raise ConfigError(f"the store URL {shown} has port 0", fix=_URL_FIX)
    if not parts.path.strip("/"):
        raise ConfigError(f"the store URL {shown} names no database", fix=_URL_FIX)


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "a postgresql:// store needs the psycopg driver, which is not installed",
            fix="pip install 'secateurs[postgres]' (psycopg 3), or leave out --store for a SQLite store",
        ) from None
    return psycopg


def _first_lines(err: BaseException) -> str:
    """libpq's message on one line, without its 'connection failed:' prefixes and hints."""
    text = str(err).strip()
    for prefix in ("connection failed:", "connection is bad:"):
        text = text.removeprefix(prefix).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(("Is the server", "HINT:"))]
    return re.sub(r"\s+", " ", "; ".join(kept or lines)).replace("FATAL: ", "")


class PostgresStore(ResultsStore):
    """A results store in a PostgreSQL database (psycopg 3), shared by any number of hosts."""

    KIND = "a PostgreSQL database"
    FOREIGN_FIX = "pass --store an empty database, or one that secateurs created"
    ROW_ID = "id"
    SAME = "IS NOT DISTINCT FROM"
    DDL: ClassVar[Mapping[str, str]] = {
        "row_id": "\n        id BIGSERIAL PRIMARY KEY,",
        "integer": "BIGINT",
        "real": "DOUBLE PRECISION",
    }

    def __init__(self, url: str, *, create: bool = True, readonly: bool | None = None) -> None:
        """Connect to the database at `url` and check it (with `create`, make the schema).

        Nothing is written before the checks pass, and a reader's session writes nothing.
        """
        check_url(url)
        psycopg = _driver()
        self.url, self.where = url, display(url)
        self.readonly = not create if readonly is None else readonly
        self.DRIVER_ERRORS = (psycopg.Error,)
        options = psycopg.conninfo.conninfo_to_dict(url)
        options.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        options.setdefault("application_name", "secateurs")
        try:
            self.conn = psycopg.connect(autocommit=True, **options)
        except psycopg.Error as err:
            raise self._unreachable(err) from None
        try:
            if self.readonly:
                self.conn.execute("SET default_transaction_read_only = on")
            self._prepare(create and not self.readonly)
        except BaseException as err:
            self.conn.close()
            if isinstance(err, psycopg.Error):
                raise self._error(err) from None
            raise

    def _unreachable(self, err: BaseException) -> SecateursError:
        """Why connecting failed: no database of that name, a refused login, no server answering."""
        found = _first_lines(err)
        if re.search(r'database ".*" does not exist', found):
            fix = "create it (createdb, or CREATE DATABASE) or correct the database name in --store"
        elif (
            "password" in found or "authentication" in found or re.search(r'role ".*" does not exist', found)
        ):
            fix = "correct the user and password in --store (or ~/.pgpass), or ask the server's admin"
        else:
            fix = "start the server, or correct the host and port in --store (is a firewall in the way?)"
        return StoreError(f"cannot connect to the results store {self.where}: {found}", fix=fix)

    # -- the PostgreSQL dialect ---------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def _tables(self) -> set[str]:
        """The tables (and views) of the connection's schema, from the catalogue itself: cheaper per
        new connection than information_schema, which every run's open pays for."""
        rows = self.conn.execute(
            "SELECT relname FROM pg_catalog.pg_class WHERE relkind IN ('r', 'p', 'v', 'm', 'f')"
            " AND relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema())"
        ).fetchall()
        return {row[0] for row in rows}

    def _columns(self, table: str) -> set[str]:
        rows = self.conn.execute(
            "SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
            " WHERE c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped AND c.relnamespace ="
            " (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema())",
            (table,),
        ).fetchall()
        return {row[0] for row in rows}

    def _create_schema(self) -> None:
        """One process creates the tables; another one doing so at once waits, then finds them."""
        with self._write():
            self._execute("SELECT pg_advisory_xact_lock(?)", (_CREATE_LOCK,))
            super()._create_schema()

    def _error(self, err: BaseException) -> SecateursError:
        """A server error as one line: a read-only session or database, missing rights, a lost server."""
        state = getattr(err, "sqlstate", None) or ""
        found = _first_lines(err)
        if state == "25006":  # read_only_sql_transaction
            return StoreError(
                f"the results store is read-only ({found})",
                where=self.where,
                fix="connect as a user that may write to it, or use a writable server",
            )
        if state == "42501":  # insufficient_privilege
            return StoreError(
                f"the results store refused access ({found})",
                where=self.where,
                fix="grant this user CREATE and read/write on the database's schema, or use another database",
            )
        return StoreError(
            f"the results store failed ({found})",
            where=self.where,
            fix="check that the server runs and has space; the sweep resumes where it stopped",
        )

    # -- locks across hosts -------------------------------------------------------------------
    @contextmanager
    def exclusive(self, run: str) -> Iterator[bool]:
        """A session advisory lock on the run: held while it trains, freed when this process ends."""
        got = bool(self._read("SELECT pg_try_advisory_lock(?)", (_lock_key(run),))[0][0])
        try:
            yield got
        finally:
            if got:  # a session that is gone has freed it already: its error must not hide the run's
                with contextlib.suppress(SecateursError):
                    self._read("SELECT pg_advisory_unlock(?)", (_lock_key(run),))

    def held(self, run: str) -> bool | None:
        """Whether a session holds the run's advisory lock (some host is training it now)."""
        key = _lock_key(run)
        rows = self._read(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = ?::bigint::oid AND objid = ?::bigint::oid AND objsubid = 1",
            (key >> 32, key & 0xFFFFFFFF),
        )
        return bool(rows[0][0])


def _lock_key(run: str) -> int:
    """A run's advisory lock: 60 bits of a hash of its name (runs are named by hashes already)."""
    return int(hashlib.sha256(run.encode()).hexdigest()[:15], 16)
