"""The fast forms of calibration statistics and OBS equal their straightforward definitions.

Statistics: Σx² summed in float64 in chunks gives the float32 norms of the whole float64 sum bit for
bit; Σxxᵀ summed over its upper panels equals XᵀX; a pass that has fed every layer stops before the
rest of the forward, and nothing a layer reads is lost. OBS: the column sweep in steps with lazy
products equals SparseGPT's per-column sweep (copied below from the algorithm as published) up to
float rounding, with the same masks; layers reading one input share one factorisation.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from secateurs.core.topk import topk_mask
from secateurs.methods.calibration import InputStats, collect
from secateurs.methods.reconstruction import obs as obs_module
from secateurs.methods.reconstruction.obs import inverse_hessian_factor, keep_top, obs_reconstruct
from secateurs.methods.sequential import prune_sequential


def correlated(n: int, features: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features // 2, generator=gen) @ torch.randn(features // 2, features, generator=gen)
    return x * torch.rand(features, generator=gen) * 3 + 0.1 * torch.randn(n, features, generator=gen)


def half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def per_column_sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    mask: torch.Tensor,
    select: str,
    m: int | None,
    blocksize: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's sweep as published: every column's error updates all later columns of its block."""
    W = weight.clone().float()
    rows, cols = W.shape
    H = hessian.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    if select == "adaptive":
        W[:, dead] = 0.0
    U = inverse_hessian_factor(H, 0.01)
    pruned = int((~mask).sum())
    counts = mask.reshape(rows, cols // m, m).sum(-1) if m else None
    keep = torch.ones_like(mask)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Q1, Err1, d = torch.zeros_like(W1), torch.zeros_like(W1), torch.diag(U1)
        if select == "fixed":
            keep1 = mask[:, i1:i2].clone()
        elif m is None:
            share = half_up(pruned * i2, cols) - half_up(pruned * i1, cols)
            keep1 = topk_mask((W1**2 / d[None, :] ** 2).reshape(-1), W1.numel() - share).reshape(W1.shape)
        else:
            keep1 = torch.ones_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if select == "adaptive" and m and i % m == 0:
                score = W1[:, i : i + m] ** 2 / d[None, i : i + m] ** 2
                keep1[:, i : i + m] = keep_top(score, counts[:, (i1 + i) // m])
            w = W1[:, i]
            q = torch.where(keep1[:, i], w, torch.zeros_like(w))
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        keep[:, i1:i2] = keep1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    W[~keep] = 0.0
    return W, keep


@pytest.mark.parametrize(
    ("select", "m", "blocksize"),
    [
        ("fixed", None, 128),
        ("adaptive", None, 128),
        ("adaptive", 4, 128),
        ("adaptive", 4, 48),
        ("fixed", None, 40),
    ],
)
def test_stepped_sweep_equals_the_per_column_sweep(select: str, m: int | None, blocksize: int) -> None:
    gen = torch.Generator().manual_seed(3)
    rows, cols = 24, 200
    weight = torch.randn(rows, cols, generator=gen)
    x = correlated(400, cols, seed=4)
    x[:, 7] = 0.0  # a dead input
    hessian = 2 * x.T.double() @ x.double() / x.shape[0]
    if m:
        mask = keep_top(torch.rand(rows * cols // m, m, generator=gen), torch.full((rows * cols // m,), 2))
        mask = mask.reshape(rows, cols)
    else:
        mask = torch.rand(rows, cols, generator=gen) > 0.5
    want_w, want_keep = per_column_sparsegpt(weight, hessian, mask, select, m, blocksize)
    got_w, got_keep = obs_reconstruct(weight, hessian, mask, select=select, m=m, blocksize=blocksize)
    assert torch.equal(got_keep, want_keep)
    assert bool((got_w[~got_keep] == 0).all())
    torch.testing.assert_close(got_w, want_w, rtol=0, atol=2e-5 * float(want_w.abs().max()))
    if select == "fixed":
        assert torch.equal(got_keep, mask)


def test_layers_reading_one_input_share_one_factorisation(monkeypatch: pytest.MonkeyPatch) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    calls: list[int] = []
    real = obs_module.hessian_factor

    def counting(hessian: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(hessian.shape[0])
        return real(hessian, percdamp)

    monkeypatch.setattr(obs_module, "hessian_factor", counting)
    data = [torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    prune_sequential(
        model,
        0.5,
        data=data,
        layers={"types": ["Linear"]},
        blocks="model.layers",
        reconstruct={"method": "obs", "select": "adaptive"},
    )
    # per block: q/k/v (32), o (32), gate/up (32), down (64): 4 factorisations for 7 Linears
    assert calls == [32, 32, 32, 64] * 2


# -- statistics ---------------------------------------------------------------------------------------


def test_chunked_float64_norms_are_those_of_the_whole_float64_sum() -> None:
    rows = correlated(1000, 96, seed=5) * 10 ** torch.linspace(-3, 3, 96)
    stats = InputStats(96, hessian=True)
    for part in rows.split(300):
        stats.add(part)
    exact = (rows.double() ** 2).sum(0).sqrt().float()
    assert torch.equal(stats.norms(), exact)
    h = stats.hessian_matrix()
    assert torch.equal(h, h.T)
    ref = 2 * rows.double().T @ rows.double() / 1000  # float32 sums: relative rounding ~1e-5
    torch.testing.assert_close(h, ref, rtol=1e-4, atol=1e-7 * float(ref.abs().max()))


def test_statistics_hold_only_what_is_asked_for() -> None:
    stats = InputStats(8, hessian=True, norms_wanted=False)
    stats.add(torch.randn(5, 8))
    assert stats.sq is None and stats.xtx is not None and stats.tokens == 5
    with pytest.raises(RuntimeError, match="without the norms"):
        stats.norms()
    with pytest.raises(RuntimeError, match="without the Hessian"):
        InputStats(8, hessian=False).hessian_matrix()


class Twice(nn.Module):
    """a → b → a again (a layer called twice per pass), then c."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c, self.tail = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.c(self.a(self.b(self.a(x)))))


class Once(Twice):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.c(torch.relu(self.b(self.a(x)))))


def inputs_by_hand(
    model: nn.Module, names: list[str], batches: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [
        getattr(model, n).register_forward_pre_hook(lambda _m, a, n=n: seen[n].append(a[0])) for n in names
    ]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in handles:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


@pytest.mark.parametrize("net", [Once, Twice])
def test_a_pass_ends_at_the_last_layers_input_and_loses_nothing(net: type[nn.Module]) -> None:
    model = net()
    names = ["a", "b", "c"]
    batches = [correlated(5, 6, seed=s) for s in range(3)]
    want = inputs_by_hand(model, names, batches)
    tail_runs: list[int] = []
    model.tail.register_forward_hook(lambda *_: tail_runs.append(1))
    collector = collect(model, {n: getattr(model, n) for n in names}, batches, hessian=True)
    for n in names:
        stats = collector.get(n)
        assert stats.tokens == want[n].shape[0]
        assert torch.equal(stats.norms(), (want[n].double() ** 2).sum(0).sqrt().float())
    # each layer ran once in the first pass: the later passes stop at c's input (tail runs once);
    # a layer called twice per pass (Twice) keeps every pass whole
    assert len(tail_runs) == (1 if net is Once else 3)
