"""Plug-ins: modules that register components (criteria, structures, allocations, resets, training-time
methods …) into the registries when imported.

In Python, importing your module is enough. For recipes and the CLI, a recipe's `plugins: [my.module]`
imports them before the recipe is validated, and installed packages can declare an entry point in
the group `secateurs.plugins` (`[project.entry-points."secateurs.plugins"] my = "my.module"`),
which is imported once, the first time a recipe is read or the components are listed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable

from secateurs.core.errors import ConfigError

ENTRY_POINT_GROUP = "secateurs.plugins"
_entry_points_loaded = False


def load_plugins(modules: Iterable[str]) -> None:
    """Import each module (its registrations happen on import); a missing one is a ConfigError."""
    for name in modules:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a plug-in is a module name, got {name!r}", where="plugins")
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
