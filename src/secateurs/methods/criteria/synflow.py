"""SynFlow (Tanaka et al. 2020): data-free synaptic saliency |θ ⊙ ∂R/∂θ| of the linearised net.

Every parameter (BatchNorm affine ones included) is replaced by |θ| (masked entries by 0) and the
model runs in eval mode on an all-ones input of batch 1, so R = Σ output is a positive path sum.
The model itself is left as it was. One call scores once; the iterative 100-round SynFlow is
`compute_masks(..., rounds=100)`, which re-scores the already-masked model each round.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from secateurs.core.errors import ConfigError, check_choice
from secateurs.core.masks import MaskSet
from secateurs.methods.criteria.base import CRITERIA, Criterion, ScoringContext, logits_of, module_mode

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_TOKEN_FIX = (
    "synflow is defined for models on continuous inputs (images, signals); for models on token ids use "
    "magnitude, wanda, snip or taylor"
)


@CRITERIA.register("synflow", "|θ·∂R/∂θ| of the |θ| network on an all-ones input (data-free)")
class Synflow(Criterion):
    """`dtype="float64"` scores a double-precision copy (deep nets overflow float32 path sums)."""

    name = "synflow"
    scoring_mode = "eval"
    applies_masks = True

    def __init__(self, dtype: Literal["float32", "float64"] = "float32") -> None:
        self.dtype = check_choice(
            dtype, sorted(_DTYPES), "synflow dtype", fix="float32 (the default) or float64 for very deep nets"
        )

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        if ctx.input_shape is None and any(isinstance(m, nn.Embedding) for m in ctx.model.modules()):
            raise ConfigError(
                "criterion 'synflow' scores a model on an all-ones input, and this model starts from token "
                "ids (it has an nn.Embedding), which cannot be all-ones floats",
                fix=_TOKEN_FIX,
            )
        if ctx.input_shape is None:
            raise ConfigError(
                "criterion 'synflow' needs the model's input shape to build its all-ones input",
                fix="pass input_shape=(C, H, W) (one sample, no batch dimension) to prune()/compute_masks()",
            )
        if self.dtype == "float64":
            model = copy.deepcopy(ctx.model).to(torch.float64)
            return _saliency(model, ctx.names, ctx.input_shape, torch.float64, ctx.masks)
        return _saliency(ctx.model, ctx.names, ctx.input_shape, torch.float32, ctx.masks)


def _saliency(
    model: nn.Module, names: list[str], input_shape: tuple[int, ...], dtype: torch.dtype, masks: MaskSet
) -> dict[str, Tensor]:
    """|θ ⊙ ∂R/∂θ| of the network with every parameter at |θ| (masked entries at 0), in eval mode.

    The |θ| network is a set of new tensors run through `functional_call`: the model's values and
    `.grad` fields are never touched, so there is nothing to save and restore (pruning in rounds
    scores a hundred times).
    """
    linear: dict[Tensor, Tensor] = {}  # by parameter, so tied names share one |θ| tensor
    named = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if p not in linear:
            value = p.detach().abs()
            if n in masks:  # a float 0/1 multiplier: multiplying by a bool mask is 4x slower
                value.mul_(masks[n].to(device=value.device, dtype=value.dtype))
            linear[p] = value
        named[n] = linear[p]
    scored = [named[n].requires_grad_(True) for n in names]
    device = scored[0].device if scored else next(iter(named.values())).device
    with module_mode(model, "eval"):
        try:
            ones = torch.ones((1, *input_shape), dtype=dtype, device=device)
            out = logits_of(functional_call(model, named, (ones,), tie_weights=False))
        except (RuntimeError, TypeError) as err:
            raise ConfigError(
                f"criterion 'synflow' feeds an all-ones input of shape {(1, *input_shape)}, which this model "
                f"cannot take ({str(err).splitlines()[0][:120]})",
                fix=_TOKEN_FIX,
            ) from None
    step = torch.autograd.grad(out.sum(), scored, allow_unused=True)
    return {
        n: (p.detach() * g).abs() if g is not None else torch.zeros_like(p)
        for n, p, g in zip(names, scored, step, strict=True)
    }
