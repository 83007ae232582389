"""Edge cases of the Python API (issue 19, failure 10): each wrong argument is one SecateursError
naming what was given and the fix, raised before the model is touched, and a layer of no weights
is skipped instead of dividing by zero or being reported as collapsed."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secateurs import ConfigError, SecateursError, compute_masks, masks_of, prune
from secateurs.methods.allocations import LayerInfo, allocate
from secateurs.methods.entry import ModelTypeError

ALLOCATIONS = ["erk", "er", "global", "uniform", "smart_ratio"]
DATA_CRITERIA = ["taylor", "snip", "grasp", "wanda"]
LABELLED = ["taylor", "snip", "grasp"]  # differentiate a loss of (x, y)


class WithEmpty(nn.Module):
    """Two real layers with an empty one between them (and one more after): 0 weights each."""

    def __init__(self, empty: bool = True) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        if empty:
            with pytest.warns(UserWarning, match="zero-element"):
                self.gap = nn.Linear(0, 16)  # its output is its bias alone
                self.nil = nn.Linear(16, 0)
        self.b = nn.Linear(16, 12)
        self.c = nn.Linear(12, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        if hasattr(self, "gap"):
            h = h + self.gap(x[:, :0]) + self.nil(h).sum()
        return self.c(torch.relu(self.b(h)))


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    model[1].running_mean.add_(0.5)  # buffers that a forward in train mode would move
    return model


def _batch(n: int = 10) -> tuple[Tensor, Tensor]:
    torch.manual_seed(1)
    return torch.randn(n, 8), torch.randint(0, 4, (n,))


def _snapshot(model: nn.Module) -> dict[str, Any]:
    """Every parameter and buffer as raw bytes (NaN-safe), the grads, modes and the masks."""
    return {
        "state": {k: v.detach().clone().view(-1).view(torch.uint8) for k, v in model.state_dict().items()},
        "grads": {n: p.grad for n, p in model.named_parameters()},
        "modes": [m.training for m in model.modules()],
        "masks": masks_of(model),
        "params": [id(p) for p in model.parameters()],
    }


def _refused(model: nn.Module, *args: Any, match: str, **options: Any) -> SecateursError:
    """prune(model, ...) raises a SecateursError matching `match` and leaves the model as it was."""
    before = _snapshot(model)
    with pytest.raises(SecateursError, match=match) as err:
        prune(model, *args, **options)
    after = _snapshot(model)
    assert after["masks"] is None and before["masks"] is None
    assert after["grads"] == before["grads"] and after["modes"] == before["modes"]
    assert after["params"] == before["params"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    assert "\n" not in str(err.value) and err.value.fix
    return err.value


# -- layers of no weights ----------------------------------------------------------------------------
@pytest.mark.parametrize("allocation", ALLOCATIONS)
def test_a_layer_of_no_weights_is_skipped_by_every_allocation(allocation: str) -> None:
    torch.manual_seed(0)
    model = WithEmpty()
    torch.manual_seed(0)
    plain = WithEmpty(empty=False)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            p.copy_(model.get_parameter(name))
    prune(model, 0.7, allocation=allocation)
    masks = masks_of(model)
    assert masks is not None and list(masks) == ["a.weight", "b.weight", "c.weight"]
    # the empty layers take no share of the budget: the others are allocated as without them
    expected = compute_masks(plain, 0.7, allocation=allocation)
    for name in expected:
        assert torch.equal(masks[name], expected[name]), name


@pytest.mark.parametrize("allocation", ALLOCATIONS)
def test_allocate_gives_a_unit_of_no_groups_nothing_and_calls_it_no_collapse(allocation: str) -> None:
    def unit(name: str, shape: tuple[int, ...]) -> LayerInfo:
        torch.manual_seed(len(name))
        return LayerInfo(name, shape, 1, torch.rand(math.prod(shape)))

    layers = [
        unit("a", (16, 8)),
        unit("gap", (16, 0)),
        unit("b", (12, 16)),
        unit("nil", (0, 12)),
        unit("c", (4, 12)),
    ]
    keep = allocate(allocation, layers, 0.7)
    assert keep["gap"] == keep["nil"] == 0
    plain = allocate(allocation, [layers[0], layers[2], layers[4]], 0.7)
    assert {n: keep[n] for n in plain} == dict(plain)


@pytest.mark.parametrize("structure", ["nm", "block", "channel"])
def test_a_layer_of_no_weights_is_skipped_by_every_structure(structure: str) -> None:
    torch.manual_seed(0)
    model = WithEmpty()
    options: dict[str, Any] = {"structure": structure, "allocation": "erk"}
    options |= {"structure_options": {"bh": 2, "bw": 2}} if structure == "block" else {}
    options |= {"example_input": torch.randn(2, 8)} if structure == "channel" else {}
    prune(model, 0.5, **options)
    masks = masks_of(model)
    assert masks is not None and 0 < masks.kept() < masks.numel()


def test_a_model_whose_layers_all_have_no_weights_says_so() -> None:
    with pytest.warns(UserWarning, match="zero-element"):
        model = nn.Sequential(nn.Linear(0, 4), nn.Linear(4, 0))
    error = _refused(model, 0.5, allocation="erk", match="0 weights")
    assert "nothing to prune" in error.what


def test_skip_first_skips_the_first_layer_that_has_weights() -> None:
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="zero-element"):
        model = nn.Sequential(nn.Linear(8, 0), nn.Linear(8, 16), nn.Linear(16, 4))
    prune(model, 0.5, layers={"skip_first": True})
    masks = masks_of(model)
    assert masks is not None and list(masks) == ["2.weight"]


# -- empty batches and non-finite values ---------------------------------------------------------------
@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_an_empty_batch_is_refused(criterion: str) -> None:
    x, y = _batch()
    _refused(_mlp(), 0.5, criterion=criterion, data=(x[:0], y[:0]), match="the batch is empty")
    loader = [(x[:4], y[:4]), (x[:0], y[:0])]  # the second batch of a loader
    error = _refused(_mlp(), 0.5, criterion=criterion, data=loader, match="the batch is empty: batch 1")
    assert "(0, 8)" in error.what


@pytest.mark.parametrize("value", [math.inf, -math.inf])
@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
def test_infinite_weights_are_named_not_reported_as_collapse(value: float, criterion: str) -> None:
    model = _mlp()
    with torch.no_grad():
        model[0].weight.fill_(value)
    error = _refused(model, 0.5, criterion=criterion, data=_batch(), match="'0.weight'")
    assert "collapse" not in str(error)
    if criterion == "magnitude":
        assert "128 infinite scores of 128" in error.what


def test_nan_weights_are_named() -> None:
    model = _mlp()
    with torch.no_grad():
        model[3].weight.fill_(math.nan)
    error = _refused(model, 0.5, match="NaN scores for '3.weight'")
    assert "collapse" not in str(error)


def test_negative_infinite_scores_still_rank_last() -> None:
    """−inf is a legitimate score (remove first): only NaN and +inf are refused."""
    from secateurs.methods.criteria import Criterion

    class Tagged(Criterion):
        name = "tagged"

        def score(self, ctx: Any) -> dict[str, Tensor]:
            out = {n: p.detach().abs() for n, p in ctx.params().items()}
            out["0.weight"][0] = -math.inf
            return out

    masks = compute_masks(_mlp(), 0.5, criterion=Tagged())
    assert not masks["0.weight"][0].any()


# -- data without labels ----------------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", LABELLED)
def test_a_bare_tensor_says_to_pass_labels(criterion: str) -> None:
    x, _ = _batch()
    error = _refused(_mlp(), 0.5, criterion=criterion, data=x, match="inputs without labels")
    assert "data=(x, y)" in (error.fix or "")


def test_a_criterion_that_reads_only_inputs_takes_a_bare_tensor() -> None:
    x, y = _batch()
    bare = compute_masks(_mlp(), 0.5, criterion="wanda", data=x)
    paired = compute_masks(_mlp(), 0.5, criterion="wanda", data=(x, y))
    for name in paired:
        assert torch.equal(bare[name], paired[name])


def test_data_that_is_not_batches_is_refused() -> None:
    _refused(_mlp(), 0.5, criterion="taylor", data=3, match="data must be an \\(x, y\\) batch")


# -- inputs and labels that do not fit the model ------------------------------------------------------------
@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_a_wrong_input_shape_names_the_module_and_the_shape(criterion: str) -> None:
    _, y = _batch()
    error = _refused(_mlp(), 0.5, criterion=criterion, data=(torch.randn(10, 7), y), match="module '0'")
    assert "(10, 7)" in error.what
    assert "Linear '0' takes inputs with a last dimension of 8" in (error.fix or "")
    assert isinstance(error.__cause__, RuntimeError)  # torch's own error stays attached


def test_a_wrong_channel_count_names_the_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    data = (torch.randn(5, 1, 6, 6), torch.randint(0, 2, (5,)))
    error = _refused(model, 0.5, criterion="taylor", data=data, match="module '0' \\(Conv2d\\)")
    assert "(5, 1, 6, 6)" in error.what and "3 channels" in (error.fix or "")


@pytest.mark.parametrize("labels", [lambda y: y + 10, lambda y: y - 10], ids=["too_high", "negative"])
@pytest.mark.parametrize("criterion", LABELLED)
def test_labels_out_of_range_are_refused(criterion: str, labels: Any) -> None:
    x, y = _batch()
    error = _refused(
        _mlp(), 0.5, criterion=criterion, data=(x, labels(y)), match="outside the model's 4 classes"
    )
    assert "[0, 4)" in (error.fix or "")


def test_the_ignore_index_is_a_valid_label() -> None:
    x, y = _batch()
    y[0] = -100  # F.cross_entropy's ignore_index
    prune(_mlp(), 0.5, criterion="taylor", data=(x, y))


@pytest.mark.parametrize("criterion", LABELLED)
def test_float_labels_are_refused(criterion: str) -> None:
    x, y = _batch()
    error = _refused(_mlp(), 0.5, criterion=criterion, data=(x, y.float()), match="dtype float32")
    assert "y.long()" in (error.fix or "")


def test_class_probabilities_and_other_losses_are_accepted() -> None:
    x, y = _batch()
    prune(_mlp(), 0.5, criterion="taylor", data=(x, F.one_hot(y, 4).float()))  # soft labels
    prune(_mlp(), 0.5, criterion="taylor", data=(x, torch.randn(10, 4)), loss_fn=F.mse_loss)  # regression


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_inputs_and_labels_of_different_lengths_are_refused(criterion: str) -> None:
    x, y = _batch()
    error = _refused(_mlp(), 0.5, criterion=criterion, data=(x, y[:5]), match="10 inputs")
    assert "5 labels" in error.what


@pytest.mark.parametrize("criterion", LABELLED)
def test_checked_labels_give_the_same_masks(criterion: str) -> None:
    """The checks only read the labels: masks equal those of the plain, unchecked loss."""
    x, y = _batch(32)
    checked = compute_masks(_mlp(), 0.5, criterion=criterion, data=(x, y))
    plain = compute_masks(
        _mlp(), 0.5, criterion=criterion, data=(x, y), loss_fn=lambda o, t: F.cross_entropy(o, t)
    )
    for name in plain:
        assert torch.equal(checked[name], plain[name]), name


# -- the model argument ----------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
def test_a_model_on_the_meta_device_is_refused(criterion: str) -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(ConfigError, match="meta device") as err:
        prune(model, 0.5, criterion=criterion, data=_batch())
    assert "to_empty(device=" in (err.value.fix or "") and masks_of(model) is None


@pytest.mark.parametrize("call", [prune, compute_masks])
def test_a_model_that_is_not_a_module_is_a_type_error(call: Any) -> None:
    with pytest.raises(ModelTypeError, match=r"nn\.Module, got a str \('model'\)") as err:
        call("model", 0.5)
    assert isinstance(err.value, TypeError) and isinstance(err.value, SecateursError)


def test_masks_of_a_non_module_is_one_clear_error() -> None:
    with pytest.raises(ModelTypeError, match=r"masks_of needs an nn\.Module, got a str"):
        masks_of("model")  # type: ignore[arg-type]
