"""Sanity checks for pruning criteria (Frankle et al. 2021; Su et al. 2020).

A check perturbs one thing a criterion relies on and leaves everything else as it is, so that
the accuracy change it causes tells whether the criterion's choice mattered:

- mask level: `shuffle` permutes each layer's new mask at random (same count per layer: the
  "random ticket"); `invert` keeps the lowest scores instead of the highest;
- data level: `random_labels` / `random_pixels` score on corrupted batches;
- weight level: `reinit` re-draws the kept weights after pruning.

Every check is seeded; "none" is the default and changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from secateurs.core.masks import MaskSet, masks_of, set_masks
from secateurs.core.registry import Registry
from secateurs.methods.criteria.base import Batch
from secateurs.models import reinitialize


@dataclass(frozen=True)
class SanityCheck:
    """Where a check acts: "scores" (invert), "masks" (shuffle), "data" or "weights".

    `corrupt(batch, generator)` changes a scoring batch (data checks); `weights(model, seed)` acts
    on the model right after the prune (weight checks). The pruning step reads only these.
    """

    level: str
    corrupt: Callable[[Batch, torch.Generator], Batch] | None = None
    weights: Callable[[nn.Module, int], None] | None = None


SANITY: Registry[SanityCheck] = Registry("sanity check")


def sanity_seed(seed: int, check: str) -> int:
    """A seed for `check`, independent of (and different from) the seed it derives from."""
    digest = hashlib.sha256(f"sanity/{check}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def permute_labels(batch: Batch, generator: torch.Generator) -> Batch:
    """The batch with its labels in a random order: inputs and labels no longer match."""
    x, y = batch
    order = torch.randperm(y.shape[0], generator=generator).to(y.device)
    return x, y[order]


def noise_inputs(batch: Batch, generator: torch.Generator) -> Batch:
    """The batch with its inputs replaced by Gaussian noise of the inputs' mean and std."""
    x, y = batch
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    flat = x.float().reshape(-1)
    std = flat.std() if flat.numel() > 1 else flat.new_zeros(())
    return (noise * std + flat.mean()).to(x.dtype), y


class CorruptedBatches:
    """Batches corrupted by a data check; each pass over them gives the same corruption."""

    def __init__(self, batches: Iterable[Batch], check: str, seed: int) -> None:
        corrupt = SANITY.get(check).corrupt
        assert corrupt is not None, f"{check} is not a data check"
        self.batches, self.corrupt, self.seed = batches, corrupt, seed

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.seed)
        for batch in self.batches:
            yield self.corrupt(batch, generator)


def shuffle_masks(masks: MaskSet, seed: int, allowed: MaskSet | None = None) -> MaskSet:
    """Each layer's mask with its kept entries moved to uniformly random positions (same count).

    With `allowed` (the masks before this prune), kept entries only move among allowed
    positions, so masks still only shrink.
    """
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in masks:
        mask = masks[name]
        flat = mask.reshape(-1)
        pool = torch.arange(flat.numel())
        if allowed is not None and name in allowed:
            pool = pool[allowed[name].reshape(-1).cpu()]
        chosen = pool[torch.randperm(pool.numel(), generator=generator)[: int(flat.sum())]]
        shuffled = torch.zeros(flat.numel(), dtype=torch.bool)
        shuffled[chosen] = True
        out[name] = shuffled.reshape(mask.shape).to(mask.device)
    return MaskSet(out)


def reinit_kept(model: nn.Module, seed: int) -> None:
    """Re-draw every weight of `model` from `seed` and re-apply its masks (the kept weights are new)."""
    masks = masks_of(model)
    reinitialize(model, seed=seed)
    set_masks(model, masks)


SANITY.add("none", SanityCheck("none"), "no check")
SANITY.add("shuffle", SanityCheck("masks"), "permute each layer's mask at random (same per-layer counts)")
SANITY.add("invert", SanityCheck("scores"), "keep the lowest-scoring weights")
SANITY.add("random_labels", SanityCheck("data", permute_labels), "score on randomly permuted labels")
SANITY.add("random_pixels", SanityCheck("data", noise_inputs), "score on Gaussian-noise inputs")
SANITY.add(
    "reinit", SanityCheck("weights", weights=reinit_kept), "re-initialise the kept weights after pruning"
)
