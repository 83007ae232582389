"""What an evaluate stage measures of a model (beyond-accuracy metrics live in `secateurs.eval`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from secateurs.core.masks import MaskSet, masks_of
from secateurs.data import DataSplits
from secateurs.eval import count_costs, evaluate


def collapsed_layers(masks: MaskSet | None) -> int:
    """How many masked parameters keep no entry at all: each one disconnects the network."""
    return 0 if masks is None else sum(1 for n in masks if not bool(masks[n].any()))


def model_metrics(model: nn.Module, data: DataSplits, *, per_layer: bool = False) -> dict[str, Any]:
    """Accuracy, loss, parameter and MAC counts (dense and nonzero), and mask sparsity."""
    scores = evaluate(model, data.test_loader())
    costs = count_costs(model, data.info.input_shape)
    masks = masks_of(model)
    out: dict[str, Any] = {
        "accuracy": scores["accuracy"],
        "loss": scores["loss"],
        "params": costs.params,
        "nonzero_params": costs.nonzero_params,
        "macs": costs.macs,
        "nonzero_macs": costs.nonzero_macs,
        "sparsity": masks.sparsity() if masks is not None else 0.0,
        "remaining": masks.density() if masks is not None else 1.0,
        "collapsed_layers": collapsed_layers(masks),
    }
    if per_layer:
        out["layers"] = costs.table_rows()
    return out
