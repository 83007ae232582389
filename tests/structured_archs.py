"""Small architectures whose channel couplings a structured pruner must follow.

Each model covers one coupling pattern seen in real networks (flatten into a Linear, depthwise and
grouped convs, concatenation, chunk/split, channel shuffle, squeeze-and-excitation gates, channels-last
LayerNorm, transposed convs, multi-head attention with reshapes driven by module attributes, window
attention, patch merging). All are tiny (<= 200k parameters), traceable by torch.fx, and built
deterministically with BatchNorm running statistics taken from real batches, so pruning tests can
compare outputs exactly. Not a test file: tests import `ARCHITECTURES` and `build`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from secateurs.models import build_model

CIFAR = (3, 32, 32)
INPUT_SEED = 1234
WARMUP_BATCHES = 3
WARMUP_BATCH_SIZE = 8


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, bias: bool = True) -> nn.Sequential:
    """Conv (same padding) + BN + ReLU, the most common prunable unit."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class VGGBN(nn.Module):
    """Three conv-BN-ReLU-maxpool blocks, then a real C*H*W flatten into the classifier.

    Pruning a channel of the last conv removes H*W=16 consecutive input columns of `fc1`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.block1 = conv_bn_relu(3, 16)
        self.pool1 = nn.MaxPool2d(2)
        self.block2 = conv_bn_relu(16, 32)
        self.pool2 = nn.MaxPool2d(2)
        self.block3 = conv_bn_relu(32, 32)
        self.pool3 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.pool3(self.block3(x))
        x = torch.flatten(x, 1)
        return self.fc2(self.relu(self.fc1(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise 3x3, 1x1 linear project; identity add when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.expand = nn.Conv2d(cin, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act1 = nn.ReLU6()
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act2 = nn.ReLU6()
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.expand(x)))
        out = self.act2(self.bn2(self.depthwise(out)))
        out = self.bn3(self.project(out))
        if self.use_residual:  # a Python bool fixed at construction: fx records one branch
            out = out + x
        return out


class MobileNetV2Block(nn.Module):
    """Stem, a stride-1 residual inverted block, a stride-2 non-residual one, GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.block1 = InvertedResidual(16, 16, stride=1, expand=4)
        self.block2 = InvertedResidual(16, 24, stride=2, expand=4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 producing `growth` new channels (pre-activation, as in DenseNet)."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(cin, growth, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.relu(self.bn(x)))


class DenseNetBlock(nn.Module):
    """Stem, three dense layers each concatenating its output to its input, a transition, GAP, Linear.

    Every dense layer reads all earlier channels, so a stem channel feeds four consumers at different
    offsets of their input.
    """

    def __init__(self) -> None:
        super().__init__()
        growth = 8
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layer1 = DenseLayer(16, growth)
        self.layer2 = DenseLayer(16 + growth, growth)
        self.layer3 = DenseLayer(16 + 2 * growth, growth)
        channels = 16 + 3 * growth
        self.trans_bn = nn.BatchNorm2d(channels)
        self.trans_relu = nn.ReLU()
        self.trans_conv = nn.Conv2d(channels, 20, 1)
        self.trans_pool = nn.AvgPool2d(2)
        self.bn = nn.BatchNorm2d(20)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(20, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.layer1(x)], dim=1)
        x = torch.cat([x, self.layer2(x)], dim=1)
        x = torch.cat([x, self.layer3(x)], dim=1)
        x = self.trans_pool(self.trans_conv(self.trans_relu(self.trans_bn(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's shuffle: (g, c/g) -> (c/g, g), so channel i moves to (i % (c/g)) * g + i // (c/g)."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = x.transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


class ShuffleBranch(nn.Module):
    """The ShuffleNetV2 right branch: 1x1 conv-BN-ReLU, depthwise 3x3-BN, 1x1 conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.depthwise = nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.bn2(self.depthwise(x))
        return self.relu2(self.bn3(self.conv2(x)))


class ShuffleNetUnit(nn.Module):
    """Stem, one ShuffleNetV2 unit (`chunk` into halves, branch on the second, cat, shuffle), GAP, Linear.

    The first half passes through untouched, so the stem's first 12 channels are bound to the unit's
    output channels they shuffle to.
    """

    def __init__(self) -> None:
        super().__init__()
        self.groups = 2
        self.stem = conv_bn_relu(3, 24, bias=False)
        self.branch = ShuffleBranch(12, 12)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x1, x2 = x.chunk(2, dim=1)
        x = torch.cat((x1, self.branch(x2)), 1)
        x = channel_shuffle(x, self.groups)
        return self.fc(torch.flatten(self.pool(x), 1))


class ShuffleNetSplit(nn.Module):
    """Like `ShuffleNetUnit` but with an unequal `torch.split(x, [8, 16], dim=1)` and a wider branch.

    The branch widens 16 -> 16 so the concatenation has 8 + 16 = 24 channels; the offsets of the
    split and of the cat differ, which `chunk` alone would not exercise.
    """

    def __init__(self) -> None:
        super().__init__()
        self.groups = 2
        self.split_sizes = [8, 16]
        self.stem = conv_bn_relu(3, 24, bias=False)
        self.branch = ShuffleBranch(16, 16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x1, x2 = torch.split(x, self.split_sizes, dim=1)
        x = torch.cat((x1, self.branch(x2)), 1)
        x = channel_shuffle(x, self.groups)
        return self.fc(torch.flatten(self.pool(x), 1))


class SqueezeNetFire(nn.Module):
    """Stem, a fire module (1x1 squeeze; 1x1 and 3x3 expands concatenated), pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.stem_relu = nn.ReLU()
        self.squeeze = nn.Conv2d(32, 8, 1)
        self.squeeze_relu = nn.ReLU()
        self.expand1x1 = nn.Conv2d(8, 16, 1)
        self.expand3x3 = nn.Conv2d(8, 16, 3, padding=1)
        self.expand_relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_relu(self.stem(x))
        s = self.squeeze_relu(self.squeeze(x))
        x = self.expand_relu(torch.cat([self.expand1x1(s), self.expand3x3(s)], 1))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResNeXtBlock(nn.Module):
    """Stem, a bottleneck whose 3x3 conv has groups=4 (32 -> 32), identity add, GAP, Linear.

    Pruning the grouped conv must remove whole channels per group consistently (8 per group).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 32, bias=False)
        self.conv1 = nn.Conv2d(32, 32, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(32, 32, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        x = self.relu3(out + x)
        return self.fc(torch.flatten(self.pool(x), 1))


class SqueezeExcite(nn.Module):
    """GAP -> Linear reduce -> ReLU -> Linear expand -> sigmoid, gating the input per channel.

    The gate is reshaped with `self.channels`, an attribute a pruner must update.
    """

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.channels = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Linear(channels, reduced)
        self.relu = nn.ReLU()
        self.expand = nn.Linear(reduced, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = torch.flatten(self.pool(x), 1)
        s = self.gate(self.expand(self.relu(self.reduce(s))))
        return x * s.view(-1, self.channels, 1, 1)


class SEBlock(nn.Module):
    """Stem, conv-BN-ReLU, squeeze-and-excitation, GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 16)
        self.conv = conv_bn_relu(16, 32, stride=2)
        self.se = SqueezeExcite(32, 8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.se(self.conv(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ConvNeXtBlock(nn.Module):
    """Patchify stem, one ConvNeXt block (dw 7x7, channels-last LN + MLP, layer scale), GAP-LN-Linear.

    Channels live on dim 1 around the depthwise conv and on the last dim inside the MLP; `gamma` is a
    per-channel Parameter that is neither a conv nor a norm weight.
    """

    def __init__(self) -> None:
        super().__init__()
        dim = 32
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-1 * torch.ones(dim))
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        x = shortcut + x
        return self.head(self.head_norm(x.mean([-2, -1])))


class UNetSmall(nn.Module):
    """Encoder, maxpool, bottleneck, ConvTranspose2d up, skip concatenation, decoder, GAP, Linear.

    A ConvTranspose2d stores its weight as (in, out, kH, kW): output channels are on dim 1.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = conv_bn_relu(3, 16)
        self.enc2 = conv_bn_relu(16, 16)
        self.down = nn.MaxPool2d(2)
        self.bottleneck = conv_bn_relu(16, 32)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec = conv_bn_relu(32, 16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.enc2(self.enc1(x))
        x = self.bottleneck(self.down(skip))
        x = self.dec(torch.cat([self.up(x), skip], dim=1))
        return self.fc(torch.flatten(self.pool(x), 1))


class Attention(nn.Module):
    """Hand-written multi-head self-attention; reshapes use `num_heads`, `head_dim` and `hidden_dim`."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.hidden_dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.hidden_dim)
        return self.proj(x)


class Mlp(nn.Module):
    """Linear-GELU-Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbedCLS(nn.Module):
    """Conv patchify (4x4), tokens as (B, N, D), a class token in front, learned position embedding."""

    def __init__(self, dim: int, num_patches: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, num_patches + 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        return x + self.pos_embed


class ViTTiny(nn.Module):
    """Patch embedding + class token, 2 pre-norm blocks with hand-written attention, LN, head on CLS."""

    def __init__(self) -> None:
        super().__init__()
        dim = 48
        self.embed = PatchEmbedCLS(dim, num_patches=64)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, num_heads=4, mlp_ratio=2) for _ in range(2)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.blocks(self.embed(x)))
        return self.head(x[:, 0])


class MHABlock(nn.Module):
    """Pre-norm block whose attention is `nn.MultiheadAttention` (fused in_proj_weight of 3*D rows)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViTMHA(nn.Module):
    """Like `ViTTiny` with one block whose attention is `nn.MultiheadAttention(48, 4, batch_first=True)`."""

    def __init__(self) -> None:
        super().__init__()
        dim = 48
        self.embed = PatchEmbedCLS(dim, num_patches=64)
        self.block = MHABlock(dim, num_heads=4, mlp_ratio=2)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.block(self.embed(x)))
        return self.head(x[:, 0])


def relative_position_index(window: int) -> Tensor:
    """(w*w, w*w) indices into a ((2w-1)^2, heads) table: one entry per relative (dy, dx) offset."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)  # (2, w*w)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # (w*w, w*w, 2)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class WindowAttention(nn.Module):
    """Multi-head attention inside each window, plus a learned relative position bias per head."""

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_area = window * window
        self.relative_position_bias_table = nn.Parameter(0.02 * torch.randn((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B_, N, _ = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(self.window_area, self.window_area, -1).permute(2, 0, 1).contiguous()
        attn = (attn + bias.unsqueeze(0)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, self.dim)
        return self.proj(x)


class SwinBlock(nn.Module):
    """Window attention (no shift) and MLP, pre-norm with residuals, on (B, H*W, C) tokens."""

    def __init__(self, dim: int, resolution: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.resolution = resolution
        self.window = window
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        r, w, c = self.resolution, self.window, self.dim
        shortcut = x
        x = self.norm1(x).view(-1, r, r, c)
        # partition into (B * windows, w*w, C)
        x = x.view(-1, r // w, w, r // w, w, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, w * w, c)
        x = self.attn(x)
        # reverse back to (B, H*W, C)
        x = x.view(-1, r // w, r // w, w, w, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, r * r, c)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood on channels (C -> 4C), LayerNorm, Linear 4C -> 2C without bias.

    Input channel i of the reduction reads token-channel i % C of neighbour i // C. No bias, as in Swin.
    """

    def __init__(self, dim: int, resolution: int) -> None:
        super().__init__()
        self.dim = dim
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        r = self.resolution
        x = x.view(-1, r, r, self.dim)
        x0 = x[:, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, :]
        x3 = x[:, 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], -1).view(-1, (r // 2) * (r // 2), 4 * self.dim)
        return self.reduction(self.norm(x))


class SwinTiny(nn.Module):
    """Patch embedding to 8x8 tokens of D=32, one Swin block (window 4), patch merging, LN, mean, head."""

    def __init__(self) -> None:
        super().__init__()
        dim, resolution = 32, 8
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.embed_norm = nn.LayerNorm(dim)
        self.block = SwinBlock(dim, resolution, window=4, num_heads=2)
        self.merge = PatchMerging(dim, resolution)
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, 64, D)
        x = self.merge(self.block(self.embed_norm(x)))
        return self.head(self.norm(x).mean(1))


def _resnet20() -> nn.Module:
    """The zoo's ResNet-20 at half width (8/16/32 channels, ~68k parameters); full width is ~272k."""
    return build_model("resnet20", CIFAR, 10, seed=0, width=0.5)


@torch.no_grad()
def _finish(model: nn.Module, input_shape: tuple[int, ...], seed: int) -> nn.Module:
    """Give norm layers non-trivial affine parameters and BN real running stats, then switch to eval.

    Default BN/LN weights are all 1 and biases 0, which makes magnitude criteria on them tie; running
    stats are set from random batches with a cumulative average (momentum=None) so they are the batch
    statistics rather than a few percent away from (0, 1).
    """
    gen = torch.Generator().manual_seed(seed + 1)
    norms = (nn.BatchNorm2d, nn.LayerNorm)
    for module in model.modules():
        if isinstance(module, norms) and module.weight is not None:
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for _ in range(WARMUP_BATCHES):
        model(0.3 + 1.5 * torch.randn(WARMUP_BATCH_SIZE, *input_shape, generator=gen))
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    return model.eval()


def _make(cls: Callable[[], nn.Module], input_shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """Build `cls` with parameters depending only on `seed`, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls()
    return _finish(model, input_shape, seed)


def _make_zoo(factory: Callable[[], nn.Module], input_shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """A zoo model (already seeded by `build_model`) finished like the local ones."""
    return _finish(factory(), input_shape, seed)


_LOCAL: dict[str, type[nn.Module]] = {
    "vgg_bn": VGGBN,
    "mobilenetv2_block": MobileNetV2Block,
    "densenet_block": DenseNetBlock,
    "shufflenet_unit": ShuffleNetUnit,
    "shufflenet_split": ShuffleNetSplit,
    "squeezenet_fire": SqueezeNetFire,
    "resnext_block": ResNeXtBlock,
    "se_block": SEBlock,
    "convnext_block": ConvNeXtBlock,
    "unet_small": UNetSmall,
    "vit_tiny": ViTTiny,
    "vit_mha": ViTMHA,
    "swin_block": SwinTiny,
}

ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    name: (partial(_make, cls, CIFAR), CIFAR) for name, cls in _LOCAL.items()
}
ARCHITECTURES["resnet20"] = (partial(_make_zoo, _resnet20, CIFAR), CIFAR)


def build(name: str, batch: int = 2) -> tuple[nn.Module, Tensor]:
    """Model `name` in eval mode and a fixed random input batch (same every call)."""
    builder, input_shape = ARCHITECTURES[name]
    gen = torch.Generator().manual_seed(INPUT_SEED)
    return builder(), torch.randn(batch, *input_shape, generator=gen)
