"""What `secateurs methods` lists: every registered component with what it does and its options,
and the preset recipes.

The registries fill as their modules are imported, and importing them imports torch (over a
second). So the built-in listing is generated from the live registries into `catalogue.json`
beside this module, and `secateurs methods` prints that file when no registry has been imported
in the process. It cannot go stale unnoticed: `tests/test_catalogue.py` fails when the file differs
from the registries, and `python -m secateurs.front.catalogue` rewrites it.

Plug-ins still show up: `methods` imports the entry points and `--plugin` modules first, and once
any registry is imported (by a plug-in, or by the user's own code calling the CLI in-process after
registering a component) the listing is built from the live registries instead.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CATALOGUE_FILE = Path(__file__).with_name("catalogue.json")
REGENERATE = "python -m secateurs.front.catalogue"
_REGISTRY_MODULE = "secateurs.core.registry"  # imported by every module that holds a registry


@dataclass(frozen=True)
class Component:
    """One registered component: its axis ("criterion", "model" …), name, what it does, options."""

    axis: str
    name: str
    help: str
    options: str  # "n=2, m=4": each option with its default; a required one by its name alone


@dataclass(frozen=True)
class Preset:
    """One preset recipe shipped in `secateurs/recipes/`."""

    name: str
    description: str


@dataclass(frozen=True)
class Catalogue:
    """Every component and preset, in the order `secateurs methods` prints them."""

    components: tuple[Component, ...]
    presets: tuple[Preset, ...]

    def to_json(self) -> str:
        payload = {
            "generated_by": f"{REGENERATE} (tests/test_catalogue.py checks it against the registries)",
            "components": [asdict(c) for c in self.components],
            "presets": [asdict(p) for p in self.presets],
        }
        return json.dumps(payload, indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Catalogue:
        payload = json.loads(text)
        return cls(
            tuple(Component(**c) for c in payload["components"]),
            tuple(Preset(**p) for p in payload["presets"]),
        )


def _plain(value: Any) -> str:
    """A default as a recipe would write it; objects without a stable text by their type's name."""
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    if isinstance(value, tuple | list) and all(
        v is None or isinstance(v, bool | int | float | str) for v in value
    ):
        return repr(value)
    if isinstance(value, dict) and not value:
        return "{}"
    return type(value).__name__


def _schema_options(schema: type, name: str) -> list[str]:
    """The fields of a pydantic model as a recipe spells them (aliases), each with its default
    (required ones by name alone); the `name` field that picks the component is not an option."""
    out = []
    for field_name, field in schema.model_fields.items():  # type: ignore[attr-defined]
        key = field.alias or field_name
        if key == "name" and field.default == name:
            continue
        if field.is_required():
            out.append(key)
        elif field.default_factory is not None:
            out.append(f"{key}={_plain(field.default_factory())}")
        else:
            out.append(f"{key}={_plain(field.default)}")
    return out


def _value_options(schema: Any) -> list[str]:
    """A block that is one value (`bn_l1: 1e-4`): its JSON-schema type and bounds."""
    from pydantic import TypeAdapter

    described = TypeAdapter(schema).json_schema()
    kind = described.pop("type", "any")
    return [f"one value ({', '.join([kind, *(f'{k}={v}' for k, v in described.items())])})"]


def _signature_options(obj: Any, *, every_parameter: bool) -> list[str]:
    """Options of a factory: keyword-only and defaulted parameters (every named one for a class)."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing to list
        return []
    out = []
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            out.append("**options")
            continue
        has_default = p.default is not inspect.Parameter.empty
        if p.kind is p.VAR_POSITIONAL or not (p.kind is p.KEYWORD_ONLY or has_default or every_parameter):
            continue
        out.append(f"{p.name}={_plain(p.default)}" if has_default else p.name)
    return out


def options_of(component: Any, name: str) -> str:
    """The options a component registered as `name` takes in a recipe, as one line ("" when none)."""
    from pydantic import BaseModel

    from secateurs.models import ModelSpec

    schema = getattr(component, "schema", None)
    if isinstance(component, type) and issubclass(component, BaseModel):
        options = _schema_options(component, name)  # a schedule is its own schema
    elif isinstance(schema, type) and issubclass(schema, BaseModel):
        options = _schema_options(schema, name)  # resets, training-time methods
    elif isinstance(component, type) and hasattr(component, "schema") and schema is not None:
        options = _value_options(schema)  # a training-time method configured by one value
    elif isinstance(component, ModelSpec):
        options = [
            f"{k}={_plain(v)}" if v is not inspect.Parameter.empty else k
            for k, v in component.options().items()
        ]
    elif isinstance(component, type):
        options = _signature_options(component, every_parameter=True)  # criteria, structures …
    elif inspect.isfunction(component):
        options = _signature_options(component, every_parameter=False)  # allocations, data sets …
    else:
        options = []  # a plain record (pooling, sanity check, control): no options
    return ", ".join(options)


def live_catalogue() -> Catalogue:
    """The catalogue built from the registries as they are in this process (imports them: torch)."""
    import yaml

    from secateurs.data import DATASETS
    from secateurs.methods.catalog import axes
    from secateurs.models import MODELS
    from secateurs.pipeline.recipe import preset_names, read_recipe_text

    registries = [*axes(), ("model", MODELS), ("data set", DATASETS)]
    components = tuple(
        Component(axis, name, registry.help(name), options_of(registry.get(name), name))
        for axis, registry in registries
        for name in registry.names()
    )
    presets = tuple(
        Preset(name, str(yaml.safe_load(read_recipe_text(name)[0]).get("description", "")))
        for name in preset_names()
    )
    return Catalogue(components, presets)


def stored_catalogue() -> Catalogue:
    """The catalogue of the built-in components, as generated into `catalogue.json` (no torch)."""
    return Catalogue.from_json(CATALOGUE_FILE.read_text(encoding="utf-8"))


def catalogue(plugins: Sequence[str] = ()) -> Catalogue:
    """Every component, plug-ins included: the installed entry points and `plugins` are imported
    first; the stored catalogue is used while no registry has been imported in this process (it
    then equals the live one, which `tests/test_catalogue.py` checks), the live one otherwise."""
    from secateurs.core.plugins import load_entry_points, load_plugins

    load_entry_points()
    load_plugins(plugins)
    if _REGISTRY_MODULE in sys.modules:
        return live_catalogue()
    return stored_catalogue()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m secateurs.front.catalogue [--check]`: rewrite the file, or say whether it is stale."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--check"]):
        sys.stderr.write(f"usage: {REGENERATE} [--check]\n")
        return 2
    text = live_catalogue().to_json()
    current = CATALOGUE_FILE.read_text(encoding="utf-8") if CATALOGUE_FILE.exists() else ""
    if args == ["--check"]:
        if text != current:
            sys.stderr.write(f"{CATALOGUE_FILE} differs from the registries: run {REGENERATE}\n")
            return 1
        return 0
    if text != current:
        CATALOGUE_FILE.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
