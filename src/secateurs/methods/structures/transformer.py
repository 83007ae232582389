"""Attention heads and FFN channels of Hugging Face transformers (Llama, BERT).

The groups come from `secateurs.graph.hf_channel_graph`: with grouped-query attention a key/value
head goes together with the query heads reading it; an FFN channel is a gate/up row with its
down column. A unit is one block's heads (or FFN channels). By default a group's score is the L2
norm of every weight it owns (rows and columns: `pool: l2, side: all`); criteria defined on a
layer's inputs, such as Wanda, score the columns reading the group (`side: consumers`).
"""

from __future__ import annotations

from torch import nn

from secateurs.graph.hf import architecture, hf_channel_graph
from secateurs.methods.allocations.base import check_round_to
from secateurs.methods.structures.base import STRUCTURES, Layout, LayoutContext, Structure, check_pooling
from secateurs.methods.structures.channel import check_max_per_layer
from secateurs.methods.structures.groups import graph_layout


class TransformerGroups(Structure):
    """Head groups and/or FFN channels of every transformer block (`parts`).

    `round_to`: every block keeps a multiple of this many heads / FFN channels (or all of them).
    """

    default_pool = "l2"
    default_side = "all"
    parts: tuple[str, ...] = ("heads", "ffn")

    def __init__(
        self,
        max_per_layer: float = 0.9,
        pool: str | None = None,
        side: str | None = None,
        round_to: int = 1,
    ) -> None:
        self.max_per_layer = check_max_per_layer(max_per_layer, self.name)
        self.round_to = check_round_to(round_to)
        check_pooling(self.name, pool, side)
        self.pool, self.side = pool, side

    def check_model(self, model: nn.Module) -> None:
        architecture(model)  # a clear error for a model that is not a Llama or BERT

    def layout(self, ctx: LayoutContext) -> Layout:
        return graph_layout(self, ctx, hf_channel_graph(ctx.model, self.parts))


@STRUCTURES.register(
    "heads", "attention heads of a Hugging Face Llama/BERT (GQA: a key/value head with its queries)"
)
class Heads(TransformerGroups):
    name = "heads"
    parts = ("heads",)


@STRUCTURES.register("ffn", "FFN channels of a Hugging Face Llama/BERT (gate, up and down together)")
class FFNChannels(TransformerGroups):
    name = "ffn"
    parts = ("ffn",)


@STRUCTURES.register("heads_ffn", "attention heads and FFN channels together")
class HeadsAndFFN(TransformerGroups):
    name = "heads_ffn"
    parts = ("heads", "ffn")
