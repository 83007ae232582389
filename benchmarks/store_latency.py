"""Results store write latency, SQLite vs PostgreSQL, as ratios in one run (issue 22).

What a run costs the store, operation by operation, as `secateurs.results.runner.execute` does
them: open the store, add the run, claim it, write its metric events (a tiny run's: 12 training
events of 7 metrics and 2 evaluations of 11), mark it finished with its 3 files. SQLite is
`results.db` in WAL mode in a temporary directory; PostgreSQL is a throwaway local server
(tests/pg_server.py, Debian's initdb/pg_ctl) with its durable defaults (fsync and synchronous
commit on, as SQLite syncs its WAL at each commit), reached over a unix socket, or the server
`--store URL` names. Each round writes `runs` runs into each store, the stores interleaved so a
busy spell of the shared machine hits both alike; the figure per operation is the mean over a
round's runs, minimum over rounds.

    python benchmarks/store_latency.py            # 200 runs x 5 rounds
    python benchmarks/store_latency.py --quick    # 20 runs x 3 rounds
Writes benchmarks/results/store_latency{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secateurs.core.fileio import atomic_write_text
from secateurs.results.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import pg_server  # the tests' throwaway server, shared with .ci/run (imported after the path is set)

RESULTS = Path(__file__).parent / "results"
OPERATIONS = ("open", "add_runs", "claim", "add_metrics", "mark_finished")
TRAIN = {name: 0.5 for name in ("epoch", "lr", "step", "train_loss", "test_loss", "test_accuracy", "test_n")}
EVALUATE = {f"metric_{i}": 0.25 * i for i in range(11)}
FILES = {"model": "model.pt", "metrics": "metrics.json", "recipe": "recipe.yaml"}


def one_run(location: str, run: str) -> dict[str, float]:
    """Seconds of each operation for one run, in the order `execute` does them."""
    spent: dict[str, float] = dict.fromkeys(OPERATIONS, 0.0)

    def timed(name: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = call()
        spent[name] += time.perf_counter() - started
        return value

    db = timed("open", lambda: open_store(location))
    with db:
        timed("add_runs", lambda: db.add_runs([(run, "bench", {"seed": 0, "sparsity": 0.5})]))
        timed("claim", lambda: db.claim(run, version="bench", git_revision=None))
        for step in range(12):
            timed("add_metrics", lambda s=step: db.add_metrics(
                run, stage=1, kind="train", level=None, step=s, metrics=TRAIN))  # fmt: skip
        for stage in (3, 5):
            timed("add_metrics", lambda s=stage: db.add_metrics(
                run, stage=s, kind="evaluate", level=None, step=None, metrics=EVALUATE))  # fmt: skip
        timed(
            "mark_finished", lambda: db.mark_finished(run, {k: f"runs/{run}/{f}" for k, f in FILES.items()})
        )
    return spent


def measure(stores: dict[str, str], runs: int, rounds: int) -> dict[str, dict[str, float]]:
    """Milliseconds per run of each operation and in all, per store: round means, minimum over rounds."""
    best = {name: dict.fromkeys((*OPERATIONS, "per run"), float("inf")) for name in stores}
    for location in stores.values():  # warm-up: schema created, connections and caches primed
        one_run(location, uuid.uuid4().hex[:16])
    for _ in range(rounds):
        for name, location in stores.items():
            totals = dict.fromkeys(OPERATIONS, 0.0)
            for _ in range(runs):
                for op, seconds in one_run(location, uuid.uuid4().hex[:16]).items():
                    totals[op] += seconds
            means = {op: totals[op] / runs * 1000 for op in OPERATIONS}
            means["per run"] = sum(means.values())
            best[name] = {op: min(best[name][op], value) for op, value in means.items()}
    return best


def settings(stores: dict[str, str]) -> dict[str, str]:
    """How durable each store's commits are (what the latency pays for)."""
    import psycopg

    out = {}
    with open_store(stores["sqlite"]) as db:
        out["sqlite"] = (
            f"journal_mode={db.conn.execute('PRAGMA journal_mode').fetchone()[0]}, "
            f"synchronous={db.conn.execute('PRAGMA synchronous').fetchone()[0]} (2 = FULL)"
        )
    with psycopg.connect(stores["postgresql"]) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        fsync = conn.execute("SHOW fsync").fetchone()[0]
        commit = conn.execute("SHOW synchronous_commit").fetchone()[0]
    out["postgresql"] = f"PostgreSQL {version}, fsync={fsync}, synchronous_commit={commit}"
    return out


def write(results: dict[str, Any], quick: bool) -> None:
    stem = "store_latency" + ("_quick" if quick else "")
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    ms = results["ms"]
    lines = [
        "# Results store write latency: SQLite vs PostgreSQL",
        "",
        f"{results['machine']}. {results['runs']} runs per round, mean per run, minimum over "
        f"{results['rounds']} interleaved rounds. Load: {results['load']}.",
        "",
        f"- SQLite: {results['settings']['sqlite']}, on {results['sqlite_fs']}.",
        f"- PostgreSQL: {results['settings']['postgresql']}, {results['postgresql_where']}.",
        "",
        "| operation (per run) | SQLite ms | PostgreSQL ms | PostgreSQL / SQLite |",
        "|---|---:|---:|---:|",
    ]
    for op in (*OPERATIONS, "per run"):
        a, b = ms["sqlite"][op], ms["postgresql"][op]
        label = {"add_metrics": "add_metrics (14 events)", "per run": "**a whole run**"}.get(op, op)
        lines.append(f"| {label} | {a:.3f} | {b:.3f} | {b / a:.2f}x |")
    lines += ["", results["finding"]]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 runs x 3 rounds instead of 200 x 5")
    parser.add_argument("--store", help="a PostgreSQL URL to measure instead of a throwaway local server")
    parser.add_argument("--load", default="not stated", help="the machine's load, for the report")
    args = parser.parse_args()
    runs, rounds = (20, 3) if args.quick else (200, 5)
    from secateurs.results.netfs import filesystem_type

    with tempfile.TemporaryDirectory(prefix="store-latency-") as work:
        server_dir = Path(
            tempfile.mkdtemp(prefix="secateurs-pg-")
        )  # outside `work`: the server's user reaches it
        try:
            if args.store:
                url, where = args.store, "the server --store named"
            else:
                admin = pg_server.start(server_dir, durable=True)
                url, where = pg_server.fresh_database(admin), "a local server over a unix socket"
            stores = {"sqlite": str(Path(work) / "results.db"), "postgresql": url}
            ms = measure(stores, runs, rounds)
            found = settings(stores)
            fs = filesystem_type(work) or "an unknown filesystem"
        finally:
            if not args.store:
                pg_server.stop(server_dir)
    ratio = ms["postgresql"]["per run"] / ms["sqlite"]["per run"]
    slowest = max(OPERATIONS, key=lambda op: ms["postgresql"][op] / ms["sqlite"][op])
    finding = (
        f"A run's store writes take {ms['postgresql']['per run']:.1f} ms on PostgreSQL, "
        f"{ratio:.2f}x SQLite's {ms['sqlite']['per run']:.1f} ms; the largest ratio is {slowest} "
        f"({ms['postgresql'][slowest] / ms['sqlite'][slowest]:.2f}x: a new server session per run). "
        "A tenth of a second or two per run is noticeable for runs of a second, as the tests' tiny "
        "ones, and nothing beside a real run's training (minutes to hours)."
    )
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        finding += (
            f" The machine was overloaded (load average {load:.1f} on {os.cpu_count()} cores): take the "
            "ratios as rough, a rerun may move them by tens of percent."
        )
    import torch

    results = {
        "machine": f"{platform.machine()}, python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} cores",
        "runs": runs,
        "rounds": rounds,
        "load": f"{args.load}; 1-minute load average at the end {os.getloadavg()[0]:.2f}",
        "settings": found,
        "sqlite_fs": fs,
        "postgresql_where": where,
        "ms": {name: {op: round(v, 4) for op, v in values.items()} for name, values in ms.items()},
        "ratio_per_run": round(ratio, 3),
        "finding": finding,
    }
    write(results, args.quick)
    print(finding)


if __name__ == "__main__":
    main()
