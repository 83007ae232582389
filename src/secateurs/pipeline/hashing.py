"""Naming a run by its configuration, so that the same experiment is found again, not re-run.

The name is a hash of the recipe's *non-default* values (plus every stage's `kind` and every
registry `name`): two YAML files that differ only in key order or in spelling out a default
describe the same run and get the same hash; any changed value (a seed, a sparsity, an option)
gives another. Because defaults are left out, a field added in a later version whose default
keeps the old behaviour leaves every existing hash unchanged, so stored results stay findable
(the open_lth rule). The store itself keeps the full config, every default filled in.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from secateurs.pipeline.recipe import Recipe

ALWAYS_KEPT = frozenset({"kind", "name"})
"""Fields kept even at their default: they say what a stage or a schedule *is*."""
COSMETIC = ("name", "description")
"""Top-level recipe fields that label an experiment without changing it: not hashed."""
EXECUTION = ("device", "compile", "channels_last")
"""Top-level fields that say where and how fast the same computation runs: not hashed, so a run
found on one machine is found from another (`precision` changes the arithmetic: hashed)."""

HASH_LENGTH = 16
"""Hex characters kept: 64 bits, so a collision needs about 4 billion runs in one store."""


def recipe_config(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain JSON data, every default filled in (what the hash and the store keep)."""
    return recipe.model_dump(mode="json", by_alias=True)


def essential(value: Any) -> Any:
    """`value` as plain data with every field at its default left out (recursively)."""
    if isinstance(value, BaseModel):
        out = {}
        flattened = getattr(type(value), "flattened", ())
        for name, field in type(value).model_fields.items():
            item = getattr(value, name)
            if name in flattened:  # registered components' options, written beside the fields
                inner = essential(item)
                out.update(inner if isinstance(inner, dict) else {})
            elif name in ALWAYS_KEPT or item != field.get_default(call_default_factory=True):
                out[field.alias or name] = essential(item)
        return out
    if isinstance(value, list | tuple):
        return [essential(v) for v in value]
    if isinstance(value, dict):
        return {str(k): essential(v) for k, v in value.items()}
    return value


def canonical_json(data: Any) -> str:
    """One fixed text per value: sorted keys, no whitespace, so equal configs hash equally."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def run_hash(recipe: Recipe) -> str:
    """The run's name: the first 16 hex characters of the sha256 of the recipe's essential values."""
    config = {k: v for k, v in essential(recipe).items() if k not in COSMETIC + EXECUTION}
    digest = hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()
    return digest[:HASH_LENGTH]
