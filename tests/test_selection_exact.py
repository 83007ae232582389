"""The fast selection paths are exact: the same masks, bit for bit, as the plain definitions.

`topk_mask` finds its threshold with NumPy's selection instead of a sort, a global allocation hands
its own ranking on instead of selecting each layer again, exact poolings read scores in their own
dtype: each is checked here against the slow definition it replaces.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from secateurs.core import topk
from secateurs.core.masks import MaskSet
from secateurs.core.topk import _balanced_by_selection, _balanced_by_sort, balanced_topk, has_nan, topk_mask
from secateurs.methods.allocations.base import LayerInfo, allocate
from secateurs.methods.criteria import ScoringContext, build_criterion
from secateurs.methods.pruning import compute_masks, masks_from_scores, plan, score_groups
from secateurs.methods.structures.base import removed_to_minus_inf
from secateurs.methods.structures.pooling import POOLINGS, reduce_over
from secateurs.models import build_model


def _stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[torch.argsort(scores, descending=True, stable=True)[:k]] = True
    return keep


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_topk_mask_equals_a_stable_descending_sort(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        n = int(torch.randint(1, 400, (1,), generator=g))
        scores = (torch.randint(-6, 6, (n,), generator=g) / 4).to(dtype)  # many ties
        if trial % 2:  # removed groups, sometimes most of them (the slow case of introselect)
            scores[torch.rand(n, generator=g) < (0.3, 0.7, 0.95)[trial % 3]] = -math.inf
        if trial % 5 == 0:
            scores[torch.rand(n, generator=g) < 0.05] = math.inf
        if trial % 7 == 0:
            scores[torch.rand(n, generator=g) < 0.05] = math.nan
        k = int(torch.randint(0, n + 1, (1,), generator=g))
        assert torch.equal(topk_mask(scores, k), _stable_topk(scores, k)), (trial, n, k)


def test_has_nan_sees_every_nan_and_no_other_value() -> None:
    x = torch.tensor([1.0, -math.inf, math.inf, 3e38, 3e38])  # ∞ − ∞ and an overflow: NaN sums
    assert not has_nan(x)
    assert has_nan(torch.tensor([0.0, math.nan]))
    assert has_nan(torch.tensor([math.inf, math.nan, -math.inf]))
    assert not has_nan(torch.arange(5))


def test_global_allocation_hands_on_each_units_own_top_k() -> None:
    g = torch.Generator().manual_seed(1)
    for trial in range(40):
        layers = []
        for i in range(int(torch.randint(1, 6, (1,), generator=g))):
            n = int(torch.randint(1, 60, (1,), generator=g))
            scores = torch.randint(0, 5, (n,), generator=g).float()
            scores[torch.rand(n, generator=g) < 0.2] = -math.inf
            layers.append(LayerInfo(f"l{i}.weight", (n,), 1, scores))
        keep = allocate("global", layers, 0.6, allow_collapse=True)
        assert set(keep.chosen) == {layer.name for layer in layers}, trial
        for layer in layers:
            chosen = keep.chosen[layer.name]
            assert int(chosen.sum()) == keep[layer.name]
            assert torch.equal(chosen, topk_mask(layer.scores, keep[layer.name])), trial


def test_an_allocation_with_floors_or_mixed_group_sizes_hands_on_no_selection() -> None:
    scores = torch.arange(8.0)
    mixed = [LayerInfo("a", (8,), 1, scores), LayerInfo("b", (8, 2), 2, scores)]
    assert allocate("global", mixed, 0.5).chosen == {}
    floored = [LayerInfo("a", (8,), 1, scores, floor=2), LayerInfo("b", (8,), 1, scores)]
    assert allocate("global", floored, 0.5).chosen == {}


@pytest.mark.parametrize(
    ("structure", "options"),
    [("unstructured", None), ("block", {"bh": 2, "bw": 2}), ("channel", None), ("nm", {"n": 2, "m": 4})],
)
def test_masks_are_those_of_selecting_each_unit_again(structure: str, options: dict | None) -> None:
    model = build_model("lenet5" if structure in ("unstructured", "channel") else "lenet300", (1, 28, 28), 10)
    kwargs = {"structure": structure, "structure_options": options, "input_shape": (1, 28, 28)}
    allocation = "uniform" if structure == "nm" else "global"
    p = plan(model, 0.7, allocation=allocation, **kwargs)
    _, scores = score_groups(model, **kwargs)
    for unit in p.layout.units:
        count = int(p.keep[unit.name].sum())
        assert torch.equal(p.keep[unit.name], p.layout.select(unit, scores[unit.name], count)), unit.name


@pytest.mark.parametrize("pooling", ["l1", "l2", "sum", "mean", "max", "squared_sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pooling_over_a_dimension_equals_widening_first(pooling: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    values = torch.randn(48, 37, 3, 3, generator=g).to(dtype)
    spec = POOLINGS.get(pooling)
    for dim in range(values.dim()):
        others = [d for d in range(values.dim()) if d != dim]
        mapped = spec.entry(values.double())
        widened = mapped.amax(dim=others) if spec.combine == "max" else mapped.sum(dim=others)
        got = reduce_over(values, dim, spec)
        assert got.dtype == torch.float64
        assert torch.equal(got, widened), (pooling, dim)


def _snip_by_hand(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool) -> dict:
    model.train(train)
    weights = {n: p for n, p in model.named_parameters() if p.dim() > 1}
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(weights.values()))
    scores = {n: (g * p.detach()).abs() for (n, p), g in zip(weights.items(), grads, strict=True)}
    total = sum(float(s.sum()) for s in scores.values())
    return {n: s / total for n, s in scores.items()}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_snip_scores_in_the_mode_asked_for_and_restores_the_model(mode: str) -> None:
    model = build_model("resnet20", (3, 16, 16), 10, seed=0)
    with torch.no_grad():  # running statistics unlike the batch's, so the two modes differ
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.add_(0.1)
    x, y = torch.randn(20, 3, 16, 16, generator=torch.Generator().manual_seed(3)), torch.arange(10).repeat(2)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    expected = _snip_by_hand(model, x, y, train=mode == "train")
    with torch.no_grad():  # the hand computation in train mode moved them
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    model.train()
    masks = compute_masks(
        model, 0.9, criterion="snip", data=(x, y), criterion_options={"mode": mode}, allow_collapse=True
    )
    assert model.training
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert _same(masks, masks_from_scores(expected, 0.9, allow_collapse=True))
    other = "eval" if mode == "train" else "train"
    options = {"mode": other}
    assert not _same(
        masks, compute_masks(model, 0.9, criterion="snip", data=(x, y), criterion_options=options)
    )


def _same(a: MaskSet, b: MaskSet) -> bool:
    return set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("criterion", ["snip", "grasp", "taylor"])
def test_an_unknown_scoring_mode_is_refused_with_the_choices(criterion: str) -> None:
    model = build_model("lenet300", (1, 28, 28), 10, seed=0)
    data = (torch.randn(10, 1, 28, 28), torch.arange(10))
    with pytest.raises(Exception, match="mode must be one of train, eval"):
        compute_masks(model, 0.5, criterion=criterion, data=data, criterion_options={"mode": "test"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_removed_entries_become_minus_inf_bit_for_bit_as_masked_fill(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(1000, generator=g).to(dtype)
    scores[:6] = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1e-45], dtype=dtype)
    keep = torch.rand(1000, generator=g) < 0.5
    expected = scores.masked_fill(~keep, -math.inf)
    got = removed_to_minus_inf(scores, keep)
    assert got.dtype == dtype
    assert torch.equal(got.view(torch.uint8), expected.view(torch.uint8))  # same bits, NaN and -0.0 too


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(6, 6)
        self.b = torch.nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.bn = torch.nn.BatchNorm1d(6)
        self.out = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.b(self.bn(torch.relu(self.a(x))))))


def test_synflow_scores_the_abs_network_and_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = _Tied().train()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    keep = {"a.weight": torch.rand(6, 6) < 0.5}
    model_masks = MaskSet(keep)
    # by hand: a copy with |θ| (masked entries 0) in eval mode
    copy = _Tied()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for n, p in copy.named_parameters():
            p.abs_()
            if n in keep:
                p.mul_(keep[n])
    copy.eval()
    copy(torch.ones(1, 6)).sum().backward()
    expected = {n: (p.grad * p).detach().abs() for n, p in copy.named_parameters() if p.dim() > 1}
    names = list(expected)
    ctx = ScoringContext(model=model, names=names, masks=model_masks, input_shape=(6,))
    scores = build_criterion("synflow").score(ctx)
    for n in names:
        torch.testing.assert_close(scores[n], expected[n], rtol=0, atol=0)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, before[n]) for n, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_a_selection_whose_count_rounding_changed_is_not_handed_on() -> None:
    g = torch.Generator().manual_seed(5)
    layers = [LayerInfo(f"l{i}", (n,), 1, torch.rand(n, generator=g)) for i, n in enumerate((10, 13, 16))]
    keep = allocate("global", layers, 0.55, round_to=4)
    assert all(keep[layer.name] % 4 == 0 or keep[layer.name] == layer.num_groups for layer in layers)
    unrounded = allocate("global", layers, 0.55)
    for layer in layers:
        if keep[layer.name] == unrounded[layer.name]:
            assert torch.equal(keep.chosen[layer.name], unrounded.chosen[layer.name])
        else:
            assert layer.name not in keep.chosen
    assert set(keep.chosen) != {layer.name for layer in layers}  # the case is exercised


@pytest.mark.parametrize("split", [False, True], ids=["one_thread", "rows_split_over_threads"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_balanced_selection_equals_the_stable_sort_per_group(
    dtype: torch.dtype, split: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if split:  # every table partitioned in row chunks on a thread pool, as large ones are
        monkeypatch.setattr(topk, "_PARALLEL_FROM", 0)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    g = torch.Generator().manual_seed(6)
    for trial in range(200):
        groups = int(torch.randint(1, 20, (1,), generator=g))
        m = int(torch.randint(32, 90, (1,), generator=g))
        scores = (torch.randint(-4, 4, (groups, m), generator=g) / 2).to(dtype)  # many ties
        if trial % 7 == 0:  # distinct values: no group ties at its cut
            scores = torch.randn(groups, m, generator=g).to(dtype)
        if trial % 3 == 0:
            scores[torch.rand(groups, m, generator=g) < 0.4] = -math.inf
        if trial % 5 == 0:
            scores[torch.rand(groups, m, generator=g) < 0.05] = math.inf
        k = int(torch.randint(0, groups * m + 1, (1,), generator=g))
        expected = _balanced_by_sort(scores, k)
        assert torch.equal(balanced_topk(scores, k), expected), (trial, groups, m, k)
        if 0 < k < groups * m:
            assert torch.equal(_balanced_by_selection(scores, k), expected), (trial, groups, m, k)
