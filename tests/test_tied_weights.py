"""Tied weights (issue 19, failure 3): a parameter shared by two layers is pruned once, with one mask.

The reference for every tied model is the same function written with the tensor named once (the
alias's layer replaced by `F.linear` on the shared weight), so scores, gradients and masks must agree
exactly; the mask lives under the canonical name (the first one `named_parameters()` gives).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secateurs import ConfigError, MaskSet, compute_masks, masks_of, prune
from secateurs.methods.layers import LayerSelection, select_parameters

VOCAB, DIM = 32, 16


class TiedLM(nn.Module):
    """Embedding + hidden Linear + a head whose weight is the embedding's."""

    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        nn.init.normal_(self.emb.weight, std=0.2)  # on the Linear's scale: no layer collapses
        self.mid = nn.Linear(DIM, DIM)
        if tie:
            self.head = nn.Linear(DIM, VOCAB, bias=False)
            self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.mid(self.emb(x)))
        return self.head(h) if hasattr(self, "head") else F.linear(h, self.emb.weight)


class TwoTied(nn.Module):
    """Two Linears sharing one weight, then a classifier."""

    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.a = nn.Linear(DIM, DIM)
        if tie:
            self.b = nn.Linear(DIM, DIM)
            self.b.weight = self.a.weight
        else:
            self.b_bias = nn.Parameter(torch.empty(DIM))
        self.c = nn.Linear(DIM, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h = self.b(h) if hasattr(self, "b") else F.linear(h, self.a.weight, self.b_bias)
        return self.c(torch.relu(h))


def _pair(kind: type[nn.Module]) -> tuple[nn.Module, nn.Module]:
    """The tied model and its alias-free twin, with equal weights."""
    torch.manual_seed(0)
    tied = kind(tie=True)
    torch.manual_seed(0)
    free = kind(tie=False)
    with torch.no_grad():
        for name, p in free.named_parameters():
            p.copy_(dict(tied.named_parameters())[name.replace("b_bias", "b.bias")])
    return tied, free


CASES = {  # model → (data, options of the tied model, options of its alias-free twin)
    TiedLM: (
        (torch.randint(0, VOCAB, (8,)), torch.randint(0, VOCAB, (8,))),
        {},
        {"layers": {"types": ["Linear", "Embedding"]}},
    ),
    TwoTied: ((torch.randn(8, DIM), torch.randint(0, 4, (8,))), {}, {}),
}
STRUCTURES: dict[str, dict[str, Any]] = {
    "unstructured": {},
    "nm": {},
    "block": {"structure_options": {"bh": 2, "bw": 2}},
}
CRITERIA = ["magnitude", "taylor", "snip", "synflow"]


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("kind", list(CASES), ids=lambda k: k.__name__)
def test_tied_parameter_is_pruned_once(kind: type[nn.Module], criterion: str, structure: str) -> None:
    if criterion == "synflow" and kind is TiedLM:
        pytest.skip("synflow feeds an all-ones float input, which an embedding cannot take")
    data, tied_options, free_options = CASES[kind]
    common: dict[str, Any] = {"criterion": criterion, "structure": structure, **STRUCTURES[structure]}
    common |= {"input_shape": (DIM,)} if criterion == "synflow" else {"data": data}
    tied, free = _pair(kind)

    prune(tied, 0.5, **common, **tied_options)
    masks = masks_of(tied)
    assert masks is not None
    shared, alias = ("emb.weight", tied.head) if kind is TiedLM else ("a.weight", tied.b)
    assert shared in masks and not any(n in masks for n in ("head.weight", "b.weight"))
    # counted once: the shared tensor's entries are in the mask set one time, and exactly half go
    unique = dict(tied.named_parameters())
    assert masks.numel() == sum(unique[n].numel() for n in masks)
    assert masks.kept() == masks.numel() // 2
    # the alias is the same tensor: it sees the zeros, and the state_dict holds them under both names
    assert torch.equal(alias.weight != 0, masks[shared])
    state = tied.state_dict()
    alias_key = "head.weight" if kind is TiedLM else "b.weight"
    assert torch.equal(state[alias_key], state[shared])

    expected = compute_masks(free, 0.5, **common, **free_options)
    assert dict(masks.items()).keys() == dict(expected.items()).keys()
    for name in masks:
        assert torch.equal(masks[name], expected[name]), name


def test_tied_masks_stay_applied_while_training() -> None:
    tied, _ = _pair(TwoTied)
    prune(tied, 0.5)
    masks = masks_of(tied)
    assert masks is not None
    opt = torch.optim.SGD(tied.parameters(), lr=0.1, momentum=0.9)
    masks.attach(tied, opt)
    x, y = CASES[TwoTied][0]
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(tied(x), y).backward()
        opt.step()
    assert not tied.b.weight[~masks["a.weight"]].any()


def test_layer_selection_names_a_tied_parameter_once() -> None:
    tied, _ = _pair(TwoTied)
    assert select_parameters(tied) == ["a.weight", "c.weight"]
    # excluding or skipping either layer that uses the tensor leaves it dense
    assert select_parameters(tied, LayerSelection(exclude=["b"])) == ["c.weight"]
    assert select_parameters(tied, LayerSelection(skip_first=True)) == ["c.weight"]
    # a pattern may name the tensor by its canonical name too
    lm, _ = _pair(TiedLM)
    assert select_parameters(lm) == ["mid.weight", "emb.weight"]
    assert select_parameters(lm, LayerSelection(exclude=["emb.weight"])) == ["mid.weight"]


def test_mask_under_an_alias_binds_to_the_canonical_name() -> None:
    tied, _ = _pair(TwoTied)
    keep = torch.rand(DIM, DIM) > 0.5
    loaded = MaskSet.from_state_dict({"b.weight": keep}, tied)
    assert list(loaded) == ["a.weight"]
    MaskSet({"b.weight": keep}).apply(tied)  # an alias binds without a model-side lookup error
    assert torch.equal(tied.a.weight != 0, keep)
    assert list(MaskSet.dense(tied, ["b.weight", "a.weight"])) == ["a.weight"]


def test_two_masks_for_one_tied_parameter_are_refused() -> None:
    tied, _ = _pair(TwoTied)
    keep = torch.ones(DIM, DIM, dtype=torch.bool)
    with pytest.raises(ConfigError, match=r"'a\.weight' and 'b\.weight' name one tied parameter"):
        MaskSet({"a.weight": keep, "b.weight": keep}).apply(tied)


class DeepTied(nn.Module):
    """A Linear, then two Linears sharing one square weight: every channel of the shared tensor,
    rows and columns alike, is a channel of the first layer's output, so one group removes it."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(DIM, DIM)
        self.a = nn.Linear(DIM, DIM)
        self.b = nn.Linear(DIM, DIM)
        self.b.weight = self.a.weight
        self.c = nn.Linear(DIM, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.first(x))
        return self.c(torch.relu(self.b(torch.relu(self.a(h)))))


CHANNEL_CASES = {  # model → an (x, y) batch
    TiedLM: CASES[TiedLM][0],
    DeepTied: (torch.randn(8, DIM), torch.randint(0, 4, (8,))),
}


@pytest.mark.parametrize("criterion", ["l1", "taylor"])
@pytest.mark.parametrize("kind", list(CHANNEL_CASES), ids=lambda k: k.__name__)
def test_channel_structure_removes_the_same_channels_of_a_tied_tensor_for_every_layer(
    kind: type[nn.Module], criterion: str
) -> None:
    """Masks under the canonical name only, and physical removal computes what masking does,
    with the smaller model still tied (one tensor, sliced once)."""
    from secateurs.structured import resize_like, shrink

    torch.manual_seed(0)
    model = kind()
    x, y = CHANNEL_CASES[kind]
    prune(model, 0.5, structure="channel", criterion=criterion, data=(x, y), example_input=x)
    masks = masks_of(model)
    assert masks is not None and not any(n in masks for n in ("head.weight", "b.weight"))
    shared, alias = (model.emb, model.head) if kind is TiedLM else (model.a, model.b)
    assert alias.weight is shared.weight
    columns = masks["emb.weight" if kind is TiedLM else "a.weight"].any(0)
    assert 0 < int(columns.sum()) < DIM  # channels of the shared tensor went

    small = shrink(model, x)
    small_shared, small_alias = (small.emb, small.head) if kind is TiedLM else (small.a, small.b)
    assert small_alias.weight is small_shared.weight  # still one tensor
    assert small_alias.weight.shape[1] == int(columns.sum())
    assert small_alias.in_features == small_alias.weight.shape[1]  # the alias's sizes follow
    model.eval(), small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-6)

    # saved and loaded into the original architecture, the tensor stays shared
    torch.manual_seed(1)
    fresh = resize_like(kind(), small.state_dict())
    fresh_shared, fresh_alias = (fresh.emb, fresh.head) if kind is TiedLM else (fresh.a, fresh.b)
    assert fresh_alias.weight is fresh_shared.weight
    assert torch.equal(fresh_shared.weight, small_shared.weight)


def test_tied_linears_whose_first_reads_the_input_say_why_no_channel_can_go() -> None:
    """In TwoTied the shared weight's columns are the model's input features for `a`: they
    cannot shrink, and its rows are the channels `b` reads through those same columns."""
    tied, _ = _pair(TwoTied)
    x, y = CASES[TwoTied][0]
    before = {n: p.clone() for n, p in tied.named_parameters()}
    with pytest.raises(ConfigError, match=r"tied 'a\.weight' are kept") as err:
        prune(tied, 0.5, structure="channel", criterion="taylor", data=(x, y), example_input=x)
    assert "untie the weights" in (err.value.fix or "")
    assert masks_of(tied) is None
    assert all(torch.equal(p, before[n]) for n, p in tied.named_parameters())
