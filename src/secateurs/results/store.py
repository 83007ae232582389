"""Opening a results store: a SQLite file (the default) or a PostgreSQL server named by a URL.

`open_store` is what a user calls; the commands open a results root's store through
`secateurs.results.runner.store_at`, which adds the root that holds the run directories.
"""

from __future__ import annotations

import os
from pathlib import Path

from secateurs.results.db import DB_NAME, ResultsDB, ResultsStore

StoreLocation = str | os.PathLike[str]


def open_store(location: StoreLocation, *, create: bool = True, readonly: bool | None = None) -> ResultsStore:
    """The results store at `location`: `postgresql://user@host/db`, else a SQLite database file
    (a results root directory stands for its `results.db`).

    `create` makes the schema in a new store; `readonly` (default: `not create`) opens it for
    reading only. Use the store as a context manager.
    """
    from secateurs.results.postgres import PostgresStore, is_url

    if is_url(location):
        return PostgresStore(str(location), create=create, readonly=readonly)
    path = Path(location)
    return ResultsDB(path / DB_NAME if path.is_dir() else path, create=create, readonly=readonly)
