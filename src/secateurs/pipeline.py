"""The pipeline: runs a recipe's stages on one model.

Every method is a recipe, so this runner has no per-method code: it only knows the five stage
kinds. Seeds are derived from the recipe's seed, so the same recipe gives bit-identical masks
and weights.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secateurs.checkpoint import load_checkpoint, save_checkpoint
from secateurs.criteria import CRITERIA
from secateurs.data import DatasetInfo, DataSplits, load_dataset
from secateurs.errors import CheckpointError, ConfigError
from secateurs.eval import count_costs, evaluate
from secateurs.eval.beyond import beyond_accuracy
from secateurs.masks import MaskHandle, MaskSet, masks_of, remove_masks, set_masks
from secateurs.models import build_model
from secateurs.outputs import read_checkpoint
from secateurs.pruning import compute_masks
from secateurs.recipe import (
    EvaluateStage,
    GradualPrune,
    PruneSpec,
    PruneStage,
    Recipe,
    RepeatStage,
    ResetStage,
    TrainStage,
    walk,
)
from secateurs.reset import Snapshot, apply_reset
from secateurs.schedules import CubicSteps
from secateurs.train.config import OptimizerConfig
from secateurs.train.engine import Callback, TrainState, train
from secateurs.train.optim import build_optimizer

log = logging.getLogger(__name__)


STATE_FILE = "state.pt"


@dataclass
class MetricEvent:
    """Metrics as they are produced, for a results store: one per evaluation (or training eval row)."""

    stage: int  # sequence number of the stage in execution order (repeat levels unrolled)
    kind: str  # "train" or "evaluate"
    level: int | None  # repeat level (1-based), None outside repeats
    step: int | None  # optimizer step within the training stage; None for evaluate stages
    metrics: dict[str, float]


def numeric(row: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a record (labels, levels and per-layer tables left out)."""
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("level",)
    }


@dataclass
class RunResult:
    """What a recipe produced: the pruned model, its masks and one record per evaluation."""

    recipe: Recipe
    model: nn.Module
    masks: MaskSet | None
    data_info: DatasetInfo
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}


def model_metrics(model: nn.Module, data: DataSplits, *, per_layer: bool = False) -> dict[str, Any]:
    """Accuracy, loss, parameter and MAC counts (dense and nonzero), and mask sparsity."""
    scores = evaluate(model, data.test_loader())
    costs = count_costs(model, data.info.input_shape)
    masks = masks_of(model)
    out: dict[str, Any] = {
        "accuracy": scores["accuracy"],
        "loss": scores["loss"],
        "params": costs.params,
        "nonzero_params": costs.nonzero_params,
        "macs": costs.macs,
        "nonzero_macs": costs.nonzero_macs,
        "sparsity": masks.sparsity() if masks is not None else 0.0,
        "remaining": masks.density() if masks is not None else 1.0,
    }
    if per_layer:
        out["layers"] = costs.table_rows()
    return out


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


class GradualPruning(Callback):
    """Prunes to the cubic schedule's sparsity at its update steps during training."""

    def __init__(
        self, spec: GradualPrune, prune: Callable[[PruneSpec, float], MaskSet], default: float | None
    ):
        self.spec, self.prune, self.default = spec, prune, default
        self.steps: CubicSteps | None = None
        self.handle: MaskHandle | None = None

    def on_train_start(self, state: TrainState) -> None:
        self.steps = self.spec.schedule.resolve(state.steps_per_epoch, state.total_steps, self.default)
        self._maybe_prune(state)

    def on_step_end(self, state: TrainState) -> None:
        self._maybe_prune(state)

    def on_train_end(self, state: TrainState) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def _maybe_prune(self, state: TrainState) -> None:
        assert self.steps is not None
        if not self.steps.is_update_step(state.step):
            return
        target = self.steps.sparsity_at(state.step)
        masks = self.prune(self.spec, target)
        if self.handle is not None:
            self.handle.remove()
        self.handle = masks.attach(state.model, state.optimizer)


class RewindSnapshots(Callback):
    """Saves weights and optimizer state at the steps that `rewind` resets will need."""

    def __init__(self, steps: set[int], store: dict[int, Snapshot]) -> None:
        self.steps, self.store = steps, store

    def on_step_end(self, state: TrainState) -> None:
        if state.step in self.steps and state.step not in self.store:
            self.store[state.step] = Snapshot.take(state.model, state.step, state.optimizer)


class Pipeline:
    """Executes one recipe; `run()` returns a `RunResult`."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        progress: bool = False,
        data: DataSplits | None = None,
        workdir: str | os.PathLike[str] | None = None,
        on_metrics: Callable[[MetricEvent], None] | None = None,
    ) -> None:
        self.recipe = recipe
        self.progress = progress
        self.workdir = Path(workdir) if workdir is not None else None
        self.on_metrics = on_metrics
        self.data = data if data is not None else load_dataset(recipe.data.name, **recipe.data.options)
        info = self.data.info
        self.model = build_model(
            recipe.model.name, info.input_shape, info.num_classes, seed=recipe.seed, **recipe.model.options
        )
        if recipe.init_from is not None:
            load_initial_weights(self.model, recipe.init_from)
        self.snapshots: dict[int, Snapshot] = {0: Snapshot.take(self.model, 0)}
        self.rewind_steps = {
            s.step
            for s in walk(recipe.stages)
            if isinstance(s, ResetStage) and s.mode == "rewind" and s.step > 0
        }
        self._check_rewind_reachable()
        self.pending_optimizer_state: dict[str, Any] | None = None
        self.trained_once = False
        self.counter = 0  # stages run so far: derives per-stage seeds
        self.level: int | None = None  # repeat level of the stage being run
        self.dense_state: dict[str, torch.Tensor] | None = None  # weights before the first prune
        self.records: list[dict[str, Any]] = []
        self.resumed_from = self._resume() if self.workdir is not None else 0

    def _check_rewind_reachable(self) -> None:
        """Fail before any training when a rewind step lies beyond the first training stage."""
        if not self.rewind_steps:
            return
        first = next((s for s in walk(self.recipe.stages) if isinstance(s, TrainStage)), None)
        if first is None:
            raise ConfigError(
                f"rewind to step(s) {sorted(self.rewind_steps)} needs a training stage to save them",
                fix="add a train stage before the rewind, or rewind to step 0",
            )
        config = self.recipe.train_config(first.options)
        per_epoch = len(self.data.train_loader(config.batch_size))
        steps = (
            config.iterations if config.iterations is not None else round((config.epochs or 0) * per_epoch)
        )
        beyond = sorted(s for s in self.rewind_steps if s > steps)
        if beyond:
            raise ConfigError(
                f"rewind step(s) {beyond} lie beyond the first training stage, which runs {steps} steps",
                fix="rewind to a step the first training stage reaches",
            )

    # -- stage kinds --------------------------------------------------------------------------
    def run(self) -> RunResult:
        torch.manual_seed(self.recipe.seed)
        self._run_stages(self.recipe.stages, level=None, level_sparsity=self.recipe.sparsity)
        return RunResult(self.recipe, self.model, masks_of(self.model), self.data.info, self.records)

    def _run_stages(self, stages: list[Any], *, level: int | None, level_sparsity: float | None) -> None:
        for stage in stages:
            self.counter += 1
            if self.counter <= self.resumed_from and not isinstance(stage, RepeatStage):
                continue  # done before an interruption: its effects are in the restored state
            self.level = level
            if isinstance(stage, TrainStage):
                self._train(stage, level_sparsity)
            elif isinstance(stage, PruneStage):
                self._set_masks(
                    self._compute(stage, stage.sparsity if stage.sparsity is not None else level_sparsity)
                )
            elif isinstance(stage, ResetStage):
                seed = self.recipe.seed * 1000 + self.counter
                state = apply_reset(
                    self.model, stage.mode, snapshots=self.snapshots, step=stage.step, seed=seed
                )
                self.pending_optimizer_state = state
            elif isinstance(stage, EvaluateStage):
                self._evaluate(stage, level)
            elif isinstance(stage, RepeatStage):
                for i, target in enumerate(stage.schedule.levels(level_sparsity)):
                    log.info("level %d: target sparsity %.4f", i + 1, target)
                    self._run_stages(stage.stages, level=i + 1, level_sparsity=target)
            else:  # pragma: no cover - the recipe schema admits no other kind
                raise TypeError(f"unknown stage {stage!r}")
            if not isinstance(stage, RepeatStage):
                self._save_state()

    def _compute(self, spec: PruneSpec, sparsity: float | None) -> MaskSet:
        layers = spec.layers if spec.layers is not None else self.recipe.layers
        data = None
        if CRITERIA.get(spec.criterion).needs_data:
            loader = self.data.train_loader(spec.data_batch_size, seed=self.recipe.seed + self.counter)
            data = [batch for _, batch in zip(range(spec.data_batches), loader, strict=False)]
        return compute_masks(
            self.model,
            sparsity,
            criterion=spec.criterion,
            allocation=spec.allocation,
            structure=spec.structure,
            layers=layers,
            data=data,
            seed=self.recipe.seed * 1000 + self.counter,
            allow_collapse=spec.allow_collapse,
            criterion_options=spec.criterion_options,
            allocation_options=spec.allocation_options,
            structure_options=spec.structure_options,
        )

    def _set_masks(self, masks: MaskSet) -> MaskSet:
        if self.dense_state is None and masks_of(self.model) is None:
            self.dense_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        set_masks(self.model, masks)
        return masks

    def dense_parent(self) -> nn.Module | None:
        """The model as it was just before its first prune (None if it started pruned)."""
        if self.dense_state is None:
            return None
        parent = copy.deepcopy(self.model)
        remove_masks(parent)
        parent.load_state_dict(self.dense_state)
        return parent

    def _train(self, stage: TrainStage, level_sparsity: float | None) -> None:
        config = self.recipe.train_config(stage.options)
        callbacks: list[Callback] = []
        if not self.trained_once and self.rewind_steps:
            callbacks.append(RewindSnapshots(self.rewind_steps, self.snapshots))
        if stage.prune is not None:
            default = stage.prune.sparsity if stage.prune.sparsity is not None else level_sparsity
            callbacks.append(
                GradualPruning(stage.prune, lambda spec, s: self._set_masks(self._compute(spec, s)), default)
            )
        optimizer = None
        if self.pending_optimizer_state is not None:
            optimizer = rewound_optimizer(self.model, config.optimizer, self.pending_optimizer_state)
            self.pending_optimizer_state = None
        test_loader = self.data.test_loader()
        result = train(
            self.model,
            self.data.train_loader(config.batch_size, seed=self.recipe.seed * 1000 + self.counter),
            config,
            evaluate_fn=lambda m: evaluate(m, test_loader),
            callbacks=callbacks,
            masks=masks_of(self.model),
            seed=self.recipe.seed * 1000 + self.counter,
            progress=self.progress,
            optimizer=optimizer,
            description=f"stage {self.counter}: train",
        )
        for row in result.history:
            self._emit("train", row.get("step"), row)
        missing = self.rewind_steps - set(self.snapshots)
        if not self.trained_once and missing:
            raise ConfigError(
                f"rewind step(s) {sorted(missing)} lie beyond the first training stage",
                fix="rewind to a step the first training stage reaches",
            )
        self.trained_once = True

    def _evaluate(self, stage: EvaluateStage, level: int | None) -> None:
        row = {"label": stage.label or f"stage {self.counter}", "level": level}
        row.update(model_metrics(self.model, self.data, per_layer=stage.per_layer))
        if stage.beyond or self.recipe.beyond:
            row.update(
                beyond_accuracy(
                    self.model,
                    self.data,
                    dense=self.dense_parent(),
                    latency=stage.latency,
                    seed=self.recipe.seed,
                )
            )
        log.info("%s: accuracy %.4f, sparsity %.4f", row["label"], row["accuracy"], row["sparsity"])
        self.records.append(row)
        self._emit("evaluate", None, row)

    def _emit(self, kind: str, step: Any, row: dict[str, Any]) -> None:
        if self.on_metrics is not None:
            self.on_metrics(
                MetricEvent(self.counter, kind, self.level, None if step is None else int(step), numeric(row))
            )

    # -- resuming -------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        return json.dumps(self.recipe.model_dump(mode="json", by_alias=True), sort_keys=True)

    def _save_state(self) -> None:
        """After each stage: everything needed to continue from here, written atomically."""
        if self.workdir is None:
            return
        masks = masks_of(self.model)
        save_checkpoint(
            self.workdir / STATE_FILE,
            {
                "recipe": self._fingerprint(),
                "counter": self.counter,
                "model": self.model.state_dict(),
                "masks": masks.state_dict() if masks is not None else None,
                "snapshots": {
                    step: {"model": s.model_state, "optimizer": s.optimizer_state}
                    for step, s in self.snapshots.items()
                },
                "pending_optimizer_state": self.pending_optimizer_state,
                "trained_once": self.trained_once,
                "records": self.records,
                "dense_state": self.dense_state,
            },
        )

    def _resume(self) -> int:
        """Restore the state saved after the last completed stage; 0 when starting afresh."""
        assert self.workdir is not None
        path = self.workdir / STATE_FILE
        if not path.exists():
            return 0
        state = load_checkpoint(path)
        if state.get("recipe") != self._fingerprint():
            raise CheckpointError(
                f"{path} was written by a different recipe",
                fix="use a fresh working directory for a changed recipe, or delete the stale state file",
            )
        try:
            self.model.load_state_dict(state["model"])
            masks = state["masks"]
            set_masks(self.model, MaskSet.from_state_dict(masks, self.model) if masks else None)
            self.snapshots = {
                int(step): Snapshot(int(step), s["model"], s["optimizer"])
                for step, s in state["snapshots"].items()
            }
            self.pending_optimizer_state = state["pending_optimizer_state"]
            self.trained_once = bool(state["trained_once"])
            self.records = list(state["records"])
            self.dense_state = state["dense_state"]
        except (KeyError, RuntimeError, TypeError) as err:
            raise CheckpointError(
                f"{path} is not a usable pipeline state ({err})", fix="delete it to start over"
            ) from None
        log.info("resuming after stage %d from %s", state["counter"], path)
        return int(state["counter"])


def run_recipe(
    recipe: Recipe,
    *,
    progress: bool = False,
    data: DataSplits | None = None,
    workdir: str | os.PathLike[str] | None = None,
    on_metrics: Callable[[MetricEvent], None] | None = None,
) -> RunResult:
    """Run every stage of `recipe` and return the result.

    Without `workdir` nothing is written to disk. With it, the state after every stage is saved
    there (`state.pt`, atomically) and a later call with the same recipe resumes after the last
    completed stage, giving the same result as an uninterrupted run.
    """
    return Pipeline(recipe, progress=progress, data=data, workdir=workdir, on_metrics=on_metrics).run()
