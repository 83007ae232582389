"""secateurs: neural network pruning for PyTorch, every paradigm as one recipe pipeline.

Importing the package is cheap: torch and the registries load the first time a name that needs
them is used (`secateurs.prune`, `secateurs.MaskSet` …), so the command line starts in a fraction
of a second (`secateurs --help`, `secateurs methods`).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secateurs.core.errors import CheckpointError, ConfigError, DataUnavailableError, SecateursError
from secateurs.core.plugins import provide

if TYPE_CHECKING:
    from secateurs.core.masks import MaskSet, masks_of, remove_masks, set_masks
    from secateurs.methods.closed_form import ClosedFormClassifier, fit_closed_form
    from secateurs.methods.ensemble import ParamEnsemble, ensemble
    from secateurs.methods.pruning import compute_masks, prune
    from secateurs.methods.training.param_stats import ParamStats

__version__ = "0.1.0"

__all__ = [
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

_LAZY = {
    "MaskSet": "secateurs.core.masks",
    "masks_of": "secateurs.core.masks",
    "remove_masks": "secateurs.core.masks",
    "set_masks": "secateurs.core.masks",
    "compute_masks": "secateurs.methods.pruning",
    "prune": "secateurs.methods.pruning",
    "ClosedFormClassifier": "secateurs.methods.closed_form",
    "fit_closed_form": "secateurs.methods.closed_form",
    "ensemble": "secateurs.methods.ensemble",
    "ParamEnsemble": "secateurs.methods.ensemble",
    "ParamStats": "secateurs.methods.training.param_stats",
}
"""Public names whose modules import torch: imported on first use (PEP 562)."""

# The llm zoo registers the `hf` model and the token data sets; the model and data registries sit
# below it in the layers, so they import it the first time they are read rather than here.
provide("model", "secateurs.llm.zoo")
provide("data set", "secateurs.llm.zoo")


def __getattr__(name: str) -> Any:
    """The lazily imported public names (`prune`, `MaskSet` …), cached on the package once loaded."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'secateurs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def run(
    recipe: Any,
    *,
    overrides: list[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = False,
    model: Any = None,
    data: Any = None,
    metrics_log: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    quick: bool = False,
) -> Any:
    """Run a recipe (a YAML path, a preset name, a `Recipe` or a dict) and return its `RunResult`.

    `model` (an nn.Module, which is copied, or a factory called with the recipe's model options
    and, where it takes them, `input_shape` and `num_classes`) and `data` (what a data factory
    returns: `secateurs.data.factory`) replace the recipe's. With `out`, the recipe, metrics and
    final checkpoint are written there atomically; the state after each stage is kept there
    meanwhile, so an interrupted run continues with `resume=True` (bit for bit as if never
    stopped). `overwrite` replaces a previous run in `out` (`secateurs.pipeline.outputs`). `quick`
    applies the recipe's quick form (a few epochs, the same stages: `pipeline.recipe.quick_form`)
    before `overrides`.
    `metrics_log` (a `.csv` file or a TensorBoard directory) receives every metric as it is made
    (`secateurs.pipeline.metrics_log`).
    """
    from secateurs.core.distributed import world
    from secateurs.pipeline.outputs import run_directory, save_run
    from secateurs.pipeline.recipe import Recipe, load_recipe, recipe_from_raw, recipe_to_raw

    if isinstance(recipe, Recipe):
        if overrides or quick:  # a Recipe has no quick form: that is an error here
            recipe = recipe_from_raw(recipe_to_raw(recipe), recipe.name, overrides, quick=quick)
    elif isinstance(recipe, dict):
        recipe = recipe_from_raw(recipe, "<dict>", overrides, quick=quick)
    elif isinstance(recipe, str | Path):
        recipe = load_recipe(recipe, overrides, quick=quick)
    else:
        raise ConfigError(
            f"cannot run a {type(recipe).__name__}", fix="pass a YAML path, preset name, Recipe or dict"
        )
    if data is not None:
        from secateurs.data import splits_from

        data = splits_from(data, name="data")
    options = {"progress": progress, "model": model, "data": data}
    if not world().main:  # under torchrun only rank 0 checks and writes; every rank reads a resumed state
        return _run_logged(recipe, None, workdir=Path(out) if out is not None and resume else None, **options)
    if out is None:
        return _run_logged(recipe, metrics_log, **options)
    with run_directory(out, overwrite=overwrite, resume=resume) as workdir:  # checked before training
        result = _run_logged(recipe, metrics_log, workdir=workdir, **options)
        save_run(result, workdir, overwrite=True)
    return result


def _run_logged(recipe: Any, metrics_log: str | os.PathLike[str] | None, **options: Any) -> Any:
    """`run_recipe(recipe, **options)`, every metric also appended to `metrics_log` if given."""
    from secateurs.pipeline.runner import run_recipe

    if metrics_log is None:
        return run_recipe(recipe, **options)
    from secateurs.pipeline.metrics_log import MetricsLog

    with MetricsLog(metrics_log) as log:
        return run_recipe(recipe, on_metrics=log, **options)
