"""Faults with real processes: two sweeps writing one database at once, and a sweep killed mid-run.

The children are real `python` processes running the `secateurs sweep` command. In the race,
they import torch before a start signal so that both really race for the same runs. The killed
sweep runs with two worker processes; a hook in every process stops chosen runs at known points
(after a metric row of an unfinished stage was written) so the SIGKILL lands where a resume has
the most to get right, and logs which stages each process ran, so the restart can be seen to
resume rather than recompute.
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
from tiny import tiny_recipe

from secateurs.core.checkpoint import load_checkpoint
from secateurs.pipeline.outputs import read_checkpoint
from secateurs.pipeline.runner import STATE_FILE, MetricEvent, run_recipe
from secateurs.results import ResultsDB, run_dir
from secateurs.results.sweep import expand_sweep, load_sweep

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
import sys, time
from pathlib import Path
import torch
import secateurs.results.sweep, secateurs.results.runner
from secateurs.front.cli import main

torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # torch's lazy imports, done now
Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.005)
sys.argv = ["secateurs", "sweep", *sys.argv[3:]]
main()
"""


def write_sweep(folder: Path, **axes: Any) -> Path:
    (folder / "tiny.yaml").write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "faults", "recipes": ["tiny.yaml"], **axes}), encoding="utf-8")
    return path


def start_child(folder: Path, name: str, *args: str) -> subprocess.Popen[str]:
    ready, go = folder / f"{name}.ready", folder / "go"
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ready), str(go), *args],
        env={**os.environ, "PYTHONPATH": str(SRC)},
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


# A sweep's entry point as a script file: with --workers the runs go to spawned processes, which
# import this file as `__mp_main__`, so the hook below is installed in every worker too.
HOOKED_SWEEP = """
import os, sys, time
from pathlib import Path
import secateurs.results.runner as runner

pauses = dict(item.split(":") for item in os.environ.get("PAUSE_AT", "").split(",") if item)  # run:stage
markers, events = Path(os.environ["MARKERS"]), Path(os.environ["EVENTS"])
write = runner._MetricWriter.__call__

def hooked_write(self, event):
    write(self, event)
    with open(events / f"{os.getpid()}.log", "a") as log:  # the stages this process (re)ran
        log.write(f"{self.run} {event.stage}\\n")
    if pauses.get(self.run) == str(event.stage) and not (markers / self.run).exists():
        (markers / self.run).write_text(str(os.getpid()))  # rows written, the stage's state not saved
        time.sleep(600)

runner._MetricWriter.__call__ = hooked_write

if __name__ == "__main__":
    from secateurs.front.cli import main

    sys.argv = ["secateurs", "sweep", *sys.argv[1:]]
    main()
"""


def events_by_run(folder: Path) -> dict[str, list[int]]:
    """Run hash -> the stages whose metric rows were written, from every process's event log."""
    out: dict[str, list[int]] = {}
    for log in folder.glob("*.log"):
        for line in log.read_text().splitlines():
            run, stage = line.split()
            out.setdefault(run, []).append(int(stage))
    return out


def test_a_sweep_with_two_workers_killed_by_sigkill_restarts_keeping_finished_runs_and_resuming(
    tmp_path: Path,
) -> None:
    """kill -9 of the whole sweep (parent and both workers) with one run finished and two interrupted
    at different stages; the same command then finishes every run exactly once."""
    sweep = write_sweep(tmp_path, seeds=[0, 1, 2, 3, 4])
    root, script = tmp_path / "results", tmp_path / "hooked_sweep.py"
    script.write_text(HOOKED_SWEEP, encoding="utf-8")
    points = expand_sweep(load_sweep(sweep), tmp_path)
    p1, p2, p3, p4, p5 = points
    markers, events1, events2 = tmp_path / "markers", tmp_path / "events1", tmp_path / "events2"
    for folder in (markers, events1, events2):
        folder.mkdir()
    command = [sys.executable, str(script), str(sweep), "--root", str(root), "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "MARKERS": str(markers), "COLUMNS": "250"}
    # Runs are handed out in grid order: one worker stops in p1's stage 4; the other finishes p2,
    # then stops in p3's stage 3. p4 and p5 are never started.
    child = subprocess.Popen(
        command,
        env={**env, "EVENTS": str(events1), "PAUSE_AT": f"{p1.hash}:4,{p3.hash}:3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill reaches the workers as well
    )
    try:
        wait_for(markers / p1.hash, [child])
        wait_for(markers / p3.hash, [child])
        with ResultsDB(root / "results.db") as db:
            before = {r.hash: r for r in db.list_runs()}
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert {h: (r.status, r.attempts) for h, r in before.items()} == {
        p1.hash: ("running", 1), p2.hash: ("finished", 1), p3.hash: ("running", 1),
        p4.hash: ("pending", 0), p5.hash: ("pending", 0),
    }  # fmt: skip
    # The interrupted runs' last checkpoints: after stage 3 and after stage 2.
    assert load_checkpoint(run_dir(root, p1.hash) / STATE_FILE)["counter"] == 3
    assert load_checkpoint(run_dir(root, p3.hash) / STATE_FILE)["counter"] == 2
    finished_model = run_dir(root, p2.hash) / "model.pt"
    finished_stamp = finished_model.stat().st_mtime_ns

    restart = subprocess.run(
        command, env={**env, "EVENTS": str(events2)}, capture_output=True, text=True, timeout=180
    )
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert "sweep faults: 4 finished, 1 skipped, 0 failed" in restart.stdout

    with ResultsDB(root / "results.db") as db:
        after = {r.hash: r for r in db.list_runs()}
        assert sorted(after) == sorted(p.hash for p in points)  # no run added twice
        assert after[p2.hash] == before[p2.hash]  # the finished run is kept as it was
        assert {h: (r.status, r.attempts, r.error) for h, r in after.items()} == {
            p1.hash: ("finished", 2, None), p2.hash: ("finished", 1, None), p3.hash: ("finished", 2, None),
            p4.hash: ("finished", 1, None), p5.hash: ("finished", 1, None),
        }  # fmt: skip
        clean = {p.hash: clean_rows(p.recipe) for p in points}
        for point in points:  # every metric row once: none lost, none duplicated by the resume
            assert stored_rows(db, point.hash) == clean[point.hash], point.description
    assert finished_model.stat().st_mtime_ns == finished_stamp  # not re-run, not rewritten

    # What the restart actually ran: p1 from stage 4, p3 from stage 3, p4 and p5 whole, p2 nothing.
    stages = {h: sorted(set(s)) for h, s in events_by_run(events2).items()}
    all_stages = sorted({row[0] for row in clean[p4.hash]})
    assert stages == {
        p1.hash: [s for s in all_stages if s >= 4],
        p3.hash: [s for s in all_stages if s >= 3],
        p4.hash: all_stages,
        p5.hash: all_stages,
    }
    assert min(events_by_run(events1)[p1.hash]) == 1  # the first attempt had run the earlier stages

    for point in (p1, p3):
        resumed = run_dir(root, point.hash)
        assert not (resumed / STATE_FILE).exists()
        state, masks, _ = read_checkpoint(resumed)
        assert masks is not None and masks.kept() == 184
        uninterrupted = run_recipe(point.recipe)
        for key, value in uninterrupted.model.state_dict().items():
            assert torch.equal(state[key], value), key  # bit-identical to an uninterrupted run
        assert yaml.safe_load((resumed / "metrics.json").read_text()) == uninterrupted.records
