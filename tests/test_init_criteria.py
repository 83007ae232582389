"""Pruning at initialization: SNIP, GraSP, SynFlow, rounds, Smart-Ratio, class-balanced scoring data."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_recipe
from torch import Tensor, nn

import secateurs.methods.pruning as pruning_module
from secateurs import ConfigError, MaskSet, compute_masks
from secateurs.methods.allocations import ALLOCATIONS, LayerInfo, allocate
from secateurs.methods.criteria import CRITERIA, ScoringContext, build_criterion
from secateurs.methods.criteria.grasp import Grasp
from secateurs.methods.criteria.snip import Snip
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.runner import run_recipe


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def chain(seed: int = 0) -> nn.Sequential:
    """Bias-free ReLU MLP: SynFlow's conservation law holds exactly here."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 5, bias=False),
        nn.ReLU(),
        nn.Linear(5, 4, bias=False),
        nn.ReLU(),
        nn.Linear(4, 3, bias=False),
    )


def batch(n: int = 12, seed: int = 2) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


WEIGHTS = ["0.weight", "2.weight", "4.weight"]


def context(model: nn.Module, **fields: Any) -> ScoringContext:
    return ScoringContext(model=model, names=WEIGHTS, masks=MaskSet.dense(model, WEIGHTS), **fields)


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model: nn.Module, before: dict[str, Tensor]) -> None:
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


# -- SNIP ---------------------------------------------------------------------------------------
def test_snip_scores_are_normalised_abs_gradient_times_weight() -> None:
    model, (x, y) = mlp(), batch()
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, [dict(model.named_parameters())[n] for n in WEIGHTS])
    raw = {
        n: (g * dict(model.named_parameters())[n].detach()).abs() for n, g in zip(WEIGHTS, grads, strict=True)
    }
    total = sum(float(s.sum()) for s in raw.values())
    scores = build_criterion("snip").score(context(model, batches=[(x, y)]))
    for n in WEIGHTS:
        torch.testing.assert_close(scores[n], raw[n] / total, rtol=1e-6, atol=0.0)
    assert math.isclose(sum(float(s.sum()) for s in scores.values()), 1.0, rel_tol=1e-6)


def test_snip_masks_are_reproducible_and_need_data() -> None:
    a = compute_masks(mlp(), 0.7, criterion="snip", data=batch(), seed=3)
    b = compute_masks(mlp(), 0.7, criterion="snip", data=batch(), seed=3)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert sum(int(a[n].sum()) for n in a) == 62 - math.floor(0.7 * 62 + 0.5)
    with pytest.raises(ConfigError, match="criterion 'snip' needs data"):
        compute_masks(mlp(), 0.7, criterion="snip")
    with pytest.raises(ConfigError, match="samples_per_class must be a positive integer"):
        build_criterion("snip", samples_per_class=0)


# -- GraSP --------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_hessian_gradient_matches_autograd_hvp(temperature: float) -> None:
    model, (x, y) = mlp(), batch()
    crit = Grasp(temperature=temperature)
    named = dict(model.named_parameters())
    base = {k: v.detach().clone() for k, v in named.items()}

    def loss(*weights: Tensor) -> Tensor:
        state = {**base, **dict(zip(WEIGHTS, weights, strict=True))}
        out = torch.func.functional_call(model, state, (x,))
        return F.cross_entropy(out / temperature, y)

    weights = tuple(base[n] for n in WEIGHTS)
    g = torch.autograd.grad(loss(*[w.requires_grad_() for w in weights]), weights)
    _, expected = torch.autograd.functional.hvp(loss, tuple(w.detach() for w in weights), g)
    hg = crit.hessian_gradient(context(model, batches=[(x, y)]))
    for n, e in zip(WEIGHTS, expected, strict=True):
        torch.testing.assert_close(hg[n], e, atol=1e-5, rtol=0.0)
    scores = crit.score(context(model, batches=[(x, y)]))
    for n in WEIGHTS:  # higher = keep: θ ⊙ Hg, the negation of GraSP's removal score
        assert torch.equal(scores[n], named[n].detach() * hg[n])


def test_grasp_defaults_and_options() -> None:
    crit = build_criterion("grasp")
    assert isinstance(crit, Grasp) and crit.temperature == 200.0 and crit.samples_per_class == 10
    with pytest.raises(ConfigError, match="temperature must be a positive number"):
        build_criterion("grasp", temperature=0)


def test_grasp_leaves_the_model_untouched() -> None:
    model = mlp()
    before = snapshot(model)
    compute_masks(model, 0.5, criterion="grasp", data=batch())
    assert_bit_identical(model, before)
    assert all(p.grad is None for p in model.parameters())


# -- SynFlow ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_synflow_conserves_synaptic_saliency(dtype: str) -> None:
    model = chain()
    scores = build_criterion("synflow", dtype=dtype).score(context(model, input_shape=(6,)))
    totals = [float(scores[n].sum()) for n in WEIGHTS]
    for t in totals[1:]:
        assert math.isclose(t, totals[0], rel_tol=1e-5)
    for inner, outer in (("0.weight", "2.weight"), ("2.weight", "4.weight")):
        incoming = scores[inner].sum(dim=1)  # rows: a hidden neuron's incoming weights
        outgoing = scores[outer].sum(dim=0)  # columns: its outgoing weights
        torch.testing.assert_close(incoming, outgoing, rtol=1e-4, atol=0.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_synflow_restores_parameters_bit_for_bit_and_mode(dtype: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    model.train()
    with torch.no_grad():
        model[1].weight.uniform_(-1, 1)  # negative BN scales: |θ| must not leak out
    before = snapshot(model)
    names = ["0.weight", "3.weight"]
    ctx = ScoringContext(model=model, names=names, masks=MaskSet.dense(model, names), input_shape=(6,))
    scores = build_criterion("synflow", dtype=dtype).score(ctx)
    assert_bit_identical(model, before)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(float(scores[n].sum()) > 0 for n in names)


def test_synflow_needs_the_input_shape() -> None:
    with pytest.raises(ConfigError, match="synflow' needs the model's input shape"):
        compute_masks(chain(), 0.5, criterion="synflow")
    with pytest.raises(ConfigError, match="dtype must be one of"):
        build_criterion("synflow", dtype="float16")


# -- rounds -------------------------------------------------------------------------------------
def spy_rounds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float | None, MaskSet]]:
    seen: list[tuple[float | None, MaskSet]] = []
    real = pruning_module.select_groups

    def spy(layout: Any, scores: Any, sparsity: float | None, **options: Any) -> dict[str, Tensor]:
        chosen = real(layout, scores, sparsity, **options)
        seen.append((sparsity, layout.masks(chosen, None)))  # what the round keeps
        return chosen

    monkeypatch.setattr(pruning_module, "select_groups", spy)
    return seen


def test_one_round_equals_a_single_prune() -> None:
    a = compute_masks(chain(), 0.8, criterion="synflow", input_shape=(6,))
    b = compute_masks(chain(), 0.8, criterion="synflow", input_shape=(6,), rounds=1)
    scores = build_criterion("synflow").score(context(chain(), input_shape=(6,)))
    c = pruning_module.masks_from_scores(scores, 0.8)
    assert all(torch.equal(a[n], b[n]) and torch.equal(a[n], c[n]) for n in WEIGHTS)


@pytest.mark.parametrize("criterion", ["synflow", "magnitude"])
def test_rounds_shrink_masks_on_the_exponential_schedule(
    monkeypatch: pytest.MonkeyPatch, criterion: str
) -> None:
    seen = spy_rounds(monkeypatch)
    model = chain()
    before = snapshot(model)
    masks = compute_masks(model, 0.9, criterion=criterion, input_shape=(6,), rounds=4, allocation="uniform")
    assert_bit_identical(model, before)
    assert [s for s, _ in seen] == pytest.approx([1 - 0.1 ** (k / 4) for k in (1, 2, 3)] + [0.9], abs=1e-15)
    assert seen[-1][0] == 0.9
    for (_, prev), (_, nxt) in itertools.pairwise(seen):
        assert all(not (nxt[n] & ~prev[n]).any() for n in WEIGHTS)
    sizes = {"0.weight": 30, "2.weight": 20, "4.weight": 12}
    for n, size in sizes.items():
        assert int(masks[n].sum()) == size - math.floor(0.9 * size + 0.5)


def test_later_rounds_score_the_masked_model(monkeypatch: pytest.MonkeyPatch) -> None:
    zeros: list[int] = []
    real = CRITERIA.get("magnitude").score

    def spy(self: Any, ctx: ScoringContext) -> dict[str, Tensor]:
        zeros.append(sum(int((p == 0).sum()) for p in ctx.params().values()))
        return real(self, ctx)

    monkeypatch.setattr(CRITERIA.get("magnitude"), "score", spy)
    compute_masks(chain(), 0.75, criterion="magnitude", rounds=2)
    # round 1 prunes to 1 − 0.25^(1/2) = 0.5: round 2 sees those 31 weights at zero
    assert zeros == [0, math.floor(0.5 * 62 + 0.5)]


def test_rounds_are_validated() -> None:
    with pytest.raises(ConfigError, match="rounds must be a positive integer"):
        compute_masks(chain(), 0.5, rounds=0)
    with pytest.raises(ConfigError, match="needs a target sparsity"):
        compute_masks(
            chain(), None, allocation="explicit", rounds=2, allocation_options={"sparsities": {"*": 0.5}}
        )


# -- Smart-Ratio --------------------------------------------------------------------------------
def layers(*sizes: int) -> list[LayerInfo]:
    return [LayerInfo(f"l{i}", (n,), 1, torch.arange(n, dtype=torch.float64)) for i, n in enumerate(sizes)]


def test_smart_ratio_hand_computed() -> None:
    # L = 3: raw ratios 3²+3 = 12 and 2²+2 = 6; the last layer keeps 30 % of 10 = 3.
    # sparsity 0.5: 105 of 210 kept, 102 for the first two: ε = 102/1800 → 68 and 34.
    assert allocate("smart_ratio", layers(100, 100, 10), 0.5) == {"l0": 68, "l1": 34, "l2": 3}
    # sparsity 0.2: 168 kept, 165 shared; 12ε > 1 so l0 is dense (100) and l1 gets 65.
    assert allocate("smart_ratio", layers(100, 100, 10), 0.2) == {"l0": 100, "l1": 65, "l2": 3}
    assert allocate("smart_ratio", layers(100, 100, 10), 0.5, last_layer_density=0.5) == {
        "l0": 67,
        "l1": 33,
        "l2": 5,
    }


def test_smart_ratio_errors_and_every_criterion_combines() -> None:
    with pytest.raises(ConfigError, match=r"cannot reach sparsity 0\.0"):
        allocate("smart_ratio", layers(100, 100, 10), 0.0)
    with pytest.raises(ConfigError, match=r"last_layer_density must be in \(0, 1\]"):
        allocate("smart_ratio", layers(100, 100, 10), 0.5, last_layer_density=1.5)
    for criterion in ("snip", "grasp", "synflow"):
        masks = compute_masks(
            chain(), 0.5, criterion=criterion, allocation="smart_ratio", data=batch(), input_shape=(6,)
        )
        assert [int(masks[n].sum()) for n in WEIGHTS] == [20, 7, 4]


# -- the pipeline -------------------------------------------------------------------------------
def spy_batches(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[Tensor, Tensor]]]:
    seen: list[list[tuple[Tensor, Tensor]]] = []
    real = Snip.score

    def spy(self: Snip, ctx: ScoringContext) -> dict[str, Tensor]:
        assert ctx.batches is not None
        seen.append(list(ctx.batches))
        return real(self, ctx)

    monkeypatch.setattr(Snip, "score", spy)
    return seen


@pytest.mark.parametrize(("spec", "per_class"), [({}, 10), ({"samples_per_class": 4}, 4)])
def test_pipeline_feeds_snip_one_class_balanced_batch(
    monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any], per_class: int
) -> None:
    seen = spy_batches(monkeypatch)
    stages = [{"prune": {"criterion": "snip", **spec}}, {"evaluate": {"label": "final"}}]
    run_recipe(recipe_from_raw(tiny_recipe(*stages)))
    assert len(seen) == 1 and len(seen[0]) == 1
    _, y = seen[0][0]
    assert torch.bincount(y, minlength=3).tolist() == [per_class] * 3


def test_pipeline_passes_input_shape_and_rounds_to_synflow() -> None:
    stages = [{"prune": {"criterion": "synflow", "rounds": 3}}, {"evaluate": {"label": "final"}}]
    result = run_recipe(recipe_from_raw(tiny_recipe(*stages, sparsity=0.9)))
    assert result.masks is not None
    assert sum(int(m.sum()) for m in result.masks.values()) == 368 - math.floor(0.9 * 368 + 0.5)


def test_registries_describe_the_new_methods() -> None:
    for name in ("snip", "grasp", "synflow"):
        assert name in CRITERIA.names() and CRITERIA.help(name)
    assert "smart_ratio" in ALLOCATIONS.names() and ALLOCATIONS.help("smart_ratio")
