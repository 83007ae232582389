"""Training-time methods: plug-ins that act while a train stage trains.

A train stage's body holds its training options and, under their own keys, any registered
training-time method: `prune` (gradual pruning), `dst` (dynamic sparse training), `select`
(edge-popup, supermask), `admm`, `bn_l1` (network slimming). Each is one class registered in
`TRAINING` with
- `schema`: the pydantic type its block is validated with when the recipe is read;
- `changes_mask`: whether it changes the mask while training (a stage has at most one such);
- hooks the stage runner calls, the same for every method: `callbacks()` (what it adds to the
  training loop), `before_training()` / `after_training()`, `events()` (metric rows it
  publishes, under its own name) and `dense_gradient_at` (for the training-FLOPs count).

It sees the run only through `StageServices`, so a new method is one file and one registry line,
with no change to the recipe schema, the stage runner or `secateurs methods`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from torch import Tensor, nn

from secateurs.core.masks import MaskSet
from secateurs.core.registry import Registry
from secateurs.methods.layers import LayerSelection
from secateurs.train.engine import Callback


class StageServices(Protocol):
    """What a training-time method may use of the run (the stage runner provides it)."""

    model: nn.Module
    seed: int  # this stage's seed (recipe seed and stage number)
    level_sparsity: float | None  # the sparsity of the repeat level (or the recipe's, outside repeats)
    recipe_sparsity: float | None
    layers: LayerSelection  # the recipe's default layer selection
    input_shape: tuple[int, ...] | None  # one sample's shape (structures that trace the model need it)

    def compute_masks(self, spec: Any, sparsity: float | None) -> MaskSet:
        """Masks of a prune step (a `PruneSpec`), fed the run's data as a prune stage would be."""
        ...

    def set_masks(self, masks: MaskSet) -> MaskSet:
        """Install `masks` as the run's masks (checked identical across ranks under torchrun)."""
        ...

    def sample_inputs(self, count: int) -> Tensor:
        """The first `count` training inputs, in order (not shuffled), on the model's device: what a
        method measures the model on (e.g. trainability-preserving pruning's Jacobian singular values)."""
        ...

    def set_dense_state(self, state: dict[str, Tensor]) -> None:
        """Declare the weights the run's dense parent has (for agreement metrics)."""
        ...

    def keep(self, name: str, value: Any) -> None:
        """Hand `value` (plain tensors and numbers) to later stages under `name`; it is saved and
        resumed with the run's state (e.g. `param_stats` for the `ensemble` stage)."""
        ...


def stage_sparsity(services: StageServices, own: float | None) -> float | None:
    """A block's sparsity: its own, else the stage's level, else the recipe's (None if none)."""
    return next((s for s in (own, services.level_sparsity, services.recipe_sparsity) if s is not None), None)


class TrainingMethod:
    """Base of every training-time method (see the module docstring)."""

    name: ClassVar[str] = ""
    schema: ClassVar[Any] = None
    changes_mask: ClassVar[bool] = True
    # A field of its block that names an entry of another registry (listed by `secateurs methods`).
    choices: ClassVar[tuple[str, Registry] | None] = None
    dense_gradient_at: Callable[[int], bool] | None = None

    def __init__(self, config: Any, services: StageServices) -> None:
        self.config = config
        self.services = services

    def callbacks(self) -> list[Callback]:
        return []

    def before_training(self) -> None:
        """Before the stage's training starts (the optimizer is not built yet)."""

    def after_training(self) -> None:
        """After the stage's training ended."""

    def events(self) -> list[tuple[int, dict[str, Any]]]:
        """(step, metrics) rows to publish under this method's name."""
        return []


TRAINING: Registry[type[TrainingMethod]] = Registry("training-time method")
