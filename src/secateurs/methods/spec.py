"""A prune step's configuration: criterion × allocation × structure × layers, at a sparsity.

Shared by prune stages and by pruning during training (`methods.training.gradual`). Every name
and every option is checked when the recipe is read: the criterion and the structure are built
with their options, the allocation's options validated against its signature, the sanity check
looked up, so a misspelt option fails before any training.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError
from secateurs.core.registry import validate_options
from secateurs.core.sparsity import Rounding
from secateurs.methods.allocations import ALLOCATIONS
from secateurs.methods.criteria import CRITERIA, build_criterion
from secateurs.methods.layers import LayerSelection
from secateurs.methods.reconstruction import build_reconstruction
from secateurs.methods.sanity import SANITY
from secateurs.methods.structures import STRUCTURES, ElementStructure, build_structure


class CalibrationFeed(StrictModel):
    """How calibration data reaches the criterion and the reconstruction of a prune step.

    `full`: the whole model runs on the batches (and gradients flow through it, for the criteria
    that need them). `sequential`: block by block, each block calibrated on the outputs of the
    already pruned ones before it (SparseGPT, Wanda; `secateurs.methods.sequential`); the batches
    are the data set's first `data_batches` training batches in order, and `blocks` optionally
    names the repeated blocks (a module path, or a list of them).
    """

    mode: Literal["full", "sequential"] = "full"
    blocks: str | list[str] | None = None


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
    round_schedule: Literal["exponential", "linear"] = Field(
        "exponential",
        description="density after round r of R: d^(r/R) (exponential, SynFlow's) or 1 - s·r/R (linear)",
    )
    rounding: Rounding = Field(
        "half_up",
        description="rounding of each removed count s·n: half_up, floor (the SynFlow and Wanda codes' "
        "int(s·n)) or ceil",
    )
    ties: Literal["index", "reverse", "random", "original"] = Field(
        "index",
        description="which of the scores tied at the cut are kept: the lower index, the higher, a seeded "
        "random one, or the reference codes' torch.topk/torch.sort order (original)",
    )
    sanity: str = Field(
        "none", description="a sanity check of the criterion (`secateurs methods`); none: no check"
    )
    calibration: CalibrationFeed = Field(default_factory=CalibrationFeed)
    reconstruct: str | dict[str, Any] | None = Field(
        None, description="update the kept weights after the mask, e.g. {method: obs, select: fixed}"
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
            structure = build_structure(self.structure, **self.structure_options)
            criterion = build_criterion(self.criterion, **self.criterion_options)
            reconstruction = build_reconstruction(self.reconstruct)
            if reconstruction is not None:
                reconstruction.check(structure)
            validate_options(
                ALLOCATIONS.get(self.allocation),
                self.allocation_options,
                where=f"allocation {self.allocation!r}",
            )
        except ConfigError as err:
            raise ValueError(err.what + (f" ({err.fix})" if err.fix else "")) from None
        if self.calibration.mode == "sequential":
            refused = [
                (
                    not criterion.layerwise,
                    f"criterion {self.criterion!r} (it needs gradients through the model)",
                ),
                (
                    not isinstance(structure, ElementStructure),
                    f"structure {self.structure!r} (it spans layers)",
                ),
                (self.rounds != 1, f"rounds {self.rounds}"),
                (self.sanity != "none", f"sanity check {self.sanity!r}"),
            ]
            problems = [what for bad, what in refused if bad]
            if problems:
                raise ValueError(
                    f"sequential calibration prunes block by block and cannot take {', '.join(problems)}: "
                    "use calibration mode full, or a layerwise criterion (magnitude, random, wanda)"
                )
        return self


def known(registry: Any, name: str) -> None:
    """The registry's own message for an unknown name (with its "did you mean"), as a field error."""
    try:
        registry.get(name)
    except ConfigError as err:
        raise ValueError(f"{err.what} Use one of: {', '.join(registry.names())}") from None
