"""`nn.MultiheadAttention` after head or width pruning.

PyTorch's module ties three widths to one `embed_dim`: its query input, the concatenated heads
(num_heads × head_dim) and its output. Removing heads shrinks only the middle one, and removing
residual channels only the outer ones, so the pruned module no longer fits the class's
invariants. `PrunedMultiheadAttention` is the same module (a subclass: same parameters, same
state-dict keys, same call signature) whose forward lets the three widths differ.
`remove_channels` turns a sliced `nn.MultiheadAttention` into one by `adopt_pruned_attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secateurs.core.errors import ConfigError


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """Multi-head attention whose query, head and output widths may differ.

    Attributes after pruning: `embed_dim` (query width), `kdim`/`vdim` (key/value widths),
    `num_heads` (kept heads), `head_dim` (unchanged, so is the 1/√head_dim scale), `inner_dim`
    (num_heads·head_dim) and `out_dim` (the output projection's width). A 3-D `attn_mask` has
    N·num_heads rows for the *kept* heads; returned attention weights cover the kept heads.
    """

    inner_dim: int
    out_dim: int

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        length, batch = query.shape[0], query.shape[1]
        q, k, v = self._project(query, key, value)
        masks = [attn_mask, key_padding_mask]
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.repeat(1, batch, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, batch, 1)])
            masks = [None if m is None else F.pad(m, (0, 1)) for m in masks]
        heads, dim = self.num_heads, self.head_dim
        q, k, v = (t.reshape(t.shape[0], batch * heads, dim).transpose(0, 1) for t in (q, k, v))
        if self.add_zero_attn:
            zeros = torch.zeros(batch * heads, 1, dim, dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            masks = [None if m is None else F.pad(m, (0, 1)) for m in masks]
        bias = self._attention_bias(masks[0], masks[1], is_causal, batch, length, k.shape[1], q.dtype)
        scores = torch.bmm(q * (1.0 / math.sqrt(dim)), k.transpose(1, 2))
        if bias is not None:
            scores = scores + bias
        weights = scores.softmax(dim=-1)
        if self.training and self.dropout > 0.0:
            weights = F.dropout(weights, p=self.dropout)
        out = torch.bmm(weights, v).transpose(0, 1).reshape(length, batch, heads * dim)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.reshape(batch, heads, length, -1)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights.squeeze(0) if unbatched else weights

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The q, k, v projections, from the fused or the separate weights."""
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq = bk = bv = None
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias.chunk(3)
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def _attention_bias(
        self,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
        batch: int,
        length: int,
        source: int,
        dtype: torch.dtype,
    ) -> Tensor | None:
        """One additive bias of shape (batch·heads, length, source) from the masks (True = blocked)."""
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool).triu(1)
        bias = None
        if attn_mask is not None:
            bias = _additive(attn_mask, dtype)
            if bias.dim() == 2:
                bias = bias.unsqueeze(0)
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, dtype).reshape(batch, 1, 1, source)
            heads = self.num_heads
            padding = padding.expand(batch, heads, 1, source).reshape(batch * heads, 1, source)
            bias = padding if bias is None else bias + padding
        return bias


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True = not allowed) as −inf/0, a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def adopt_pruned_attention(module: nn.MultiheadAttention) -> None:
    """Make a sliced `nn.MultiheadAttention` a `PrunedMultiheadAttention`, its sizes read from its tensors.

    The object keeps its identity, parameters and state-dict keys; only its class (forward) and
    size attributes change.
    """
    if module._qkv_same_embed_dim:
        rows, module.embed_dim = module.in_proj_weight.shape
        inner = rows // 3
        module.kdim = module.vdim = module.embed_dim
    else:
        inner, module.embed_dim = module.q_proj_weight.shape
        module.kdim = module.k_proj_weight.shape[1]
        module.vdim = module.v_proj_weight.shape[1]
    if inner % module.head_dim:
        raise ConfigError(
            f"attention width {inner} is not a whole number of heads of {module.head_dim}",
            fix="remove whole heads only (secateurs' channel graph groups them that way)",
        )
    module.num_heads = inner // module.head_dim
    module.inner_dim = inner
    module.out_dim = module.out_proj.weight.shape[0]
    module.__class__ = PrunedMultiheadAttention
