"""Small reusable callbacks, so schedules of side effects (gradual pruning, rewinding snapshots,
logging) are written as one-liners instead of `Callback` subclasses."""

from __future__ import annotations

from collections.abc import Callable

from secateurs.core.errors import ConfigError
from secateurs.train.engine import Callback, TrainState

StateFn = Callable[[TrainState], None]


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{name} must be a positive number of steps, got {value}")
    return value


class EveryNSteps(Callback):
    """Call `fn(state)` after every `n`-th optimizer step (steps n, 2n, 3n, ...)."""

    def __init__(self, n: int, fn: StateFn) -> None:
        self.n = _positive("n", n)
        self.fn = fn

    def on_step_end(self, state: TrainState) -> None:
        if state.step % self.n == 0:
            self.fn(state)


class AtStep(Callback):
    """Call `fn(state)` once, right after optimizer step `k` (e.g. to snapshot weights for rewinding).

    With `k=0` it fires at the start of training, before any step.
    """

    def __init__(self, k: int, fn: StateFn) -> None:
        if k < 0:
            raise ConfigError(f"AtStep needs a step >= 0, got {k}")
        self.k = k
        self.fn = fn
        self.fired = False

    def on_train_start(self, state: TrainState) -> None:
        self.fired = False
        if self.k == 0:
            self._fire(state)

    def on_step_end(self, state: TrainState) -> None:
        if state.step == self.k:
            self._fire(state)

    def _fire(self, state: TrainState) -> None:
        if not self.fired:
            self.fired = True
            self.fn(state)


class EveryNEpochs(Callback):
    """Call `fn(state)` at the end of every `n`-th completed epoch."""

    def __init__(self, n: int, fn: StateFn) -> None:
        self.n = _positive("n", n)
        self.fn = fn

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch % self.n == 0:
            self.fn(state)


class StopAtStep(Callback):
    """End training after optimizer step `k` (earlier than the budget), e.g. for a quick probe."""

    def __init__(self, k: int) -> None:
        self.k = _positive("k", k)

    def on_step_end(self, state: TrainState) -> None:
        if state.step >= self.k:
            state.stop = True


class LambdaCallback(Callback):
    """A callback from plain functions; hooks left as None cost nothing per step."""

    def __init__(
        self,
        *,
        on_train_start: StateFn | None = None,
        on_step_end: StateFn | None = None,
        on_epoch_end: StateFn | None = None,
        on_train_end: StateFn | None = None,
    ) -> None:
        self._fns = {
            "on_train_start": on_train_start,
            "on_epoch_end": on_epoch_end,
            "on_train_end": on_train_end,
        }
        if on_step_end is not None:
            # An instance attribute, so the engine calls it per step only when it was given.
            self.on_step_end = on_step_end  # type: ignore[method-assign]

    def _call(self, hook: str, state: TrainState) -> None:
        fn = self._fns[hook]
        if fn is not None:
            fn(state)

    def on_train_start(self, state: TrainState) -> None:
        self._call("on_train_start", state)

    def on_epoch_end(self, state: TrainState) -> None:
        self._call("on_epoch_end", state)

    def on_train_end(self, state: TrainState) -> None:
        self._call("on_train_end", state)
