"""Data-parallel runs under `torchrun` (PyTorch DDP: gloo for CPU tensors, NCCL for CUDA ones).

Every rank runs the whole recipe on its own copy of the model; what makes them one run:

- Training shards every global batch over the ranks (`shard_batch`): rank r takes entries
  r, r + N, r + 2N … of the batch the one-process run would draw, so the ranks together see
  exactly the one-process batches, and DDP averages their gradients. (The last, partial batch
  of an epoch is padded from the epoch's start so every rank takes the same number of steps.)
- Masks are identical on every rank. Everything that chooses them is rank-independent: seeds
  come from the recipe, never from the rank; scoring data (SNIP/GraSP/Taylor batches) is the
  same global batch on every rank; gradients and momenta (RigL, SNFS) are DDP-averaged. On
  top of that, scores are broadcast from rank 0 before selection (`sync_scores`: a broadcast,
  not an average, because averaging N equal floats can change their last bit when N is not a
  power of two, and a tie would then break differently than in the one-process run), and after
  every prune or mask update `check_same_masks` compares a hash of the masks across ranks: a
  mismatch stops every rank with an error instead of silently training different models.
- Only rank 0 writes (results, checkpoints, reports) and prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import Tensor

from secateurs.core.errors import SecateursError


class DistributedError(SecateursError):
    """The ranks of a distributed run disagree, or the process group cannot be set up."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank and number of processes (1 when not distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0


def world() -> World:
    """The current process group (World(0, 1) when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process as one of several (its environment says so)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment() -> World:
    """Join the process group torchrun describes in the environment.

    CPU tensors go over gloo (TCP, between machines too); on a machine with CUDA GPUs, CUDA
    tensors go over NCCL and this process takes the GPU of its local rank. One group serves
    both, so a recipe with `device: cpu` still runs on a GPU machine. A no-op outside torchrun
    or when already initialised.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise DistributedError(
            "this PyTorch build has no torch.distributed",
            fix="install a PyTorch build with distributed support",
        )
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    try:
        dist.init_process_group(backend=backend)
    except (RuntimeError, ValueError) as err:
        raise DistributedError(
            f"cannot join the process group ({err})",
            fix="launch with torchrun (secateurs run --nproc N): it sets MASTER_ADDR, MASTER_PORT and ranks",
        ) from None
    return world()


def shutdown(*, finished: bool = False) -> None:
    """Leave the process group (end of a torchrun process).

    After a run that `finished` on every rank, the ranks first meet at a barrier: a rank tearing
    its gloo connections down while another still talks on them (rank 0 writing the results, say)
    can abort that one. After an error there is no barrier, since the other ranks may never come.
    """
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def exit_worker(code: int = 0) -> NoReturn:
    """End a torchrun worker process at once, skipping Python's interpreter teardown.

    PyTorch's DDP keeps the gloo process group alive past `destroy_process_group` (its worker
    threads keep running), and such a thread releases the work of the last collectives, which
    holds Python tensors, whenever it gets to it. When that happens while the interpreter is
    shutting down, the thread cannot take the GIL and the process aborts ("terminate called
    without an active exception", SIGABRT), turning a finished run into a failed one: about 1 run
    in 50 on a loaded 2-core machine. Everything a run writes is closed and renamed into place
    before this point, so only the standard streams and logging need flushing.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or a broken pipe: nothing can reach it
            stream.flush()
    os._exit(code)


def shard_batch(indices: Tensor, order: Tensor, w: World) -> Tensor:
    """Rank `w.rank`'s part of one global batch `indices`: entries rank, rank + N, ….

    A batch whose size is not a multiple of N is first padded with the epoch's first indices
    (`order`), so every rank gets the same number of samples (and DDP the same number of steps).
    """
    if not w.active:
        return indices
    short = -len(indices) % w.size
    if short:
        indices = torch.cat([indices, order[:short]])
    return indices[w.rank :: w.size]


def sync_scores(scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rank 0's scores on every rank (see the module doc for why a broadcast, not an average)."""
    w = world()
    if not w.active:
        return dict(scores)
    out = {}
    for name in sorted(scores):
        value = scores[name].detach().contiguous().clone()
        dist.broadcast(value, src=0)
        out[name] = value
    return {name: out[name] for name in scores}


def masks_digest(masks: Mapping[str, Tensor] | None) -> str:
    """A hash of the masks' names, shapes and bits."""
    h = hashlib.sha256()
    for name in sorted(masks or {}):
        mask = masks[name].detach().to("cpu", torch.bool).contiguous()  # type: ignore[index]
        h.update(name.encode())
        h.update(str(tuple(mask.shape)).encode())
        h.update(mask.numpy().tobytes())
    return h.hexdigest()


def check_same_masks(masks: Mapping[str, Tensor] | None, where: str) -> None:
    """Stop every rank with a DistributedError if the ranks' masks differ."""
    w = world()
    if not w.active:
        return
    digests: list[str | None] = [None] * w.size
    dist.all_gather_object(digests, masks_digest(masks))
    if len(set(digests)) > 1:
        raise DistributedError(
            f"the ranks' masks differ after {where} (hashes by rank: "
            + ", ".join(f"{r}: {d[:12] if d else None}" for r, d in enumerate(digests))
            + ")",
            fix="keep every random choice rank-independent (seeds from the recipe) and the scoring data "
            "the same on every rank; this is a bug if it happens with a built-in method, please report it",
        )
