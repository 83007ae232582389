"""Extending the framework: one file registers a new criterion, allocation, reset and training-time
method, touching no other file; each works from a YAML recipe, is listed by `secateurs methods`,
and the criterion scores every structure: unstructured, N:M, channels of a residual conv net, and
the heads and FFN channels of a tiny Llama.

The registrations live in a fixture and are removed afterwards, so no other test sees them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import torch
from pydantic import Field
from tiny import TINY_DATA, TINY_MODEL
from torch import Tensor, nn
from typer.testing import CliRunner

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError
from secateurs.core.masks import masks_of
from secateurs.graph.analysis import analyze
from secateurs.graph.masking import removed_groups
from secateurs.methods.allocations import ALLOCATIONS, LayerInfo, kept_after
from secateurs.methods.criteria import CRITERIA, Criterion, ScoringContext
from secateurs.methods.pruning import compute_masks, score_groups
from secateurs.methods.resets import RESETS, Reset, Snapshot
from secateurs.methods.structures.groups import layer_of
from secateurs.methods.training import TRAINING, TrainingMethod
from secateurs.models import build_model
from secateurs.pipeline.recipe import parse_recipe
from secateurs.pipeline.result import MetricEvent
from secateurs.pipeline.runner import Pipeline
from secateurs.train.engine import Callback, TrainState


# -- the four extensions, as a user would write them ----------------------------------------------
class Tempered(Criterion):
    """|θ|·(1 + |θ|): ranks single weights like magnitude, but weighs large ones more in a group."""

    name = "tempered"

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        return {n: p.detach().abs() * (1 + p.detach().abs()) for n, p in ctx.params().items()}


def ends_dense(layers: list[LayerInfo], sparsity: float) -> dict[str, int]:
    """The first and last unit stay whole; the others are pruned uniformly to `sparsity`."""
    ends = {layers[0].name, layers[-1].name}
    return {
        u.name: u.num_groups if u.name in ends else kept_after(u.num_groups, sparsity, u.floor)
        for u in layers
    }


class ScaleOptions(StrictModel):
    factor: float = Field(0.5, gt=0)


class Scale(Reset):
    """Keep the pruned weights, multiplied by `factor`."""

    name = "scale"
    schema = ScaleOptions

    def reset(
        self, model: nn.Module, *, snapshots: dict[int, Snapshot], seed: int, step: int | None
    ) -> dict[str, Any] | None:
        for p in model.parameters():
            p.mul_(self.options.factor)
        return None


class GradNormOptions(StrictModel):
    every: int = Field(1, gt=0)


class GradNorm(TrainingMethod):
    """Records the gradient norm every `every` steps (a training-time method that changes no mask)."""

    name = "grad_norm"
    schema: ClassVar[type] = GradNormOptions
    changes_mask = False

    def __init__(self, config: GradNormOptions, services: Any) -> None:
        super().__init__(config, services)
        self.rows: list[tuple[int, dict[str, Any]]] = []
        method = self

        class Record(Callback):
            def on_backward(self, state: TrainState) -> None:
                if (state.step + 1) % config.every == 0:
                    grads = [p.grad.norm() for p in state.model.parameters() if p.grad is not None]
                    method.rows.append((state.step + 1, {"grad_norm": float(torch.stack(grads).norm())}))

        self.callback = Record()

    def callbacks(self) -> list[Callback]:
        return [self.callback]

    def events(self) -> list[tuple[int, dict[str, Any]]]:
        return self.rows


@pytest.fixture
def extensions() -> Iterator[None]:
    CRITERIA.add("tempered", Tempered, "|θ|·(1 + |θ|)")
    ALLOCATIONS.add("ends_dense", ends_dense)
    RESETS.add("scale", Scale)
    TRAINING.add("grad_norm", GradNorm)
    try:
        yield
    finally:
        CRITERIA.remove("tempered")
        ALLOCATIONS.remove("ends_dense")
        RESETS.remove("scale")
        TRAINING.remove("grad_norm")


RECIPE = f"""
name: extended
data: {TINY_DATA}
model: {TINY_MODEL}
train: {{iterations: 6, batch_size: 32}}
stages:
  - train: {{grad_norm: {{every: 2}}}}
  - prune: {{criterion: tempered, allocation: ends_dense, sparsity: 0.5, layers: {{include_bias: true}}}}
  - reset: {{mode: scale, factor: 0.25}}
  - evaluate: {{label: final}}
"""


# -- they work from a recipe, and are listed ------------------------------------------------------
@pytest.mark.usefixtures("extensions")
def test_a_recipe_runs_the_new_criterion_allocation_reset_and_training_method() -> None:
    events: list[MetricEvent] = []
    pipeline = Pipeline(parse_recipe(RECIPE), on_metrics=events.append)
    before: dict[str, Tensor] = {}
    original = Pipeline._set_masks

    def keep_weights(masks: Any) -> Any:
        out = original(pipeline, masks)
        before.update({n: p.detach().clone() for n, p in pipeline.model.named_parameters()})
        return out

    pipeline._set_masks = keep_weights  # type: ignore[method-assign]
    pipeline.run()
    assert [(e.kind, e.step) for e in events if e.kind == "grad_norm"] == [
        ("grad_norm", 2),
        ("grad_norm", 4),
        ("grad_norm", 6),
    ]
    masks = masks_of(pipeline.model)
    assert masks is not None
    names = list(masks)  # weights and biases of the hidden layer, then of the classifier
    assert len(names) == 4 and masks[names[0]].all() and masks[names[-1]].all()  # the ends stay whole
    assert all(int(masks[n].sum()) == kept_after(masks[n].numel(), 0.5) for n in names[1:-1])
    for n, p in pipeline.model.named_parameters():
        torch.testing.assert_close(p.detach(), 0.25 * before[n])  # the reset scaled every weight


@pytest.mark.usefixtures("extensions")
def test_the_new_components_are_listed_by_secateurs_methods() -> None:
    from secateurs.front.cli import app

    result = CliRunner().invoke(app, ["methods", "--wide"])  # one row per component, its axis in the row
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    for axis, name in [("criterion", "tempered"), ("allocation", "ends_dense"), ("reset", "scale"),
                       ("training-time method", "grad_norm")]:  # fmt: skip
        assert any(f" {axis} " in row and f" {name} " in row for row in rows), (axis, name)


@pytest.mark.usefixtures("extensions")
@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ("reset: {mode: scale, factr: 2}", "reset mode 'scale' has no option 'factr' (it takes factor)"),
        ("reset: {mode: scale, factor: -1}", "stages.0.reset.factor: Input should be greater than 0"),
        ("train: {grad_norm: {every: 0}}", "stages.0.train.grad_norm.every: Input should be greater than 0"),
        ("prune: {criterion: tempered, criterion_options: {t: 1}}", "criterion 'tempered' has no option 't'"),
        (
            "prune: {allocation: ends_dense, allocation_options: {cap: 1}}",
            "allocation 'ends_dense' has no option 'cap'",
        ),
    ],
)
def test_bad_options_of_new_components_fail_when_the_recipe_is_read(stage: str, message: str) -> None:
    text = RECIPE.split("stages:")[0] + f"stages:\n  - {stage}\n"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_recipe(text)


# -- the new criterion scores every structure unchanged -------------------------------------------
def _magnitude_twin(model: nn.Module, **options: Any) -> tuple[Any, Any]:
    return compute_masks(model, criterion="tempered", **options), compute_masks(
        model, criterion="magnitude", **options
    )


@pytest.mark.usefixtures("extensions")
@pytest.mark.parametrize("structure", [{}, {"structure": "nm", "structure_options": {"n": 2, "m": 4}}])
def test_the_new_criterion_selects_like_magnitude_within_single_weights_and_nm_groups(
    structure: dict,
) -> None:
    model = build_model("mlp", (20,), 3, seed=0, hidden=[16])
    tempered, magnitude = _magnitude_twin(model, sparsity=0.5, allocation="uniform", **structure)
    assert tempered.equal(magnitude)  # a monotone transform of |θ| selects the same single weights


@pytest.mark.usefixtures("extensions")
def test_the_new_criterion_prunes_channels_of_a_residual_net_by_its_pooled_scores() -> None:
    model = build_model("resnet20", (3, 32, 32), 10, seed=0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masks = compute_masks(
        model, 0.5, criterion="tempered", structure="channel", allocation="uniform", example_input=x
    )
    _, scores = score_groups(model, criterion="tempered", structure="channel", example_input=x)
    graph = analyze(model, x)
    gone = removed_groups(graph, masks)
    by_unit: dict[str, list[int]] = {}
    for g in graph.groups:
        by_unit.setdefault(layer_of(g), []).append(g.id)
    for unit, ids in by_unit.items():
        values = scores[unit].tolist()
        removed = [v for v, i in zip(values, ids, strict=True) if i in gone]
        kept = [v for v, i in zip(values, ids, strict=True) if i not in gone]
        assert len(removed) == min(len(ids) - 1, int(0.5 * len(ids) + 0.5))
        assert max(removed) <= min(kept)

    def tempered(w: Tensor) -> Tensor:  # the element scores (float32, as the criterion's), pooled in float64
        return (w.detach().abs() * (1 + w.detach().abs())).double().sum((1, 2, 3))

    # a block's inner conv: its channels are its own filters (read by the next conv only)
    inner = model.layer1[0].conv1.weight
    assert torch.allclose(scores["layer1.0.conv1"], tempered(inner), rtol=1e-12, atol=0)
    # the residual stream: one group spans the stem and every block's second conv of the stage
    stem = scores["conv1"]
    producers = [model.conv1.weight] + [block.conv2.weight for block in model.layer1]
    assert torch.allclose(stem, sum(tempered(w) for w in producers), rtol=1e-12, atol=0)


@pytest.mark.usefixtures("extensions")
@pytest.mark.parametrize("structure", ["heads", "ffn"])
def test_the_new_criterion_prunes_heads_and_ffn_channels_of_a_tiny_llama(structure: str) -> None:
    transformers = pytest.importorskip("transformers")
    from secateurs.llm.structured import layer_sizes, prune_structured

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=50,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    small = prune_structured(model, 0.5, parts=(structure,), criterion="tempered")
    field = "num_key_value_heads" if structure == "heads" else "intermediate_size"
    assert [s[field] for s in layer_sizes(small)] == [{"heads": 1, "ffn": 48}[structure]] * 2
    ids = torch.randint(0, 50, (1, 5))
    with torch.no_grad():
        assert small(input_ids=ids).logits.shape == (1, 5, 50)
