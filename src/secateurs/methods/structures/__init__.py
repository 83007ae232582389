"""Structures registry: importing this package registers every built-in structure.

A new structure is one file here (a `Structure` subclass registered in `STRUCTURES`) and one
import line below.
"""

from secateurs.core.topk import balanced_topk
from secateurs.methods.structures import block, channel, nm, transformer, unstructured  # noqa: F401
from secateurs.methods.structures.base import (
    STRUCTURES,
    ElementLayout,
    ElementStructure,
    Layout,
    LayoutContext,
    PoolSpec,
    Structure,
    Unit,
    build_structure,
)
from secateurs.methods.structures.block import Block
from secateurs.methods.structures.channel import Channel
from secateurs.methods.structures.nm import NM, Rows
from secateurs.methods.structures.pooling import POOLINGS, Pooling
from secateurs.methods.structures.transformer import FFNChannels, Heads, HeadsAndFFN
from secateurs.methods.structures.unstructured import Unstructured

__all__ = [
    "NM",
    "POOLINGS",
    "STRUCTURES",
    "Block",
    "Channel",
    "ElementLayout",
    "ElementStructure",
    "FFNChannels",
    "Heads",
    "HeadsAndFFN",
    "Layout",
    "LayoutContext",
    "PoolSpec",
    "Pooling",
    "Rows",
    "Structure",
    "Unit",
    "Unstructured",
    "balanced_topk",
    "build_structure",
]
