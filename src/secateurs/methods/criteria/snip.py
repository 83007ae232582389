"""SNIP (Lee et al. 2019): connection sensitivity |g ⊙ θ| at initialization, normalised."""

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


def check_positive(criterion: str, option: str, value: object) -> int:
    """Options counting samples or batches are positive integers (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{criterion} {option} must be a positive integer, got {value!r}")
    return value


@CRITERIA.register("snip", "|g·θ| normalised, on a class-balanced batch (pruning at init; needs data)")
class Snip(Criterion):
    """Loss gradient summed over `num_batches` batches, times the weight, in absolute value.

    SNIP scores one class-balanced batch: the recipe pipeline feeds
    `class_balanced_batch(data, samples_per_class)` as the single batch (the prune step's own
    `samples_per_class` wins over this option). Called directly, the criterion uses the batches
    it is given. Scores are divided by their sum over all scored parameters as in the paper;
    this does not change any ranking, global or per layer. `mode` is the module mode while
    scoring (train: BatchNorm uses the batch's statistics; eval: its running ones).
    """

    name = "snip"
    needs_data = True

    def __init__(self, samples_per_class: int = 10, num_batches: int = 1, mode: str = "train") -> None:
        self.samples_per_class = check_positive(self.name, "samples_per_class", samples_per_class)
        self.num_batches = check_positive(self.name, "num_batches", num_batches)
        self.mode = self.scoring_mode = check_mode(self.name, mode)

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        grads = accumulate_gradients(ctx, self.name, self.num_batches, self.mode)
        scores = {n: (grads[n] * p.detach()).abs() for n, p in ctx.params().items()}
        total = sum(float(s.sum()) for s in scores.values())
        if total == 0.0:
            return scores
        return {n: s / total for n, s in scores.items()}
