"""The results store: a SQLite database of runs named by config hash, with resumable run directories.

`execute(recipe, root)` runs a recipe at most once to completion under a results root
(`results.db` + `runs/<hash>/`); `ResultsDB` reads and writes the database; `run_hash` names a run.
"""

from secateurs.pipeline.hashing import canonical_json, recipe_config, run_hash
from secateurs.results.db import DB_NAME, SCHEMA_VERSION, STATUSES, MetricRow, ResultsDB, RunRecord
from secateurs.results.runner import DEFAULT_ROOT, RunOutcome, db_path, execute, run_dir

__all__ = [
    "DB_NAME",
    "DEFAULT_ROOT",
    "SCHEMA_VERSION",
    "STATUSES",
    "MetricRow",
    "ResultsDB",
    "RunOutcome",
    "RunRecord",
    "canonical_json",
    "db_path",
    "execute",
    "recipe_config",
    "run_dir",
    "run_hash",
]
