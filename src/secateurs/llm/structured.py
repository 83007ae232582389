"""Structured pruning of pretrained transformers: whole attention heads and FFN channels.

Hugging Face models do not trace with plain `torch.fx`, so instead of `analyze` the channel
graph is built from the module structure by `hf_channel_graph` (the "HF rules"). It makes the
same `Site`s and `ChannelGroup`s the traced graph would, so the structured-pruning engine works
unchanged: `remove_channels` slices the tensors and sets the module size attributes,
`channel_masks` gives the equivalent zeroing masks and `select_groups` allocates per layer.

Groups, per transformer block:
- Llama (grouped-query attention): one group per key/value head, with the
  num_attention_heads / num_key_value_heads query heads that read it (removing a key/value head
  alone would leave its query heads with nothing to attend with): q_proj rows, k_proj and v_proj
  rows (and biases), o_proj columns.
- BERT: one group per head: query / key / value rows and biases, attention.output.dense columns.
- FFN: one group per intermediate channel: gate_proj and up_proj rows, down_proj column (BERT:
  intermediate.dense row and bias, output.dense column).

Config and `save_pretrained` / `from_pretrained`: an HF config holds ONE head count and ONE
intermediate size for all layers, and the model is rebuilt from it before the weights load. So a
config field is updated only when every layer kept the same count, which `allocation="uniform"`
(the default) guarantees. Otherwise the field keeps its original value, and a plain
`from_pretrained` of the saved directory stops with transformers' size-mismatch error (it never
loads silently wrong). BERT computes its head size as hidden_size / num_attention_heads, so its
head count cannot change in the config at all: BERT head pruning never round-trips through
plain `from_pretrained`. In every case the per-layer sizes are recorded in the config
(`secateurs_pruned_layers`) and `load_pruned(save_dir)` rebuilds the pruned shape and loads it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.core.registry import Registry
from secateurs.graph.core import PRODUCER, ChannelGraph, ChannelGroup, Labels, Site
from secateurs.graph.prune import select_groups
from secateurs.graph.removal import channel_masks, remove_channels

__all__ = [
    "LAYER_SIZES_KEY",
    "STRUCTURED_CRITERIA",
    "HFChannelGraph",
    "channel_masks",
    "hf_channel_graph",
    "input_norms",
    "layer_sizes",
    "load_pruned",
    "prune_ffn_channels",
    "prune_heads",
    "prune_structured",
    "remove_groups",
    "structured_scores",
]

PARTS = ("heads", "ffn")
LAYER_SIZES_KEY = "secateurs_pruned_layers"  # per-layer kept sizes, recorded in the config
Calibration = Tensor | Mapping[str, Tensor] | Sequence[Tensor | Mapping[str, Tensor]]


@dataclass
class _Block:
    """Where one transformer block keeps its attention and FFN tensors."""

    prefix: str
    attention: str  # the module holding the per-head attributes
    qkv: tuple[str, ...]  # producers of head rows, q first
    out: str  # consumer of head columns
    ffn_in: tuple[str, ...]  # producers of FFN channel rows
    ffn_out: str  # consumer of FFN channel columns
    ffn_module: str  # the module holding intermediate_size (or "")


@dataclass
class HFChannelGraph(ChannelGraph):
    """A `ChannelGraph` of a Hugging Face model, with what each group is.

    `kind[id]` is "heads" or "ffn", `layer[id]` the block index, `arch` "llama" or "bert",
    `head_dim` the (unchanged) size of one head and `queries_per_group` the query heads in one
    head group (num_attention_heads / num_key_value_heads for Llama, 1 for BERT).
    """

    kind: dict[int, str] = field(default_factory=dict)
    layer: dict[int, int] = field(default_factory=dict)
    arch: str = ""
    head_dim: int = 0
    queries_per_group: int = 1
    blocks: list[_Block] = field(default_factory=list)


# -- finding the blocks ---------------------------------------------------------------------------
def _config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        raise ConfigError(
            f"{type(model).__name__} is not a Hugging Face transformers model (no config.model_type)",
            where="structured LLM pruning",
            fix="pass a transformers Llama or BERT model (e.g. LlamaForCausalLM, BertModel)",
        )
    return config


def _arch(model: nn.Module) -> str:
    model_type = _config(model).model_type
    if model_type == "llama":
        return "llama"
    if model_type == "bert":
        return "bert"
    raise ConfigError(
        f"structured pruning has no rules for architecture {model_type!r} ({type(model).__name__})",
        where="structured LLM pruning",
        fix="use a Llama-family decoder or a BERT encoder, or prune unstructured (secateurs llm prune)",
    )


def _blocks(model: nn.Module, arch: str) -> list[_Block]:
    """Every transformer block of `model`, in order, recognised by its submodule names."""
    found = []
    for name, module in model.named_modules():
        p = f"{name}." if name else ""
        if arch == "llama" and all(
            hasattr(module, a) for a in ("self_attn", "mlp")
        ):  # a LlamaDecoderLayer (or subclass)
            a, m = f"{p}self_attn", f"{p}mlp"
            found.append(
                _Block(
                    name,
                    a,
                    (f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"),
                    f"{a}.o_proj",
                    (f"{m}.gate_proj", f"{m}.up_proj"),
                    f"{m}.down_proj",
                    m,
                )
            )
        elif arch == "bert" and all(hasattr(module, a) for a in ("attention", "intermediate", "output")):
            s = f"{p}attention.self"
            found.append(
                _Block(
                    name,
                    s,
                    (f"{s}.query", f"{s}.key", f"{s}.value"),
                    f"{p}attention.output.dense",
                    (f"{p}intermediate.dense",),
                    f"{p}output.dense",
                    "",
                )
            )
    if not found:
        raise ConfigError(
            f"found no transformer blocks in {type(model).__name__}",
            where="structured LLM pruning",
            fix="pass the model itself (e.g. LlamaForCausalLM, BertModel), not one of its parts",
        )
    return found


def _head_dim(model: nn.Module, arch: str, blocks: list[_Block]) -> int:
    modules = dict(model.named_modules())
    attention = modules[blocks[0].attention]
    value = getattr(attention, "head_dim" if arch == "llama" else "attention_head_size", None)
    if not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{blocks[0].attention} has no integer head size",
            where="structured LLM pruning",
            fix="report this transformers version to the developers",
        )
    return value


# -- the graph ------------------------------------------------------------------------------------
def hf_channel_graph(model: nn.Module, parts: Sequence[str] = PARTS) -> HFChannelGraph:
    """The channel groups of a Llama or BERT model's attention heads and/or FFN channels.

    `parts`: "heads", "ffn" or both. Every group carries one label, repeated over the positions
    it owns in each tensor (a head's head_dim rows, say), so one union-find class is one group.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ConfigError(
            f"unknown structured parts {unknown or list(parts)}",
            where="structured LLM pruning",
            fix="use heads and/or ffn",
        )
    arch = _arch(model)
    blocks = _blocks(model, arch)
    modules = dict(model.named_modules())
    d = _head_dim(model, arch, blocks)
    labels = Labels()
    sites: list[Site] = []
    attributes: dict[tuple[str, str], np.ndarray] = {}
    kind: dict[int, str] = {}
    layer: dict[int, int] = {}
    per_group = 1

    def add(module: str, dim: int, units: np.ndarray, repeat: int, role: str) -> None:
        owner = modules[module]
        for tensor in ("weight", "bias"):
            if getattr(owner, tensor, None) is None or (tensor == "bias" and dim != 0):
                continue
            sites.append(Site(module, tensor, dim, np.repeat(units, repeat), role))

    for index, block in enumerate(blocks):
        if "heads" in parts:
            q, k, v = (modules[n] for n in block.qkv)
            kv_heads = k.out_features // d
            per_group = q.out_features // (d * kv_heads)
            if (
                k.out_features % d
                or q.out_features != per_group * d * kv_heads
                or v.out_features != k.out_features
            ):
                raise ConfigError(
                    f"the projections of {block.attention} do not split into heads of {d}",
                    where="structured LLM pruning",
                    fix="check the model's head_dim and head counts",
                )
            units = labels.fresh((kv_heads,), PRODUCER)
            add(block.qkv[0], 0, units, per_group * d, "producer")
            add(block.qkv[1], 0, units, d, "producer")
            add(block.qkv[2], 0, units, d, "producer")
            add(block.out, 1, units, per_group * d, "consumer")
            attention = modules[block.attention]
            counts = {  # module attributes the forward may use (older transformers, BERT)
                "num_heads": per_group,
                "num_attention_heads": per_group,
                "num_key_value_heads": 1,
                "all_head_size": per_group * d,
            }
            for attribute, repeat in counts.items():
                if type(getattr(attention, attribute, None)) is int:
                    attributes[(block.attention, attribute)] = np.repeat(units, repeat)
            kind.update(dict.fromkeys(units.tolist(), "heads"))
            layer.update(dict.fromkeys(units.tolist(), index))
        if "ffn" in parts:
            width = modules[block.ffn_in[0]].out_features
            units = labels.fresh((width,), PRODUCER)
            for name in block.ffn_in:
                add(name, 0, units, 1, "producer")
            add(block.ffn_out, 1, units, 1, "consumer")
            if (
                block.ffn_module
                and type(getattr(modules[block.ffn_module], "intermediate_size", None)) is int
            ):
                attributes[(block.ffn_module, "intermediate_size")] = units.copy()
            kind.update(dict.fromkeys(units.tolist(), "ffn"))
            layer.update(dict.fromkeys(units.tolist(), index))
    groups: dict[int, ChannelGroup] = {}
    for site in sites:
        for unit in np.unique(site.labels).tolist():
            group = groups.setdefault(unit, ChannelGroup(unit))
            group.sites.append((site, np.nonzero(site.labels == unit)[0]))
    return HFChannelGraph(
        model,
        sorted(groups.values(), key=lambda g: g.id),
        sites,
        labels,
        set(),
        attributes,
        kind=kind,
        layer=layer,
        arch=arch,
        head_dim=d,
        queries_per_group=per_group,
        blocks=blocks,
    )


# -- criteria -------------------------------------------------------------------------------------
# (model, graph, ‖X_j‖ of each consumer's inputs or None, seed) -> {group id: score}
StructuredCriterion = Callable[[nn.Module, HFChannelGraph, dict[str, Tensor] | None, int], dict[int, float]]
STRUCTURED_CRITERIA: Registry[StructuredCriterion] = Registry("structured LLM criterion")


@STRUCTURED_CRITERIA.register("magnitude", "L2 norm of every weight the group owns (rows and columns)")
def magnitude_scores(
    model: nn.Module, graph: HFChannelGraph, norms: dict[str, Tensor] | None, seed: int
) -> dict[int, float]:
    modules = dict(model.named_modules())
    scores = dict.fromkeys((g.id for g in graph.groups), 0.0)
    cache: dict[tuple[str, int], Tensor] = {}
    for g in graph.groups:
        for site, index in g.sites:
            if site.tensor != "weight":
                continue
            key = (site.module, site.dim)
            if key not in cache:
                w = modules[site.module].weight.detach().double()
                cache[key] = w.pow(2).sum(1 - site.dim)  # squared norm of each row (dim 0) / column (dim 1)
            scores[g.id] += float(cache[key][torch.as_tensor(index)].sum())
    return {gid: math.sqrt(v) for gid, v in scores.items()}


@STRUCTURED_CRITERIA.register(
    "wanda", "Σ |W_ij|·‖X_j‖ over the group's columns of the consuming layer (needs calibration)"
)
def wanda_scores(
    model: nn.Module, graph: HFChannelGraph, norms: dict[str, Tensor] | None, seed: int
) -> dict[int, float]:
    if norms is None:
        raise ConfigError(
            "criterion 'wanda' needs calibration data",
            where="structured LLM pruning",
            fix="pass calibration=token ids",
        )
    modules = dict(model.named_modules())
    column: dict[str, Tensor] = {}
    scores = {}
    for g in graph.groups:
        total = 0.0
        for site, index in g.consumers():
            if site.tensor != "weight":
                continue
            if site.module not in column:
                w = modules[site.module].weight.detach().double().abs()
                column[site.module] = w.sum(0) * norms[site.module]  # Σ_i |W_ij| · ‖X_j‖ per column j
            total += float(column[site.module][torch.as_tensor(index)].sum())
        scores[g.id] = total
    return scores


@STRUCTURED_CRITERIA.register("random", "uniform random scores (seeded), a sanity baseline")
def random_scores(
    model: nn.Module, graph: HFChannelGraph, norms: dict[str, Tensor] | None, seed: int
) -> dict[int, float]:
    values = torch.rand(len(graph.groups), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return {g.id: float(v) for g, v in zip(graph.groups, values, strict=True)}


def _batches(calibration: Calibration) -> list[dict[str, Tensor]]:
    """Calibration as a list of model keyword arguments: token-id tensors or tokenizer outputs."""
    items = [calibration] if isinstance(calibration, Tensor | Mapping) else list(calibration)
    out = []
    for item in items:
        if isinstance(item, Tensor):
            out.append({"input_ids": item if item.dim() == 2 else item.unsqueeze(0)})
        elif isinstance(item, Mapping) and "input_ids" in item:
            out.append(dict(item))
        else:
            raise ConfigError(
                f"calibration items must be token-id tensors or tokenizer outputs, got {type(item).__name__}",
                where="structured LLM pruning",
                fix="pass a [batch, seq] LongTensor or tokenizer(..., return_tensors='pt')",
            )
    if not out:
        raise ConfigError(
            "calibration is empty", where="structured LLM pruning", fix="pass at least one batch"
        )
    return out


@torch.no_grad()
def input_norms(model: nn.Module, modules: Iterable[str], calibration: Calibration) -> dict[str, Tensor]:
    """‖X_j‖ over all calibration tokens of each input feature j of `modules` (padding excluded)."""
    owned = dict(model.named_modules())
    sums: dict[str, Tensor] = {}
    mask: list[Tensor | None] = [None]

    def hook(name: str) -> Any:
        def record(_: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach().double().pow(2)
            if mask[0] is not None and x.dim() == 3 and x.shape[:2] == mask[0].shape:
                x = x * mask[0][..., None]
            total = x.reshape(-1, x.shape[-1]).sum(0)
            sums[name] = sums[name] + total if name in sums else total

        return record

    handles = [owned[n].register_forward_pre_hook(hook(n)) for n in dict.fromkeys(modules)]
    was_training = model.training
    model.eval()
    try:
        for batch in _batches(calibration):
            attention = batch.get("attention_mask")
            mask[0] = None if attention is None else attention.to(torch.float64)
            model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: s.sqrt() for n, s in sums.items()}


def structured_scores(
    model: nn.Module,
    graph: HFChannelGraph,
    criterion: str = "magnitude",
    *,
    calibration: Calibration | None = None,
    seed: int = 0,
) -> dict[int, float]:
    """A score per group of `graph` (lower = removed first)."""
    score = STRUCTURED_CRITERIA.get(criterion)
    norms = None
    if calibration is not None and criterion == "wanda":
        consumers = {s.module for s in graph.sites if s.role == "consumer"}
        norms = input_norms(model, consumers, calibration)
    return score(model, graph, norms, seed)


# -- pruning --------------------------------------------------------------------------------------
def layer_sizes(model: nn.Module) -> list[dict[str, int]]:
    """Per block: num_attention_heads, num_key_value_heads and intermediate_size, read off the weights."""
    arch = _arch(model)
    blocks = _blocks(model, arch)
    modules = dict(model.named_modules())
    d = _head_dim(model, arch, blocks)
    return [
        {
            "num_attention_heads": modules[b.qkv[0]].out_features // d,
            "num_key_value_heads": modules[b.qkv[1]].out_features // d,
            "intermediate_size": modules[b.ffn_in[0]].out_features,
        }
        for b in blocks
    ]


def _configs(model: nn.Module) -> list[Any]:
    """The distinct config objects of a model and its submodules (usually one, shared)."""
    found: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "model_type"):
            found.setdefault(id(config), config)
    return list(found.values())


def _update_config(model: nn.Module, arch: str) -> None:
    """Set each config count that every layer shares; record all per-layer sizes."""
    sizes = layer_sizes(model)
    fields = ["intermediate_size"]
    if arch == "llama":  # BERT derives its head size from hidden_size / num_attention_heads
        fields += ["num_attention_heads", "num_key_value_heads"]
    for config in _configs(model):
        for name in fields:
            values = {s[name] for s in sizes}
            if len(values) == 1 and hasattr(config, name):
                setattr(config, name, values.pop())
        setattr(config, LAYER_SIZES_KEY, sizes)


def prune_structured(
    model: nn.Module,
    fraction: float,
    *,
    parts: Sequence[str] = PARTS,
    criterion: str = "magnitude",
    calibration: Calibration | None = None,
    allocation: str = "uniform",
    max_per_layer: float = 0.9,
    seed: int = 0,
) -> nn.Module:
    """A smaller copy of `model` without `fraction` of its head groups and/or FFN channels.

    With `allocation="uniform"` every block loses the same number (the config then states the new
    counts and `from_pretrained` round-trips); "global" ranks layer-normalised scores across
    blocks (per-layer sizes differ: reload with `load_pruned`). Every block keeps at least one
    head group and one channel.
    """
    graph = hf_channel_graph(model, parts)
    if criterion == "wanda" and calibration is None:
        raise ConfigError(
            "criterion 'wanda' needs calibration data",
            where="structured LLM pruning",
            fix="pass calibration=token ids",
        )
    scores = structured_scores(model, graph, criterion, calibration=calibration, seed=seed)
    chosen = select_groups(graph, scores, fraction, allocation=allocation, max_per_layer=max_per_layer)
    return remove_groups(model, graph, chosen)


def remove_groups(model: nn.Module, graph: HFChannelGraph, groups: Iterable[int]) -> nn.Module:
    """`remove_channels` for an HF graph, then the config follows (see the module docstring)."""
    pruned = remove_channels(model, graph, groups)
    _update_config(pruned, graph.arch)
    return pruned


def prune_heads(
    model: nn.Module,
    fraction: float,
    *,
    criterion: str = "magnitude",
    calibration: Calibration | None = None,
    allocation: str = "uniform",
    seed: int = 0,
) -> nn.Module:
    """Remove `fraction` of each block's head groups (Llama: key/value heads with their query heads)."""
    return prune_structured(
        model,
        fraction,
        parts=("heads",),
        criterion=criterion,
        calibration=calibration,
        allocation=allocation,
        seed=seed,
    )


def prune_ffn_channels(
    model: nn.Module,
    fraction: float,
    *,
    criterion: str = "magnitude",
    calibration: Calibration | None = None,
    allocation: str = "uniform",
    seed: int = 0,
) -> nn.Module:
    """Remove `fraction` of each block's FFN channels (gate, up and down together)."""
    return prune_structured(
        model,
        fraction,
        parts=("ffn",),
        criterion=criterion,
        calibration=calibration,
        allocation=allocation,
        seed=seed,
    )


# -- loading --------------------------------------------------------------------------------------
def load_pruned(path: str | Path, model_class: type | None = None) -> nn.Module:
    """Load a model saved with `save_pretrained` after structured pruning, whatever its layer sizes.

    The model is built from the saved config, each block is shrunk to the recorded sizes (by
    removing its trailing groups through the same engine), then the saved weights are loaded.
    `model_class` defaults to the config's first `architectures` entry.
    """
    from safetensors.torch import load_file

    from secateurs.llm.models import require_transformers

    transformers = require_transformers()
    path = Path(path)
    config = transformers.AutoConfig.from_pretrained(path)
    sizes = getattr(config, LAYER_SIZES_KEY, None)
    if model_class is None:
        names = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, names[0], None) if names else None
        if model_class is None:
            raise ConfigError(
                f"{path}/config.json names no known architecture",
                where="load_pruned",
                fix="pass model_class=",
            )
    model = model_class(copy.deepcopy(config))
    if sizes:
        model = _shrink_to(model, sizes)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no *.safetensors in {path}", where="load_pruned", fix="save with save_pretrained")
    state: dict[str, Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {params[k].data_ptr() for k in state if k in params}
    untied = [k for k in missing if k not in params or params[k].data_ptr() not in loaded]
    buffers = dict(model.named_buffers())
    untied = [k for k in untied if k not in buffers]  # non-persistent buffers are rebuilt, not saved
    if unexpected or untied:
        raise ConfigError(
            f"{path} does not fit {model_class.__name__}: missing {untied[:3]}, unexpected {unexpected[:3]}",
            where="load_pruned",
            fix="load with the class the model was saved from (model_class=...)",
        )
    model.eval()
    return model


def _shrink_to(model: nn.Module, sizes: list[dict[str, int]]) -> nn.Module:
    graph = hf_channel_graph(model)
    if len(sizes) != len(graph.blocks):
        raise ConfigError(
            f"the config records {len(sizes)} layers, the model has {len(graph.blocks)}",
            where="load_pruned",
            fix="load with the class the model was saved from",
        )
    by_slot: dict[tuple[int, str], list[int]] = {}
    for g in graph.groups:
        by_slot.setdefault((graph.layer[g.id], graph.kind[g.id]), []).append(g.id)
    drop: list[int] = []
    for index, size in enumerate(sizes):
        keep = {
            "heads": size["num_key_value_heads"],
            "ffn": size["intermediate_size"],
        }
        for part, n in keep.items():
            ids = by_slot.get((index, part), [])
            drop += ids[n:]
    pruned = remove_channels(model, graph, drop) if drop else model
    _update_config(pruned, graph.arch)
    return pruned
