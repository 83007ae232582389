"""Sanity checks of pruning criteria: shuffle, invert, corrupted scoring data, reinit."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import tiny_recipe
from torch import Tensor, nn

from secateurs import ConfigError, compute_masks, masks_of, prune
from secateurs.core.errors import SecateursError
from secateurs.core.masks import MaskSet
from secateurs.methods.sanity import SANITY, noise_inputs, shuffle_masks
from secateurs.pipeline.hashing import run_hash
from secateurs.pipeline.recipe import PruneSpec, recipe_from_raw
from secateurs.pipeline.runner import run_recipe
from secateurs.results import ResultsDB, execute
from secateurs.results.report import collapse_lines, collect, sanity_table, write_report


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))


def batch(n: int = 24, seed: int = 2) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.arange(n) % 3


def counts(masks: MaskSet) -> dict[str, int]:
    return {n: int(masks[n].sum()) for n in masks}


def test_registry_names_the_checks() -> None:
    names = ["none", "shuffle", "invert", "random_labels", "random_pixels", "reinit"]
    assert SANITY.names() == sorted(names)
    for name in names:  # the recipe schema takes exactly the registered checks
        assert PruneSpec(sanity=name).sanity == name
    with pytest.raises(ValueError, match=r"unknown sanity check 'shufle'\. Did you mean 'shuffle'"):
        PruneSpec(sanity="shufle")


def test_shuffle_keeps_per_layer_counts_and_moves_positions() -> None:
    model = mlp()
    clean = compute_masks(model, 0.6, allocation="uniform")
    shuffled = compute_masks(model, 0.6, allocation="uniform", sanity="shuffle", seed=3)
    assert counts(shuffled) == counts(clean)
    assert all(shuffled[n].shape == clean[n].shape for n in clean)
    assert any(not torch.equal(shuffled[n], clean[n]) for n in clean)
    again = compute_masks(model, 0.6, allocation="uniform", sanity="shuffle", seed=3)
    assert all(torch.equal(again[n], shuffled[n]) for n in clean)
    other = compute_masks(model, 0.6, allocation="uniform", sanity="shuffle", seed=4)
    assert any(not torch.equal(other[n], shuffled[n]) for n in clean)


def test_shuffle_only_moves_within_the_previous_mask() -> None:
    allowed = MaskSet({"w": torch.tensor([True, False, True, True, False, True])})
    new = MaskSet({"w": torch.tensor([True, False, True, False, False, False])})
    for seed in range(10):
        out = shuffle_masks(new, seed, allowed=allowed)["w"]
        assert int(out.sum()) == 2 and not bool((out & ~allowed["w"]).any())


def test_invert_keeps_the_smallest_magnitudes() -> None:
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -0.4, 0.3, -0.2]]))
    inverted = compute_masks(layer, 0.5, sanity="invert")["weight"]
    assert inverted.tolist() == [[True, False, False, True]]
    assert compute_masks(layer, 0.5, invert=True)["weight"].tolist() == [[True, False, False, True]]
    assert compute_masks(layer, 0.5)["weight"].tolist() == [[False, True, True, False]]


@pytest.mark.parametrize("check", ["random_labels", "random_pixels"])
def test_corrupted_data_changes_snip_masks_but_not_counts(check: str) -> None:
    model = mlp()
    clean = compute_masks(model, 0.7, criterion="snip", data=batch(), allocation="uniform")
    corrupt = compute_masks(model, 0.7, criterion="snip", data=batch(), allocation="uniform", sanity=check)
    assert counts(corrupt) == counts(clean)
    assert any(not torch.equal(corrupt[n], clean[n]) for n in clean)
    again = compute_masks(model, 0.7, criterion="snip", data=batch(), allocation="uniform", sanity=check)
    assert all(torch.equal(again[n], corrupt[n]) for n in clean)


def test_random_pixels_is_noise_with_the_inputs_mean_and_std() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    y = torch.tensor([0, 1])
    out, labels = noise_inputs((x, y), torch.Generator().manual_seed(5))
    noise = torch.randn(2, 2, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, noise * x.std() + x.mean())
    assert torch.equal(labels, y)


def test_data_checks_need_a_data_dependent_criterion() -> None:
    with pytest.raises(ConfigError, match=r"random_labels.*criterion 'magnitude' uses none"):
        compute_masks(mlp(), 0.5, sanity="random_labels")


def test_unknown_check_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown sanity check 'flip'"):
        compute_masks(mlp(), 0.5, sanity="flip")


def run(sanity: str) -> Any:
    stages: list[dict[str, Any]] = [{"prune": {"sanity": sanity}}, {"evaluate": {}}]
    return run_recipe(recipe_from_raw(tiny_recipe(*stages)))


def test_reinit_keeps_the_masks_and_redraws_the_kept_weights() -> None:
    plain, redrawn = run("none"), run("reinit")
    assert plain.masks is not None and redrawn.masks is not None
    weights = dict(plain.model.named_parameters())
    new = dict(redrawn.model.named_parameters())
    for name in plain.masks:
        mask = plain.masks[name]
        assert torch.equal(redrawn.masks[name], mask)
        assert not bool(new[name][~mask].any())
        assert not torch.equal(new[name][mask], weights[name][mask])


def test_prune_reinit_redraws_kept_weights() -> None:
    model, reference = mlp(), mlp()
    prune(model, 0.5, sanity="reinit", seed=1)
    prune(reference, 0.5, seed=1)
    masks = masks_of(model)
    assert masks is not None
    for name, p in model.named_parameters():
        if name in masks:
            assert torch.equal(masks[name], masks_of(reference)[name])  # type: ignore[index]
            assert not torch.equal(p, dict(reference.named_parameters())[name])


def test_default_check_leaves_the_run_hash_unchanged() -> None:
    raw = tiny_recipe({"prune": {}}, {"evaluate": {}})
    explicit = tiny_recipe({"prune": {"sanity": "none"}}, {"evaluate": {}})
    assert run_hash(recipe_from_raw(raw)) == run_hash(recipe_from_raw(explicit))
    shuffled = tiny_recipe({"prune": {"sanity": "shuffle"}}, {"evaluate": {}})
    assert run_hash(recipe_from_raw(raw)) != run_hash(recipe_from_raw(shuffled))


def test_gradual_pruning_rejects_reinit() -> None:
    raw = tiny_recipe({"train": {"prune": {"sanity": "reinit"}}}, {"evaluate": {}})
    with pytest.raises(SecateursError, match="reinit applies to prune stages"):
        recipe_from_raw(raw)


def stored(sparsity: float, seed: int, prune: dict[str, Any]) -> Any:
    stages: list[dict[str, Any]] = [{"train": {}}, {"prune": prune}, {"evaluate": {"label": "pruned"}}]
    return recipe_from_raw(tiny_recipe(*stages, sparsity=sparsity, seed=seed))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    for seed in (0, 1):
        for check in ("none", "shuffle"):
            execute(stored(0.5, seed, {"criterion": "snip", "sanity": check}), root, name="snip")
    for sparsity in (0.9, 0.99):
        prune = {"allocation": "uniform", "allow_collapse": True}
        execute(stored(sparsity, 0, prune), root, name="uniform")
    return root


def test_runs_with_checks_are_grouped_under_method_and_check(root: Path) -> None:
    with ResultsDB(root / "results.db", create=False) as db:
        runs = collect(db)
        finals = {r.hash: db.final_metrics(r.hash)["accuracy"] for r in db.list_runs()}
    by_method: dict[str, list[float]] = {}
    for r in runs:
        by_method.setdefault(r.method, []).append(finals[r.hash])
    assert sorted(by_method) == ["snip", "snip [shuffle]", "uniform"]
    assert {r.base_method for r in runs if r.check} == {"snip"}
    change = 100 * (statistics.fmean(by_method["snip [shuffle]"]) - statistics.fmean(by_method["snip"]))
    table = sanity_table(runs)
    assert f"| snip | shuffle | {change:+.2f} |" in table
    assert "uniform" not in table


def test_collapse_line_names_the_first_disconnecting_sparsity(root: Path) -> None:
    with ResultsDB(root / "results.db", create=False) as db:
        runs = collect(db)
    collapsed = {r.sparsity: r.final["collapsed_layers"] for r in runs if r.method == "uniform"}
    assert collapsed == {0.9: 0.0, 0.99: 1.0}  # 48 output weights × 1 % rounds to none
    lines = collapse_lines(runs)
    assert "- uniform: first disconnects at 99 % sparsity" in lines
    assert "- snip: never" in lines and "- snip [shuffle]: never" in lines


def test_report_has_sanity_and_collapse_sections(root: Path, tmp_path: Path) -> None:
    text = write_report(root, tmp_path).read_text(encoding="utf-8")
    assert "## Sanity checks" in text and "| snip | shuffle |" in text
    assert "## Layer collapse" in text and "first disconnects at 99 %" in text
