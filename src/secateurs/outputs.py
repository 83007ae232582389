"""Writing a run's results to disk, all or nothing.

A run directory holds `recipe.yaml` (the resolved recipe), `metrics.json` (one record per
evaluation) and `model.pt` (weights, masks and what is needed to rebuild the model). Files are
first written into a hidden staging directory beside the target, which is then renamed into
place, so an interrupted write never leaves a half-filled run directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from secateurs.checkpoint import load_checkpoint, save_checkpoint
from secateurs.errors import CheckpointError, ConfigError
from secateurs.masks import MaskSet
from secateurs.pipeline import RunResult

CHECKPOINT_NAME = "model.pt"


def checkpoint_payload(result: RunResult) -> dict[str, Any]:
    recipe = result.recipe
    return {
        "model": result.model.state_dict(),
        "masks": result.masks.state_dict() if result.masks is not None else {},
        "meta": {
            "model": recipe.model.name,
            "model_options": json.dumps(recipe.model.options),
            "data": recipe.data.name,
            "input_shape": list(result.data_info.input_shape),
            "num_classes": result.data_info.num_classes,
            "recipe": json.dumps(recipe.model_dump(mode="json", by_alias=True)),
        },
    }


def save_run(result: RunResult, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the run's files into `out` atomically; refuse to clobber unless `overwrite`."""
    target = Path(out)
    if target.exists() and not overwrite and any(target.iterdir()):
        raise ConfigError(f"output directory {target} already exists and is not empty", fix="choose another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (staging / "recipe.yaml").write_text(
            yaml.safe_dump(result.recipe.model_dump(mode="json", by_alias=True), sort_keys=False), encoding="utf-8"
        )
        (staging / "metrics.json").write_text(json.dumps(result.records, indent=2), encoding="utf-8")
        save_checkpoint(staging / CHECKPOINT_NAME, checkpoint_payload(result))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], MaskSet | None, dict[str, Any]]:
    """(model state_dict, masks, meta) of a secateurs checkpoint; a run directory works too."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    payload = load_checkpoint(p)
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{p} holds no model weights", fix="pass a model.pt written by `secateurs run`")
    masks_state = payload.get("masks") or {}
    masks = MaskSet.from_state_dict(masks_state) if masks_state else None
    return payload["model"], masks, dict(payload.get("meta") or {})
