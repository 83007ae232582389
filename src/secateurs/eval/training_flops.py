"""Training FLOPs, counted as in the RigL paper (Evci et al. 2020, appendix H).

Methods are compared at equal training cost, not only at equal sparsity. With f_S the forward
cost of one sample through the masked network and f_D through the dense one, one training
step on a batch of B samples costs

    B · (f_S + f_S + f_S)   forward, gradient w.r.t. activations, gradient w.r.t. weights;
    B · (f_S + f_S + f_D)   when the method needs the dense weight gradient at that step
                            (RigL at its mask updates, SNFS at every step for its momentum);
    B · 3 f_D               for a dense network.

f_S is priced from the masks, not from the weights' zeros: a weight grown at zero by dynamic
sparse training costs work from the step it is grown. FLOPs = 2 × MACs. Biases, norms and
activations are ignored, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from secateurs.core.masks import MaskSet, masks_of
from secateurs.eval.macs import count_costs
from secateurs.train.engine import Callback, TrainState


@dataclass(frozen=True)
class ForwardCost:
    """Per-sample forward MACs of a model, and of each weight entry, to price any mask."""

    dense: int
    per_entry: dict[str, int]  # weight parameter name -> MACs per sample each of its entries causes

    def sparse(self, masks: MaskSet | None) -> int:
        """Forward MACs per sample with `masks` applied (masks of uncounted tensors, e.g. biases, save 0)."""
        if masks is None:
            return self.dense
        pruned = sum(self.per_entry.get(name, 0) * (m.numel() - int(m.sum())) for name, m in masks.items())
        return self.dense - pruned


def forward_cost(model: nn.Module, input_shape: tuple[int, ...]) -> ForwardCost:
    """The dense forward cost of `model` and what each entry of each counted weight adds to it."""
    report = count_costs(model, input_shape)  # its dense `macs` depend on shapes only
    modules = dict(model.named_modules())
    per_entry = {}
    for layer in report.layers:
        weight = modules[layer.name].weight
        name = f"{layer.name}.weight" if layer.name else "weight"
        per_entry[name] = layer.macs // weight.numel()
    return ForwardCost(report.macs, per_entry)


class TrainingFlops(Callback):
    """Adds up the training FLOPs of a training run (and those of the same steps on the dense model).

    Put it first among the callbacks: at each step it prices the masks that step trained with,
    before other callbacks change them.
    """

    def __init__(
        self,
        cost: ForwardCost,
        batch_size: int,
        dense_gradient_at: Callable[[int], bool] | None = None,
    ) -> None:
        self.cost, self.batch_size, self.dense_gradient_at = cost, batch_size, dense_gradient_at
        self.flops = 0
        self.dense_flops = 0
        self._masks: MaskSet | None = None
        self._sparse = cost.dense

    def _price(self, state: TrainState) -> int:
        masks = masks_of(state.model)
        if masks is not self._masks:
            self._masks, self._sparse = masks, self.cost.sparse(masks)
        return self._sparse

    def on_step_end(self, state: TrainState) -> None:
        f_s, f_d = self._price(state), self.cost.dense
        dense_grad = self.dense_gradient_at is not None and self.dense_gradient_at(state.step)
        macs = 2 * f_s + (f_d if dense_grad else f_s)
        self.flops += 2 * self.batch_size * macs
        self.dense_flops += 2 * self.batch_size * 3 * f_d
