"""nn.MultiheadAttention head and width pruning: the pruned module computes what zeroing computes."""

from __future__ import annotations

import copy

import pytest
import torch
from structured_archs import build
from torch import Tensor, nn

from secateurs.graph.analysis import analyze
from secateurs.graph.attention import PrunedMultiheadAttention, adopt_pruned_attention
from secateurs.graph.removal import channel_masks, remove_channels

CONFIGS = [
    {"batch_first": True},
    {"batch_first": False, "bias": False},
    {"batch_first": True, "add_bias_kv": True},
    {"batch_first": False, "add_zero_attn": True},
    {"batch_first": True, "kdim": 6, "vdim": 5},
    {"batch_first": False, "add_bias_kv": True, "add_zero_attn": True, "kdim": 7, "vdim": 7},
]


def _inputs(mha: nn.MultiheadAttention, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch, length, source = 3, 5, 4

    def shape(n: int, width: int) -> tuple[int, ...]:
        return (batch, n, width) if mha.batch_first else (n, batch, width)

    return (
        torch.randn(shape(length, mha.embed_dim), generator=g),
        torch.randn(shape(source, mha.kdim), generator=g),
        torch.randn(shape(source, mha.vdim), generator=g),
    )


def _pruned_copy(mha: nn.MultiheadAttention) -> nn.MultiheadAttention:
    clone = copy.deepcopy(mha)
    adopt_pruned_attention(clone)
    assert type(clone) is PrunedMultiheadAttention
    return clone


@pytest.mark.parametrize("config", CONFIGS)
def test_the_pruned_forward_equals_torchs_on_an_unpruned_module(config: dict) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, **config).eval()
    ours = _pruned_copy(mha)
    q, k, v = _inputs(mha, 1)
    batch = q.shape[0] if mha.batch_first else q.shape[1]
    bool_mask = torch.rand(q.shape[1 if mha.batch_first else 0], k.shape[1 if mha.batch_first else 0]) < 0.3
    bool_mask[:, 0] = False  # every query sees at least one key
    padding = torch.zeros(batch, k.shape[1 if mha.batch_first else 0], dtype=torch.bool)
    padding[0, -1] = True
    float_mask = torch.randn(batch * 2, bool_mask.shape[0], bool_mask.shape[1])
    cases = [
        {},
        {"attn_mask": bool_mask},
        {"key_padding_mask": padding, "average_attn_weights": False},
        {"attn_mask": float_mask, "key_padding_mask": padding.float() * -5.0},
        {"need_weights": False},
    ]
    with torch.no_grad():
        for kwargs in cases:
            expected, expected_w = mha(q, k, v, **kwargs)
            got, got_w = ours(q, k, v, **kwargs)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
            if expected_w is None:
                assert got_w is None
            else:
                torch.testing.assert_close(got_w, expected_w, rtol=1e-5, atol=1e-6)


def test_unbatched_inputs_and_is_causal_match_torch() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 4).eval()
    ours = _pruned_copy(mha)
    x = torch.randn(5, 8)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, x, x)[0], mha(x, x, x)[0], rtol=1e-5, atol=1e-6)
        expected = mha(x, x, x, attn_mask=causal, is_causal=True)[0]
        torch.testing.assert_close(ours(x, x, x, is_causal=True, attn_mask=causal)[0], expected)
        torch.testing.assert_close(ours(x, x, x, is_causal=True)[0], expected, rtol=1e-5, atol=1e-6)


class CrossAttention(nn.Module):
    """Linear encoders feed query, key and value of an MHA with separate k/v widths."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.q_in, self.k_in, self.v_in = nn.Linear(4, 16), nn.Linear(4, 6), nn.Linear(4, 10)
        self.attn = nn.MultiheadAttention(16, 4, kdim=6, vdim=10, batch_first=batch_first, add_bias_kv=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        out, _ = self.attn(self.q_in(x), self.k_in(memory), self.v_in(memory), need_weights=False)
        return self.head(torch.relu(out))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_removing_heads_and_widths_equals_zeroing_them(batch_first: bool, seed: int) -> None:
    torch.manual_seed(seed)
    model = CrossAttention(batch_first).eval()
    shape = (2, 5, 4) if batch_first else (5, 2, 4)
    x, memory = torch.randn(shape), torch.randn(shape)
    graph = analyze(model, (x, memory))
    heads = [g for g in graph.groups if any(s.name == "attn.in_proj_bias" for s, _ in g.sites)]
    assert len(heads) == 4
    for head in heads:  # each head: q, k, v rows of its 4 channels (no fused weight with kdim/vdim)
        rows = {s.name: len(i) for s, i in head.sites if s.role == "producer" and s.module == "attn"}
        assert rows == {
            "attn.q_proj_weight": 4,
            "attn.k_proj_weight": 4,
            "attn.v_proj_weight": 4,
            "attn.in_proj_bias": 12,
        }
    widths = [g for g in graph.groups if g not in heads]
    assert sorted(next(s.module for s, _ in g.producers()) for g in widths) == sorted(
        ["q_in"] * 16 + ["k_in"] * 6 + ["v_in"] * 10 + ["attn.out_proj"] * 16
    )
    g = torch.Generator().manual_seed(seed)
    chosen = [heads[int(torch.randint(4, (1,), generator=g))].id]
    chosen += [w.id for w in widths if float(torch.rand(1, generator=g)) < 0.4]
    small = remove_channels(model, graph, chosen)
    reference = copy.deepcopy(model)
    channel_masks(model, graph, chosen).apply(reference)
    with torch.no_grad():
        torch.testing.assert_close(small(x, memory), reference(x, memory), rtol=1e-5, atol=1e-6)
    attn = small.attn
    assert type(attn) is PrunedMultiheadAttention
    assert (attn.num_heads, attn.head_dim, attn.inner_dim) == (3, 4, 12)
    assert (attn.embed_dim, attn.kdim, attn.vdim) == (
        small.q_in.out_features,
        small.k_in.out_features,
        small.v_in.out_features,
    )
    assert attn.out_dim == small.head.in_features == attn.out_proj.out_features
    assert attn.bias_k.shape == attn.bias_v.shape == (1, 1, 12)


def test_vit_with_nn_multiheadattention_loses_a_head_with_the_analytic_parameter_count() -> None:
    model, x = build("vit_mha")
    graph = analyze(model, x)
    heads = [g for g in graph.groups if any(s.name == "block.attn.in_proj_weight" for s, _ in g.sites)]
    assert len(heads) == 4
    small = remove_channels(model, graph, [heads[2].id])
    attn = small.block.attn
    assert (attn.num_heads, attn.embed_dim, attn.out_dim, attn.inner_dim) == (3, 48, 48, 36)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in small.parameters())
    assert before - after == 3 * 12 * (48 + 1) + 12 * 48  # q, k, v rows and biases; out_proj columns
    reference = copy.deepcopy(model)
    channel_masks(model, graph, [heads[2].id]).apply(reference)
    with torch.no_grad():
        torch.testing.assert_close(small(x), reference(x), rtol=1e-5, atol=1e-6)
    assert type(model.block.attn) is nn.MultiheadAttention  # the original is untouched
