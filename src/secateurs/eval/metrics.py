"""Accuracy, loss and parameter counts.

`evaluate` is the one place that turns a model and a loader into numbers, so every recipe
reports accuracy and loss the same way: sums over samples (not means of batch means, which
are wrong when the last batch is short) and the model's train/eval state left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secateurs.core.errors import ConfigError

LossFn = Callable[[Tensor, Tensor], Tensor]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode and restore every submodule's own mode on exit.

    Restoring per submodule (not `model.train(was_training)`) keeps deliberate mixes, such as
    frozen BatchNorm layers held in eval mode inside a training model.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a stateless model."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) over all parameters; a parameter shared by two modules counts once."""
    total = 0
    nonzero = 0
    for param in model.parameters():
        total += param.numel()
        nonzero += int(torch.count_nonzero(param.detach()))
    return total, nonzero


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    loss_fn: LossFn = F.cross_entropy,
) -> dict[str, float]:
    """Top-1 accuracy and mean per-sample loss of a classifier over `loader`.

    `loss_fn(logits, targets)` must return the batch *mean* (PyTorch's default reduction); it is
    weighted by the batch size so that the result is the exact per-sample mean. Returns
    ``{"accuracy": fraction in [0, 1], "loss": mean loss, "n": number of samples}``.
    """
    device = model_device(model)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    with eval_mode(model):
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            logits = model(inputs)
            batch = targets.shape[0]
            correct += (logits.argmax(dim=1) == targets).sum()
            loss_sum += loss_fn(logits, targets).to(torch.float64) * batch
            n += batch
    if n == 0:
        raise ConfigError(
            "the evaluation loader yielded no samples",
            fix="check the data split and batch settings (e.g. drop_last with a split smaller than a batch)",
        )
    return {"accuracy": int(correct) / n, "loss": float(loss_sum) / n, "n": n}
