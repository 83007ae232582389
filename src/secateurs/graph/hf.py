"""Channel groups of Hugging Face transformers: whole attention heads and FFN channels.

Hugging Face models do not trace with plain `torch.fx`, so instead of `analyze` the channel
graph is built from the module structure by `hf_channel_graph` (the "HF rules"). It makes the
same `Site`s and `ChannelGroup`s the traced graph would, so the rest of the engine works
unchanged: `remove_channels` slices the tensors and sets the module size attributes,
`channel_masks` gives the equivalent zeroing masks, and the structures `heads` and `ffn`
(`secateurs.methods.structures.transformer`) score and allocate the groups like any other.

Groups, per transformer block:
- Llama (grouped-query attention): one group per key/value head, with the
  num_attention_heads / num_key_value_heads query heads that read it (removing a key/value head
  alone would leave its query heads with nothing to attend with): q_proj rows, k_proj and v_proj
  rows (and biases), o_proj columns.
- BERT: one group per head: query / key / value rows and biases, attention.output.dense columns.
- FFN: one group per intermediate channel: gate_proj and up_proj rows, down_proj column (BERT:
  intermediate.dense row and bias, output.dense column).

Config: an HF config holds ONE head count and ONE intermediate size for all layers, and the model
is rebuilt from it before the weights load. So `update_config` sets a config field only when
every layer kept the same count (the uniform allocation guarantees it); otherwise the field keeps
its value and the per-layer sizes are recorded under `secateurs_pruned_layers`, from which
`secateurs.llm.structured.load_pruned` rebuilds the pruned shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.graph.core import PRODUCER, ChannelGraph, ChannelGroup, Labels, Site
from secateurs.graph.removal import remove_channels

PARTS = ("heads", "ffn")
LAYER_SIZES_KEY = "secateurs_pruned_layers"  # per-layer kept sizes, recorded in the config


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


def architecture(model: nn.Module) -> str:
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
    arch = architecture(model)
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


# -- sizes and config --------------------------------------------------------------------------------------
def layer_sizes(model: nn.Module) -> list[dict[str, int]]:
    """Per block: num_attention_heads, num_key_value_heads and intermediate_size, read off the weights."""
    arch = architecture(model)
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


def update_config(model: nn.Module, arch: str) -> None:
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


def remove_groups(model: nn.Module, graph: HFChannelGraph, groups: Iterable[int]) -> nn.Module:
    """`remove_channels` for an HF graph, then the config follows (see the module docstring)."""
    pruned = remove_channels(model, graph, groups)
    update_config(pruned, graph.arch)
    return pruned
