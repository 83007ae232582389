"""Specification of a fast start: `import secateurs`, `secateurs --help` (of every command) and
`secateurs methods` import no torch, and what they print is still the whole truth.

Each check runs in a fresh interpreter (this test process has torch and every registry loaded).
`secateurs methods` prints the catalogue generated into `front/catalogue.json` while no registry
is loaded, so that file must equal the live registries; plug-ins switch it to the live listing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import secateurs
from secateurs.core.errors import ConfigError
from secateurs.core.plugins import provide, providers
from secateurs.core.registry import Registry
from secateurs.front.catalogue import REGENERATE, Catalogue, live_catalogue, stored_catalogue
from secateurs.front.cli import app

RUN_CLI = """
import json, sys
from secateurs.front.cli import main
sys.argv = ["secateurs", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as stop:
    code = stop.code
else:
    code = 0
sys.stderr.write("\\n" + json.dumps({"code": code, "torch": "torch" in sys.modules,
    "registries": "secateurs.core.registry" in sys.modules}))
"""


def python(code: str, *args: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter with a wide terminal (no table cell is cut short)."""
    env = {**os.environ, "COLUMNS": "300"}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def cli(*args: str, path: Path | None = None) -> tuple[str, dict[str, object]]:
    """stdout of `secateurs ARGS` run in a fresh process, and what it had imported when it ended."""
    done = python(RUN_CLI, json.dumps(list(args)), path=path)
    state = json.loads(done.stderr.strip().splitlines()[-1])
    return done.stdout, state


# -- nothing heavy at start-up ------------------------------------------------------------------
COMMANDS = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        *([c, "--help"] for c in COMMANDS),
        ["llm", "--help"],
        ["llm", "prune", "--help"],
        ["methods"],
        ["methods", "--wide"],
        ["methods", "magnitude"],
    ],
    ids=lambda args: " ".join(args),
)
def test_help_and_methods_do_not_import_torch(args: list[str]) -> None:
    out, state = cli(*args)
    assert state == {"code": 0, "torch": False, "registries": False}, out
    assert out.strip()


def test_import_secateurs_loads_torch_only_when_a_name_needs_it() -> None:
    done = python(
        textwrap.dedent(
            """
            import sys
            import secateurs
            assert "torch" not in sys.modules
            assert secateurs.ConfigError.__module__ == "secateurs.core.errors"  # cheap names are eager
            assert "torch" not in sys.modules
            from secateurs import prune, MaskSet
            assert "torch" in sys.modules
            from secateurs.methods.pruning import prune as real
            assert prune is real and secateurs.prune is real and MaskSet.__name__ == "MaskSet"
            print(sorted(secateurs.__all__))
            print(all(hasattr(secateurs, n) for n in secateurs.__all__))
            print(set(secateurs.__all__) <= set(dir(secateurs)))
            try:
                secateurs.no_such_name
            except AttributeError as err:
                print(err)
            """
        )
    )
    assert done.returncode == 0, done.stderr
    names, resolvable, listed, error = done.stdout.splitlines()
    assert names == str(sorted(secateurs.__all__))
    assert (resolvable, listed) == ("True", "True")
    assert error == "module 'secateurs' has no attribute 'no_such_name'"


def test_public_api_is_unchanged() -> None:
    assert secateurs.__all__ == [
        "CheckpointError",
        "ClosedFormClassifier",
        "ConfigError",
        "DataUnavailableError",
        "MaskSet",
        "ParamEnsemble",
        "ParamStats",
        "SecateursError",
        "__version__",
        "compute_masks",
        "ensemble",
        "fit_closed_form",
        "masks_of",
        "prune",
        "remove_masks",
        "run",
        "set_masks",
    ]
    from secateurs.core.masks import MaskSet, masks_of, remove_masks, set_masks
    from secateurs.methods.pruning import compute_masks, prune

    assert (secateurs.MaskSet, secateurs.masks_of, secateurs.remove_masks, secateurs.set_masks) == (
        MaskSet,
        masks_of,
        remove_masks,
        set_masks,
    )
    assert (secateurs.compute_masks, secateurs.prune) == (compute_masks, prune)


# -- the llm zoo registers into the model and data registries when they are first read ------------
def test_the_model_and_data_registries_load_the_llm_zoo_when_read() -> None:
    done = python(
        textwrap.dedent(
            """
            import sys
            from secateurs.data import DATASETS
            from secateurs.models import MODELS
            print("secateurs.llm.zoo" in sys.modules)
            print("hf" in MODELS, "secateurs.llm.zoo" in sys.modules, "text" in DATASETS.names())
            """
        )
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False", "True True True"]


def test_a_registry_imports_its_providers_once_before_it_is_first_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind = "startup-test widget"
    registry: Registry[int] = Registry(kind)
    (tmp_path / "startup_widgets.py").write_text(
        "from tests_registry_holder import REGISTRY\nREGISTRY.add('gear', 1, 'a gear')\n", encoding="utf-8"
    )
    (tmp_path / "startup_broken.py").write_text("raise ImportError('not today')\n", encoding="utf-8")
    holder = type(sys)("tests_registry_holder")
    holder.REGISTRY = registry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests_registry_holder", holder)
    monkeypatch.syspath_prepend(str(tmp_path))
    provide(kind, "startup_widgets")
    provide(kind, "startup_widgets")  # declared twice, imported once
    assert providers(kind) == ("startup_widgets",)
    assert "startup_widgets" not in sys.modules
    registry.add("spring", 2)  # registering does not load providers
    assert "startup_widgets" not in sys.modules
    assert registry.names() == ["gear", "spring"] and registry.help("gear") == "a gear"
    assert registry.get("gear") == 1 and "gear" in registry
    provide(kind, "startup_broken")
    for _ in range(2):  # a failing provider fails every read, not only the first
        with pytest.raises(ImportError, match="not today"):
            registry.names()
    monkeypatch.delitem(sys.modules, "startup_widgets")
    with pytest.raises(ValueError, match="provide"):
        provide("", "x")


# -- the catalogue `secateurs methods` prints --------------------------------------------------
def test_the_stored_catalogue_equals_the_live_registries() -> None:
    """Fails when a component, option, help text or preset changed without regenerating the file."""
    done = subprocess.run(
        [sys.executable, "-m", "secateurs.front.catalogue", "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{done.stderr} (run `{REGENERATE}` and commit front/catalogue.json)"


def test_the_catalogue_round_trips_and_covers_every_registry() -> None:
    stored = stored_catalogue()
    assert Catalogue.from_json(stored.to_json()) == stored
    axes = {c.axis for c in stored.components}
    for axis in ("criterion", "structure", "allocation", "schedule", "reset", "reconstruction"):
        assert axis in axes
    assert {"training-time method", "train.dst.method", "model", "data set", "sanity check"} <= axes
    assert [p.name for p in stored.presets] == [p.name for p in live_catalogue().presets]


def listed(out: str) -> dict[tuple[str, str], str]:
    """(axis, name) -> its cell text ("what it does options: ...", wrapped lines joined) of the
    components table `secateurs methods` printed."""
    found: dict[tuple[str, str], str] = {}
    key = None
    for row in out.split(" preset recipes ")[0].splitlines():
        cells = [c.strip() for c in row.split("│")]
        if len(cells) != 5 or cells[1] == "axis":
            continue
        if cells[2]:
            key = (cells[1], cells[2])
            found[key] = cells[3]
        elif key is not None:
            found[key] += " " + cells[3]
    return found


def test_methods_prints_every_component_with_its_options_and_every_preset() -> None:
    out, state = cli("methods", "--wide")  # every help text and option in full
    assert state["torch"] is False
    stored = stored_catalogue()
    assert listed(out) == {
        (c.axis, c.name): c.help + (f" options: {c.options}" if c.options else "") for c in stored.components
    }
    rows = out.splitlines()
    for preset in stored.presets:
        assert any(f" {preset.name} " in row and preset.description[:30] in row for row in rows), preset
    options = {(c.axis, c.name): c.options for c in stored.components}
    assert options["structure", "nm"] == "n=2, m=4"
    assert options["model", "mlp"] == "hidden=(100, 100), activation='relu', residual=False"
    assert options["reset", "rewind"] == "step=0, epoch=None"
    assert options["schedule", "iterative"] == "rate=0.2, levels=None, sparsity=None, layer_rates={}"
    assert options["training-time method", "bn_l1"] == "one value (number, minimum=0)"
    assert options["criterion", "magnitude"] == ""


PLUGIN = '''
"""A user's plug-in: one criterion."""
from secateurs.methods.criteria import CRITERIA, Criterion


class Doubled(Criterion):
    """2|θ|: a user's criterion."""

    name = "doubled"

    def __init__(self, *, factor: float = 2.0) -> None:
        self.factor = factor

    def score(self, ctx):
        return {n: self.factor * p.detach().abs() for n, p in ctx.params().items()}


CRITERIA.add("doubled", Doubled)
'''


def test_a_plugin_is_listed_with_its_options(tmp_path: Path) -> None:
    (tmp_path / "startup_plugin.py").write_text(PLUGIN, encoding="utf-8")
    out, state = cli("methods", "--wide", "--plugin", "startup_plugin", path=tmp_path)
    assert state["code"] == 0 and state["registries"] is True
    found = listed(out)
    assert found["criterion", "doubled"] == "2|θ|: a user's criterion. options: factor=2.0"
    del found["criterion", "doubled"]
    assert found == listed(cli("methods", "--wide")[0])  # and the built-ins, as without the plug-in


def test_an_installed_entry_point_plugin_is_listed(tmp_path: Path) -> None:
    """A package declaring `secateurs.plugins` is imported by `methods` with no --plugin."""
    (tmp_path / "startup_plugin.py").write_text(PLUGIN, encoding="utf-8")
    info = tmp_path / "startup_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: startup-plugin\nVersion: 1.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[secateurs.plugins]\ndoubled = startup_plugin\n", encoding="utf-8"
    )
    out, state = cli("methods", "--wide", path=tmp_path)
    assert state["code"] == 0 and state["torch"] is True  # listing a plug-in may import it
    assert listed(out)["criterion", "doubled"] == "2|θ|: a user's criterion. options: factor=2.0"


def test_a_component_registered_in_process_is_listed() -> None:
    from typer.testing import CliRunner

    from secateurs.methods.allocations import ALLOCATIONS

    def halves(layers: list[object], sparsity: float, *, share: float = 0.5) -> dict[str, int]:
        """Half to each side (a test's allocation)."""
        raise NotImplementedError

    ALLOCATIONS.add("startup_halves", halves)
    try:
        result = CliRunner().invoke(app, ["methods", "--wide"], env={"COLUMNS": "300"})
    finally:
        ALLOCATIONS.remove("startup_halves")
    assert result.exit_code == 0, result.output
    assert (
        listed(result.stdout)["allocation", "startup_halves"]
        == "Half to each side (a test's allocation). options: share=0.5"
    )


def test_an_unimportable_plugin_is_one_error() -> None:
    _, state = cli("methods", "--plugin", "no_such_plugin_module")
    assert state["code"] == 2
    with pytest.raises(ConfigError, match="cannot import plug-in 'no_such_plugin_module'"):
        from secateurs.core.plugins import load_plugins

        load_plugins(["no_such_plugin_module"])
