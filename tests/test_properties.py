"""Property-based checks of recipes and sweep files (hypothesis).

Invalid input of any shape must stop with one ConfigError before anything is written: no
exception of another type, no database row, no run directory. Valid small recipes must prune
to exactly the requested count, as `secateurs.methods.allocations` documents its rounding.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tiny import tiny_recipe
from typer.testing import CliRunner

import secateurs.front.cli as cli
from secateurs.core.errors import ConfigError
from secateurs.methods.allocations import round_half_up
from secateurs.pipeline.recipe import STAGE_KINDS, Recipe, recipe_from_raw
from secateurs.pipeline.runner import run_recipe
from secateurs.results.sweep import expand_sweep, load_sweep

FAST = settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# The tiny MLP's prunable weights (default selection: Linear weights) and their sizes.
PRUNABLE = {"features.1.weight": 16 * 20, "classifier.weight": 3 * 16}

# -- building blocks ------------------------------------------------------------------------------
names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
unknown_names = names.map(lambda s: f"zz_{s}")  # never a stage kind, field or registry name
not_a_number = st.one_of(
    names.map(lambda s: f"x{s}"), st.lists(st.integers(), max_size=2), st.dictionaries(names, st.integers())
)
bad_sparsity = st.one_of(
    st.floats(max_value=-1e-6, allow_nan=False),
    st.floats(min_value=1.0, allow_nan=False),
    st.just(float("nan")),
    not_a_number,
)
not_a_mapping = st.one_of(st.integers(), names, st.lists(st.integers(), max_size=2))


def _replace(raw: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


BASE = tiny_recipe(
    {"train": {}},
    {"prune": {"criterion": "magnitude"}},
    {"repeat": {"schedule": {"name": "iterative", "rate": 0.5}, "stages": [{"prune": {}}, {"evaluate": {}}]}},
    {"evaluate": {"label": "final"}},
)


@st.composite
def invalid_recipes(draw: st.DrawFn) -> dict[str, Any]:
    """A valid recipe with one thing made invalid: a value, a type, a structure or an extra key."""
    mutation = draw(st.integers(0, 13))
    if mutation == 0:
        return _replace(BASE, ("sparsity",), draw(bad_sparsity))
    if mutation == 1:
        return _replace(BASE, ("stages", 1, "prune", "sparsity"), draw(bad_sparsity))
    if mutation == 2:
        return _replace(BASE, ("seed",), draw(st.one_of(not_a_number, st.floats(0.1, 0.9))))
    if mutation == 3:
        return _replace(BASE, (draw(unknown_names),), draw(st.integers()))  # an extra top-level key
    if mutation == 4:
        stage = draw(st.sampled_from([0, 1, 3]))
        kind = next(iter(BASE["stages"][stage]))
        return _replace(BASE, ("stages", stage, kind, draw(unknown_names)), 1)  # an extra stage key
    if mutation == 5:
        return _replace(BASE, ("stages", draw(st.integers(0, 3))), {draw(unknown_names): {}})  # unknown kind
    if mutation == 6:
        kinds = draw(st.lists(st.sampled_from(STAGE_KINDS), min_size=2, max_size=3, unique=True))
        return _replace(BASE, ("stages", 0), {kind: {} for kind in kinds})  # two stages in one
    if mutation == 7:
        return _replace(BASE, ("stages", draw(st.integers(0, 3))), draw(not_a_mapping))
    if mutation == 8:
        return _replace(BASE, ("stages",), draw(st.one_of(st.integers(), names, st.just({"train": {}}))))
    if mutation == 9:  # bad nesting: an invalid stage inside the repeat
        inner = draw(st.one_of(unknown_names.map(lambda k: {k: {}}), not_a_mapping))
        return _replace(BASE, ("stages", 2, "repeat", "stages", 0), inner)
    if mutation == 10:
        schedule = draw(
            st.one_of(
                unknown_names.map(lambda n: {"name": n}),
                st.floats(min_value=1.0, allow_nan=False).map(lambda r: {"name": "iterative", "rate": r}),
                not_a_mapping,
            )
        )
        return _replace(BASE, ("stages", 2, "repeat", "schedule"), schedule)
    if mutation == 11:
        key, value = draw(
            st.one_of(
                st.tuples(st.sampled_from(["iterations", "batch_size"]), st.integers(max_value=0)),
                st.tuples(unknown_names, st.integers()),
                st.tuples(st.just("optimizer"), unknown_names.map(lambda n: {"name": n})),
            )
        )
        return _replace(BASE, ("train", key), value)
    if mutation == 12:
        return _replace(BASE, ("stages", 2, "repeat", "stages", 1), {"reset": {"mode": draw(unknown_names)}})
    return _replace(BASE, ("model",), draw(st.one_of(st.integers(), st.just({"options": {}}))))


def _no_trace(root: Path, out: Path) -> None:
    """Nothing was written: no results store (so no database row, no run directory), no output."""
    assert not root.exists()
    assert not out.exists()


def _check_refused_everywhere(raw: Any) -> None:
    """recipe_from_raw raises a ConfigError; `secateurs run` and `secateurs sweep` write nothing."""
    with pytest.raises(ConfigError) as caught:
        recipe_from_raw(raw, "random.yaml")
    assert caught.value.what and str(caught.value).startswith("random.yaml: ")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "random.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
        sweep = folder / "sweep.yaml"
        sweep.write_text(yaml.safe_dump({"recipes": ["random.yaml"]}), encoding="utf-8")
        root, out = folder / "results", folder / "out"
        runner = CliRunner()
        for args in (
            ["sweep", str(sweep), "--root", str(root)],
            ["run", str(folder / "random.yaml"), "--out", str(out)],
        ):
            result = runner.invoke(cli.app, args)
            assert result.exit_code == 2, (args, result.output)
            assert "error:" in result.output and "Traceback" not in result.output
        _no_trace(root, out)


@FAST
@given(invalid_recipes())
def test_invalid_recipes_are_refused_with_a_config_error_and_leave_nothing(raw: dict[str, Any]) -> None:
    _check_refused_everywhere(raw)


@settings(max_examples=10, deadline=None, database=None)
@given(
    st.one_of(
        st.tuples(
            st.sampled_from(["train", "evaluate", "prune", "reset"]), st.one_of(st.integers(1, 9), names)
        ).map(lambda kv: _replace(BASE, ("stages", 0), {kv[0]: kv[1]})),
        st.tuples(st.sampled_from(["criterion", "allocation", "structure"]), unknown_names).map(
            lambda kv: _replace(BASE, ("stages", 1, "prune", kv[0]), kv[1])
        ),
        st.tuples(st.sampled_from(["model", "data"]), unknown_names).map(
            lambda kv: _replace(BASE, (kv[0],), kv[1])
        ),
    )
)
@example(_replace(BASE, ("stages", 0), {"train": "x"}))  # once a bare TypeError
@example(_replace(BASE, ("stages", 1, "prune", "criterion"), "zz_nope"))  # once accepted, failing at run time
def test_stage_bodies_and_registry_names_are_validated_with_the_recipe(raw: dict[str, Any]) -> None:
    _check_refused_everywhere(raw)


def test_the_base_of_the_invalid_recipes_is_valid() -> None:
    assert isinstance(recipe_from_raw(BASE), Recipe)


# -- sweep files ----------------------------------------------------------------------------------
SWEEP = {
    "name": "p",
    "recipes": ["tiny.yaml"],
    "sparsities": [0.5],
    "seeds": [0],
    "set": ["train.iterations=2"],
}


@st.composite
def invalid_sweeps(draw: st.DrawFn) -> Any:
    mutation = draw(st.integers(0, 11))
    if mutation == 0:
        return _replace(SWEEP, ("sparsities",), draw(st.lists(bad_sparsity, min_size=1, max_size=3)))
    if mutation == 1:
        return _replace(
            SWEEP, ("seeds",), draw(st.one_of(st.lists(not_a_number, min_size=1, max_size=2), names))
        )
    if mutation == 2:
        return _replace(SWEEP, (draw(unknown_names),), draw(st.integers()))
    if mutation == 3:
        return _replace(SWEEP, ("recipes",), draw(st.one_of(st.just([]), st.integers(), st.just({"a": 1}))))
    if mutation == 4:
        return _replace(SWEEP, ("recipes", 0), {"recipe": "tiny.yaml", draw(unknown_names): 1})
    if mutation == 5:
        return _replace(SWEEP, ("recipes", 0), draw(unknown_names))  # neither a file nor a preset
    if mutation == 6:
        axis = draw(st.sampled_from(["sparsities", "seeds", "models", "data"]))
        return _replace(SWEEP, (axis,), [])  # an empty grid
    if mutation == 7:
        return _replace(SWEEP, ("set",), [draw(names)])  # an override without `=`
    if mutation == 8:
        return _replace(SWEEP, ("set",), [f"{draw(unknown_names)}=1"])  # an override of an unknown field
    if mutation == 9:
        return _replace(SWEEP, ("models",), [{"name": "mlp", draw(unknown_names): 1}])
    if mutation == 10:
        return draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=2), names))  # not a mapping
    return _replace(
        SWEEP, ("recipes", 0), {"recipe": "tiny.yaml", "set": [f"sparsity={draw(bad_sparsity)!r}"]}
    )


@FAST
@given(invalid_sweeps())
def test_invalid_sweep_files_are_refused_with_a_config_error_and_leave_nothing(raw: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe()), encoding="utf-8")
        sweep = folder / "sweep.yaml"
        sweep.write_text(yaml.safe_dump(raw), encoding="utf-8")
        with pytest.raises(ConfigError) as caught:
            expand_sweep(load_sweep(sweep), folder)
        assert caught.value.what
        root = folder / "results"
        result = CliRunner().invoke(cli.app, ["sweep", str(sweep), "--root", str(root), "--workers", "2"])
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and "Traceback" not in result.output
        assert not root.exists()  # no database, so no row; no run directory


def test_the_base_sweep_is_valid(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe()), encoding="utf-8")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP), encoding="utf-8")
    assert len(expand_sweep(load_sweep(tmp_path / "sweep.yaml"), tmp_path)) == 1


# -- valid recipes prune exactly ------------------------------------------------------------------
def expected_kept(allocation: str, sparsity: float, sizes: dict[str, int]) -> dict[str, int] | int:
    """The documented rounding: per layer for `uniform`; the exact total for `global` and `erk`."""
    if allocation == "uniform":
        return {name: n - round_half_up(sparsity * n) for name, n in sizes.items()}
    total = sum(sizes.values())
    return total - round_half_up(sparsity * total)


@st.composite
def valid_recipes(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """(raw recipe, its allocation): one-shot or a few iterative levels, then training."""
    sparsity = draw(st.floats(0.05, 0.95))
    prune = {
        "criterion": draw(st.sampled_from(["magnitude", "random", "snip"])),
        "allocation": draw(st.sampled_from(["global", "uniform", "erk"])),
        "allow_collapse": True,  # at high sparsity a global ranking may empty the small layer
    }
    layers = draw(st.sampled_from([{}, {"exclude": ["classifier"]}]))
    if draw(st.booleans()):
        stages = [
            {"train": {}},
            {"prune": prune},
            {"train": {"iterations": 2}},
            {"evaluate": {"label": "final"}},
        ]
    else:
        rate = draw(st.sampled_from([0.5, 0.6, 0.7]))
        repeat = {
            "schedule": {"name": "iterative", "rate": rate},
            "stages": [{"prune": prune}, {"train": {"iterations": 1}}],
        }
        stages = [{"train": {}}, {"repeat": repeat}, {"evaluate": {"label": "final"}}]
    raw = tiny_recipe(*stages, iterations=2, sparsity=sparsity, layers=layers, seed=draw(st.integers(0, 3)))
    return raw, prune["allocation"]


@settings(max_examples=25, deadline=None, database=None)
@given(valid_recipes())
def test_valid_small_recipes_prune_to_exactly_the_requested_count(case: tuple[dict[str, Any], str]) -> None:
    raw, allocation = case
    result = run_recipe(recipe_from_raw(raw))
    sizes = {n: k for n, k in PRUNABLE.items() if not (raw["layers"] and n.startswith("classifier"))}
    masks = result.masks
    assert masks is not None and list(masks) == list(sizes)
    want = expected_kept(allocation, raw["sparsity"], sizes)
    got = {name: int(masks[name].sum()) for name in masks}
    if isinstance(want, dict):
        assert got == want
    else:
        assert sum(got.values()) == want
    weights = dict(result.model.named_parameters())
    for name in masks:  # pruned weights are exactly zero after the training that followed
        assert not bool(weights[name].detach()[~masks[name]].any()), name
    assert math.isclose(masks.sparsity(), 1 - sum(got.values()) / sum(sizes.values()))
