"""GraSP (Wang et al. 2020): keep the weights whose removal would most reduce gradient flow.

GraSP scores S = −θ ⊙ (H g) and removes the weights with the *highest* S. Our convention is
higher = keep, so this criterion returns θ ⊙ (H g) = −S: keeping its highest entries is exactly
removing GraSP's highest. Both g and H are those of the temperature-scaled loss
L_T = loss(logits / T, y), as in the authors' code (T = 200 softens the softmax so that the
Hessian is not dominated by saturated outputs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from secateurs.core.errors import ConfigError
from secateurs.methods.criteria.base import (
    CRITERIA,
    Batch,
    Criterion,
    ScoringContext,
    check_mode,
    logits_of,
    preserved_state,
    take_batches,
)
from secateurs.methods.criteria.snip import check_positive


@CRITERIA.register("grasp", "θ·Hg (GraSP, gradient-flow preservation at init; needs data)")
class Grasp(Criterion):
    """Hessian-gradient product by double backward over up to `num_batches` batches, with the model
    in `mode` (train or eval) while scoring."""

    name = "grasp"
    needs_data = True
    pooling = "sum"  # the sign carries the meaning: a group's score is the sum of its entries'

    def __init__(
        self,
        temperature: float = 200.0,
        samples_per_class: int = 10,
        num_batches: int = 1,
        mode: str = "train",
    ) -> None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or temperature <= 0:
            raise ConfigError(f"grasp temperature must be a positive number, got {temperature!r}")
        self.temperature = float(temperature)
        self.samples_per_class = check_positive(self.name, "samples_per_class", samples_per_class)
        self.num_batches = check_positive(self.name, "num_batches", num_batches)
        self.mode = self.scoring_mode = check_mode(self.name, mode)

    def _loss(self, ctx: ScoringContext, batch: Batch) -> Tensor:
        x, y = batch
        return ctx.loss_fn(logits_of(ctx.model(x)) / self.temperature, y)

    def hessian_gradient(self, ctx: ScoringContext) -> dict[str, Tensor]:
        """H g of the temperature-scaled loss summed over the batches, g its (detached) gradient."""
        params = ctx.params()
        plist = list(params.values())
        with preserved_state(ctx, self.mode):
            batches = take_batches(ctx, self.name, self.num_batches)
            g = [torch.zeros_like(p) for p in plist]
            for batch in batches:
                step = torch.autograd.grad(self._loss(ctx, batch), plist, allow_unused=True)
                g = [acc + s.detach() if s is not None else acc for acc, s in zip(g, step, strict=True)]
            hg = [torch.zeros_like(p) for p in plist]
            for batch in batches:
                grads = torch.autograd.grad(
                    self._loss(ctx, batch), plist, create_graph=True, allow_unused=True
                )
                z = sum((gr * v).sum() for gr, v in zip(grads, g, strict=True) if gr is not None)
                if not isinstance(z, Tensor) or not z.requires_grad:
                    continue  # the loss is linear in every scored parameter: H g = 0
                try:
                    step = torch.autograd.grad(z, plist, allow_unused=True)
                except RuntimeError as err:  # e.g. a fused attention kernel without a double backward
                    raise ConfigError(
                        f"criterion 'grasp' needs second derivatives, which this model cannot give "
                        f"({str(err).splitlines()[0][:120]})",
                        fix="use layers whose backward is differentiable (for a Hugging Face model: "
                        "model options attention: eager), or another criterion (snip, taylor)",
                    ) from None
                hg = [acc + s.detach() if s is not None else acc for acc, s in zip(hg, step, strict=True)]
        return dict(zip(params, hg, strict=True))

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        hg = self.hessian_gradient(ctx)
        return {n: p.detach() * hg[n] for n, p in ctx.params().items()}
