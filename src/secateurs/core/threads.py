"""Host work split over torch's intra-op threads, for the few CPU loops torch does not parallelise.

Torch runs one large kernel on all its threads, but a loop of small kernels (a chunked float64
sum) or a NumPy call runs on one while the others wait. Both release the GIL, so the loop's
independent parts can run on a small thread pool, one part per thread. Only work whose result
does not depend on the split goes here: the parts are computed exactly as they would be alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_pools: dict[int, ThreadPoolExecutor] = {}  # by size, made on first use
os.register_at_fork(after_in_child=_pools.clear)  # a forked child has none of the parent's threads


def worker_count(limit: int) -> int:
    """Threads to split `limit` independent parts over: torch's intra-op count, at most `limit`."""
    return max(1, min(torch.get_num_threads(), limit))


def map_in_threads(fn: Callable[[T], R], parts: Sequence[T]) -> list[R]:
    """`[fn(p) for p in parts]`, the parts run concurrently when there are several (in order)."""
    if len(parts) < 2:
        return [fn(p) for p in parts]
    size = len(parts)
    pool = _pools.get(size) or _pools.setdefault(
        size, ThreadPoolExecutor(size, thread_name_prefix="secateurs-host")
    )
    return list(pool.map(fn, parts))
