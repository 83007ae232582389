"""README.md is the first thing a user reads: its examples must keep working."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from secateurs.core.masks import masks_of
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.results.sweep import expand_sweep, parse_sweep

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_starts_with_the_demo_and_test_commands() -> None:
    first = blocks("bash")[0]
    commands = [line for line in first.splitlines() if line and not line.startswith("#")]
    assert commands == [
        "pip install torch==2.13.0 -e . && secateurs demo",
        'pip install torch==2.13.0 -e ".[test]" && python -m pytest -n 2',
    ]
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci  # CI runs exactly the documented test command


def test_readme_recipe_example_validates() -> None:
    recipe_text, _ = blocks("yaml")
    recipe = recipe_from_raw(yaml.safe_load(recipe_text))
    assert recipe.name == "imp-rewind"
    assert [type(s).__name__ for s in recipe.stages] == ["TrainStage", "EvaluateStage", "RepeatStage"]


def test_readme_sweep_example_expands_to_its_grid() -> None:
    _, sweep_text = blocks("yaml")
    points = expand_sweep(parse_sweep(yaml.safe_load(sweep_text)))
    assert len(points) == 3 * 4 * 2 * 3
    assert {p.name for p in points} == {"oneshot-magnitude", "taylor", "iterative-magnitude"}
    assert all(p.recipe.beyond and p.recipe.train["epochs"] == 30 for p in points)


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (example,) = blocks("python")
    monkeypatch.chdir(tmp_path)  # it saves pruned.pt into the working directory
    namespace: dict[str, object] = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert (tmp_path / "pruned.pt").is_file()
    assert namespace["masks"].sparsity() == pytest.approx(0.9, abs=1e-5)  # type: ignore[attr-defined]
    later = masks_of(namespace["model"])  # type: ignore[arg-type]
    assert later is not None and later.sparsity() == pytest.approx(0.95, abs=1e-5)
