"""Faults with real processes: two sweeps writing one database at once, and a sweep killed mid-run.

The children are real `python` processes running the `secateurs sweep` command. They import
torch before a start signal so that both really race for the same runs; a hook in the killed
child stops it at a known point (after a metric row of an unfinished stage was written) so
the kill lands where a resume has the most to get right.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from rich.console import Console
from tiny import tiny_recipe
from typer.testing import CliRunner

import secateurs.cli as cli
from secateurs.outputs import read_checkpoint
from secateurs.pipeline import STATE_FILE, MetricEvent, run_recipe
from secateurs.store import ResultsDB, run_dir
from secateurs.sweep import expand_sweep, load_sweep

SRC = Path(__file__).resolve().parents[1] / "src"
RECIPE: dict[str, Any] = tiny_recipe(
    {"train": {}},
    {"prune": {}},
    {"evaluate": {"label": "pruned"}},
    {"train": {"iterations": 4}},
    {"evaluate": {"label": "final"}},
    iterations=6,
)

# Imports torch and the sweep machinery, then waits for the start signal before running the CLI.
CHILD = """
import os, sys, time
from pathlib import Path
import torch
import secateurs.sweep, secateurs.store.runner as runner
from secateurs.cli import main

torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # torch's lazy imports, done now
pause_run, marker = os.environ.get("PAUSE_RUN"), Path(os.environ.get("PAUSE_MARKER", "-"))
write = runner._MetricWriter.__call__

def paused_write(self, event):
    write(self, event)
    if self.run == pause_run and event.stage == 4 and not marker.exists():
        marker.write_text(str(os.getpid()))  # stage 4's rows are written, its state is not saved
        time.sleep(600)

runner._MetricWriter.__call__ = paused_write
Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.005)
sys.argv = ["secateurs", "sweep", *sys.argv[3:]]
main()
"""


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(cli, "err_console", Console(width=250, stderr=True))


def write_sweep(folder: Path, **axes: Any) -> Path:
    (folder / "tiny.yaml").write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "faults", "recipes": ["tiny.yaml"], **axes}), encoding="utf-8")
    return path


def start_child(
    folder: Path, name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    ready, go = folder / f"{name}.ready", folder / "go"
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ready), str(go), *args],
        env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(path: Path, procs: list[subprocess.Popen[str]], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"child exited early ({proc.returncode}):\n{proc.communicate()[0]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.02)


def clean_rows(recipe: Any) -> list[tuple[Any, ...]]:
    events: list[MetricEvent] = []
    run_recipe(recipe, on_metrics=events.append)
    return [(e.stage, e.kind, e.level, e.step, k, v) for e in events for k, v in e.metrics.items()]


def stored_rows(db: ResultsDB, run: str) -> list[tuple[Any, ...]]:
    return [(r.stage, r.kind, r.level, r.step, r.name, r.value) for r in db.metrics(run)]


def test_two_processes_running_the_same_sweep_at_once_finish_every_run_exactly_once(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, sparsities=[0.25, 0.5, 0.75], seeds=[0, 1])
    root = tmp_path / "results"  # does not exist: both processes also race to create the database
    children = [start_child(tmp_path, name, str(sweep), "--root", str(root)) for name in ("a", "b")]
    for name in ("a", "b"):
        wait_for(tmp_path / f"{name}.ready", children)
    (tmp_path / "go").touch()
    outputs = [child.communicate(timeout=180)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs

    counts = []
    for output in outputs:
        match = re.search(r"sweep faults: (\d+) finished, (\d+) skipped, (\d+) failed", output)
        assert match is not None, output
        counts.append(tuple(int(g) for g in match.groups()))
    assert sum(c[0] for c in counts) == 6  # every run trained by exactly one of the two
    assert all(c[0] + c[1] == 6 and c[2] == 0 for c in counts)

    points = expand_sweep(load_sweep(sweep), tmp_path)
    with ResultsDB(root / "results.db") as db:
        records = db.list_runs()
        assert sorted(r.hash for r in records) == sorted(p.hash for p in points)
        assert {(r.status, r.attempts, r.error) for r in records} == {("finished", 1, None)}
        for point in points:
            assert stored_rows(db, point.hash) == clean_rows(point.recipe), point.description
            assert len(db.artifacts(point.hash)) == 3
    conn = sqlite3.connect(root / "results.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (6,)
    finally:
        conn.close()


def test_a_killed_sweep_restarts_keeping_finished_runs_and_resuming_the_interrupted_one(
    tmp_path: Path,
) -> None:
    sweep = write_sweep(tmp_path, seeds=[0, 1, 2])
    root = tmp_path / "results"
    first, target, last = expand_sweep(load_sweep(sweep), tmp_path)
    marker = tmp_path / "paused"
    child = start_child(
        tmp_path,
        "k",
        str(sweep),
        "--root",
        str(root),
        env={"PAUSE_RUN": target.hash, "PAUSE_MARKER": str(marker)},
    )
    wait_for(tmp_path / "k.ready", [child])
    (tmp_path / "go").touch()
    wait_for(marker, [child])
    with ResultsDB(root / "results.db") as db:
        before = {r.hash: r for r in db.list_runs()}
        assert (before[first.hash].status, before[first.hash].attempts) == ("finished", 1)
        assert (before[target.hash].status, before[target.hash].attempts) == ("running", 1)
        assert (before[last.hash].status, before[last.hash].attempts) == ("pending", 0)
        assert max(r[0] for r in stored_rows(db, target.hash)) == 4  # a row of the unfinished stage
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert (run_dir(root, target.hash) / STATE_FILE).is_file()

    result = CliRunner().invoke(cli.app, ["sweep", str(sweep), "--root", str(root)])  # the restart
    assert result.exit_code == 0, result.output
    assert "sweep faults: 2 finished, 1 skipped, 0 failed" in result.stdout

    with ResultsDB(root / "results.db") as db:
        after = {r.hash: r for r in db.list_runs()}
        assert len(after) == 3
        assert after[first.hash] == before[first.hash]  # kept as it was: not recomputed
        assert (after[target.hash].status, after[target.hash].attempts) == ("finished", 2)
        assert (after[last.hash].status, after[last.hash].attempts) == ("finished", 1)
        for point in (first, target, last):
            assert stored_rows(db, point.hash) == clean_rows(point.recipe), point.description

    clean = run_recipe(target.recipe)
    resumed = run_dir(root, target.hash)
    assert not (resumed / STATE_FILE).exists()
    state, masks, _ = read_checkpoint(resumed)
    assert masks is not None and masks.kept() == 184
    for key, value in clean.model.state_dict().items():
        assert torch.equal(state[key], value), key  # bit-identical to an uninterrupted run
    assert yaml.safe_load((resumed / "metrics.json").read_text()) == clean.records
