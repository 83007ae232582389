"""Structured pruning of HF transformers: heads and FFN channels, on tiny random Llama/BERT models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.graph.masking import removed_groups
from secateurs.methods.pruning import compute_masks, score_groups
from secateurs.structured import channel_masks

transformers = pytest.importorskip("transformers")

from secateurs.llm.evaluate import causal_lm_loss  # noqa: E402
from secateurs.llm.structured import (  # noqa: E402
    LAYER_SIZES_KEY,
    hf_channel_graph,
    layer_sizes,
    load_pruned,
    prune_ffn_channels,
    prune_heads,
    prune_structured,
    remove_groups,
)

HIDDEN, FFN, LAYERS, HEADS, KV, VOCAB = 64, 96, 2, 4, 2, 100
HEAD_DIM = HIDDEN // HEADS


def llama() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV,
        vocab_size=VOCAB,
    )
    return transformers.LlamaForCausalLM(config).eval()


def bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        vocab_size=VOCAB,
    )
    return transformers.BertModel(config).eval()


IDS = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def out(model: nn.Module) -> torch.Tensor:
    result = model(input_ids=IDS)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def zeroed(model: nn.Module, graph, groups) -> nn.Module:
    dense = copy.deepcopy(model)
    channel_masks(dense, graph, groups).apply(dense)
    return dense


@pytest.mark.parametrize("build", [llama, bert], ids=["llama", "bert"])
@pytest.mark.parametrize("parts", [("heads",), ("ffn",), ("heads", "ffn")])
def test_removal_equals_zeroing(build, parts) -> None:
    model = build()
    graph = hf_channel_graph(model, parts)
    groups = [g.id for g in graph.groups]
    per_layer = {}
    for gid in groups:
        per_layer.setdefault((graph.layer[gid], graph.kind[gid]), []).append(gid)
    # a different selection in each block: the first group of block 0, the last of block 1
    chosen = [ids[0] if layer == 0 else ids[-1] for (layer, _), ids in per_layer.items()]
    small = remove_groups(model, graph, chosen)
    reference = zeroed(model, graph, chosen)
    assert not torch.equal(out(reference), out(model))  # the removed units really mattered
    close(out(small), out(reference))


def test_llama_gqa_group_takes_its_query_heads() -> None:
    model = llama()
    graph = hf_channel_graph(model, ("heads",))
    assert graph.queries_per_group == HEADS // KV
    assert len(graph.groups) == LAYERS * KV
    first = graph.groups[0]  # key/value head 0 of block 0
    rows = {site.name: index.tolist() for site, index in first.sites}
    per_q = HEAD_DIM * HEADS // KV
    assert rows["model.layers.0.self_attn.q_proj.weight"] == list(range(per_q))
    assert rows["model.layers.0.self_attn.k_proj.weight"] == list(range(HEAD_DIM))
    assert rows["model.layers.0.self_attn.v_proj.weight"] == list(range(HEAD_DIM))
    assert rows["model.layers.0.self_attn.o_proj.weight"] == list(range(per_q))
    # kv head 1 of block 0 and kv head 0 of block 1
    small = remove_groups(model, graph, [graph.groups[1].id, graph.groups[2].id])
    attn = small.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (HEADS // KV * HEAD_DIM, HIDDEN)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (HEAD_DIM, HIDDEN)
    assert attn.o_proj.weight.shape == (HIDDEN, HEADS // KV * HEAD_DIM)
    assert attn.num_key_value_groups == HEADS // KV
    kept_q = model.model.layers[1].self_attn.q_proj.weight[per_q:]
    # block 1 kept kv head 1's query heads
    assert torch.equal(small.model.layers[1].self_attn.q_proj.weight, kept_q)
    assert small.config.num_attention_heads == HEADS // KV and small.config.num_key_value_heads == 1


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_are_analytic() -> None:
    model = llama()
    per_group = (HEADS // KV) * HEAD_DIM * HIDDEN * 2 + 2 * HEAD_DIM * HIDDEN  # q rows + o cols, k and v rows
    small = prune_heads(model, 0.5)  # one of two kv groups per block
    assert params(model) - params(small) == LAYERS * per_group
    small = prune_ffn_channels(model, 0.25)  # 24 of 96 channels per block: gate, up rows, down column
    assert params(model) - params(small) == LAYERS * 24 * 3 * HIDDEN
    encoder = bert()
    small = prune_heads(encoder, 0.5)  # 2 of 4 heads: q/k/v rows + biases, output.dense columns
    assert params(encoder) - params(small) == LAYERS * 2 * (3 * HEAD_DIM * (HIDDEN + 1) + HIDDEN * HEAD_DIM)
    small = prune_ffn_channels(encoder, 0.5)  # 48 channels: intermediate row + bias, output column
    assert params(encoder) - params(small) == LAYERS * 48 * (2 * HIDDEN + 1)


def test_uniform_llama_round_trips_through_from_pretrained(tmp_path) -> None:
    small = prune_structured(llama(), 0.5, parts=("heads", "ffn"))
    assert [s["intermediate_size"] for s in layer_sizes(small)] == [FFN // 2] * LAYERS
    assert small.config.intermediate_size == FFN // 2
    assert small.model.layers[0].mlp.intermediate_size == FFN // 2
    assert (small.config.num_attention_heads, small.config.num_key_value_heads) == (HEADS // 2, KV // 2)
    assert small.config.head_dim == HEAD_DIM
    small.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.num_attention_heads == HEADS // 2 and loaded.config.intermediate_size == FFN // 2
    assert torch.equal(out(loaded), out(small))
    assert torch.equal(out(load_pruned(tmp_path)), out(small))


def test_bert_ffn_round_trips_and_heads_need_load_pruned(tmp_path) -> None:
    small = prune_ffn_channels(bert(), 0.5)
    small.save_pretrained(tmp_path / "ffn")
    loaded = transformers.BertModel.from_pretrained(tmp_path / "ffn").eval()
    assert loaded.config.intermediate_size == FFN // 2
    assert torch.equal(out(loaded), out(small))

    small = prune_heads(bert(), 0.25)  # 1 of 4 heads per block
    attn = small.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.all_head_size) == (3, 3 * HEAD_DIM)
    assert attn.attention_head_size == HEAD_DIM
    assert small.config.num_attention_heads == HEADS  # BERT's head size is hidden / heads: cannot change
    assert [s["num_attention_heads"] for s in getattr(small.config, LAYER_SIZES_KEY)] == [3, 3]
    small.save_pretrained(tmp_path / "heads")
    with pytest.raises(RuntimeError, match="mismatch"):
        transformers.BertModel.from_pretrained(tmp_path / "heads")  # loud, never silently re-initialised
    assert torch.equal(out(load_pruned(tmp_path / "heads")), out(small))


def test_non_uniform_keeps_config_and_load_pruned_restores(tmp_path) -> None:
    model = llama()
    graph = hf_channel_graph(model, ("ffn",))
    block0 = [g.id for g in graph.groups if graph.layer[g.id] == 0][:10]
    small = remove_groups(model, graph, block0)
    assert [s["intermediate_size"] for s in layer_sizes(small)] == [FFN - 10, FFN]
    assert small.config.intermediate_size == FFN  # no single value is true: left as it was
    small.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="mismatch"):
        transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)
    assert layer_sizes(loaded) == layer_sizes(small)
    assert torch.equal(out(loaded), out(small))


Q0 = "model.layers.0.self_attn.q_proj"  # the unit of block 0's head groups


def heads_scores(model: nn.Module, criterion: str, **options: object) -> torch.Tensor:
    """Block 0's head-group scores as a prune with structure `heads` ranks them."""
    _, scores = score_groups(model, criterion=criterion, structure="heads", **options)
    return scores[Q0]


def test_criteria_rank_as_defined() -> None:
    model = llama()
    graph = hf_channel_graph(model, ("heads",))
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight[:, : HEAD_DIM * 2] *= 0.01  # kv group 0 of block 0
    scores = heads_scores(model, "magnitude")
    first = graph.groups[0]
    modules = dict(model.named_modules())
    expected = sum(
        float(modules[s.module].weight.detach().double().index_select(s.dim, torch.as_tensor(i)).pow(2).sum())
        for s, i in first.sites
        if s.tensor == "weight"
    )
    assert float(scores[0]) == pytest.approx(expected**0.5, rel=1e-12)
    calib = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(2))
    wanda = heads_scores(model, "wanda", data=calib)
    # Σ |W_ij| ‖X_j‖ over o_proj columns of group 0, with X the inputs o_proj saw
    seen = []
    handle = model.model.layers[0].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(input_ids=calib)
    handle.remove()
    x = seen[0].double().reshape(-1, HIDDEN)
    w = model.model.layers[0].self_attn.o_proj.weight.detach().double().abs()
    expected_w = float((w.sum(0) * x.pow(2).sum(0).sqrt())[: HEAD_DIM * 2].sum())
    assert float(wanda[0]) == pytest.approx(expected_w, rel=1e-6)
    masks = compute_masks(model, 0.5, criterion="wanda", structure="heads", allocation="uniform", data=calib)
    assert first.id in removed_groups(graph, masks)  # the shrunken group goes first in its block
    random_a = heads_scores(model, "random", seed=3)
    assert torch.equal(random_a, heads_scores(model, "random", seed=3))
    assert not torch.equal(random_a, heads_scores(model, "random", seed=4))


def test_snip_prunes_heads_on_the_next_token_loss() -> None:
    model = llama()
    calib = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(2))
    small = prune_heads(model, 0.5, criterion="snip", calibration=calib)
    # |g·θ| of the next-token cross-entropy, by hand, pooled per head group (l2 over its weights)
    model.zero_grad()
    logits = model(input_ids=calib).logits
    nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), calib[:, 1:].reshape(-1)).backward()
    graph = hf_channel_graph(model, ("heads",))
    modules = dict(model.named_modules())
    block0 = [g for g in graph.groups if graph.layer[g.id] == 0]
    by_hand = torch.tensor(
        [
            sum(
                float((w.grad * w).detach().double().index_select(s.dim, torch.as_tensor(i)).pow(2).sum())
                for s, i in g.sites
                if s.tensor == "weight" and (w := getattr(modules[s.module], s.tensor)) is not None
            )
            ** 0.5
            for g in block0
        ],
        dtype=torch.float64,
    )
    model.zero_grad()
    scores = heads_scores(model, "snip", data=(calib, calib), loss_fn=causal_lm_loss).double()
    assert torch.allclose(scores / scores.sum(), by_hand / by_hand.sum(), rtol=1e-4)
    kept = int(by_hand.argmax())  # KV = 2 groups, half removed: the higher one stays
    k_proj = model.model.layers[0].self_attn.k_proj.weight
    rows = k_proj[kept * HEAD_DIM : (kept + 1) * HEAD_DIM]
    assert torch.equal(small.model.layers[0].self_attn.k_proj.weight, rows)
    taylor = prune_heads(model, 0.5, criterion="taylor", calibration=calib)
    assert [b.self_attn.k_proj.out_features for b in taylor.model.layers] == [HEAD_DIM] * LAYERS


def test_gradient_criteria_need_token_id_pairs() -> None:
    calib = {
        "input_ids": torch.randint(0, VOCAB, (2, 5)),
        "attention_mask": torch.ones(2, 5, dtype=torch.long),
    }
    with pytest.raises(ConfigError, match="differentiates a loss of \\(input, target\\) batches"):
        prune_heads(llama(), 0.5, criterion="snip", calibration=calib)


def test_synflow_refuses_a_model_on_token_ids() -> None:
    with pytest.raises(ConfigError, match=r"starts from token ids.*for models on token ids use"):
        prune_heads(llama(), 0.5, criterion="synflow")


def test_wanda_ignores_padding() -> None:
    model = bert()
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 3:] = 0

    def ffn_scores(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return score_groups(model, criterion="wanda", structure="ffn", data=batch)[1]

    padded = ffn_scores({"input_ids": ids, "attention_mask": mask})
    other = ids.clone()
    other[1, 3:] = (other[1, 3:] + 7) % VOCAB  # different padding tokens: same scores
    again = ffn_scores({"input_ids": other, "attention_mask": mask})
    assert all(torch.allclose(padded[u], again[u], rtol=1e-6) for u in padded)


def test_errors() -> None:
    model = llama()
    with pytest.raises(ConfigError, match="must be a number in"):
        prune_heads(model, 1.0)
    graph = hf_channel_graph(model, ("heads",))
    block0 = [g.id for g in graph.groups if graph.layer[g.id] == 0]
    with pytest.raises(ConfigError, match="no channels"):
        remove_groups(model, graph, block0)
    with pytest.raises(ConfigError, match="criterion 'wanda' needs data"):
        prune_heads(model, 0.5, criterion="wanda")
    with pytest.raises(ConfigError, match="unknown"):
        prune_heads(model, 0.5, criterion="bogus")
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ConfigError, match="no rules for architecture 'gpt2'"):
        prune_heads(gpt2, 0.5)
    with pytest.raises(ConfigError, match="not a Hugging Face"):
        hf_channel_graph(nn.Linear(3, 3))
    with pytest.raises(ConfigError, match="unknown structured parts"):
        hf_channel_graph(model, ("neurons",))


def test_global_allocation_records_per_layer_sizes() -> None:
    model = llama()
    mlp = model.model.layers[1].mlp
    with torch.no_grad():  # half of block 1's channels nearly dead: far below their block's mean score
        for w in (mlp.gate_proj.weight, mlp.up_proj.weight):
            w[: FFN // 2] *= 1e-3
        mlp.down_proj.weight[:, : FFN // 2] *= 1e-3
    small = prune_ffn_channels(model, 0.25, allocation="global")  # 48 of 192 channels
    assert [s["intermediate_size"] for s in layer_sizes(small)] == [FFN, FFN // 2]
    assert torch.equal(small.model.layers[1].mlp.up_proj.weight, mlp.up_proj.weight[FFN // 2 :])
    assert getattr(small.config, LAYER_SIZES_KEY) == layer_sizes(small)
    assert small.config.intermediate_size == FFN
