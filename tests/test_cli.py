"""Specification of the command line, the run directory, `secateurs.run` and the demo.

User errors print one line starting with "error:" and exit with code 2, never a traceback; a
run directory appears complete (recipe.yaml, metrics.json, model.pt) or not at all.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from cli_helpers import assert_user_error, invoke
from tiny import tiny_recipe

import secateurs
import secateurs.front.cli as cli
import secateurs.front.console as console_module
import secateurs.front.demo as demo
import secateurs.pipeline.outputs as outputs
from secateurs.core.errors import CheckpointError, SecateursError
from secateurs.core.masks import masks_of
from secateurs.data import DATASETS, load_dataset
from secateurs.methods.allocations import ALLOCATIONS
from secateurs.methods.criteria import CRITERIA
from secateurs.methods.schedules import SCHEDULE_NAMES
from secateurs.methods.structures import STRUCTURES
from secateurs.models import MODELS
from secateurs.pipeline.recipe import load_recipe, preset_names
from secateurs.pipeline.runner import Pipeline

RECIPE = tiny_recipe()
RUN_FILES = ["metrics.json", "model.pt", "recipe.yaml"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables wide enough that no name is cut short (the runner is not a terminal)."""
    monkeypatch.setattr(cli, "console", console_module.make_console(width=250))
    monkeypatch.setattr(console_module, "err_console", console_module.make_console(width=250, stderr=True))


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    return path


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# -- run and inspect --------------------------------------------------------------------------
def test_run_writes_the_run_directory_and_inspect_reads_it(recipe_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "first"
    result = invoke("run", str(recipe_file), "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"results written to {out}" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES
    assert [p.name for p in out.parent.iterdir()] == ["first"]  # no staging directory left behind

    records = json.loads((out / "metrics.json").read_text())
    assert [r["label"] for r in records] == ["final"]
    assert records[0]["nonzero_macs"] == 368 - 184  # global prune of 368 weights to 0.5
    assert load_recipe(out / "recipe.yaml") == load_recipe(recipe_file)  # the resolved recipe re-runs

    state, masks, meta = outputs.read_checkpoint(out)
    assert masks is not None and masks.kept() == 184
    assert (meta["model"], meta["data"], meta["input_shape"], meta["num_classes"]) == (
        "mlp",
        "synthetic",
        [20],
        3,
    )
    assert torch.count_nonzero(state["features.1.weight"][~masks["features.1.weight"]]) == 0

    shown = invoke("inspect", str(out))
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith(f"{out}: model mlp on data "), shown.stdout  # no markup tags
    for row in masks.report():
        line = next(line for line in shown.stdout.splitlines() if row.name in line)
        assert f"{row.kept:,}" in line and f"{row.numel:,}" in line and f"{row.sparsity:.4f}" in line
    assert "masked parameters: sparsity 0.5000 (184 of 368 kept)" in shown.stdout
    assert "MACs per sample: 184 nonzero of 368" in shown.stdout
    assert invoke("inspect", str(out / "model.pt")).stdout == shown.stdout.replace(
        str(out), str(out / "model.pt")
    )


def test_run_with_set_overrides(recipe_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        "run", str(recipe_file), "--out", str(out), "--no-progress", "--set", "sparsity=0.75",
        "--set", "stages.2.evaluate.label=after",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = json.loads((out / "metrics.json").read_text())
    assert [(r["label"], r["nonzero_macs"]) for r in records] == [("after", 368 - 276)]
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["sparsity"] == 0.75
    assert saved["stages"][2] == {
        "evaluate": {"label": "after", "per_layer": False, "beyond": False, "latency": True}
    }


def test_run_into_a_non_empty_directory_changes_nothing(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    monkeypatch.setattr(Pipeline, "run", lambda self: pytest.fail("trained although the output is taken"))
    result = invoke("run", str(recipe_file), "--out", str(out), "--no-progress")
    assert_user_error(result, f"output directory {out} already exists and is not empty")
    assert tree(tmp_path) == before
    assert_user_error(invoke("run", str(recipe_file), "--out", str(recipe_file)), "is not a directory")


def test_run_directory_gets_the_usual_umask_permissions(recipe_file: Path, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        secateurs.run(recipe_file, out=tmp_path / "out")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def test_run_into_an_existing_empty_directory_works(recipe_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert invoke("run", str(recipe_file), "--out", str(out), "--no-progress").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES


def test_a_run_failing_midway_leaves_no_output_directory(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: Pipeline, stage: Any, level: int | None) -> None:
        raise SecateursError("evaluation exploded")

    monkeypatch.setattr(Pipeline, "_evaluate", fail)
    out = tmp_path / "out"
    assert_user_error(
        invoke("run", str(recipe_file), "--out", str(out), "--no-progress"), "evaluation exploded"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_a_failing_write_leaves_neither_the_directory_nor_its_staging_copy(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(path: Path, payload: dict[str, Any]) -> None:
        raise CheckpointError("disk full", where=str(path))

    monkeypatch.setattr(outputs, "save_checkpoint", fail)
    out = tmp_path / "runs" / "out"
    assert_user_error(invoke("run", str(recipe_file), "--out", str(out), "--no-progress"), "disk full")
    assert list((tmp_path / "runs").iterdir()) == []


def test_unwritable_output_is_a_user_error(recipe_file: Path, tmp_path: Path) -> None:
    out = recipe_file / "out"  # below a file: the directory cannot be created
    assert_user_error(
        invoke("run", str(recipe_file), "--out", str(out), "--no-progress"),
        f"cannot create the output directory {out}",
    )


def test_a_failing_file_write_is_a_user_error_and_leaves_nothing(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    # only the run directory's writer fails (the stages' state, saved before it, is written fine)
    monkeypatch.setattr(outputs, "json", SimpleNamespace(dumps=fail))
    out = tmp_path / "runs" / "out"
    result = invoke("run", str(recipe_file), "--out", str(out), "--no-progress")
    assert_user_error(result, f"could not write the run directory {out}", "No space left on device")
    assert list((tmp_path / "runs").iterdir()) == []


# -- user errors ------------------------------------------------------------------------------
def test_recipe_error_is_one_line_with_exit_code_2(recipe_file: Path) -> None:
    assert_user_error(
        invoke("run", str(recipe_file), "--set", "stages.1.prune.sparsity=1.5"),
        str(recipe_file),
        "stages.1.prune.sparsity: Input should be less than 1",
    )
    assert_user_error(invoke("run", "no-such-recipe"), "'no-such-recipe' is neither a file nor a preset")
    assert_user_error(
        invoke("run", str(recipe_file), "--set", "stages.9.prune.sparsity=0.5"), "list index below 3"
    )


def test_unknown_model_lists_the_valid_models(recipe_file: Path) -> None:
    result = invoke("run", str(recipe_file), "--set", "model.name=mpl")
    assert_user_error(result, "unknown model 'mpl'. Did you mean 'mlp'?", ", ".join(MODELS.names()))


def test_missing_fashion_mnist_says_how_to_install_it(recipe_file: Path, tmp_path: Path) -> None:
    empty = tmp_path / "fashion"
    empty.mkdir()
    result = invoke(
        "run",
        str(recipe_file),
        "--set",
        "data=fashion_mnist",
        env={"SECATEURS_FASHION_MNIST_DIR": str(empty)},
    )
    assert_user_error(
        result, "Fashion-MNIST is not installed", "apt-get install -y dataset-fashion-mnist", str(empty)
    )


def test_inspect_rejects_truncated_corrupt_and_foreign_files(recipe_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert invoke("run", str(recipe_file), "--out", str(out), "--no-progress").exit_code == 0
    data = (out / "model.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    assert_user_error(
        invoke("inspect", str(truncated)), str(truncated), "not a readable checkpoint: it is cut short"
    )
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    assert_user_error(invoke("inspect", str(garbage)), "not a readable checkpoint: it is not a PyTorch file")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.ones(2)}, foreign)
    assert_user_error(invoke("inspect", str(foreign)), "not a secateurs checkpoint")
    assert_user_error(invoke("inspect", str(tmp_path / "missing.pt")), "no checkpoint file exists here")


def test_inspect_rejects_weights_that_do_not_fit_the_recorded_model(
    recipe_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert invoke("run", str(recipe_file), "--out", str(out), "--no-progress").exit_code == 0
    payload = outputs.load_checkpoint(out / "model.pt")
    payload["meta"]["model_options"] = json.dumps({"hidden": [8]})
    outputs.save_checkpoint(out / "model.pt", payload)
    assert_user_error(invoke("inspect", str(out)), "weights do not fit model 'mlp'")


# -- listings ---------------------------------------------------------------------------------
def test_methods_lists_every_axis_and_preset() -> None:
    result = invoke("methods", "--wide")  # one row per component, its axis in the row
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    expected = [("criterion", n) for n in CRITERIA.names()]
    expected += [("allocation", n) for n in ALLOCATIONS.names()]
    expected += [("structure", n) for n in STRUCTURES.names()]
    expected += [("schedule", n) for n in SCHEDULE_NAMES]
    expected += [("reset", n) for n in ("keep", "rewind", "lr_rewind", "reinit", "orthp")]
    expected += [("control", n) for n in ("reinit", "random_mask", "finetune_only")]
    for axis, name in expected:
        assert any(f" {axis} " in row and f" {name} " in row for row in rows), (axis, name)
    for preset in preset_names():
        assert any(f" {preset} " in row and load_recipe(preset).description[:30] in row for row in rows), (
            preset
        )


def test_models_and_datasets_list_the_registered_names() -> None:
    models = invoke("models")
    assert models.exit_code == 0
    for name in MODELS.names():
        assert any(row.split()[1:2] == [name] for row in models.stdout.splitlines()), name
    found = invoke("datasets")
    assert found.exit_code == 0
    for name in DATASETS.names():
        assert any(row.split()[1:2] == [name] for row in found.stdout.splitlines()), name
    synthetic = next(row for row in found.stdout.splitlines() if " synthetic " in row)
    assert "available" in synthetic


def test_threads_must_be_positive(recipe_file: Path) -> None:
    assert_user_error(invoke("run", str(recipe_file), "--threads", "0"), "--threads must be at least 1")


# -- Python API -------------------------------------------------------------------------------
def test_python_run_accepts_a_dict_and_leaves_it_unchanged(tmp_path: Path) -> None:
    recipe = json.loads(json.dumps(RECIPE))
    recipe["data"]["options"]["input_shape"] = (20,)  # a tuple is fine from Python
    before = repr(recipe)
    result = secateurs.run(recipe, overrides=["sparsity=0.25"], out=tmp_path / "out")
    assert repr(recipe) == before
    assert result.recipe.sparsity == 0.25
    assert [r["label"] for r in result.records] == ["final"]
    assert result.final["nonzero_macs"] == 368 - 92
    assert masks_of(result.model).kept() == 276
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == result.records


def test_python_run_accepts_recipes_paths_and_presets_with_overrides(recipe_file: Path) -> None:
    base = load_recipe(recipe_file)
    by_object = secateurs.run(base, overrides=["stages.1.prune.sparsity=0.25"])
    by_path = secateurs.run(recipe_file, overrides=["stages.1.prune.sparsity=0.25"])
    assert by_object.recipe == by_path.recipe and by_object.records == by_path.records
    assert by_object.masks.kept() == 276
    assert base.stages[1].sparsity is None  # the given Recipe is not modified
    with pytest.raises(secateurs.ConfigError, match="cannot run a int"):
        secateurs.run(3)


def test_python_run_refuses_a_taken_output_before_training(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    monkeypatch.setattr(Pipeline, "run", lambda self: pytest.fail("trained although the output is taken"))
    with pytest.raises(secateurs.ConfigError, match="already exists and is not empty"):
        secateurs.run(recipe_file, out=tmp_path / "out")


# -- demo -------------------------------------------------------------------------------------
def test_demo_writes_its_table_and_a_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full quick demo takes ~30 s on MNIST-1D; the same machinery runs here on tiny data."""
    tiny = load_dataset("synthetic", input_shape=[20], num_classes=3, num_train=96, num_test=48)
    monkeypatch.setattr(demo, "load_dataset", lambda name: tiny)
    monkeypatch.setattr(
        demo,
        "DEMO_METHODS",
        [("one-shot magnitude", "oneshot-magnitude", []), ("iterative magnitude", "iterative-magnitude", [])],
    )
    monkeypatch.setattr(demo, "QUICK_SPARSITIES", [0.5, 0.75])
    out = tmp_path / "demo"
    result = invoke("demo", "--out", str(out), "--quick")
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "demo_results.json").read_text())
    assert [(r["method"], r["target"]) for r in rows] == [
        ("dense", 0.0),
        ("one-shot magnitude", 0.5),
        ("one-shot magnitude", 0.75),
        ("iterative magnitude", 0.5),
        ("iterative magnitude", 0.75),
    ]
    # MLP 20-100-100-3: 2000 + 10000 + 300 prunable weights.
    for row in rows:
        assert row["macs"] == 12300
        assert row["nonzero_macs"] == 12300 - round(row["target"] * 12300)
        assert row["sparsity"] == pytest.approx(row["target"], abs=1e-12)
    png = (out / "accuracy_vs_sparsity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy_vs_sparsity.png",
        "accuracy_vs_sparsity.svg",
        "demo_results.json",
    ]
    assert "one-shot magnitude" in result.stdout and "iterative magnitude" in result.stdout


def test_a_run_logged_to_a_file_shows_a_line_per_epoch_and_no_progress_silences_it(recipe_file: Path) -> None:
    shown = invoke("run", str(recipe_file))  # CliRunner's stderr is not a terminal: lines, not a bar
    assert shown.exit_code == 0, shown.output
    assert "samples/s" in shown.stderr and "ETA" in shown.stderr
    quiet = invoke("run", str(recipe_file), "--no-progress")
    assert quiet.exit_code == 0 and "samples/s" not in quiet.stderr
