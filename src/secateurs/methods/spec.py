"""A prune step's configuration: criterion × allocation × structure × layers, at a sparsity.

Shared by prune stages and by pruning during training (`methods.training.gradual`). Every name
and every option is checked when the recipe is read: the criterion and the structure are built
with their options, the allocation's options validated against its signature, the sanity check
looked up, so a misspelt option fails before any training.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError
from secateurs.core.registry import validate_options
from secateurs.methods.allocations import ALLOCATIONS
from secateurs.methods.criteria import CRITERIA, build_criterion
from secateurs.methods.layers import LayerSelection
from secateurs.methods.sanity import SANITY
from secateurs.methods.structures import STRUCTURES, build_structure


class PruneSpec(StrictModel):
    """criterion × allocation × structure × layers, at a sparsity."""

    criterion: str = "magnitude"
    criterion_options: dict[str, Any] = Field(default_factory=dict)
    allocation: str = "global"
    allocation_options: dict[str, Any] = Field(default_factory=dict)
    structure: str = "unstructured"
    structure_options: dict[str, Any] = Field(default_factory=dict)
    sparsity: float | None = Field(None, ge=0, lt=1)
    layers: LayerSelection | None = None
    allow_collapse: bool = False
    data_batches: int = Field(1, gt=0, description="batches fed to data-dependent criteria")
    data_batch_size: int = Field(128, gt=0)
    samples_per_class: int | None = Field(
        None,
        gt=0,
        description="feed data-dependent criteria one class-balanced batch of this many samples per class "
        "(default: the criterion's own, e.g. 10 for snip and grasp; loader batches for the others)",
    )
    rounds: int = Field(1, gt=0, description="prune in rounds on the exponential schedule (SynFlow: 100)")
    sanity: str = Field(
        "none", description="a sanity check of the criterion (`secateurs methods`); none: no check"
    )

    @model_validator(mode="after")
    def _known_names_and_options(self) -> PruneSpec:
        """Unknown names and options fail when the recipe is read, not stages later (nor in a sweep)."""
        for registry, value in (
            (STRUCTURES, self.structure),
            (CRITERIA, self.criterion),
            (ALLOCATIONS, self.allocation),
            (SANITY, self.sanity),
        ):
            known(registry, value)
        try:
            build_structure(self.structure, **self.structure_options)
            build_criterion(self.criterion, **self.criterion_options)
            validate_options(
                ALLOCATIONS.get(self.allocation),
                self.allocation_options,
                where=f"allocation {self.allocation!r}",
            )
        except ConfigError as err:
            raise ValueError(err.what + (f" ({err.fix})" if err.fix else "")) from None
        return self


def known(registry: Any, name: str) -> None:
    """The registry's own message for an unknown name (with its "did you mean"), as a field error."""
    try:
        registry.get(name)
    except ConfigError as err:
        raise ValueError(f"{err.what} Use one of: {', '.join(registry.names())}") from None
