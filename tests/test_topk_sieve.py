"""The sieved top-k: bit for bit `topk_mask` (with excluded entries at -inf), on its fast path and off it."""

from __future__ import annotations

import math

import pytest
import torch

import secateurs.core.topk_sieve as sieve
from secateurs.core.topk import topk_mask
from secateurs.core.topk_sieve import SIEVE_MIN, flat_nonzero, sieved_topk_mask


def _reference(scores: torch.Tensor, k: int, exclude: torch.Tensor | None) -> torch.Tensor:
    return topk_mask(scores if exclude is None else scores.masked_fill(exclude, -math.inf), k)


def _scores(kind: int, n: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, generator=g)
    if kind == 0:  # uniform, as SET's regrowth scores
        return torch.rand(n, generator=g)
    if kind == 1:  # heavy ties
        return torch.randint(0, 40, (n,), generator=g).float()
    if kind == 2:  # magnitudes with -inf, +inf and both signed zeros
        x = x.abs()
        x[torch.rand(n, generator=g) < 0.1] = -math.inf
        x[torch.rand(n, generator=g) < 0.001] = math.inf
        x[torch.rand(n, generator=g) < 0.2] = 0.0
        x[torch.rand(n, generator=g) < 0.1] = -0.0
        return x
    if kind == 3:  # sorted: the strided probe sees a regular pattern
        return torch.sort(x).values
    if kind == 4:  # NaN somewhere
        x[torch.randint(0, n, (2,), generator=g)] = math.nan
        return x
    return x


@pytest.mark.parametrize("kind", range(6))
def test_sieve_selects_exactly_what_topk_mask_selects(kind: int) -> None:
    g = torch.Generator().manual_seed(kind)
    for n in (1000, SIEVE_MIN, 3 * SIEVE_MIN + 17):
        x = _scores(kind, n, g)
        for density in (None, 0.1, 0.5, 0.95):
            exclude = None if density is None else torch.rand(n, generator=g) < density
            for k in (0, 1, 5, n // 100, n // 30, n // 5, n // 2, n // 2 + 1, n - n // 10, n - 3, n - 1, n):
                got = sieved_topk_mask(x, k, exclude)
                assert torch.equal(got, _reference(x, k, exclude)), (kind, n, density, k)


def test_sieve_keeps_the_shape_rule_of_topk_mask() -> None:
    x = torch.rand(200, 300, generator=torch.Generator().manual_seed(0))
    exclude = torch.rand(200, 300, generator=torch.Generator().manual_seed(1)) < 0.9
    assert sieved_topk_mask(x, 500, exclude).shape == (60000,)
    assert torch.equal(sieved_topk_mask(x, 500, exclude), _reference(x.reshape(-1), 500, exclude.reshape(-1)))


@pytest.mark.parametrize(
    ("k", "excluded"), [(300, None), (300, 0.9), (1500, 0.5), (15_000, None), (2000, 0.0)]
)
def test_the_fast_path_decides_on_ordinary_scores(
    monkeypatch: pytest.MonkeyPatch, k: int, excluded: float | None
) -> None:
    """Large inputs with k at most a quarter of them never fall back to topk_mask."""
    g = torch.Generator().manual_seed(k)
    x = torch.randn(60_000, generator=g).abs()
    exclude = None if excluded is None else torch.rand(60_000, generator=g) < excluded
    expected = _reference(x, k, exclude)

    def refuse(*_: object) -> torch.Tensor:
        raise AssertionError("fell back to topk_mask")

    monkeypatch.setattr(sieve, "topk_mask", refuse)
    assert torch.equal(sieved_topk_mask(x, k, exclude), expected)


def test_flat_nonzero_is_torch_nonzero() -> None:
    mask = torch.rand(37, 91, generator=torch.Generator().manual_seed(0)) < 0.3
    assert torch.equal(flat_nonzero(mask), torch.nonzero(mask.reshape(-1)).reshape(-1))
    assert flat_nonzero(mask).dtype == torch.int64
    assert flat_nonzero(torch.zeros(5, dtype=torch.bool)).tolist() == []
    assert torch.equal(flat_nonzero(mask.t()), torch.nonzero(mask.t().reshape(-1)).reshape(-1))  # strided


def test_a_misplaced_cut_falls_back_to_the_exact_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 4 * SIEVE_MIN
    x = torch.zeros(n)
    x[:: n // sieve.PROBE] = 1.0  # the probe sees only ones: its cut leaves nothing above it
    x[1::97] = 0.5  # the true top-k lies between the probe's entries
    calls: list[int] = []

    def exact(scores: torch.Tensor, k: int) -> torch.Tensor:
        calls.append(k)
        return topk_mask(scores, k)

    monkeypatch.setattr(sieve, "topk_mask", exact)
    k = (x > 0).sum().item() - 5
    assert torch.equal(sieved_topk_mask(x, int(k)), topk_mask(x, int(k)))
    assert calls == [int(k)]
