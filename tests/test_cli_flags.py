"""Specification of the command line's flags (issue 19, CLI friction): --help that reads in 80 columns,
`run --out` with --overwrite and --resume, `demo --overwrite`, quick presets, specific schema-error
fixes, `export --out -` and the demo's mask-counted remaining weights."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import assert_user_error, invoke
from tiny import tiny_recipe
from typer.testing import CliRunner

import secateurs.front.cli as cli
import secateurs.front.console as console_module
import secateurs.front.demo as demo
from secateurs.core.masks import masks_of
from secateurs.data import load_dataset
from secateurs.front.llm_cli import llm_app
from secateurs.pipeline.recipe import (
    Recipe,
    RepeatStage,
    TrainStage,
    load_recipe,
    preset_names,
    recipe_from_raw,
    recipe_quick_form,
    walk,
)
from secateurs.pipeline.runner import STATE_FILE, Pipeline
from secateurs.results.runner import execute

RUN_FILES = ["metrics.json", "model.pt", "recipe.yaml"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables wide enough that no name is cut short (the runner is not a terminal)."""
    monkeypatch.setattr(cli, "console", console_module.make_console(width=250))
    monkeypatch.setattr(console_module, "err_console", console_module.make_console(width=250, stderr=True))


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# -- --help -----------------------------------------------------------------------------------
def every_command() -> list[list[str]]:
    names = [c.name or c.callback.__name__.replace("_", "-") for c in cli.app.registered_commands]  # type: ignore[union-attr]
    llm = [c.name or c.callback.__name__.replace("_", "-") for c in llm_app.registered_commands]  # type: ignore[union-attr]
    return [[], ["llm"]] + [[name] for name in names] + [["llm", name] for name in llm]  # groups too


@pytest.mark.parametrize("command", every_command(), ids=lambda c: " ".join(c) or "secateurs")
def test_help_shows_no_bool_type_and_every_option_has_help(command: list[str]) -> None:
    result = invoke(*command, "--help", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    assert "[default: no-" not in result.output  # a switch that is off unless given says nothing more
    for line in result.output.splitlines():
        assert len(line) <= 80, line
        # an option row with nothing after its name and type: an option without help
        row = re.fullmatch(r"│ (-[-\w]+)(?:\s+-\w)?(?:\s+--no-[-\w]+)?(?:\s+(<[^>]+>|[A-Z=]+))?\s*│", line)
        assert row is None, f"{' '.join(command)}: {row and row.group(1)} has no help text"


def test_verbose_says_what_it_does() -> None:
    result = invoke("run", "--help", env={"COLUMNS": "80"})
    verbose = next(line for line in result.output.splitlines() if "--verbose" in line)
    assert "log" in verbose, verbose


def test_help_text_paragraphs_are_not_broken_at_source_line_ends() -> None:
    result = invoke("run", "--help", env={"COLUMNS": "200"})
    assert "is a line per training epoch with its loss" in result.output  # one line in the source's two


# -- run --out: --overwrite and --resume ------------------------------------------------------
STAGES: list[dict[str, Any]] = [
    {"train": {}},
    {"evaluate": {"label": "dense"}},
    {
        "repeat": {
            "schedule": {"name": "iterative", "rate": 0.5, "levels": 2},
            "stages": [
                {"prune": {"criterion": "taylor"}},
                {"reset": {"mode": "rewind", "step": 2}},
                {"train": {"iterations": 4}},
                {"evaluate": {"label": "level"}},
            ],
        }
    },
]


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(*STAGES, iterations=6)), encoding="utf-8")
    return path


def run_into(recipe: Path, out: Path, *flags: str) -> Any:
    return invoke("run", str(recipe), "--out", str(out), "--no-progress", *flags)


def interrupt_after_stage(monkeypatch: pytest.MonkeyPatch, stage: int) -> None:
    """Ctrl-C right after stage `stage`'s state is saved."""
    original = Pipeline._save_state

    def save_then_interrupt(self: Pipeline) -> None:
        original(self)
        if self.counter == stage:
            raise KeyboardInterrupt

    monkeypatch.setattr(Pipeline, "_save_state", save_then_interrupt)


@pytest.mark.parametrize("stage", [1, 4])
def test_an_interrupted_run_resumes_bit_for_bit(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: int
) -> None:
    whole = tmp_path / "whole"
    assert run_into(recipe_file, whole).exit_code == 0

    out = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_after_stage(patch, stage)
        stopped = run_into(recipe_file, out)
    assert stopped.exit_code == 130, stopped.output
    assert f"saved in {out}; add --resume" in stopped.stderr
    assert sorted(p.name for p in out.iterdir()) == [STATE_FILE]

    assert_user_error(run_into(recipe_file, out), "holds an interrupted run", "--resume to continue it")
    resumed = run_into(recipe_file, out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES
    assert tree(out) == tree(whole)  # metrics, recipe and checkpoint, byte for byte


def test_resume_of_an_absent_directory_starts_a_run(recipe_file: Path, tmp_path: Path) -> None:
    assert run_into(recipe_file, tmp_path / "new", "--resume").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == RUN_FILES


def test_resume_of_a_finished_run_is_refused(recipe_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_into(recipe_file, out).exit_code == 0
    before = tree(out)
    assert_user_error(run_into(recipe_file, out, "--resume"), "holds a finished run", "--overwrite")
    assert tree(out) == before


def test_resume_of_another_recipes_state_is_refused(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        interrupt_after_stage(patch, 1)
        assert run_into(recipe_file, out).exit_code == 130
    result = run_into(recipe_file, out, "--resume", "--set", "seed=7")
    assert_user_error(result, "written by a different recipe")


def test_overwrite_replaces_a_run_directory(recipe_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_into(recipe_file, out).exit_code == 0
    taken = run_into(recipe_file, out, "--set", "sparsity=0.75")
    assert_user_error(taken, f"output directory {out} already exists", "--overwrite to replace it")
    result = run_into(recipe_file, out, "--overwrite", "--set", "sparsity=0.75")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES
    assert yaml.safe_load((out / "recipe.yaml").read_text())["sparsity"] == 0.75
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "staged.yaml"]  # nothing set aside


def test_overwrite_starts_afresh_instead_of_resuming(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, out = tmp_path / "whole", tmp_path / "out"
    assert run_into(recipe_file, whole).exit_code == 0
    with monkeypatch.context() as patch:
        interrupt_after_stage(patch, 1)
        assert run_into(recipe_file, out).exit_code == 130
    resumed: list[int] = []
    original = Pipeline._resume
    monkeypatch.setattr(Pipeline, "_resume", lambda self: resumed.append(original(self)) or resumed[-1])
    assert run_into(recipe_file, out, "--overwrite").exit_code == 0
    assert resumed == [0]
    assert tree(out) == tree(whole)


def test_overwrite_refuses_a_directory_that_is_not_a_run(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "model.pt").write_bytes(b"mine too")
    before = tree(tmp_path)
    monkeypatch.setattr(Pipeline, "run", lambda self: pytest.fail("trained although the output is taken"))
    for flag in ("--overwrite", "--resume"):
        line = assert_user_error(run_into(recipe_file, out, flag), "not a secateurs run's (thesis.tex)")
        assert f"{flag} applies only to a directory holding a secateurs run's files" in line
    assert tree(tmp_path) == before


def test_overwrite_of_an_empty_directory_and_both_flags(recipe_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert_user_error(run_into(recipe_file, out, "--overwrite", "--resume"), "exclude each other")
    assert run_into(recipe_file, out, "--overwrite").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES


# -- demo --out: --overwrite; remaining weights counted from the masks -------------------------
@pytest.fixture
def tiny_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's machinery on tiny data with one method at one sparsity (seconds, not a minute)."""
    tiny = load_dataset("synthetic", input_shape=[20], num_classes=3, num_train=96, num_test=48)
    monkeypatch.setattr(demo, "load_dataset", lambda name: tiny)
    monkeypatch.setattr(demo, "DEMO_METHODS", [("SET", "dynamic-sparse", ["stages.2.train.dst.method=set"])])
    monkeypatch.setattr(demo, "QUICK_SPARSITIES", [0.5])


def test_demo_refuses_a_non_empty_directory_unless_overwrite(tmp_path: Path, tiny_demo: None) -> None:
    out = tmp_path / "demo"
    assert invoke("demo", "--out", str(out), "--quick").exit_code == 0
    first = tree(out)
    (out / "demo_results.json").write_text("[]")  # a previous demo's output, however it looks
    assert_user_error(invoke("demo", "--out", str(out), "--quick"), "already exists", "--overwrite")
    assert (out / "demo_results.json").read_text() == "[]"
    result = invoke("demo", "--out", str(out), "--quick", "--overwrite")
    assert result.exit_code == 0, result.output
    assert tree(out).keys() == first.keys()
    assert json.loads((out / "demo_results.json").read_text()) != []


def test_demo_overwrite_never_deletes_foreign_files(tmp_path: Path, tiny_demo: None) -> None:
    out = tmp_path / "home"
    out.mkdir()
    (out / "demo_results.json").write_text("[]")
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    result = invoke("demo", "--out", str(out), "--quick", "--overwrite")
    assert_user_error(result, "not the demo's (notes.txt)")
    assert tree(out) == before


def test_demo_remaining_weights_come_from_the_masks(
    tmp_path: Path, tiny_demo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DST updater's regrown weights start at exactly zero; they are kept all the same."""
    real = demo.run_recipe
    zeroed: list[int] = []

    def regrow_at_zero(recipe: Any, **options: Any) -> Any:
        result = real(recipe, **options)
        masks = masks_of(result.model)
        if masks is not None:
            for name, param in result.model.named_parameters():
                if name in masks:
                    kept = masks[name].flatten().nonzero()[:7, 0]
                    param.data.view(-1)[kept] = 0.0
                    zeroed.append(len(kept))
                    break
        return result

    monkeypatch.setattr(demo, "run_recipe", regrow_at_zero)
    out = tmp_path / "demo"
    result = invoke("demo", "--out", str(out), "--quick")
    assert result.exit_code == 0, result.output
    dense, pruned = json.loads((out / "demo_results.json").read_text())
    assert f"{pruned['remaining_params']:,}" in result.stdout  # the table shows what the masks keep
    assert dense["remaining_params"] == dense["params"]
    assert zeroed == [7]
    # MLP 20-100-100-3: 12300 masked weights, of which the masks prune `sparsity`
    assert pruned["params"] - pruned["remaining_params"] == round(pruned["sparsity"] * 12300)
    assert pruned["remaining_params"] - pruned["nonzero_params"] >= 7  # kept, though zero


# -- export to standard output ----------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results root with two finished tiny runs."""
    root = tmp_path_factory.mktemp("store") / "results"
    for sparsity in (0.5, 0.75):
        execute(recipe_from_raw(tiny_recipe(sparsity=sparsity)), root)
    return root


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_writes_the_rows_alone_to_stdout(store: Path, tmp_path: Path, fmt: str) -> None:
    to_file = invoke("export", "--root", str(store), "--out", str(tmp_path / f"runs.{fmt}"))
    assert to_file.exit_code == 0, to_file.output
    expected = (tmp_path / f"runs.{fmt}").read_text(encoding="utf-8")
    for out in (["--out", "-"], []):
        result = invoke("export", "--root", str(store), "--format", fmt, *out)
        assert result.exit_code == 0, result.output
        assert result.stdout == expected  # nothing else: no count line, no wrapping
        assert not result.stderr
    assert len(json.loads(invoke("export", "--root", str(store), "--format", "json").stdout)) == 2


def test_export_to_stdout_defaults_to_csv_and_writes_no_file(store: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["export", "--root", str(store)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("hash,")
    assert len(result.stdout.splitlines()) == 3
    assert not (Path.cwd() / "-").exists()


# -- schema errors: a fix for each kind of mistake --------------------------------------------
GENERIC = "see `secateurs methods` and the presets"


@pytest.mark.parametrize(
    ("override", "message", "fix"),
    [
        ("trian.epochs=3", "trian: Extra inputs", "did you mean 'train'? the recipe takes name, description"),
        ("sparsty=0.5", "sparsty: Extra inputs", "did you mean 'sparsity'?"),
        ("stages.2.prune.critrion=snip", "prune.critrion: Extra", "did you mean 'criterion'? stages.2"),
        ("stages.0.train.epoch=3", "stages.0.train.epoch: Extra", "did you mean 'epochs'?"),
        ("stages.0.train.dts={}", "stages.0.train.dts: Extra", "did you mean 'dst'?"),  # a method's name
        ("train.optimizer.lrr=0.1", "train.optimizer.lrr: Extra", "did you mean 'lr'? train.optimizer takes"),
        ("stages.2={trian: {}}", "unknown stage 'trian'", "did you mean 'train'?"),
        ("stages.4.reset={mode: rewind, stp: 3}", "has no option 'stp'", "did you mean 'step'?"),
        ("seed=abc", "seed: Input should be a valid integer", "give seed a whole number, e.g. --set seed=3"),
        ("stages.1.evaluate.per_layer=maybe", "got 'maybe'", "give stages.1.evaluate.per_layer true or"),
        ("train.optimizer=3", "train.optimizer: Input should be", "give train.optimizer a mapping"),
        ("stages.2.prune.sparsity=1.5", "less than 1, got 1.5", "give stages.2.prune.sparsity a value less"),
        ("precision=fp33", "got 'fp33'", "use one of 'fp32', 'bf16' or 'fp16', e.g. --set precision=fp32"),
    ],
)
def test_schema_errors_end_with_a_fix_for_their_kind(override: str, message: str, fix: str) -> None:
    line = assert_user_error(invoke("run", "oneshot-magnitude", "--set", override), message)
    assert line.split(" Fix: ")[1].startswith(fix), line
    assert GENERIC not in line


def test_a_typo_in_a_recipe_file_and_a_missing_field(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({**tiny_recipe(), "sparsty": 0.5}), encoding="utf-8")
    assert_user_error(invoke("run", str(typo)), str(typo), "sparsty", "Fix: did you mean 'sparsity'?")
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: no-stages\n", encoding="utf-8")
    line = assert_user_error(invoke("run", str(missing)), "stages: Field required")
    assert "Fix: add `stages` (the steps in order, e.g. [{train: {}}" in line and GENERIC not in line


@pytest.mark.parametrize("assignment", ["=0.5", "0.5", ".sparsity=0.5", "stages..prune=1"])
def test_set_without_a_key_says_so(assignment: str) -> None:
    line = assert_user_error(invoke("run", "oneshot-magnitude", "--set", assignment))
    assert line.startswith(f"error: --set needs KEY=VALUE, got {assignment!r}"), line
    assert "(top level)" not in line and "Extra inputs" not in line


# -- quick forms of recipes -------------------------------------------------------------------
def training_epochs(recipe: Recipe, budget: str = "epochs") -> float:
    """Epochs of training the recipe runs in all: every train stage, times the levels of its repeats
    (`budget="passes"`: the closed-form trainer's passes instead, which has no epochs)."""

    def total(stages: list[Any], times: int) -> float:
        epochs = 0.0
        for stage in stages:
            if isinstance(stage, TrainStage):
                epochs += times * (getattr(recipe.train_config(stage.options), budget, None) or 0)
            elif isinstance(stage, RepeatStage):
                epochs += total(stage.stages, times * len(stage.schedule.targets(recipe.sparsity)))
        return epochs

    return total(recipe.stages, 1)


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_has_a_quick_form_with_the_same_stages(preset: str) -> None:
    full, quick = load_recipe(preset), load_recipe(preset, quick=True)
    assert [type(s) for s in walk(quick.stages)] == [type(s) for s in walk(full.stages)]
    assert quick.model_dump(exclude={"train", "stages"}) == full.model_dump(exclude={"train", "stages"})
    assert training_epochs(quick) <= min(80, training_epochs(full) / 4), training_epochs(quick)
    assert training_epochs(quick, "passes") <= training_epochs(full, "passes") / 2  # closed-form training
    assert demo.quick_overrides(preset) == recipe_quick_form(preset)  # the demo's quick runs are these


def test_run_quick_runs_the_quick_form_and_set_overrides_it(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    result = invoke("run", "prune-at-init", "--quick", "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["train"]["epochs"] == 6 and "quick" not in saved
    assert [next(iter(s)) for s in saved["stages"]] == ["prune", "evaluate", "train", "evaluate"]
    assert load_recipe("prune-at-init", ["train.epochs=1"], quick=True).train["epochs"] == 1


def test_quick_needs_a_quick_form(tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(tiny_recipe()), encoding="utf-8")
    assert_user_error(invoke("run", str(plain), "--quick"), "has no quick form", "add `quick:")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**tiny_recipe(), "quick": "train.epochs=1"}), encoding="utf-8")
    assert_user_error(invoke("run", str(bad)), "`quick` must be a list of KEY=VALUE overrides")
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({**tiny_recipe(iterations=50), "quick": ["train.iterations=2"]}))
    assert load_recipe(own, quick=True).train["iterations"] == 2
    assert load_recipe(own).train["iterations"] == 50


def test_a_typo_in_a_components_options_gets_did_you_mean() -> None:
    line = assert_user_error(
        invoke("run", "oneshot-magnitude", "--set", "model={name: mlp, options: {hiden: [3]}}"),
        "model.options: model 'mlp' has no option 'hiden'",
    )
    assert "Fix: did you mean 'hidden'? valid options: " in line and GENERIC not in line
