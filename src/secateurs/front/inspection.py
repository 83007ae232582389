"""`secateurs inspect`: what is in a checkpoint, layer by layer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text
from torch import Tensor

from secateurs.core.errors import CheckpointError, SecateursError
from secateurs.core.masks import MaskSet, set_masks
from secateurs.eval import count_costs
from secateurs.models import build_model
from secateurs.models.factory import build_from_factory
from secateurs.pipeline.outputs import read_checkpoint


def inspect_checkpoint(path: Path, console: Console) -> None:
    """Print the per-layer sparsity table and totals of a checkpoint written by `secateurs run`."""
    state, masks, meta = read_checkpoint(path)
    about = f": model {meta.get('model', '?')} on data {meta.get('data', '?')}"
    console.print(Text.assemble((str(path), "bold"), about))
    table = Table(title="per-layer sparsity")
    for col in ("parameter", "shape", "kept", "total", "sparsity"):
        table.add_column(col, justify="left" if col in ("parameter", "shape") else "right")
    for row in masks.report() if masks is not None else []:
        table.add_row(row.name, str(row.shape), f"{row.kept:,}", f"{row.numel:,}", f"{row.sparsity:.4f}")
    console.print(table)
    if masks is not None:
        console.print(
            f"masked parameters: sparsity {masks.sparsity():.4f} ({masks.kept():,} of {masks.numel():,} kept)"
        )
    for line in nonfinite_report(state, masks):
        console.print(line, style="bold red", markup=False, highlight=False, soft_wrap=True)
    if "model" in meta and "input_shape" in meta:
        try:
            build = build_from_factory if meta.get("model_factory") else build_model
            model = build(
                meta.get("model_factory") or meta["model"],
                tuple(meta["input_shape"]),
                int(meta["num_classes"]),
                **json.loads(meta["model_options"]),
            )
            model.load_state_dict(state)
        except (SecateursError, RuntimeError, KeyError, ValueError) as err:
            detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())  # one line
            raise CheckpointError(
                f"weights do not fit model {meta['model']!r} ({detail})",
                where=str(path),
                fix="the checkpoint's metadata and weights disagree: re-create it with `secateurs run`",
            ) from None
        if masks is not None:
            set_masks(model, masks)
        costs = count_costs(model, tuple(meta["input_shape"]))
        console.print(
            f"parameters: {costs.nonzero_params:,} nonzero of {costs.params:,}; "
            f"MACs per sample: {costs.nonzero_macs:,} nonzero of {costs.macs:,}"
        )


def nonfinite_report(state: Mapping[str, object], masks: MaskSet | None) -> list[str]:
    """One line per tensor of `state` holding NaN or inf: how many, and how many of them sit at
    pruned entries (harmless: a mask sets them to +0.0 when the checkpoint is loaded)."""
    lines = []
    for name, value in state.items():
        if not isinstance(value, Tensor) or not (value.is_floating_point() or value.is_complex()):
            continue
        nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
        if not nan + inf:
            continue
        line = f"NaN/inf in {name!r}: {nan:,} NaN, {inf:,} inf"
        if masks is not None and name in masks:
            pruned = int((~torch.isfinite(value) & ~masks[name]).sum())
            kept = nan + inf - pruned
            line += f" ({pruned:,} pruned, read as 0; {kept:,} kept)"
        lines.append(line)
    return lines
