"""The results store: a database of runs named by config hash, with resumable run directories.

`execute(recipe, root)` runs a recipe at most once to completion under a results root
(`results.db` + `runs/<hash>/`; `store="postgresql://..."` records it on a server instead);
`open_store` opens a store (a SQLite path or a PostgreSQL URL) as a `ResultsStore`, of which
`ResultsDB` is the SQLite kind; `run_hash` names a run.
"""

from secateurs.pipeline.hashing import canonical_json, recipe_config, run_hash
from secateurs.results.db import (
    DB_NAME,
    SCHEMA_VERSION,
    STATUSES,
    MetricRow,
    ResultsDB,
    ResultsStore,
    RunRecord,
)
from secateurs.results.runner import DEFAULT_ROOT, RunOutcome, db_path, execute, run_dir
from secateurs.results.store import open_store

__all__ = [
    "DB_NAME",
    "DEFAULT_ROOT",
    "SCHEMA_VERSION",
    "STATUSES",
    "MetricRow",
    "ResultsDB",
    "ResultsStore",
    "RunOutcome",
    "RunRecord",
    "canonical_json",
    "db_path",
    "execute",
    "open_store",
    "recipe_config",
    "run_dir",
    "run_hash",
]
