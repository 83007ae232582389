"""Weight initialisation, shared by construction and by the "reinit" reset mode.

One function decides every module's init, so a fresh model built with `seed=s` and an old model
re-initialised with `seed=s` end up bit-identical. Re-initialisation is in place: the
`Parameter` objects stay the same, so optimizers and masks that point at them stay valid.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

logger = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def init_module(module: nn.Module) -> bool:
    """Initialise `module`'s own parameters; return whether it has an init.

    Convolutions get Kaiming-normal (fan_out, ReLU) weights and zero biases, as in He et al.;
    every other module with `reset_parameters()` (Linear, BatchNorm, …) gets PyTorch's default,
    which for BatchNorm is weight 1, bias 0 and fresh running statistics.
    """
    if isinstance(module, _CONV):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
        return True
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return True
    return False


def init_weights(model: nn.Module) -> None:
    """Initialise every submodule in definition order, drawing from the current RNG."""
    uncovered: list[str] = []
    for name, module in model.named_modules():
        if not init_module(module):
            uncovered += [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
    if uncovered:
        logger.warning("parameters without an initialiser were left unchanged: %s", ", ".join(uncovered))


@contextmanager
def seeded_rng(seed: int, model: nn.Module | None = None) -> Iterator[None]:
    """Draw from a generator seeded with `seed`, restoring the global RNG state afterwards.

    Only the CPU generator and the CUDA devices holding `model`'s tensors are touched, so a CPU
    model never initialises CUDA.
    """
    tensors = [] if model is None else [*model.parameters(), *model.buffers()]
    cuda = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


@torch.no_grad()
def reinitialize(model: nn.Module, *, seed: int) -> None:
    """Re-draw every parameter in place from `seed`, keeping the Parameter objects.

    The result equals `build_model(..., seed=seed)` for the same architecture. Masked weights
    become non-zero again: re-apply the masks afterwards.
    """
    with seeded_rng(seed, model):
        init_weights(model)
