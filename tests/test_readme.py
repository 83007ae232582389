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


def _yaml(key: str) -> list[dict]:
    """The README's YAML examples that have `key` (recipes have `stages`, sweeps `recipes`)."""
    return [data for data in map(yaml.safe_load, blocks("yaml")) if key in data]


def test_readme_recipe_examples_validate() -> None:
    recipes = [recipe_from_raw(raw) for raw in _yaml("stages")]
    assert [r.name for r in recipes] == ["imp-rewind", "wanda-obs"]
    assert [type(s).__name__ for s in recipes[0].stages] == ["TrainStage", "EvaluateStage", "RepeatStage"]
    prune = recipes[1].stages[0]
    assert (prune.criterion, prune.calibration.mode, prune.reconstruct) == (
        "wanda",
        "sequential",
        {"method": "obs", "select": "fixed"},
    )


def test_readme_sweep_example_expands_to_its_grid() -> None:
    (sweep,) = _yaml("recipes")
    points = expand_sweep(parse_sweep(sweep))
    assert len(points) == 3 * 4 * 2 * 3
    assert {p.name for p in points} == {"oneshot-magnitude", "taylor", "iterative-magnitude"}
    assert all(p.recipe.beyond and p.recipe.train["epochs"] == 30 for p in points)


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example, _ = blocks("python")
    monkeypatch.chdir(tmp_path)  # it saves pruned.pt into the working directory
    namespace: dict[str, object] = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert (tmp_path / "pruned.pt").is_file()
    assert namespace["masks"].sparsity() == pytest.approx(0.9, abs=1e-5)  # type: ignore[attr-defined]
    later = masks_of(namespace["model"])  # type: ignore[arg-type]
    assert later is not None and later.sparsity() == pytest.approx(0.95, abs=1e-5)


def test_readme_extension_example_registers_a_criterion_that_works_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secateurs.methods.criteria import CRITERIA
    from secateurs.methods.pruning import compute_masks
    from secateurs.models import build_model

    _, plugin = blocks("python")
    (tmp_path / "my_plugins.py").write_text(plugin, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        raw = {
            "plugins": ["my_plugins"],
            "data": {"name": "synthetic", "options": {"input_shape": [8], "num_classes": 2}},
            "model": {"name": "mlp", "options": {"hidden": [16]}},
            "stages": [{"prune": {"criterion": "lamp", "sparsity": 0.75}}],
        }
        assert recipe_from_raw(raw).stages[0].criterion == "lamp"
        model = build_model("mlp", (8,), 2, seed=0, hidden=[16])
        masks = compute_masks(model, 0.75, criterion="lamp", allocation="global")
        assert masks.sparsity() == pytest.approx(0.75, abs=1e-9)
        # LAMP's largest weight of every layer scores 1, the maximum: no layer is emptied
        assert all(bool(m.any()) for m in masks.values())
    finally:
        CRITERIA.remove("lamp")
        import sys

        sys.modules.pop("my_plugins", None)
