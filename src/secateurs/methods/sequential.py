"""Sequential calibration: prune a model with repeated blocks one block at a time (SparseGPT, Wanda).

Why sequential: a block's layers should be calibrated on what they will see at inference, the
outputs of the already pruned blocks before them, so that errors of earlier blocks are measured
(Wanda) or compensated (an OBS reconstruction) downstream. Why block by block: only one block's
inputs for the calibration set are held (samples · seq_len · hidden floats, or the block's
feature maps) plus that block's statistics, never the whole model's.

The loop: run the model on the calibration batches up to the first block, capturing its inputs
and keyword arguments (attention mask, rotary embeddings …) with a pre-hook that then stops the
forward. Then, per block: collect the input statistics of the block's selected layers on the
current inputs (`secateurs.methods.calibration`, with the Hessian when a reconstruction needs
it), score them with the criterion, allocate over the block's units, select, reconstruct if
asked, zero the pruned weights, and run the pruned block to produce the next block's inputs.

It is the one-shot prune of `secateurs.methods.pruning` (same criteria, structures, allocations,
selection) with three differences: **the allocation runs per block** (uniform is per layer
anyway; global compares layers within one block only); only parameters inside the blocks are
pruned (embeddings, stems and heads stay dense, as in SparseGPT and Wanda); and the criterion must
be `layerwise` (magnitude, random, wanda): criteria needing gradients of a loss through the whole
model (snip, grasp, taylor, synflow) cannot be scored one block at a time. Structures must lie
inside one parameter (unstructured, nm, rows, block). When neither the criterion nor the
reconstruction reads activations (magnitude, random without reconstruction) nothing is run and
no data is needed.

The blocks must run one after the other, each on the previous one's output with the same extra
arguments, as in a transformer or a stage of a ResNet. They are found at the usual transformer
paths (`model.layers`, `encoder.layer`, …), else as the one ModuleList/Sequential of at least two
modules of one type; `blocks` names them explicitly (a path, or a list of paths run in order).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, masks_of, set_masks
from secateurs.core.sparsity import check_rounding
from secateurs.core.topk import check_ties
from secateurs.methods.allocations import check_sparsity, unmatched_patterns
from secateurs.methods.calibration import StatsCollector, collect, inputs_of
from secateurs.methods.criteria import ScoringContext, build_criterion
from secateurs.methods.criteria.base import Criterion
from secateurs.methods.layers import LayerSelection, select_parameters
from secateurs.methods.pruning import as_batches, check_supported, group_scores, layer_selection, select_masks
from secateurs.methods.reconstruction import Reconstruction, build_reconstruction
from secateurs.methods.reconstruction import reconstruct as reconstruct_layers
from secateurs.methods.reconstruction.base import weight_module
from secateurs.methods.structures import ElementStructure, LayoutContext, PoolSpec, Structure, build_structure

__all__ = [
    "LayerReport",
    "call_block",
    "capture_inputs",
    "find_blocks",
    "prune_sequential",
    "transformer_stack",
]

# Where transformers keep their blocks: Llama-style decoders, OPT-style, BERT (with or without head).
TRANSFORMER_STACKS = ("model.layers", "layers", "model.decoder.layers", "bert.encoder.layer", "encoder.layer")
_POSITIONAL = "__positional__"


def _module_at(model: nn.Module, path: str) -> nn.Module | None:
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def transformer_stack(model: nn.Module) -> str | None:
    """The path of a transformer's block list (`TRANSFORMER_STACKS`), or None."""
    for path in TRANSFORMER_STACKS:
        if isinstance(_module_at(model, path), nn.ModuleList):
            return path
    return None


def _repeated(module: nn.Module) -> bool:
    """A ModuleList/Sequential of at least two modules of one type, each with parameters."""
    if not isinstance(module, nn.ModuleList | nn.Sequential):
        return False
    children = list(module.children())
    return (
        len(children) >= 2
        and len({type(c) for c in children}) == 1
        and all(any(True for _ in c.parameters()) for c in children)
    )


def _stack_paths(model: nn.Module, blocks: str | Sequence[str] | None) -> list[str]:
    if blocks is not None:
        paths = [blocks] if isinstance(blocks, str) else list(blocks)
        for path in paths:
            if not isinstance(_module_at(model, path), nn.ModuleList | nn.Sequential):
                raise ConfigError(
                    f"blocks {path!r} is not a ModuleList or Sequential of {type(model).__name__}",
                    where="blocks",
                    fix="name the module holding the repeated blocks, e.g. blocks: model.layers",
                )
        return paths
    known = transformer_stack(model)
    if known is not None:
        return [known]
    candidates: list[str] = []
    for name, module in model.named_modules():
        if name and _repeated(module) and not any(name.startswith(c + ".") for c in candidates):
            candidates.append(name)
    if len(candidates) == 1:
        return candidates
    found = f"several candidates: {', '.join(candidates[:6])}" if candidates else "none"
    raise ConfigError(
        f"cannot tell the repeated blocks of {type(model).__name__} ({found})",
        where="blocks",
        fix="name them: blocks: <path of a ModuleList/Sequential>, or a list of paths run one after another",
    )


def find_blocks(model: nn.Module, blocks: str | Sequence[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The repeated blocks as (qualified name, module), in the order they run."""
    out = []
    for path in _stack_paths(model, blocks):
        container = model.get_submodule(path)
        out += [(f"{path}.{key}", child) for key, child in container.named_children()]
    return out


class _Stop(Exception):
    """Raised by the capture hook to end the forward pass at the first block."""


def _block_output(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple | list) else out


def call_block(block: nn.Module, hidden: Tensor, kwargs: dict[str, Any]) -> Tensor:
    """Run one block on hidden states with the arguments captured by `capture_inputs`.

    In inference mode (no version counters or view tracking: a transformer block's many small ops
    run about 2 % faster, outputs bit for bit the same); its outputs and the statistics its hooks
    collect are read, never trained through."""
    kw = dict(kwargs)
    rest = kw.pop(_POSITIONAL, ())
    with torch.inference_mode():
        return _block_output(block(hidden, *rest, **kw))


def calibration_forward(model: nn.Module, x: Any) -> Any:
    """One forward on a calibration input (a tensor, or a tokenizer output's keyword arguments),
    with `use_cache=False` where the model takes it: a key/value cache would be handed to the blocks."""
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    return model(**{**x, **extra}) if isinstance(x, Mapping) else model(x, **extra)


@torch.no_grad()
def capture_inputs(
    model: nn.Module,
    block: nn.Module,
    batches: Sequence[Any],
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """The input and other arguments with which the model calls `block`, per calibration input.

    `forward(model, x)` runs the model on one input (default `calibration_forward`); the forward
    stops at the block.
    """
    inputs: list[Tensor] = []
    kwargs_list: list[dict[str, Any]] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kw = dict(kwargs)
        if args:
            hidden, rest = args[0], args[1:]
        else:
            hidden, rest = kw.pop("hidden_states"), ()
        inputs.append(hidden.detach())
        kw[_POSITIONAL] = rest  # BERT passes the attention mask positionally
        kwargs_list.append(kw)
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for x in batches:
            with contextlib.suppress(_Stop):
                (forward or calibration_forward)(model, x)
    finally:
        handle.remove()
    return inputs, kwargs_list


@dataclass
class LayerReport:
    """One pruned parameter: its block, size, pruned count and the calibration rows behind it."""

    name: str
    block: int
    numel: int
    pruned: int
    tokens: int  # rows (tokens, patches) of its input statistics; 0 when none were collected


class _BlockStats:
    """The input statistics of one block's layers on its current inputs, collected on first request."""

    def __init__(
        self,
        block: nn.Module,
        batches: list[Any],
        inputs: list[Tensor],
        kwargs: list[dict[str, Any]],
        hessian: bool,
        norms: bool,
    ) -> None:
        self.block, self.batches, self.inputs, self.kwargs = block, batches, inputs, kwargs
        self.hessian, self.norms = hessian, norms
        self.collector: StatsCollector | None = None

    def __call__(self, layers: Mapping[str, nn.Module]) -> StatsCollector:
        if self.collector is None:
            feed = iter(zip(self.inputs, self.kwargs, strict=True))
            # the original batches go along so that padding tokens (attention_mask 0) are left out
            self.collector = collect(
                self.block,
                layers,
                self.batches,
                hessian=self.hessian,
                norms=self.norms,
                run=lambda _x: call_block(self.block, *next(feed)),
            )
        missing = [name for name in layers if not self._has(name)]
        if missing:
            raise ConfigError(
                f"layers {', '.join(missing)} did not run when their block ran on the calibration inputs",
                where="layers",
                fix="exclude them from the prune (layers.exclude)",
            )
        return self.collector

    def _has(self, module: str) -> bool:
        c = self.collector
        return c is not None and (module in c.stats or module in c.alias)

    def tokens(self, module: str) -> int:
        return self.collector.get(module).tokens if self.collector is not None and self._has(module) else 0


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Mapping):
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in x.items()}
    return x.to(device)


@dataclass
class _Setup:
    """A sequential prune's parts, built and checked before anything runs."""

    structure: ElementStructure
    criterion: Criterion
    reconstruction: Reconstruction | None
    selection: LayerSelection
    pool: PoolSpec
    blocks: list[tuple[nn.Module, list[str]]]  # each block with its selected parameters

    @property
    def runs(self) -> bool:
        """Whether the blocks are run: the criterion or the reconstruction reads layer inputs."""
        return self.criterion.needs_data or self.reconstruction is not None


def _setup(
    model: nn.Module,
    *,
    criterion: str | Criterion,
    structure: str | Structure,
    reconstruct: str | Mapping[str, Any] | Reconstruction | None,
    layers: LayerSelection | Mapping[str, Any] | None,
    blocks: str | Sequence[str] | None,
    criterion_options: Mapping[str, Any] | None,
    structure_options: Mapping[str, Any] | None,
    layer_sparsities: Mapping[str, float] | None,
) -> _Setup:
    built = build_structure(structure, **dict(structure_options or {}))
    if not isinstance(built, ElementStructure):
        raise ConfigError(
            f"sequential calibration prunes structures inside one parameter (unstructured, nm, rows, "
            f"block), not {built.name!r}, whose groups span layers",
            where="calibration",
            fix=f"use calibration mode full for {built.name!r}",
        )
    crit = build_criterion(criterion, **dict(criterion_options or {}))
    check_supported(crit, built, str(criterion))
    if not crit.layerwise:
        raise ConfigError(
            f"criterion {crit.name!r} needs gradients through the whole model, which sequential "
            "calibration (one block at a time) cannot give",
            where="calibration",
            fix="use a layerwise criterion (magnitude, random, wanda), or calibration mode full",
        )
    recon = build_reconstruction(reconstruct)
    if recon is not None:
        recon.check(built)
    built.check_model(model)
    selection = layer_selection(layers)
    selected = select_parameters(model, selection)
    stack = [
        (block, [n for n in selected if n.startswith(prefix + ".")])
        for prefix, block in find_blocks(model, blocks)
    ]
    inside = [n for _, names in stack for n in names]
    if not inside:
        raise ConfigError(
            "no selected parameter lies inside the blocks",
            where="layers",
            fix="select layers of the blocks; sequential calibration leaves the others dense",
        )
    for pattern in unmatched_patterns(inside, layer_sparsities or {}):
        raise ConfigError(
            f"layer sparsity pattern {pattern!r} matches no prunable layer inside the blocks",
            fix=f"prunable parameters are: {', '.join(inside)}",
        )
    current = masks_of(model)
    for name in inside if recon is not None else []:
        module = weight_module(model, name)
        if module is not None:
            before = current is not None and name in current and not bool(current[name].all())
            recon.check_layer(name, module, pruned_before=before)
    return _Setup(built, crit, recon, selection, built.pool_spec(crit), stack)


def _prune_block(
    model: nn.Module,
    s: _Setup,
    names: list[str],
    ctx: ScoringContext,
    stats: _BlockStats | None,
    current: MaskSet | None,
    sparsity: float | None,
    select_options: dict[str, Any],
    layer_sparsities: Mapping[str, float],
) -> MaskSet:
    """Score, allocate, select and (if asked) reconstruct one block's parameters; their new masks."""
    layout = s.structure.layout(LayoutContext(model, names, s.selection))
    ctx = replace(ctx, names=layout.scored(s.pool), masks=current or MaskSet({}), calibration=stats)
    scores = group_scores(s.criterion, ctx, layout, s.pool, current)
    overrides = {p: v for p, v in layer_sparsities.items() if not unmatched_patterns(names, [p])}
    _, new = select_masks(
        layout, scores, sparsity, current=current, layer_sparsities=overrides or None, **select_options
    )
    if s.reconstruction is not None:
        assert stats is not None
        owners = {n.rpartition(".")[0]: weight_module(model, n) for n in names}
        collector = stats({m: module for m, module in owners.items() if module is not None})
        new = reconstruct_layers(
            model,
            new,
            s.reconstruction,
            stats=collector,
            structure=s.structure,
            current=current,
            ties=select_options["ties"],
            generator=select_options["generator"],
        )
    return new


@torch.no_grad()
def prune_sequential(
    model: nn.Module,
    sparsity: float | None,
    *,
    criterion: str | Criterion = "magnitude",
    structure: str | Structure = "unstructured",
    allocation: str = "uniform",
    data: Any = None,
    reconstruct: str | Mapping[str, Any] | Reconstruction | None = None,
    layers: LayerSelection | Mapping[str, Any] | None = None,
    blocks: str | Sequence[str] | None = None,
    seed: int = 0,
    allow_collapse: bool = False,
    criterion_options: Mapping[str, Any] | None = None,
    structure_options: Mapping[str, Any] | None = None,
    allocation_options: Mapping[str, Any] | None = None,
    layer_sparsities: Mapping[str, float] | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    on_block: Callable[[int, list[Tensor]], None] | None = None,
    rounding: str = "half_up",
    ties: str = "index",
) -> list[LayerReport]:
    """Prune `model` in place block by block (see the module docstring); one report per parameter.

    Options as in `secateurs.methods.pruning.prune` (criterion × structure × allocation, their
    options, `layers`, `seed`, `allow_collapse`, `layer_sparsities`, `rounding`, `ties`), plus:
    `data`, calibration batches ((x, y) pairs, input tensors or tokenizer outputs); `reconstruct`, a
    reconstruction applied after each layer's mask is chosen (`secateurs.methods.reconstruction`:
    a name, a mapping `{method: obs, select: adaptive, ...}` or an instance); `blocks`, the path(s)
    of the blocks; `forward(model, x)`, how to run the model on one calibration input (default
    `calibration_forward`); `on_block(i, inputs)` sees the inputs block i is calibrated on (called
    only when blocks are run). The masks are recorded on the model (`secateurs.masks_of`), like
    `prune()`.
    """
    if sparsity is not None:
        check_sparsity(sparsity)
    s = _setup(
        model,
        criterion=criterion,
        structure=structure,
        reconstruct=reconstruct,
        layers=layers,
        blocks=blocks,
        criterion_options=criterion_options,
        structure_options=structure_options,
        layer_sparsities=layer_sparsities,
    )
    select_options = {
        "allocation": allocation,
        "allow_collapse": allow_collapse,
        "allocation_options": allocation_options,
        "rounding": check_rounding(rounding),
        "ties": check_ties(ties),
        "generator": torch.Generator().manual_seed(seed),  # ties "random"
    }
    ctx = ScoringContext(
        model=model, names=[], masks=MaskSet({}), generator=torch.Generator().manual_seed(seed)
    )
    current = masks_of(model)
    reports: list[LayerReport] = []
    was_training = model.training
    model.eval()
    try:
        batches: list[Any] = []
        inputs: list[Tensor] = []
        kwargs: list[dict[str, Any]] = []
        if s.runs:
            device = next(iter(model.parameters())).device
            batches = [_to_device(x, device) for x in inputs_of(as_batches(data) or [])]
            if not batches:
                reader = s.criterion.name if s.criterion.needs_data else s.reconstruction.name  # type: ignore[union-attr]
                raise ConfigError(
                    f"{reader!r} needs calibration data",
                    where="calibration",
                    fix="pass data= (calibration batches)",
                )
            inputs, kwargs = capture_inputs(model, s.blocks[0][0], batches, forward)
        for index, (block, names) in enumerate(s.blocks):
            stats = None
            if s.runs:
                if on_block is not None:
                    on_block(index, inputs)
                hessian = s.reconstruction is not None and s.reconstruction.needs_hessian
                # only what is read: Σx² for the criterion (Wanda), Σxxᵀ for the reconstruction
                stats = _BlockStats(
                    block, batches, inputs, kwargs, hessian=hessian, norms=s.criterion.needs_data
                )
            if names:
                new = _prune_block(
                    model, s, names, ctx, stats, current, sparsity, select_options, layer_sparsities or {}
                )
                new.apply(model)
                current = (current or MaskSet({})).updated(new)
                for n in names:
                    tokens = stats.tokens(n.rpartition(".")[0]) if stats is not None else 0
                    reports.append(LayerReport(n, index, new[n].numel(), int((~new[n]).sum()), tokens))
            if s.runs and index + 1 < len(s.blocks):
                inputs = [call_block(block, x, kw) for x, kw in zip(inputs, kwargs, strict=True)]
    finally:
        model.train(was_training)
    if current is not None:  # each block's masks were applied as it was pruned; masks from before, now
        done = {r.name for r in reports}
        MaskSet({n: m for n, m in current.items() if n not in done}).apply(model)
    set_masks(model, current, applied=True)
    return reports
