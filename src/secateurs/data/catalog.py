"""The data-set registry and the option checking shared by every loader."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from secateurs.core.errors import ConfigError
from secateurs.core.registry import Registry
from secateurs.data.core import DataSplits

__all__ = ["DATASETS", "Loader", "dataset", "load_dataset"]

Loader = Callable[..., DataSplits]

DATASETS: Registry[Loader] = Registry("data set")


def dataset(name: str, help: str = "") -> Callable[[Loader], Loader]:
    """Register a loader whose keyword parameters are its options; returns the checked loader.

    The registered wrapper checks option names first, so a typo in a recipe becomes a
    `ConfigError` listing the valid options instead of a `TypeError` from deep inside.
    """

    def deco(fn: Loader) -> Loader:
        valid = list(inspect.signature(fn).parameters)

        @functools.wraps(fn)
        def loader(**options: Any) -> DataSplits:
            _check_options(name, options, valid)
            return fn(**options)

        DATASETS.add(name, loader, help)
        return loader

    return deco


def _check_options(name: str, options: dict[str, Any], valid: list[str]) -> None:
    unknown = sorted(set(options) - set(valid))
    if not unknown:
        return
    fix = f"valid options are: {', '.join(valid)}" if valid else "this data set takes no options"
    raise ConfigError(
        f"unknown option {', '.join(repr(u) for u in unknown)} for data set {name!r}",
        fix=fix,
    )


def load_dataset(name: str, **options: Any) -> DataSplits:
    """Load the registered data set `name` with its `options` (all local, nothing downloads)."""
    return DATASETS.get(name)(**options)
