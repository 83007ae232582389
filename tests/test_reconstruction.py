"""Specification of OBS reconstruction after any mask, Wanda on convolutions, and sequential calibration.

Small seeded Linear / conv models built here; every number is exact or checked against a hand
computation (F.unfold for convolution inputs, the least-squares solution of an OBS update, the old
SparseGPT code's output).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secateurs import ConfigError
from secateurs.core.masks import MaskSet, masks_of
from secateurs.methods.allocations import round_half_up
from secateurs.methods.pruning import compute_masks, masks_from_scores, score_groups
from secateurs.methods.reconstruction import OBS, build_reconstruction, obs_reconstruct, reconstruct
from secateurs.methods.sequential import find_blocks, prune_sequential
from secateurs.methods.structures import NM, Rows


def correlated(n: int, features: int, seed: int = 0) -> torch.Tensor:
    """Correlated, unevenly scaled inputs, as real activations are."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features // 2, generator=gen) @ torch.randn(features // 2, features, generator=gen)
    return x * torch.rand(features, generator=gen) * 3 + 0.1 * torch.randn(n, features, generator=gen)


def conv_data(seed: int = 0) -> torch.Tensor:
    """[8, 4, 6, 6] images whose 4 channels are mixed from 2, so the unfolded inputs correlate."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(8, 2, 6, 6, generator=gen)
    return torch.einsum("bchw,cd->bdhw", base, torch.randn(2, 4, generator=gen)) + 0.1 * torch.randn(
        8, 4, 6, 6, generator=gen
    )


def magnitude_masks(model: nn.Module, sparsity: float, structure: str = "unstructured") -> MaskSet:
    return compute_masks(model, sparsity, criterion="magnitude", allocation="uniform", structure=structure)


# -- Wanda on convolutions ---------------------------------------------------------------------------


def wanda_conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.Flatten()
    )


def unfolded_norms(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """‖X_j‖ by hand: F.unfold columns (in, kh, kw) over every patch of every image."""
    cols = F.unfold(x, conv.kernel_size, padding=conv.padding, stride=conv.stride)  # [B, C·k·k, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]).norm(dim=0)


def test_wanda_on_a_conv_is_weight_times_the_norm_of_its_unfolded_input() -> None:
    model, x = wanda_conv_net(), conv_data()
    hidden = torch.relu(model[0](x)).detach()
    _, scores = score_groups(model, criterion="wanda", data=x)
    for name, conv, inp in (("0.weight", model[0], x), ("2.weight", model[2], hidden)):
        by_hand = conv.weight.detach().abs() * unfolded_norms(inp, conv).reshape(conv.weight.shape[1:])
        torch.testing.assert_close(scores[name].double(), by_hand.reshape(-1).double(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("structure", ["rows", "unstructured"])
def test_wanda_conv_masks_have_exact_counts(structure: str) -> None:
    model, x = wanda_conv_net(), conv_data()
    masks = compute_masks(model, 0.37, criterion="wanda", structure=structure, allocation="uniform", data=x)
    for name in ("0.weight", "2.weight"):
        mask = masks[name]
        assert int((~mask).sum()) == round_half_up(0.37 * mask.numel()), name
        if structure == "rows":  # every filter compared on its own: pruned counts differ by at most one
            per_row = (~mask).reshape(mask.shape[0], -1).sum(1)
            assert int(per_row.max() - per_row.min()) <= 1, name


# -- OBS reconstruction ----------------------------------------------------------------------------


def test_obs_fixed_after_a_magnitude_mask_lowers_a_linears_error_and_keeps_the_mask() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16, bias=False))
    x = correlated(256, 32)
    dense = model[0].weight.detach().clone()
    masks = magnitude_masks(model, 0.5)
    out = reconstruct(model, masks, "obs", data=x)
    w = model[0].weight.detach()
    assert torch.equal(out["0.weight"], masks["0.weight"])  # fixed: the mask itself
    assert torch.equal(w != 0, masks["0.weight"])  # pruned weights exactly zero, no kept one zeroed
    plain = float((x @ dense.T - x @ (dense * masks["0.weight"]).T).norm())
    rebuilt = float((x @ dense.T - x @ w.T).norm())
    assert rebuilt < 0.95 * plain  # SparseGPT's update: earlier kept columns are not revisited


def test_obs_fixed_lowers_a_conv2d_error_and_keeps_the_mask() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1))
    x = conv_data()
    conv = model[0]
    dense = conv.weight.detach().clone()
    masks = magnitude_masks(model, 0.5)
    reconstruct(model, masks, {"method": "obs", "select": "fixed"}, data=x)
    assert torch.equal(conv.weight != 0, masks["0.weight"])

    def error(weight: torch.Tensor) -> float:
        return float((F.conv2d(x, dense, padding=1) - F.conv2d(x, weight, padding=1)).norm())

    assert error(conv.weight.detach()) < 0.9 * error(dense * masks["0.weight"])


def test_obs_fixed_is_least_squares_when_the_pruned_columns_come_first() -> None:
    """Removing columns 0-2 one after the other, each compensated on all later columns, is the
    joint optimum: Ŵ_K = W_K + W_P H_PK H_KK⁻¹ (H dampened), across a block boundary (blocksize 4)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    x = correlated(40, 8).double()
    h = 2 * x.T @ x / x.shape[0]
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[:, :3] = False
    new, keep = obs_reconstruct(w, h, mask, blocksize=4, percdamp=0.01)
    damped = h + 0.01 * torch.diag(h).mean() * torch.eye(8, dtype=torch.float64)
    kept, pruned = slice(3, 8), slice(0, 3)
    expected = torch.zeros_like(w)
    expected[:, kept] = (
        w[:, kept] + torch.linalg.solve(damped[kept, kept], damped[kept, pruned] @ w[:, pruned].T).T
    )
    assert torch.equal(keep, mask)
    assert torch.equal(new[:, pruned], torch.zeros(3, 3, dtype=torch.float64))
    torch.testing.assert_close(new, expected, rtol=0, atol=1e-5)  # U is float32, as in SparseGPT


# Computed by the SparseGPT implementation before it became this reconstruction (secateurs.llm.methods
# at 12f8df6, blocksize 4 so that two blocks of columns are updated lazily).
OLD_SPARSEGPT = {
    None: (
        [
            [1, 1, 0, 1, 0, 0, 0, 1],
            [0, 1, 0, 0, 0, 1, 1, 0],
            [1, 1, 0, 1, 0, 1, 0, 1],
            [1, 0, 0, 0, 1, 1, 0, 1],
        ],
        [
            [-1.1258, -1.1524, 0.0, -0.5996, 0.0, 0.0, 0.0, -1.4358],
            [0.0, -1.0601, 0.0, 0.0, 0.0, 1.7363, 1.3062, 0.0],
            [-1.3527, -1.6959, 0.0, 1.1683, 0.0, -1.3433, 0.0, 2.1179],
            [0.7502, 0.0, 0.0, 0.0, 1.0728, 2.2246, 0.0, -2.7415],
        ],
    ),
    (2, 4): (
        [
            [1, 0, 0, 1, 0, 1, 0, 1],
            [0, 1, 0, 1, 0, 1, 1, 0],
            [1, 0, 0, 1, 1, 0, 0, 1],
            [1, 1, 0, 0, 1, 1, 0, 0],
        ],
        [
            [-1.1258, 0.0, 0.0, -0.9166, 0.0, 1.9782, 0.0, -3.8507],
            [0.0, -1.0601, 0.0, 0.2588, 0.0, 1.7338, 1.3019, 0.0],
            [-1.3527, 0.0, 0.0, 0.7018, -0.8822, 0.0, 0.0, -0.3118],
            [0.7502, -0.5855, 0.0, 0.0, 1.5093, 1.5194, 0.0, 0.0],
        ],
    ),
}


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_obs_adaptive_matches_the_old_sparsegpt_numbers(nm: tuple[int, int] | None) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 8, generator=gen)
    x = torch.randn(32, 8, generator=gen) @ torch.randn(8, 8, generator=gen)
    h = 2 * x.T @ x / x.shape[0]
    model = nn.Sequential(nn.Linear(8, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w)
    structure = NM(*nm) if nm else None
    masks = magnitude_masks(model, 0.5, structure="nm" if nm else "unstructured")
    new, keep = obs_reconstruct(
        w, h, masks["0.weight"], select="adaptive", m=nm[1] if nm else None, blocksize=4
    )
    old_mask, old_weight = OLD_SPARSEGPT[nm]
    assert keep.int().tolist() == old_mask
    torch.testing.assert_close(new, torch.tensor(old_weight), rtol=0, atol=1e-4)
    # the same through the model-level entry, from the layer's calibration input
    out = reconstruct(model, masks, OBS("adaptive", blocksize=4), data=x, structure=structure)
    assert out["0.weight"].int().tolist() == old_mask
    torch.testing.assert_close(model[0].weight.detach(), torch.tensor(old_weight), rtol=0, atol=1e-4)


def test_obs_adaptive_nm_on_a_conv_holds_n_of_m_in_the_implicit_gemm_order() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1))
    x = conv_data()
    dense = model[0].weight.detach().clone()
    masks = magnitude_masks(model, 0.5, structure="nm")  # 2:4 over (kh, kw, in), inputs innermost
    out = reconstruct(model, masks, OBS("adaptive", blocksize=12), data=x, structure=NM(2, 4))
    mask = out["0.weight"]
    assert NM(2, 4).to_groups(mask).sum(1).eq(2).all()
    assert torch.equal(model[0].weight != 0, mask)

    def error(weight: torch.Tensor) -> float:
        return float((F.conv2d(x, dense, padding=1) - F.conv2d(x, weight, padding=1)).norm())

    assert error(model[0].weight.detach()) < error(dense * masks["0.weight"])


def test_snip_mask_then_obs_keeps_the_snip_mask() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    x = correlated(64, 32)
    y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(1))
    dense = model[0].weight.detach().clone()
    masks = compute_masks(model, 0.6, criterion="snip", data=(x, y))
    out = reconstruct(model, masks, "obs", data=(x, y))
    assert out.equal(masks)
    for name in masks:
        assert torch.equal(dict(model.named_parameters())[name] != 0, masks[name]), name
    plain = float((x @ dense.T - x @ (dense * masks["0.weight"]).T).norm())
    assert float((x @ dense.T - x @ model[0].weight.detach().T).norm()) < 0.95 * plain


# -- sequential calibration ---------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class BlockNet(nn.Module):
    """A stem, three repeated residual blocks in a ModuleList, a head."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(4, 8, 3, padding=1)
        self.blocks = nn.ModuleList([Block(8) for _ in range(3)])
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean((2, 3)))


def calibration() -> list[torch.Tensor]:
    return list(conv_data().split(4))


def test_sequential_feeds_each_block_the_outputs_of_the_pruned_blocks() -> None:
    model, dense = BlockNet(), BlockNet()
    seen: dict[int, list[torch.Tensor]] = {}
    prune_sequential(
        model, 0.5, criterion="wanda", structure="rows", data=calibration(), on_block=seen.__setitem__
    )
    assert sorted(seen) == [0, 1, 2]
    with torch.no_grad():
        for i, x in enumerate(calibration()):
            assert torch.equal(seen[0][i], dense.stem(x))  # nothing pruned before block 0 (the stem stays)
            for b in (1, 2):
                fed = seen[b - 1][i]
                pruned_out, dense_out = model.blocks[b - 1](fed), dense.blocks[b - 1](fed)
                assert torch.equal(seen[b][i], pruned_out)  # the pruned block's output ...
                assert (pruned_out - dense_out).abs().max() > 1e-3  # ... not the dense one's


def test_sequential_wanda_reads_the_norms_of_each_blocks_own_inputs() -> None:
    model = BlockNet()
    seen: dict[int, list[torch.Tensor]] = {}
    prune_sequential(
        model, 0.5, criterion="wanda", structure="rows", data=calibration(), on_block=seen.__setitem__
    )
    dense = BlockNet()
    for b in range(3):
        conv = dense.blocks[b].conv1
        norms = unfolded_norms(torch.cat(seen[b]), conv)
        scores = conv.weight.detach().abs() * norms.reshape(conv.weight.shape[1:])
        by_hand = masks_from_scores({"w": scores}, 0.5, allocation="uniform", structure=Rows())["w"]
        assert torch.equal(model.blocks[b].conv1.weight != 0, by_hand), b


def test_sequential_prunes_only_inside_the_blocks_with_exact_counts_and_records_masks() -> None:
    model = BlockNet()
    stem, head = model.stem.weight.detach().clone(), model.head.weight.detach().clone()
    reports = prune_sequential(
        model,
        0.37,
        criterion="magnitude",
        data=calibration(),
        reconstruct={"method": "obs", "select": "adaptive"},
    )
    assert [r.name for r in reports] == [f"blocks.{b}.conv{c}.weight" for b in range(3) for c in (1, 2)]
    params = dict(model.named_parameters())
    for r in reports:
        assert r.pruned == int((params[r.name] == 0).sum()) == round_half_up(0.37 * r.numel), r.name
        assert r.tokens == 8 * 36  # 8 images × 6·6 patches
    assert torch.equal(model.stem.weight, stem) and torch.equal(model.head.weight, head)
    masks = masks_of(model)
    assert masks is not None and sorted(masks) == sorted(r.name for r in reports)


def test_sequential_magnitude_without_reconstruction_needs_no_data() -> None:
    model = BlockNet()
    reports = prune_sequential(model, 0.5, criterion="magnitude", structure="nm")
    for r in reports:
        assert NM(2, 4).to_groups(dict(model.named_parameters())[r.name] != 0).sum(1).eq(2).all()
        assert r.tokens == 0


@pytest.mark.parametrize("criterion", ["snip", "grasp", "taylor", "synflow"])
def test_sequential_with_a_gradient_criterion_is_a_config_error(criterion: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"criterion '{criterion}' needs gradients.*magnitude, random, wanda"
    ):
        prune_sequential(BlockNet(), 0.5, criterion=criterion, data=calibration())


def test_sequential_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"sequential calibration prunes structures inside one parameter"):
        prune_sequential(BlockNet(), 0.5, structure="channel", data=calibration())
    with pytest.raises(ConfigError, match=r"'wanda' needs calibration data"):
        prune_sequential(BlockNet(), 0.5, criterion="wanda")
    with pytest.raises(ConfigError, match="no selected parameter lies inside the blocks"):
        prune_sequential(BlockNet(), 0.5, layers={"include": ["head"]})
    two = nn.Sequential(nn.Sequential(Block(2), Block(2)), nn.Sequential(Block(2), Block(2)))
    with pytest.raises(ConfigError, match=r"several candidates: 0, 1.*blocks"):
        find_blocks(two)
    assert [n for n, _ in find_blocks(two, ["0", "1"])] == ["0.0", "0.1", "1.0", "1.1"]


# -- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"method": "obs", "select": "greedy"},
            r"obs option select must be one of fixed, adaptive, got 'greedy'",
        ),
        ({"method": "obs", "blocksize": 0}, r"obs option blocksize must be a positive integer, got 0"),
        ({"method": "obs", "percdamp": -0.1}, r"obs option percdamp must be a non-negative number"),
        ({"method": "obs", "damp": 0.1}, r"reconstruction 'obs' has no option 'damp'"),
        ({"method": "sgpt"}, r"unknown reconstruction 'sgpt'"),
        ({"select": "fixed"}, r"needs a `method`"),
    ],
)
def test_bad_reconstruction_options_are_config_errors(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_reconstruction(spec)


def test_reconstruction_rejects_what_it_cannot_keep() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten())
    masks = magnitude_masks(model, 0.5)
    with pytest.raises(ConfigError, match=r"not '0.weight' \(Conv2d with groups=2\).*layers.exclude"):
        reconstruct(model, masks, "obs", data=conv_data())
    linear = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(
        ConfigError, match=r"select: adaptive chooses its own.*not a 'rows' one.*select: fixed"
    ):
        reconstruct(
            linear, magnitude_masks(linear, 0.5), OBS("adaptive"), structure=Rows(), data=torch.randn(4, 8)
        )
    with pytest.raises(ConfigError, match=r"blocksize 6 is not a multiple of the N:M group length m=4"):
        OBS("adaptive", blocksize=6).check(NM(2, 4))
    with pytest.raises(ConfigError, match="needs calibration data"):
        reconstruct(linear, magnitude_masks(linear, 0.5), "obs")
