"""Plug-ins: modules that register components (criteria, structures, allocations, resets, training-time
methods …) into the registries when imported.

In Python, importing your module is enough. For recipes and the CLI, a recipe's `plugins: [my.module]`
imports them before the recipe is validated, and installed packages can declare an entry point in
the group `secateurs.plugins` (`[project.entry-points."secateurs.plugins"] my = "my.module"`),
which is imported once, the first time a recipe is read or the components are listed.

Built-in modules that register into a registry below them in the layers (the llm zoo's `hf` model
and token data sets) are declared with `provide`: the registry imports them the first time it is
read, so nothing has to import them eagerly (`import secateurs` stays free of torch).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterable
from typing import Any

from secateurs.core.errors import ConfigError

ENTRY_POINT_GROUP = "secateurs.plugins"
_entry_points_loaded = False
_providers: dict[str, list[str]] = {}


def provide(kind: str, module: str) -> None:
    """Declare that importing `module` registers entries into the registry of `kind` ("model" …).

    The registry imports it before it is first read (`Registry.get`, `names`, `help`, `in`).
    """
    if not kind or not module:
        raise ValueError(f"provide() needs a registry kind and a module name, got {kind!r}, {module!r}")
    modules = _providers.setdefault(kind, [])
    if module not in modules:
        modules.append(module)


def providers(kind: str) -> tuple[str, ...]:
    """The modules declared (by `provide`) to register into the registry of `kind`, in order."""
    return tuple(_providers.get(kind, ()))


def entry_point_names() -> list[str]:
    """`name = module` of every installed `secateurs.plugins` entry point, without importing any."""
    return [f"{e.name} = {e.value}" for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]


def load_plugins(modules: Iterable[str]) -> None:
    """Import each module (its registrations happen on import); a missing one is a ConfigError."""
    for name in modules:
        if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(
                f"a plug-in is a module name, got {name!r}",
                where="plugins",
                fix="name it as you would import it, e.g. mypackage.components",
            )
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(
                f"cannot import plug-in {name!r} ({err})",
                where="plugins",
                fix="install the package or put the module on PYTHONPATH",
            ) from None


def load_entry_points() -> None:
    """Import every installed package's `secateurs.plugins` entry point, once."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:  # a broken third-party plug-in must say so, not crash everything
            raise ConfigError(
                f"the plug-in {entry.name!r} ({entry.value}) failed to load: {type(err).__name__}: {err}",
                where=ENTRY_POINT_GROUP,
                fix="fix or uninstall the package that declares it",
            ) from None


def import_callable(path: str, *, where: str) -> Callable[..., Any]:
    """The callable that `path` ("package.module:function", or "…:Class.method") names.

    How a recipe points at the user's own code (a model or data factory): the module is
    imported the way Python imports it, so the package must be installed or on PYTHONPATH.
    """
    module_name, sep, attribute = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not (module_name and sep and attribute):
        raise ConfigError(
            f"{path!r} is not an import path",
            where=where,
            fix="write package.module:function, e.g. mypkg.models:resnet50",
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"cannot import module {module_name!r} of {path!r} ({err})",
            where=where,
            fix="install the package that holds it or add its directory to PYTHONPATH",
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(
                f"module {module_name!r} has no {attribute!r}",
                where=where,
                fix=f"check the name after the colon in {path!r}",
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(
            f"{path!r} is a {type(target).__name__}, not a callable",
            where=where,
            fix="name a function or class",
        )
    return target  # type: ignore[no-any-return]
