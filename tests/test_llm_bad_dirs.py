"""`secateurs llm prune --model DIR` on a damaged model directory is one error line naming the file
(issue 19, failure 6): a malformed config.json, a truncated safetensors file, no tokenizer.

Before, a truncated model.safetensors ended in a Rust ``SafetensorError: incomplete metadata, file not
fully covered`` traceback and a missing tokenizer in "Couldn't instantiate the backend tokenizer ...
You need to have sentencepiece or tiktoken installed".
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from secateurs.core.errors import ConfigError  # noqa: E402
from secateurs.front.llm_cli import llm_app  # noqa: E402
from secateurs.llm.modelfiles import check_safetensors  # noqa: E402
from secateurs.llm.models import load_model  # noqa: E402

WORDS = ["the", "a", "tree", "is", "pruned", "and", "grows", "again"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a word-level tokenizer, saved as save_pretrained saves a real one."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = tmp_path_factory.mktemp("llm") / "tiny"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(WORDS) + 1,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tok = Tokenizer(
        models.WordLevel({w: i + 1 for i, w in enumerate(WORDS)} | {"[UNK]": 0}, unk_token="[UNK]")
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return path


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    return target


def _prune_error(model: Path) -> str:
    """The one error line of `llm prune --model MODEL` (magnitude: no calibration text is read)."""
    result = CliRunner().invoke(
        llm_app, ["prune", "--model", str(model), "--method", "magnitude", "--sparsity", "0.5"]
    )
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    return line


def test_the_intact_directory_loads(model_dir: Path) -> None:
    loaded = load_model(model_dir)
    assert loaded.kind == "causal" and len(loaded.tokenizer) == len(WORDS) + 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"architectures": ["LlamaForCausalLM"], ', "line 1, column 41: Expecting property name"),
        ("", "line 1, column 1: Expecting value"),
    ],
)
def test_a_malformed_config_json_is_named_with_its_line_and_column(
    model_dir: Path, tmp_path: Path, text: str, problem: str
) -> None:
    model = _copy(model_dir, tmp_path)
    (model / "config.json").write_text(text)
    line = _prune_error(model)
    assert f"{model / 'config.json'}: the file is not valid JSON ({problem}" in line
    assert "Fix: restore config.json from the original model" in line


def test_a_config_json_that_is_not_an_object(model_dir: Path, tmp_path: Path) -> None:
    model = _copy(model_dir, tmp_path)
    (model / "config.json").write_text("[1, 2]")
    assert f"{model / 'config.json'}: the file is not a JSON object" in _prune_error(model)


def test_a_truncated_safetensors_file_is_cut_short(model_dir: Path, tmp_path: Path) -> None:
    model = _copy(model_dir, tmp_path)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    line = _prune_error(model)
    assert f"{weights}: the weights file is cut short ({len(data) // 2:,} of the {len(data):,} bytes" in line
    assert "Fix: copy the model directory again" in line


@pytest.mark.parametrize("keep", [0, 5, 8, 20])
def test_a_safetensors_file_cut_inside_its_header(model_dir: Path, tmp_path: Path, keep: int) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes((model_dir / "model.safetensors").read_bytes()[:keep])
    with pytest.raises(
        ConfigError, match=r"the weights file is cut short \(\d+ bytes, too few for its header\)"
    ):
        check_safetensors(weights)


def test_a_safetensors_file_with_bytes_added(model_dir: Path, tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes((model_dir / "model.safetensors").read_bytes() + b"\0\0")
    with pytest.raises(ConfigError, match="the weights file has 2 bytes more than its header describes"):
        check_safetensors(weights)


def test_no_weights_file(model_dir: Path, tmp_path: Path) -> None:
    model = _copy(model_dir, tmp_path)
    (model / "model.safetensors").unlink()
    assert f"{model}: no weights file here (model.safetensors or pytorch_model.bin)" in _prune_error(model)


def test_no_tokenizer(model_dir: Path, tmp_path: Path) -> None:
    model = _copy(model_dir, tmp_path)
    for file in model.glob("tokenizer*"):
        file.unlink()
    line = _prune_error(model)
    assert f"{model}: no tokenizer here (none of tokenizer.json, " in line
    assert "Fix: save the tokenizer of the model it came from into it" in line


def test_a_malformed_tokenizer_json(model_dir: Path, tmp_path: Path) -> None:
    model = _copy(model_dir, tmp_path)
    (model / "tokenizer.json").write_text('{"model": ')
    line = _prune_error(model)
    assert f"{model / 'tokenizer.json'}: the file is not valid JSON (line 1, column 11" in line


def test_weights_transformers_cannot_read_are_one_line_naming_the_directory(
    model_dir: Path, tmp_path: Path
) -> None:
    model = _copy(model_dir, tmp_path)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"not a torch file at all")
    line = _prune_error(model)
    assert f"{model}: cannot load the weights (" in line
    assert "Fix: check that it is a complete Hugging Face model directory" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ties", "lowest"], "--ties must be one of index, reverse, random, original, got 'lowest'"),
        (["--rounding", "down"], "--rounding must be one of half_up, floor, ceil, got 'down'"),
        (["--counts", "rows"], "--counts must be one of layer, row, got 'rows'"),
        (["--counts", "row", "--method", "sparsegpt"], "counts 'row' applies to wanda's per-row comparison"),
        (["--counts", "row", "--nm", "2:4"], "counts 'row' applies to wanda's per-row comparison"),
    ],
)
def test_an_unknown_counting_option_is_one_line_naming_the_choices(
    model_dir: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(llm_app, ["prune", "--model", str(model_dir), "--sparsity", "0.5", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert message in line
