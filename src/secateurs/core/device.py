"""Where a run computes: one parser for `device:` (recipe and CLI), resolved once per process.

A recipe names a device as users write it (`auto`, `cpu`, `cuda`, `cuda:N`, `mps`); the name is
checked when the recipe is read (a typo fails before anything loads) and resolved to a
`torch.device` when the run starts, on the machine that runs it. Under torchrun every process
takes the GPU of its local rank, so one recipe serves one process or eight. Everything else in
the library follows the device of the model's parameters rather than choosing one of its own.
"""

from __future__ import annotations

import os
import re

import torch

from secateurs.core.errors import ConfigError

__all__ = ["DEVICE_FORMS", "check_device_name", "resolve_device"]

DEVICE_FORMS = "auto, cpu, cuda, cuda:N (N = the GPU's index), mps"
_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: str) -> str:
    """`name` in its canonical spelling, or ValueError saying which names exist."""
    canonical = name.strip().lower() if isinstance(name, str) else ""
    if not _NAME.match(canonical):
        raise ValueError(f"unknown device {name!r}; devices are {DEVICE_FORMS}")
    return canonical


def _local_rank() -> int | None:
    """This process's GPU index under torchrun (None when not launched by it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ.get("LOCAL_RANK", "0"))


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """The `torch.device` that `name` means on this machine, or one ConfigError saying why not.

    `auto` is the local rank's CUDA GPU when there is one, else Apple's MPS, else the CPU.
    """
    try:
        name = check_device_name(name)
    except ValueError as err:
        raise ConfigError(str(err), fix="write one of them, e.g. device: auto") from None
    rank = _local_rank()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available() and rank is None:
            name = "mps"
        else:
            name = "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ConfigError(
                "device 'mps' is not available: this PyTorch sees no Apple GPU",
                fix="use device: auto or cpu",
            )
        return torch.device("mps")
    return _cuda(name, rank)


def _cuda(name: str, rank: int | None) -> torch.device:
    if not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            f"device {name!r} is not available: this PyTorch ({torch.__version__}, {build}) sees no CUDA GPU",
            fix="use device: auto or cpu, or install a CUDA build of PyTorch on a machine with a GPU",
        )
    count = torch.cuda.device_count()
    if name == "cuda":
        index = rank if rank is not None else torch.cuda.current_device()
    elif rank is not None:
        raise ConfigError(
            f"device {name!r} names one GPU, but under torchrun every process takes its local rank's GPU",
            fix="write device: cuda (or auto)",
        )
    else:
        index = int(name.split(":")[1])
    if index >= count:
        raise ConfigError(
            f"device cuda:{index} does not exist: this machine has {count} CUDA GPU(s), "
            f"cuda:0 to cuda:{count - 1}",
            fix="use an index below the number of GPUs, or fewer torchrun processes per node",
        )
    return torch.device("cuda", index)
