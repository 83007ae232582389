"""Writing a run's results to disk, all or nothing.

A run directory holds `recipe.yaml` (the resolved recipe), `metrics.json` (one record per
evaluation) and `model.pt` (weights, masks and what is needed to rebuild the model). Files are
first written into a hidden staging directory beside the target, which is then renamed into
place, so an interrupted write never leaves a half-filled run directory.

While the run trains, the pipeline's state after each stage (`state.pt`) is kept in the directory,
the way the results store keeps it in a run's directory: a run interrupted (Ctrl-C, a kill) is
continued with `resume`; one that fails with a user error leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from torch import Tensor

from secateurs.core.checkpoint import load_checkpoint, save_checkpoint
from secateurs.core.errors import CheckpointError, ConfigError, SecateursError
from secateurs.core.fileio import atomic_directory
from secateurs.core.masks import MaskSet
from secateurs.pipeline.recipe import recipe_to_raw
from secateurs.pipeline.state import STATE_FILE

if TYPE_CHECKING:
    from secateurs.pipeline.result import RunResult

CHECKPOINT_NAME = "model.pt"
RUN_FILES = ("recipe.yaml", "metrics.json", CHECKPOINT_NAME, STATE_FILE)  # all a run directory may hold


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


def foreign_entries(target: Path, allowed: Collection[str]) -> list[str]:
    """Names in directory `target` that are none of `allowed`, nor the hidden leftover of an
    interrupted atomic write of one (`.NAME.*`): what replacing `target` must not delete."""
    return sorted(
        name
        for name in (p.name for p in target.iterdir())
        if name not in allowed and not any(name.startswith(f".{a}.") for a in allowed)
    )


def not_ours(target: Path, foreign: list[str], whose: str, flag: str) -> ConfigError:
    """The refusal to replace (or reuse) a directory that holds files of someone else's."""
    shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
    return ConfigError(
        f"output directory {target} holds files that are not {whose} ({shown}): {flag} applies only "
        f"to a directory holding {whose} files",
        fix="choose another --out, or move those files away",
    )


def prepare_run_dir(out: str | os.PathLike[str], *, overwrite: bool = False, resume: bool = False) -> Path:
    """`out` as a Path once it is fit for a run, before anything trains: absent or empty; with
    `resume`, holding an interrupted run's state; with `overwrite`, a run directory (whose stale
    state is dropped, so the run starts afresh; the old results stay until the new ones replace them).

    `overwrite` never replaces a directory holding anything but a run's files: it may be the user's.
    """
    target = check_output_dir(out, overwrite=True)
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume exclude each other", fix="pass one of them")
    entries = sorted(p.name for p in target.iterdir()) if target.is_dir() else []
    if not entries:
        return target
    foreign = foreign_entries(target, RUN_FILES)
    interrupted = STATE_FILE in entries and not foreign
    if not (overwrite or resume):
        holds = "" if foreign else ": it holds an interrupted run" if interrupted else ": it holds a run"
        raise ConfigError(
            f"output directory {target} already exists and is not empty{holds}",
            fix="choose another --out"
            + ("" if foreign else ", pass --overwrite to replace it")
            + (" or --resume to continue it" if interrupted else ""),
        )
    if foreign:
        raise not_ours(target, foreign, "a secateurs run's", "--overwrite" if overwrite else "--resume")
    if resume and not interrupted:
        raise ConfigError(
            f"output directory {target} holds a finished run: there is nothing to resume",
            fix=f"`secateurs inspect {target}` shows it; pass --overwrite to run it again",
        )
    if overwrite:
        (target / STATE_FILE).unlink(missing_ok=True)  # start afresh, not from the old run's stages
    return target


@contextmanager
def run_directory(
    out: str | os.PathLike[str], *, overwrite: bool = False, resume: bool = False
) -> Iterator[Path]:
    """The checked run directory (`prepare_run_dir`), the pipeline's working directory while it runs.

    A run that fails with a user error (a SecateursError) leaves no state behind, nor the directory
    if it made it, unless it was resuming: a resume point is for interruptions, which it survives.
    """
    target = prepare_run_dir(out, overwrite=overwrite, resume=resume)
    made = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)  # the stages' state goes here
    except OSError as err:
        raise ConfigError(
            f"cannot create the output directory {target} ({err})", fix="choose another --out"
        ) from None
    try:
        yield target
    except SecateursError:
        if not resume:
            (target / STATE_FILE).unlink(missing_ok=True)
            if made and target.is_dir() and not any(target.iterdir()):
                target.rmdir()
        raise


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
