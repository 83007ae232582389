"""Channels: whole filters or neurons, with every channel coupled to them (the channel graph).

The model is traced (`secateurs.graph.analyze`) on an example input; each group is a set of
channels that must be removed together (a conv's filter with the next conv's input column and
the BatchNorm entries between them; residual partners; concatenated or split channels). A prune
masks whole groups, which is exactly what removing them computes (`secateurs.structured.shrink`
makes the smaller model). Any criterion scores channels: its element scores are pooled over each
group's filters (`pool`, default l1: Li et al. 2017's filter norm) or over the columns reading
it (`side: consumers`), or the criterion scores groups itself (bn_scale, fpgm, random).
"""

from __future__ import annotations

from collections.abc import Sequence

from secateurs.core.errors import ConfigError
from secateurs.graph.analysis import analyze
from secateurs.methods.allocations.base import check_round_to
from secateurs.methods.structures.base import STRUCTURES, Layout, LayoutContext, Structure, check_pooling
from secateurs.methods.structures.groups import graph_layout


def check_max_per_layer(value: object, structure: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(
            f"{structure} option max_per_layer must be a fraction in (0, 1], got {value!r}",
            where="structure_options",
            fix="e.g. max_per_layer: 0.9 removes at most 90 % of any layer's groups",
        )
    return float(value)


@STRUCTURES.register("channel", "whole channels or neurons with everything coupled to them (channel graph)")
class Channel(Structure):
    """Channel groups of a traced model (see the module docstring).

    `exclude`: module name patterns kept whole (their output channels stay, and ops inside them
    the engine cannot follow keep their channels). `max_per_layer`: the most of any layer's
    groups an allocation ranking across layers (global) removes. `pool`, `side`: how element
    scores become a group's score (default: the criterion's preference, else l1 over the producing
    filters). `through_norms`: prune channels that a LayerNorm normalises together (not exact:
    the kept channels' statistics change; `prune_channels` reports the output deviation).
    `round_to`: every layer keeps a multiple of this many channels (or all of them; see
    `methods.allocations.base.round_counts`), with any allocation.
    """

    name = "channel"

    def __init__(
        self,
        exclude: Sequence[str] = (),
        max_per_layer: float = 0.9,
        pool: str | None = None,
        side: str | None = None,
        through_norms: bool = False,
        round_to: int = 1,
    ) -> None:
        if isinstance(exclude, str) or not all(isinstance(p, str) for p in exclude):
            raise ConfigError(
                f"channel option exclude must be a list of module name patterns, got {exclude!r}",
                where="structure_options",
                fix="e.g. exclude: ['features.0', 'classifier.*']",
            )
        self.exclude = list(exclude)
        self.max_per_layer = check_max_per_layer(max_per_layer, "channel")
        check_pooling("channel", pool, side)
        self.pool, self.side = pool, side
        self.through_norms = bool(through_norms)
        self.round_to = check_round_to(round_to)

    def layout(self, ctx: LayoutContext) -> Layout:
        if ctx.example_input is None:
            raise ConfigError(
                "structure channel traces the model and needs an example input",
                fix="pass example_input= (one batch) or input_shape= (one sample) to prune()/compute_masks()",
            )
        graph = analyze(ctx.model, ctx.example_input, exclude=self.exclude, through_norms=self.through_norms)
        return graph_layout(self, ctx, graph)
