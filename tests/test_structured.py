"""Channel dependency graph and physical removal: removal equals zeroing where consumed, exactly."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from structured_archs import ARCHITECTURES, build
from torch import Tensor, fx, nn

from secateurs.core.errors import ConfigError
from secateurs.graph.analysis import analyze
from secateurs.graph.core import RULES, Tracked, passthrough, register_function_rule
from secateurs.graph.removal import channel_masks, remove_channels, resize_like

SUPPORTED = list(ARCHITECTURES)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _random_groups(ids: list[int], fraction: float, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [i for i in ids if float(torch.rand(1, generator=g)) < fraction]


@pytest.mark.parametrize("name", SUPPORTED)
@pytest.mark.parametrize("seed", [0, 1])
def test_removal_equals_zeroing_the_channels_where_they_are_consumed(name: str, seed: int) -> None:
    model, x = build(name)
    graph = analyze(model, x)
    assert graph.groups, "every architecture has prunable channels"
    chosen = _random_groups([g.id for g in graph.groups], 0.4, seed)
    small = remove_channels(model, graph, chosen)
    reference = copy.deepcopy(model)
    channel_masks(model, graph, chosen).apply(reference)
    with torch.no_grad():
        expected, got = reference(x), small(x)
    assert got.shape == expected.shape == (2, 10)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert _params(small) < _params(model)
    assert all(p.is_contiguous() for p in small.parameters())
    assert not list(small._forward_hooks) and not list(small._forward_pre_hooks)
    # the original is untouched
    with torch.no_grad():
        assert torch.equal(model(x), build(name)[0](x))


def test_parameter_count_is_the_analytic_one_for_vgg() -> None:
    model, x = build("vgg_bn")
    graph = analyze(model, x)
    by_module: dict[str, list[int]] = {}
    for g in graph.groups:
        (site, _), *_ = g.producers()
        by_module.setdefault(site.module, []).append(g.id)
    assert sorted(len(v) for v in by_module.values()) == [16, 32, 32, 64]  # fc2's 10 outputs are frozen
    # remove 5 channels of block2's conv (32 -> 27) and 3 of block3's (32 -> 29), 7 of fc1 (64 -> 57)
    chosen = by_module["block2.0"][:5] + by_module["block3.0"][:3] + by_module["fc1"][:7]
    small = remove_channels(model, graph, chosen)
    expected = (
        (3 * 9 * 16 + 16 + 2 * 16)  # block1: conv + bias + BN γβ
        + (16 * 9 * 27 + 27 + 2 * 27)  # block2
        + (27 * 9 * 29 + 29 + 2 * 29)  # block3 reads 27 channels
        + (29 * 16 * 57 + 57)  # fc1 reads 29 channels × 4·4 positions
        + (57 * 10 + 10)  # fc2
    )
    assert _params(small) == expected
    assert small.block2[0].out_channels == 27 and small.block2[1].num_features == 27
    assert small.fc1.in_features == 29 * 16 and small.fc1.out_features == 57
    assert small.block2[1].running_mean.shape == (27,)


def test_residual_channels_form_one_group_across_the_blocks_of_a_stage() -> None:
    model, x = build("resnet20")
    graph = analyze(model, x)
    stem = [g for g in graph.groups if any(s.module == "conv1" for s, _ in g.producers())]
    assert len(stem) == 8  # half-width ResNet-20: the first stage carries 8 residual channels
    producers = {s.module for s, _ in stem[0].producers()}
    # the stem and the second conv of every block of stage 1 add into the same channels
    assert producers == {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}


def test_depthwise_and_grouped_convs_keep_their_structure() -> None:
    model, x = build("mobilenetv2_block")
    graph = analyze(model, x)
    small = remove_channels(model, graph, [g.id for g in graph.groups][::3])
    for m in small.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.weight.shape[0]  # still depthwise
    model, x = build("resnext_block")
    graph = analyze(model, x)
    small = remove_channels(model, graph, [g.id for g in graph.groups][::2])
    grouped = [m for m in small.modules() if isinstance(m, nn.Conv2d) and m.groups == 4]
    assert grouped and all(m.in_channels % 4 == 0 and m.out_channels % 4 == 0 for m in grouped)


def test_the_classifier_outputs_are_never_prunable_and_reshape_attributes_follow() -> None:
    model, x = build("se_block")
    graph = analyze(model, x)
    assert "head" not in {s.module for g in graph.groups for s, _ in g.producers()}
    # the SE gate is viewed to (-1, self.channels, 1, 1): the attribute is rewritten with the channels
    assert ("se", "channels") in graph.attributes
    gate = [g for g in graph.groups if any(s.module == "se.expand" for s, _ in g.producers())]
    small = remove_channels(model, graph, [gate[0].id, gate[1].id])
    assert small.se.channels == model.se.channels - 2
    # a literal that no module attribute holds freezes what it sizes (Swin's 4·dim merge view)
    model, x = build("swin_block")
    graph = analyze(model, x)
    assert not any(
        s.module == "merge.reduction" and s.role == "consumer" for g in graph.groups for s, _ in g.sites
    )
    # a table per head (relative position bias, (2w-1)^2 x num_heads) loses its column with the head
    heads = [g for g in graph.groups if any(s.tensor == "relative_position_bias_table" for s, _ in g.sites)]
    assert len(heads) == 2
    assert {(s.name, len(i)) for s, i in heads[1].sites} == {
        ("block.attn.qkv.weight", 48),  # q, k, v rows of a 16-wide head
        ("block.attn.qkv.bias", 48),
        ("block.attn.proj.weight", 16),
        ("block.attn.relative_position_bias_table", 1),
    }
    small = remove_channels(model, graph, [heads[1].id])
    assert small.block.attn.num_heads == 1 and small.block.attn.dim == 16
    assert torch.equal(
        small.block.attn.relative_position_bias_table, model.block.attn.relative_position_bias_table[:, :1]
    )


class CumulativeChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.cumsum(self.conv(x), dim=1).mean((2, 3)))


def test_an_op_without_a_rule_is_a_clear_error_naming_it_and_the_node() -> None:
    expected = r"no channel rule for function 'cumsum' \(from torch\) at graph node 'cumsum'.*register"
    with pytest.raises(ConfigError, match=expected):
        analyze(CumulativeChannels(), torch.randn(2, 3, 8, 8))


def test_attention_heads_are_removed_whole_and_the_head_count_follows() -> None:
    model, x = build("vit_tiny")
    graph = analyze(model, x)
    heads = [g for g in graph.groups if any(s.module == "blocks.0.attn.qkv" for s, _ in g.producers())]
    assert len(heads) == 4  # the qkv reshape reads self.num_heads: heads are the unit
    assert {len(i) for s, i in heads[0].sites if s.module == "blocks.0.attn.qkv"} == {36}  # q, k, v rows
    small = remove_channels(model, graph, [heads[1].id])
    attn = small.blocks[0].attn
    assert (attn.num_heads, attn.hidden_dim, attn.head_dim) == (3, 36, 12)  # head_dim is not rewritten
    assert _params(model) - _params(small) == 36 * (48 + 1) + 12 * 48  # q/k/v rows + biases, proj columns
    assert small.blocks[1].attn.num_heads == 4


def twice(x: Tensor) -> Tensor:
    return x * 2


def twice_unless_huge(x: Tensor) -> Tensor:
    if x.abs().max() > 1e6:  # control flow on values: fx cannot trace into it
        return x
    return x * 2


fx.wrap("twice")
fx.wrap("twice_unless_huge")


class UsesACustomOp(nn.Module):
    def __init__(self, traceable: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)
        self.traceable = traceable  # a flag: while fx traces, the names above are its wrappers

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        y = twice(y) if self.traceable else twice_unless_huge(y)
        return self.head(y.mean((2, 3)))


def test_a_wrapped_function_without_a_rule_is_traced_into() -> None:
    model, x = UsesACustomOp(traceable=True), torch.randn(2, 3, 8, 8)
    graph = analyze(model, x)
    assert len(graph.groups) == 4
    small = remove_channels(model, graph, [graph.groups[1].id])
    assert small.conv.out_channels == 3 and small.head.in_features == 3


def test_a_registered_rule_makes_an_untraceable_op_prunable() -> None:
    model, x = UsesACustomOp(traceable=False), torch.randn(2, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"function 'twice_unless_huge'.*tracing into it failed"):
        analyze(model, x)
    register_function_rule(twice_unless_huge)(lambda ctx, node: passthrough(ctx, node))
    try:
        graph = analyze(model, x)
        assert len(graph.groups) == 4
        small = remove_channels(model, graph, [graph.groups[1].id])
        assert small.conv.out_channels == 3 and small.head.in_features == 3
    finally:
        del RULES[twice_unless_huge]


def test_removing_every_channel_of_a_layer_is_refused() -> None:
    model, x = build("vgg_bn")
    graph = analyze(model, x)
    block1 = [g.id for g in graph.groups if any(s.module == "block1.0" for s, _ in g.producers())]
    with pytest.raises(ConfigError, match="no channels"):
        remove_channels(model, graph, block1)
    with pytest.raises(ConfigError, match="not prunable groups"):
        remove_channels(model, graph, [-1])


def test_untraceable_models_are_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x) if x.sum() > 0 else -self.conv(x)

    with pytest.raises(ConfigError, match=r"cannot trace the model with torch\.fx"):
        analyze(Branchy(), torch.randn(1, 3, 8, 8))


def test_tracked_labels_are_per_channel_not_per_weight() -> None:
    model, x = build("resnet20")
    graph = analyze(model, x)
    channels = sum(len(s.labels) for s in graph.sites)
    assert channels < _params(model) / 10  # a few integers per channel, not per weight
    assert isinstance(Tracked((1,), graph.sites[0].labels), Tracked)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2_block", "densenet_block", "vit_mha"])
def test_a_pruned_model_saves_loads_and_exports_without_pruning_again(name: str, tmp_path: Path) -> None:
    model, x = build(name)
    graph = analyze(model, x)
    small = remove_channels(model, graph, _random_groups([g.id for g in graph.groups], 0.5, 0))
    torch.save(small.state_dict(), tmp_path / "small.pt")
    fresh, _ = build(name)
    loaded = resize_like(fresh, torch.load(tmp_path / "small.pt", weights_only=True))
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))
    assert _params(loaded) == _params(small)
    exported = torch.export.export(small, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), small(x))


def test_a_pruned_model_exports_to_a_program_and_to_onnx_with_equal_outputs(tmp_path: Path) -> None:
    import warnings

    onnx = pytest.importorskip("onnx")  # installed by the test extras
    from onnx.reference import ReferenceEvaluator

    from secateurs.export import export_onnx, export_program

    model, x = build("vgg_bn")
    graph = analyze(model, x)
    small = remove_channels(model, graph, _random_groups([g.id for g in graph.groups], 0.5, 3))
    program = torch.export.load(export_program(small, x, tmp_path / "small.pt2"))
    with torch.no_grad():
        expected = small(x)
        torch.testing.assert_close(program.module()(x), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice that the TorchScript-based exporter is legacy
        path = export_onnx(small, x, tmp_path / "small.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    (got,) = ReferenceEvaluator(proto).run(None, {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)


def test_onnx_export_without_onnx_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from secateurs.export import export_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(ConfigError, match=r"needs the onnx package.*\[export\]"):
        export_onnx(nn.Linear(2, 2), torch.zeros(1, 2), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


class Bag(nn.Module):
    """Token embeddings, averaged, then an MLP head: the embedding width is prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc(self.embed(tokens).sum(1))))


def test_embedding_dimensions_are_channels() -> None:
    torch.manual_seed(0)
    model, tokens = Bag().eval(), torch.randint(0, 20, (4, 5))
    graph = analyze(model, tokens)
    embedding = [g for g in graph.groups if any(s.module == "embed" for s, _ in g.producers())]
    assert len(embedding) == 8
    chosen = [embedding[0].id, embedding[3].id]
    small = remove_channels(model, graph, chosen)
    assert small.embed.embedding_dim == 6 and small.fc.in_features == 6
    reference = copy.deepcopy(model)
    channel_masks(model, graph, chosen).apply(reference)
    with torch.no_grad():
        torch.testing.assert_close(small(tokens), reference(tokens))


class GroupNormNet(nn.Module):
    def __init__(self, affine: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.norm = nn.GroupNorm(3, 12, affine=affine)
        self.conv2 = nn.Conv2d(12, 6, 3)
        self.head = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv2(torch.relu(self.norm(self.conv1(x)))).mean((2, 3)))


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_loses_whole_groups(affine: bool) -> None:
    torch.manual_seed(0)
    model, x = GroupNormNet(affine).eval(), torch.randn(2, 3, 8, 8)
    graph = analyze(model, x)
    norm_groups = [g for g in graph.groups if any(s.module == "conv1" for s, _ in g.producers())]
    assert len(norm_groups) == 3  # 12 channels in 3 groups of 4: a group is the unit
    small = remove_channels(model, graph, [norm_groups[1].id])
    assert (small.norm.num_groups, small.norm.num_channels, small.conv1.out_channels) == (2, 8, 8)
    reference = copy.deepcopy(model)
    channel_masks(model, graph, [norm_groups[1].id]).apply(reference)
    with torch.no_grad():
        torch.testing.assert_close(small(x), reference(x))


class SubPixel(nn.Module):
    """A sub-pixel upsampler: an output channel of PixelShuffle(2) gathers 4 input channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.conv2 = nn.Conv2d(6, 5, 3)
        self.head = nn.Linear(5, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv2(self.shuffle(torch.relu(self.conv1(x)))).mean((2, 3)))


def test_pixel_shuffle_removes_blocks_of_r_squared_channels() -> None:
    torch.manual_seed(0)
    model, x = SubPixel().eval(), torch.randn(2, 3, 6, 6)
    graph = analyze(model, x)
    blocks = [g for g in graph.groups if any(s.module == "conv1" for s, _ in g.producers())]
    assert len(blocks) == 6 and all(len(i) == 4 for s, i in (b.producers()[0] for b in blocks))
    small = remove_channels(model, graph, [blocks[2].id, blocks[4].id])
    assert small.conv1.out_channels == 16 and small.conv2.in_channels == 4
    reference = copy.deepcopy(model)
    channel_masks(model, graph, [blocks[2].id, blocks[4].id]).apply(reference)
    with torch.no_grad():
        torch.testing.assert_close(small(x), reference(x))
