"""One lean training loop shared by pre-training, fine-tuning and retraining after pruning.

The loop is benchmarked against a bare PyTorch loop, so per step it does only the work a bare
loop does plus appending the detached loss to a list. Losses are read back in one device sync
every `LOSS_CHECK_INTERVAL` steps (and at epoch ends), which is also when divergence is
detected, at the exact step where the loss first became non-finite.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from secateurs.core.distributed import check_same_masks, world
from secateurs.core.errors import ConfigError, SecateursError
from secateurs.core.masks import MaskHandle, MaskSet, masks_of, set_masks
from secateurs.train.config import TrainConfig
from secateurs.train.execution import Execution, MixedPrecision, prepare_input, prepare_module
from secateurs.train.optim import build_lr_scheduler, build_optimizer, per_entry_state, zero_optimizer_state

logger = logging.getLogger(__name__)

LOSS_CHECK_INTERVAL = 50
"""Steps between reads of the loss (one device sync each): divergence checks, progress, `last_loss`."""

LossFn = Callable[[Tensor, Tensor], Tensor]
EvaluateFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class TrainState:
    """What callbacks see; they may set `stop` to end training after the current step.

    `last_loss` is the loss of the most recent step that has been read back, which lags the
    current step by less than `LOSS_CHECK_INTERVAL` steps (reading every step would sync).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    step: int
    epoch: int
    total_steps: int
    steps_per_epoch: int
    last_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    stop: bool = False
    mask_handle: MaskHandle | None = None
    mask_grads: bool = False
    samples: int = 0  # training samples this process has stepped on
    seconds: float = 0.0  # wall time of the training steps so far (evaluations left out)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.nan

    @property
    def eta_seconds(self) -> float:
        """The remaining steps at the mean pace so far (evaluations left out)."""
        return (self.total_steps - self.step) * self.seconds / self.step if self.step else math.nan

    def install_masks(self, masks: MaskSet) -> None:
        """Record `masks` on the model and keep them (not the old ones) applied from the next step on.

        The one way callbacks change masks mid-training (gradual pruning, dynamic sparse training):
        the existing optimizer hooks are updated in place when the parameters are the same.
        """
        set_masks(self.model, masks)
        check_same_masks(masks, f"the mask update at step {self.step}")
        if self.mask_handle is not None and self.mask_handle.covers(masks):
            self.mask_handle.update(masks)
            return
        if self.mask_handle is not None:
            self.mask_handle.remove()
        self.mask_handle = masks.attach(self.model, self.optimizer, mask_grads=self.mask_grads)


class Callback:
    """Hooks into `train`; subclasses override only what they need (the defaults do nothing)."""

    def on_train_start(self, state: TrainState) -> None:
        """Before the first step (masks attached, optimizer and scheduler built)."""

    def on_backward(self, state: TrainState) -> None:
        """After `loss.backward()`, before clipping and `optimizer.step()`: where a penalty whose
        gradient is known in closed form adds it to `.grad` (ADMM's ρ(W − Z + U))."""

    def on_step_end(self, state: TrainState) -> None:
        """After `optimizer.step()` and `scheduler.step()`; `state.step` counts this step."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After a full pass over the loader and its evaluation (if any)."""

    def on_train_end(self, state: TrainState) -> None:
        """After the final evaluation, before masks are detached."""


@dataclass
class TrainResult:
    """Summary of one training run."""

    steps: int
    epochs: float
    history: list[dict[str, float]]
    final: dict[str, float]
    optimizer_state: dict[str, Any]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _data_parallel(model: nn.Module) -> nn.Module:
    """The module training calls forward on: under torchrun, `model` wrapped in PyTorch's DDP
    (which averages gradients over the ranks); else `model` itself. Callbacks and masks keep
    using `model` and its parameter names."""
    if not world().active or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(iter(model.parameters())).device
    # gradients as views of DDP's buckets: no copy in and out of them each step (25 % off a
    # LeNet-300-100 step on two gloo processes)
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
    )


def _overriding(callbacks: Iterable[Callback], hook: str) -> list[Callable[[TrainState], None]]:
    """The bound `hook` methods of the callbacks that override it (the base one does nothing)."""
    base = getattr(Callback, hook)
    bound = [getattr(cb, hook) for cb in callbacks]
    return [h for h in bound if getattr(h, "__func__", None) is not base]


def _steps_per_epoch(loader: Iterable[Any]) -> int:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(
            f"the training loader ({type(loader).__name__}) has no len()",
            fix="pass a loader that knows its number of batches (e.g. DataSplits.train_loader)",
        ) from None
    if n < 1:
        raise ConfigError("the training loader has no batches", fix="check the data split and batch size")
    return n


def _total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    if config.iterations is not None:
        return config.iterations
    assert config.epochs is not None  # guaranteed by TrainConfig validation
    steps = round(config.epochs * steps_per_epoch)
    if steps < 1:
        raise ConfigError(
            f"epochs={config.epochs} with {steps_per_epoch} batches per epoch is less than one step",
            where="train.epochs",
            fix="train for more epochs or use a smaller batch size",
        )
    return steps


def _diverged(step: int, value: float, description: str) -> SecateursError:
    return SecateursError(
        f"training diverged at step {step} (loss={value})",
        where=description,
        fix="lower the learning rate, add warm-up or gradient clipping (grad_clip), "
        "and check the inputs for NaN/inf values",
    )


@torch.no_grad()
def _check_finite_start(
    model: nn.Module, optimizer: torch.optim.Optimizer, masks: MaskSet | None, description: str
) -> None:
    """Refuse to start from weights (or optimizer state) holding NaN/inf where they count.

    Pruned entries are exactly +0.0 by now whatever they held (`MaskSet.attach`), and their
    optimizer state only moves them before the masks zero them again; a non-finite kept entry
    would make the first loss non-finite, which `_diverged` would blame on the learning rate.
    """
    keep = dict(masks.items()) if masks else {}
    found = []
    for name, param in model.named_parameters():
        for what, values in [
            ("", param),
            *((" (optimizer state)", v) for v in per_entry_state(optimizer, param)),
        ]:
            bad = ~torch.isfinite(values)
            if name in keep:
                bad &= keep[name].to(bad.device)
            count = int(bad.sum())
            if count:
                where = " at kept entries" if name in keep else ""
                found.append(f"{count:,} in {name!r}{where}{what}")
    if found:
        raise SecateursError(
            f"NaN/inf values before training starts, so the loss could not be finite: {', '.join(found)}",
            where=description,
            fix="the model or optimizer state was loaded or initialised with NaN/inf values: "
            "re-create the checkpoint it came from (`secateurs inspect` counts them per parameter)",
        )


@torch.no_grad()
def _mask_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, masks: MaskSet) -> None:
    """Zero pruned entries of per-parameter optimizer state (momentum, Adam moments).

    Matters when a rewound optimizer with dense-training state is reused with `mask_grads`.
    """
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        zero_optimizer_state(optimizer, params[name], ~mask)


class _LossLog:
    """Per-step losses held as device tensors and read back in one sync per flush."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.pending: list[Tensor] = []
        self.epoch_sum = 0.0
        self.epoch_steps = 0
        self.last = math.nan

    def start_epoch(self) -> None:
        self.epoch_sum, self.epoch_steps = 0.0, 0

    def flush(self, step: int) -> None:
        """Read pending losses (`step` = the step of the newest); raise if any is non-finite."""
        if not self.pending:
            return
        values = torch.stack(self.pending).tolist()
        self.pending.clear()
        total = math.fsum(values)
        if not math.isfinite(total):
            first = step - len(values) + 1
            bad = next(i for i, v in enumerate(values) if not math.isfinite(v))
            raise _diverged(first + bad, values[bad], self.description)
        self.epoch_sum += total
        self.epoch_steps += len(values)
        self.last = values[-1]

    @property
    def epoch_mean(self) -> float:
        return self.epoch_sum / self.epoch_steps if self.epoch_steps else math.nan


class _ProgressBar:
    """A rich progress bar when enabled, otherwise nothing at all."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self._progress: Any = None
        self._task: Any = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("epoch {task.fields[epoch]:.2f}  loss {task.fields[loss]:.4f}"),
                TextColumn("acc {task.fields[acc]}"),
                TimeRemainingColumn(),
            )
            self._task = self._progress.add_task(description, total=total, epoch=0.0, loss=math.nan, acc="-")

    def __enter__(self) -> _ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, state: TrainState) -> None:
        if self._progress is None:
            return
        acc = state.history[-1].get("test_accuracy") if state.history else None
        self._progress.update(
            self._task,
            completed=state.step,
            epoch=state.step / state.steps_per_epoch,
            loss=state.last_loss,
            acc="-" if acc is None else f"{acc:.4f}",
        )


def _clock(seconds: float) -> str:
    """h:mm:ss, or '?' before anything was timed."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
class _Loop:
    """Runs the steps of one `train` call; split into small methods, state lives in `TrainState`."""

    def __init__(
        self,
        state: TrainState,
        loader: Iterable[Any],
        config: TrainConfig,
        *,
        evaluate_fn: EvaluateFn | None,
        callbacks: Sequence[Callback],
        loss_fn: LossFn,
        bar: _ProgressBar,
        description: str,
        execution: Execution,
    ) -> None:
        self.state = state
        self.loader = loader
        self.config = config
        self.evaluate_fn = evaluate_fn
        self.callbacks = list(callbacks)
        # Only callbacks that override a per-step hook are called per step (keeps the loop lean).
        self.step_hooks = _overriding(self.callbacks, "on_step_end")
        self.backward_hooks = _overriding(self.callbacks, "on_backward")
        self.loss_fn = loss_fn
        self.bar = bar
        self.description = description
        self.losses = _LossLog(description)
        self.params = [p for g in state.optimizer.param_groups for p in g["params"]]
        self.device = next(iter(state.model.parameters()), torch.empty(0)).device
        self.execution = execution
        self.precision = MixedPrecision(execution.precision, self.device)
        self.forward = prepare_module(state.model, execution, wrap=_data_parallel)
        # evaluation every N steps replaces the one after each epoch
        self.eval_every = config.eval_every if evaluate_fn is not None else None
        self.eval_each_epoch = (
            config.eval_every_epoch and config.eval_every is None and evaluate_fn is not None
        )

    def run(self) -> None:
        st = self.state
        st.model.train()
        for cb in self.callbacks:
            cb.on_train_start(st)
        while st.step < st.total_steps and not st.stop:
            if self._epoch():
                st.epoch += 1
                if self.eval_each_epoch:
                    self._evaluate()
                for cb in self.callbacks:
                    cb.on_epoch_end(st)
        if self.evaluate_fn is not None and (not st.history or st.history[-1]["step"] != st.step):
            self._evaluate()
        for cb in self.callbacks:
            cb.on_train_end(st)

    def _epoch(self) -> bool:
        """One pass over the loader (cut short by the budget or `stop`); True if it was complete."""
        st = self.state
        set_epoch = getattr(self.loader, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(st.epoch)
        self.losses.start_epoch()
        batches, exhausted = 0, True
        started = time.perf_counter()
        for x, y in self.loader:
            st.samples += int(y.shape[0])
            self._step(x, y)
            batches += 1
            if st.step % LOSS_CHECK_INTERVAL == 0:
                self._read_losses()
            for hook in self.step_hooks:
                hook(st)
            if self.eval_every is not None and st.step % self.eval_every == 0:
                st.seconds += time.perf_counter() - started  # the evaluation is not training time
                self._read_losses()
                self._evaluate()
                started = time.perf_counter()
            if st.step >= st.total_steps or st.stop:
                exhausted = False
                break
        st.seconds += time.perf_counter() - started
        if batches == 0:
            raise ConfigError(
                "the training loader yielded no batches although its len() is not 0",
                fix="check the loader's __iter__ and __len__",
            )
        self._read_losses()
        return exhausted or batches >= st.steps_per_epoch

    def _step(self, x: Tensor, y: Tensor) -> None:
        st = self.state
        x = prepare_input(x.to(self.device, non_blocking=True), self.execution)
        y = y.to(self.device, non_blocking=True)
        st.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            loss = self.loss_fn(self.forward(x), y)
        self.precision.backward(loss, st.optimizer)
        for hook in self.backward_hooks:
            hook(st)
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.precision.step(st.optimizer)
        st.scheduler.step()
        self.losses.pending.append(loss.detach())
        st.step += 1

    def _read_losses(self) -> None:
        self.losses.flush(self.state.step)
        self.state.last_loss = self.losses.last
        self.bar.update(self.state)

    def _evaluate(self) -> None:
        """Evaluate in eval mode, append a history row, and return the model to train mode.

        The row's `train_loss` is the mean loss of the current epoch's steps so far.
        """
        st = self.state
        assert self.evaluate_fn is not None
        st.model.eval()
        try:
            metrics = self.evaluate_fn(st.model)
        finally:
            st.model.train()
        row: dict[str, float] = {
            "epoch": st.step / st.steps_per_epoch,
            "step": st.step,
            "train_loss": self.losses.epoch_mean,
            "lr": st.optimizer.param_groups[0]["lr"],
        }
        row.update({f"test_{k}": float(v) for k, v in metrics.items()})
        st.history.append(row)
        logger.info(
            "%s: step %d/%d, %s, %s samples/s, ETA %s",
            self.description,
            st.step,
            st.total_steps,
            ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"),
            f"{st.samples_per_second:,.0f}",
            _clock(st.eta_seconds),
        )
        self.bar.update(st)


def train(
    model: nn.Module,
    train_loader: Iterable[Any],
    config: TrainConfig,
    *,
    evaluate_fn: EvaluateFn | None = None,
    callbacks: Sequence[Callback] = (),
    masks: MaskSet | None = None,
    seed: int = 0,
    progress: bool = False,
    loss_fn: LossFn = F.cross_entropy,
    optimizer: torch.optim.Optimizer | None = None,
    description: str = "train",
    execution: Execution | None = None,
) -> TrainResult:
    """Train `model` in place for the budget of `config`; returns history and optimizer state.

    `masks` (default: the masks recorded on the model by pruning, if any) keep pruned weights
    exactly zero throughout. Pass `optimizer` to continue from a saved optimizer state
    (rewinding); otherwise one is built from `config.optimizer`. `evaluate_fn(model)` returns
    metrics such as {"accuracy", "loss"}, recorded as `test_<name>` after every epoch (if
    `config.eval_every_epoch`), or after every `config.eval_every`-th step instead, and at the
    end. `execution` sets mixed precision, torch.compile and channels_last
    (`secateurs.train.execution`); training follows the model's device.
    """
    steps_per_epoch = _steps_per_epoch(train_loader)
    total_steps = _total_steps(config, steps_per_epoch)
    if config.eval_every is not None and config.eval_every > total_steps:
        raise ConfigError(
            f"eval_every={config.eval_every} is more than this training's {total_steps} steps, so it "
            "would evaluate only at the end",
            where="train.eval_every",
            fix="use a smaller eval_every, or leave it out to evaluate after each epoch",
        )
    torch.manual_seed(seed)
    given_optimizer = optimizer is not None
    if optimizer is None:
        optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], config.optimizer)
    scheduler = build_lr_scheduler(
        optimizer,
        config.lr_schedule,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        budget_in_epochs=config.epochs is not None,
    )
    if masks is None:
        masks = masks_of(model)
    state = TrainState(model, optimizer, scheduler, 0, 0, total_steps, steps_per_epoch, math.nan)
    state.mask_grads = config.mask_grads
    if masks:
        state.mask_handle = masks.attach(model, optimizer, mask_grads=config.mask_grads)
    try:
        _check_finite_start(model, optimizer, masks, description)
        if masks and config.mask_grads:
            _mask_optimizer_state(model, optimizer, masks)
        with _ProgressBar(progress, description, total_steps) as bar:
            loop = _Loop(
                state,
                train_loader,
                config,
                evaluate_fn=evaluate_fn,
                callbacks=callbacks,
                loss_fn=loss_fn,
                bar=bar,
                description=description,
                execution=execution or Execution(),
            )
            loop.run()
    finally:
        if state.mask_handle is not None:
            state.mask_handle.remove()
    return _result(state, loop.losses, copy_state=given_optimizer)


def _result(state: TrainState, losses: _LossLog, *, copy_state: bool) -> TrainResult:
    if state.history:
        final = dict(state.history[-1])
    else:
        final = {
            "epoch": state.step / state.steps_per_epoch,
            "step": state.step,
            "train_loss": losses.epoch_mean,
            "lr": state.optimizer.param_groups[0]["lr"],
        }
    # The caller owns a passed-in optimizer and may keep stepping it: copy so the result is stable.
    opt_state = state.optimizer.state_dict()
    return TrainResult(
        steps=state.step,
        epochs=state.step / state.steps_per_epoch,
        history=state.history,
        final=final,
        optimizer_state=copy.deepcopy(opt_state) if copy_state else opt_state,
    )
