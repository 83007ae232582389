"""Structured pruning of pretrained transformers: whole attention heads and FFN channels.

The groups (`secateurs.graph.hf`) are the structures `heads`, `ffn` and `heads_ffn` of the one
pruning framework: any criterion scores them (magnitude: the L2 norm of every weight a group
owns; Wanda: the consuming columns times their input norms on calibration tokens; random; FPGM),
any allocation allocates them per block, and the chosen groups are removed physically, with the
config following so that `save_pretrained` / `from_pretrained` round-trip when every block kept
the same count (`allocation="uniform"`, the default). Otherwise (and for BERT heads, whose head
size HF derives from hidden_size / num_attention_heads) the per-layer sizes are recorded in the
config (`secateurs_pruned_layers`) and `load_pruned(save_dir)` rebuilds the pruned shape.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import masks_of
from secateurs.graph.hf import (
    LAYER_SIZES_KEY,
    PARTS,
    HFChannelGraph,
    hf_channel_graph,
    layer_sizes,
    remove_groups,
    update_config,
)
from secateurs.graph.removal import remove_channels
from secateurs.llm.evaluate import causal_lm_loss
from secateurs.methods.pruning import plan
from secateurs.methods.structures import FFNChannels, Heads, HeadsAndFFN

__all__ = [
    "LAYER_SIZES_KEY",
    "HFChannelGraph",
    "hf_channel_graph",
    "layer_sizes",
    "load_pruned",
    "prune_ffn_channels",
    "prune_heads",
    "prune_structured",
    "remove_groups",
]

Calibration = Tensor | Mapping[str, Tensor] | Sequence[Tensor | Mapping[str, Tensor]]
_STRUCTURES = {
    ("heads",): Heads,
    ("ffn",): FFNChannels,
    ("heads", "ffn"): HeadsAndFFN,
    ("ffn", "heads"): HeadsAndFFN,
}


def _batches(calibration: Calibration) -> list[tuple[Tensor, Tensor] | dict[str, Tensor]]:
    """Calibration batches: token ids as (ids, ids) pairs (activation criteria read the input, gradient
    criteria the next-token loss on them), tokenizer outputs as model keyword arguments."""
    items = [calibration] if isinstance(calibration, Tensor | Mapping) else list(calibration)
    out: list[tuple[Tensor, Tensor] | dict[str, Tensor]] = []
    for item in items:
        if isinstance(item, Tensor):
            ids = item if item.dim() == 2 else item.unsqueeze(0)
            out.append((ids, ids))
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


def prune_structured(
    model: nn.Module,
    sparsity: float,
    *,
    parts: Sequence[str] = PARTS,
    criterion: str = "magnitude",
    calibration: Calibration | None = None,
    allocation: str = "uniform",
    max_per_layer: float = 0.9,
    seed: int = 0,
    criterion_options: Mapping[str, Any] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = causal_lm_loss,
) -> nn.Module:
    """A smaller copy of `model` without `sparsity` of its head groups and/or FFN channels.

    With `allocation="uniform"` every block loses the same number (the config then states the new
    counts and `from_pretrained` round-trips); "global" ranks layer-normalised scores across
    blocks (per-layer sizes differ: reload with `load_pruned`). Every block keeps at least one
    head group and one channel. `calibration` (token ids or tokenizer outputs) feeds criteria
    that need data: wanda reads the inputs; taylor, snip and grasp differentiate `loss_fn` (the
    next-token cross-entropy; grasp needs a model loaded with eager attention) on token-id batches.
    `criterion_options` go to the criterion (e.g. `num_batches`).
    """
    structure = _STRUCTURES.get(tuple(parts))
    if structure is None:
        raise ConfigError(
            f"unknown structured parts {list(parts)}",
            where="structured LLM pruning",
            fix="use heads and/or ffn",
        )
    result = plan(
        model,
        sparsity,
        criterion=criterion,
        allocation=allocation,
        structure=structure(max_per_layer=max_per_layer),
        data=_batches(calibration) if calibration is not None else None,
        seed=seed,
        criterion_options=criterion_options,
        loss_fn=loss_fn,
    )
    layout = result.layout
    removed = layout.removed_ids(result.keep, masks_of(model))  # type: ignore[attr-defined]
    return remove_groups(model, layout.graph, removed)  # type: ignore[attr-defined]


def prune_heads(
    model: nn.Module,
    sparsity: float,
    *,
    criterion: str = "magnitude",
    calibration: Calibration | None = None,
    allocation: str = "uniform",
    seed: int = 0,
) -> nn.Module:
    """Remove `sparsity` of each block's head groups (Llama: key/value heads with their query heads)."""
    return prune_structured(
        model,
        sparsity,
        parts=("heads",),
        criterion=criterion,
        calibration=calibration,
        allocation=allocation,
        seed=seed,
    )


def prune_ffn_channels(
    model: nn.Module,
    sparsity: float,
    *,
    criterion: str = "magnitude",
    calibration: Calibration | None = None,
    allocation: str = "uniform",
    seed: int = 0,
) -> nn.Module:
    """Remove `sparsity` of each block's FFN channels (gate, up and down together)."""
    return prune_structured(
        model,
        sparsity,
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
    update_config(pruned, graph.arch)
    return pruned
