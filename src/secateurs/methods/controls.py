"""Controls: the experiments that tell a lottery ticket from any sparse network of its size.

A control branches off a repeat level right after the level's first prune stage: it runs the
rest of the level's stages on a copy of the model, changed as the control says, and records
its evaluations with `control=<name>`. The ticket's own trajectory is untouched (the branch
works on copies and draws from its own random state), and the branch replays the ticket's stage
numbers, so its data order and per-stage seeds are the ticket's own. The controls of Frankle &
Carbin (2019):

- `reinit`: the ticket's masks on freshly initialised weights: every reset of the level becomes
  `reinit` (seeded by the recipe seed and the stage number, never the recipe's own init seed).
- `random_mask`: per layer as many kept weights as the ticket, at random positions (seeded),
  with the weights the ticket's rewind restores (the original init, or step k).
- `finetune_only`: the ticket's masks, training continued from the trained weights (every reset
  of the level becomes `keep`).

A control is a change of the level's reset modes and/or of its masks; a new one is one
`CONTROLS.add(...)` line here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from secateurs.core.masks import MaskSet
from secateurs.core.registry import Registry
from secateurs.methods.resets import RESETS

Check = Callable[[list[Any]], str | None]


@dataclass(frozen=True)
class Control:
    """How a control differs from the ticket on one level."""

    name: str
    reset_mode: str | None  # every reset stage of the level becomes this mode (None: unchanged)
    random_mask: bool  # replace the ticket's masks by random ones with the same per-layer counts
    check: Check  # a problem with the level's stages after the prune, or None

    def stages(self, stages: list[Any]) -> list[Any]:
        """The level's stages after the prune, as this control runs them."""
        if self.reset_mode is None:
            return list(stages)
        options = RESETS.get(self.reset_mode).schema()
        return [
            s.model_copy(update={"mode": self.reset_mode, "options": options}) if _is_reset(s) else s
            for s in stages
        ]

    def masks(self, masks: MaskSet, seed: int) -> MaskSet:
        return random_masks_like(masks, seed) if self.random_mask else masks


def _is_reset(stage: Any) -> bool:
    return getattr(stage, "kind", None) == "reset"


def _modes(stages: list[Any]) -> list[str]:
    return [s.mode for s in stages if _is_reset(s)]


def _needs_rewind(stages: list[Any]) -> str | None:
    if "rewind" not in _modes(stages):
        return (
            "takes its weights from the ticket's rewind target: it "
            "needs a reset {mode: rewind} after the prune"
        )
    return None


def _needs_reset_other_than(*modes: str) -> Check:
    def check(stages: list[Any]) -> str | None:
        found = _modes(stages)
        if not found:
            return "needs a reset stage after the prune to replace"
        if all(m in modes for m in found):
            return f"would repeat the ticket itself, whose resets are already {', '.join(sorted(set(found)))}"
        return None

    return check


CONTROLS: Registry[Control] = Registry("control")
CONTROLS.add(
    "reinit",
    Control("reinit", "reinit", False, _needs_reset_other_than("reinit")),
    "the ticket's masks on freshly initialised weights (another seed)",
)
CONTROLS.add(
    "random_mask",
    Control("random_mask", None, True, _needs_rewind),
    "random positions, the ticket's per-layer counts, the weights the ticket rewinds to",
)
CONTROLS.add(
    "finetune_only",
    Control("finetune_only", "keep", False, _needs_reset_other_than("keep", "lr_rewind")),
    "the ticket's masks, training continued from the trained weights (no rewind)",
)


def check_controls(names: list[str], stages: list[Any]) -> str | None:
    """Why `names` cannot run beside a level made of `stages` (None when they can)."""
    if not names:
        return None
    unknown = [n for n in names if n not in CONTROLS]
    if unknown:
        return (
            f"unknown control(s) {', '.join(map(repr, unknown))}; controls are {', '.join(CONTROLS.names())}"
        )
    if len(set(names)) != len(names):
        return f"controls are listed twice: {names}"
    fork = fork_index(stages)
    if fork is None:
        return "controls branch off after the level's prune stage: add a prune stage to the repeat"
    after = stages[fork + 1 :]
    if not any(getattr(s, "kind", None) == "evaluate" for s in after):
        return "controls record evaluations: add an evaluate stage after the repeat's prune stage"
    for name in names:
        problem = CONTROLS.get(name).check(after)
        if problem:
            return f"control {name} {problem}"
    return None


def fork_index(stages: list[Any]) -> int | None:
    """Index of the stage after which controls branch off (the first prune stage)."""
    return next((i for i, s in enumerate(stages) if getattr(s, "kind", None) == "prune"), None)


def random_masks_like(masks: MaskSet, seed: int) -> MaskSet:
    """Masks with each layer's kept count of `masks`, at uniformly random positions."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, mask in masks.items():
        keep = torch.zeros(mask.numel(), dtype=torch.bool)
        keep[torch.randperm(mask.numel(), generator=generator)[: int(mask.sum())]] = True
        out[name] = keep.reshape(mask.shape).to(mask.device)
    return MaskSet(out)


def derived_seed(*parts: object) -> int:
    """A seed from labelled parts (e.g. recipe seed, stage number, control), independent of other seeds."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
