"""Specification of the closed-form (non-gradient) network and the closed-form refit on a mask (issue 20)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import secateurs
from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet
from secateurs.data.sources import load_digits
from secateurs.methods.calibration import InputStats
from secateurs.methods.closed_form import (
    TANH_LIMIT,
    Activation,
    ClosedFormConfig,
    fit_closed_form,
    masked_ridge_rows,
    reconstruction_error,
    refit_on_mask,
    ridge_solve,
    stiefel_frame,
)
from secateurs.methods.reconstruction import RECONSTRUCTIONS, build_reconstruction, reconstruct
from secateurs.models.mlp import MLP
from secateurs.pipeline.recipe import load_recipe, recipe_from_raw
from secateurs.train.config import TrainConfig


def _augmented(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)


def test_ridge_layer_equals_least_squares() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 7, generator=gen, dtype=torch.float64)
    t = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    xa = _augmented(x)
    solved = ridge_solve(xa.T @ xa, xa.T @ t, 0.0)
    expected = torch.linalg.lstsq(xa, t).solution
    torch.testing.assert_close(solved, expected, rtol=1e-10, atol=1e-10)
    # with a ridge: the normal equations with the bias unpenalized
    lam = 3.0
    solved = ridge_solve(xa.T @ xa, xa.T @ t, lam)
    penalty = torch.diag(torch.tensor([lam] * 7 + [0.0], dtype=torch.float64))
    torch.testing.assert_close(solved, torch.linalg.solve(xa.T @ xa + penalty, xa.T @ t))


def test_masked_rows_are_least_squares_on_their_support() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(100, 6, generator=gen, dtype=torch.float64)
    t = torch.randn(100, 4, generator=gen, dtype=torch.float64)
    mask = torch.rand(4, 6, generator=gen) > 0.5
    mask[0] = mask[1]  # two rows sharing a support share a solve
    got = masked_ridge_rows(x.T @ x, x.T @ t, mask, 0.0, bias=False)
    assert bool((got[~mask] == 0).all())
    for r in range(4):
        keep = mask[r].nonzero().squeeze(1)
        expected = torch.linalg.lstsq(x[:, keep], t[:, r : r + 1]).solution.squeeze(1)
        torch.testing.assert_close(got[r, keep], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("act", [Activation("leaky_relu", 0.1), Activation("tanh"), Activation("identity")])
def test_inverse_activation_round_trips(act: Activation) -> None:
    a = torch.linspace(-3, 3, 101, dtype=torch.float64)
    torch.testing.assert_close(act.inverse(act.forward(a)), a, rtol=1e-9, atol=1e-9)
    if act.kind == "tanh":  # outside tanh's range the target is clamped, documented
        assert float(act.inverse(torch.tensor([5.0], dtype=torch.float64))) == pytest.approx(
            float(torch.atanh(torch.tensor(TANH_LIMIT, dtype=torch.float64)))
        )


def test_projection_has_orthonormal_columns() -> None:
    m = torch.randn(20, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    p = stiefel_frame(m)
    torch.testing.assert_close(p.T @ p, torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(p @ p.T @ m, m)  # it spans the matrix's columns
    deficient = torch.cat([m[:, :4], -m[:, :4].sum(1, keepdim=True)], dim=1)  # columns sum to 0
    assert stiefel_frame(deficient).shape == (20, 4)  # the direction it does not use is dropped
    fitted = secateurs.ClosedFormClassifier().fit(*_blobs())
    assert fitted.projection is not None
    k = fitted.projection.shape[1]
    torch.testing.assert_close(fitted.projection.T @ fitted.projection, torch.eye(k, dtype=torch.float64))


def test_decision_layer_does_not_follow_rounding_noise() -> None:
    """One-vs-rest ridge solutions are rank-deficient; the frame must not pick a direction from noise."""
    x, y = _blobs()
    x = torch.cat([x, torch.randn(150, 20, generator=torch.Generator().manual_seed(5))], dim=1).double()
    a = secateurs.ClosedFormClassifier().fit(x, y)
    b = secateurs.ClosedFormClassifier().fit(x * (1 + 1e-15), y)  # rounding-level change of the inputs
    assert a.weight is not None and b.weight is not None
    assert float((a.weight - b.weight).norm() / a.weight.norm()) < 1e-6


def _blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """Three linearly separable clusters in 5 dimensions."""
    gen = torch.Generator().manual_seed(3)
    centers = torch.tensor([[4.0, 0, 0, 0, 0], [0, 4.0, 0, 0, 0], [0, 0, 4.0, 0, 0]])
    y = torch.arange(3).repeat(50)
    return centers[y] + 0.5 * torch.randn(150, 5, generator=gen), y


def test_svm_decision_layer_separates_a_separable_set() -> None:
    x, y = _blobs()
    clf = secateurs.ClosedFormClassifier(ridge=1e-4).fit(x, y)
    assert bool((clf.predict(x) == y).all())
    layer = clf.as_linear()
    assert bool((layer(x).argmax(1) == y).all())


def _layer_case(seed: int, sparsity: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 12, generator=gen) @ torch.randn(12, 12, generator=gen)  # correlated inputs
    stats = InputStats(12, hessian=True, norms_wanted=False)
    stats.add(x)
    weight = torch.randn(8, 12, generator=gen)
    mask = torch.rand(8, 12, generator=gen) >= sparsity
    return weight, stats.hessian_matrix(), mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sparsity", [0.3, 0.7, 0.95])
def test_refit_on_mask_never_increases_the_reconstruction_error(seed: int, sparsity: float) -> None:
    weight, hessian, mask = _layer_case(seed, sparsity)
    new = refit_on_mask(weight, hessian, mask)
    assert bool((new[~mask] == 0).all())
    refit = reconstruction_error(weight, new, hessian)
    masked = reconstruction_error(weight, weight * mask, hessian)
    assert bool((refit <= masked).all())
    assert float(refit.sum()) < float(masked.sum())  # and it does help on correlated inputs


def test_ridge_reconstruction_is_registered_and_keeps_masks() -> None:
    assert "ridge" in RECONSTRUCTIONS.names()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
    data = [(torch.randn(64, 10), torch.zeros(64, dtype=torch.long))]
    masks = MaskSet({"0.weight": torch.rand(16, 10) > 0.6, "2.weight": torch.rand(3, 16) > 0.6})
    dense = model[0].weight.detach().clone()
    out = reconstruct(model, masks, {"method": "ridge", "ridge": 1e-10}, data=data)
    for name in masks:
        assert torch.equal(out[name], masks[name])
        assert bool((dict(model.named_parameters())[name][~masks[name]] == 0).all())
    x = data[0][0]
    masked_err = ((x @ (dense * masks["0.weight"]).T - x @ dense.T) ** 2).sum()
    refit_err = ((x @ model[0].weight.detach().T - x @ dense.T) ** 2).sum()
    assert float(refit_err) <= float(masked_err)
    with pytest.raises(ConfigError, match="non-negative"):
        build_reconstruction({"method": "ridge", "ridge": -1})


def _digits_fit(seed: int) -> tuple[nn.Module, float]:
    splits = load_digits()
    torch.manual_seed(seed)
    model = MLP(64, [64], 10, "tanh")
    fit_closed_form(
        model, list(splits.train_loader(512, shuffle=False)), ClosedFormConfig(passes=2), classes=10
    )
    with torch.no_grad():
        accuracy = float((model(splits.test_x).argmax(1) == splits.test_y).float().mean())
    return model, accuracy


def test_trainer_learns_digits_deterministically() -> None:
    a, accuracy = _digits_fit(0)
    b, _ = _digits_fit(0)
    assert accuracy > 0.9
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_trainer_keeps_masks() -> None:
    splits = load_digits()
    torch.manual_seed(0)
    model = MLP(64, [32], 10, "tanh")
    gen = torch.Generator().manual_seed(0)
    masks = MaskSet({"features.1.weight": torch.rand(32, 64, generator=gen) > 0.5})
    fit_closed_form(
        model,
        list(splits.train_loader(512, shuffle=False)),
        ClosedFormConfig(passes=1),
        classes=10,
        masks=masks,
    )
    assert bool((model.features[1].weight[~masks["features.1.weight"]] == 0).all())


def test_leaky_relu_sequential_and_a_pruned_decision_layer() -> None:
    splits = load_digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.LeakyReLU(0.2), nn.Linear(48, 10))
    gen = torch.Generator().manual_seed(1)
    masks = MaskSet({"3.weight": torch.rand(10, 48, generator=gen) > 0.5})
    batches = list(splits.train_loader(512, shuffle=False))
    fit_closed_form(model, batches, ClosedFormConfig(passes=1), classes=10, masks=masks)
    assert bool((model[3].weight[~masks["3.weight"]] == 0).all())
    with torch.no_grad():
        assert float((model(splits.test_x).argmax(1) == splits.test_y).float().mean()) > 0.85


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.b = nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.a(x)) + x)  # a skip connection: not a chain of its layers


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.0), nn.Linear(8, 3)), r"'1'.*not invertible"),
        (nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Tanh(), nn.Linear(8, 3)), r"'2' is another"),
        (nn.Sequential(nn.Linear(8, 8), nn.Tanh()), "ending in a Linear"),
        (_Residual(), "forward is something else"),
    ],
)
def test_models_that_are_not_invertible_chains_are_refused(model: nn.Module, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        fit_closed_form(model, [(torch.randn(4, 8), torch.zeros(4, dtype=torch.long))], classes=3)


def test_non_invertible_activation_is_refused_by_name() -> None:
    model = MLP(64, [16], 10, "relu")
    with pytest.raises(ConfigError, match=r"'features\.2'.*not invertible.*activation tanh"):
        fit_closed_form(model, [(torch.randn(4, 64), torch.zeros(4, dtype=torch.long))], classes=10)


def _recipe(train: dict[str, object]) -> dict[str, object]:
    return {
        "data": "digits",
        "model": {"name": "mlp", "options": {"activation": "tanh"}},
        "train": train,
        "stages": [{"train": {}}, {"evaluate": {}}],
    }


def test_a_stage_switches_between_gradient_and_closed_form_training() -> None:
    raw = _recipe({"epochs": 4, "optimizer": {"lr": 0.05}})
    raw["stages"] = [{"train": {"method": "closed_form", "passes": 1}}, {"train": {}}]
    recipe = recipe_from_raw(raw, "test")
    solved, gradient = (recipe.train_config(s.options) for s in recipe.stages)  # type: ignore[union-attr]
    assert isinstance(solved, ClosedFormConfig) and solved.passes == 1 and solved.rank == 10
    assert isinstance(gradient, TrainConfig) and gradient.epochs == 4
    raw = _recipe({"method": "closed_form"})
    raw["stages"] = [{"train": {}}, {"train": {"method": None, "epochs": 2}}]
    recipe = recipe_from_raw(raw, "test")
    solved, gradient = (recipe.train_config(s.options) for s in recipe.stages)  # type: ignore[union-attr]
    assert isinstance(solved, ClosedFormConfig)
    assert isinstance(gradient, TrainConfig) and gradient.epochs == 2


def test_bad_options_give_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"train\.rank"):
        recipe_from_raw(_recipe({"method": "closed_form", "rank": 0}), "test")
    with pytest.raises(ConfigError, match=r"train\.method.*unknown train method 'closed'.*closed_form"):
        recipe_from_raw(_recipe({"method": "closed"}), "test")
    with pytest.raises(ConfigError, match=r"train\.epochs"):  # gradient options do not apply
        recipe_from_raw(_recipe({"method": "closed_form", "epochs": 3}), "test")
    raw = _recipe({"method": "closed_form"})
    raw["stages"] = [{"train": {"prune": {"criterion": "magnitude"}}}]
    with pytest.raises(ConfigError, match=r"stages\.0\.train: train method closed_form .* prune block"):
        recipe_from_raw(raw, "test")


def test_preset_runs_from_the_cli(tmp_path: Path) -> None:
    recipe = load_recipe("closed-form-mlp-digits", quick=True)
    assert recipe.train_config({}).method == "closed_form"  # type: ignore[union-attr]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "secateurs",
            "run",
            "closed-form-mlp-digits",
            "--quick",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "refit on mask" in out.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "secateurs",
            "run",
            "closed-form-mlp-digits",
            "--set",
            "train.rank=-1",
            "--out",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "train.rank" in bad.stderr and "Traceback" not in bad.stderr


def test_a_recipe_mlp_with_leaky_relu_trains_in_closed_form() -> None:
    """The model zoo's MLP offers an invertible leaky ReLU (slope 0.1), so a recipe can use it."""
    splits = load_digits()
    model = secateurs.models.build_model("mlp", (64,), 10, seed=0, hidden=[64], activation="leaky_relu")
    assert isinstance(model.features[2], nn.LeakyReLU) and model.features[2].negative_slope == 0.1
    fit_closed_form(
        model, list(splits.train_loader(512, shuffle=False)), ClosedFormConfig(passes=2), classes=10
    )
    with torch.no_grad():
        accuracy = float((model(splits.test_x).argmax(1) == splits.test_y).float().mean())
    assert accuracy > 0.85
