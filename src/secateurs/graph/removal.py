"""Remove channel groups physically, or zero them where they are consumed (the equivalent soft form).

`remove_channels` returns a plain, smaller `nn.Module`: every parameter and buffer a removed
group reaches is sliced (`index_select`, contiguous), and the modules' size attributes
(`in_channels`, `out_features`, `num_features`, a depthwise conv's `groups` …) are set to match,
so the model runs its own, unchanged `forward`, saves and loads like any other model, and has
no hooks or masks. `channel_masks` gives the same pruning as masks on the consuming weights'
input channels: a model with those masks applied computes exactly what the smaller one does.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, canonical_names
from secateurs.graph.attention import PrunedMultiheadAttention, adopt_pruned_attention
from secateurs.graph.core import ChannelGraph, Site

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _removed_roots(graph: ChannelGraph, groups: Iterable[int]) -> set[int]:
    known = {g.id for g in graph.groups}
    chosen = set(groups)
    unknown = chosen - known
    if unknown:
        raise ConfigError(
            f"channel groups {sorted(unknown)[:5]} are not prunable groups of this graph",
            fix="choose ids from graph.groups (frozen channels, such as the classes, are not in it)",
        )
    return chosen


def _gone(graph: ChannelGraph, removed: set[int]) -> np.ndarray:
    """A boolean per label class: True for the removed ones."""
    gone = np.zeros(len(graph.labels.parent), dtype=bool)
    gone[np.fromiter(removed, np.int64, len(removed))] = True
    return gone


def _keep_indices(graph: ChannelGraph, site: Site, gone: np.ndarray) -> np.ndarray:
    return np.nonzero(~gone[graph.labels.roots(site.labels)])[0]


def _slices(graph: ChannelGraph, removed: set[int]) -> dict[tuple[str, str], dict[int, np.ndarray]]:
    """(module, tensor) -> {dim: kept indices} for every site that loses something."""
    out: dict[tuple[str, str], dict[int, np.ndarray]] = defaultdict(dict)
    gone = _gone(graph, removed)
    for site in graph.sites:
        keep = _keep_indices(graph, site, gone)
        if len(keep) < len(site.labels):
            if len(keep) == 0:
                raise ConfigError(
                    f"removing these groups leaves {site.name} with no channels",
                    fix="prune fewer channels (keep at least one per layer)",
                )
            out[(site.module, site.tensor)][site.dim] = keep
    return out


def remove_channels(model: nn.Module, graph: ChannelGraph, groups: Iterable[int]) -> nn.Module:
    """A smaller copy of `model` without the channel `groups` (ids from `graph.groups`).

    The sliced tensors are handed to the copy directly (the deep copy's memo), so the original
    weights are read once and never copied whole.
    """
    removed = _removed_roots(graph, groups)
    originals = dict(model.named_modules())
    slices = _slices(graph, removed)
    memo: dict[int, object] = {}
    for (module_name, tensor_name), dims in slices.items():
        old = getattr(originals[module_name], tensor_name)
        new = old.detach()
        for dim, keep in dims.items():
            new = new.index_select(dim, torch.as_tensor(keep, device=new.device))
        new = new.contiguous()
        memo[id(old)] = (
            nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
        )
    pruned = copy.deepcopy(model, memo)
    modules = dict(pruned.named_modules())
    for module in _holders(pruned, memo.values()):  # a tied tensor's every layer, not only its site's
        _update_sizes(module)
    _adopt_attention(pruned)
    gone = _gone(graph, removed)
    for (module_name, attribute), labels in graph.attributes.items():
        kept = int((~gone[graph.labels.roots(labels)]).sum())
        if kept < len(labels):
            if kept == 0:
                raise ConfigError(
                    f"removing these groups sets {module_name}.{attribute} to 0",
                    fix="prune fewer channels (keep at least one head or channel per layer)",
                )
            setattr(modules[module_name], attribute, kept)  # the forward reshapes with it
    return pruned


def _holders(model: nn.Module, tensors: Iterable[object]) -> list[nn.Module]:
    """The modules of `model` that hold one of `tensors` as their own parameter or buffer."""
    wanted = {id(t) for t in tensors}
    return [
        m
        for m in model.modules()
        if any(id(t) in wanted for t in (*m._parameters.values(), *m._buffers.values()))
    ]


def _update_sizes(module: nn.Module) -> None:
    """Set a module's size attributes from its (sliced) tensors."""
    if isinstance(module, _CONV):
        if module.groups == module.in_channels and module.groups > 1:  # depthwise (with a multiplier)
            multiplier = module.out_channels // module.in_channels
            module.out_channels = module.weight.shape[0]
            module.in_channels = module.groups = module.out_channels // multiplier
        else:
            module.out_channels = module.weight.shape[0]
            module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, _CONV_T):
        module.in_channels = module.weight.shape[0]
        module.out_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        source = module.weight if module.weight is not None else module.running_mean
        if source is not None:
            module.num_features = source.shape[0]
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = module.weight.shape
    elif isinstance(module, nn.PReLU):
        module.num_parameters = module.weight.shape[0]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:  # pruned through (opt-in)
        module.normalized_shape = (*module.normalized_shape[:-1], module.weight.shape[0])


def _adopt_attention(model: nn.Module) -> None:
    """Every `nn.MultiheadAttention` whose tensors no longer fit its `embed_dim` becomes a
    `PrunedMultiheadAttention` (same parameters, a forward that allows the new widths)."""
    for module in model.modules():
        if not isinstance(module, nn.MultiheadAttention) or isinstance(module, PrunedMultiheadAttention):
            continue
        e = module.embed_dim
        fits = [(module.out_proj.weight.shape, (e, e))]
        if module._qkv_same_embed_dim:
            fits.append((module.in_proj_weight.shape, (3 * e, e)))
        else:
            fits += [
                (module.q_proj_weight.shape, (e, e)),
                (module.k_proj_weight.shape, (e, module.kdim)),
                (module.v_proj_weight.shape, (e, module.vdim)),
            ]
        if any(tuple(have) != want for have, want in fits):
            adopt_pruned_attention(module)


def resize_like(model: nn.Module, state_dict: dict[str, Tensor]) -> nn.Module:
    """Shape `model` (the original architecture) like a pruned `state_dict`, then load it, in place.

    Loads a model pruned by `remove_channels` without pruning again: every parameter or buffer
    whose saved shape differs is replaced by one of the saved shape and the modules' size
    attributes follow, so `torch.save(small.state_dict())` + `resize_like(build(), torch.load(...,
    weights_only=True))` gives back the small model.
    """
    own = dict(model.state_dict())
    canonical = canonical_names(model)  # a tied tensor is replaced once, for all its names
    extra = sorted(set(state_dict) - set(own))
    if extra:
        raise ConfigError(
            f"the state dict has entries the model lacks: {', '.join(extra[:5])}",
            fix="build the same architecture the pruned model came from",
        )
    modules = dict(model.named_modules())
    touched = set()
    replaced: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if tuple(own[key].shape) == tuple(value.shape):
            continue
        module_name, _, tensor_name = key.rpartition(".")
        module = modules[module_name]
        old = getattr(module, tensor_name)
        new = replaced.get(canonical.get(key, key))
        if new is None:
            new = torch.empty(value.shape, dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                new = nn.Parameter(new, requires_grad=old.requires_grad)
            replaced[canonical.get(key, key)] = new
        if isinstance(new, nn.Parameter):
            setattr(module, tensor_name, new)
        else:
            module.register_buffer(tensor_name, new)
        touched.add(module)
    for module in touched:
        _update_sizes(module)
    _adopt_attention(model)
    model.load_state_dict(state_dict)
    return model


def channel_masks(
    model: nn.Module,
    graph: ChannelGraph,
    groups: Iterable[int],
    *,
    roles: tuple[str, ...] = ("consumer",),
    complete: bool = False,
) -> MaskSet:
    """Masks that compute what `remove_channels` builds: the groups' positions in every site of `roles`.

    The consumers' input channels suffice for equal outputs; adding `"producer"` also zeroes the
    removed filters (and biases), so nonzero counts see what really remains. With `complete`, every
    site of those roles gets a mask (all True where nothing is removed), so that the names stay
    the same from one pruning step to the next.
    """
    removed = _removed_roots(graph, groups)
    params = dict(model.named_parameters())  # sites name tied tensors canonically, as these do
    masks: dict[str, Tensor] = {}
    gone = _gone(graph, removed)
    for site in graph.sites:
        if site.role not in roles:
            continue
        name = site.name
        keep = _keep_indices(graph, site, gone)
        if len(keep) == len(site.labels) and not complete:
            continue
        weight = params[name]
        along = torch.zeros(weight.shape[site.dim], dtype=torch.bool)
        along[torch.as_tensor(keep, dtype=torch.long)] = True
        shape = [1] * weight.dim()
        shape[site.dim] = -1
        mask = along.reshape(shape).expand_as(weight)
        masks[name] = masks[name] & mask if name in masks else mask.clone()
    return MaskSet(masks)
