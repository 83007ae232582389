"""A sweep's processes and signals (issue 19, failures 4 and 8), with real processes.

The children are `python` processes running the `secateurs` command through a script that adds a
hook to every process (spawned workers import it as `__mp_main__`): chosen runs stop at their
first metric row inside the import of a small package, `trap`, whose `__init__` sleeps there.
An interrupt cut into that import leaves `trap.sub` bound to a half-made `trap`, as a Ctrl-C
did to matplotlib: any later run in the same process then fails with "module 'trap' has no
attribute 'get_data_path'".

- SIGKILL of the sweep's parent alone: its workers (and every other process it started) are
  gone within seconds, on Linux by the parent-death signal and also by the watch thread alone
  (what macOS has); the same command then finishes every run exactly once.
- SIGINT to the process group (a Ctrl-C at the terminal), with 2 workers or 1, and to
  `secateurs run`: exit code 130, one line saying so and how to resume; the runs in progress stay
  `running` (what the next sweep resumes), none is marked failed, not even when the interrupt
  came back as another exception.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny import tiny_recipe

from secateurs.results import ResultsDB
from secateurs.results.db import StoreError
from secateurs.results.sweep import SweepPoint, expand_sweep, load_sweep
from secateurs.results.workers import run_in_workers

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists() or not hasattr(signal, "SIGKILL"),
    reason="finds processes through /proc and signals them (POSIX)",
)

SRC = Path(__file__).resolve().parents[1] / "src"

HOOKED = """
import os, runpy, signal, sys
from pathlib import Path

# Ctrl-C as at a terminal, whatever the test runner's own state: a shell starts a background job
# (`.ci/run &`) with SIGINT ignored, and an ignored SIGINT is inherited and stays ignored (by design:
# the workers keep it so), which would leave nothing for the tests' SIGINT to interrupt.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
from secateurs.pipeline.hashing import run_hash
from secateurs.pipeline.runner import Pipeline

if os.environ.get("NO_PDEATHSIG"):  # as on macOS: only the watch thread sees the parent die
    import secateurs.results.workers as workers
    workers._set_parent_death_signal = lambda: None
pauses = set(os.environ.get("PAUSE", "").split(","))  # runs that stop at their first metric row
markers = Path(os.environ["MARKERS"])
publish = Pipeline._publish

def hooked_publish(self, *args, **kwargs):
    publish(self, *args, **kwargs)
    run = run_hash(self.recipe)
    if run in pauses and not (markers / run).exists():
        (markers / run).write_text(str(os.getpid()))
        os.environ["TRAP_PAUSE"] = "1"  # the first import of trap in this process sleeps
    try:
        import trap
    except KeyboardInterrupt:
        if os.environ.get("CONVERT"):  # as a DataLoader reports workers the same Ctrl-C killed
            raise RuntimeError("DataLoader worker (pid 1) exited unexpectedly") from None
        raise
    trap.sub.use()

Pipeline._publish = hooked_publish

if __name__ == "__main__":
    runpy.run_module("secateurs", run_name="__main__")  # this file stays workers' __mp_main__
"""
TRAP_INIT = """
import os, time
from trap import sub
if os.environ.pop("TRAP_PAUSE", None):
    time.sleep(600)
def get_data_path():
    return "data"
"""
TRAP_SUB = """
import trap
def use():
    return trap.get_data_path()
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The recipe, a 4-run sweep of it, the hook script and the trap package."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe()), encoding="utf-8")
    sweep = {"name": "signals", "recipes": ["tiny.yaml"], "seeds": [0, 1, 2, 3]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep), encoding="utf-8")
    (tmp_path / "hooked.py").write_text(HOOKED, encoding="utf-8")
    (tmp_path / "trap").mkdir()
    (tmp_path / "trap" / "__init__.py").write_text(TRAP_INIT, encoding="utf-8")
    (tmp_path / "trap" / "sub.py").write_text(TRAP_SUB, encoding="utf-8")
    (tmp_path / "markers").mkdir()
    return tmp_path


def points(folder: Path) -> list[SweepPoint]:
    return expand_sweep(load_sweep(folder / "sweep.yaml"), folder)


def start(folder: Path, *args: str, pause: list[SweepPoint], **env: str) -> subprocess.Popen[str]:
    """`secateurs ARGS` through the hook, in its own process group, stopping the `pause` runs."""
    return subprocess.Popen(
        [sys.executable, str(folder / "hooked.py"), *args],
        cwd=folder,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SRC), str(folder)]),
            "MARKERS": str(folder / "markers"),
            "PAUSE": ",".join(p.hash for p in pause),
            "COLUMNS": "250",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def sweep_args(folder: Path, workers: int) -> list[str]:
    return ["sweep", "sweep.yaml", "--root", str(folder / "results"), "--workers", str(workers)]


def wait_for_pauses(folder: Path, child: subprocess.Popen[str], runs: list[SweepPoint]) -> list[int]:
    """The pids of the processes that stopped in `runs`, once every one has."""
    deadline = time.monotonic() + 180
    markers = [folder / "markers" / p.hash for p in runs]
    while not all(m.exists() for m in markers):
        if child.poll() is not None:
            out, err = child.communicate()
            pytest.fail(f"the command exited early ({child.returncode}):\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail("the runs did not reach their pause")
        time.sleep(0.05)
    time.sleep(0.3)  # from the marker into the sleep of the import
    return [int(m.read_text()) for m in markers]


def stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) from /proc, or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text[text.rindex(")") + 2 :].split()[:2]  # the name in (...) may hold spaces
    return state, int(ppid)


def descendants(root: int) -> set[int]:
    """Every live process below `root`."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := stat(int(entry.name))) is not None:
            parents.setdefault(info[1], []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """The pids still running (a zombie has exited; only its parent has not collected it)."""
    return {pid for pid in pids if (info := stat(pid)) is not None and info[0] != "Z"}


def assert_gone_within(pids: set[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pids), f"still running after {seconds} s: {sorted(alive(pids))}"


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[str]]]:
    """Commands started by a test: their process groups are killed whatever the test did."""
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        with contextlib.suppress(OSError):  # the group has already gone
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate(timeout=60)


def statuses(folder: Path) -> dict[str, tuple[str, int, str | None]]:
    with ResultsDB(folder / "results" / "results.db") as db:
        return {r.hash: (r.status, r.attempts, r.error) for r in db.list_runs()}


def resume_finishes_every_run_once(folder: Path, interrupted: list[SweepPoint]) -> None:
    """The same command, unhooked, finishes each run once: the interrupted ones on a second attempt."""
    done = start(folder, *sweep_args(folder, 2), pause=[])
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, out + err
    assert "4 finished, 0 skipped, 0 failed" in out, out
    everything = points(folder)
    assert statuses(folder) == {p.hash: ("finished", 2 if p in interrupted else 1, None) for p in everything}
    with ResultsDB(folder / "results" / "results.db") as db:  # every metric row once
        shapes = [
            [(m.stage, m.kind, m.level, m.step, m.name) for m in db.metrics(p.hash)] for p in everything
        ]
    assert shapes[0] and all(shape == shapes[0] for shape in shapes)


# -- failure 4: workers die with their parent -------------------------------------------------
@pytest.mark.parametrize("death_signal", [True, False], ids=["prctl", "watch-thread-only"])
def test_the_workers_of_a_sweep_whose_parent_is_killed_exit_within_seconds_and_it_resumes(
    folder: Path, reaper: list[subprocess.Popen[str]], death_signal: bool
) -> None:
    p1, p2, _, _ = points(folder)
    env = {} if death_signal else {"NO_PDEATHSIG": "1"}
    child = start(folder, *sweep_args(folder, 2), pause=[p1, p2], **env)
    reaper.append(child)
    paused = wait_for_pauses(folder, child, [p1, p2])
    below = descendants(child.pid)
    assert set(paused) <= below and len(set(paused)) == 2  # the two workers, each in its run
    os.kill(child.pid, signal.SIGKILL)  # the parent only: nothing tells the workers
    child.wait(timeout=60)  # (its output pipes stay open while any worker lives)
    assert_gone_within(below, 5)
    state = statuses(folder)  # the runs in progress are resumable, the others untouched
    assert {h: s[:2] for h, s in state.items()} == {
        p.hash: ("running", 1) if p in (p1, p2) else ("pending", 0) for p in points(folder)
    }
    if death_signal:
        resume_finishes_every_run_once(folder, [p1, p2])


# -- failure 8: Ctrl-C interrupts runs, it does not fail them ---------------------------------
def assert_interrupted(child: subprocess.Popen[str], out: str, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert child.returncode == 130, out + err
    assert len(lines) == 1, err  # no traceback from any process
    assert "interrupted" in lines[0] and "resume" in lines[0], lines[0]


def test_ctrl_c_in_a_two_worker_sweep_leaves_its_runs_resumable_and_none_failed(
    folder: Path, reaper: list[subprocess.Popen[str]]
) -> None:
    """Both workers are cut off inside an import; neither may run anything after that."""
    p1, p2, _, _ = points(folder)
    child = start(folder, *sweep_args(folder, 2), pause=[p1, p2])
    reaper.append(child)
    wait_for_pauses(folder, child, [p1, p2])
    below = descendants(child.pid)
    os.killpg(child.pid, signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert_interrupted(child, out, err)
    assert_gone_within(below, 5)
    assert statuses(folder) == {
        p.hash: ("running", 1, None) if p in (p1, p2) else ("pending", 0, None) for p in points(folder)
    }
    resume_finishes_every_run_once(folder, [p1, p2])


def test_ctrl_c_in_a_one_process_sweep_is_not_a_failure_even_when_it_surfaces_as_another_error(
    folder: Path, reaper: list[subprocess.Popen[str]]
) -> None:
    p1 = points(folder)[0]
    child = start(folder, *sweep_args(folder, 1), pause=[p1], CONVERT="1")
    reaper.append(child)
    wait_for_pauses(folder, child, [p1])
    os.killpg(child.pid, signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert_interrupted(child, out, err)
    assert statuses(folder) == {
        p.hash: ("running", 1, None) if p == p1 else ("pending", 0, None) for p in points(folder)
    }


def test_ctrl_c_in_secateurs_run_exits_130_with_one_line(
    folder: Path, reaper: list[subprocess.Popen[str]]
) -> None:
    from secateurs.pipeline.outputs import CHECKPOINT_NAME
    from secateurs.pipeline.recipe import load_recipe
    from secateurs.results import run_hash

    # `run` has no store; the hook names a run by its recipe's hash all the same
    recipe = load_recipe(folder / "tiny.yaml")
    pause: Any = type("Point", (), {"hash": run_hash(recipe)})
    out_dir = folder / "out"
    child = start(folder, "run", "tiny.yaml", "--out", str(out_dir), "--no-progress", pause=[pause])
    reaper.append(child)
    wait_for_pauses(folder, child, [pause])
    os.killpg(child.pid, signal.SIGINT)
    out, err = child.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert child.returncode == 130, out + err
    assert len(lines) == 1 and "interrupted" in lines[0], err
    assert not (out_dir / CHECKPOINT_NAME).exists()  # no result: the run did not finish


# -- the worker pool on its own ---------------------------------------------------------------
def job(task: str) -> str:
    """A task for `run_in_workers` (spawned workers import this module, as the pool's sys.path holds it)."""
    if task == "die":
        os._exit(9)
    if task == "store":
        raise StoreError("the store broke")
    return task.upper()


def test_a_worker_that_dies_loses_its_task_only_and_a_fresh_one_takes_the_rest() -> None:
    done: list[tuple[str, str]] = []
    lost: list[tuple[str, str]] = []
    run_in_workers(
        ["a", "die", "b", "c"], job, 2,
        done=lambda t, r: done.append((t, r)), lost=lambda t, why: lost.append((t, why)),
        interrupted=lambda t: pytest.fail(f"{t} interrupted"),
    )  # fmt: skip
    assert sorted(done) == [("a", "A"), ("b", "B"), ("c", "C")]
    assert lost == [("die", "a worker process died (exit code 9)")]
    assert multiprocessing.active_children() == []


def test_an_error_a_task_raises_is_raised_once_every_worker_has_exited() -> None:
    with pytest.raises(StoreError, match="the store broke"):
        run_in_workers(
            ["store", "a"], job, 2,
            done=lambda t, r: None, lost=lambda t, why: pytest.fail(why), interrupted=lambda t: None,
        )  # fmt: skip
    assert multiprocessing.active_children() == []


def test_runs_lists_a_running_run_that_no_process_holds_as_interrupted(tmp_path: Path) -> None:
    """The store keeps an interrupted run 'running' (a sweep resumes it); `runs` tells it apart from a
    run some process is training now by the run's lock."""
    import json as json_module

    from typer.testing import CliRunner

    from secateurs.front.cli import app
    from secateurs.results import ResultsDB
    from secateurs.results.runner import db_path, held_by_a_process, run_dir, run_lock

    root = tmp_path / "store"
    root.mkdir()
    with ResultsDB(db_path(root)) as db:
        db.add_runs([("abc123", "imp", {"seed": 0}), ("def456", "omp", {"seed": 1})])
        db.claim("abc123", version="v", git_revision=None)
        db.claim("def456", version="v", git_revision=None)

    def statuses() -> dict[str, str]:
        out = CliRunner().invoke(app, ["runs", "--root", str(root), "--json"])
        assert out.exit_code == 0, out.output
        return {r["hash"]: r["status"] for r in json_module.loads(out.stdout)}

    assert held_by_a_process(run_dir(root, "abc123")) is False  # no lock file: never trained
    assert statuses() == {"abc123": "interrupted", "def456": "interrupted"}
    with run_lock(run_dir(root, "abc123")) as locked:  # a process trains abc123 now
        assert locked and held_by_a_process(run_dir(root, "abc123")) is True
        assert statuses() == {"abc123": "running", "def456": "interrupted"}
    assert statuses()["abc123"] == "interrupted"
    shown = CliRunner().invoke(app, ["runs", "--root", str(root), "--show", "abc", "--json"])
    assert json_module.loads(shown.stdout)["status"] == "interrupted"
