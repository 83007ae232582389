"""Data-parallel runs (gloo, two real processes): masks identical on every rank and equal to one process's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from tiny import tiny_recipe

import secateurs
from secateurs.core.distributed import World, masks_digest, shard_batch
from secateurs.core.masks import masks_of
from secateurs.data.core import TensorLoader
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.runner import run_recipe

IMP = {
    "schedule": {"name": "iterative", "levels": 2, "rate": 0.3},
    "stages": [{"prune": {"allocation": "uniform"}}, {"reset": {"mode": "rewind", "step": 0}}, {"train": {}}],
}
RECIPES: dict[str, dict[str, Any]] = {
    "one-shot magnitude": tiny_recipe(),
    "snip": tiny_recipe({"prune": {"criterion": "snip"}}, {"train": {}}, {"evaluate": {"label": "final"}}),
    "imp (2 levels)": tiny_recipe({"train": {}}, {"repeat": IMP}, {"evaluate": {"label": "final"}}),
    "rigl": tiny_recipe(
        {"prune": {"criterion": "random", "allocation": "erk"}},
        {"train": {"dst": {"method": "rigl", "update_every": 2, "end_fraction": 1.0}}},
        {"evaluate": {"label": "final"}},
        iterations=6,
    ),
    "user model (factory, streamed data)": tiny_recipe(
        {"prune": {"criterion": "snip", "samples_per_class": 4}},
        {"train": {}},
        {"evaluate": {"label": "final"}},
        model={"factory": "user_code.models:residual_net", "options": {"drop": 0.0}},
        data={"factory": "user_code.data:patterns"},
        device="cpu",
        iterations=20,
    ),
}
BATCH_NORM = {"user model (factory, streamed data)"}
"""Recipes whose model normalises by batch statistics: each rank's half batch has its own, so the
weights match the one-process run's only where the statistics do not enter (the masks), and the
running statistics (DDP broadcasts rank 0's before every forward) differ after the last one."""


def _outcome(raw: dict[str, Any]) -> dict[str, Any]:
    result = run_recipe(recipe_from_raw(raw))
    masks = masks_of(result.model)
    return {
        "masks": {n: m.clone() for n, m in (masks or {}).items()},
        "state": {k: v.clone() for k, v in result.model.state_dict().items()},
        "accuracy": result.records[-1]["accuracy"],
    }


def _worker(rank: int, size: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size))
    torch.set_num_threads(1)
    # a file store, not a TCP port: a free port picked here could be taken by another test's
    # torchrun (they run side by side under xdist) before the group binds it
    store = f"file://{Path(folder) / 'store'}"
    torch.distributed.init_process_group("gloo", init_method=store, rank=rank, world_size=size)
    from secateurs.core.distributed import DistributedError, check_same_masks, exit_worker, shutdown

    finished = False
    try:
        outcomes = {name: _outcome(raw) for name, raw in RECIPES.items()}

        differs = {"w": torch.tensor([rank == 1])}  # rank 1's mask differs
        try:
            check_same_masks(differs, "a test")
            mismatch = "not detected"
        except DistributedError as err:
            mismatch = str(err)
        torch.save({"outcomes": outcomes, "mismatch": mismatch}, Path(folder) / f"rank{rank}.pt")
        finished = True
    finally:
        shutdown(finished=finished)
    # not through the interpreter's teardown, where gloo's threads (kept alive by DDP) can abort
    # the process ("terminate called without an active exception", seen under load in CI)
    exit_worker(0)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(2, str(folder)), nprocs=2, start_method="spawn")
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("name", list(RECIPES))
def test_masks_are_identical_on_both_ranks_and_equal_to_one_process(name: str, two_ranks: list) -> None:
    rank0, rank1 = (r["outcomes"][name] for r in two_ranks)
    single = _outcome(RECIPES[name])
    assert rank0["masks"], "the recipe prunes"
    assert masks_digest(rank0["masks"]) == masks_digest(rank1["masks"]) == masks_digest(single["masks"])
    for key, value in single["state"].items():
        if name in BATCH_NORM and ("running_" in key or "num_batches" in key):
            continue
        assert torch.equal(rank0["state"][key], rank1["state"][key]), key  # DDP keeps ranks in lockstep
        if name not in BATCH_NORM:
            # the same global batches, averaged over two half batches: equal up to float summation order
            torch.testing.assert_close(rank0["state"][key], value, rtol=1e-4, atol=1e-5)
    if name in BATCH_NORM:
        assert min(rank0["accuracy"], rank1["accuracy"], single["accuracy"]) > 0.5
    else:
        assert rank0["accuracy"] == rank1["accuracy"] == pytest.approx(single["accuracy"], abs=1 / 48)


def test_a_mask_mismatch_between_ranks_stops_every_rank_with_a_clear_error(two_ranks: list) -> None:
    for rank in two_ranks:
        assert "the ranks' masks differ after a test" in rank["mismatch"]


def test_the_shards_of_a_global_batch_are_the_one_process_batch() -> None:
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    batch = order[8:10]  # a last, partial batch of 2 with 3 ranks: padded from the epoch's start
    worlds = [World(r, 3) for r in range(3)]
    shards = [shard_batch(batch, order, w) for w in worlds]
    assert [len(s) for s in shards] == [1, 1, 1]
    assert torch.equal(torch.cat(shards).sort().values, torch.cat([batch, order[:1]]).sort().values)
    full = order[:6]
    assert torch.equal(torch.stack([shard_batch(full, order, w) for w in worlds], 1).reshape(-1), full)


def test_a_sharded_loader_yields_this_ranks_part_of_every_one_process_batch() -> None:
    x, y = torch.arange(20.0).unsqueeze(1), torch.arange(20)
    single = list(TensorLoader(x, y, 8, shuffle=True, seed=3))
    parts = [list(TensorLoader(x, y, 8, shuffle=True, seed=3, world=World(r, 2))) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(single) == 3
    for k, (_, yb) in enumerate(single):  # batches of 8, 8 and 4: split evenly, no padding
        merged = torch.cat([parts[0][k][1], parts[1][k][1]])
        assert torch.equal(merged.sort().values, yb.sort().values)


def test_secateurs_run_nproc_2_trains_with_torchrun_and_only_rank_0_writes(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(tiny_recipe()))
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "secateurs",
            "run",
            str(recipe),
            "--nproc",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(secateurs.__file__).parents[1])},
    )
    # both ends of stderr: a rank's own error comes first, torchrun's summary of it last
    assert done.returncode == 0, (
        done.stderr if len(done.stderr) < 8000 else done.stderr[:5000] + done.stderr[-3000:]
    )
    assert done.stdout.count("results written to") == 1  # rank 0 prints, rank 1 stays quiet
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt", "recipe.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.yaml"]  # no second writer's leftovers


def test_a_worker_ends_with_its_code_and_its_buffered_output_and_logs_delivered() -> None:
    # exit_worker skips the interpreter's teardown (see its docstring): nothing buffered may be lost
    script = (
        "import logging, sys\n"
        "from secateurs.core.distributed import exit_worker\n"
        "logging.basicConfig(stream=sys.stderr, format='%(message)s')\n"
        "logging.getLogger('x').warning('a log line')\n"
        "print('rank 0 table', end='')\n"  # no newline: still in stdout's buffer (a pipe)
        "sys.stderr.write('unflushed')\n"
        "exit_worker(3)\n"
        "print('never')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},  # buffered, as it may be
            "PYTHONPATH": str(Path(secateurs.__file__).parents[1]),
        },
    )
    assert done.returncode == 3
    assert done.stdout == "rank 0 table"
    assert done.stderr == "a log line\nunflushed"


def test_under_torchrun_a_failing_command_keeps_its_exit_code_and_error_line(tmp_path: Path) -> None:
    # as torchrun starts a worker, but with no rendezvous to join: main() leaves through exit_worker
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "MASTER_ADDR", "MASTER_PORT")}
    env |= {"WORLD_SIZE": "2", "RANK": "1", "PYTHONPATH": str(Path(secateurs.__file__).parents[1])}
    (tmp_path / "tiny.yaml").write_text("name: tiny\n")
    done = subprocess.run(
        [sys.executable, "-m", "secateurs", "run", "tiny.yaml", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "cannot join the process group" in done.stderr
    assert "Traceback" not in done.stderr
