"""The one selection rule: keep the k highest scores, ties to the lower index.

Every structure, allocation, updater and projection selects through `topk_mask`, so the requested
count is exact even when scores tie, and the same scores give the same mask bit for bit.

A prune may ask for another rule among the scores tied at the cut (`ties`, `TIES`): `index` (the
default: ties kept in index order), `reverse` (the higher index kept), `random` (a seeded random
order) or `original`, the rule of the reference codes, got by calling their own torch ops:

- N:M groups (`balanced_select(..., original="topk")`): each group's pruned entries are
  `torch.topk(group_scores, n_pruned, dim=1, largest=False)`'s, as in the Wanda and SparseGPT
  codes. Among ties topk has an order of its own: on CPU, for a group of 4 equal scores pruned to 1
  it keeps index 1; for [0, 1, 1, 1] pruned to 2 it keeps indices 1 and 3.
- rows (`original="sort"`): each row's pruned entries are the first of
  `torch.sort(row_scores, dim=1, stable=True)`, ascending, as in Wanda's per-output rule: among
  ties the lower index is pruned first.
- any other top-k (`select_topk`): the first n − k of a stable ascending `torch.sort` are pruned,
  the nearest exact-count rule of the reference codes (SynFlow's and Wanda's magnitude code prune
  every score at or below a threshold, which does not give an exact count); among ties this is
  `reverse`.

Rules other than `index` permute the scores so that the index rule applied to the permuted scores
is the asked rule, and permute the selection back: exact counts and determinism are kept, and the
default path is `topk_mask`/`balanced_topk` untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch
from torch import Tensor

from secateurs.core.errors import check_choice
from secateurs.core.threads import map_in_threads, worker_count

TIES = ("index", "reverse", "random", "original")
"""Rules among scores tied at the cut (module doc); `index` is the default."""


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of the k highest entries of a 1-D tensor; ties go to the lower index.

    The k-th largest value is found by selection (linear time, `_kth_largest`) instead of a full
    stable sort; ties at that value are then taken in index order, so the result is exactly that
    of a stable descending sort. Iterative pruning (SynFlow's 100 rounds) and dynamic sparse
    training re-select every few steps, so this is on their critical path.
    """
    flat = scores.detach().reshape(-1)
    n = flat.numel()
    if k <= 0 or k >= n:
        return torch.full((n,), k > 0, dtype=torch.bool, device=scores.device)
    if has_nan(flat):  # NaN has no place in selection order: sort as argsort does
        keep = torch.zeros(n, dtype=torch.bool, device=scores.device)
        keep[torch.argsort(flat, descending=True, stable=True)[:k]] = True
        return keep
    threshold = _kth_largest(flat, k)
    keep = flat >= threshold
    extra = int(torch.count_nonzero(keep)) - k
    if extra > 0:  # entries tie at the k-th largest: the last `extra` of them by index are dropped
        tied = torch.nonzero(flat == threshold).reshape(-1)
        keep[tied[tied.numel() - extra :]] = False
    return keep


def has_nan(values: Tensor) -> bool:
    """Whether `values` holds a NaN. Its sum is NaN when it does (or when +∞ meets −∞, or an overflow
    to ∞ meets −∞: then look entry by entry); one reduction is cheaper than a NaN map and `any`."""
    if not values.is_floating_point():
        return False
    return bool(values.sum().isnan()) and bool(values.isnan().any())


def _kth_largest(flat: Tensor, k: int) -> Tensor:
    """The k-th largest value of a NaN-free 1-D tensor, as a 0-d tensor of its dtype and device.

    NumPy's introselect on the host is about ten times faster than `torch.kthvalue` on a CPU (a
    few hundred thousand scores: 0.2 ms against 3 ms); the value found is the same, selection
    being exact. Dtypes NumPy lacks (bfloat16) are widened to float64 first, which is exact.
    """
    host = flat.cpu()
    if host.dtype == torch.bfloat16:
        host = host.double()
    values = host.numpy()
    alive = values > -np.inf
    if 2 * np.count_nonzero(alive) < values.size:
        # most groups were pruned before (−∞, the late rounds of iterative pruning): select among
        # the others, since a long run of equal values is introselect's slow case
        values = values[alive]
        if k > values.size:
            return torch.tensor(float("-inf"), dtype=flat.dtype, device=flat.device)
    position = values.size - k
    picked = np.partition(values, position)[position]
    return torch.as_tensor(picked, dtype=host.dtype).to(device=flat.device, dtype=flat.dtype)


def balanced_topk(scores: Tensor, k: int) -> Tensor:
    """Keep k entries of a [groups, m] score table, spread as evenly as possible over the groups.

    Every group keeps its q = k // G best entries; the k % G groups whose (q+1)-th best score is
    highest keep one more. Ties go to the lower index, both within a group and between groups
    (stable sorts), so the result is deterministic and the count exact.
    """
    groups, m = scores.shape
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= groups * m:
        return torch.ones_like(scores, dtype=torch.bool)
    if m >= _SELECT_ROWS_FROM and scores.device.type == "cpu" and not has_nan(scores):
        return _balanced_by_selection(scores, k)
    return _balanced_by_sort(scores, k)


_SELECT_ROWS_FROM = 32  # entries per group from which selection beats a sort (3x at 576; N:M's 4: slower)


def _balanced_by_sort(scores: Tensor, k: int) -> Tensor:
    """`balanced_topk` by a stable sort of every group (any device, NaN sorted as argsort does)."""
    groups, m = scores.shape
    q, extra = divmod(k, groups)
    values, order = torch.sort(scores, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(m, device=scores.device).expand(groups, m).contiguous())
    keep = rank < q
    if extra:
        more = topk_mask(values[:, q], extra)
        keep |= more[:, None] & (rank == q)
    return keep


def _balanced_by_selection(scores: Tensor, k: int) -> Tensor:
    """`balanced_topk` of NaN-free CPU scores without sorting: the q-th and (q+1)-th largest of every
    group by one NumPy partition, then in each group the entries above its cut and the first of
    those tied at it, by index (what the stable sort gives, bit for bit)."""
    groups, m = scores.shape
    q, extra = divmod(k, groups)
    host = scores.detach()
    values = (host if host.dtype in (torch.float32, torch.float64) else host.double()).numpy()
    part = _partition_rows(values, [m - q - 1, m - q] if q else [m - 1])
    following = part[:, m - q - 1]  # each group's (q+1)-th largest
    counts = np.full(groups, q, dtype=np.int64)
    if extra:
        counts[topk_mask(torch.from_numpy(np.ascontiguousarray(following)), extra).numpy()] += 1
    cut = np.where(counts == q, part[:, m - q] if q else np.inf, following)[:, None]
    keep = values >= cut
    # groups holding more entries at or above their cut than they keep tie at the cut: there the
    # first tied entries by index are kept (few groups, so the running count is only taken there)
    over = np.flatnonzero(keep.sum(1) > counts)
    if over.size:
        rows, at = values[over], cut[over]
        above, tied = rows > at, rows == at
        wanted = (counts[over] - above.sum(1))[:, None]
        keep[over] = above | (tied & (np.cumsum(tied, axis=1) <= wanted))
    return torch.from_numpy(keep)


_PARALLEL_FROM = 1 << 17  # entries from which a partition is split over torch's threads


def _partition_rows(values: np.ndarray, kth: list[int]) -> np.ndarray:
    """`np.partition(values, kth, axis=1)`, its rows split over torch's intra-op threads when the table
    is large (NumPy releases the GIL while it partitions; rows are independent, so the result is the
    same): an LLM's per-row selection is otherwise one thread while the forwards use all of them."""
    if values.size < _PARALLEL_FROM:
        return np.partition(values, kth, axis=1)
    chunks = np.array_split(values, worker_count(values.shape[0]))
    return np.concatenate(map_in_threads(lambda rows: np.partition(rows, kth, axis=1), chunks))


def check_ties(ties: object, where: str = "ties") -> str:
    """`ties` names one of `TIES`."""
    return check_choice(
        ties,
        TIES,
        where,
        fix="index keeps the lower index among tied scores; reverse the higher; random a seeded "
        "random one; original the reference codes' own rule (torch.topk / torch.sort)",
    )


_RULE: ContextVar[tuple[str, torch.Generator | None]] = ContextVar("secateurs_ties", default=("index", None))


@contextmanager
def tie_rule(ties: str, generator: torch.Generator | None = None) -> Iterator[None]:
    """Break ties by `ties` inside the block, for code that ranks without being handed the rule (the
    global allocation: `secateurs.methods.allocations.allocate` sets it from the prune's `ties`)."""
    token = _RULE.set((check_ties(ties), generator))
    try:
        yield
    finally:
        _RULE.reset(token)


def current_tie_rule() -> tuple[str, torch.Generator | None]:
    """The tie rule in force and its generator (`tie_rule`; ("index", None) outside one)."""
    return _RULE.get()


def tie_order(scores: Tensor, ties: str, generator: torch.Generator | None = None) -> Tensor | None:
    """A permutation p of a 1-D tensor's positions such that the index rule on `scores[p]` is the
    `ties` rule on `scores` (None for index). `generator` seeds the random rule."""
    n = scores.numel()
    if ties == "index":
        return None
    if ties == "reverse":
        return torch.arange(n - 1, -1, -1, device=scores.device)
    if ties == "random":
        return torch.randperm(n, generator=generator).to(scores.device)
    if ties == "original":  # stable ascending sort, pruned from its start: descending, ties reversed
        return torch.sort(scores, stable=True).indices.flip(0)
    raise ValueError(check_ties(ties))


def select_topk(
    scores: Tensor, k: int, ties: str = "index", generator: torch.Generator | None = None
) -> Tensor:
    """`topk_mask` with the tie rule `ties` (module doc); `index` is `topk_mask` itself."""
    if ties == "index":
        return topk_mask(scores, k)
    flat = scores.detach().reshape(-1)
    order = tie_order(flat, ties, generator)
    assert order is not None
    keep = torch.empty(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[order] = topk_mask(flat[order], k)
    return keep


def balanced_select(
    scores: Tensor,
    k: int,
    ties: str = "index",
    generator: torch.Generator | None = None,
    original: str = "topk",
) -> Tensor:
    """`balanced_topk` with the tie rule `ties`, both within a group and between groups.

    `original` names the reference op of the `original` rule: "topk" (N:M groups) or "sort" (rows).
    """
    if ties == "index":
        return balanced_topk(scores, k)
    if ties == "original":
        return _balanced_original(scores, k, original)
    if ties == "reverse":  # the flattened order reversed: groups reversed, and entries in each
        return balanced_topk(scores.flip((0, 1)), k).flip((0, 1))
    check_ties(ties)
    groups, m = scores.shape
    rows = torch.randperm(groups, generator=generator).to(scores.device)
    cols = torch.rand(groups, m, generator=generator).argsort(dim=1).to(scores.device)
    kept = balanced_topk(scores[rows].gather(1, cols), k)  # entry (i, j) is scores[rows[i], cols[i, j]]
    out = torch.empty_like(kept)
    out[rows] = torch.empty_like(kept).scatter_(1, cols, kept)
    return out


def _balanced_original(scores: Tensor, k: int, op: str) -> Tensor:
    """`balanced_topk`'s counts per group, each group's pruned entries picked by the reference op:
    `torch.topk(..., largest=False)` or the start of a stable ascending `torch.sort`. Which groups keep
    one more when k is not a multiple of the group count (no reference has that case) is decided
    as `balanced_topk` decides it."""
    groups, m = scores.shape
    if k <= 0 or k >= groups * m:
        return balanced_topk(scores, k)
    q, extra = divmod(k, groups)
    counts = balanced_topk(scores, k).sum(1) if extra else None
    keep = torch.ones(groups, m, dtype=torch.bool, device=scores.device)
    for kept in (q, q + 1) if extra else (q,):
        rows = None if counts is None else torch.nonzero(counts == kept).reshape(-1)
        table = scores if rows is None else scores[rows]
        pruned = m - kept
        if pruned == 0 or table.shape[0] == 0:
            continue
        if op == "topk":
            index = torch.topk(table, pruned, dim=1, largest=False).indices
        else:
            index = torch.sort(table, dim=1, stable=True).indices[:, :pruned]
        part = torch.ones_like(table, dtype=torch.bool).scatter_(1, index, False)
        if rows is None:
            keep = part
        else:
            keep[rows] = part
    return keep
