"""Closed-form refit on a mask: each row's kept weights solved by ridge regression onto the dense outputs.

The update of the closed-form network (`secateurs.methods.closed_form`) applied to any pruned
layer: with the layer's calibration statistics H ∝ Σxxᵀ (`methods.calibration`, `hessian=True`)
and the dense weight W, the targets are the dense outputs Wx, whose cross statistics are
Σx(Wx)ᵀ = (Σxxᵀ)Wᵀ, so nothing beyond OBS's statistics is collected. Row r keeps the weights on
its support S and gets ŵ_S = (H_SS + λI)⁻¹(HWᵀ)_{S,r}, λ = `ridge` · mean diag H: the
least-squares optimum over the kept support (exactly so as `ridge` → 0), solved in float64, one
factorisation per distinct support. So the layer's reconstruction error ‖(W − Ŵ)X‖² never exceeds
that of the masked weights (a row the ridge term would make worse keeps its masked weights), and
pruned entries are exactly zero. Unlike `obs` it solves each row exactly on its support instead
of sweeping columns, and the mask is always the given one.

Cost: one Cholesky factorisation per distinct row support, about rows × kept³/3 flops: quick for
MLPs and convnets, slow for LLM-size layers (4096 rows of 2000 kept inputs), where `obs` shares one
factorisation across the rows. Recipe form: `reconstruct: {method: ridge, ridge: 1.0e-8}`.
Linear and Conv1d/Conv2d (groups=1) layers; a convolution's rows are its output channels over
the unfolded inputs.
"""

from __future__ import annotations

from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.methods.calibration import InputStats
from secateurs.methods.closed_form import refit_on_mask
from secateurs.methods.reconstruction.base import RECONSTRUCTIONS, Reconstruction, non_negative_option
from secateurs.methods.structures import Structure


@RECONSTRUCTIONS.register(
    "ridge", "closed-form refit: each row's kept weights by ridge regression (ridge: λ)"
)
class RidgeRefit(Reconstruction):
    """`ridge`: the ridge penalty, a fraction of the mean diagonal of the calibration Hessian."""

    name = "ridge"

    def __init__(self, ridge: float = 1e-8) -> None:
        self.ridge = non_negative_option(
            "ridge", "ridge", ridge, "e.g. ridge: 1.0e-8 (a fraction of the mean diagonal of Σxxᵀ)"
        )

    def check_layer(self, name: str, module: nn.Module, *, pruned_before: bool = False) -> None:
        if not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d) or getattr(module, "groups", 1) != 1:
            raise ConfigError(
                f"ridge reconstruction refits Linear and Conv1d/Conv2d (groups=1) layers, not {name!r} "
                f"({type(module).__name__})",
                where="reconstruct",
                fix="exclude the layer from the prune (layers.exclude / layers.types), or prune it "
                "without reconstruct",
            )

    def apply(
        self, name: str, module: nn.Module, mask: Tensor, stats: InputStats, *, structure: Structure
    ) -> Tensor:
        weight = module.weight
        matrix = weight.detach().reshape(weight.shape[0], -1)
        keep = mask.reshape(matrix.shape).to(matrix.device)
        new = refit_on_mask(matrix, stats.hessian_matrix().to(matrix.device), keep, self.ridge)
        weight.data.copy_(new.reshape(weight.shape))
        return mask
