"""Evaluating pruned language models: perplexity, embedding similarity, sparsity.

Perplexity is measured on non-overlapping windows of a fixed context length from held-out text,
with a fixed token budget, so numbers of different methods are comparable; the number of
predicted tokens is reported beside it. Encoders have no perplexity: we compare the pruned
model's mean-pooled sentence embeddings with the dense model's on real sentences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secateurs.llm.models import decoder_layers, layer_linears


@dataclass(frozen=True)
class Perplexity:
    """exp(mean next-token NLL) over `tokens` predicted tokens in `windows` windows of `seq_len`."""

    perplexity: float
    nll: float
    tokens: int
    windows: int
    seq_len: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def causal_lm_loss(logits: Tensor, ids: Tensor) -> Tensor:
    """Mean next-token cross-entropy of [batch, seq, vocab] logits on [batch, seq] token ids."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


# Logits held at once while scoring: chunk rows = this / vocabulary size (64 MB of float32 logits;
# 341 positions for SmolLM2's 49k vocabulary, 64 for Gemma 3's 262k).
LOGIT_BUDGET = 1 << 24


def _logit_softcap(model: nn.Module) -> float | None:
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return float(cap) if cap else None


def _head_logits(model: nn.Module, head: nn.Module, hidden: Tensor) -> Tensor:
    """Logits from final hidden states as the causal LM computes them (Gemma's soft cap included)."""
    logits = head(hidden).float()
    cap = _logit_softcap(model)
    return torch.tanh(logits / cap) * cap if cap is not None else logits


def _body_and_head(model: nn.Module, sample: Tensor) -> tuple[nn.Module, nn.Module] | None:
    """(body, head) such that the model's logits are `_head_logits(head(body(ids)))`, checked on a
    short prefix of `sample`; None when the model computes them otherwise (then the full logits
    are used)."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    body = getattr(model, "base_model", None)
    if not isinstance(head, nn.Module) or not isinstance(body, nn.Module) or body is model:
        return None
    prefix = sample[:1, : min(8, sample.shape[1])]
    try:
        expected = model(input_ids=prefix, use_cache=False).logits.float()
        got = _head_logits(model, head, body(input_ids=prefix, use_cache=False)[0])
    except (TypeError, ValueError, RuntimeError, IndexError, AttributeError):
        return None
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
        return None
    return body, head


@torch.no_grad()
def perplexity(model: nn.Module, windows: Tensor, batch_size: int = 2) -> Perplexity:
    """Perplexity of a causal LM on [n, seq_len] token windows (each window scored on its own).

    Within a window every token after the first is predicted from the ones before it, so a
    window of L tokens contributes L − 1 predictions. The full-vocabulary logits of a batch are
    never held: the body's final hidden states go through the LM head a chunk of positions at a
    time (`LOGIT_BUDGET` floats; a 262k vocabulary makes a 2 × 512 batch's logits 1 GB). A model
    whose logits are not head(final hidden states) (checked on a prefix) is scored from its logits.
    """
    model.eval()
    total_nll = 0.0
    total = 0
    split = _body_and_head(model, windows) if windows.numel() else None
    for batch in windows.split(batch_size):
        targets = batch[:, 1:].reshape(-1)
        if split is None:
            logits = model(input_ids=batch, use_cache=False).logits.float()
            total_nll += float(
                F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets, reduction="sum")
            )
        else:
            body, head = split
            hidden = body(input_ids=batch, use_cache=False)[0][:, :-1]
            hidden = hidden.reshape(-1, hidden.shape[-1])
            rows = max(1, LOGIT_BUDGET // int(getattr(head, "out_features", 0) or head.weight.shape[0]))
            for h, t in zip(hidden.split(rows), targets.split(rows), strict=True):
                total_nll += float(F.cross_entropy(_head_logits(model, head, h), t, reduction="sum"))
        total += targets.numel()
    mean = total_nll / total
    return Perplexity(math.exp(mean), mean, total, int(windows.shape[0]), int(windows.shape[1]))


@torch.no_grad()
def sentence_embeddings(
    model: nn.Module, tokenizer: Any, sentences: Sequence[str], batch_size: int = 32
) -> Tensor:
    """Mean-pooled last hidden states over real (non-padding) tokens: [n, hidden]."""
    model.eval()
    out = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(
            list(sentences[i : i + batch_size]), padding=True, truncation=True, return_tensors="pt"
        )
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))
    return torch.cat(out)


def embedding_similarity(reference: Tensor, other: Tensor) -> dict[str, float]:
    """Cosine similarity of matching rows (pruned vs dense embeddings): mean, min, median."""
    cos = F.cosine_similarity(reference.float(), other.float(), dim=-1)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "median": float(cos.median())}


def linear_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in the Linear weights of the transformer blocks, per layer and overall."""
    result: dict[str, float] = {}
    zeros = total = 0
    for li, block in enumerate(decoder_layers(model)):
        for name, lin in layer_linears(block).items():
            z = int((lin.weight == 0).sum())
            result[f"{li}.{name}"] = z / lin.weight.numel()
            zeros += z
            total += lin.weight.numel()
    result["overall"] = zeros / total if total else 0.0
    return result
