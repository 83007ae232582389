"""Writing a run's results to disk, all or nothing.

A run directory holds `recipe.yaml` (the resolved recipe), `metrics.json` (one record per
evaluation) and `model.pt` (weights, masks and what is needed to rebuild the model). Files are
first written into a hidden staging directory beside the target, which is then renamed into
place, so an interrupted write never leaves a half-filled run directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from torch import Tensor

from secateurs.core.checkpoint import load_checkpoint, save_checkpoint
from secateurs.core.errors import CheckpointError, ConfigError
from secateurs.core.fileio import atomic_directory
from secateurs.core.masks import MaskSet
from secateurs.pipeline.recipe import recipe_to_raw

if TYPE_CHECKING:
    from secateurs.pipeline.result import RunResult

CHECKPOINT_NAME = "model.pt"


def checkpoint_payload(result: RunResult) -> dict[str, Any]:
    recipe = result.recipe
    return {
        "model": result.model.state_dict(),
        "masks": result.masks.state_dict() if result.masks is not None else {},
        "meta": {
            "model": recipe.model.label,
            "model_factory": recipe.model.factory or "",
            "model_options": json.dumps(recipe.model.options),
            "data": recipe.data.label,
            "input_shape": list(result.data_info.input_shape),
            "num_classes": result.data_info.num_classes,
            "recipe": json.dumps(recipe.model_dump(mode="json", by_alias=True)),
        },
    }


def check_output_dir(out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """`out` as a Path, if a run may be written there: absent, an empty directory, or `overwrite`."""
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"output path {target} exists and is not a directory", fix="choose another --out")
    if target.exists() and not overwrite and any(target.iterdir()):
        raise ConfigError(
            f"output directory {target} already exists and is not empty", fix="choose another --out"
        )
    return target


def save_run(result: RunResult, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the run's files into `out` atomically; refuse to clobber unless `overwrite`."""
    target = check_output_dir(out, overwrite=overwrite)
    try:
        with atomic_directory(target) as staging:
            (staging / "recipe.yaml").write_text(
                yaml.safe_dump(recipe_to_raw(result.recipe), sort_keys=False), encoding="utf-8"
            )
            (staging / "metrics.json").write_text(json.dumps(result.records, indent=2), encoding="utf-8")
            save_checkpoint(staging / CHECKPOINT_NAME, checkpoint_payload(result))
    except OSError as err:
        raise CheckpointError(
            f"could not write the run directory {target} ({err})", fix="check free space and permissions"
        ) from None
    return target


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], MaskSet | None, dict[str, Any]]:
    """(model state_dict, masks, meta) of a secateurs checkpoint; a run directory works too."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    payload = load_checkpoint(p)
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{p} holds no model weights", fix="pass a model.pt written by `secateurs run`")
    state, masks_state = payload["model"], payload.get("masks") or {}
    if not isinstance(state, dict) or not isinstance(masks_state, dict):
        raise CheckpointError(
            "`model` and `masks` must be mappings of tensors",
            where=str(p),
            fix="pass a model.pt written by `secateurs run`",
        )
    check_masks_fit(masks_state, state, str(p))
    masks = MaskSet.from_state_dict(masks_state, where=str(p)) if masks_state else None
    return state, masks, dict(payload.get("meta") or {})


def check_masks_fit(masks: dict[str, Any], weights: dict[str, Any], where: str) -> None:
    """Every mask must name a weight of the same checkpoint and have its shape.

    Checked on reading, before any model is built: a mask of another shape would otherwise
    broadcast or fail later with a bare shape error far from the file that caused it.
    """
    for name, mask in masks.items():
        weight = weights.get(name)
        if not isinstance(weight, Tensor):
            raise CheckpointError(
                f"the checkpoint has a mask for {name!r} but no such weight "
                f"(weights: {', '.join(map(str, weights)) or 'none'})",
                where=where,
                fix="the masks come from another model: re-create the checkpoint with `secateurs run`",
            )
        if isinstance(mask, Tensor) and tuple(mask.shape) != tuple(weight.shape):
            raise CheckpointError(
                f"the mask for {name!r} has shape {tuple(mask.shape)} but the weight has shape "
                f"{tuple(weight.shape)}",
                where=where,
                fix="the masks come from another model: re-create the checkpoint with `secateurs run`",
            )
