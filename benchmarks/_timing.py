"""Latency of several models side by side, robust to a shared machine."""

from __future__ import annotations

import time
from typing import Any

import torch


def min_latency_ms(models: dict[str, Any], x: torch.Tensor, *, rounds: int, iters: int) -> dict[str, float]:
    """Minimum time per forward (ms) of each model on `x`, after a warm-up, rounds interleaved across
    models so that a slow spell of the machine hits all of them alike."""
    best = dict.fromkeys(models, float("inf"))
    with torch.inference_mode():
        for m in models.values():
            for _ in range(3):
                m(x)
        for _ in range(rounds):
            for name, m in models.items():
                started = time.perf_counter()
                for _ in range(iters):
                    m(x)
                best[name] = min(best[name], (time.perf_counter() - started) / iters * 1000)
    return best
