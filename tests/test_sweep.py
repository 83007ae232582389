"""Specification of sweeps (grid, shards, workers, failures) and the `sweep`/`runs`/`export` commands.

Every grid point is validated before anything runs: a bad sweep writes nothing at all. The
recipe is an MLP 20-16-3 on synthetic data; a global prune to sparsity s keeps 368 - 368·s weights.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import assert_user_error, invoke
from rich.console import Console
from tiny import tiny_recipe

import secateurs.front.cli as cli
import secateurs.front.console as console_module
from secateurs.core.errors import ConfigError
from secateurs.pipeline.recipe import load_recipe
from secateurs.results import ResultsDB, run_hash
from secateurs.results.runner import ALREADY_FINISHED, FAILED, FINISHED
from secateurs.results.sweep import (
    SweepPoint,
    expand_sweep,
    load_sweep,
    parse_shard,
    parse_sweep,
    run_sweep,
    select_shard,
)

RECIPE: dict[str, Any] = tiny_recipe()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(console_module, "err_console", Console(width=250, stderr=True))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A directory holding tiny.yaml, in which sweep files are written."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    return tmp_path


def write_sweep(folder: Path, **sweep: Any) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "recipes": ["tiny.yaml"], **sweep}), encoding="utf-8")
    return path


def points_of(folder: Path, **sweep: Any) -> list[SweepPoint]:
    path = write_sweep(folder, **sweep)
    return expand_sweep(load_sweep(path), path.parent)


# -- the grid ---------------------------------------------------------------------------------
def test_the_grid_is_the_product_of_the_axes_in_order(folder: Path) -> None:
    points = points_of(
        folder,
        recipes=["tiny.yaml", {"recipe": "tiny.yaml", "label": "short", "set": ["train.iterations=1"]}],
        sparsities=[0.25, 0.75],
        models=["mlp", {"name": "mlp", "options": {"hidden": [8]}}],
        seeds=[3, 4],
        set=["train.iterations=2"],
    )
    assert [p.index for p in points] == list(range(1, 17))
    got = [(p.name, p.recipe.sparsity, p.recipe.model.options, p.recipe.seed) for p in points]
    expected = [
        (name, sparsity, options, seed)
        for name in ("tiny", "short")
        for sparsity in (0.25, 0.75)
        for options in ({}, {"hidden": [8]})  # `model: mlp` replaces the recipe's whole model
        for seed in (3, 4)
    ]
    assert got == expected
    # the sweep's `set` applies after the axes, the entry's own `set` after that
    assert [p.recipe.train["iterations"] for p in points] == [2] * 8 + [1] * 8
    assert points[0].description == "recipe tiny.yaml, sparsity 0.25, model mlp, seed 3"
    assert points[2].description == (
        "recipe tiny.yaml, sparsity 0.25, model {name: mlp, options: {hidden: [8]}}, seed 3"
    )
    assert [p.hash for p in points] == [run_hash(p.recipe) for p in points]


def test_omitted_axes_keep_the_recipe_and_a_repeated_point_runs_once(folder: Path) -> None:
    points = points_of(folder, seeds=[0, 0, 1], data=[RECIPE["data"]])
    assert [(p.index, p.recipe.seed) for p in points] == [(1, 0), (3, 1)]
    assert points[0].recipe == load_recipe(folder / "tiny.yaml")  # the point is the recipe itself
    # two model-axis values made equal by the sweep's `set` are one run
    collapsed = points_of(folder, models=["mlp", "lenet300"], set=["model.name=mlp"])
    assert [p.index for p in collapsed] == [1]


def test_recipe_paths_are_relative_to_the_sweep_file(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder.parent)
    points = points_of(folder, recipes=["tiny.yaml", "oneshot-magnitude"], sparsities=[1e-05])
    assert [p.recipe.name for p in points] == ["tiny", "oneshot-magnitude"]
    assert [p.recipe.sparsity for p in points] == [1e-05, 1e-05]  # exact, through the YAML override


@pytest.mark.parametrize(
    ("sweep", "fragments"),
    [
        (
            {"sedes": [1]},
            [
                "invalid sweep: sedes: Extra inputs are not permitted",
                "did you mean 'seeds'?",
                "the sweep takes",
            ],
        ),
        (
            {"recipes": [{"recipe": "tiny.yaml", "lable": "x"}]},
            ["recipes.0.lable: Extra inputs", "did you mean 'label'?"],
        ),
        ({"sparsities": [0.5, 1.0]}, ["sparsities.1: Input should be less than 1"]),
        ({"seeds": []}, ["the sweep's grid is empty: `seeds` is an empty list"]),
        ({"recipes": []}, ["the sweep's grid is empty: `recipes` is an empty list"]),
        (
            {
                "recipes": [
                    "tiny.yaml",
                    {"recipe": "tiny.yaml", "label": "broken", "set": ["stages.1.prune.sparsity=1.5"]},
                ],
                "seeds": [0, 1],
            },
            [
                "sweep point 3 of 4 (recipe broken, seed 0) is invalid",
                "stages.1.prune.sparsity: Input should be less than 1",
            ],
        ),
        (
            {"recipes": ["no-such-recipe"]},
            ["sweep point 1 of 1", "'no-such-recipe' is neither a file nor a preset"],
        ),
    ],
    ids=[
        "unknown-key",
        "unknown-entry-key",
        "sparsity",
        "empty-axis",
        "no-recipes",
        "bad-point",
        "bad-recipe",
    ],
)
def test_a_bad_sweep_is_one_error_and_writes_nothing(
    folder: Path, sweep: dict[str, Any], fragments: list[str]
) -> None:
    path = write_sweep(folder, **sweep)
    before = sorted(folder.iterdir())
    root = folder / "results"
    assert_user_error(invoke("sweep", str(path), "--root", str(root)), *fragments)
    assert sorted(folder.iterdir()) == before  # no results root, no database, no run directories


def test_a_sweep_file_that_is_not_a_mapping_or_not_yaml_is_an_error(folder: Path) -> None:
    with pytest.raises(ConfigError, match="a sweep must be a YAML mapping"):
        parse_sweep(["tiny.yaml"])
    (folder / "bad.yaml").write_text("recipes: [a\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_sweep(folder / "bad.yaml")
    with pytest.raises(ConfigError, match="cannot read the sweep file"):
        load_sweep(folder / "missing.yaml")


# -- shards -----------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 2, 3, 5, 13])
def test_shards_are_disjoint_cover_the_grid_and_do_not_depend_on_its_order(folder: Path, count: int) -> None:
    points = points_of(folder, sparsities=[0.1, 0.2, 0.3], seeds=[0, 1, 2, 3])
    assert len(points) == 12
    shards = [select_shard(points, i, count) for i in range(1, count + 1)]
    hashes = [{p.hash for p in shard} for shard in shards]
    assert sum(len(h) for h in hashes) == 12 and set().union(*hashes) == {p.hash for p in points}
    assert max(map(len, hashes)) - min(map(len, hashes)) <= 1  # balanced
    for shard in shards:
        assert [p.index for p in shard] == sorted(p.index for p in shard)  # grid order kept
    shuffled = points[:]
    random.Random(0).shuffle(shuffled)
    assert [{p.hash for p in select_shard(shuffled, i, count)} for i in range(1, count + 1)] == hashes


def test_parse_shard() -> None:
    assert parse_shard("1/1") == (1, 1) and parse_shard(" 2 / 3 ") == (2, 3)
    for bad, message in [
        ("3/2", "shard '3/2' is out of range"),
        ("0/2", "shard '0/2' is out of range"),
        ("1/0", "shard '1/0' is out of range"),
        ("a/b", "shard 'a/b' is not of the form i/N"),
        ("1/2/3", "is not of the form i/N"),
        ("", "is not of the form i/N"),
        ("-1/2", "is not of the form i/N"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_shard(bad)


def test_a_bad_shard_on_the_command_line_writes_nothing(folder: Path) -> None:
    path = write_sweep(folder, seeds=[0, 1])
    for bad in ("3/2", "0/2", "a/b"):
        assert_user_error(invoke("sweep", str(path), "--root", str(folder / "r"), "--shard", bad), f"'{bad}'")
    assert_user_error(invoke("sweep", str(path), "--root", str(folder / "r"), "--workers", "0"), "--workers")
    assert not (folder / "r").exists()


def test_shards_run_one_after_another_fill_the_store_once(folder: Path) -> None:
    path = write_sweep(folder, sparsities=[0.25, 0.5, 0.75])
    root = folder / "results"
    for shard in ("2/2", "1/2", "1/2"):
        assert invoke("sweep", str(path), "--root", str(root), "--shard", shard).exit_code == 0
    with ResultsDB(root / "results.db") as db:
        records = db.list_runs()
    assert sorted(r.sparsity for r in records) == [0.25, 0.5, 0.75]
    assert {(r.status, r.attempts) for r in records} == {("finished", 1)}


# -- running ----------------------------------------------------------------------------------
def test_failures_are_recorded_and_the_sweep_goes_on(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = folder / "no-fashion"
    empty.mkdir()
    monkeypatch.setenv("SECATEURS_FASHION_MNIST_DIR", str(empty))
    path = write_sweep(folder, data=["fashion_mnist", RECIPE["data"]], seeds=[0, 1])
    root = folder / "results"
    result = invoke("sweep", str(path), "--root", str(root))
    assert result.exit_code == 1, result.output
    assert "sweep s: 2 finished, 0 skipped, 2 failed" in result.stdout
    with ResultsDB(root / "results.db") as db:
        records = db.list_runs()
    assert [(r.config["data"]["name"], r.status, r.attempts) for r in records] == [
        ("fashion_mnist", "failed", 1),
        ("fashion_mnist", "failed", 1),
        ("synthetic", "finished", 1),
        ("synthetic", "finished", 1),
    ]
    assert records[0].error is not None
    assert records[0].error.startswith("DataUnavailableError: Fashion-MNIST is not installed")

    summary = run_sweep(points_of(folder, data=["fashion_mnist", RECIPE["data"]], seeds=[0, 1]), root)
    assert [o.status for o in summary.outcomes] == [FAILED, FAILED, ALREADY_FINISHED, ALREADY_FINISHED]
    assert summary.line() == "0 finished, 2 skipped, 2 failed"
    assert summary.failed[0].error == records[0].error
    with ResultsDB(root / "results.db") as db:
        assert [r.attempts for r in db.list_runs()] == [2, 2, 1, 1]  # failed runs are retried


def test_workers_give_the_same_results_as_one_process(folder: Path) -> None:
    points = points_of(folder, sparsities=[0.25, 0.75])
    serial = run_sweep(points, folder / "serial")
    parallel = run_sweep(points, folder / "parallel", workers=2)  # two spawned processes
    assert serial.line() == parallel.line() == "2 finished, 0 skipped, 0 failed"
    by_hash = {o.hash: o.final for o in parallel.outcomes}
    assert {o.hash: o.final for o in serial.outcomes} == by_hash
    assert [by_hash[p.hash]["nonzero_macs"] for p in points] == [276, 92]
    with ResultsDB(folder / "parallel" / "results.db") as db:
        assert {(r.status, r.attempts) for r in db.list_runs()} == {("finished", 1)}
    with pytest.raises(ConfigError, match="--workers must be at least 1"):
        run_sweep(points, folder / "none", workers=0)


def test_an_interrupted_sweep_resumes_and_keeps_finished_runs(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import secateurs.results.sweep as sweep_module

    points = points_of(folder, sparsities=[0.25, 0.5, 0.75])
    root = folder / "results"
    real = sweep_module.execute

    def interrupt_the_second(recipe: Any, root: Any, **kwargs: Any) -> Any:
        if recipe.sparsity == 0.5:
            raise KeyboardInterrupt
        return real(recipe, root, **kwargs)

    monkeypatch.setattr(sweep_module, "execute", interrupt_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(points, root)
    with ResultsDB(root / "results.db") as db:
        first = [(r.sparsity, r.status, r.finished) for r in db.list_runs()]
    assert [s[:2] for s in first] == [(0.25, "finished"), (0.5, "pending"), (0.75, "pending")]
    monkeypatch.setattr(sweep_module, "execute", real)
    summary = run_sweep(points, root)
    assert [o.status for o in summary.outcomes] == [ALREADY_FINISHED, FINISHED, FINISHED]
    with ResultsDB(root / "results.db") as db:
        assert db.list_runs()[0].finished == first[0][2]


# -- runs and export --------------------------------------------------------------------------
@pytest.fixture
def filled(folder: Path) -> Path:
    """A results root with three finished runs (two labelled 'wide') and one failed one."""
    path = write_sweep(
        folder,
        recipes=["tiny.yaml", {"recipe": "tiny.yaml", "label": "wide", "set": ["model.options.hidden=[32]"]}],
        sparsities=[0.5, 0.75],
    )
    root = folder / "results"
    assert invoke("sweep", str(path), "--root", str(root)).exit_code == 0
    with ResultsDB(root / "results.db") as db:
        run = db.list_runs()[1].hash
        db.claim(run, version="x", git_revision=None)
        db.mark_failed(run, "SecateursError: it broke")
    return root


def test_runs_lists_and_filters(filled: Path) -> None:
    result = invoke("runs", "--root", str(filled))
    assert result.exit_code == 0, result.output
    with ResultsDB(filled / "results.db") as db:
        records = db.list_runs()
        accuracy = db.final_metrics(records[0].hash)["accuracy"]
    lines = [line for line in result.stdout.splitlines() if any(r.hash in line for r in records)]
    assert len(lines) == 4
    cells = re.split(r"\s{2,}", lines[0].strip())  # compact columns, two spaces or more apart
    assert cells == [records[0].hash, "tiny", "finished", "0", "0.5000", f"{accuracy:.4f}", "1"]
    failed_row = re.split(r"\s{2,}", lines[1].strip())
    assert failed_row[2] == "failed" and failed_row[4] == "0.7500"  # and no accuracy

    wide = invoke("runs", "--root", str(filled), "--name", "w*")
    assert sum(r.hash in wide.stdout for r in records) == 2 and "2 runs in" in wide.stdout
    failed = invoke("runs", "--root", str(filled), "--status", "failed")
    assert [r.hash in failed.stdout for r in records] == [False, True, False, False]
    assert_user_error(invoke("runs", "--root", str(filled), "--status", "done"), "unknown run status 'done'")
    assert_user_error(invoke("runs", "--root", str(filled / "nope")), "no results database at")


def test_runs_show_prints_the_config_and_the_metrics(filled: Path) -> None:
    with ResultsDB(filled / "results.db") as db:
        record = db.list_runs()[2]
        final = db.final_metrics(record.hash)
    result = invoke("runs", "--root", str(filled), "--show", record.hash[:6])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"run {record.hash}" in out and "wide" in out and "hidden:\n    - 32" in out
    evaluate = out[out.index("evaluate metrics") :].splitlines()  # a row per metric, a column per stage
    column = re.split(r"\s{2,}", evaluate[1].strip()).index("stage 3")

    def value(metric: str) -> str:
        row = next(row for row in evaluate if row.split()[:1] == [metric])
        return re.split(r"\s{2,}", row.strip())[column]

    assert value("accuracy") == f"{final['accuracy']:.4f}"
    assert value("nonzero_macs") == f"{int(final['nonzero_macs']):,}"
    assert int(final["nonzero_macs"]) == 368  # hidden 32: 20·32 + 32·3 = 736 weights, half kept
    assert "train metrics" in out and f"runs/{record.hash}/model.pt" in out
    assert_user_error(invoke("runs", "--root", str(filled), "--show", "zzz"), "no run 'zzz'")


def test_export_writes_csv_and_json_atomically(filled: Path, tmp_path: Path) -> None:
    result = invoke("export", "--root", str(filled), "--out", str(tmp_path / "all.csv"))
    assert result.exit_code == 0, result.output
    assert "4 runs written to" in result.stdout
    table = list(csv.DictReader(io.StringIO((tmp_path / "all.csv").read_text())))
    assert [(r["name"], r["status"], r["config.sparsity"]) for r in table] == [
        ("tiny", "finished", "0.5"),
        ("tiny", "failed", "0.75"),
        ("wide", "finished", "0.5"),
        ("wide", "finished", "0.75"),
    ]
    assert table[0]["final.nonzero_macs"] == "184.0" and table[3]["config.model.options.hidden"] == "[32]"
    assert table[1]["error"] == "SecateursError: it broke"

    out = tmp_path / "runs.data"
    assert invoke("export", "--root", str(filled), "--format", "json", "--out", str(out)).exit_code == 0
    rows = json.loads(out.read_text())
    assert [r["hash"] for r in rows] == [r["hash"] for r in table]
    assert rows[2]["final.nonzero_macs"] == 368.0 and rows[2]["config.model.options.hidden"] == [32]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left

    before = sorted(tmp_path.iterdir())
    assert_user_error(
        invoke("export", "--root", str(filled), "--format", "xml", "--out", str(tmp_path / "x")),
        "unknown export format 'xml'",
    )
    assert_user_error(
        invoke("export", "--root", str(filled), "--out", str(tmp_path / "x")), "cannot tell the format"
    )
    assert_user_error(
        invoke("export", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "x.csv")),
        "no results database",
    )
    assert sorted(tmp_path.iterdir()) == before


def test_a_sweep_over_a_users_model_factories_and_data_factory_runs_in_worker_processes(folder: Path) -> None:
    user_model = {"factory": "user_code.models:residual_net", "options": {"width": 4}}
    other_width = {"factory": "user_code.models:residual_net", "options": {"width": 6}}
    points = points_of(
        folder, models=[user_model, other_width], data=[{"factory": "user_code.data:patterns"}]
    )
    assert len({p.hash for p in points}) == 2  # the options are part of the run hash
    summary = run_sweep(points, folder / "store", workers=2)  # spawned: they import user_code themselves
    assert summary.line() == "2 finished, 0 skipped, 0 failed"
    again = run_sweep(points, folder / "store")
    assert again.line() == "0 finished, 2 skipped, 0 failed"
