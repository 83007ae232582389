"""A throwaway PostgreSQL server for the tests, the store benchmark and CI (issue 22): no mocks.

`start(directory)` makes a cluster in `directory` (initdb) and starts it listening only on a
unix socket there (no TCP port to collide with); `stop(directory)` stops it. As root, the server
runs as the unprivileged user `nobody` (PostgreSQL refuses to run as root). The URL it returns
names the `postgres` database; `fresh_database` makes a database of its own for each test.

    python tests/pg_server.py start DIR   # prints the URL (.ci/run exports it)
    python tests/pg_server.py stop DIR

Only the standard library here, except `fresh_database`/`drop_database` (psycopg).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SERVER_USER = "nobody"
ENV = "SECATEURS_TEST_POSTGRES"
"""A PostgreSQL URL (of a database whose user may CREATE DATABASE) that tests use instead."""
MISSING = (
    "no PostgreSQL server for the store tests: set SECATEURS_TEST_POSTGRES=postgresql://USER@HOST/DB, "
    "or install Debian's postgresql (initdb, pg_ctl) so the tests start one"
)


def find_binary(name: str) -> str | None:
    """`initdb`/`pg_ctl` on PATH, else the newest Debian install (/usr/lib/postgresql/N/bin)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    candidates.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


def available() -> bool:
    return find_binary("initdb") is not None and find_binary("pg_ctl") is not None


def _as_server_user() -> dict[str, object]:
    """subprocess arguments that run a command as `nobody` when we are root (else as ourselves)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(SERVER_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _run(args: list[str], directory: Path) -> None:
    done = subprocess.run(
        args, cwd=directory, capture_output=True, text=True, check=False, **_as_server_user()
    )  # type: ignore[call-overload]
    if done.returncode != 0:
        log = directory / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}")


def url_of(directory: Path, database: str = "postgres") -> str:
    return f"postgresql://postgres@/{database}?host={directory}"


def start(directory: str | Path, *, durable: bool = False) -> str:
    """Make and start a cluster in `directory` (created, owned by the server's user); its URL.

    `durable` keeps PostgreSQL's defaults (fsync on every commit), as a benchmark needs;
    the tests turn fsync off, being throwaway.
    """
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError(MISSING)
    _run([initdb, "-D", str(directory / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
          "--no-sync", "--locale=C"], directory)  # fmt: skip
    settings = [f"-c listen_addresses='' -c unix_socket_directories='{directory}'", "-c max_connections=200"]
    if not durable:
        settings.append("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    _run([pg_ctl, "-D", str(directory / "data"), "-l", str(directory / "server.log"), "-w", "-t", "60",
          "-o", " ".join(settings), "start"], directory)  # fmt: skip
    return url_of(directory)


def stop(directory: str | Path) -> None:
    """Stop the cluster in `directory` (fast: its sessions are cut) and remove the directory."""
    directory = Path(directory).absolute()
    pg_ctl = find_binary("pg_ctl")
    if pg_ctl is not None and (directory / "data" / "postmaster.pid").exists():
        _run([pg_ctl, "-D", str(directory / "data"), "-m", "immediate", "-w", "stop"], directory)
    shutil.rmtree(directory, ignore_errors=True)


def with_database(url: str, database: str) -> str:
    """The same server and user, another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def fresh_database(admin_url: str) -> str:
    """CREATE DATABASE with a new name on the server of `admin_url`; the new database's URL."""
    import psycopg

    name = f"secateurs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    import psycopg

    name = urlsplit(url).path.strip("/")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    command, where = sys.argv[1:3]
    if command == "start":
        print(start(where))
    elif command == "stop":
        stop(where)
    else:
        raise SystemExit(f"usage: {sys.argv[0]} start|stop DIR")
