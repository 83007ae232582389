"""A model whose process dies the first time it is evaluated pruned: a worker killed mid-run, on cue
(after the stages up to the prune have been saved).

The marker file is created just before the process exits, so the run's next attempt (a retried
task, a resumed sweep) goes through; a recipe names it `model: {factory:
"user_code.crashes:mlp_dying_once", options: {marker: PATH}}`.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn

EXIT_CODE = 17


class DiesOnce(nn.Sequential):
    """An MLP that ends its process (as a SIGKILL would, no cleanup) at its first eval-mode forward
    with pruned weights (exact zeros: a random init has none)."""

    def __init__(self, marker: str, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.marker = marker

    def forward(self, x: Tensor) -> Tensor:
        pruned = any(bool((m.weight == 0).any()) for m in self if isinstance(m, nn.Linear))
        if not self.training and pruned and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(EXIT_CODE)
        return super().forward(x)


def mlp_dying_once(
    input_shape: tuple[int, ...], num_classes: int, marker: str, hidden: int = 16
) -> nn.Module:
    """Linear-ReLU-Linear, as the zoo's one-hidden-layer MLP, dying once (see the module)."""
    return DiesOnce(
        marker, nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )
