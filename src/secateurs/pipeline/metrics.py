"""What an evaluate stage measures of a model, per task (beyond-accuracy metrics live in `secateurs.eval`).

A task (`TASKS`) is what a data set is for: `classification` (accuracy, loss, parameter and MAC
counts; train stages and beyond-accuracy metrics apply) or `language_modeling` (perplexity on the
held-out windows; a recipe prunes and evaluates a pretrained model, it does not train one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from secateurs.core.masks import MaskSet, masks_of
from secateurs.core.registry import Registry
from secateurs.data import DataSplits
from secateurs.eval import count_costs, evaluate
from secateurs.llm.evaluate import causal_lm_loss, perplexity


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


def mask_metrics(model: nn.Module) -> dict[str, Any]:
    """Parameter counts and the masks' sparsity (what every task reports)."""
    masks = masks_of(model)
    params = sum(p.numel() for p in model.parameters())
    return {
        "params": params,
        "nonzero_params": sum(int(p.count_nonzero()) for p in model.parameters()),
        "sparsity": masks.sparsity() if masks is not None else 0.0,
        "remaining": masks.density() if masks is not None else 1.0,
        "collapsed_layers": collapsed_layers(masks),
    }


def language_model_metrics(model: nn.Module, data: DataSplits, *, per_layer: bool = False) -> dict[str, Any]:
    """Perplexity of a causal language model on the data set's held-out windows, and its sparsity."""
    result = perplexity(model, data.test_in_memory().test_x)
    return {
        "perplexity": result.perplexity,
        "nll": result.nll,
        "eval_tokens": result.tokens,
        **mask_metrics(model),
    }


@dataclass(frozen=True)
class Task:
    """How models of one task are evaluated, and which stages apply to them."""

    evaluate: Callable[..., dict[str, Any]]
    trains: bool  # train stages apply
    beyond: bool  # beyond-accuracy metrics (robustness, calibration, agreement) apply
    loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy  # what gradient criteria differentiate
    classes: bool = True  # samples have a class (class-balanced scoring batches apply)


TASKS: Registry[Task] = Registry("task")
TASKS.add("classification", Task(model_metrics, trains=True, beyond=True), "accuracy on the test split")
TASKS.add(
    "language_modeling",
    Task(language_model_metrics, trains=False, beyond=False, loss=causal_lm_loss, classes=False),
    "perplexity on held-out text windows (pretrained models: prune and evaluate)",
)
