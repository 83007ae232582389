"""Structures: how the elements of a parameter group together for pruning.

A structure pools element scores into group scores, and expands a per-group keep decision back
to an element mask. Unstructured pruning is the structure whose groups are single elements;
N:M, blocks and channels (later) are other structures behind the same three methods, so every
criterion, allocation and schedule works with every structure.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from secateurs.registry import Registry


class Structure(Protocol):
    """Groups of a parameter that are kept or pruned together."""

    name: str

    def num_groups(self, shape: tuple[int, ...]) -> int:
        """Number of groups in a parameter of this shape."""
        ...

    def group_size(self, shape: tuple[int, ...]) -> int:
        """Elements per group (all groups of a parameter have the same size)."""
        ...

    def group_scores(self, scores: Tensor) -> Tensor:
        """Element scores (parameter-shaped) → one score per group (1-D, length num_groups)."""
        ...

    def expand(self, keep: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Boolean keep decision per group (1-D) → boolean element mask of `shape`."""
        ...


STRUCTURES: Registry[type] = Registry("structure")


@STRUCTURES.register("unstructured", "every weight is its own group")
class Unstructured:
    """Each element is a group: the classic fine-grained sparsity."""

    name = "unstructured"

    def num_groups(self, shape: tuple[int, ...]) -> int:
        n = 1
        for d in shape:
            n *= d
        return n

    def group_size(self, shape: tuple[int, ...]) -> int:
        return 1

    def group_scores(self, scores: Tensor) -> Tensor:
        return scores.reshape(-1)

    def expand(self, keep: Tensor, shape: tuple[int, ...]) -> Tensor:
        return keep.reshape(shape)


def build_structure(name: str, **options: object) -> Structure:
    """Instantiate a registered structure by name."""
    return STRUCTURES.build(name, **options)  # type: ignore[return-value]
