"""Dynamical isometry: input-output Jacobian singular values, and OrthP.

A network is dynamically isometric when the singular values of its input-output Jacobian are
all close to 1 (Saxe et al. 2014; Pennington et al. 2017): gradients then neither vanish nor
explode on their way through it, and it trains fast. Pruning breaks this, one reason why pruned
networks retrained from the pruned weights learn slowly and why the fine-tuning learning rate
matters so much (Wang et al. 2021, "Dynamical Isometry: The Missing Ingredient for Neural
Network Pruning"). Their remedy, OrthP, replaces every pruned weight by the nearest matrix with
orthonormal rows or columns under its mask before retraining: `orthogonalize_`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.eval.metrics import eval_mode, model_device

__all__ = ["jacobian_singular_values", "jsv_stats", "orthogonalize_", "polar_factor"]


def _jacobians(model: nn.Module, x: Tensor) -> Tensor:
    """Per-sample Jacobians (N, outputs, inputs) with one backward pass per output unit.

    In eval mode the samples of a batch do not interact (BatchNorm uses its running
    statistics), so the gradient of Σ_n out[n, k] with respect to the batch holds row k of every
    sample's Jacobian at once: `outputs` backward passes for the whole batch instead of one
    Jacobian per sample.
    """
    inputs = x.detach().to(model_device(model)).clone().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        out = model(inputs).reshape(inputs.shape[0], -1)
        rows = []
        for k in range(out.shape[1]):
            (grad,) = torch.autograd.grad(out[:, k].sum(), inputs, retain_graph=k + 1 < out.shape[1])
            rows.append(grad.reshape(inputs.shape[0], -1))
    return torch.stack(rows, dim=1)


def jacobian_singular_values(model: nn.Module, x: Tensor) -> Tensor:
    """All singular values of every sample's input-output Jacobian, pooled in one 1-D tensor.

    Each sample's Jacobian is (flattened outputs × flattened inputs) and contributes
    min(outputs, inputs) values; the result is ordered sample by sample, largest first within
    a sample. Computed in eval mode (modes restored); weights and their gradients untouched.
    """
    if x.dim() < 2 or x.shape[0] == 0:
        raise ConfigError(
            f"x of shape {tuple(x.shape)} is not a batch of samples", fix="pass at least one sample (N, ...)"
        )
    return torch.linalg.svdvals(_jacobians(model, x).detach()).reshape(-1)


def jsv_stats(model: nn.Module, x: Tensor) -> dict[str, float]:
    """Mean, population standard deviation, maximum and minimum of the Jacobian singular values."""
    values = jacobian_singular_values(model, x).to(torch.float64)
    return {
        "jsv_mean": float(values.mean()),
        "jsv_std": float(values.std(correction=0)),
        "jsv_max": float(values.max()),
        "jsv_min": float(values.min()),
    }


def polar_factor(matrix: Tensor) -> Tensor:
    """U Vᵀ from the thin SVD U S Vᵀ: the (semi-)orthogonal matrix nearest to `matrix`.

    Its rows are orthonormal when the matrix is wide or square, its columns when it is tall.
    """
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u @ vh


def _submatrix_support(mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """(kept rows, kept columns) if the kept entries form exactly their cross product, else None."""
    rows, cols = mask.any(dim=1), mask.any(dim=0)
    if torch.equal(mask, rows[:, None] & cols[None, :]):
        return rows.nonzero().flatten(), cols.nonzero().flatten()
    return None


@torch.no_grad()
def orthogonalize_(weight: Tensor, mask: Tensor | None = None) -> None:
    """OrthP (Wang et al. 2021): make a pruned weight (semi-)orthogonal under its mask, in place.

    The weight is viewed as (out, rest) (a conv's kernel flattened per output channel).

    * No mask: the weight becomes its polar factor.
    * Structured mask (the kept entries are exactly kept rows × kept columns, as after neuron
      or channel pruning): the kept submatrix becomes its polar factor and everything else
      zero, so the kept part is *exactly* isometric (Q Qᵀ = I, or Qᵀ Q = I when tall).
    * Unstructured mask: the polar factor of the masked matrix, masked again. Masking destroys
      orthogonality, so this is only closer to isometry than the pruned weight, not exact.
    """
    if weight.dim() < 2:
        raise ConfigError(
            f"cannot orthogonalize a parameter of shape {tuple(weight.shape)}",
            fix="orthogonalize weight matrices and conv kernels, not biases or norm scales",
        )
    matrix = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
    if mask is None:
        weight.copy_(polar_factor(matrix).reshape(weight.shape))
        return
    if tuple(mask.shape) != tuple(weight.shape):
        raise ConfigError(f"mask of shape {tuple(mask.shape)} does not fit weight {tuple(weight.shape)}")
    keep = mask.to(device=weight.device, dtype=torch.bool).reshape(matrix.shape)
    support = _submatrix_support(keep)
    if support is None:
        result = polar_factor(matrix * keep) * keep
    else:
        rows, cols = support
        result = torch.zeros_like(matrix)
        if rows.numel():
            result[rows[:, None], cols[None, :]] = polar_factor(matrix[rows][:, cols])
    weight.copy_(result.reshape(weight.shape))
