"""Sweeps on the engines clusters already have: each run a Ray task, or each shard a Slurm array task.

Both write into the same store as local workers, through the same `execute`: a finished run is
skipped, a run whose process died resumes after its last saved stage, and the per-run lock keeps
two processes off one run. So the engines only have to start processes somewhere:

- **ray**: every grid point is one Ray task with the resources a run needs (`cpus_per_run`,
  `gpus_per_run`, `mem_gb`); a task whose worker process dies is retried (`max_retries`) and
  resumes; outcomes are recorded as the tasks finish. `address` picks the cluster (a local
  instance when left out). An address that does not answer is one error, before the store is
  touched, within `PROBE_S` (Ray itself would retry for minutes).
- **slurm**: the grid is cut into shards exactly as `--shard i/N` cuts it, and each shard is one
  task of one array job, submitted through submitit; a task that runs out of time or is
  preempted is requeued and resumes. With `wait`, outcomes are recorded as the tasks finish;
  `cluster="local"` runs the same job as processes on this machine (submitit's local executor).

Ray and submitit are optional extras (`pip install secateurs[ray]`, `secateurs[slurm]`), imported
only when their backend is used.
"""

from __future__ import annotations

import importlib
import logging
import math
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from secateurs.core.errors import ConfigError
from secateurs.results.db import StoreError
from secateurs.results.runner import FAILED, RunOutcome, error_text
from secateurs.results.sweep import (
    BACKENDS,
    Dispatch,
    Record,
    SweepBackend,
    SweepPoint,
    _execute_point,
    run_sweep,
    select_shard,
)

log = logging.getLogger(__name__)

PROBE_S = 5.0
"""How long a Ray address gets to accept a connection before the sweep says it does not answer."""
POLL_S = 1.0  # how often a waiting sweep looks for finished tasks (and for a Ctrl-C)
SLURM_FOLDER = "slurm"  # under the results root: submitit's pickles and the tasks' logs, per job


def _import(module: str, backend: str, extra: str) -> ModuleType:
    """The optional library a backend needs, or one error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f"--backend {backend} needs {module}, which is not installed ({err})",
            fix=f"pip install 'secateurs[{extra}]'",
        ) from None


def _at_least(name: str, value: float, low: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= low):
        raise ConfigError(f"--{name.replace('_', '-')} must be at least {low:g}, got {value}")


def _failure(point: SweepPoint, why: str) -> RunOutcome:
    return RunOutcome(point.hash, point.name, FAILED, error=why)


# -- Ray ------------------------------------------------------------------------------------------
def _ray_run(point: SweepPoint, root: str, store: str | None, threads: int) -> RunOutcome:
    """One grid point in a Ray worker: torch gets the task's CPUs (Ray sets OMP_NUM_THREADS alike)."""
    import torch

    torch.set_num_threads(threads)
    return _execute_point(point, root, store)


def _host_port(address: str) -> tuple[str, int]:
    """`host:port` or `ray://host:port` → (host, port); anything else is one error."""
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"Ray address {address!r} is not host:port",
            fix="give the address `ray start --head` printed, e.g. --address 10.0.0.5:6379 "
            "(or ray://host:10001, or auto for the cluster this machine is part of)",
        )
    return host.strip("[]"), int(port)


_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
"""HTTP/2's client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, its client server)
answers with a SETTINGS frame of its own."""


def _probe(address: str) -> None:
    """Refuse an address that does not answer as a Ray cluster, quickly: Ray's own connect retries
    for minutes, and forever when something else (or nothing) listens there.

    Ray's head and client servers speak gRPC, so a TCP connection and an HTTP/2 handshake tell one
    from a closed port or another service without any Ray call.
    """
    host, port = _host_port(address)
    fix = (
        "start one with `ray start --head` and pass the address it prints, "
        "or leave out --address to start a local Ray instance"
    )
    try:
        sock = socket.create_connection((host, port), timeout=PROBE_S)
    except OSError as err:
        why = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ConfigError(
            f"no Ray cluster answers at {address} ({why} within {PROBE_S:g} s)", fix=fix
        ) from None
    with sock:
        try:
            sock.sendall(_HTTP2_HELLO)
            head = sock.recv(9)
        except OSError:
            head = b""
    if len(head) < 4 or head[3] != 4:  # a frame header's 4th byte is its type; SETTINGS is 4
        raise ConfigError(
            f"something listens at {address}, but it is not a Ray cluster (no gRPC handshake within "
            f"{PROBE_S:g} s)",
            fix=fix,
        )


def _check_store(ray: Any, store: str | None) -> None:
    """A Ray cluster of several machines needs a server store: each node would otherwise write a
    SQLite file of its own at the root's path, and the runs would be lost to the sweep."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if store is None and len(nodes) > 1:
        raise ConfigError(
            f"the Ray cluster has {len(nodes)} machines, which cannot share ROOT/results.db (SQLite)",
            fix="record into a server store every node reaches: --store postgresql://USER@HOST/DB "
            "(the run directories stay under --root, best on a shared filesystem)",
        )


@BACKENDS.register("ray", "each run a Ray task, on a local instance or the cluster at --address")
@dataclass
class RayBackend(SweepBackend):
    """Each grid point one Ray task; the store must be one every node reaches (a server store, or a
    SQLite store on one machine's disk when the cluster is that machine)."""

    address: str | None = None  # None or "local": a local instance; "auto", host:port, ray://host:port
    cpus_per_run: int = 1
    gpus_per_run: float = 0.0
    mem_gb: float | None = None
    max_retries: int = 3  # retries of a run whose worker died (it resumes after its last saved stage)

    def __post_init__(self) -> None:
        _at_least("cpus_per_run", self.cpus_per_run, 1)
        _at_least("gpus_per_run", self.gpus_per_run, 0)
        _at_least("max_retries", self.max_retries, 0)
        if self.mem_gb is not None:
            _at_least("mem_gb", self.mem_gb, 0.001)

    def spans_hosts(self) -> bool:
        """A local instance is this machine; any address may be a cluster of several."""
        return self.address not in (None, "local")

    @contextmanager
    def session(self, store: str | None = None) -> Iterator[Dispatch]:
        """Connect (or start a local instance) before anything is written; disconnect at the end.

        A Ray session the caller opened already (`ray.init` in their code) is used as it is and
        left open.
        """
        ray = _import("ray", "ray", "ray")
        if self.address not in (None, "local", "auto"):
            _probe(self.address)
        if ray.is_initialized():
            _check_store(ray, store)
            yield self.dispatch
            return
        try:
            ray.init(address=self.address, logging_level=logging.WARNING, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            lines = str(err).strip().splitlines() or [type(err).__name__]
            raise ConfigError(
                f"cannot connect to Ray at {self.address or 'a local instance'}: {lines[0]}",
                fix="start a cluster with `ray start --head` and pass its address with --address",
            ) from None
        try:
            _check_store(ray, store)
            yield self.dispatch
        finally:
            ray.shutdown()

    def dispatch(self, points: list[SweepPoint], root: str, record: Record, store: str | None = None) -> None:
        """Submit every point at once (Ray queues them by resources); record each as it finishes.

        An exception leaving here (a Ctrl-C, a store that cannot be used) cancels the tasks not
        yet finished: a cancelled run stays `running` in the store and the next sweep resumes it.
        """
        import ray

        options: dict[str, Any] = {
            "num_cpus": self.cpus_per_run,
            "num_gpus": self.gpus_per_run,
            "max_retries": self.max_retries,
            "retry_exceptions": False,  # a run's own error is recorded by `execute`, never retried
        }
        if self.mem_gb is not None:
            options["memory"] = int(self.mem_gb * 2**30)
        task = ray.remote(_ray_run).options(**options)
        by_ref = {task.remote(point, root, store, self.cpus_per_run): point for point in points}
        pending = list(by_ref)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
                for ref in ready:
                    record(self._outcome(ray, ref, by_ref[ref]))
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise

    def _outcome(self, ray: Any, ref: Any, point: SweepPoint) -> RunOutcome:
        """The task's outcome; a lost task (its worker died every try) is the run's failure."""
        try:
            return ray.get(ref)  # type: ignore[no-any-return]
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, StoreError):  # no run's failure: every other run would hit it too
                raise cause from None
            return _failure(point, error_text(cause if isinstance(cause, BaseException) else err))
        except ray.exceptions.RayError as err:
            return _failure(
                point,
                f"its Ray task was lost ({type(err).__name__}) after {self.max_retries} retries; "
                "the next sweep resumes it",
            )


# -- Slurm ----------------------------------------------------------------------------------------
@dataclass
class ShardTask:
    """One array task: a shard of the grid run one point after another, as `sweep --shard i/N` does.

    submitit calls `checkpoint` when the task runs out of time or is preempted: it is requeued as
    it is, and each run resumes after its last saved stage.
    """

    points: list[SweepPoint]
    root: str
    store: str | None
    threads: int

    def __call__(self) -> list[RunOutcome]:
        import torch

        torch.set_num_threads(self.threads)
        return run_sweep(self.points, self.root, store=self.store).outcomes

    def checkpoint(self) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def _last_line(err: BaseException) -> str:
    """A failed task's error, as its traceback's last line (submitit hands back the whole text)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


@BACKENDS.register("slurm", "each shard a task of one Slurm array job (submitit), or --cluster local")
@dataclass
class SlurmBackend(SweepBackend):
    """The grid as one array job of `shards` tasks (default: one per run), at most
    `array_parallelism` running at once; each task gets the resources of one run."""

    partition: str | None = None
    time_min: int = 60  # each task's time limit; a task that reaches it is requeued and resumes
    cpus_per_run: int = 1
    gpus_per_run: int = 0
    mem_gb: float | None = None
    shards: int | None = None
    array_parallelism: int = 256
    wait: bool = True
    cluster: str = "slurm"  # "local": submitit runs the tasks as processes on this machine

    def __post_init__(self) -> None:
        _at_least("time_min", self.time_min, 1)
        _at_least("cpus_per_run", self.cpus_per_run, 1)
        _at_least("gpus_per_run", self.gpus_per_run, 0)
        _at_least("array_parallelism", self.array_parallelism, 1)
        if self.shards is not None:
            _at_least("shards", self.shards, 1)
        if self.mem_gb is not None:
            _at_least("mem_gb", self.mem_gb, 0.001)
        if self.gpus_per_run != int(self.gpus_per_run):
            raise ConfigError(f"--gpus-per-run must be whole GPUs on Slurm, got {self.gpus_per_run}")
        if self.cluster not in ("slurm", "local"):
            raise ConfigError(f"unknown --cluster {self.cluster!r}", fix="use slurm or local")
        if self.cluster == "local" and not self.wait:
            raise ConfigError(
                "--no-wait needs --cluster slurm: the local cluster's tasks are this process's children",
                fix="leave out --no-wait, or submit to Slurm",
            )

    def spans_hosts(self) -> bool:
        """Slurm places tasks on any node; the local executor runs them here."""
        return self.cluster != "local"

    @contextmanager
    def session(self, store: str | None = None) -> Iterator[Dispatch]:
        """Check that submitit and (for Slurm) its commands are here before anything is written."""
        _import("submitit", "slurm", "slurm")
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if self.cluster == "slurm" and missing:
            raise ConfigError(
                f"--backend slurm needs Slurm's {' and '.join(missing)}, not on PATH here",
                fix="run the sweep on the cluster's login node, or try the job on this machine "
                "with --cluster local",
            )
        yield self.dispatch

    def dispatch(
        self, points: list[SweepPoint], root: str, record: Record, store: str | None = None
    ) -> list[str] | None:
        """Submit the shards as one array job; with `wait`, record each task's outcomes as it ends."""
        if not points:
            return None
        import submitit

        count = min(self.shards or len(points), len(points))
        shards = [select_shard(points, i, count) for i in range(1, count + 1)]
        executor = submitit.AutoExecutor(folder=Path(root) / SLURM_FOLDER / "%j", cluster=self.cluster)
        parameters: dict[str, Any] = {
            "name": "secateurs-sweep",
            "timeout_min": self.time_min,
            "cpus_per_task": self.cpus_per_run,
            "gpus_per_node": int(self.gpus_per_run),
            "slurm_array_parallelism": self.array_parallelism,
        }
        if self.mem_gb is not None:
            parameters["mem_gb"] = self.mem_gb
        if self.partition is not None:
            parameters["slurm_partition"] = self.partition
        executor.update_parameters(**parameters)
        tasks = [ShardTask(shard, root, store, self.cpus_per_run) for shard in shards]
        try:
            jobs = executor.submit_array(tasks)
        except (
            submitit.core.utils.FailedJobError,
            submitit.core.utils.FailedSubmissionError,
            OSError,
        ) as err:
            raise ConfigError(
                f"Slurm refused the array job: {_last_line(err)}",
                fix="check --partition, --time-min and the resources per run against `sinfo` "
                "(the runs stay pending in the store)",
            ) from None
        ids = sorted({job.job_id.split("_")[0] for job in jobs})
        log.info(
            "submitted %d array tasks as job %s (logs in %s)", len(jobs), ", ".join(ids), executor.folder
        )
        if not self.wait:
            return ids
        _wait_for(list(zip(jobs, shards, strict=True)), record)
        return None


def _wait_for(jobs: list[tuple[Any, list[SweepPoint]]], record: Record) -> None:
    """Record each task's outcomes as it ends; a task that failed as a whole fails its runs.

    A Ctrl-C (or any exception) cancels the tasks not yet ended: their runs stay `running` in the
    store, and the next sweep resumes them.
    """
    remaining = dict(enumerate(jobs))
    try:
        while remaining:
            ended = [index for index, (job, _) in remaining.items() if job.done()]
            for index in ended:
                job, shard = remaining.pop(index)
                try:
                    outcomes = job.result()
                except Exception as err:
                    why = f"its array task {job.job_id} failed: {_last_line(err)} (log: {job.paths.stderr})"
                    outcomes = [_failure(point, why) for point in shard]
                for outcome in outcomes:
                    record(outcome)
            if remaining and not ended:
                time.sleep(POLL_S)
    except BaseException:
        for job, _ in remaining.values():
            job.cancel(check=False)
        raise


# -- options --------------------------------------------------------------------------------------
def backend_options(backend: str, **given: Any) -> dict[str, Any]:
    """The options given (not None) for `backend`; one that belongs to another backend is an
    error naming its flag and the backends that take it, rather than silently ignored."""
    factory = BACKENDS.get(backend)  # an unknown backend: the registry's error, listing them
    accepted = {f.name for f in fields(factory)}  # type: ignore[arg-type]
    for name, value in given.items():
        if value is None or name in accepted:
            continue
        flag = "--" + name.replace("_", "-")
        owners = [b for b in BACKENDS.names() if name in {f.name for f in fields(BACKENDS.get(b))}]  # type: ignore[arg-type]
        raise ConfigError(
            f"{flag} is an option of --backend {' and '.join(owners)}, not {backend}",
            fix=f"leave out {flag}, or use --backend {owners[0]}" if owners else f"leave out {flag}",
        )
    return {name: value for name, value in given.items() if value is not None}
