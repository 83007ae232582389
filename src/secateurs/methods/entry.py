"""What enters a prune: the model and the data, checked once where they come in.

A wrong argument is one `SecateursError` naming what was given and the fix, raised before torch
runs anything on it: a model that is not an `nn.Module` or is still on the meta device; a batch
with no samples, or with more (or fewer) labels than inputs; class labels that are not integers
or lie outside the model's classes (checked against the logits, before the default
cross-entropy sees them). Only the model knows which input shape it takes, so a batch of the
wrong shape fails inside it; that failure is told as the module that failed, the shape it got
and what it expects, with torch's own words, instead of a bare torch traceback.

Bare inputs without labels (a tensor, a tokenizer's output) are accepted: criteria that only read
the inputs (wanda, and the data-free ones) use them; those that differentiate a loss (snip,
grasp, taylor) say that they need `(x, y)` pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from itertools import chain
from types import TracebackType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secateurs.core.errors import ConfigError, ModelTypeError, SecateursError

__all__ = [
    "CheckedBatches",
    "ModelTypeError",
    "as_batches",
    "check_model",
    "checked_loss",
    "explained_failures",
]

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: a valid label


def check_model(model: Any) -> nn.Module:
    """`model`, if it is an `nn.Module` whose tensors hold data; otherwise one clear error."""
    if not isinstance(model, nn.Module):
        shown = repr(model)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise ModelTypeError(
            f"the model to prune must be an nn.Module, got a {type(model).__name__} ({shown})",
            fix="pass the model object itself; build one by name with secateurs.models.build_model, "
            "or prune a model named in a recipe with secateurs.run",
        )
    meta = next((n for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta), None)
    if meta is not None:
        raise ConfigError(
            f"the model is on the meta device ({meta!r} has a shape but no values), so there are no "
            "weights to score or prune",
            fix="materialise the model first: model.to_empty(device=...) and load weights "
            "(model.load_state_dict(...))",
        )
    return model


def _shape(value: Any) -> str:
    """A short description of a batch part: a tensor's shape, a mapping's keys and shapes."""
    if isinstance(value, Tensor):
        return str(tuple(value.shape))
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_shape(v)}" for k, v in list(value.items())[:4]) + "}"
    return type(value).__name__


def _samples(x: Any) -> int | None:
    """The number of samples of a batch's inputs (first dimension), when it has one."""
    if isinstance(x, Mapping):
        x = next((v for v in x.values() if isinstance(v, Tensor)), None)
    return int(x.shape[0]) if isinstance(x, Tensor) and x.dim() else None


def check_batch(batch: Any, index: int) -> None:
    """An `(x, y)` pair or bare input with at least one sample, and one label per input."""
    pair = isinstance(batch, tuple | list) and len(batch) == 2
    x, y = batch if pair else (batch, None)
    samples = _samples(x)
    if samples == 0:
        raise ConfigError(
            f"the batch is empty: batch {index} has inputs of shape {_shape(x)}, 0 samples to score on",
            fix="pass batches of at least one sample (a loader over a non-empty data set)",
        )
    if isinstance(y, Tensor) and samples is not None and y.dim() and y.shape[0] != samples:
        raise ConfigError(
            f"batch {index} has {samples} inputs {_shape(x)} but {y.shape[0]} labels {_shape(y)}",
            fix="give one label per input: x and y must have the same first dimension",
        )


class CheckedBatches:
    """The batches of `source`, each checked (`check_batch`) as it is taken; iterable again if
    `source` is (a loader, a list)."""

    def __init__(self, source: Iterable[Any]) -> None:
        self.source = source

    def __iter__(self) -> Iterator[Any]:
        for index, batch in enumerate(self.source):
            check_batch(batch, index)
            yield batch


def as_batches(data: Any) -> CheckedBatches | None:
    """Accept one explicit `(x, y)` batch, one bare input (a tensor or tokenizer output), or any
    iterable of batches (a loader); each batch is checked as it is taken."""
    if data is None:
        return None
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor | Mapping):
        return CheckedBatches([data])
    if isinstance(data, Tensor | Mapping):
        return CheckedBatches([data])
    if not isinstance(data, Iterable):
        raise ConfigError(
            f"data must be an (x, y) batch, a bare input or an iterable of batches, "
            f"got a {type(data).__name__}",
            fix="pass data=(x, y) with tensors x and y, a list of such pairs, or a DataLoader",
        )
    return CheckedBatches(data)


def check_labels(logits: Tensor, y: Any) -> None:
    """Labels that the default cross-entropy can take for `logits`: class indices in range (or
    the ignore index), or class probabilities of the logits' shape."""
    if not isinstance(y, Tensor) or not isinstance(logits, Tensor):
        return  # F.cross_entropy's own TypeError names the argument
    classes = logits.shape[1] if logits.dim() >= 2 else logits.shape[0]
    if y.is_floating_point() and y.shape == logits.shape:
        return  # class probabilities
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ConfigError(
            f"labels of dtype {str(y.dtype).removeprefix('torch.')} and shape {_shape(y)}: the "
            f"cross-entropy loss takes integer class indices (or class probabilities shaped like "
            f"the logits {_shape(logits)})",
            fix="pass y.long() class indices, or your own loss_fn for other targets",
        )
    if logits.dim() >= 2 and y.dim() and y.shape[0] != logits.shape[0]:
        raise ConfigError(
            f"the model gave {logits.shape[0]} outputs {_shape(logits)} for {y.shape[0]} labels {_shape(y)}",
            fix="give one label per input: x and y must have the same first dimension",
        )
    bad = (y < 0) | (y >= classes)
    bad &= y != IGNORE_INDEX
    if bool(bad.any()):
        wrong = y[bad]
        raise ConfigError(
            f"label {int(wrong[0])} is outside the model's {classes} classes (0 to {classes - 1}); "
            f"labels span {int(y.min())} to {int(y.max())}",
            fix=f"labels must be class indices in [0, {classes}): remap them, or give the model "
            f"{max(int(y.max()) + 1, classes)} outputs",
        )


def _class_loss(logits: Tensor, y: Tensor) -> Tensor:
    """F.cross_entropy, after `check_labels` (the same call, so the same loss bit for bit)."""
    check_labels(logits, y)
    return F.cross_entropy(logits, y)


def checked_loss(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """The default cross-entropy with its labels checked first; any other loss as it is (its
    targets are its own business)."""
    return _class_loss if loss_fn is F.cross_entropy else loss_fn


def _module_frames(
    model: nn.Module, tb: TracebackType | None
) -> list[tuple[str, nn.Module, tuple[Any, ...]]]:
    """(name, module, positional inputs) of each module of `model` being called, outermost first,
    where the traceback `tb` passed."""
    names = {id(m): n for n, m in model.named_modules()}
    call = nn.Module._call_impl.__code__
    out = []
    while tb is not None:
        frame = tb.tb_frame
        module = frame.f_locals.get("self") if frame.f_code is call else None
        if module is not None and id(module) in names:
            out.append((names[id(module)], module, tuple(frame.f_locals.get("args", ()))))
        tb = tb.tb_next
    return out


_EXPECTS = (  # (attribute, what the module's input must then look like)
    ("in_features", "a last dimension of {}"),
    ("in_channels", "{} channels (dimension 1)"),
    ("num_embeddings", "integer ids below {}"),
    ("normalized_shape", "trailing dimensions {}"),
    ("num_features", "{} features (dimension 1)"),
)


def _expects(name: str, module: nn.Module) -> str:
    """What a module's input must look like, from its own attributes (when it has one of them)."""
    for attribute, rule in _EXPECTS:
        value = getattr(module, attribute, None)
        if value is not None:
            shown = tuple(value) if isinstance(value, tuple | list) else value
            return f"{type(module).__name__} {name!r} takes inputs with " + rule.format(shown)
    return ""


@contextmanager
def explained_failures(model: nn.Module) -> Iterator[None]:
    """A torch error raised inside `model` while it runs on the caller's data becomes one
    ConfigError: the failing module, the shape it got, the batch's shape, torch's first line."""
    try:
        yield
    except (RuntimeError, ValueError, IndexError) as err:
        if isinstance(err, SecateursError):
            raise
        frames = _module_frames(model, err.__traceback__)
        if not frames:
            raise
        _, _, top_args = frames[0]
        name, module, args = frames[-1]
        got = _shape(args[0]) if args else "no positional input"
        expects = _expects(name, module)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(
            f"the model cannot run on the data: module {name or '(the model)'!r} "
            f"({type(module).__name__}) failed on an input of shape {got} (the batch's inputs: "
            f"{_shape(top_args[0]) if top_args else '?'}): {first}",
            fix=f"pass inputs shaped as the model expects{'; ' + expects if expects else ''}",
        ) from err
