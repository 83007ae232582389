"""The one place where scores become masks, and the `prune()` entry point.

criterion (scores) × structure (groups) × allocation (keep counts per layer) → masks.
Selection within a layer is a top-k over group scores (or the structure's own `select`, such as
N:M's balanced top-k) with a deterministic tie-break (stable sort: the lower index wins), so the
requested count is exact even when scores tie. A prune respects the model's existing mask:
already-pruned entries score −∞ and stay pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from secateurs.core.distributed import sync_scores
from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, masks_of, set_masks
from secateurs.core.registry import check_options
from secateurs.methods.allocations import LayerInfo, allocate, check_sparsity
from secateurs.methods.criteria import ScoringContext, build_criterion
from secateurs.methods.criteria.base import Batch
from secateurs.methods.layers import LayerSelection, select_parameters
from secateurs.methods.sanity import SANITY, CorruptedBatches, reinit_kept, sanity_seed, shuffle_masks
from secateurs.methods.structures import Structure, build_structure


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of the k highest entries of a 1-D tensor; ties go to the lower index.

    The k-th largest value is found by selection (`kthvalue`, linear time) instead of a full
    stable sort, which is 10× faster on large layers (it matters for dynamic sparse training,
    which re-selects every few steps); ties at that value are then taken in index order, so
    the result is exactly that of a stable descending sort.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if k <= 0 or k >= n:
        return torch.full((n,), k > 0, dtype=torch.bool, device=scores.device)
    if bool(flat.isnan().any()):  # NaN has no place in selection order: sort as argsort does
        keep = torch.zeros(n, dtype=torch.bool, device=scores.device)
        keep[torch.argsort(flat, descending=True, stable=True)[:k]] = True
        return keep
    threshold = torch.kthvalue(flat.cpu(), n - k + 1).values.to(flat.device)
    keep = flat > threshold
    short = k - int(torch.count_nonzero(keep))
    if short > 0:
        keep[torch.nonzero(flat == threshold).reshape(-1)[:short]] = True
    return keep


def masks_from_scores(
    scores: Mapping[str, Tensor],
    sparsity: float | None,
    *,
    allocation: str = "global",
    structure: Structure | None = None,
    current: MaskSet | None = None,
    allow_collapse: bool = False,
    allocation_options: Mapping[str, Any] | None = None,
    layer_sparsities: Mapping[str, float] | None = None,
) -> MaskSet:
    """Turn per-parameter scores (higher = keep) into masks at the requested sparsity.

    `layer_sparsities` (name pattern → sparsity) overrides the allocation for matching layers.
    """
    structure = structure or build_structure("unstructured")
    layers = []
    for name, score in scores.items():
        if torch.isnan(score).any():
            raise ConfigError(
                f"criterion produced NaN scores for {name!r}", fix="check the model and data for NaNs"
            )
        s = score.detach().to(torch.float64)
        if current is not None and name in current:
            s = s.masked_fill(~current[name].to(s.device), float("-inf"))
        shape = tuple(score.shape)
        check = getattr(structure, "check", None)  # a structure that cannot group it says so by name
        if check is not None:
            check(name, shape)
        layers.append(LayerInfo(name, shape, structure.group_size(shape), structure.group_scores(s)))
    keep = allocate(
        allocation,
        layers,
        sparsity,
        allow_collapse=allow_collapse,
        layer_sparsities=layer_sparsities,
        **dict(allocation_options or {}),
    )
    select = getattr(structure, "select", None)  # e.g. N:M spreads k over its groups; default top-k
    masks = {}
    for layer in layers:
        k = keep[layer.name]
        chosen = select(layer.scores, k, layer.shape) if select is not None else topk_mask(layer.scores, k)
        mask = structure.expand(chosen, layer.shape)
        if current is not None and layer.name in current:
            mask = mask & current[layer.name].to(mask.device)
        masks[layer.name] = mask
    return MaskSet(masks)


def as_batches(data: Batch | Iterable[Batch] | None) -> Iterable[Batch] | None:
    """Accept one explicit `(x, y)` batch or any iterable of batches (a loader)."""
    if data is None:
        return None
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        return [data]
    return data


def _selection(layers: LayerSelection | Mapping[str, Any] | None) -> LayerSelection:
    """A LayerSelection from a mapping; an invalid field is a ConfigError, not a pydantic trace."""
    if isinstance(layers, LayerSelection):
        return layers
    try:
        return LayerSelection(**dict(layers or {}))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'layers'}: {e['msg']}" for e in err.errors())
        fields = ", ".join(LayerSelection.model_fields)
        raise ConfigError(f"invalid layer selection: {problems}", fix=f"valid fields: {fields}") from None


def round_sparsity(sparsity: float, k: int, rounds: int) -> float:
    """Sparsity after round k of n on the exponential schedule: 1 − (1 − s)^(k/n), exactly s at k = n."""
    return sparsity if k == rounds else 1.0 - (1.0 - sparsity) ** (k / rounds)


def _check_rounds(rounds: object, sparsity: float | None) -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(
            f"rounds must be a positive integer, got {rounds!r}", fix="use rounds: 1 for one prune"
        )
    if rounds > 1 and sparsity is None:
        raise ConfigError(
            "pruning in several rounds needs a target sparsity to split over the rounds",
            fix="set `sparsity`, or use rounds: 1",
        )
    return rounds


@contextmanager
def _masked_weights(model: nn.Module, masks: MaskSet) -> Iterator[None]:
    """Temporarily zero the masked-out weights, so a criterion scores the masked model."""
    named = dict(model.named_parameters())
    saved = {n: named[n].detach().clone() for n in masks}
    try:
        with torch.no_grad():
            for n in masks:
                named[n].mul_(masks[n].to(named[n].device))
        yield
    finally:
        with torch.no_grad():
            for n, value in saved.items():
                named[n].copy_(value)


def compute_masks(
    model: nn.Module,
    sparsity: float | None,
    *,
    criterion: str = "magnitude",
    allocation: str = "global",
    structure: str = "unstructured",
    layers: LayerSelection | Mapping[str, Any] | None = None,
    data: Batch | Iterable[Batch] | None = None,
    seed: int = 0,
    allow_collapse: bool = False,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    criterion_options: Mapping[str, Any] | None = None,
    allocation_options: Mapping[str, Any] | None = None,
    structure_options: Mapping[str, Any] | None = None,
    layer_sparsities: Mapping[str, float] | None = None,
    input_shape: tuple[int, ...] | None = None,
    rounds: int = 1,
    invert: bool = False,
    sanity: str = "none",
) -> MaskSet:
    """Masks for `model` at `sparsity` (fraction removed), without changing the model.

    The result covers the selected parameters plus any previously masked ones, and is a
    subset of the model's current masks (masks only shrink). `layer_sparsities` maps name
    patterns to a sparsity of their own (see `secateurs.methods.allocations.allocate`). `input_shape`
    (one sample, no batch dimension) is for data-free criteria that build their own input.

    `rounds` > 1 prunes in n rounds on the exponential schedule: round k reaches sparsity
    1 − (1 − s)^(k/n) (each layer override likewise), re-scoring the model with the previous
    round's masks applied (SynFlow's 100 rounds; any criterion may use it).

    `invert` keeps the lowest scores instead of the highest. `sanity` names a sanity check
    (`secateurs.methods.sanity`): "invert" sets `invert`, "shuffle" permutes each layer's new mask,
    "random_labels"/"random_pixels" corrupt `data`; "reinit" acts on weights, in `prune()`.
    """
    check = SANITY.get(sanity)
    invert = invert or sanity == "invert"
    if sparsity is not None:
        check_sparsity(sparsity)
    rounds = _check_rounds(rounds, sparsity)
    selection = _selection(layers)
    names = select_parameters(model, selection)
    existing = masks_of(model)
    current = MaskSet.dense(model, names)
    if existing is not None:
        current = MaskSet({n: existing[n] if n in existing else current[n] for n in names})
    crit = build_criterion(criterion, **dict(criterion_options or {}))
    batches = as_batches(data)
    if check.level == "data":
        if not crit.needs_data:
            raise ConfigError(
                f"sanity check {sanity!r} corrupts the scoring data, but criterion {criterion!r} uses none",
                fix="use it with a data-dependent criterion (snip, grasp, taylor)",
            )
        if batches is not None:  # without data the criterion's own error says what is missing
            batches = CorruptedBatches(batches, sanity, sanity_seed(seed, sanity))
    before = current
    ctx = ScoringContext(
        model=model,
        names=names,
        masks=current,
        batches=batches,
        loss_fn=loss_fn,
        generator=torch.Generator().manual_seed(seed),
        input_shape=tuple(input_shape) if input_shape is not None else None,
    )
    built = build_structure(structure, **dict(structure_options or {}))
    if check.level == "masks" and structure != "unstructured":
        raise ConfigError(
            f"sanity check {sanity!r} permutes single weights, which would break the {structure!r} pattern",
            fix="run the shuffle check with structure unstructured",
        )
    if invert and not getattr(built, "invertible", False):
        raise ConfigError(
            f"invert (sanity check 'invert') is not defined for structure {structure!r}: negating the "
            "element scores does not reverse the order of its group scores (they pool |scores|)",
            fix="run the invert sanity check with structure unstructured or nm",
        )
    for k in range(1, rounds + 1):
        level = None if sparsity is None else round_sparsity(sparsity, k, rounds)
        overrides = {p: round_sparsity(v, k, rounds) for p, v in (layer_sparsities or {}).items()}
        with _masked_weights(model, current) if k > 1 else nullcontext():
            scores = sync_scores(crit.score(ctx))  # rank 0's under torchrun (see secateurs.core.distributed)
        if invert:  # negated element scores: exact where selection ranks them (structure.invertible)
            scores = {n: -s for n, s in scores.items()}
        current = masks_from_scores(
            scores,
            level,
            allocation=allocation,
            structure=built,
            current=current,
            allow_collapse=allow_collapse,
            allocation_options=allocation_options,
            layer_sparsities=overrides or None,
        )
        ctx.masks = current
    if check.level == "masks":
        current = shuffle_masks(current, sanity_seed(seed, sanity), allowed=before)
    if existing is None:
        return current
    merged = {n: existing[n] for n in existing}
    merged.update(current)
    return MaskSet(merged)


def prune(model: nn.Module, sparsity: float | None, **options: Any) -> nn.Module:
    """Prune `model` in place to `sparsity` and return it (see `compute_masks` for options).

    The pruned weights are zeroed and the masks are recorded on the model
    (`secateurs.masks_of(model)`); its `state_dict` keys do not change. Keep the masks applied
    during training with `masks_of(model).attach(model, optimizer)`.
    """
    check_options(compute_masks, options, where="prune()")
    set_masks(model, compute_masks(model, sparsity, **options))
    if options.get("sanity") == "reinit":
        reinit_kept(model, sanity_seed(int(options.get("seed", 0)), "reinit"))
    return model
