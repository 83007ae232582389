"""NaN and inf at pruned entries: masks set them to exactly +0.0, wherever they come from.

A float multiply by a zero mask keeps NaN and inf (and gives -0.0 for a negative weight), so
pruned entries are zeroed on their bit patterns; a checkpoint whose only non-finite values are
pruned loads, resumes and trains; one with NaN/inf at kept entries is refused before training
with a message saying where, and `secateurs inspect` counts them per parameter.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_recipe
from torch import Tensor, nn

from secateurs.core.checkpoint import load_checkpoint, save_checkpoint
from secateurs.core.errors import SecateursError
from secateurs.core.masks import MaskSet, masks_of
from secateurs.methods.pruning import prune
from secateurs.pipeline.outputs import read_checkpoint, save_run
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.runner import STATE_FILE, Pipeline, run_recipe

NONFINITE = [math.nan, math.inf, -math.inf, -1.5]  # -1.5 * 0.0 is -0.0, not +0.0


def _exactly_plus_zero(t: Tensor) -> bool:
    return bool((t == 0).all()) and not bool(torch.signbit(t).any())


def _poisoned(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """(weights, keep-mask): every pruned entry NaN, inf, -inf or negative; kept ones finite."""
    torch.manual_seed(0)
    weights = torch.randn(shape, dtype=torch.float64)
    keep = torch.rand(shape) < 0.5
    values = torch.tensor(NONFINITE, dtype=torch.float64).repeat(weights.numel() // len(NONFINITE) + 1)
    weights[~keep] = values[: int((~keep).sum())]
    return weights.to(dtype), keep


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_apply_sets_pruned_nan_inf_and_negatives_to_plus_zero_and_keeps_kept_bits(dtype: torch.dtype) -> None:
    layer = nn.Linear(12, 8).to(dtype)
    weights, keep = _poisoned((8, 12), dtype)
    weights[keep.nonzero()[0].tolist()] = math.nan  # a NaN at a kept entry is not the mask's business
    with torch.no_grad():
        layer.weight.copy_(weights)
    before = layer.weight
    MaskSet({"weight": keep}).apply(layer)
    assert layer.weight is before  # in place
    assert _exactly_plus_zero(layer.weight[~keep])
    assert torch.equal(
        layer.weight[keep].view(-1).view(torch.uint8), weights[keep].view(-1).view(torch.uint8)
    )


def test_prune_leaves_no_nan_at_pruned_entries() -> None:
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    weights, _ = _poisoned((8, 12))
    with torch.no_grad():
        model[0].weight.copy_(weights)
    prune(model, 0.5, criterion="random", seed=0)
    masks = masks_of(model)
    assert masks is not None
    for name, param in model.named_parameters():
        if name in masks:
            assert _exactly_plus_zero(param[~masks[name]]), name


def test_a_later_pruning_round_scores_the_masked_model_with_nan_masked_out() -> None:
    """Between rounds the masked-out weights are zeroed for scoring: NaN there must not leak in."""
    from secateurs.methods.pruning import _masked_weights

    layer = nn.Linear(12, 8)
    weights, keep = _poisoned((8, 12))
    with torch.no_grad():
        layer.weight.copy_(weights)
    with _masked_weights(layer, MaskSet({"weight": keep})):
        assert _exactly_plus_zero(layer.weight[~keep])
    assert torch.equal(
        layer.weight.view(-1).view(torch.uint8), weights.view(-1).view(torch.uint8)
    )  # restored


@pytest.mark.parametrize("mask_grads", [False, True])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_step_leaves_pruned_entries_plus_zero_with_nan_in_the_optimizer_state(
    optimizer: str, mask_grads: bool
) -> None:
    """Momentum and Adam moments poisoned at pruned entries: the update there is NaN, the
    weight after the step still exactly +0.0, and the kept entries train normally."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    weights, keep = _poisoned((8, 12))
    opt = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        "adam": lambda p: torch.optim.Adam(p, lr=0.01),
        "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    }[optimizer](model.parameters())
    x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
    nn.functional.cross_entropy(model(torch.zeros(16, 12)), y).backward()
    opt.step()  # creates the state
    with torch.no_grad():
        model[0].weight[~keep] = weights[~keep]
    for value in opt.state[model[0].weight].values():
        if value.shape == keep.shape:
            value[~keep] = torch.tensor([math.nan, math.inf])[torch.arange(int((~keep).sum())) % 2]
    handle = MaskSet({"0.weight": keep}).attach(model, opt, mask_grads=mask_grads)
    assert _exactly_plus_zero(model[0].weight[~keep])
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        assert math.isfinite(loss.item())
        loss.backward()
        opt.step()
        assert _exactly_plus_zero(model[0].weight[~keep])
        assert bool(torch.isfinite(model[0].weight).all())
    handle.update(MaskSet({"0.weight": keep & (torch.rand(keep.shape) < 0.5)}))  # hooks keep working
    new_keep = keep & (model[0].weight != 0)
    opt.step()
    assert _exactly_plus_zero(model[0].weight[~keep])
    assert bool(torch.isfinite(model[0].weight).all()) and int(new_keep.sum()) > 0


# -- checkpoints --------------------------------------------------------------------------------
def _finished_run(out: Path) -> Path:
    """model.pt of the tiny recipe (trained, pruned to 0.5 with masks)."""
    save_run(run_recipe(recipe_from_raw(tiny_recipe())), out)
    return out / "model.pt"


def _poison_pruned(payload: dict, name: str = "features.1.weight", kept: int = 0) -> None:
    """NaN and inf at the pruned entries of `name` (and NaN at `kept` kept entries)."""
    weight, keep = payload["model"][name], payload["masks"][name]
    pruned = (~keep).nonzero()
    weight[tuple(pruned[0::2].T)] = math.nan
    weight[tuple(pruned[1::2].T)] = math.inf
    weight[tuple(keep.nonzero()[:kept].T)] = math.nan


def test_init_from_a_checkpoint_with_nan_only_at_pruned_entries_trains(tmp_path: Path) -> None:
    """It used to fail with "training diverged ... lower the learning rate"."""
    path = _finished_run(tmp_path / "run")
    payload = load_checkpoint(path)
    _poison_pruned(payload)
    save_checkpoint(path, payload)
    result = run_recipe(recipe_from_raw(tiny_recipe({"train": {}}, {"evaluate": {}}, init_from=str(path))))
    masks = masks_of(result.model)
    assert masks is not None
    for name, param in result.model.named_parameters():
        assert bool(torch.isfinite(param).all()), name
        if name in masks:
            assert _exactly_plus_zero(param[~masks[name]]), name


def test_init_from_a_checkpoint_with_nan_at_kept_entries_says_where(tmp_path: Path) -> None:
    path = _finished_run(tmp_path / "run")
    payload = load_checkpoint(path)
    _poison_pruned(payload, kept=2)
    save_checkpoint(path, payload)
    recipe = recipe_from_raw(tiny_recipe({"train": {}}, init_from=str(path)))
    with pytest.raises(SecateursError) as info:
        run_recipe(recipe)
    message = str(info.value)
    assert "NaN/inf values before training starts" in message
    assert "2 in 'features.1.weight' at kept entries" in message
    assert "diverged" not in message and "learning rate" not in message


class Crash(Exception):
    """Stands in for a kill in the middle of a run."""


def test_resuming_from_a_state_with_nan_at_pruned_entries_equals_the_clean_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = recipe_from_raw(tiny_recipe({"train": {}}, {"prune": {}}, {"train": {}}, {"evaluate": {}}))
    clean = run_recipe(recipe)
    original = Pipeline._save_state

    def crash_before_saving_stage_3(self: Pipeline) -> None:
        if self.counter == 3:
            raise Crash
        original(self)

    with monkeypatch.context() as patch:
        patch.setattr(Pipeline, "_save_state", crash_before_saving_stage_3)
        with pytest.raises(Crash):
            run_recipe(recipe, workdir=tmp_path)
    state = load_checkpoint(tmp_path / STATE_FILE)  # after the prune stage
    _poison_pruned(state)
    save_checkpoint(tmp_path / STATE_FILE, state)
    resumed = Pipeline(recipe, workdir=tmp_path)
    assert resumed.resumed_from == 2
    result = resumed.run()
    for (name, got), want in zip(
        result.model.state_dict().items(), clean.model.state_dict().values(), strict=True
    ):
        assert torch.equal(got, want), name
    assert result.records == clean.records


# -- inspect ------------------------------------------------------------------------------------
def test_inspect_counts_nan_and_inf_per_parameter(tmp_path: Path) -> None:
    path = _finished_run(tmp_path / "run")
    clean = subprocess.run(
        [sys.executable, "-m", "secateurs", "inspect", str(path)], capture_output=True, text=True, check=True
    )
    assert "NaN" not in clean.stdout
    payload = load_checkpoint(path)
    _poison_pruned(payload, kept=1)
    pruned = int((~payload["masks"]["features.1.weight"]).sum())
    payload["model"]["classifier.bias"][0] = -math.inf
    save_checkpoint(path, payload)
    shown = subprocess.run(
        [sys.executable, "-m", "secateurs", "inspect", str(path)], capture_output=True, text=True, check=True
    )
    lines = {line.split(":")[0]: line for line in shown.stdout.splitlines() if line.startswith("NaN/inf in")}
    nan = (pruned + 1) // 2 + 1
    assert lines == {
        "NaN/inf in 'features.1.weight'": f"NaN/inf in 'features.1.weight': {nan} NaN, {pruned // 2} inf "
        f"({pruned} pruned, read as 0; 1 kept)",
        "NaN/inf in 'classifier.bias'": "NaN/inf in 'classifier.bias': 0 NaN, 1 inf",
    }, shown.stdout
    state, masks, _ = read_checkpoint(path)  # the file itself is not changed by reading it
    assert masks is not None and int(torch.isnan(state["features.1.weight"]).sum()) == nan
