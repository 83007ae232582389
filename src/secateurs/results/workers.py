"""Local worker processes for a sweep that stop when the sweep stops, however it stops.

Each worker is a spawned process (fork would copy torch's thread pools and locks) given one task
at a time over its own pipe, so no task waits in a queue that an interrupt cannot empty.

- **The parent dies** (SIGKILL included): on Linux `PR_SET_PDEATHSIG` kills the worker at once;
  everywhere (macOS has no prctl) a thread wakes when the parent's end of the spawn pipe closes
  and exits the worker once `os.getppid()` confirms the parent is gone (it is only ever
  reparented then), checking at least every second. A run it was doing is left as a SIGKILL
  leaves it: `running`, its state saved after its last completed stage, its lock freed by the
  OS; the next sweep resumes it.
- **Ctrl-C** (SIGINT to the process group, or to the parent alone, which passes it on): a
  worker's task gets one KeyboardInterrupt (further SIGINTs are ignored while it unwinds), the
  worker reports the task interrupted and exits without taking another, so a process whose
  imports were cut short never runs anything again. The parent hands out nothing more, gives
  the busy workers `GRACE_S` (a second Ctrl-C: none) and kills any still there, then raises
  KeyboardInterrupt. SIGINT is blocked while a worker starts; the worker inherits the mask and
  unblocks it once its handler is in place, so a Ctrl-C during its start-up is handled too.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

GRACE_S = 10.0
"""How long interrupted workers get to stop before they are killed (their runs resume either way)."""
POLL_S = 0.2  # how often the parent looks at its interrupt flag while it waits for replies
WATCH_S = 1.0  # how often a worker checks that its parent lives when nothing woke it sooner
ORPHANED = 3  # a worker's exit code when it outlived its parent
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_DONE, _INTERRUPTED, _ERROR = "done", "interrupted", "error"


# -- the worker's side ----------------------------------------------------------------------------
class _WorkerState:
    """A worker's SIGINT bookkeeping: at most one KeyboardInterrupt, and only inside a task."""

    busy = False
    interrupted = False
    raised = False


_state = _WorkerState()


def _on_sigint(signum: int, frame: Any) -> None:
    _state.interrupted = True
    if _state.busy and not _state.raised:
        _state.raised = True
        raise KeyboardInterrupt


def _set_parent_death_signal() -> None:
    """Linux: the kernel sends SIGKILL to this process when its parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl in this libc: the watch thread still works
        pass


def _watch_parent(parent: int, sentinel: int | None) -> None:
    """Exit the worker once `os.getppid()` is no longer `parent`, i.e. the parent died."""
    while os.getppid() == parent:
        if sentinel is not None and wait([sentinel], timeout=WATCH_S):
            sentinel = None  # the parent's end closed: it is exiting; getppid says when it is gone
        elif sentinel is None:
            time.sleep(WATCH_S / 10)
    os._exit(ORPHANED)


def _follow_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        _set_parent_death_signal()
    if os.getppid() != parent:  # it died before the death signal was asked for
        os._exit(ORPHANED)
    process = multiprocessing.parent_process()
    sentinel = getattr(process, "sentinel", None)
    threading.Thread(
        target=_watch_parent, args=(parent, sentinel), name="secateurs-parent-watch", daemon=True
    ).start()


def _perform(job: Callable[[Any], Any], task: Any) -> tuple[str, Any]:
    """(done, result), (error, exception) or (interrupted, None); never raises."""
    outcome: tuple[str, Any] = (_INTERRUPTED, None)
    if _state.interrupted:
        return outcome
    try:
        _state.busy = True
        try:
            outcome = (_DONE, job(task))
        except Exception as err:
            outcome = (_ERROR, err)
        finally:
            _state.busy = False
    except KeyboardInterrupt:  # at most one is raised: `outcome` is as far as the job got
        pass
    return outcome


def _reply(conn: Connection, kind: str, index: int, value: Any) -> None:
    try:
        conn.send((kind, index, value))
    except OSError:  # the parent is gone: nobody to tell
        raise
    except Exception as err:  # an exception that does not pickle: its text does
        conn.send((_ERROR, index, RuntimeError(f"{type(value).__name__}: {value} ({err})")))


def _worker_main(
    conn: Connection, job: Callable[[Any], Any], parent: int, initializer: Callable[[], None] | None
) -> None:
    """A worker's life: follow the parent, then run the tasks it sends until told to stop."""
    _follow_parent(parent)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # an ignored Ctrl-C stays ignored
        signal.signal(signal.SIGINT, _on_sigint)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent at start
    if initializer is not None:
        initializer()
    try:
        while True:
            message = conn.recv()
            if message is None:
                return
            index, task = message
            kind, value = _perform(job, task)
            _reply(conn, kind, index, value)
            if kind != _DONE:
                return
    except (EOFError, OSError):  # the parent closed the pipe or died
        return


# -- the parent's side ----------------------------------------------------------------------------
@dataclass
class _Worker:
    process: Any  # multiprocessing's SpawnProcess
    conn: Connection
    task: int | None = None  # index of the task it runs, None when idle
    gone: bool = False  # it exited, or will without another task (still to be joined)


class _Interrupts:
    """SIGINTs counted instead of raised while the parent coordinates its workers."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1


@contextmanager
def _counting_interrupts() -> Iterator[_Interrupts]:
    """Count SIGINTs in the block rather than raise them mid-reply; left as it is where not Python's.

    Where SIGINT is ignored, or handled by someone else's handler, or this is not the main
    thread, a KeyboardInterrupt (if one comes) stops the workers just the same on its way out.
    """
    counter = _Interrupts()
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield counter
        return
    previous = signal.signal(signal.SIGINT, counter)
    try:
        yield counter
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT held back in this thread (it stays pending); a process started now inherits the mask."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _exit_text(process: Any) -> str:
    process.join(timeout=5)
    code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _interrupt(process: Any) -> None:
    """Pass a Ctrl-C on (the worker ignores it if the terminal's already reached it)."""
    if process.pid is None or not process.is_alive():
        return
    try:
        if os.name == "posix":
            os.kill(process.pid, signal.SIGINT)
        else:  # pragma: no cover - no SIGINT to one process on Windows
            process.terminate()
    except OSError:  # it has just exited
        pass


def _receive(worker: _Worker) -> tuple[str, int, Any] | None:
    """The worker's reply, or None when it died (or its pipe broke)."""
    try:
        reply = worker.conn.recv()
    except (EOFError, OSError):
        return None
    except Exception as err:  # a reply cut short by a kill, or one that does not unpickle
        log.warning("a worker's reply could not be read (%s)", err)
        return None
    return reply


@dataclass
class _Crew(Generic[T, R]):
    """The parent's bookkeeping: which worker runs which task, and what to call with the results."""

    tasks: Sequence[T]
    job: Callable[[T], R]
    size: int
    initializer: Callable[[], None] | None
    done: Callable[[T, R], None]
    lost: Callable[[T, str], None]
    interrupted: Callable[[T], None]

    def __post_init__(self) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.pending = deque(range(len(self.tasks)))
        self.workers: list[_Worker] = []  # every one started, until joined

    @property
    def live(self) -> list[_Worker]:
        return [w for w in self.workers if not w.gone]

    @property
    def busy(self) -> list[_Worker]:
        return [w for w in self.live if w.task is not None]

    def start(self) -> _Worker:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(
            target=_worker_main,
            args=(theirs, self.job, os.getpid(), self.initializer),
            name=f"secateurs-worker-{len(self.workers) + 1}",
        )
        with _sigint_blocked():
            process.start()
        theirs.close()  # the worker's end lives in the worker only: its death is our EOF
        worker = _Worker(process, ours)
        self.workers.append(worker)
        return worker

    def hand_out(self) -> None:
        """Give each idle worker a task; start workers while there are tasks and room."""
        while len(self.pending) > len(self.live) - len(self.busy) and len(self.live) < self.size:
            self.start()
        for worker in self.live:
            if worker.task is None and self.pending:
                worker.task = self.pending.popleft()
                with contextlib.suppress(OSError):  # died idle: its EOF comes with the replies
                    worker.conn.send((worker.task, self.tasks[worker.task]))

    def settle(self, worker: _Worker, reply: tuple[str, int, Any] | None) -> str:
        """Act on one reply: done (the worker is idle again), lost or interrupted (it is gone).

        An exception the job raised is raised here, for the caller.
        """
        index, worker.task = worker.task, None
        kind = _DONE if reply is not None and reply[0] == _DONE else ""
        if kind != _DONE:  # a worker exits after anything but a result
            worker.gone = True
        if reply is None:
            if index is not None:
                self.lost(self.tasks[index], f"a worker process died ({_exit_text(worker.process)})")
            return "lost"
        kind, index, value = reply
        if kind == _DONE:
            self.done(self.tasks[index], value)
        elif kind == _INTERRUPTED:
            self.interrupted(self.tasks[index])
        else:
            raise value
        return kind

    def run(self, interrupts: _Interrupts) -> bool:
        """Hand out every task and collect the results; False if stopped by an interrupt.

        A worker stopped by a Ctrl-C stops the whole sweep: the interrupt was meant for it all.
        """
        while self.pending or self.busy:
            if interrupts.count:
                return False
            self.hand_out()
            by_conn = {w.conn: w for w in self.busy}
            for conn in wait(list(by_conn), timeout=POLL_S):
                if self.settle(by_conn[conn], _receive(by_conn[conn])) == _INTERRUPTED:
                    return False
        return True

    def stop(self, interrupts: _Interrupts, *, interrupt: bool) -> None:
        """Stop every worker: idle ones at once, busy ones after their task (interrupted first).

        A second Ctrl-C while waiting kills them. Whatever happens, none outlives this call.
        """
        try:
            busy = self.busy
            if interrupt:
                for worker in busy:
                    _interrupt(worker.process)
            seen, deadline = interrupts.count, time.monotonic() + GRACE_S
            self.dismiss_idle()
            while busy and interrupts.count == seen and time.monotonic() < deadline:
                by_conn = {w.conn: w for w in busy}
                for conn in wait(list(by_conn), timeout=min(POLL_S, max(0.0, deadline - time.monotonic()))):
                    worker = by_conn[conn]
                    busy.remove(worker)
                    try:
                        self.settle(worker, _receive(worker))
                    except Exception as err:  # already stopping: one error is enough
                        log.warning("a worker failed while the sweep stopped: %s", err)
                self.dismiss_idle()
            for worker in self.workers:
                worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for worker in self.workers:
                if worker.process.is_alive():
                    worker.process.kill()
                worker.process.join()
                worker.conn.close()
            self.workers.clear()

    def dismiss_idle(self) -> None:
        """Tell each idle worker to exit (a None for a task)."""
        for worker in self.live:
            if worker.task is None:
                with contextlib.suppress(OSError):  # it has exited already
                    worker.conn.send(None)
                worker.gone = True


def run_in_workers(
    tasks: Sequence[T],
    job: Callable[[T], R],
    workers: int,
    *,
    done: Callable[[T, R], None],
    lost: Callable[[T, str], None],
    interrupted: Callable[[T], None],
    initializer: Callable[[], None] | None = None,
) -> None:
    """Run `job(task)` for every task in `workers` spawned processes, one task each at a time.

    `job` and `initializer` must be importable (module-level functions or partials of them).
    `done` gets each result as it comes, `lost` a task whose worker died (the others go on, in a
    fresh worker), `interrupted` a task a Ctrl-C stopped. An exception `job` raised is raised
    here, and a Ctrl-C as KeyboardInterrupt, in both cases once every worker has exited.
    """
    crew = _Crew(tasks, job, workers, initializer, done, lost, interrupted)
    with _counting_interrupts() as interrupts:
        try:
            finished = crew.run(interrupts)
        except BaseException:
            crew.stop(interrupts, interrupt=True)
            raise
        crew.stop(interrupts, interrupt=not finished)
    if not finished:
        raise KeyboardInterrupt
