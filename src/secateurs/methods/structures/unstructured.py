"""Unstructured: every weight is its own group, the classic fine-grained sparsity."""

from __future__ import annotations

import math

from torch import Tensor

from secateurs.methods.structures.base import STRUCTURES, ElementStructure


@STRUCTURES.register("unstructured", "every weight is its own group")
class Unstructured(ElementStructure):
    """Each element is a group."""

    name = "unstructured"

    def num_groups(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape)

    def group_size(self, shape: tuple[int, ...]) -> int:
        return 1

    def group_scores(self, scores: Tensor, pooling: str | None = None) -> Tensor:
        return scores.reshape(-1)

    def expand(self, keep: Tensor, shape: tuple[int, ...]) -> Tensor:
        return keep.reshape(shape)
