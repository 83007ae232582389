"""The stage loop: runs a recipe's stages on one model.

Every method is a recipe, so this runner has no per-method code: it knows the six stage kinds,
and everything a method adds comes through a registry (criteria, structures, allocations,
resets, sanity checks, controls, training-time methods). Seeds are derived from the recipe's seed
and the stage's number, so the same recipe gives bit-identical masks and weights. The state
after every stage is saved (`pipeline.state`) and metrics are published as they come
(`pipeline.publish`).

A repeat with `controls` branches off after each level's prune stage: each control runs the
rest of the level on a copy of the pipeline (see `secateurs.methods.controls`) with the same
stage numbers; its events wait in the publisher until the ticket reaches the stage that
produced them.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secateurs.core.device import resolve_device
from secateurs.core.distributed import check_same_masks, world
from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, masks_of, remove_masks, set_masks
from secateurs.data import Splits, class_balanced_batch, load_recipe_data
from secateurs.eval import agreement, evaluate, expected_calibration_error, predict
from secateurs.eval.beyond import beyond_accuracy
from secateurs.eval.macs import count_costs
from secateurs.eval.training_flops import TrainingFlops, forward_cost
from secateurs.methods.allocations import unmatched_patterns
from secateurs.methods.closed_form import SolvedTraining
from secateurs.methods.controls import CONTROLS, derived_seed, fork_index
from secateurs.methods.criteria import build_criterion
from secateurs.methods.ensemble import collect_pass, ensemble
from secateurs.methods.layers import LayerSelection, select_parameters
from secateurs.methods.pruning import compute_masks
from secateurs.methods.reconstruction import reconstruct
from secateurs.methods.resets import Reset, Snapshot
from secateurs.methods.sanity import SANITY, sanity_seed
from secateurs.methods.schedules import LevelTarget
from secateurs.methods.sequential import prune_sequential
from secateurs.methods.spec import PruneSpec
from secateurs.methods.structures import build_structure
from secateurs.methods.training import TRAINING
from secateurs.methods.training.param_stats import KEPT_AS, ParamStats
from secateurs.models import build_model
from secateurs.models.factory import build_from_factory
from secateurs.pipeline.metrics import TASKS, mask_metrics, model_metrics
from secateurs.pipeline.publish import Publisher
from secateurs.pipeline.recipe import (
    EnsembleStage,
    EvaluateStage,
    PruneStage,
    Recipe,
    RepeatStage,
    ResetStage,
    TrainStage,
    walk,
    walk_paths,
)
from secateurs.pipeline.result import MetricEvent, RunResult, best_of
from secateurs.pipeline.state import STATE_FILE, RunState, load_state, save_state
from secateurs.pipeline.weights import RewindSnapshots, load_initial_weights, own_rng, rewound_optimizer
from secateurs.train.config import TrainConfig
from secateurs.train.engine import Callback, TrainState, train

__all__ = ["STATE_FILE", "MetricEvent", "Pipeline", "RunResult", "best_of", "model_metrics", "run_recipe"]

log = logging.getLogger(__name__)

# what an ensemble's record takes from its single model: the masks are the members' masks
_MASK_KEYS = ("sparsity", "remaining", "collapsed_layers")


@dataclass
class StageServices:
    """What a training-time method may use of the run (`secateurs.methods.training.StageServices`)."""

    pipeline: Pipeline
    seed: int
    level_sparsity: float | None

    @property
    def model(self) -> nn.Module:
        return self.pipeline.model

    @property
    def recipe_sparsity(self) -> float | None:
        return self.pipeline.recipe.sparsity

    @property
    def layers(self) -> LayerSelection:
        return self.pipeline.recipe.layers

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return tuple(self.pipeline.data.info.input_shape)

    def compute_masks(self, spec: PruneSpec, sparsity: float | None) -> MaskSet:
        return self.pipeline._compute(spec, sparsity)

    def set_masks(self, masks: MaskSet) -> MaskSet:
        return self.pipeline._set_masks(masks)

    def sample_inputs(self, count: int) -> torch.Tensor:
        x, _ = next(iter(self.pipeline.data.train_loader(count, shuffle=False)))
        return x.to(self.pipeline.device)

    def set_dense_state(self, state: dict[str, torch.Tensor]) -> None:
        self.pipeline.state.dense_state = state

    def keep(self, name: str, value: Any) -> None:
        self.pipeline.state.kept[name] = value


class _LiveHistory(Callback):
    """Publishes each evaluation row of a training stage as it is made (progress for long runs)."""

    def __init__(self, publish: Callable[[dict[str, Any]], None]) -> None:
        self.publish = publish
        self.published = 0

    def _flush(self, state: TrainState) -> None:
        for row in state.history[self.published :]:
            self.publish(row)
        self.published = len(state.history)

    on_epoch_end = _flush
    on_train_end = _flush


class Pipeline:
    """Executes one recipe; `run()` returns a `RunResult`."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        progress: bool = False,
        data: Splits | None = None,
        model: nn.Module | Callable[..., nn.Module] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        on_metrics: Callable[[MetricEvent], None] | None = None,
    ) -> None:
        self.recipe = recipe
        self.world = world()
        self.progress = progress and self.world.main
        self.workdir = Path(workdir) if workdir is not None else None
        self.publisher = Publisher(on_metrics)
        self.device = resolve_device(recipe.device)
        data = data if data is not None else load_recipe_data(recipe.data)
        self.data = data.to(self.device)
        info = self.data.info
        self.task = TASKS.get(info.task)
        self._check_task()
        self.model = self._build_model(model)
        if recipe.init_from is not None:
            load_initial_weights(self.model, recipe.init_from)
        self.model.to(self.device)
        self.first_training = self._first_training()  # (batches per epoch, steps) of the first train stage
        steps = {self._snapshot_step(s.reset) for s in walk(recipe.stages) if isinstance(s, ResetStage)}
        self.rewind_steps = {s for s in steps if s is not None} - {0}
        # the initial weights are kept only for a rewind to them (a pretrained LLM is large)
        self.state = RunState(snapshots={0: Snapshot.take(self.model, 0)} if 0 in steps else {})
        self._check_rewind_reachable()
        self._check_layer_rates()
        self.level: int | None = None  # repeat level of the stage being run
        self.control: str | None = None  # set on the copies that run a control
        self.resumed_from = self._resume() if self.workdir is not None else 0

    def _build_model(self, given: nn.Module | Callable[..., nn.Module] | None) -> nn.Module:
        """The recipe's model: from the zoo, from the user's factory, or the module or factory given."""
        recipe, info = self.recipe, self.data.info
        if isinstance(given, nn.Module):
            return copy.deepcopy(given)  # the caller's module stays as it was
        factory = given if given is not None else recipe.model.factory
        if factory is not None:
            shape, classes = info.input_shape, info.num_classes
            return build_from_factory(factory, shape, classes, seed=recipe.seed, **recipe.model.options)
        assert recipe.model.name is not None
        return build_model(
            recipe.model.name,
            info.input_shape,
            info.num_classes,
            seed=recipe.seed,
            task=info.task,
            **recipe.model.options,
        )

    @property
    def counter(self) -> int:
        """Stages run so far (derives per-stage seeds)."""
        return self.state.counter

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.publisher.records

    def _check_task(self) -> None:
        """Fail before anything is built when a stage does not apply to the data set's task."""
        stages = walk(self.recipe.stages)
        beyond = self.recipe.beyond or any(isinstance(s, EvaluateStage) and s.beyond for s in stages)
        refused = [
            what
            for applies, what in (
                (self.task.trains or not any(isinstance(s, TrainStage) for s in stages), "train stages"),
                (self.task.beyond or not beyond, "beyond-accuracy evaluations"),
                (self.task.beyond or not any(isinstance(s, EnsembleStage) for s in stages), "ensembles"),
            )
            if not applies
        ]
        if refused:
            raise ConfigError(
                f"{' and '.join(refused)} do not apply to data set {self.data.info.name!r}, whose task is "
                f"{self.data.info.task.replace('_', ' ')}",
                fix="prune and evaluate a pretrained model, or use a classification data set",
            )

    def _stage_seed(self) -> int:
        return self.recipe.seed * 1000 + self.counter

    def _first_training(self) -> tuple[int, int] | None:
        """(batches per epoch, optimizer steps) of the first training stage, where rewinds save."""
        first = next((s for s in walk(self.recipe.stages) if isinstance(s, TrainStage)), None)
        if first is None:
            return None
        config = self.recipe.train_config(first.options)
        per_epoch = len(self.data.train_loader(config.batch_size))
        if not isinstance(config, TrainConfig):  # solved in closed form: no optimizer steps
            return per_epoch, 0
        steps = (
            config.iterations if config.iterations is not None else round((config.epochs or 0) * per_epoch)
        )
        return per_epoch, steps

    def _snapshot_step(self, reset: Reset) -> int | None:
        """The step a reset needs saved, in steps of the first training stage (None: none)."""
        return reset.snapshot_step(self.first_training[0] if self.first_training is not None else None)

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
                        fix=f"prunable parameters are: {', '.join(names)} ($first and $last name the "
                        "first and the last of them, in any model)",
                    )

    # -- the stage loop ------------------------------------------------------------------------
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
            self.state.counter += 1
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
            self._prune(stage, target)
        elif isinstance(stage, ResetStage):
            reset = stage.reset
            self.state.pending_optimizer_state = reset.apply(
                self.model,
                snapshots=self.state.snapshots,
                seed=self._stage_seed(),
                step=self._snapshot_step(reset),
            )
            self.state.last_training = None
            self.state.kept = {}  # what training handed on describes weights that are gone
        elif isinstance(stage, EvaluateStage):
            self._evaluate(stage, level)
        elif isinstance(stage, EnsembleStage):
            self._ensemble(stage, level)
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
        what it publishes waits in the publisher until the ticket reaches its stage.
        """
        branch = copy.copy(self)
        branch.control = control
        branch.model = copy.deepcopy(self.model)
        branch.state = dataclasses.replace(
            self.state,
            snapshots=dict(self.state.snapshots),
            kept=dict(self.state.kept),
            pending_optimizer_state=copy.deepcopy(self.state.pending_optimizer_state),
        )
        branch.workdir, branch.resumed_from = None, 0
        return branch

    def _flush_controls(self) -> None:
        """Publish the held-back control events of the stages reached so far (see the module doc)."""
        if self.control is None:
            self.publisher.flush(self.counter)

    # -- prune --------------------------------------------------------------------------------
    def _prune(self, stage: PruneStage, target: LevelTarget) -> None:
        if stage.sparsity is None:  # the level's target, with its per-layer overrides
            masks = self._compute(stage, target.sparsity, target.layer_sparsities)
        else:
            masks = self._compute(stage, stage.sparsity)
        self._set_masks(masks)
        weights = SANITY.get(stage.sanity).weights
        if weights is not None:  # a seed of its own, not the recipe's
            weights(self.model, sanity_seed(self._stage_seed(), stage.sanity))
        self.state.last_training = None

    def _compute(
        self, spec: PruneSpec, sparsity: float | None, layer_sparsities: dict[str, float] | None = None
    ) -> MaskSet:
        criterion = build_criterion(spec.criterion, **spec.criterion_options)
        data = self._calibration_data(spec, criterion)
        common: dict[str, Any] = {
            "criterion": spec.criterion,
            "allocation": spec.allocation,
            "structure": spec.structure,
            "layers": spec.layers if spec.layers is not None else self.recipe.layers,
            "data": data,
            "seed": self._stage_seed(),
            "allow_collapse": spec.allow_collapse,
            "criterion_options": spec.criterion_options,
            "allocation_options": spec.allocation_options,
            "structure_options": spec.structure_options,
            "layer_sparsities": layer_sparsities or None,
            "rounding": spec.rounding,
            "ties": spec.ties,
        }
        if spec.calibration.mode == "full":
            common["loss_fn"] = self.task.loss  # sequential calibration takes no gradients
        if spec.reconstruct is not None or spec.calibration.mode == "sequential":
            self._remember_dense()  # before the weights change
        if spec.calibration.mode == "sequential":  # prunes (and reconstructs) the model block by block
            prune_sequential(
                self.model, sparsity, reconstruct=spec.reconstruct, blocks=spec.calibration.blocks, **common
            )
            masks = masks_of(self.model)
            assert masks is not None
            return masks
        masks = compute_masks(
            self.model,
            sparsity,
            input_shape=tuple(self.data.info.input_shape),
            rounds=spec.rounds,
            round_schedule=spec.round_schedule,
            sanity=spec.sanity,
            **common,
        )
        if spec.reconstruct is None:
            return masks
        structure = build_structure(spec.structure, **spec.structure_options)
        return reconstruct(
            self.model,
            masks,
            spec.reconstruct,
            data=data,
            structure=structure,
            ties=spec.ties,
            generator=torch.Generator().manual_seed(self._stage_seed()),  # ties "random"
        )

    def _calibration_data(self, spec: PruneSpec, criterion: Any) -> list[Any] | None:
        """The batches a prune step scores (and reconstructs) on; None when it needs none.

        A criterion that asks for it gets one class-balanced batch (when samples have classes);
        otherwise the first `data_batches` training batches: shuffled (seeded by the stage), or in order for
        sequential calibration (the data set's calibration windows, as SparseGPT and Wanda take them).
        """
        if not criterion.needs_data and spec.reconstruct is None:
            return None
        per_class = spec.samples_per_class or criterion.samples_per_class
        seed = self.recipe.seed + self.counter
        if (
            criterion.needs_data
            and per_class is not None
            and self.task.classes
            and spec.calibration.mode == "full"
        ):
            return [class_balanced_batch(self.data, per_class, seed=seed)]
        ordered = spec.calibration.mode == "sequential"
        loader = self.data.train_loader(spec.data_batch_size, seed=seed, shuffle=not ordered)
        return [batch for _, batch in zip(range(spec.data_batches), loader, strict=False)]

    def _remember_dense(self) -> None:
        """Keep the weights before the first prune: the dense parent of beyond-accuracy metrics."""
        if self.state.dense_state is None and masks_of(self.model) is None and self.task.beyond:
            self.state.dense_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _set_masks(self, masks: MaskSet) -> MaskSet:
        self._remember_dense()
        set_masks(self.model, masks)
        check_same_masks(masks, f"the prune of stage {self.counter}")
        return masks

    def dense_parent(self) -> nn.Module | None:
        """The model as it was just before its first prune (None if it started pruned)."""
        if self.state.dense_state is None:
            return None
        parent = copy.deepcopy(self.model)
        remove_masks(parent)
        parent.load_state_dict(self.state.dense_state)
        return parent

    # -- train --------------------------------------------------------------------------------
    def _train(self, stage: TrainStage, level_sparsity: float | None) -> None:
        config = self.recipe.train_config(stage.options)
        if not isinstance(config, TrainConfig):
            self._train_solved(stage, config)
            return
        self.state.kept = {}  # an earlier training's hand-ons describe weights this one changes
        services = StageServices(self, self._stage_seed(), level_sparsity)
        methods = [TRAINING.get(name)(block, services) for name, block in stage.methods.items()]
        cost = forward_cost(self.model, tuple(self.data.info.input_shape))
        dense_at = next((m.dense_gradient_at for m in methods if m.dense_gradient_at is not None), None)
        flops = TrainingFlops(cost, config.batch_size, dense_at)
        callbacks: list[Callback] = [flops]  # first: it prices each step before others change the masks
        if not self.state.trained_once and self.rewind_steps:
            callbacks.append(RewindSnapshots(self.rewind_steps, self.state.snapshots))
        callbacks += [callback for m in methods for callback in m.callbacks()]
        callbacks.append(_LiveHistory(lambda row: self._publish("train", row.get("step"), row, record=False)))
        optimizer = None
        if self.state.pending_optimizer_state is not None:
            optimizer = rewound_optimizer(self.model, config.optimizer, self.state.pending_optimizer_state)
            self.state.pending_optimizer_state = None
        for m in methods:
            m.before_training()
        test_loader = self.data.test_loader()
        result = train(
            self.model,
            self._train_loader(config),
            config,
            evaluate_fn=lambda m: evaluate(m, test_loader),
            callbacks=callbacks,
            masks=masks_of(self.model),
            seed=self._stage_seed(),
            progress=self.progress,
            optimizer=optimizer,
            description=f"stage {self.counter}: train",
            execution=self.recipe.execution,
        )
        for m in methods:
            m.after_training()
        for m in methods:
            for step, row in m.events():
                self._publish(m.name, step, row, record=False)
        done, dense = self.state.train_flops
        self.state.train_flops = (done + flops.flops, dense + flops.dense_flops)
        self.state.last_training = best_of(result.history)
        missing = self.rewind_steps - set(self.state.snapshots)
        if not self.state.trained_once and missing:
            raise ConfigError(
                f"rewind step(s) {sorted(missing)} lie beyond the first training stage",
                fix="rewind to a step the first training stage reaches",
            )
        self.state.trained_once = True

    def _train_loader(self, config: TrainConfig) -> Any:
        """The training batches: reshuffled every epoch (seeded by the stage), or in the natural
        order when the recipe says `shuffle: false` (a sharded run needs the shuffled order)."""
        if not config.shuffle and self.world.active:
            raise ConfigError(
                "train.shuffle: false cannot be sharded across processes",
                fix="leave train.shuffle at true for a distributed run",
            )
        return self.data.train_loader(
            config.batch_size, seed=self._stage_seed(), world=self.world, shuffle=config.shuffle
        )

    def _train_solved(self, stage: TrainStage, config: SolvedTraining) -> None:
        """A train stage whose `method` solves the weights (`methods.closed_form.TRAINERS`): no
        optimizer (the recipe refuses training-time methods beside it); each pass is evaluated and
        published as an epoch."""
        test_loader = self.data.test_loader()
        history: list[dict[str, Any]] = []

        def on_pass(done: int) -> None:
            row: dict[str, Any] = {"epoch": done, "step": done}
            row.update({f"test_{k}": float(v) for k, v in evaluate(self.model, test_loader).items()})
            history.append(row)
            self._publish("train", done, row, record=False)

        config.fit(
            self.model,
            self.data.train_loader(config.batch_size, shuffle=False),
            classes=self.data.info.num_classes,
            masks=masks_of(self.model),
            on_pass=on_pass,
        )
        self.state.last_training = best_of(history)
        self.state.trained_once = True

    # -- evaluate -------------------------------------------------------------------------------
    def _evaluate(self, stage: EvaluateStage, level: int | None) -> None:
        row: dict[str, Any] = {"label": stage.label or f"stage {self.counter}", "level": level}
        if self.control is not None:
            row["control"] = self.control
        row.update(self.task.evaluate(self.model, self.data, per_layer=stage.per_layer))
        row.update(self.state.last_training or {})
        if self.state.train_flops[1]:
            row["train_flops"] = self.state.train_flops[0]
            row["train_flops_vs_dense"] = self.state.train_flops[0] / self.state.train_flops[1]
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
            "%s%s: %s, sparsity %.4f",
            row["label"],
            f" (control {self.control})" if self.control else "",
            ", ".join(f"{k} {row[k]:.4f}" for k in ("accuracy", "perplexity") if k in row),
            row["sparsity"],
        )
        self._publish("evaluate", None, row, record=True)

    # -- ensemble -------------------------------------------------------------------------------
    def _ensemble(self, stage: EnsembleStage, level: int | None) -> None:
        """Sample an ensemble from the parameter statistics of the training that made the weights
        (collected now, by a short pass on a copy, if it did not collect) and evaluate it beside
        the single model: accuracy, loss, ECE, agreement, noise and shifts, inference cost."""
        kept = self.state.kept.get(KEPT_AS)
        if kept is None:
            config = self.recipe.train_config({})  # the recipe's optimizer (at the pass's own LR)
            loader = self.data.train_loader(config.batch_size, seed=self._stage_seed(), world=self.world)
            stats = collect_pass(
                self.model,
                loader,
                config,
                stage.collect,
                seed=self._stage_seed(),
                execution=self.recipe.execution,
            )
            self.state.kept[KEPT_AS] = (
                stats.state_dict()
            )  # saved with the stage: a resume does not collect again
        else:
            stats = ParamStats.from_state_dict(kept)
        seed = stage.seed if stage.seed is not None else self.recipe.seed
        sampled = ensemble(
            self.model, stats.to(self.device), members=stage.members, seed=seed, scale=stage.scale
        )
        row: dict[str, Any] = {"label": stage.label or f"stage {self.counter}: ensemble", "level": level}
        if self.control is not None:
            row["control"] = self.control
        row.update(self.task.evaluate(sampled, self.data))
        single = count_costs(self.model, self.data.info.input_shape)
        logits, labels = predict(sampled, self.data.test_loader())
        single_logits, _ = predict(self.model, self.data.test_loader())
        row.update(
            {
                **{k: v for k, v in mask_metrics(self.model).items() if k in _MASK_KEYS},
                "members": stage.members,
                "macs": stage.members * single.macs,  # inference cost: every member runs
                "nonzero_macs": stage.members * single.nonzero_macs,
                "inference_cost_vs_single": float(stage.members),
                "ece": expected_calibration_error(logits, labels),
                "agreement": agreement(logits, single_logits),  # with the single (trained) model
                "single_accuracy": float((single_logits.argmax(1) == labels).double().mean()),
                "single_ece": expected_calibration_error(single_logits, labels),
                "collected_samples": stats.count,
            }
        )
        if stage.beyond:  # shifts and noise; excess_error@… and per_class_drop against the single model
            row.update(
                beyond_accuracy(
                    sampled, self.data, dense=self.model, latency=stage.latency, seed=self.recipe.seed
                )
            )
        log.info(
            "%s: accuracy %.4f (single model %.4f), ece %.4f (single %.4f)",
            row["label"],
            row["accuracy"],
            row["single_accuracy"],
            row["ece"],
            row["single_ece"],
        )
        self._publish("ensemble", None, row, record=True)

    def _publish(self, kind: str, step: Any, row: dict[str, Any], *, record: bool) -> None:
        self.publisher.publish(
            stage=self.counter,
            level=self.level,
            control=self.control,
            kind=kind,
            step=step,
            row=row,
            record=record,
        )

    # -- saving and resuming ------------------------------------------------------------------
    def _save_state(self) -> None:
        """After each stage: everything needed to continue from here, written atomically (by rank 0)."""
        if self.workdir is None or not self.world.main:
            return
        save_state(self.workdir / STATE_FILE, self.recipe, self.model, self.state, self.publisher)

    def _resume(self) -> int:
        """Restore the state saved after the last completed stage; 0 when starting afresh."""
        assert self.workdir is not None
        restored = load_state(self.workdir / STATE_FILE, self.recipe, self.model, self.publisher)
        if restored is None:
            return 0
        resumed_from, restored.counter = restored.counter, 0  # the stage loop counts afresh and skips to it
        self.state = restored
        return resumed_from


def run_recipe(
    recipe: Recipe,
    *,
    progress: bool = False,
    data: Splits | None = None,
    model: nn.Module | Callable[..., nn.Module] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    on_metrics: Callable[[MetricEvent], None] | None = None,
) -> RunResult:
    """Run every stage of `recipe` and return the result.

    `data` and `model` (an nn.Module, copied, or a factory called like the recipe's) replace the
    recipe's. Without `workdir` nothing is written to disk. With it, the state after every stage
    is saved there (`state.pt`, atomically) and a later call with the same recipe resumes after
    the last completed stage, giving the same result as an uninterrupted run.
    """
    return Pipeline(
        recipe, progress=progress, data=data, model=model, workdir=workdir, on_metrics=on_metrics
    ).run()
