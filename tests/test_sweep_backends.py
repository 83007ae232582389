"""Sweeps on cluster engines (issue 22): a Ray task per run, a Slurm array job of shards (through
submitit's local executor here, and a stand-in `sbatch` for the script it submits).

They must give the local sweep's numbers bit for bit (final metrics, and every weight and mask
tensor of each run's model.pt); a run whose Ray worker dies is retried and finishes exactly once,
resumed after its last saved stage; and a backend that cannot start (library missing, cluster
not answering, options of another backend) is one error line with nothing written. One local Ray
instance serves the module (a few seconds to start).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shlex
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from cli_helpers import assert_user_error, invoke
from rich.console import Console
from tiny import tiny_recipe

import secateurs.front.cli as cli
import secateurs.front.console as console_module
from secateurs.core.checkpoint import load_checkpoint
from secateurs.core.errors import ConfigError
from secateurs.results import ResultsDB
from secateurs.results.runner import FAILED, FINISHED
from secateurs.results.sweep import SweepPoint, SweepSummary, expand_sweep, load_sweep, run_sweep

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(console_module, "err_console", Console(width=250, stderr=True))


@pytest.fixture(scope="module")
def ray_instance() -> Any:
    """One local Ray instance for the module; its workers import the tests' `user_code` as users'
    workers import theirs (PYTHONPATH)."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)}},
    )
    yield ray
    ray.shutdown()


def write_sweep(folder: Path, recipe: dict[str, Any] | None = None, **sweep: Any) -> Path:
    (folder / "tiny.yaml").write_text(yaml.safe_dump(recipe or tiny_recipe()), encoding="utf-8")
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "recipes": ["tiny.yaml"], **sweep}), encoding="utf-8")
    return path


def points_in(path: Path) -> list[SweepPoint]:
    return expand_sweep(load_sweep(path), path.parent)


def fingerprints(root: Path, runs: list[str]) -> dict[str, dict[str, str]]:
    """Each run's model.pt as a SHA-256 per weight and mask tensor: equal only if bit for bit."""
    prints = {}
    for run in runs:
        payload = load_checkpoint(root / "runs" / run / "model.pt")
        prints[run] = {
            f"{part}.{name}": hashlib.sha256(tensor.numpy().tobytes()).hexdigest()
            for part in ("model", "masks")
            for name, tensor in payload[part].items()
        }
    return prints


def local_reference(points: list[SweepPoint], root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The local sweep's final metrics and fingerprints, run by run."""
    summary = run_sweep(points, root)
    assert summary.line() == f"{len(points)} finished, 0 skipped, 0 failed"
    runs = [p.hash for p in points]
    return {o.hash: o.final for o in summary.outcomes}, fingerprints(root, runs)


def store_rows(root: Path) -> list[tuple[str, int]]:
    with ResultsDB(root / "results.db") as db:
        return [(r.status, r.attempts) for r in db.list_runs()]


# -- Ray --------------------------------------------------------------------------------------
def test_a_ray_sweep_equals_the_local_sweep_bit_for_bit(ray_instance: Any, tmp_path: Path) -> None:
    path = write_sweep(tmp_path, sparsities=[0.25, 0.75])
    points = points_in(path)
    finals, prints = local_reference(points, tmp_path / "local")
    root = tmp_path / "ray"
    result = invoke(
        "sweep", str(path), "--root", str(root), "--backend", "ray", "--cpus-per-run", "1", "--json"
    )
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert sorted(r["status"] for r in runs) == [FINISHED, FINISHED]
    assert {r["hash"]: r["final"] for r in runs} == finals
    assert [finals[p.hash]["nonzero_macs"] for p in points] == [276, 92]  # the runs differ
    assert fingerprints(root, [p.hash for p in points]) == prints
    assert store_rows(root) == [("finished", 1)] * 2
    again = invoke("sweep", str(path), "--root", str(root), "--backend", "ray")  # restartable, as locally
    assert again.exit_code == 0 and "sweep s: 0 finished, 2 skipped, 0 failed" in again.stdout


def test_a_ray_worker_that_dies_is_retried_and_its_run_finishes_once(
    ray_instance: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "died"
    model = {"factory": "user_code.crashes:mlp_dying_once", "options": {"marker": str(marker)}}
    path = write_sweep(tmp_path, tiny_recipe(model=model))
    points = points_in(path)
    root = tmp_path / "ray"
    summary = run_sweep(points, root, backend="ray", options={"max_retries": 1})
    assert marker.exists()  # the first attempt's worker did die, evaluating the pruned model
    [outcome] = summary.outcomes
    assert (outcome.status, outcome.attempts, outcome.resumed_from) == (FINISHED, 2, 2)
    assert store_rows(root) == [("finished", 2)]
    finals, prints = local_reference(points, tmp_path / "local")  # the marker is there: no death
    assert outcome.final == finals[outcome.hash]
    assert fingerprints(root, [outcome.hash]) == prints
    with ResultsDB(root / "results.db") as ray_db, ResultsDB(tmp_path / "local" / "results.db") as local_db:
        # the resumed attempt dropped nothing twice and left no row of the dead one behind
        assert len(ray_db.metrics(outcome.hash)) == len(local_db.metrics(outcome.hash)) > 0


def test_a_run_whose_worker_dies_every_try_fails_and_the_next_sweep_resumes_it(
    ray_instance: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "died"
    model = {"factory": "user_code.crashes:mlp_dying_once", "options": {"marker": str(marker)}}
    points = points_in(write_sweep(tmp_path, tiny_recipe(model=model)))
    root = tmp_path / "ray"
    [lost] = run_sweep(points, root, backend="ray", options={"max_retries": 0}).outcomes
    assert lost.status == FAILED and lost.error is not None
    assert lost.error.startswith("its Ray task was lost (") and "the next sweep resumes it" in lost.error
    assert store_rows(root) == [("running", 1)]  # as a SIGKILL leaves it: resumable
    [resumed] = run_sweep(points, root).outcomes
    assert (resumed.status, resumed.attempts, resumed.resumed_from) == (FINISHED, 2, 2)


def test_an_address_that_does_not_answer_is_one_error_and_writes_nothing(tmp_path: Path) -> None:
    path = write_sweep(tmp_path)
    with socket.socket() as sock:  # a port nothing listens at once this socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    other = socket.create_server(("127.0.0.1", 0))  # another service: it greets as SSH does

    def greet() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = other.accept()
                with connection:
                    connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=greet, daemon=True).start()
    root = tmp_path / "results"
    try:
        for address, fragment in [
            (f"127.0.0.1:{port}", f"no Ray cluster answers at 127.0.0.1:{port}"),
            (f"ray://127.0.0.1:{port}", "no Ray cluster answers at ray://127.0.0.1"),
            ("headnode", "Ray address 'headnode' is not host:port"),
            (f"127.0.0.1:{other.getsockname()[1]}", "something listens at 127.0.0.1:"),
        ]:
            result = invoke("sweep", str(path), "--root", str(root), "--backend", "ray", "--address", address)
            assert_user_error(result, fragment)
    finally:
        other.close()
    assert not root.exists()


def test_the_address_probe_knows_a_real_ray_head(ray_instance: Any) -> None:
    """The handshake that refuses other services accepts Ray's own GCS (raises nothing)."""
    from secateurs.results.backends import _probe

    _probe(ray_instance.get_runtime_context().gcs_address)


@pytest.mark.parametrize(
    ("module", "args", "extra"),
    [
        ("ray", ["--backend", "ray"], "ray"),
        ("submitit", ["--backend", "slurm", "--cluster", "local"], "slurm"),
    ],
)
def test_a_missing_engine_names_the_extra_that_installs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, args: list[str], extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import ray` raises ImportError
    root = tmp_path / "results"
    result = invoke("sweep", str(write_sweep(tmp_path)), "--root", str(root), *args)
    assert_user_error(result, f"needs {module}, which is not installed", f"pip install 'secateurs[{extra}]'")
    assert not root.exists()


# -- Slurm ------------------------------------------------------------------------------------
def test_a_submitit_local_array_sweep_equals_the_local_sweep_bit_for_bit(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    path = write_sweep(tmp_path, sparsities=[0.25, 0.75])
    points = points_in(path)
    finals, prints = local_reference(points, tmp_path / "local")
    root = tmp_path / "slurm"
    args = ["--backend", "slurm", "--cluster", "local", "--time-min", "5", "--json"]
    result = invoke("sweep", str(path), "--root", str(root), *args)
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert {r["hash"]: (r["status"], r["final"]) for r in runs} == {
        h: (FINISHED, f) for h, f in finals.items()
    }
    assert fingerprints(root, [p.hash for p in points]) == prints
    assert store_rows(root) == [("finished", 1)] * 2
    # one array task per run, each a shard: two task folders with their logs
    logs = sorted(p.parent.name for p in (root / "slurm").glob("*/*_log.out"))
    assert len(logs) == 2 and len(set(logs)) == 2


def test_a_slurm_submission_asks_for_the_resources_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a cluster: stand-in sbatch and srun that keep the job script, and --no-wait."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = tmp_path / "submitted.sh"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {script}\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    path = write_sweep(tmp_path, seeds=[0, 1, 2])
    root = tmp_path / "results"
    slurm = ["--backend", "slurm", "--partition", "gpu", "--time-min", "30", "--cpus-per-run", "2"]
    options = ["--gpus-per-run", "1", "--mem-gb", "4", "--shards", "2", "--array-parallelism", "1"]

    system_path = os.environ.get("PATH", "")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert_user_error(
        invoke("sweep", str(path), "--root", str(root), *slurm, *options),
        "--backend slurm needs Slurm's sbatch and srun, not on PATH here",
    )
    assert not root.exists()

    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{system_path}")
    result = invoke("sweep", str(path), "--root", str(root), *slurm, *options, "--no-wait")
    assert result.exit_code == 0, result.output
    assert "0 finished, 0 skipped, 0 failed; submitted job 4242, not waited for" in result.stdout
    assert "`secateurs runs --root" in result.stdout and "shows how far it got" in result.stdout
    text = script.read_text()
    for line in ["--array=0-1%1", "--partition=gpu", "--time=30", "--cpus-per-task=2", "--gpus-per-node=1"]:
        assert f"#SBATCH {line}\n" in text, line
    assert "#SBATCH --mem=4GB\n" in text
    assert store_rows(root) == [("pending", 0)] * 3  # registered, for `runs` to follow

    # a submission sbatch refuses is one error naming sbatch's reason, not a traceback
    (bin_dir / "sbatch").write_text(
        '#!/bin/sh\necho "sbatch: error: invalid partition specified: gpux" >&2\nexit 1\n'
    )
    result = invoke("sweep", str(path), "--root", str(root), *slurm, "--partition", "gpux", "--no-wait")
    assert result.exit_code == 2, result.output
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(
        "error: Slurm refused the array job: sbatch: error: invalid partition specified: gpux"
    )
    assert "Traceback" not in result.stderr


# -- options ----------------------------------------------------------------------------------
BAD_OPTIONS = [
    (["--backend", "dask"], ["unknown sweep backend 'dask'", "local, ray, slurm"]),
    (
        ["--backend", "ray", "--partition", "gpu"],
        ["--partition is an option of --backend slurm, not ray"],
    ),
    (["--partition", "gpu"], ["--partition is an option of --backend slurm, not local"]),
    (["--backend", "slurm", "--address", "h:1"], ["--address is an option of --backend ray, not slurm"]),
    (["--backend", "ray", "--workers", "2"], ["--workers is an option of the local backend, not ray"]),
    (["--backend", "ray", "--cpus-per-run", "0"], ["--cpus-per-run must be at least 1, got 0"]),
    (["--backend", "slurm", "--gpus-per-run", "0.5"], ["--gpus-per-run must be whole GPUs on Slurm"]),
    (["--backend", "slurm", "--cluster", "pbs"], ["unknown --cluster 'pbs'"]),
    (["--backend", "slurm", "--cluster", "local", "--no-wait"], ["--no-wait needs --cluster slurm"]),
    (["--backend", "slurm", "--shard", "1/2"], ["--shard is not for --backend slurm"]),
]


@pytest.mark.parametrize(("args", "fragments"), BAD_OPTIONS, ids=[" ".join(args) for args, _ in BAD_OPTIONS])
def test_backend_options_are_checked_before_anything_is_written(
    tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    root = tmp_path / "results"
    assert_user_error(invoke("sweep", str(write_sweep(tmp_path)), "--root", str(root), *args), *fragments)
    assert not root.exists()


def test_run_sweep_takes_a_backend_by_name_or_as_an_object(tmp_path: Path) -> None:
    from secateurs.results.backends import RayBackend

    points = points_in(write_sweep(tmp_path))
    with pytest.raises(ConfigError, match="backend 'ray' has no option 'partition'"):
        run_sweep(points, tmp_path / "r", backend="ray", options={"partition": "gpu"})
    with pytest.raises(ConfigError, match="takes its options itself"):
        run_sweep(points, tmp_path / "r", backend=RayBackend(), options={"cpus_per_run": 2})
    assert not (tmp_path / "r").exists()
    assert (
        SweepSummary(submitted=["7"]).line()
        == "0 finished, 0 skipped, 0 failed; submitted job 7, not waited for"
    )


def test_the_readmes_cluster_commands_parse_into_valid_backends() -> None:
    """README's `secateurs sweep --backend …` lines: real options, each valid for its backend."""
    from secateurs.results.backends import backend_options
    from secateurs.results.sweep import BACKENDS, make_backend

    readme = (TESTS.parent / "README.md").read_text(encoding="utf-8")
    lines = [
        line.split("#")[0]
        for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
        for line in block.splitlines()
        if line.startswith("secateurs sweep") and "--backend" in line
    ]
    assert len(lines) == 3
    sweep = typer.main.get_command(cli.app).commands["sweep"]  # type: ignore[attr-defined]
    names = {f.name for backend in ("ray", "slurm") for f in dataclasses.fields(BACKENDS.get(backend))}  # type: ignore[arg-type]
    for line in lines:
        params = sweep.make_context("sweep", shlex.split(line)[2:]).params
        options = backend_options(params["backend"], **{k: v for k, v in params.items() if k in names})
        assert make_backend(params["backend"], options=options) is not None


def test_a_ray_cluster_of_several_machines_needs_a_server_store(
    ray_instance: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each node would write a SQLite file of its own at the root's path: refused, nothing written."""
    monkeypatch.setattr(ray_instance, "nodes", lambda: [{"Alive": True}, {"Alive": True}, {"Alive": False}])
    root = tmp_path / "results"
    with pytest.raises(ConfigError, match="the Ray cluster has 2 machines, which cannot share"):
        run_sweep(points_in(write_sweep(tmp_path)), root, backend="ray")
    assert not root.exists()
