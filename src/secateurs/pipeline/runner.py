"""The pipeline: runs a recipe's stages on one model.

Every method is a recipe, so this runner has no per-method code: it only knows the five stage
kinds. Seeds are derived from the recipe's seed and the stage's number, so the same recipe gives
bit-identical masks and weights.

A repeat with `controls` branches off after each level's prune stage: each control runs the
rest of the level on a copy of the pipeline (see `secateurs.methods.controls`) with the same stage
numbers, and its metric events and records are held back until the ticket reaches the stage
that produced them. So a resumed run re-emits exactly what an interruption dropped, and the
ticket's own trajectory is the same with and without controls.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secateurs.core.checkpoint import load_checkpoint, save_checkpoint
from secateurs.core.distributed import check_same_masks, world
from secateurs.core.errors import CheckpointError, ConfigError
from secateurs.core.masks import MaskSet, masks_of, remove_masks, set_masks
from secateurs.data import DatasetInfo, DataSplits, class_balanced_batch, load_dataset
from secateurs.eval import count_costs, evaluate
from secateurs.eval.beyond import beyond_accuracy
from secateurs.eval.training_flops import TrainingFlops, forward_cost
from secateurs.methods.allocations import unmatched_patterns
from secateurs.methods.controls import CONTROLS, derived_seed, fork_index
from secateurs.methods.criteria import build_criterion
from secateurs.methods.layers import select_parameters
from secateurs.methods.pruning import compute_masks
from secateurs.methods.resets import Snapshot, apply_reset
from secateurs.methods.sanity import reinit_kept, sanity_seed
from secateurs.methods.schedules import CubicSteps, LevelTarget
from secateurs.methods.training.admm import ADMMConfig, ADMMTraining
from secateurs.methods.training.dst import DynamicSparseTraining
from secateurs.methods.training.selection import SelectionHandle, SparseSelection, attach_selection
from secateurs.models import build_model
from secateurs.pipeline.outputs import read_checkpoint
from secateurs.pipeline.recipe import (
    EvaluateStage,
    GradualPrune,
    PruneSpec,
    PruneStage,
    Recipe,
    RepeatStage,
    ResetStage,
    TrainStage,
    recipe_from_raw,
    walk,
    walk_paths,
)
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
    control: str | None = None  # the control experiment (e.g. "reinit") it belongs to; None: the run itself


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
        """The last evaluation of the run itself (control records left out)."""
        return next((r for r in reversed(self.records) if r.get("control") is None), {})


def best_of(history: list[dict[str, float]], metric: str = "test_accuracy") -> dict[str, float]:
    """Where a training stage's `metric` peaked (the earliest evaluation on ties): early stopping's pick.

    Returns `best_step` (the optimizer step within the stage) and `best_accuracy`; empty when
    the stage never evaluated.
    """
    rows = [r for r in history if metric in r]
    if not rows:
        return {}
    best = max(rows, key=lambda r: r[metric])  # max keeps the first of equal values
    return {"best_step": int(best["step"]), "best_accuracy": float(best[metric])}


def collapsed_layers(masks: MaskSet | None) -> int:
    """How many masked parameters keep no entry at all: each one disconnects the network."""
    return 0 if masks is None else sum(1 for n in masks if not bool(masks[n].any()))


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
        "collapsed_layers": collapsed_layers(masks),
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

    def on_train_start(self, state: TrainState) -> None:
        self.steps = self.spec.schedule.resolve(state.steps_per_epoch, state.total_steps, self.default)
        self._maybe_prune(state)

    def on_step_end(self, state: TrainState) -> None:
        self._maybe_prune(state)

    def _maybe_prune(self, state: TrainState) -> None:
        assert self.steps is not None
        if not self.steps.is_update_step(state.step):
            return
        state.install_masks(self.prune(self.spec, self.steps.sparsity_at(state.step)))


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
        self.world = world()
        self.progress = progress and self.world.main
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
        self.first_training = self._first_training()  # (batches per epoch, steps) of the first train stage
        self.rewind_steps = {
            self._rewind_step(s)
            for s in walk(recipe.stages)
            if isinstance(s, ResetStage) and s.mode == "rewind"
        } - {0}
        self._check_rewind_reachable()
        self._check_layer_rates()
        self.pending_optimizer_state: dict[str, Any] | None = None
        self.trained_once = False
        self.counter = 0  # stages run so far: derives per-stage seeds
        self.level: int | None = None  # repeat level of the stage being run
        self.dense_state: dict[str, torch.Tensor] | None = None  # weights before the first prune
        self.records: list[dict[str, Any]] = []
        self.last_training: dict[str, float] | None = None  # best_of() the training that made the weights
        self.control: str | None = None  # set on the copies that run a control
        self.pending_controls: list[dict[str, Any]] = []  # control events not yet published
        self.train_flops = (0, 0)  # training FLOPs so far, and those of the same steps on the dense model
        self.resumed_from = self._resume() if self.workdir is not None else 0

    def _first_training(self) -> tuple[int, int] | None:
        """(batches per epoch, optimizer steps) of the first training stage, where rewinds save."""
        first = next((s for s in walk(self.recipe.stages) if isinstance(s, TrainStage)), None)
        if first is None:
            return None
        config = self.recipe.train_config(first.options)
        per_epoch = len(self.data.train_loader(config.batch_size))
        steps = (
            config.iterations if config.iterations is not None else round((config.epochs or 0) * per_epoch)
        )
        return per_epoch, steps

    def _rewind_step(self, stage: ResetStage) -> int:
        """The rewind target in steps: `step`, or round(`epoch` · batches per epoch of the first training)."""
        if stage.epoch is None:
            return stage.step
        if self.first_training is None:
            raise ConfigError(
                f"rewind to epoch {stage.epoch} needs a training stage to count epochs in",
                fix="add a train stage before the rewind, or rewind to step 0",
            )
        return round(stage.epoch * self.first_training[0])

    def _check_rewind_reachable(self) -> None:
        """Fail before any training when a rewind step lies beyond the first training stage."""
        if not self.rewind_steps:
            return
        if self.first_training is None:
            raise ConfigError(
                f"rewind to step(s) {sorted(self.rewind_steps)} needs a training stage to save them",
                fix="add a train stage before the rewind, or rewind to step 0",
            )
        steps = self.first_training[1]
        beyond = sorted(s for s in self.rewind_steps if s > steps)
        if beyond:
            raise ConfigError(
                f"rewind step(s) {beyond} lie beyond the first training stage, which runs {steps} steps",
                fix="rewind to a step the first training stage reaches",
            )

    def _check_layer_rates(self) -> None:
        """Fail before any training when a schedule's `layer_rates` pattern names no prunable layer."""
        for path, stage in walk_paths(self.recipe.stages):
            if not (isinstance(stage, RepeatStage) and getattr(stage.schedule, "layer_rates", None)):
                continue
            where = ".".join(map(str, (*path, "repeat", "schedule", "layer_rates")))
            for prune in (s for s in stage.stages if isinstance(s, PruneStage)):
                layers = prune.layers if prune.layers is not None else self.recipe.layers
                names = select_parameters(self.model, layers)
                for pattern in unmatched_patterns(names, stage.schedule.layer_rates):  # type: ignore[union-attr]
                    raise ConfigError(
                        f"{where}: pattern {pattern!r} matches no prunable layer",
                        fix=f"prunable parameters are: {', '.join(names)}",
                    )

    # -- stage kinds --------------------------------------------------------------------------
    def run(self) -> RunResult:
        torch.manual_seed(self.recipe.seed)
        self._run_stages(self.recipe.stages, level=None, target=LevelTarget(self.recipe.sparsity))
        self._flush_controls()
        return RunResult(self.recipe, self.model, masks_of(self.model), self.data.info, self.records)

    def _run_stages(
        self, stages: list[Any], *, level: int | None, target: LevelTarget, controls: list[str] | None = None
    ) -> None:
        fork = fork_index(stages) if controls and self.control is None else None
        for index, stage in enumerate(stages):
            self.counter += 1
            if self.counter <= self.resumed_from and not isinstance(stage, RepeatStage):
                continue  # done before an interruption: its effects are in the restored state
            self.level = level
            self._flush_controls()
            self._run_stage(stage, level, target)
            if index == fork:
                self._run_controls(controls or [], stages[index + 1 :], level, target)
            if not isinstance(stage, RepeatStage):
                self._save_state()

    def _run_stage(self, stage: Any, level: int | None, target: LevelTarget) -> None:
        if isinstance(stage, TrainStage):
            self._train(stage, target.sparsity)
        elif isinstance(stage, PruneStage):
            if stage.sparsity is None:  # the level's target, with its per-layer overrides
                masks = self._compute(stage, target.sparsity, target.layer_sparsities)
            else:
                masks = self._compute(stage, stage.sparsity)
            self._set_masks(masks)
            if stage.sanity == "reinit":  # a seed of its own, not the recipe's
                reinit_kept(self.model, sanity_seed(self.recipe.seed * 1000 + self.counter, "reinit"))
            self.last_training = None
        elif isinstance(stage, ResetStage):
            seed = self.recipe.seed * 1000 + self.counter
            self.pending_optimizer_state = apply_reset(
                self.model, stage.mode, snapshots=self.snapshots, step=self._rewind_step(stage), seed=seed
            )
            self.last_training = None
        elif isinstance(stage, EvaluateStage):
            self._evaluate(stage, level)
        elif isinstance(stage, RepeatStage):
            for i, level_target in enumerate(stage.schedule.targets(target.sparsity)):
                log.info("level %d: target sparsity %.4f", i + 1, level_target.sparsity)
                self._run_stages(stage.stages, level=i + 1, target=level_target, controls=stage.controls)
        else:  # pragma: no cover - the recipe schema admits no other kind
            raise TypeError(f"unknown stage {stage!r}")

    # -- controls -----------------------------------------------------------------------------
    def _run_controls(
        self, names: list[str], stages: list[Any], level: int | None, target: LevelTarget
    ) -> None:
        """Run each control on a copy of this pipeline from here to the end of the level."""
        for name in names:
            control = CONTROLS.get(name)
            branch = self._fork(name)
            masks = masks_of(branch.model)
            assert masks is not None  # a prune stage just ran
            set_masks(branch.model, control.masks(masks, derived_seed(self.recipe.seed, self.counter, name)))
            log.info("level %s: control %s", level, name)
            with own_rng(branch.model):
                branch._run_stages(control.stages(stages), level=level, target=target)

    def _fork(self, control: str) -> Pipeline:
        """A copy that shares the recipe, data and snapshots so far, with its own model and records.

        It keeps this pipeline's stage counter, so its stages get the ticket's seeds and data order;
        what it publishes goes to `pending_controls`.
        """
        branch = copy.copy(self)
        branch.control = control
        branch.model = copy.deepcopy(self.model)
        branch.snapshots = dict(self.snapshots)
        branch.pending_optimizer_state = copy.deepcopy(self.pending_optimizer_state)
        branch.records = []
        branch.workdir, branch.on_metrics, branch.resumed_from = None, None, 0
        return branch

    def _flush_controls(self) -> None:
        """Publish the held-back control events of the stages reached so far (see the module doc)."""
        if self.control is not None:
            return
        due = [e for e in self.pending_controls if e["stage"] <= self.counter]
        self.pending_controls[:] = [e for e in self.pending_controls if e["stage"] > self.counter]
        for e in due:
            if e["record"] is not None:
                self.records.append(e["record"])
            self._emit(MetricEvent(e["stage"], e["kind"], e["level"], e["step"], e["metrics"], e["control"]))

    def _compute(
        self, spec: PruneSpec, sparsity: float | None, layer_sparsities: dict[str, float] | None = None
    ) -> MaskSet:
        layers = spec.layers if spec.layers is not None else self.recipe.layers
        data = None
        criterion = build_criterion(spec.criterion, **spec.criterion_options)
        per_class = spec.samples_per_class or criterion.samples_per_class
        if criterion.needs_data and per_class is not None:
            data = [class_balanced_batch(self.data, per_class, seed=self.recipe.seed + self.counter)]
        elif criterion.needs_data:
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
            layer_sparsities=layer_sparsities or None,
            input_shape=tuple(self.data.info.input_shape),
            rounds=spec.rounds,
            sanity=spec.sanity,
        )

    def _set_masks(self, masks: MaskSet) -> MaskSet:
        if self.dense_state is None and masks_of(self.model) is None:
            self.dense_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        set_masks(self.model, masks)
        check_same_masks(masks, f"the prune of stage {self.counter}")
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
        dynamic = (
            DynamicSparseTraining(stage.dst, seed=self.recipe.seed * 1000 + self.counter)
            if stage.dst is not None
            else None
        )
        cost = forward_cost(self.model, tuple(self.data.info.input_shape))
        flops = TrainingFlops(cost, config.batch_size, dynamic.dense_gradient_at if dynamic else None)
        callbacks: list[Callback] = [flops]  # first: it prices each step before others change the masks
        if dynamic is not None:
            callbacks.append(dynamic)
        if not self.trained_once and self.rewind_steps:
            callbacks.append(RewindSnapshots(self.rewind_steps, self.snapshots))
        if stage.prune is not None:
            default = stage.prune.sparsity if stage.prune.sparsity is not None else level_sparsity
            callbacks.append(
                GradualPruning(stage.prune, lambda spec, s: self._set_masks(self._compute(spec, s)), default)
            )
        admm = self._admm(stage.admm, level_sparsity) if stage.admm is not None else None
        if admm is not None:
            callbacks.append(admm)
        optimizer = None
        if self.pending_optimizer_state is not None:
            optimizer = rewound_optimizer(self.model, config.optimizer, self.pending_optimizer_state)
            self.pending_optimizer_state = None
        selection = self._attach_selection(stage.select, level_sparsity) if stage.select is not None else None
        test_loader = self.data.test_loader()
        result = train(
            self.model,
            self.data.train_loader(
                config.batch_size, seed=self.recipe.seed * 1000 + self.counter, world=self.world
            ),
            config,
            evaluate_fn=lambda m: evaluate(m, test_loader),
            callbacks=callbacks,
            masks=masks_of(self.model),
            seed=self.recipe.seed * 1000 + self.counter,
            progress=self.progress,
            optimizer=optimizer,
            description=f"stage {self.counter}: train",
        )
        if selection is not None:
            self._finish_selection(selection)
        for row in result.history:
            self._publish("train", row.get("step"), row, record=False)
        for update in dynamic.records if dynamic is not None else []:
            self._publish("dst", update.step, asdict(update), record=False)
        for dual in admm.records if admm is not None else []:
            self._publish("admm", dual.step, asdict(dual), record=False)
        self.train_flops = (self.train_flops[0] + flops.flops, self.train_flops[1] + flops.dense_flops)
        self.last_training = best_of(result.history)
        missing = self.rewind_steps - set(self.snapshots)
        if not self.trained_once and missing:
            raise ConfigError(
                f"rewind step(s) {sorted(missing)} lie beyond the first training stage",
                fix="rewind to a step the first training stage reaches",
            )
        self.trained_once = True

    def _admm(self, spec: ADMMConfig, level_sparsity: float | None) -> ADMMTraining:
        """The ADMM callback: its layers and sparsity default to the stage's level and the recipe's."""
        layers = spec.layers if spec.layers is not None else self.recipe.layers
        return ADMMTraining(
            spec, select_parameters(self.model, layers), self._block_sparsity(spec.sparsity, level_sparsity)
        )

    def _block_sparsity(self, own: float | None, level_sparsity: float | None) -> float | None:
        """A train block's sparsity: its own, else the stage's level, else the recipe's (None if none)."""
        return next((s for s in (own, level_sparsity, self.recipe.sparsity) if s is not None), None)

    def _attach_selection(self, spec: SparseSelection, level_sparsity: float | None) -> SelectionHandle:
        """Freeze the model and attach the trainable scores of sparse selection (edge-popup, supermask)."""
        if masks_of(self.model) is not None:
            raise ConfigError(
                "sparse selection learns its own mask and cannot start from a pruned model",
                where="train.select",
                fix="remove the prune stages before the selecting train stage",
            )
        sparsity = None
        if spec.method == "edge_popup":
            sparsity = self._block_sparsity(spec.sparsity, level_sparsity)
            if sparsity is None:
                raise ConfigError(
                    "edge-popup needs a sparsity",
                    where="train.select.sparsity",
                    fix="set it, or the recipe's sparsity",
                )
        layers = spec.layers if spec.layers is not None else self.recipe.layers
        return attach_selection(
            self.model,
            select_parameters(self.model, layers),
            method=spec.method,
            sparsity=sparsity,
            weight_init=spec.weight_init,
            seed=self.recipe.seed * 1000 + self.counter,
        )

    def _finish_selection(self, selection: SelectionHandle) -> None:
        """The selected mask becomes the model's masks; the frozen, unmasked weights its dense parent."""
        frozen = selection.frozen_weights()
        masks = selection.finish()
        dense = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._set_masks(masks)
        self.dense_state = {**dense, **frozen}

    def _evaluate(self, stage: EvaluateStage, level: int | None) -> None:
        row: dict[str, Any] = {"label": stage.label or f"stage {self.counter}", "level": level}
        if self.control is not None:
            row["control"] = self.control
        row.update(model_metrics(self.model, self.data, per_layer=stage.per_layer))
        row.update(self.last_training or {})
        if self.train_flops[1]:
            row["train_flops"] = self.train_flops[0]
            row["train_flops_vs_dense"] = self.train_flops[0] / self.train_flops[1]
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
        log.info(
            "%s%s: accuracy %.4f, sparsity %.4f",
            row["label"],
            f" (control {self.control})" if self.control else "",
            row["accuracy"],
            row["sparsity"],
        )
        self._publish("evaluate", None, row, record=True)

    def _publish(self, kind: str, step: Any, row: dict[str, Any], *, record: bool) -> None:
        """A metric event (and, for evaluations, a record); a control's wait in `pending_controls`."""
        step = None if step is None else int(step)
        if self.control is not None:
            self.pending_controls.append(
                {
                    "stage": self.counter,
                    "kind": kind,
                    "level": self.level,
                    "step": step,
                    "control": self.control,
                    "metrics": numeric(row),
                    "record": row if record else None,
                }
            )
            return
        if record:
            self.records.append(row)
        self._emit(MetricEvent(self.counter, kind, self.level, step, numeric(row)))

    def _emit(self, event: MetricEvent) -> None:
        if self.on_metrics is not None:
            self.on_metrics(event)

    # -- resuming -------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        return json.dumps(self.recipe.model_dump(mode="json", by_alias=True), sort_keys=True)

    def _same_recipe(self, saved: Any) -> bool:
        """Whether a state file's recipe is this one: equal text, or equal non-default values.

        The second test accepts states written before a field with a no-op default was added.
        """
        if saved == self._fingerprint():
            return True
        from secateurs.pipeline.hashing import essential  # the store imports this module

        try:
            return essential(recipe_from_raw(json.loads(saved))) == essential(self.recipe)
        except (TypeError, ValueError, ConfigError):
            return False

    def _save_state(self) -> None:
        """After each stage: everything needed to continue from here, written atomically (by rank 0)."""
        if self.workdir is None or not self.world.main:
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
                "last_training": self.last_training,
                "pending_controls": self.pending_controls,
                "train_flops": list(self.train_flops),
            },
        )

    def _resume(self) -> int:
        """Restore the state saved after the last completed stage; 0 when starting afresh."""
        assert self.workdir is not None
        path = self.workdir / STATE_FILE
        if not path.exists():
            return 0
        state = load_checkpoint(path)
        if not self._same_recipe(state.get("recipe")):
            raise CheckpointError(
                f"{path} was written by a different recipe",
                fix="use a fresh working directory for a changed recipe, or delete the stale state file",
            )
        try:
            self.model.load_state_dict(state["model"])
            masks = state["masks"]
            set_masks(
                self.model, MaskSet.from_state_dict(masks, self.model, where=str(path)) if masks else None
            )
            self.snapshots = {
                int(step): Snapshot(int(step), s["model"], s["optimizer"])
                for step, s in state["snapshots"].items()
            }
            self.pending_optimizer_state = state["pending_optimizer_state"]
            self.trained_once = bool(state["trained_once"])
            self.records = list(state["records"])
            self.dense_state = state["dense_state"]
            self.last_training = state.get("last_training")  # absent from states of older versions
            self.pending_controls = list(state.get("pending_controls", []))
            flops, dense_flops = state.get("train_flops", (0, 0))  # absent from states of older versions
            self.train_flops = (int(flops), int(dense_flops))
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
