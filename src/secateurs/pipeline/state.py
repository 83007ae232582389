"""A run's state between stages, saved after each one so an interrupted run resumes where it was.

What a later stage needs of earlier ones (weights and masks, rewind snapshots, the optimizer
state a rewind hands on, the dense parent, records, held-back control events, FLOPs so far) is
in `RunState` and the `Publisher`; `save_state` writes them atomically (`state.pt`, by rank 0
under torchrun) and `load_state` restores them, refusing a state written by another recipe.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secateurs.core.checkpoint import load_checkpoint, save_checkpoint
from secateurs.core.errors import CheckpointError, ConfigError
from secateurs.core.masks import MaskSet, masks_of, set_masks
from secateurs.methods.resets import Snapshot
from secateurs.pipeline.hashing import EXECUTION, essential
from secateurs.pipeline.publish import Publisher
from secateurs.pipeline.recipe import Recipe, recipe_from_raw

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


@dataclass
class RunState:
    """Everything besides the model and the published metrics that the next stage may need."""

    counter: int = 0  # stages run so far: derives per-stage seeds
    snapshots: dict[int, Snapshot] = field(default_factory=dict)
    pending_optimizer_state: dict[str, Any] | None = None  # handed on by a rewind to the next training
    trained_once: bool = False
    dense_state: dict[str, torch.Tensor] | None = None  # weights before the first prune
    last_training: dict[str, float] | None = None  # best_of() the training that made the weights
    train_flops: tuple[int, int] = (0, 0)  # training FLOPs so far, and those of the same steps dense
    kept: dict[str, Any] = field(default_factory=dict)  # handed on by training-time methods (param_stats)


def fingerprint(recipe: Recipe) -> str:
    return json.dumps(recipe.model_dump(mode="json", by_alias=True), sort_keys=True)


def same_recipe(saved: Any, recipe: Recipe) -> bool:
    """Whether a state file's recipe is this one: equal text, or equal non-default values apart
    from where and how fast it runs (a run interrupted on a GPU resumes on the CPU).

    The second test also accepts states written before a field with a no-op default was added.
    """
    if saved == fingerprint(recipe):
        return True

    def experiment(r: Recipe) -> dict[str, Any]:
        return {k: v for k, v in essential(r).items() if k not in EXECUTION}

    try:
        return experiment(recipe_from_raw(json.loads(saved))) == experiment(recipe)
    except (TypeError, ValueError, ConfigError):
        return False


def save_state(path: Path, recipe: Recipe, model: nn.Module, state: RunState, publisher: Publisher) -> None:
    """Write the state after a stage, atomically."""
    masks = masks_of(model)
    save_checkpoint(
        path,
        {
            "recipe": fingerprint(recipe),
            "counter": state.counter,
            "model": model.state_dict(),
            "masks": masks.state_dict() if masks is not None else None,
            "snapshots": {
                step: {"model": s.model_state, "optimizer": s.optimizer_state}
                for step, s in state.snapshots.items()
            },
            "pending_optimizer_state": state.pending_optimizer_state,
            "trained_once": state.trained_once,
            "records": publisher.records,
            "dense_state": state.dense_state,
            "last_training": state.last_training,
            "pending_controls": publisher.pending,
            "train_flops": list(state.train_flops),
            "kept": state.kept,
        },
    )


def load_state(path: Path, recipe: Recipe, model: nn.Module, publisher: Publisher) -> RunState | None:
    """The state saved after the last completed stage, into `model` and `publisher`; None if absent."""
    if not path.exists():
        return None
    saved = load_checkpoint(path)
    if not same_recipe(saved.get("recipe"), recipe):
        raise CheckpointError(
            f"{path} was written by a different recipe",
            fix="use a fresh working directory for a changed recipe, or delete the stale state file",
        )
    try:
        model.load_state_dict(saved["model"])
        masks = saved["masks"]
        set_masks(model, MaskSet.from_state_dict(masks, model, where=str(path)) if masks else None)
        flops, dense_flops = saved.get("train_flops", (0, 0))  # absent from states of older versions
        state = RunState(
            counter=int(saved["counter"]),
            snapshots={
                int(step): Snapshot(int(step), s["model"], s["optimizer"])
                for step, s in saved["snapshots"].items()
            },
            pending_optimizer_state=saved["pending_optimizer_state"],
            trained_once=bool(saved["trained_once"]),
            dense_state=saved["dense_state"],
            last_training=saved.get("last_training"),  # absent from states of older versions
            train_flops=(int(flops), int(dense_flops)),
            kept=dict(saved.get("kept") or {}),  # absent from states of older versions
        )
        publisher.records[:] = list(saved["records"])
        publisher.pending[:] = list(saved.get("pending_controls", []))
    except (KeyError, RuntimeError, TypeError) as err:
        raise CheckpointError(
            f"{path} is not a usable pipeline state ({err})", fix="delete it to start over"
        ) from None
    log.info("resuming after stage %d from %s", state.counter, path)
    return state
