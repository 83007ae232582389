"""Wanda (Sun et al. 2023): |W_ij|·‖X_j‖, a weight times the norm of the input feature it reads.

‖X_j‖ is the L2 norm of input feature j over all calibration tokens (or, for a convolution, over
all patches of the unfolded input: feature j is an input channel at one kernel offset), collected
by `secateurs.methods.calibration`, or given by the caller (`ScoringContext.calibration`: sequential
calibration collects them on each block's inputs). No gradients: only forward passes on calibration
inputs, which may be (x, y) batches, bare input tensors or tokenizer outputs. Wanda compares weights within
each output row (`structure: rows`); a channel group reads its score off the columns consuming
it (`side: consumers`).
"""

from __future__ import annotations

from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.methods.calibration import collect
from secateurs.methods.criteria.base import CRITERIA, Criterion, ScoringContext, take_inputs
from secateurs.methods.criteria.snip import check_positive


def wanda_scores(weight: Tensor, norms: Tensor, groups: int = 1) -> Tensor:
    """|W|·‖X_j‖ for a Linear [out, in] or conv [out, in/groups, *k] weight; `norms` per input column
    of the full (all groups) unfolded input, in (in, *kernel) order; float32."""
    w = weight.detach().abs().float()
    out = w.shape[0]
    per_group = norms.float().to(w.device).reshape(groups, -1)  # group g reads columns of its channels
    rows = per_group.repeat_interleave(out // groups, dim=0)  # the columns each output row reads
    return (w.reshape(out, -1) * rows).reshape(w.shape)


@CRITERIA.register(
    "wanda", "|W|·‖X_j‖: weight times its input feature's norm on calibration data (needs data)"
)
class Wanda(Criterion):
    """`num_batches`: calibration batches used (default: all that are given; with sequential
    calibration, the statistics of the block's inputs on all its calibration batches)."""

    name = "wanda"
    needs_data = True
    layerwise = True
    pooling = "l1"
    side = "consumers"

    def __init__(self, num_batches: int | None = None) -> None:
        self.num_batches = (
            None if num_batches is None else check_positive(self.name, "num_batches", num_batches)
        )

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        modules = dict(ctx.model.named_modules())
        owners = {}
        for name in ctx.names:
            module_name, _, tensor = name.rpartition(".")
            module = modules.get(module_name)
            if tensor != "weight" or not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
                raise ConfigError(
                    f"criterion wanda scores the weights of Linear and Conv1d/Conv2d layers, not {name!r}",
                    fix="keep other parameters out of the selection "
                    "(layers.types, layers.include_bias: false)",
                )
            owners[name] = module_name
        layers = {m: modules[m] for m in owners.values()}
        if ctx.calibration is not None:  # statistics the caller collected (sequential: this block's)
            stats = ctx.calibration(layers)
        else:
            stats = collect(ctx.model, layers, take_inputs(ctx, self.name, self.num_batches))
        params = ctx.params()
        return {
            name: wanda_scores(params[name], stats.get(module).norms(), getattr(modules[module], "groups", 1))
            for name, module in owners.items()
        }
