"""Real model zoos' constructs through the channel engine without hand-written rules: functions fx
keeps as leaf calls (traced into), torch.einsum (a rule from its subscripts), a part the engine
cannot follow (kept whole by `exclude`), and LayerNorm pruned through on request."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import Tensor, nn
from user_code.zoo_constructs import LeafNet, OddNet

from secateurs.core.errors import ConfigError
from secateurs.structured import analyze, channel_masks, output_deviation, prune_channels, remove_channels


def removal_is_masking(model: nn.Module, x: Tensor, **options: object) -> nn.Module:
    """Remove every other group; the smaller model must compute what the masked one does."""
    graph = analyze(model, x, **options)  # type: ignore[arg-type]
    chosen = [g.id for g in graph.groups][::2]
    small = remove_channels(model, graph, chosen)
    reference = copy.deepcopy(model)
    channel_masks(model, graph, chosen).apply(reference)
    with torch.no_grad():
        torch.testing.assert_close(small(x), reference(x), rtol=1e-5, atol=1e-6)
    assert output_deviation(model, small, graph, chosen, x) < 1e-6
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    return small


def sites(model: nn.Module, x: Tensor, **options: object) -> set[str]:
    graph = analyze(model, x, **options)  # type: ignore[arg-type]
    return {f"{site.name}:{site.role}" for group in graph.groups for site, _ in group.sites}


def test_wrapped_leaf_functions_are_traced_into_and_einsum_weights_become_sites() -> None:
    torch.manual_seed(0)
    model, x = LeafNet().eval(), torch.randn(2, 3, 8, 8)
    found = sites(model, x)
    assert {"block.scale:passive", "block.shift:passive"} <= found  # through scale_shift's own graph
    assert {"mix:consumer", "mix:producer", "head.weight:consumer"} <= found  # "bchw,oc->bohw"
    small = removal_is_masking(model, x)
    assert small.mix.shape[0] < 16 and small.mix.shape[1] == small.block.conv.out_channels


class EinsumMLP(nn.Module):
    """Token features mixed by einsums with an ellipsis, an implicit output and a weight table."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 12)
        self.w = nn.Parameter(torch.randn(10, 12) / 4)
        self.gate = nn.Parameter(torch.rand(10) + 0.5)
        self.out = nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.inp(x))  # (B, T, 12)
        h = torch.einsum("...c,oc->...o", h, self.w)  # (B, T, 10): w's rows are new channels
        h = torch.einsum("bto,o->bto", h, self.gate)  # a per-channel gate: sliced with them
        return self.out(h).sum(1)


def test_einsum_rules_follow_ellipses_gates_and_contractions() -> None:
    torch.manual_seed(1)
    model, x = EinsumMLP(), torch.randn(4, 5, 6)
    found = sites(model, x)
    assert {"w:producer", "w:consumer", "gate:passive", "inp.weight:producer"} <= found
    removal_is_masking(model, x)


class Contraction(nn.Module):
    """Two layers' outputs contracted against each other, and an einsum it cannot read."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6, bias=False)
        self.b = nn.Linear(4, 6, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return (
            torch.einsum("bc,bc->b", self.a(x), self.b(x)).unsqueeze(1) + torch.einsum("ii->i", x[:, :4])[:1]
        )


def test_einsum_contractions_tie_both_sides_and_unreadable_equations_keep_channels() -> None:
    torch.manual_seed(2)
    model, x = Contraction(), torch.randn(4, 4)
    graph = analyze(model, x)
    assert len(graph.groups) == 6  # a.out[c] and b.out[c] are removed together
    assert all({s.module for s, _ in g.sites} == {"a", "b"} for g in graph.groups)
    chosen = [g.id for g in graph.groups][::2]
    small = remove_channels(model, graph, chosen)
    zeroed = copy.deepcopy(model)  # nothing consumes them but the product: zero both producers' rows
    with torch.no_grad():
        for g in graph.groups:
            if g.id in chosen:
                for site, index in g.sites:
                    getattr(zeroed, site.module).weight[torch.as_tensor(index)] = 0
        torch.testing.assert_close(small(x), zeroed(x))
    assert small.a.out_features == small.b.out_features == 3


def test_a_part_the_engine_cannot_follow_names_itself_and_exclude_keeps_it_whole() -> None:
    torch.manual_seed(3)
    model, x = OddNet().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(ConfigError) as err:
        analyze(model, x)
    message = str(err.value)
    assert "function 'data_dependent' (from user_code.zoo_constructs)" in message
    assert "in module 'odd'" in message and "tracing into it failed" in message
    assert "exclude=['odd']" in message
    kept = analyze(model, x, exclude=["odd"])
    assert {s.module for g in kept.groups for s, _ in g.sites if s.role == "producer"} == {"stem", "conv"}
    removal_is_masking(model, x, exclude=["odd"])
    small = prune_channels(model, x, 0.5, exclude=["o*"])
    assert small.odd.conv.out_channels == 8 and small.conv.out_channels == 4


class NormedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(torch.relu(self.fc1(x))))


def test_layernorm_channels_are_kept_unless_pruning_through_is_asked_and_then_the_deviation_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(4)
    model, x = NormedMLP(), torch.randn(8, 16)
    assert analyze(model, x).groups == []  # mean and variance tie every channel
    graph = analyze(model, x, through_norms=True)
    assert len(graph.groups) == 32 and graph.approximate == ["norm"]
    with caplog.at_level(logging.WARNING, logger="secateurs.structured"):
        small = prune_channels(model, x, 0.25, through_norms=True)
    assert small.norm.normalized_shape == (24,) and small.fc2.in_features == 24
    (record,) = [r for r in caplog.records if "pruned through norm" in r.getMessage()]
    deviation = float(record.getMessage().split("masking the channels by ")[1].split()[0])
    assert 0 < deviation < 1
    with torch.no_grad():
        assert small(x).shape == (8, 4)
