"""Blocks: bh × bw tiles of a weight's [out, in·kh·kw] matrix, kept or pruned whole."""

from __future__ import annotations

import math

from torch import Tensor

from secateurs.core.errors import ConfigError
from secateurs.methods.structures.base import STRUCTURES, ElementStructure, check_pooling, positive_int
from secateurs.methods.structures.pooling import POOLINGS, pool_table


@STRUCTURES.register("block", "bh × bw blocks of the [out, in·kh·kw] weight matrix")
class Block(ElementStructure):
    """Blocks of bh × bw entries of the 2-D view [out, in·kh·kw] (PyTorch's natural flatten order).

    A block's score pools its element scores (`pool`, see `pooling.py`; by default the criterion's
    preference, else "l1"): "l1" sums |s| (for saliency criteria the first-order loss change of
    removing the block is the sum of its elements'), "l2" is sqrt(Σ s²) (with magnitude scores, the
    block's Frobenius norm: keeping the top blocks by it is the nearest block-sparse weight).
    Already-pruned elements arrive scored −∞: they are left out of the pool, and a block with no
    finite score left pools to −∞, so it stays last.
    """

    name = "block"

    def __init__(self, bh: int = 4, bw: int = 4, pool: str | None = None) -> None:
        self.bh = positive_int(bh, "block option bh")
        self.bw = positive_int(bw, "block option bw")
        check_pooling("block", pool)
        self.pool = pool

    @property
    def pools(self) -> bool:
        return True

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        """A parameter must have a 2-D view [out, rest] that bh × bw blocks tile exactly."""
        if len(shape) < 2:
            raise ConfigError(
                f"block structure needs a weight matrix, but {name!r} has shape {list(shape)}",
                fix="exclude it via the layer selection (layers.exclude), or keep biases out "
                "(layers.include_bias: false)",
            )
        rows, cols = shape[0], math.prod(shape[1:])
        if rows % self.bh or cols % self.bw:
            raise ConfigError(
                f"block structure {self.bh}×{self.bw}: parameter {name!r} of shape {list(shape)} "
                f"(matrix {rows}×{cols}) is not tiled by whole blocks",
                fix=f"exclude it via the layer selection (layers.exclude), or choose bh dividing {rows} "
                f"and bw dividing {cols}",
            )

    def to_blocks(self, t: Tensor) -> Tensor:
        """Parameter-shaped tensor → [num_blocks, bh·bw], blocks in row-major block order."""
        self.check("parameter", tuple(t.shape))
        rows = t.shape[0]
        m = t.reshape(rows // self.bh, self.bh, -1, self.bw)
        return m.permute(0, 2, 1, 3).reshape(-1, self.bh * self.bw)

    def from_blocks(self, blocks: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Inverse of `to_blocks`."""
        rows, cols = shape[0], math.prod(shape[1:])
        m = blocks.reshape(rows // self.bh, cols // self.bw, self.bh, self.bw).permute(0, 2, 1, 3)
        return m.reshape(shape)

    def num_groups(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) // (self.bh * self.bw)

    def group_size(self, shape: tuple[int, ...]) -> int:
        return self.bh * self.bw

    def group_scores(self, scores: Tensor, pooling: str | None = None) -> Tensor:
        """Pooled block scores; `pooling` (the prune's resolved one) wins over the structure's own."""
        return pool_table(self.to_blocks(scores), POOLINGS.get(pooling or self.pool or "l1"))

    def expand(self, keep: Tensor, shape: tuple[int, ...]) -> Tensor:
        blocks = keep.reshape(-1, 1).expand(-1, self.bh * self.bw)
        return self.from_blocks(blocks, shape)
