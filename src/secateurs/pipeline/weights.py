"""Where a run's weights and optimizer state come from besides training: an earlier run's checkpoint
(`init_from`), the snapshots rewinds go back to, and the optimizer state a rewind hands on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from secateurs.core.errors import CheckpointError, ConfigError
from secateurs.core.masks import MaskSet, set_masks
from secateurs.methods.resets import Snapshot
from secateurs.pipeline.outputs import read_checkpoint
from secateurs.train.config import OptimizerConfig
from secateurs.train.engine import Callback, TrainState
from secateurs.train.optim import build_optimizer


def load_initial_weights(model: nn.Module, source: str) -> None:
    """Load weights (and masks, if any) from a secateurs checkpoint into `model`, strictly."""
    state, masks, _ = read_checkpoint(source)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"init_from {source}: weights do not fit the recipe's model ({first})",
            fix="use a checkpoint of the same model and data set",
        ) from None
    if masks is not None:
        set_masks(model, MaskSet.from_state_dict(masks.state_dict(), model))


def rewound_optimizer(
    model: nn.Module, config: OptimizerConfig, state: dict[str, Any]
) -> torch.optim.Optimizer:
    """The stage's optimizer carrying the per-weight state (momentum, moments) of a rewind snapshot.

    Only the state is rewound: the hyper-parameters (lr, momentum, ...) stay those of the stage's
    own config, and the LR schedule starts afresh, instead of the snapshot's silently winning.
    """
    optimizer = build_optimizer(model.parameters(), config)
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    saved = [set(group) - {"params", "initial_lr"} for group in state["param_groups"]]
    if saved != [set(group) for group in fresh]:
        raise ConfigError(
            f"cannot rewind the optimizer state of the first training stage into a {config.name!r} optimizer",
            fix="use the same optimizer in the training stages before and after a rewind",
        )
    optimizer.load_state_dict(state)
    for group, hyper in zip(optimizer.param_groups, fresh, strict=True):
        group.pop("initial_lr", None)
        group.update(hyper)
    return optimizer


@contextmanager
def own_rng(model: nn.Module) -> Iterator[None]:
    """Run a block on its own copy of the global random state (CPU, and the model's CUDA devices)."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        yield


class RewindSnapshots(Callback):
    """Saves weights and optimizer state at the steps that `rewind` resets will need."""

    def __init__(self, steps: set[int], store: dict[int, Snapshot]) -> None:
        self.steps, self.store = steps, store

    def on_step_end(self, state: TrainState) -> None:
        if state.step in self.steps and state.step not in self.store:
            self.store[state.step] = Snapshot.take(state.model, state.step, state.optimizer)
