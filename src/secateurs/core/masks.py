"""Masks that live beside a model, not inside its parameter names.

A `MaskSet` maps parameter names (as in `model.named_parameters()`) to boolean tensors:
True = keep. The model's `state_dict` keys never change; masks are saved beside it.

Keeping masks applied is cheap: the weights are zeroed once, and after every optimizer step
the pruned entries of the masked parameters are cleared in place (a bitwise AND, as cheap as
a multiply, that also clears NaN and inf) through PyTorch's own optimizer step hooks, so any
training loop keeps them. Unlike `torch.nn.utils.prune` nothing is recomputed through
autograd in the forward pass.

A parameter shared by several modules (a head tied to its embedding) is one tensor and has one
mask, under its canonical name: the first name `model.named_parameters()` gives it. A mask given
under another of its names (an alias) is bound to the same tensor and renamed when read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from secateurs.core.errors import CheckpointError, ConfigError, ModelTypeError

_ATTR = "_secateurs_masks"


def canonical_names(model: nn.Module) -> dict[str, str]:
    """Every name of every parameter of `model` (tied aliases included) → its canonical name.

    The canonical name is the first one `model.named_parameters()` gives the tensor; it is the
    name a shared parameter has in masks, layouts and scores, so that it is pruned once.
    """
    first: dict[int, str] = {}
    names = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names[name] = first.setdefault(id(p), name)
    return names


@dataclass(frozen=True)
class LayerSparsity:
    """One row of a per-layer sparsity report."""

    name: str
    shape: tuple[int, ...]
    numel: int
    kept: int

    @property
    def pruned(self) -> int:
        return self.numel - self.kept

    @property
    def sparsity(self) -> float:
        return self.pruned / self.numel if self.numel else 0.0


class MaskSet(Mapping[str, Tensor]):
    """Boolean keep-masks for some of a model's parameters, keyed by parameter name."""

    def __init__(self, masks: Mapping[str, Tensor]) -> None:
        self._masks: dict[str, Tensor] = {}
        for name, mask in masks.items():
            if not isinstance(mask, Tensor):
                raise TypeError(f"mask for {name!r} must be a tensor, got {type(mask).__name__}")
            self._masks[name] = mask.detach().to(torch.bool).clone()

    # -- construction -----------------------------------------------------------------------
    def updated(self, other: Mapping[str, Tensor]) -> MaskSet:
        """These masks with `other`'s added or replacing them, without copying either's tensors.

        A MaskSet never writes its masks in place, so the result may share them; building it
        through the constructor would clone every mask each time, and sequential pruning merges
        once per block (a quadratic number of copies over a deep model).
        """
        out = MaskSet({})
        out._masks = dict(self._masks)
        for name, mask in (other._masks if isinstance(other, MaskSet) else MaskSet(other)._masks).items():
            out._masks[name] = mask
        return out

    @classmethod
    def dense(cls, model: nn.Module, names: Iterable[str]) -> MaskSet:
        """All-True masks for the named parameters (the state before any pruning)."""
        names = list(names)  # may be a one-shot iterator; it is read twice
        canonical = canonical_names(model)
        missing = [n for n in names if n not in canonical]
        if missing:
            raise ConfigError(f"parameters not in the model: {', '.join(missing)}")
        params = dict(model.named_parameters())
        unique = dict.fromkeys(canonical[n] for n in names)  # a tied parameter once
        return cls({n: torch.ones_like(params[n], dtype=torch.bool) for n in unique})

    # -- mapping protocol -------------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"MaskSet({len(self)} tensors, sparsity={self.sparsity():.4f})"

    # -- statistics -------------------------------------------------------------------------
    def numel(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    def kept(self) -> int:
        return int(sum(int(m.sum()) for m in self._masks.values()))

    def sparsity(self) -> float:
        """Fraction of the masked parameters' entries that are pruned."""
        n = self.numel()
        return (n - self.kept()) / n if n else 0.0

    def density(self) -> float:
        return 1.0 - self.sparsity()

    def report(self) -> list[LayerSparsity]:
        return [
            LayerSparsity(name, tuple(m.shape), m.numel(), int(m.sum())) for name, m in self._masks.items()
        ]

    def equal(self, other: MaskSet) -> bool:
        """Bit-for-bit equality of names and masks."""
        return list(self) == list(other) and all(torch.equal(self[n], other[n]) for n in self)

    # -- application ------------------------------------------------------------------------
    def _bound(self, model: nn.Module) -> list[tuple[nn.Parameter, Tensor]]:
        """(parameter, mask) per mask, in mask order; a tied parameter's alias names it too."""
        params = dict(model.named_parameters())
        canonical = canonical_names(model)
        seen: dict[str, str] = {}  # canonical name → the mask name bound to it
        pairs = []
        for name, mask in self._masks.items():
            if name not in canonical:
                raise ConfigError(
                    f"mask names parameter {name!r}, which the model does not have",
                    fix="load masks saved from the same architecture",
                )
            if canonical[name] in seen:
                raise ConfigError(
                    f"masks {seen[canonical[name]]!r} and {name!r} name one tied parameter "
                    f"({canonical[name]!r}), which can have only one mask",
                    fix=f"keep one mask for it, under {canonical[name]!r}",
                )
            seen[canonical[name]] = name
            p = params[canonical[name]]
            if tuple(p.shape) != tuple(mask.shape):
                raise ConfigError(
                    f"mask for {name!r} has shape {tuple(mask.shape)}, parameter has {tuple(p.shape)}",
                    fix="load masks saved from the same architecture",
                )
            pairs.append((p, mask))
        return pairs

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Set the pruned entries of the model's parameters to exactly +0.0 (NaN and inf too), in
        place (identities preserved)."""
        pairs = self._bound(model)
        if pairs:
            _zero_pruned([p for p, _ in pairs], [keep_bits(m, p) for p, m in pairs])

    def attach(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *, mask_grads: bool = False
    ) -> MaskHandle:
        """Keep the masks applied while `optimizer` trains `model`.

        After every `optimizer.step()` the pruned entries of the masked parameters are set to
        exactly +0.0, whatever the update rule (momentum, weight decay, Adam) and whatever the
        optimizer state holds there (NaN and inf included). With `mask_grads=True` gradients are
        masked before the step too, which keeps optimizer state (momentum, Adam moments) of
        pruned entries at zero.
        """
        pairs = self._bound(model)
        params = [p for p, _ in pairs]
        multipliers = [keep_bits(m, p) for p, m in pairs]

        def after_step(*_: object) -> None:
            _zero_pruned(params, multipliers)

        def before_step(*_: object) -> None:
            with_grad = [(p.grad, m) for p, m in zip(params, multipliers, strict=True) if p.grad is not None]
            if with_grad:
                _zero_pruned([g for g, _ in with_grad], [m for _, m in with_grad])

        handles = [optimizer.register_step_post_hook(after_step)]
        if mask_grads:
            handles.append(optimizer.register_step_pre_hook(before_step))
        self.apply(model)
        return MaskHandle(handles, dict(zip(self._masks, multipliers, strict=True)))

    # -- combination ------------------------------------------------------------------------
    def intersect(self, other: MaskSet) -> MaskSet:
        """Entries kept by both (masks only shrink)."""
        names = set(self) | set(other)
        out = {}
        for n in names:
            if n in self and n in other:
                out[n] = self[n] & other[n]
            else:
                out[n] = self[n] if n in self else other[n]
        return MaskSet({n: out[n] for n in list(self) + [n for n in other if n not in self]})

    # -- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Plain dict of boolean tensors, safe to `torch.save` and load with `weights_only=True`."""
        return {n: m.clone() for n, m in self._masks.items()}

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Tensor], model: nn.Module | None = None, *, where: str | None = None
    ) -> MaskSet:
        """Rebuild masks; with `model`, check every name and shape against it and put each mask
        on its parameter's device.

        `where` (the file they were read from) goes into the error, so that a mask of the wrong
        shape is traced to its file rather than reported as a bare shape mismatch.
        """
        for name, mask in state.items():
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise CheckpointError(
                    f"mask {name!r} is not a boolean tensor", where=where, fix="re-save the masks"
                )
        masks = cls(state)
        if model is not None:
            try:
                pairs = masks._bound(model)
            except ConfigError as err:
                raise CheckpointError(err.what, where=where, fix=err.fix) from None
            # beside their parameters: a checkpoint is read onto the CPU, the model may be on a GPU;
            # under canonical names, so that a tied parameter saved under an alias is found again
            canonical = canonical_names(model)
            masks = cls({canonical[name]: m.to(p.device) for name, (p, m) in zip(masks, pairs, strict=True)})
        return masks


# an integer type as wide as each floating-point type, to clear pruned entries on their bit patterns
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def keep_bits(mask: Tensor, like: Tensor) -> Tensor:
    """`mask` as an AND-mask of `like`'s bit patterns, on its device: an integer tensor as wide as
    `like`'s entries, all ones (-1) where kept and 0 where pruned (bool where no such integer type
    exists). `_zero_pruned` clears pruned weights with it; a layout selects scores with it."""
    out = torch.empty(mask.shape, dtype=_BITS.get(like.element_size(), torch.bool), device=like.device)
    _write_keep_bits(out, mask)
    return out


def _write_keep_bits(out: Tensor, mask: Tensor) -> None:
    """Write `mask` into `out` (from `keep_bits`), in place: all ones (-1) where kept, 0 where pruned."""
    out.copy_(mask)
    if out.dtype != torch.bool:
        out.neg_()


def _zero_pruned(tensors: list[Tensor], masks: list[Tensor]) -> None:
    """Set the entries of `tensors` that `masks` (from `keep_bits`) prune to exactly +0.0, in place.

    A bitwise AND of the entries' bit patterns (an integer view): a float multiply by 0 would
    keep NaN and inf and turn negative weights into -0.0; the AND clears every bit of a pruned
    entry, whatever it held, and leaves a kept one bit-identical, at the cost of the multiply.
    """
    with torch.no_grad():  # not the decorator: this runs after every optimizer step
        for t, bits in zip(tensors, masks, strict=True):
            if bits.dtype == torch.bool:  # no integer type as wide (complex128): a select, slower
                t.copy_(torch.where(bits, t, torch.zeros((), dtype=t.dtype, device=t.device)))
            else:
                t.view(bits.dtype).bitwise_and_(bits)


class MaskHandle:
    """Returned by `MaskSet.attach`; `remove()` stops keeping masks applied.

    `update(masks)` swaps in new masks for the same parameters without re-registering hooks:
    the hooks' multipliers are overwritten in place. Masks that grow back (dynamic sparse
    training) need this, since a second handle would keep zeroing the regrown entries.
    """

    def __init__(self, handles: list[RemovableHandle], multipliers: dict[str, Tensor] | None = None) -> None:
        self._handles = handles
        self._multipliers = multipliers or {}

    def covers(self, masks: MaskSet) -> bool:
        """True when `masks` are for exactly the parameters this handle keeps masked."""
        return bool(self._handles) and list(masks) == list(self._multipliers)

    @torch.no_grad()
    def update(self, masks: MaskSet) -> None:
        """Keep `masks` applied from now on (same parameter names and shapes as attached)."""
        if not self.covers(masks):
            raise ConfigError(
                "the new masks name other parameters than the attached ones",
                fix="attach the new masks with MaskSet.attach instead of updating the handle",
            )
        for name, multiplier in self._multipliers.items():  # copy_ would broadcast a wrong shape
            if masks[name].shape != multiplier.shape:
                raise ConfigError(
                    f"the new mask for {name!r} has shape {tuple(masks[name].shape)}, "
                    f"the parameter has {tuple(multiplier.shape)}",
                    fix="compute the new masks for the same model as the attached ones",
                )
        for name, multiplier in self._multipliers.items():
            _write_keep_bits(multiplier, masks[name])

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def masks_of(model: nn.Module) -> MaskSet | None:
    """The masks recorded on `model` by `secateurs.prune` (None for a dense model)."""
    if not isinstance(model, nn.Module):
        raise ModelTypeError(
            f"masks_of needs an nn.Module, got a {type(model).__name__}",
            fix="pass the model object that was pruned",
        )
    return model.__dict__.get(_ATTR)


def set_masks(model: nn.Module, masks: MaskSet | None, *, applied: bool = False) -> None:
    """Record `masks` on `model` (outside its state_dict) and zero the pruned weights (unless the
    caller has just done so, `applied`: a pass over every weight saved)."""
    if masks is None:
        model.__dict__.pop(_ATTR, None)
        return
    if not applied:
        masks.apply(model)
    model.__dict__[_ATTR] = masks


def remove_masks(model: nn.Module) -> MaskSet | None:
    """Forget the masks of `model`; its weights keep their zeros. Returns the removed masks."""
    return model.__dict__.pop(_ATTR, None)
