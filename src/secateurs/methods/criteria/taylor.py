"""First-order Taylor: |g ⊙ θ|, the loss change predicted by removing each weight.

A group (a channel, a block) is scored by (Σ g·θ)² over all its entries, weights and biases: the
first-order loss change of removing it whole (Molchanov et al. 2019), so the signed
contributions g·θ are pooled by `squared_sum`.
"""

from __future__ import annotations

from torch import Tensor

from secateurs.core.errors import ConfigError
from secateurs.methods.criteria.base import (
    CRITERIA,
    Criterion,
    ScoringContext,
    accumulate_gradients,
    check_mode,
)


@CRITERIA.register("taylor", "|g·θ|: first-order estimate of the loss change (needs data)")
class Taylor(Criterion):
    """Gradient summed over `num_batches` batches, times the weight, in absolute value, with the
    model in `mode` (train or eval) while scoring."""

    name = "taylor"
    needs_data = True
    pooling = "squared_sum"
    pool_tensors = "all"

    def __init__(self, num_batches: int = 1, mode: str = "train") -> None:
        if num_batches < 1:
            raise ConfigError(f"taylor num_batches must be ≥ 1, got {num_batches}")
        self.num_batches = num_batches
        self.mode = self.scoring_mode = check_mode(self.name, mode)

    def contributions(self, ctx: ScoringContext) -> dict[str, Tensor]:
        grads = accumulate_gradients(ctx, self.name, self.num_batches, self.mode)
        return {n: grads[n] * p.detach() for n, p in ctx.params().items()}

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        return {n: c.abs() for n, c in self.contributions(ctx).items()}
