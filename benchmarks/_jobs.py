"""Resumable, parallel benchmark jobs: finished jobs are kept in a JSON file and skipped on rerun."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secateurs.core.fileio import atomic_write_text
from secateurs.results.workers import run_in_workers

Job = dict[str, Any]


def benchmark_args(
    doc: str, quick_help: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The options every benchmark shares: --quick, --workers, --fresh (and a benchmark's own,
    added by `extra`)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--workers", type=int, default=2, help="parallel processes (one torch thread each)")
    parser.add_argument("--fresh", action="store_true", help="forget finished jobs and start over")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def load_done(store: Path, *, fresh: bool = False) -> dict[str, Any]:
    """Finished jobs kept in `store`; with `fresh`, forget them (the file is removed)."""
    if fresh:
        store.unlink(missing_ok=True)
    return json.loads(store.read_text()) if store.exists() else {}


def run_phase(
    jobs: list[Job],
    *,
    key: Callable[[Job], str],
    work: Callable[[Job], Any],
    store: Path,
    done: dict[str, Any],
    workers: int,
    describe: Callable[[Job, Any], str],
) -> None:
    """Run the jobs not yet in `done` on `workers` spawned processes (each stored as it finishes).

    After each job its result is written to `store` atomically, so a killed benchmark loses at
    most the jobs that were running and resumes with the rest. The processes are the sweep's
    (`secateurs.results.workers`): they exit when the benchmark does, however it stops (a killed
    benchmark used to leave its workers training on); a job whose worker dies (out of memory) is
    reported at the end and left for the rerun, the others go on.
    """
    pending = [j for j in jobs if key(j) not in done]
    if not pending:
        return
    finished: list[str] = []
    lost: list[str] = []

    def record(job: Job, result: Any) -> None:
        done[key(job)] = result
        atomic_write_text(store, json.dumps(done, indent=1))
        finished.append(key(job))
        print(f"[{len(finished)}/{len(pending)}] {key(job)}: {describe(job, result)}", flush=True)

    def worker_died(job: Job, why: str) -> None:
        lost.append(key(job))
        print(f"lost {key(job)}: {why}", flush=True)

    workers = min(workers, len(pending))
    run_in_workers(pending, work, workers, done=record, lost=worker_died, interrupted=lambda _job: None)
    if lost:
        raise SystemExit(
            f"{len(lost)} job(s) lost their worker process (killed, e.g. out of memory): {', '.join(lost)}; "
            f"the {len(done)} finished jobs are kept in {store}; run again (with fewer --workers) to resume"
        )
