"""Resumable, parallel benchmark jobs: finished jobs are kept in a JSON file and skipped on rerun."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from secateurs.core.fileio import atomic_write_text

Job = dict[str, Any]


def benchmark_args(doc: str, quick_help: str) -> argparse.Namespace:
    """The options every benchmark shares: --quick, --workers, --fresh."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--workers", type=int, default=2, help="parallel processes (one torch thread each)")
    parser.add_argument("--fresh", action="store_true", help="forget finished jobs and start over")
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
    most the jobs that were running and resumes with the rest.
    """
    pending = [j for j in jobs if key(j) not in done]
    if not pending:
        return
    # an executor, not multiprocessing.Pool: a worker killed (out of memory) breaks it loudly,
    # where Pool would replace the worker and wait for the lost job forever
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(work, job): job for job in pending}
        try:
            for i, future in enumerate(as_completed(futures)):
                job, result = futures[future], future.result()
                done[key(job)] = result
                atomic_write_text(store, json.dumps(done, indent=1))
                print(f"[{i + 1}/{len(pending)}] {key(job)}: {describe(job, result)}", flush=True)
        except BrokenProcessPool:
            raise SystemExit(
                f"a worker process died (killed, e.g. out of memory) after {len(done)} finished jobs, "
                f"which are kept in {store}; run again with fewer --workers to resume"
            ) from None
