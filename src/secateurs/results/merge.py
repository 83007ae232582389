"""`secateurs merge OUT ROOT...`: combine per-host results roots into one (issue 22).

Where there is no server store, each host of a cluster sweeps into a root on its own disk (a
SQLite store must not be shared between hosts, see `netfs`); merging their roots afterwards
gives the one store that `runs`, `export` and `report` read. Every run keeps its row as it was
recorded (status, attempts, times), its metric rows in order, its artifacts and its run
directory.

A run found in several roots is one run (the hash names its config): a finished copy wins over
pending, failed or running ones; copies that are finished in two roots must agree (the same
config and the same metric rows, bit for bit), else the merge is refused naming the run and
the roots. Among unfinished copies the most advanced wins (running, whose saved state resumes,
then failed, then pending; then more attempts). The result is written to a temporary directory
beside OUT and renamed into place only when complete: a refused or failed merge leaves nothing.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from secateurs.core.errors import ConfigError
from secateurs.results.db import DB_NAME, MetricRow, ResultsDB, RunRecord
from secateurs.results.runner import LOCK_FILE, RUNS_DIR, db_path, run_dir

_RANK = {"finished": 3, "running": 2, "failed": 1, "pending": 0}


@dataclass(frozen=True)
class _Copy:
    """One root's copy of a run."""

    root: Path
    record: RunRecord
    metrics: list[MetricRow]
    artifacts: dict[str, str]

    def rank(self) -> tuple[int, int]:
        return _RANK[self.record.status], self.record.attempts


@dataclass
class MergeSummary:
    """What `merge_roots` wrote: how many runs, and how many came from each root."""

    out: Path
    runs: int = 0
    duplicates: int = 0  # runs present in more than one root
    taken: dict[str, int] = field(default_factory=dict)  # root -> runs whose kept copy is its

    def line(self) -> str:
        sources = ", ".join(f"{n} from {root}" for root, n in self.taken.items())
        return f"{self.runs} runs merged into {self.out} ({sources}; {self.duplicates} in several roots)"


def _check_paths(out: Path, roots: list[Path]) -> None:
    if not roots:
        raise ConfigError(
            "nothing to merge", fix="name the results roots to merge: secateurs merge OUT ROOT..."
        )
    seen: dict[Path, Path] = {}
    for root in roots:
        if not db_path(root).is_file():
            raise ConfigError(
                f"no results database at {db_path(root)}",
                fix="name results roots (directories holding results.db and runs/)",
            )
        resolved = root.resolve()
        if resolved in seen:
            raise ConfigError(f"{root} is named twice (as {seen[resolved]} too)", fix="name each root once")
        seen[resolved] = root
    target = out.resolve()
    for resolved, root in seen.items():
        if target == resolved or resolved in target.parents or target in resolved.parents:
            raise ConfigError(f"OUT {out} overlaps the root {root}", fix="merge into a new directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists", fix="merge into a new (or empty) directory")
    if not out.parent.is_dir():
        raise ConfigError(
            f"the directory {out.parent} does not exist", fix="create it, or choose another OUT"
        )


def _read(root: Path) -> list[_Copy]:
    with ResultsDB(db_path(root), create=False) as db:
        return [_Copy(root, r, db.metrics(r.hash), db.artifacts(r.hash)) for r in db.list_runs()]


def _first_difference(a: _Copy, b: _Copy) -> str:
    if a.record.config != b.record.config:
        return "different configs"
    for x, y in zip(a.metrics, b.metrics, strict=False):
        if x != y:
            return (
                f"different metrics: stage {x.stage} {x.kind} {x.name} {x.value!r} in {a.root}"
                f" vs stage {y.stage} {y.kind} {y.name} {y.value!r} in {b.root}"
            )
    return f"different metrics: {len(a.metrics)} rows in {a.root} vs {len(b.metrics)} in {b.root}"


def _choose(run: str, copies: list[_Copy]) -> _Copy:
    """The copy to keep; a ConfigError when two copies disagree on what the run is or produced."""
    best = max(copies, key=_Copy.rank)  # max keeps the first of equals: the earlier root
    for other in copies:
        agrees = other.record.config == best.record.config and (
            best.record.status != "finished"
            or other.record.status != "finished"
            or other.metrics == best.metrics
        )
        if not agrees:
            why = _first_difference(best, other)
            raise ConfigError(
                f"run {run} conflicts between {best.root} and {other.root} ({why})",
                fix=f"keep one copy: remove run {run} from one root (or leave that root out), then merge",
            )
    if best.record.status == "finished":
        for kind, path in best.artifacts.items():
            if not (best.root / path).is_file():
                raise ConfigError(
                    f"run {run} is finished in {best.root}, but its {kind} file {path} is missing",
                    fix="rerun the sweep on that root to restore it, or leave that root out",
                )
    return best


def merge_roots(out: str | os.PathLike[str], roots: list[str | os.PathLike[str]]) -> MergeSummary:
    """Merge the results roots `roots` into the new root `out` (see the module's docstring)."""
    target, sources = Path(out), [Path(r) for r in roots]
    _check_paths(target, sources)
    by_run: dict[str, list[_Copy]] = {}
    for root in sources:
        for copy in _read(root):
            by_run.setdefault(copy.record.hash, []).append(copy)
    kept = [_choose(run, copies) for run, copies in by_run.items()]
    kept.sort(key=lambda c: (c.record.created, c.record.hash))
    summary = MergeSummary(target, runs=len(kept), duplicates=sum(len(c) > 1 for c in by_run.values()))
    summary.taken = {str(root): sum(c.root == root for c in kept) for root in sources}
    staging = target.parent / f".{target.name}.merging-{os.getpid()}"
    try:
        staging.mkdir()
        with ResultsDB(staging / DB_NAME) as db:
            for copy in kept:
                db.put_run(copy.record, copy.metrics, copy.artifacts)
        for copy in kept:
            source = run_dir(copy.root, copy.record.hash)
            if source.is_dir():
                shutil.copytree(
                    source, run_dir(staging, copy.record.hash), ignore=shutil.ignore_patterns(LOCK_FILE)
                )
        (staging / RUNS_DIR).mkdir(exist_ok=True)
        os.replace(staging, target)  # an empty OUT is replaced; on one filesystem, all at once
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(
            f"cannot write the merged root {target} ({err})", fix="check free space and permissions"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary
