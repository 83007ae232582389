"""Regularization-based pruning: a penalty on a structure's groups while training (issue 24).

CONTRACT — what every method of this package builds on (fixed penalty, GReg-1/2, and the
trainability-preserving and merging penalties):

- `PenaltyGroups`: the groups of any structure (unstructured, N:M, blocks, channels, heads) as
  integer id maps over the parameters. Built once per stage from the structure's layout
  (`PenaltyGroups.from_layout`), in the layout's group order: unit by unit, each unit's groups
  in the order of its `group_scores` (`groups.unit_of[g]` is group g's unit, `groups.units[u]`
  its name). Each `GroupSite` is one parameter: `ids` gives the group of every entry (along
  `dim` for groups spanning layers, elementwise otherwise); `groups.num_groups` means "no
  group". For a channel group `sites` chooses its entries: `producers` (the filters making
  the channels, GReg's filter pruning), `consumers` (the columns reading them) or `all` (every
  parameter of the group: filters, columns, biases, BatchNorm scale and shift). Per-group
  statistics: `group_sum(params, fn)`, `counts()`, `mean_abs`, `sq_norms`; `removed(masks)` says
  which groups a mask set removes; `spread(values, site)` broadcasts per-group values over a
  site's parameter (kept until the values tensor is replaced or changed in place, so a penalty
  pays for it once per update, not per step). Every tensor stays on the parameters' device (no
  CPU assumption).
- `Penalty` (registry `PENALTIES`: `l1`, `l2`, `group_lasso`): with a coefficient c_g per group,
  `value` is Σ_g c_g·P(w_g) and `add_gradient` adds ∂/∂w of it to every parameter's `.grad`
  (the way ADMM and slimming add their closed-form penalties, after backward). L2 is ½c‖w‖²
  (gradient c·w, the authors' GReg), L1 c‖w‖₁ (subgradient c·sign w), group lasso c‖w_g‖₂
  (c·w/‖w_g‖, 0 at 0). A new penalty (e.g. a Gram-matrix one) is one `Penalty` subclass and
  one `PENALTIES.add`.
- `RegularizedPruning`: the schedule skeleton, a training-loop `Callback`. It builds the groups
  at the start of training and calls `start(state)`; every `interval` optimizer steps (and once
  at the start) `update(step)`, where a subclass sets `self.coefficients` (one per group) and
  calls `self.finish(step, why)` when its stopping rule holds (`magnitude_ratio(momentum)`:
  GReg's smoothed kept/pruned ratio per unit, over the groups `self.live` at the stage's start);
  `stabilize` steps later (coefficients held) it prunes: `self.masks` (the picked set's masks,
  from `pick()`, which runs the prune step the config describes: criterion × allocation ×
  structure at the stage's sparsity) are installed, the pruned weights become exactly 0, and
  the rest of the stage finetunes with the mask. A stage that ends first prunes at its end
  (recorded as `stopped: budget`).
  `penalty_step(state)` applies the penalty after each backward (override it to add another).
  `state_dict()` / `load_state_dict()` hold the whole schedule (coefficients, picked groups,
  masks, counters, ratio history, phase) as plain tensors and numbers; the training-time method
  hands it to later stages with `services.keep`, so the run's state file saves and resumes it.
- `RegularizationSpec`: the recipe block's base (a prune step, validated like `prune` blocks,
  plus `penalty`, `sites`, `interval`, `stabilize`); `RegularizationMethod`: the
  `TrainingMethod` base that wires a `RegularizedPruning` subclass (`schedule` class attribute)
  to the run.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from secateurs.core.errors import CheckpointError, ConfigError
from secateurs.core.masks import MaskSet, masks_of
from secateurs.core.registry import Registry
from secateurs.methods.layers import select_parameters
from secateurs.methods.pruning import layer_selection
from secateurs.methods.spec import PruneSpec
from secateurs.methods.structures import ElementLayout, Layout, LayoutContext, build_structure
from secateurs.methods.structures.groups import GraphLayout, is_weight_matrix
from secateurs.methods.training.base import StageServices, TrainingMethod, stage_sparsity
from secateurs.train.engine import Callback, TrainState

SITES = ("producers", "consumers", "all")
_ROLES = {"producers": ("producer",), "consumers": ("consumer",), "all": ("producer", "consumer", "passive")}


# -- groups ------------------------------------------------------------------------------------
@dataclass
class GroupSite:
    """One parameter's entries in groups: `ids[i]` is the group of index i along `dim` (a channel
    site), or, with `dim` None, `ids` has the parameter's shape and gives each entry's group."""

    name: str
    dim: int | None
    ids: Tensor  # int64, on the parameter's device; the value num_groups means "in no group"
    shape: tuple[int, ...]  # the parameter's
    role: str = "element"  # "producer", "consumer", "passive" (channel sites) or "element"
    offset: int | None = None  # set when entry i (row-major) is group offset + i: slices, not gathers

    def per_index(self, values: Tensor) -> Tensor:
        """`values` (the parameter's shape) summed over every dim but `dim` (a channel site)."""
        assert self.dim is not None
        return values.movedim(self.dim, 0).reshape(self.shape[self.dim], -1).sum(1)


class PenaltyGroups:
    """A structure's groups as id maps over the parameters (see the module docstring)."""

    def __init__(self, sites: list[GroupSite], units: list[str], unit_of: Tensor) -> None:
        self.sites = sites
        self.units = units
        self.unit_of = unit_of  # per group: its unit's index in `units`
        self.num_groups = int(unit_of.numel())
        if not sites:
            raise ConfigError("the structure's groups have no parameter entries to penalise")
        self.device = sites[0].ids.device
        self._counts: Tensor | None = None
        self.unit_sizes = torch.bincount(unit_of, minlength=len(units)).tolist()  # groups are unit by unit
        self._spread: dict[int, tuple[Any, int, Tensor]] = {}  # site → (values' weakref, version, spread)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_layout(cls, layout: Layout, model: nn.Module, sites: str = "producers") -> PenaltyGroups:
        """The groups of `layout` (an element or channel-graph layout) over `model`'s parameters."""
        if sites not in SITES:
            raise ConfigError(f"sites must be one of {', '.join(SITES)}, got {sites!r}")
        params = dict(model.named_parameters())
        counts = [u.num_groups for u in layout.units]
        device = next(iter(params.values())).device
        unit_of = torch.repeat_interleave(
            torch.arange(len(counts), device=device), torch.tensor(counts, device=device)
        )
        total = int(sum(counts))
        if isinstance(layout, ElementLayout):
            found = cls._element_sites(layout, params)
        elif isinstance(layout, GraphLayout):
            found = cls._graph_sites(layout, params, total, sites)
        else:
            raise ConfigError(
                f"regularization cannot lay penalties on a {type(layout).__name__}",
                fix="use an element structure (unstructured, nm, block, rows) or a channel-graph one "
                "(channel, heads, ffn, heads_ffn)",
            )
        return cls(found, [u.name for u in layout.units], unit_of)

    @staticmethod
    def _element_sites(layout: ElementLayout, params: Mapping[str, Tensor]) -> list[GroupSite]:
        out, offset = [], 0
        for unit in layout.units:
            p = params[unit.name]
            count = unit.num_groups
            ids = torch.arange(offset, offset + count, device=p.device)
            expanded = layout.structure.expand(ids, tuple(p.shape))
            if tuple(expanded.shape) != tuple(p.shape) or expanded.dtype != torch.int64:
                raise ConfigError(
                    f"structure {layout.structure.name!r} does not expand group ids over {unit.name!r}",
                    fix="its expand() must move values (reshape, repeat), not compute on them",
                )
            plain = count == p.numel() and torch.equal(expanded.reshape(-1), ids)  # unstructured
            site = GroupSite(
                unit.name, None, expanded.contiguous(), tuple(p.shape), offset=offset if plain else None
            )
            out.append(site)
            offset += count
        return out

    @staticmethod
    def _graph_sites(
        layout: GraphLayout, params: Mapping[str, Tensor], total: int, sites: str
    ) -> list[GroupSite]:
        roles = _ROLES[sites]
        by_site: dict[tuple[str, int, str], Tensor] = {}
        for position, group in enumerate(layout.all_groups()):
            for site, index in group.sites:
                if site.name not in params or site.role not in roles:
                    continue
                if sites != "all" and not is_weight_matrix(site, params):
                    continue
                key = (site.name, site.dim, site.role)
                if key not in by_site:
                    p = params[site.name]
                    by_site[key] = torch.full((p.shape[site.dim],), total, dtype=torch.int64)
                by_site[key][torch.as_tensor(index, dtype=torch.int64)] = position
        return [
            GroupSite(name, dim, ids.to(params[name].device), tuple(params[name].shape), role)
            for (name, dim, role), ids in by_site.items()
        ]

    # -- statistics ------------------------------------------------------------------------------
    def _scatter(self, site: GroupSite, values: Tensor, out: Tensor) -> None:
        """Add `values` (the site parameter's shape) into `out` (one slot per group, then "none")."""
        if site.offset is not None:
            out[site.offset : site.offset + values.numel()] += values.reshape(-1)
        elif site.dim is None:
            out.index_add_(0, site.ids.reshape(-1), values.reshape(-1))
        else:
            out.index_add_(0, site.ids, site.per_index(values))

    def group_sum(self, params: Mapping[str, Tensor], fn: Callable[[Tensor], Tensor]) -> Tensor:
        """Per group, Σ fn(w) over its entries (at least float32, on the parameters' device);
        differentiable (statistics taken for decisions run under `torch.no_grad`)."""
        out = torch.zeros(self.num_groups + 1, device=self.device)
        for site in self.sites:
            self._scatter(site, fn(params[site.name]).float(), out)
        return out[:-1]

    def counts(self) -> Tensor:
        """Entries per group (float32)."""
        if self._counts is None:
            out = torch.zeros(self.num_groups + 1, device=self.device)
            for site in self.sites:
                self._scatter(site, torch.ones(site.shape, device=self.device), out)
            self._counts = out[:-1]
        return self._counts

    def mean_abs(self, params: Mapping[str, Tensor]) -> Tensor:
        """Per group, the mean |w| of its entries (GReg's filter magnitude)."""
        return self.group_sum(params, torch.abs) / self.counts().clamp_min(1)

    def sq_norms(self, params: Mapping[str, Tensor]) -> Tensor:
        """Per group, Σ w² over its entries."""
        return self.group_sum(params, torch.square)

    def removed(self, masks: MaskSet | None) -> Tensor:
        """Per group, whether `masks` removes every one of its entries (bool)."""
        if masks is None:
            return torch.zeros(self.num_groups, dtype=torch.bool, device=self.device)
        kept = torch.zeros(self.num_groups + 1, device=self.device)
        for site in self.sites:
            if site.name in masks:
                self._scatter(site, masks[site.name].to(self.device, torch.float32), kept)
            else:
                self._scatter(site, torch.ones(site.shape, device=self.device), kept)
        return kept[:-1] == 0

    def spread(self, values: Tensor, site: GroupSite) -> Tensor:
        """Per-group `values` laid over `site`'s parameter (0 for entries in no group). The result
        for the same (unchanged) `values` tensor is kept: coefficients change only at updates, and
        laying them over a large parameter at every step would cost as much as the step itself."""
        key = id(site)
        cached = self._spread.get(key)
        if cached is not None and cached[0]() is values and cached[1] == values._version:
            return cached[2]
        laid = self._lay(values, site)
        self._spread[key] = (weakref.ref(values), values._version, laid)
        return laid

    def _lay(self, values: Tensor, site: GroupSite) -> Tensor:
        if site.offset is not None:
            return values[site.offset : site.offset + math.prod(site.shape)].reshape(site.shape)
        padded = torch.cat([values, values.new_zeros(1)])
        picked = padded[site.ids]
        if site.dim is None:
            return picked
        shape = [1] * len(site.shape)
        shape[site.dim] = -1
        return picked.reshape(shape)

    def per_unit_mean(self, values: Tensor, which: Tensor) -> Tensor:
        """Per unit, the mean of `values` over its groups where `which` (NaN for none)."""
        weight = which.float()
        total = torch.stack([part.sum() for part in (values.float() * weight).split(self.unit_sizes)])
        count = torch.stack([part.sum() for part in weight.split(self.unit_sizes)])
        return total / count  # 0/0 = NaN: no such group in the unit


# -- penalties ---------------------------------------------------------------------------------
class Penalty:
    """Σ_g c_g·P(w_g) over a `PenaltyGroups`, its value and its gradient."""

    name: ClassVar[str] = ""

    def value(self, groups: PenaltyGroups, params: Mapping[str, Tensor], coefficients: Tensor) -> Tensor:
        raise NotImplementedError

    def add_gradient(self, groups: PenaltyGroups, params: Mapping[str, Tensor], coefficients: Tensor) -> None:
        """Add ∂value/∂w to every penalised parameter's `.grad` (parameters without one are skipped)."""
        with torch.no_grad():
            scale = self._group_scale(groups, params, coefficients)
            for site in groups.sites:
                p = params[site.name]
                if p.grad is None:
                    continue
                p.grad.add_(self.element_gradient(p.detach(), groups.spread(scale, site).to(p.dtype)))

    def _group_scale(
        self, groups: PenaltyGroups, params: Mapping[str, Tensor], coefficients: Tensor
    ) -> Tensor:
        """The per-group factor of the elementwise gradient (c_g, or c_g/‖w_g‖ for group lasso)."""
        return coefficients

    def element_gradient(self, w: Tensor, scale: Tensor) -> Tensor:
        raise NotImplementedError


class L2Penalty(Penalty):
    """½·c_g·‖w_g‖² per group: gradient c_g·w (the authors' GReg penalty, weight decay per group)."""

    name = "l2"

    def value(self, groups: PenaltyGroups, params: Mapping[str, Tensor], coefficients: Tensor) -> Tensor:
        return 0.5 * (coefficients * groups.sq_norms(params)).sum()

    def element_gradient(self, w: Tensor, scale: Tensor) -> Tensor:
        return scale * w


class L1Penalty(Penalty):
    """c_g·‖w_g‖₁ per group: subgradient c_g·sign(w) (0 at 0)."""

    name = "l1"

    def value(self, groups: PenaltyGroups, params: Mapping[str, Tensor], coefficients: Tensor) -> Tensor:
        return (coefficients * groups.group_sum(params, torch.abs)).sum()

    def element_gradient(self, w: Tensor, scale: Tensor) -> Tensor:
        return scale * torch.sign(w)


class GroupLassoPenalty(Penalty):
    """c_g·‖w_g‖₂ per group (the group's entries over all its sites): gradient c_g·w/‖w_g‖, 0 for a
    zero group (the subgradient of smallest norm)."""

    name = "group_lasso"

    def value(self, groups: PenaltyGroups, params: Mapping[str, Tensor], coefficients: Tensor) -> Tensor:
        squares = groups.sq_norms(params)
        positive = squares > 0  # sqrt's gradient at 0 is inf·0 = NaN; the group's is 0 there
        return (coefficients * torch.where(positive, squares, 1.0).sqrt() * positive).sum()

    def _group_scale(
        self, groups: PenaltyGroups, params: Mapping[str, Tensor], coefficients: Tensor
    ) -> Tensor:
        norms = groups.sq_norms(params).sqrt()
        return torch.where(norms > 0, coefficients / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)

    def element_gradient(self, w: Tensor, scale: Tensor) -> Tensor:
        return scale * w


PENALTIES: Registry[Penalty] = Registry("regularization penalty")
PENALTIES.add("l2", L2Penalty(), "½·c·‖w_g‖² per group (gradient c·w): growing regularization's")
PENALTIES.add("l1", L1Penalty(), "c·‖w_g‖₁ per group (subgradient c·sign w)")
PENALTIES.add("group_lasso", GroupLassoPenalty(), "c·‖w_g‖₂ per group (gradient c·w/‖w_g‖)")


# -- the recipe block ------------------------------------------------------------------------------
class RegularizationSpec(PruneSpec):
    """A prune step (which groups, by which criterion, at which sparsity) and its penalty."""

    penalty: str = Field("l2", description="the penalty on each group: l2, l1 or group_lasso")
    sites: Literal["producers", "consumers", "all"] = Field(
        "producers",
        description="entries of a channel group penalised: producers (its filters), consumers (the "
        "columns reading it) or all (biases and BatchNorm too); element structures ignore it",
    )
    interval: int = Field(10, gt=0, description="optimizer steps between coefficient updates")
    stabilize: int = Field(
        0, ge=0, description="steps the coefficients are held after the stopping rule, before the prune"
    )

    @model_validator(mode="after")
    def _applies_while_training(self) -> RegularizationSpec:
        if self.penalty not in PENALTIES:
            raise ValueError(f"unknown penalty {self.penalty!r}; use one of {', '.join(PENALTIES.names())}")
        if self.sanity == "reinit":
            raise ValueError("sanity check reinit applies to prune stages, not to regularized pruning")
        if self.calibration.mode != "full" or self.reconstruct is not None:
            raise ValueError(
                "sequential calibration and reconstruction apply to prune stages, not to regularized pruning"
            )
        return self


# -- the schedule ----------------------------------------------------------------------------------
@dataclass
class ScheduleRecord:
    """One update of the coefficients (published under the method's name)."""

    step: int
    phase: str
    coefficient_max: float
    ratio_min: float  # the smallest (smoothed) kept/pruned magnitude ratio over units; nan before picking
    units_done: int  # units whose coefficient stopped growing


class RegularizedPruning(Callback):
    """The schedule skeleton (see the module docstring); subclasses give `start` and `update`."""

    RECORD_EVERY = 50  # updates between two published records (phase changes are always published)

    def __init__(
        self,
        spec: RegularizationSpec,
        pick: Callable[[], MaskSet],
        layout: Callable[[], Layout],
        sparsity: float | None,
    ) -> None:
        if sparsity is None:
            raise ConfigError(
                "regularized pruning needs a sparsity", where="train", fix="set its sparsity, or the recipe's"
            )
        self.spec = spec
        self._pick = pick
        self._layout = layout
        self.sparsity = sparsity
        self.penalty = PENALTIES.get(spec.penalty)
        self.groups: PenaltyGroups | None = None
        self.model: nn.Module | None = None
        self.coefficients: Tensor | None = None
        self.picked: Tensor | None = None  # per group: chosen for removal
        self.masks: MaskSet | None = None  # the masks of the picked set
        self.phase = "grow"  # (pick →) grow → stabilize → pruned
        self.updates = 0
        self.finished_at: int | None = None
        self.pruned_at: int | None = None
        self.stopped = ""
        self.ratio: Tensor | None = None  # per unit: smoothed kept/pruned magnitude ratio
        self.records: list[ScheduleRecord] = []
        self._restored: dict[str, Any] | None = None
        self.live = torch.zeros(0, dtype=torch.bool)  # per group: not removed before this stage

    # -- hooks for subclasses ----------------------------------------------------------------
    def start(self, state: TrainState) -> None:
        """After the groups are built, before the first update (pick the set, for most methods)."""

    def update(self, step: int) -> None:
        """Every `interval` steps (and at the start): set `self.coefficients`, maybe `finish`."""
        raise NotImplementedError

    # -- shared machinery ------------------------------------------------------------------
    @property
    def params(self) -> dict[str, Tensor]:
        assert self.model is not None
        return dict(self.model.named_parameters())

    def pick(self) -> None:
        """Run the prune step: the picked groups and their masks (nothing is removed yet)."""
        assert self.groups is not None
        self.masks = self._pick()
        self.picked = self.groups.removed(self.masks)

    def finish(self, step: int, stopped: str) -> None:
        """The stopping rule holds: hold the coefficients `stabilize` steps, then prune."""
        self.phase, self.finished_at, self.stopped = "stabilize", step, stopped

    @torch.no_grad()
    def magnitude_ratio(self, momentum: float) -> Tensor:
        """Per unit, mean |w_g| of kept groups over that of picked ones, smoothed with `momentum`
        (r ← m·r + (1 − m)·ratio; the first value is taken as it is); inf for a unit picking none."""
        assert self.groups is not None and self.picked is not None
        w = self.groups.mean_abs(self.params)
        live = self.live
        kept = self.groups.per_unit_mean(w, live & ~self.picked)
        pruned = self.groups.per_unit_mean(w, live & self.picked)
        ratio = torch.where(torch.isnan(pruned), math.inf, kept / pruned)
        ratio = torch.nan_to_num(ratio, nan=math.inf)  # 0/0: the kept and pruned groups are all zero
        self.ratio = ratio if self.ratio is None else momentum * self.ratio + (1 - momentum) * ratio
        return self.ratio

    def coefficient_max(self) -> float:
        c = self.coefficients
        return float(c.max()) if c is not None and c.numel() else 0.0

    def record(self, step: int, force: bool = False) -> None:
        if not force and (self.updates - 1) % self.RECORD_EVERY:
            return
        coefficient = self.coefficient_max()
        finite = self.ratio[torch.isfinite(self.ratio)] if self.ratio is not None else None
        ratio = (
            float(finite.min())
            if finite is not None and finite.numel()
            else (math.inf if self.ratio is not None else math.nan)
        )
        self.records.append(ScheduleRecord(step, self.phase, coefficient, ratio, self.units_done()))

    def units_done(self) -> int:
        """Units whose coefficients stopped growing (a schedule growing per unit says)."""
        return 0

    # -- callback hooks --------------------------------------------------------------------
    def on_train_start(self, state: TrainState) -> None:
        self.model = state.model
        self.groups = PenaltyGroups.from_layout(self._layout(), state.model, self.spec.sites)
        self.live = ~self.groups.removed(masks_of(state.model))  # fixed until this schedule prunes
        if self._restored is not None:
            self._load(self._restored)
            return
        self.coefficients = torch.zeros(self.groups.num_groups, device=self.groups.device)
        self.start(state)
        self._update(state.step)

    def on_backward(self, state: TrainState) -> None:
        if self.phase == "pruned" or self.coefficients is None or self.groups is None:
            return
        self.penalty_step(state)

    def penalty_step(self, state: TrainState) -> None:
        """Add the penalty's gradient (after backward, before the optimizer step)."""
        assert self.groups is not None and self.coefficients is not None
        self.penalty.add_gradient(self.groups, self.params, self.coefficients)

    def on_step_end(self, state: TrainState) -> None:
        if self.phase == "grow" and state.step % self.spec.interval == 0:
            self._update(state.step)
        if self.phase == "stabilize" and state.step - (self.finished_at or 0) >= self.spec.stabilize:
            self.prune(state)

    def on_train_end(self, state: TrainState) -> None:
        if self.phase != "pruned":
            if self.phase != "stabilize":  # the stopping rule never held
                self.stopped = "budget"
            self.prune(state)

    def _update(self, step: int) -> None:
        self.updates += 1
        before = self.phase
        self.update(step)
        self.record(step, force=self.phase != before)

    def prune(self, state: TrainState) -> None:
        """Install the picked set's masks (its weights become exactly 0); the rest of the stage
        trains with the mask."""
        if self.masks is None:  # a picking phase cut short by the budget: pick now
            self.pick()
        assert self.masks is not None
        current = masks_of(state.model)
        state.install_masks(current.intersect(self.masks) if current is not None else self.masks)
        self.phase, self.pruned_at = "pruned", state.step
        self.record(state.step, force=True)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The schedule as plain tensors (on the CPU) and numbers."""

        def cpu(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().cpu().clone()

        return {
            "coefficients": cpu(self.coefficients),
            "picked": cpu(self.picked),
            "masks": self.masks.state_dict() if self.masks is not None else None,
            "phase": self.phase,
            "updates": self.updates,
            "finished_at": self.finished_at,
            "pruned_at": self.pruned_at,
            "stopped": self.stopped,
            "ratio": cpu(self.ratio),
            "records": [asdict(r) for r in self.records],
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()`'s result (applied when training starts, on the model's device)."""
        missing = {"coefficients", "picked", "masks", "phase", "updates"} - set(state)
        if missing:
            raise CheckpointError(
                f"a regularization state lacks {', '.join(sorted(missing))}",
                fix="delete the state file to start over",
            )
        self._restored = dict(state)
        if self.groups is not None:
            self._load(self._restored)

    def _load(self, state: Mapping[str, Any]) -> None:
        assert self.groups is not None
        device = self.groups.device

        def moved(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        self.coefficients = moved(state["coefficients"])
        if self.coefficients is not None and self.coefficients.numel() != self.groups.num_groups:
            raise CheckpointError(
                f"a regularization state has {self.coefficients.numel()} groups, "
                f"the model {self.groups.num_groups}",
                fix="resume with the model and structure it was saved with",
            )
        self.picked = moved(state["picked"])
        self.masks = (
            MaskSet.from_state_dict(state["masks"], self.model) if state["masks"] is not None else None
        )
        self.phase, self.updates = state["phase"], int(state["updates"])
        self.finished_at, self.pruned_at = state.get("finished_at"), state.get("pruned_at")
        self.stopped = state.get("stopped", "")
        self.ratio = moved(state.get("ratio"))
        self.records = [ScheduleRecord(**r) for r in state.get("records", [])]
        self.load_extra_state(state.get("extra") or {})
        self._restored = None

    def extra_state(self) -> dict[str, Any]:
        """A subclass's own counters (plain numbers and tensors)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore `extra_state()`."""

    def summary(self) -> dict[str, Any]:
        """What the stage publishes at its end under the method's name."""
        finite = [] if self.ratio is None else self.ratio[torch.isfinite(self.ratio)].tolist()
        return {
            "pruned": float(self.phase == "pruned"),
            "stopped_by_budget": float(self.stopped == "budget"),
            "finished_at": self.finished_at if self.finished_at is not None else math.nan,
            "pruned_at": self.pruned_at if self.pruned_at is not None else math.nan,
            "updates": self.updates,
            "coefficient_max": self.coefficient_max(),
            "ratio_min": min(finite) if finite else math.inf,
            "picked_groups": int(self.picked.sum()) if self.picked is not None else 0,
        }


# -- the training-time method --------------------------------------------------------------------
def structure_layout(model: nn.Module, spec: PruneSpec, services: StageServices) -> Layout:
    """The layout of `spec`'s structure over its layers (channel graphs traced on a zero batch)."""
    structure = build_structure(spec.structure, **spec.structure_options)
    structure.check_model(model)
    selection = layer_selection(spec.layers if spec.layers is not None else services.layers)
    names = select_parameters(model, selection)
    shape = getattr(services, "input_shape", None)
    example = None
    if shape is not None:
        example = torch.zeros(2, *shape, device=next(iter(model.parameters())).device)
    return structure.layout(LayoutContext(model, names, selection, example))


class RegularizationMethod(TrainingMethod):
    """Wires a `RegularizedPruning` schedule (class attribute `schedule`) to a train stage: its
    prune step is the run's (`services.compute_masks`); its state is handed on under its name."""

    schedule: ClassVar[type[RegularizedPruning]] = RegularizedPruning

    def __init__(self, config: RegularizationSpec, services: StageServices) -> None:
        super().__init__(config, services)
        sparsity = stage_sparsity(services, config.sparsity)
        model = services.model
        self.callback = self.schedule(
            config,
            lambda: services.compute_masks(config, sparsity),
            lambda: structure_layout(model, config, services),
            sparsity,
        )

    def callbacks(self) -> list[Callback]:
        return [self.callback]

    def after_training(self) -> None:
        self.services.keep(self.name, self.callback.state_dict())

    def events(self) -> list[tuple[int, dict[str, Any]]]:
        rows = [(r.step, asdict(r)) for r in self.callback.records]
        end = self.callback.pruned_at if self.callback.pruned_at is not None else 0
        return [*rows, (end, self.callback.summary())]
