"""Run one recipe through the results store: at most once to completion, resumable after a crash.

A run lives in `ROOT/runs/<hash>/` and in one row of `ROOT/results.db` (or of the server store
that `store` names: `postgresql://...`). `execute` skips a run the database calls finished,
takes a per-run lock (the run directory's, and a server store's across hosts) so that two
processes never train the same run at once, and hands the pipeline the run directory as its
working directory: the pipeline saves its state after every stage, so a killed run continues
where it stopped. Metrics go to the database as they are produced; the final files are written
atomically before the row says `finished`, so a finished run always has them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import secateurs
from secateurs.core.checkpoint import save_checkpoint
from secateurs.core.errors import CheckpointError, ConfigError
from secateurs.core.fileio import atomic_write_text
from secateurs.pipeline.hashing import recipe_config, run_hash
from secateurs.pipeline.outputs import CHECKPOINT_NAME, checkpoint_payload
from secateurs.pipeline.recipe import Recipe, recipe_to_raw
from secateurs.pipeline.runner import STATE_FILE, MetricEvent, Pipeline, RunResult
from secateurs.results.db import DB_NAME, ResultsDB, ResultsStore
from secateurs.results.store import open_store

try:  # POSIX; elsewhere runs are not locked against a second process
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("secateurs-results")
RUNS_DIR = "runs"
LOCK_FILE = ".lock"
FINISHED, ALREADY_FINISHED, BUSY, FAILED = "finished", "already finished", "busy", "failed"
INTERRUPTED = "interrupted"
"""An outcome, not a database status: the row stays `running`, and the next call resumes the run."""


@dataclass
class RunOutcome:
    """What `execute` did with one run (a sweep also records failures as outcomes)."""

    hash: str
    name: str
    status: str  # finished | already finished | busy (another process runs it) | failed | interrupted
    attempts: int = 0
    resumed_from: int = 0
    final: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def message(self) -> str:
        detail = {
            FINISHED: f"finished (attempt {self.attempts}"
            + (f", resumed after stage {self.resumed_from})" if self.resumed_from else ")"),
            ALREADY_FINISHED: "already finished: nothing recomputed",
            BUSY: "skipped: another process is running it",
            FAILED: f"failed: {self.error}",
            INTERRUPTED: "interrupted: the next run of the same command resumes it after its last stage",
        }[self.status]
        return f"run {self.hash} ({self.name}): {detail}"


def db_path(root: str | os.PathLike[str]) -> Path:
    return Path(root) / DB_NAME


def run_dir(root: str | os.PathLike[str], run: str) -> Path:
    return Path(root) / RUNS_DIR / run


def prepare_root(root: str | os.PathLike[str]) -> Path:
    """Create the results root (and check it is a directory) before the database is opened."""
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"results root {path} exists and is not a directory", fix="choose another --root")
    try:
        path.mkdir(parents=True, exist_ok=True)  # runs/ comes with the first run, after the db checks
    except OSError as err:
        raise ConfigError(
            f"cannot create the results root {path} ({err})", fix="choose another --root"
        ) from None
    return path


def store_at(root: str | os.PathLike[str], store: str | None = None, *, create: bool = True) -> ResultsStore:
    """The store of the results root `root`: `root/results.db`, or the server store `store` (a URL)
    whose artifact paths are relative to `root`.

    With `create` the root is created, after a server store has been checked (URL, driver,
    connection, schema), so a bad `store` writes nothing at all.
    """
    if store is None:
        if create:
            prepare_root(root)
        return ResultsDB(db_path(root), create=create)
    opened = open_store(store, create=create)
    try:
        if create:
            prepare_root(root)
    except BaseException:
        opened.close()
        raise
    opened.root = Path(root)
    return opened


def error_text(err: BaseException) -> str:
    """One line for the `error` column: the exception type and the first line of its message."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


@functools.cache
def git_revision() -> str | None:
    """`git rev-parse HEAD` in the working directory, or None outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    revision = done.stdout.strip()
    return revision if done.returncode == 0 and revision else None


@contextmanager
def run_lock(directory: Path) -> Iterator[bool]:
    """Hold the run's lock if no other process does (yields False then). The OS frees it on kill."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
        yield True
    finally:
        os.close(fd)


def held_by_a_process(directory: Path) -> bool | None:
    """Whether some process holds the run's lock now (None where locks are unknown: no flock, or
    the lock file cannot be opened). A run the store calls running that nobody holds was
    interrupted (Ctrl-C, a killed worker); the next sweep resumes it."""
    if fcntl is None:
        return None
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False  # never locked: no process got as far as training it
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # closing the descriptor drops a lock taken just now
    return False


class _MetricWriter:
    """Writes each metric event as rows, first dropping rows an interrupted attempt left behind."""

    def __init__(self, db: ResultsStore, run: str) -> None:
        self.db, self.run = db, run

    def clear_after(self, stage: int) -> None:
        """Stages after `stage` will run (again): their old rows would be duplicates."""
        dropped = self.db.delete_metrics_after(self.run, stage)
        if dropped:
            log.info("run %s: dropped %d metric rows of unfinished stages", self.run, dropped)

    def __call__(self, event: MetricEvent) -> None:
        self.db.add_metrics(
            self.run, stage=event.stage, kind=event.kind, level=event.level, step=event.step,
            metrics=event.metrics, control=event.control,
        )  # fmt: skip


def write_final_files(result: RunResult, directory: Path) -> dict[str, str]:
    """model.pt, metrics.json and recipe.yaml, each written atomically; returns kind -> file name."""
    files = {"model": CHECKPOINT_NAME, "metrics": "metrics.json", "recipe": "recipe.yaml"}
    save_checkpoint(directory / files["model"], checkpoint_payload(result))
    try:
        atomic_write_text(directory / files["metrics"], json.dumps(result.records, indent=2))
        atomic_write_text(
            directory / files["recipe"], yaml.safe_dump(recipe_to_raw(result.recipe), sort_keys=False)
        )
    except OSError as err:
        raise CheckpointError(
            f"could not write the results of run {directory.name} ({err})",
            where=str(directory),
            fix="check free space and permissions",
        ) from None
    return files


def execute(
    recipe: Recipe,
    root: str | os.PathLike[str] = DEFAULT_ROOT,
    *,
    progress: bool = False,
    name: str | None = None,
    store: str | None = None,
) -> RunOutcome:
    """Run `recipe` into the store under `root` unless it is finished or running elsewhere.

    `store` is a server store's URL (`postgresql://user@host/db`) to record the run in instead of
    `root/results.db`; the run directory is under `root` either way.

    A failure is recorded (status failed, one-line error) and re-raised for the caller to
    decide; a KeyboardInterrupt leaves the run `running`, and a later call resumes it. So does
    an error raised after a Ctrl-C (an import it cut short, a helper process it killed): that
    is the interrupt's doing, not the run's, and it is raised as a KeyboardInterrupt.
    """
    run = run_hash(recipe)
    name = name or recipe.name
    with store_at(root, store) as db:
        directory = run_dir(root, run)
        db.add_runs([(run, name, recipe_config(recipe))])
        if _is_finished(db, run):
            return _already_finished(db, run, name)
        with run_lock(directory) as locked, db.exclusive(run) as mine:
            if not (locked and mine):
                return RunOutcome(run, name, BUSY, attempts=_attempts(db, run))
            attempts = db.claim(run, version=secateurs.__version__, git_revision=git_revision())
            if attempts is None:  # finished by another process between the check and the lock
                return _already_finished(db, run, name)
            return _attempt(db, recipe, run, name, directory, attempts, progress)


def _attempt(
    db: ResultsStore, recipe: Recipe, run: str, name: str, directory: Path, attempts: int, progress: bool
) -> RunOutcome:
    """One claimed attempt: run (or resume) the pipeline, write the files, mark the row."""
    writer = _MetricWriter(db, run)
    with interrupts_seen() as interrupted:
        try:
            pipeline = Pipeline(recipe, progress=progress, workdir=directory, on_metrics=writer)
            writer.clear_after(pipeline.resumed_from)
            if pipeline.resumed_from:
                log.info("run %s: resuming after stage %d", run, pipeline.resumed_from)
            result = pipeline.run()
            files = write_final_files(result, directory)
            db.mark_finished(run, {kind: f"{RUNS_DIR}/{run}/{file}" for kind, file in files.items()})
        except Exception as err:
            if interrupted():  # the row stays `running`: resumable, as after the interrupt itself
                raise KeyboardInterrupt from err
            _record_failure(db, run, err)
            raise
    (directory / STATE_FILE).unlink(missing_ok=True)  # model.pt now holds the result
    return RunOutcome(
        run, name, FINISHED, attempts=attempts, resumed_from=pipeline.resumed_from, final=dict(result.final)
    )


@contextmanager
def interrupts_seen() -> Iterator[Callable[[], bool]]:
    """Yields a test of whether a SIGINT raised KeyboardInterrupt in this process since the block began.

    An interrupt does not always arrive as a KeyboardInterrupt: caught and replaced (a DataLoader
    whose workers the same Ctrl-C killed), or leaving a module half imported for the next
    import to trip over. Knowing that one came tells such an error from a run's own failure.
    The SIGINT handler in place is wrapped for the block (only in the main thread, where
    handlers run, and only a Python handler: an ignored SIGINT stays ignored).
    """
    seen = False
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield lambda: seen
        return

    def handler(signum: int, frame: Any) -> Any:
        nonlocal seen
        try:
            return previous(signum, frame)
        except KeyboardInterrupt:
            seen = True
            raise

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _record_failure(db: ResultsStore, run: str, err: Exception) -> None:
    try:
        db.mark_failed(run, error_text(err))
    except Exception as db_err:  # the original error matters more; keep it
        log.error("run %s: could not record its failure (%s)", run, db_err)


def _is_finished(db: ResultsStore, run: str) -> bool:
    record = db.get_run(run)
    return record is not None and record.status == "finished"


def _already_finished(db: ResultsStore, run: str, name: str) -> RunOutcome:
    final = db.final_metrics(run)
    return RunOutcome(run, name, ALREADY_FINISHED, attempts=_attempts(db, run), final=dict(final))


def _attempts(db: ResultsStore, run: str) -> int:
    record = db.get_run(run)
    return record.attempts if record is not None else 0
