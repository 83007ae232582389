"""A recipe prunes a Hugging Face language model: the `hf` model, token data sets, sequential
calibration and reconstruction as prune-stage options, perplexity as the evaluation. `secateurs llm`
is a front over exactly this, so the recipe must give the library's LLM methods bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from secateurs.core.errors import ConfigError  # noqa: E402
from secateurs.llm.calibrate import prune_model  # noqa: E402
from secateurs.llm.evaluate import perplexity  # noqa: E402
from secateurs.llm.methods import make_pattern, prune_step  # noqa: E402
from secateurs.llm.models import load_weights  # noqa: E402
from secateurs.pipeline.recipe import recipe_from_raw  # noqa: E402
from secateurs.pipeline.runner import Pipeline  # noqa: E402

VOCAB = 100
TOKENS = {"vocab_size": VOCAB, "seq_len": 16, "calibration_samples": 8, "eval_windows": 3, "seed": 4}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def recipe(path: Path, *stages: dict[str, Any], **model: Any) -> Any:
    raw = {
        "name": "llm",
        "model": {"name": "hf", "options": {"path": str(path), **model}},
        "data": {"name": "random_tokens", "options": TOKENS},
        "stages": list(stages),
    }
    return recipe_from_raw(raw, "<llm recipe>")


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", [(0.5, None), (None, "2:4")], ids=["50%", "2:4"])
def test_the_recipe_gives_the_library_method_bit_for_bit(tiny_dir: Path, method: str, pattern: tuple) -> None:
    step = prune_step(method, make_pattern(*pattern)) | {"data_batches": 2, "data_batch_size": 4}
    pipeline = Pipeline(recipe(tiny_dir, {"prune": step}, {"evaluate": {"label": method}}))
    result = pipeline.run()
    reference = load_weights(tiny_dir)
    calibration = pipeline.data.train_x  # the calibration windows, in order, batches of 4
    prune_model(reference, method, make_pattern(*pattern), calibration, batch_size=4)
    for (name, ours), theirs in zip(
        result.model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(ours, theirs), name
    expected = perplexity(reference, pipeline.data.test_x)
    assert result.final["perplexity"] == pytest.approx(expected.perplexity, rel=1e-12)
    assert result.final["eval_tokens"] == expected.tokens == 3 * 15
    assert result.final["sparsity"] == pytest.approx(0.5)


def test_the_counting_options_reach_the_recipe_and_give_the_library_method(tiny_dir: Path) -> None:
    options = {"rounding": "floor", "counts": "row", "ties": "original"}
    step = prune_step("wanda", make_pattern(0.37, None), **options)
    assert step["rounding"] == "floor" and step["structure_options"] == {"count": "row"}
    pipeline = Pipeline(recipe(tiny_dir, {"prune": step | {"data_batches": 2, "data_batch_size": 4}}))
    result = pipeline.run()
    reference = load_weights(tiny_dir)
    prune_model(reference, "wanda", make_pattern(0.37, None), pipeline.data.train_x, batch_size=4, **options)
    assert result.masks is not None
    for (name, ours), theirs in zip(
        result.model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(ours, theirs), name
        if name in result.masks:  # rows of 32 (0.37: 11.84) and of 64 (23.68), floored
            removed = (~result.masks[name]).sum(1)
            assert removed.eq(int(0.37 * ours.shape[1])).all(), name


def test_any_criterion_and_reconstruction_compose_in_a_recipe(tiny_dir: Path) -> None:
    """Wanda's mask, then OBS reconstruction of the kept weights: a combination no LLM method names."""
    step = {
        "criterion": "wanda", "structure": "rows", "allocation": "uniform", "sparsity": 0.5,
        "calibration": {"mode": "sequential"}, "reconstruct": {"method": "obs", "select": "fixed"},
        "data_batches": 2, "data_batch_size": 4,
    }  # fmt: skip
    plain = Pipeline(recipe(tiny_dir, {"prune": {**step, "reconstruct": None}}, {"evaluate": {}})).run()
    rebuilt = Pipeline(recipe(tiny_dir, {"prune": step}, {"evaluate": {}})).run()
    assert plain.masks is not None and rebuilt.masks is not None
    first = [n for n in plain.masks if n.startswith("model.layers.0.")]
    assert len(first) == 7 and all(torch.equal(plain.masks[n], rebuilt.masks[n]) for n in first)  # same mask
    weights = dict(rebuilt.model.named_parameters())
    before = dict(plain.model.named_parameters())
    assert all(not torch.equal(weights[n], before[n]) for n in first)  # the kept weights were rebuilt
    assert all(torch.equal(weights[n] != 0, rebuilt.masks[n]) for n in first)  # and only those
    # the next block is calibrated on the rebuilt block's outputs: Wanda's mask there may differ
    assert rebuilt.final["perplexity"] != plain.final["perplexity"]


@pytest.mark.parametrize(
    ("stages", "data", "message"),
    [
        ([{"train": {}}], None, "train stages do not apply to data set 'random_tokens'.*language modeling"),
        ([{"evaluate": {"beyond": True}}], None, "beyond-accuracy evaluations do not apply"),
        (
            [{"evaluate": {}}],
            {"name": "mnist1d"},
            "model 'hf' is for language modeling, but the data set is for",
        ),
    ],
)
def test_stages_that_do_not_fit_a_language_model_fail_before_loading_it(
    tiny_dir: Path, stages: list, data: dict | None, message: str
) -> None:
    raw = recipe(tiny_dir, *stages).model_dump()
    if data is not None:
        raw["data"] = data
    with pytest.raises(ConfigError, match=message):
        Pipeline(recipe_from_raw(raw))


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            {"criterion": "snip", "calibration": {"mode": "sequential"}},
            "sequential calibration .* criterion 'snip'",
        ),
        (
            {"structure": "channel", "calibration": {"mode": "sequential"}},
            "structure 'channel' \\(it spans layers\\)",
        ),
        ({"reconstruct": {"method": "ols"}}, "unknown reconstruction 'ols'"),
        ({"reconstruct": {"method": "obs", "select": "greedy"}}, "select"),
        ({"structure": "block", "reconstruct": {"method": "obs", "select": "adaptive"}}, "adaptive"),
    ],
)
def test_calibration_and_reconstruction_options_are_checked_when_the_recipe_is_read(
    tiny_dir: Path, step: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        recipe(tiny_dir, {"prune": {"sparsity": 0.5, **step}})


@pytest.mark.parametrize("criterion", ["snip", "taylor", "grasp"])
def test_gradient_criteria_differentiate_the_next_token_loss_of_a_language_model(
    tiny_dir: Path, criterion: str
) -> None:
    """The data set's task gives the loss (next-token cross-entropy); heads are a structure like any."""
    step = {"criterion": criterion, "structure": "ffn", "allocation": "uniform", "sparsity": 0.5}
    step |= {"data_batches": 2, "data_batch_size": 4}
    eager = {"attention": "eager"} if criterion == "grasp" else {}  # fused attention has no double backward
    result = Pipeline(recipe(tiny_dir, {"prune": step}, {"evaluate": {}}, **eager)).run()
    assert result.masks is not None
    for block in ("model.layers.0", "model.layers.1"):  # half of each block's 64 FFN channels go
        gate = result.masks[f"{block}.mlp.gate_proj.weight"]
        assert int(gate.all(dim=1).sum()) == 32


def test_synflow_on_a_token_model_says_what_it_needs(tiny_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"synflow' feeds an all-ones input.*models on token ids use"):
        Pipeline(recipe(tiny_dir, {"prune": {"criterion": "synflow", "sparsity": 0.5}})).run()


def test_grasp_through_fused_attention_says_how_to_get_second_derivatives(tiny_dir: Path) -> None:
    step = {"criterion": "grasp", "structure": "ffn", "allocation": "uniform", "sparsity": 0.5}
    with pytest.raises(ConfigError, match=r"grasp' needs second derivatives.*attention: eager"):
        Pipeline(recipe(tiny_dir, {"prune": step}, attention="sdpa")).run()
