"""Smart-Ratio (Su et al. 2020): earlier layers denser, the classifier at a fixed density."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from secateurs.core.apportion import largest_remainder
from secateurs.core.errors import ConfigError
from secateurs.methods.allocations.base import (
    ALLOCATIONS,
    LayerInfo,
    kept_after,
    scaled_shares,
)


def _smart_ratio_raw(num_layers: int) -> list[float]:
    """(L − l + 1)² + (L − l + 1) for layer l = 1..L: earlier layers denser."""
    return [float((num_layers - i) ** 2 + (num_layers - i)) for i in range(num_layers)]


@ALLOCATIONS.register("smart_ratio", "Smart-Ratio: density ∝ (L−l+1)²+(L−l+1), last layer at 30 %")
def smart_ratio(
    layers: list[LayerInfo], sparsity: float, *, last_layer_density: Annotated[float, Field(gt=0, le=1)] = 0.3
) -> dict[str, int]:
    """Smart-Ratio (Su et al. 2020, "Sanity-checking pruning methods: random tickets can win the jackpot").

    Layer l of L (in parameter order) gets a keep ratio ∝ (L − l + 1)² + (L − l + 1), scaled so the
    total count is exact, with layers that would exceed density 1 made dense (as for ERK). The
    last layer keeps `last_layer_density` of its weights (the paper's 30 % rule, stated there for
    the classifier layer) and the others share the rest of the budget. The paper could not be
    checked from here: this is the rule as stated in issue #6. A single layer gets the target.
    """
    if isinstance(last_layer_density, bool) or not isinstance(last_layer_density, int | float):
        raise ConfigError(
            f"smart_ratio last_layer_density must be a number in (0, 1], got {last_layer_density!r}"
        )
    if not 0.0 < last_layer_density <= 1.0:
        raise ConfigError(f"smart_ratio last_layer_density must be in (0, 1], got {last_layer_density!r}")
    total_kept = kept_after(sum(layer.numel for layer in layers), sparsity)
    if len(layers) == 1:
        return {layers[0].name: total_kept // layers[0].group_size}
    *rest, last = layers
    last_groups = kept_after(last.num_groups, 1.0 - last_layer_density, last.floor)
    budget = total_kept - last_groups * last.group_size
    rest_numel = sum(layer.numel for layer in rest)
    if not 0 <= budget <= rest_numel:
        raise ConfigError(
            f"smart_ratio cannot reach sparsity {sparsity} "
            f"with the last layer at density {last_layer_density}",
            fix="change last_layer_density or the sparsity, or use the 'erk' allocation",
        )
    ideal = scaled_shares(rest, 1.0 - budget / rest_numel, _smart_ratio_raw(len(layers))[:-1])
    floors = [min(layer.floor, layer.num_groups) * layer.group_size for layer in rest]
    kept = largest_remainder(ideal, [layer.numel for layer in rest], budget, floors)
    out = {layer.name: k // layer.group_size for layer, k in zip(rest, kept, strict=True)}
    out[last.name] = last_groups
    return out
