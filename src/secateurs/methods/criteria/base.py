"""The criterion axis: a criterion turns a model (and maybe data) into one score per weight.

Higher score = more worth keeping. A new criterion is one small class overriding `score`; it
then scores every structure: where a group holds several entries (blocks, channels, heads), its
element scores are pooled (`secateurs.methods.structures.pooling`). A criterion states how it
prefers to be pooled (`pooling`, `side`, `pool_tensors`), may give signed first-order
`contributions` (pooled as (Σ c)², the group Taylor criterion), or may score groups itself
(`scores_groups` + `group_scores`, for criteria such as FPGM that are not sums over entries).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secateurs.core.errors import ConfigError, check_choice
from secateurs.core.masks import MaskSet
from secateurs.core.registry import Registry
from secateurs.methods.structures.groups import GraphLayout

Batch = tuple[Tensor, Tensor]


@dataclass
class ScoringContext:
    """Everything a criterion may use. Data-free criteria ignore `batches`.

    `input_shape` (one sample's shape, without the batch dimension) lets data-free criteria
    such as SynFlow build their own input. `calibration`, when set, gives the input statistics
    (`secateurs.methods.calibration.StatsCollector`) of the layers asked for (module name →
    module): sequential calibration passes the current block's, collected on that block's inputs;
    without it a criterion reading layer inputs (wanda) runs the model on `batches` itself.
    """

    model: nn.Module
    names: list[str]
    masks: MaskSet
    batches: Iterable[Batch] | None = None
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy  # of the logits (`logits_of`) and y
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))
    input_shape: tuple[int, ...] | None = None
    calibration: Callable[[Mapping[str, nn.Module]], Any] | None = None

    def params(self) -> dict[str, nn.Parameter]:
        named = dict(self.model.named_parameters())
        return {n: named[n] for n in self.names}

    def require_batches(self, criterion: str) -> Iterable[Batch]:
        if self.batches is None:
            raise ConfigError(
                f"criterion {criterion!r} needs data (batches to score the weights on)",
                fix="pass data= to prune() (an (x, y) batch, a bare input or a loader; calibration= "
                "in secateurs.llm), or use a data-free criterion",
            )
        return self.batches


class Criterion:
    """Base class: subclasses set `name` and implement `score`."""

    name: str = ""
    needs_data: bool = False
    # Class-balanced batch the criterion asks the pipeline for (samples per class); None: loader batches.
    samples_per_class: int | None = None
    # How a group's entries are pooled when the structure does not say (None: the structure's default).
    pooling: str | None = None
    # Which sites of a group spanning layers it scores: "producers", "consumers", "all" (None: default).
    side: str | None = None
    # Tensors of such a group it pools: "weights" (its weight matrices) or "all" (biases too).
    pool_tensors: str = "weights"
    # The structures it can score (None: every one); criteria that score groups themselves say which.
    structures: tuple[str, ...] | None = None
    # Scores each layer from that layer alone (its weights and, if it needs data, its calibration
    # inputs), with no gradient through the model: sequential calibration can score block by block.
    layerwise: bool = False
    # The module mode ("train" or "eval") its scoring runs in, when it has one: pruning in rounds
    # holds the model in it across all of them instead of switching it twice a round.
    scoring_mode: str | None = None
    # Applies `ctx.masks` to the weights it reads itself (without touching the model), so pruning
    # in rounds need not zero the masked weights in place and restore them every round.
    applies_masks: bool = False

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        raise NotImplementedError

    def contributions(self, ctx: ScoringContext) -> dict[str, Tensor]:
        """Signed per-entry contributions whose sum over a group is its effect (pooling squared_sum)."""
        raise ConfigError(
            f"criterion {self.name!r} has no signed contributions to pool with squared_sum",
            fix="use pool: l1 or l2, or a criterion with contributions (taylor)",
        )

    def scores_groups(self, layout: Any) -> bool:
        """Whether it scores the groups of `layout` itself (`group_scores`) instead of being pooled."""
        return False

    def group_scores(self, ctx: ScoringContext, layout: Any) -> dict[str, Tensor]:
        """One float64 score per group of every unit of `layout` (only when `scores_groups`)."""
        raise NotImplementedError


class GroupCriterion(Criterion):
    """A criterion that scores groups spanning layers as wholes (FPGM, BN scales), not per weight.

    Subclasses give `group_scores(ctx, layout)`: a score per group id of the layout's channel graph.
    """

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        raise ConfigError(
            f"criterion {self.name!r} scores groups of channels, not single weights",
            fix=f"use it with one of the structures {', '.join(self.structures or ())}",
        )

    def scores_groups(self, layout: Any) -> bool:
        return isinstance(layout, GraphLayout)


CRITERIA: Registry[type[Criterion]] = Registry("criterion")


def build_criterion(name: str | Criterion, **options: object) -> Criterion:
    """Instantiate a registered criterion with its options (unknown option → ConfigError).

    An instance is returned as it is (a criterion built in Python needs no registration).
    """
    if isinstance(name, Criterion):
        if options:
            raise ConfigError("criterion options go with a criterion name, not an instance")
        return name
    return CRITERIA.build(name, **options)  # type: ignore[return-value]


SCORING_MODES = ("train", "eval")


def check_mode(criterion: str, mode: object) -> str:
    """The module mode a data criterion scores in: train (batch statistics; our default, the
    papers' setting) or eval (running statistics; Synaptic-Flow's default, and a little cheaper)."""
    return check_choice(
        mode,
        SCORING_MODES,
        f"{criterion} mode",
        fix="train: BatchNorm normalises with the batch's statistics; eval: with its running ones",
    )


@contextmanager
def module_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Hold `model` in `mode` ("train" or "eval"), then give it back its root's mode: as
    `model.train(mode == "train")` … `model.train(was_training)`, but without walking the model
    twice when every module is in that mode already."""
    training = mode == "train"
    if all(m.training == training for m in model.modules()):
        yield
        return
    was_training = model.training
    try:
        model.train(training)
        yield
    finally:
        model.train(was_training)


@contextmanager
def preserved_state(ctx: ScoringContext, mode: str = "train") -> Iterator[None]:
    """Run in `mode` (train or eval), then restore the mode, the `.grad` fields and the buffers.

    Train-mode forward passes would update BatchNorm running statistics; scoring must not.
    """
    params = ctx.params()
    saved = {n: p.grad for n, p in params.items()}
    buffers = [(b, b.detach().clone()) for b in ctx.model.buffers()]
    try:
        with module_mode(ctx.model, mode):
            yield
    finally:
        for n, p in params.items():
            p.grad = saved[n]
        with torch.no_grad():
            for buffer, value in buffers:
                buffer.copy_(value)


def take_batches(ctx: ScoringContext, criterion: str, max_batches: int) -> list[Batch]:
    """Up to `max_batches` batches, moved to the parameters' device (at least one, or ConfigError)."""
    device = next(iter(ctx.params().values())).device
    out: list[Batch] = []
    for batch in ctx.require_batches(criterion):
        if len(out) >= max_batches:
            break
        if not (
            isinstance(batch, tuple | list) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)
        ):
            bare = " (inputs without labels)" if isinstance(batch, Tensor | Mapping) else ""
            raise ConfigError(
                f"criterion {criterion!r} differentiates a loss of (input, target) batches, got a "
                f"{type(batch).__name__} batch{bare}",
                fix="pass data=(x, y) with y the labels, a list of such pairs or a DataLoader yielding them "
                "(a causal LM: (ids, ids) with a next-token loss_fn); wanda and the data-free criteria "
                "take bare inputs",
            )
        x, y = batch
        out.append((x.to(device), y.to(device)))
    if not out:
        raise ConfigError(f"criterion {criterion!r} got no batches", fix="pass a non-empty loader")
    return out


def logits_of(output: Any) -> Tensor:
    """The logits of a model's output: the tensor itself, a Hugging Face output's `.logits`, or the
    first element of a tuple (what `loss_fn` and the criteria's temperatures apply to)."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ConfigError(
        f"cannot find the logits in a model output of type {type(output).__name__}",
        fix="return a tensor (or an object with .logits) from the model's forward",
    )


def take_inputs(ctx: ScoringContext, criterion: str, max_batches: int | None) -> list[Any]:
    """Up to `max_batches` calibration inputs (all when None), labels dropped, on the model's device.

    Batches may be (x, y) pairs, bare input tensors or tokenizer outputs (mappings of tensors).
    """
    device = next(iter(ctx.params().values())).device
    out: list[Any] = []
    for batch in ctx.require_batches(criterion):
        if max_batches is not None and len(out) >= max_batches:
            break
        x = batch[0] if isinstance(batch, tuple | list) and len(batch) == 2 else batch
        out.append({k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device))
    if not out:
        raise ConfigError(f"criterion {criterion!r} got no batches", fix="pass a non-empty loader")
    return out


def accumulate_gradients(
    ctx: ScoringContext, criterion: str, max_batches: int, mode: str = "train"
) -> dict[str, Tensor]:
    """Sum over up to `max_batches` batches of the loss gradient w.r.t. the scored parameters,
    with the model in `mode`.

    The model's own `.grad` fields, buffers (BatchNorm running statistics, which train-mode
    forward passes would update) and train/eval mode are left as they were.
    """
    params = ctx.params()
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    with preserved_state(ctx, mode):
        for x, y in take_batches(ctx, criterion, max_batches):
            loss = ctx.loss_fn(logits_of(ctx.model(x)), y)
            step = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (n, _), g in zip(params.items(), step, strict=True):
                if g is not None:
                    grads[n] += g
    return grads
