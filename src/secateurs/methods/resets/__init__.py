"""Resets: which weights the surviving connections start from after a prune step.

- keep:    continue from the pruned weights (finetuning, PaT) with the next stage's own options.
- lr_rewind: learning-rate rewinding (Renda et al. 2020): keep the pruned weights and start the
           optimizer afresh (no momentum or Adam moments, step counters at 0); the next training
           stage replays the LR schedule from its start. The recipe checks that this stage uses
           the first training stage's optimizer and LR schedule. The weights are treated as by
           `keep`: the two differ in what the next stage must be, so the name says what was run.
- rewind:  restore the weights and buffers saved at training step k of the first training stage
           (k = 0: the initialisation, as in the lottery ticket hypothesis); the optimizer state
           saved at k (momentum, Adam moments and step counters) is handed to the next training
           stage, whose LR schedule starts afresh.
- reinit:  draw fresh initial weights (the "random reinit" control), same masks.
- orthp:   keep the pruned weights but make every masked weight matrix (semi-)orthogonal under
           its mask (OrthP, Wang et al. 2021), restoring the dynamical isometry pruning broke.
Masks are re-applied after every reset, so pruned weights stay exactly zero.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, masks_of
from secateurs.eval.isometry import orthogonalize_
from secateurs.models import reinitialize

ResetMode = Literal["keep", "rewind", "lr_rewind", "reinit", "orthp"]


@dataclass
class Snapshot:
    """Model state (weights and buffers) and optimizer state at one training step."""

    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None

    @classmethod
    def take(cls, model: nn.Module, step: int, optimizer: torch.optim.Optimizer | None = None) -> Snapshot:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
        return cls(step, state, opt)


def apply_reset(
    model: nn.Module, mode: ResetMode, *, snapshots: dict[int, Snapshot], step: int = 0, seed: int = 0
) -> dict[str, Any] | None:
    """Reset `model` in place; return the optimizer state the next training should start from."""
    optimizer_state = None
    if mode == "rewind":
        if step not in snapshots:
            saved = ", ".join(map(str, sorted(snapshots))) or "none"
            raise ConfigError(
                f"no snapshot at training step {step} to rewind to (saved steps: {saved})",
                fix="rewind to a step within the first training stage",
            )
        snap = snapshots[step]
        with torch.no_grad():
            model.load_state_dict(snap.model_state)
        optimizer_state = copy.deepcopy(snap.optimizer_state) if snap.optimizer_state else None
    elif mode == "reinit":
        reinitialize(model, seed=seed)
    elif mode == "orthp":
        _orthogonalize_masked(model, masks_of(model))
    elif mode not in ("keep", "lr_rewind"):  # both keep the weights; no optimizer state is handed on
        raise ConfigError(
            f"unknown reset mode {mode!r}",
            fix="use keep, lr_rewind, rewind or reinit, or orthp to orthogonalize a pruned model's weights",
        )
    masks = masks_of(model)
    if masks is not None:
        masks.apply(model)
    return optimizer_state


def _orthogonalize_masked(model: nn.Module, masks: MaskSet | None) -> None:
    """OrthP on every masked weight of two or more dimensions (masked biases are left as they are)."""
    if masks is None:
        raise ConfigError(
            "the orthp reset needs a pruned model, but this model has no masks",
            fix="put a prune stage before the orthp reset",
        )
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if params[name].dim() >= 2:
            orthogonalize_(params[name], mask)
