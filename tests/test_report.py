"""`secateurs report`: tables over seeds, prune potential, plots, and clear errors."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from secateurs.core.errors import ConfigError
from secateurs.eval.potential import prune_potential
from secateurs.front.cli import app
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.results import ResultsDB, execute
from secateurs.results.report import accuracy_table, collect, potential_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def recipe(criterion: str, sparsity: float, seed: int) -> Any:
    return recipe_from_raw(
        {
            "name": f"tiny-{criterion}",
            "seed": seed,
            "data": {
                "name": "synthetic",
                "options": {"input_shape": [20], "num_classes": 3, "num_train": 96, "num_test": 48},
            },
            "model": {"name": "mlp", "options": {"hidden": [16]}},
            "sparsity": sparsity,
            "beyond": True,
            "train": {"iterations": 6, "batch_size": 32},
            "stages": [
                {"train": {}},
                {"evaluate": {"label": "dense", "latency": False}},
                {"prune": {"criterion": criterion}},
                {"evaluate": {"label": "pruned", "latency": False}},
            ],
        }
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    for criterion in ("magnitude", "random"):
        for sparsity in (0.5, 0.9):
            for seed in (0, 1):
                execute(recipe(criterion, sparsity, seed), root, name=criterion)
    return root


def test_accuracy_table_is_mean_and_std_over_seeds(root: Path) -> None:
    with ResultsDB(root / "results.db", create=False) as db:
        runs = collect(db)
        finals = {
            (r.name, r.config["sparsity"], r.config["seed"]): db.final_metrics(r.hash)["accuracy"]
            for r in db.list_runs()
        }
    assert len(runs) == 8 and {r.method for r in runs} == {"magnitude", "random"}
    table = accuracy_table(runs)
    for method in ("magnitude", "random"):
        cells = []
        for sparsity in (0.5, 0.9):
            values = [finals[(method, sparsity, seed)] for seed in (0, 1)]
            cells.append(f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}")
        assert f"| {method} | — | {cells[0]} | {cells[1]} | 2 |" in table  # nothing at 0 %: the dense column
    dense = [r.dense["accuracy"] for r in runs if r.dense is not None]
    assert len(dense) == 8
    assert f"| dense | {100 * statistics.fmean(dense):.2f} ± {100 * statistics.stdev(dense):.2f} |" in table


def test_potential_table_uses_the_dense_reference_per_shift(root: Path) -> None:
    with ResultsDB(root / "results.db", create=False) as db:
        runs = collect(db)
    table = potential_table(runs, delta=0.005)
    assert "| method | clean |" in table and "shifted_split" in table
    dense = statistics.fmean(r.dense["accuracy"] for r in runs if r.dense is not None)
    points = [
        (
            s,
            statistics.fmean(
                r.final["accuracy"] for r in runs if r.method == "magnitude" and r.sparsity == s
            ),
        )
        for s in (0.5, 0.9)
    ]
    expected = prune_potential(points, dense, 0.005)
    row = next(line for line in table.splitlines() if line.startswith("| magnitude |"))
    assert row.split(" | ")[1] == f"{100 * expected:g} %"


def test_dense_only_runs_are_the_dense_row_not_a_second_one(tmp_path: Path) -> None:
    dense = recipe("magnitude", 0.5, 0).model_dump(by_alias=True, exclude_none=True)
    dense["stages"] = dense["stages"][:2]  # train, evaluate "dense": a sweep's dense reference runs
    dense.pop("sparsity")
    execute(recipe_from_raw(dense), tmp_path, name="dense")
    execute(recipe("magnitude", 0.5, 0), tmp_path, name="magnitude")
    with ResultsDB(tmp_path / "results.db", create=False) as db:
        runs = collect(db)
    assert sorted((r.method, r.sparsity) for r in runs) == [("dense", 0.0), ("magnitude", 0.5)]
    table = accuracy_table(runs)
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")]
    assert rows == ["| method", "| dense", "| magnitude"]  # the dense run is in the one dense row
    potential = potential_table(runs)
    assert "| magnitude |" in potential and "| dense |" not in potential


def test_write_report_writes_markdown_and_valid_pngs(root: Path, tmp_path: Path) -> None:
    path = write_report(root, tmp_path / "rep")
    text = path.read_text()
    assert text.startswith("# secateurs report") and "8 finished runs" in text
    for png in ("accuracy_vs_remaining.png", "excess_error.png", "layer_sparsity.png"):
        assert (tmp_path / "rep" / png).read_bytes().startswith(PNG_MAGIC)
        assert f"]({png})" in text
    only = write_report(root, tmp_path / "only", name="rand*").read_text()
    assert "4 finished runs" in only and "| magnitude |" not in only


def test_report_errors_are_clear(tmp_path: Path, root: Path) -> None:
    with pytest.raises(ConfigError, match="no results database"):
        write_report(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ConfigError, match="no finished runs match"):
        write_report(root, tmp_path / "out", name="nothing-like-this")
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["report", "--root", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output


def test_report_command_prints_the_tables(root: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", "--root", str(root), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "magnitude" in result.output and (tmp_path / "r" / "report.md").is_file()
