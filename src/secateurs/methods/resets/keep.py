"""Keep: continue from the pruned weights (finetuning, PaT); LR rewinding keeps them too.

`lr_rewind` (Renda et al. 2020): keep the pruned weights and start the optimizer afresh (no
momentum or Adam moments, step counters at 0); the next training stage replays the LR schedule
from its start, and the recipe checks that it uses the first training stage's optimizer and LR
schedule. The weights are treated as by `keep`: the two differ in what the next stage must be,
so the name says what was run.
"""

from __future__ import annotations

from secateurs.methods.resets.base import RESETS, Reset


@RESETS.register("keep", "continue from the pruned weights (finetune)")
class Keep(Reset):
    name = "keep"


@RESETS.register(
    "lr_rewind", "keep the pruned weights, fresh optimizer, replay the first training's LR schedule"
)
class LRRewind(Reset):
    name = "lr_rewind"
    replays_first_training = True
