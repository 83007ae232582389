"""Sparse inference: sparsified models compute what the dense masked model computes, and the
per-layer kernel choice follows the timings (injected here, so the noisy machine plays no part)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, masks_of
from secateurs.methods.pruning import prune
from secateurs.models import build_model
from secateurs.sparse import SparseConv1x1, SparseLinear, _ext, choose, sparse_plan, sparsify
from secateurs.sparse.inference import _kernel_for

ATOL = 1e-5


def favour(winner: str | dict[int, str]) -> Callable[[str, int, str, Any], float]:
    """A fake timer under which `winner` (per batch size, or always) takes 1 ms and the rest 10 ms."""

    def measure(_layer: str, batch: int, kernel: str, _run: Any) -> float:
        w = winner if isinstance(winner, str) else winner[batch]
        return 1.0 if kernel == w else 10.0

    return measure


def lenet(sparsity: float, seed: int = 0) -> nn.Module:
    model = build_model("lenet300", (1, 28, 28), 10, seed=seed)
    return prune(model, sparsity, allocation="uniform", seed=seed).eval()


@pytest.fixture
def no_ext(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The C++ kernel "fails to build" for this test; the real state is restored after it."""

    def broken() -> Any:
        raise RuntimeError("no compiler here")

    _ext.reset()
    monkeypatch.setattr(_ext, "_build", broken)
    yield
    _ext.reset()


needs_ext = pytest.mark.skipif(_ext.extension() is None, reason="C++ kernel not built on this machine")


# -- the chooser ---------------------------------------------------------------------------------
def test_choose_takes_the_fastest_sparse_kernel_only_past_the_margin() -> None:
    timings = {
        1: {"dense": 1.0, "csr_ext": 0.5, "torch_csr": 2.0},
        64: {"dense": 10.0, "csr_ext": 9.8, "torch_csr": 4.0},
        256: {"dense": 10.0, "csr_ext": 20.0, "torch_csr": 9.9},  # 1 % faster: noise, dense stays
    }
    assert choose(timings) == ((1, "csr_ext"), (64, "torch_csr"), (256, "dense"))
    assert choose(timings, margin=1.0) == ((1, "csr_ext"), (64, "torch_csr"))


def test_choose_breaks_ties_by_kernel_order_and_merges_equal_neighbours() -> None:
    tie = {"dense": 2.0, "csr_ext": 1.0, "torch_csr": 1.0}
    assert choose({8: tie, 1: tie, 64: {"dense": 1.0, "csr_ext": 1.0, "torch_csr": 1.0}}) == (
        (1, "csr_ext"),
        (64, "dense"),
    )
    assert choose({4: {"dense": 3.0, "torch_csr": 1.0}}) == ((1, "torch_csr"),)  # below 4 too


def test_plan_dispatch_uses_the_largest_measured_batch_not_above_the_rows() -> None:
    plan = ((1, "csr_ext"), (64, "torch_csr"), (512, "dense"))
    assert [_kernel_for(plan, r) for r in (1, 63, 64, 511, 512, 10_000)] == [
        "csr_ext",
        "csr_ext",
        "torch_csr",
        "torch_csr",
        "dense",
        "dense",
    ]


def test_choose_rejects_timings_without_dense() -> None:
    with pytest.raises(ConfigError, match="dense"):
        choose({1: {"torch_csr": 1.0}})


# -- sparsify: structure and plan ---------------------------------------------------------------
def test_sparsify_follows_injected_timings_per_layer_and_keeps_dense_winners_dense() -> None:
    model = lenet(0.9)

    def measure(layer: str, batch: int, kernel: str, _run: Any) -> float:
        if layer == "classifier":  # dense wins everywhere: the layer is not replaced
            return {"dense": 1.0}.get(kernel, 5.0)
        best = {1: "csr_ext", 64: "torch_csr"}[batch] if _ext.extension() else "torch_csr"
        return 1.0 if kernel == best else 3.0

    sparse = sparsify(model, measure=measure)
    first, second, last = sparse.features[1], sparse.features[3], sparse.classifier
    assert isinstance(first, SparseLinear) and isinstance(second, SparseLinear)
    # kept dense, but wrapped: after sparse layers its input is their transposed view, read in place
    assert isinstance(last, SparseLinear) and last.plan == ((1, "dense"),)
    x = torch.randn(64, 1, 28, 28)
    with torch.inference_mode():
        hidden = sparse.features(x)
        assert not hidden.is_contiguous() and hidden.t().is_contiguous()
        torch.testing.assert_close(sparse(x), model(x), atol=ATOL, rtol=0)
    expected = ((1, "csr_ext"), (64, "torch_csr")) if _ext.extension() else ((1, "torch_csr"),)
    assert first.plan == second.plan == expected
    assert first.weight is None  # no dense copy when dense never runs
    report = {p.name: p for p in sparse_plan(sparse)}
    assert list(report) == ["features.1", "features.3", "classifier"]
    assert report["classifier"].replaced is False and report["classifier"].choice == {1: "dense", 64: "dense"}
    assert report["features.1"].nnz == int(masks_of(model)["features.1.weight"].sum())
    assert report["features.1"].sparsity == pytest.approx(0.9, abs=1e-3)


def test_sparsify_leaves_the_original_model_alone() -> None:
    model = lenet(0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparsify(model, measure=favour("torch_csr"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.features[1]) is nn.Linear and masks_of(model) is not None


def test_sparsify_without_masks_is_refused_and_explicit_masks_work() -> None:
    model = nn.Sequential(nn.Linear(6, 4))
    with pytest.raises(ConfigError, match="no masks"):
        sparsify(model, measure=favour("torch_csr"))
    with torch.no_grad():
        model[0].weight[:, :3] = 0
    sparse = sparsify(model, masks=MaskSet({"0.weight": model[0].weight != 0}), measure=favour("torch_csr"))
    assert isinstance(sparse[0], SparseLinear) and sparse[0].nnz == 12


def test_sparsify_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    seen: list[int] = []

    def measure(_layer: str, _batch: int, kernel: str, _run: Any) -> float:
        seen.append(torch.get_num_threads())
        return 1.0

    sparsify(lenet(0.9), threads=2, measure=measure)
    assert set(seen) == {2} and torch.get_num_threads() == before


# -- equality with the dense masked model --------------------------------------------------------
@pytest.mark.parametrize("kernel", ["csr_ext", "torch_csr", "dense"])
@pytest.mark.parametrize("sparsity", [0.8, 0.95, 0.99])
def test_sparsified_lenet_equals_dense_masked(kernel: str, sparsity: float) -> None:
    if kernel == "csr_ext" and _ext.extension() is None:
        pytest.skip("C++ kernel not built")
    model = lenet(sparsity)
    sparse = sparsify(model, batch_sizes=(1,), measure=favour(kernel if kernel != "dense" else "torch_csr"))
    if kernel == "dense":  # a layer that keeps its dense weight for some batches runs it
        sparse = sparsify(model, batch_sizes=(1, 64), measure=favour({1: "torch_csr", 64: "dense"}))
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for batch in (1, 3, 64, 65):
            x = torch.randn(batch, 1, 28, 28, generator=gen)
            torch.testing.assert_close(sparse(x), model(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kernel", ["csr_ext", "torch_csr"])
def test_no_bias_non_contiguous_and_leading_dims(kernel: str) -> None:
    if kernel == "csr_ext" and _ext.extension() is None:
        pytest.skip("C++ kernel not built")
    torch.manual_seed(0)
    model = prune(nn.Sequential(nn.Linear(70, 33, bias=False)), 0.9, criterion="random", seed=0)
    sparse = sparsify(model, measure=favour(kernel))
    assert sparse[0].bias is None and sparse[0].plan == ((1, kernel),)
    base = torch.randn(70, 130)
    with torch.inference_mode():
        for x in (base.t(), base.t()[::2], base[:, :1].t(), torch.randn(2, 5, 70)):
            assert not x.is_contiguous() or x.dim() == 3
            torch.testing.assert_close(sparse(x), model(x), atol=ATOL, rtol=0)


def conv_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(8, 16, 1),
        nn.ReLU(),
        nn.Conv2d(16, 12, 1, bias=False),
        nn.Conv2d(12, 4, 3, padding=1),  # not 1x1: stays a convolution
        nn.Conv2d(4, 4, 1, stride=2),  # strided: stays too
    )
    return prune(model, 0.9, allocation="uniform", seed=0).eval()


@pytest.mark.parametrize("kernel", ["csr_ext", "torch_csr"])
def test_sparsified_1x1_convs_equal_dense_masked(kernel: str) -> None:
    if kernel == "csr_ext" and _ext.extension() is None:
        pytest.skip("C++ kernel not built")
    model = conv_model()
    example = torch.randn(2, 8, 9, 10)
    sparse = sparsify(model, batch_sizes=(1, 4), example_input=example, measure=favour(kernel))
    assert isinstance(sparse[0], SparseConv1x1) and isinstance(sparse[2], SparseConv1x1)
    assert type(sparse[3]) is nn.Conv2d and type(sparse[4]) is nn.Conv2d
    with torch.inference_mode():
        for x in (
            torch.randn(1, 8, 9, 10),
            torch.randn(3, 8, 7, 5),
            torch.randn(2, 8, 10, 9).transpose(2, 3),
        ):
            torch.testing.assert_close(sparse(x), model(x), atol=ATOL, rtol=0)


def test_1x1_convs_need_an_example_input() -> None:
    with pytest.raises(ConfigError, match="example_input"):
        sparsify(conv_model(), measure=favour("torch_csr"))


# -- the C++ kernel directly ---------------------------------------------------------------------
@needs_ext
def test_extension_kernels_match_dense_at_odd_sizes_and_empty_rows() -> None:
    ext = _ext.extension()
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(37, 29, generator=gen) * (torch.rand(37, 29, generator=gen) < 0.2)
    w[5] = 0  # an output row with no nonzeros gives the bias alone
    b = torch.randn(37, generator=gen)
    layer = SparseLinear(w, w != 0, b, ((1, "csr_ext"),))
    for batch in (1, 2, 63, 64, 65, 129):
        x = torch.randn(batch, 29, generator=gen)
        y = ext.csr_linear(x, layer.crow, layer.col, layer.values, b)
        torch.testing.assert_close(y, F.linear(x, w, b), atol=ATOL, rtol=0)
        assert y.is_contiguous() if batch == 1 else y.t().is_contiguous()  # (out, batch) underneath
        # a transposed input (what the sparse kernels return) is read in place: same result
        again = ext.csr_linear(x.t().contiguous().t(), layer.crow, layer.col, layer.values, b)
        assert torch.equal(again, y)
    # sparse layers in a chain pass the transposed view on without copying, for either kernel
    w2 = torch.randn(13, 37, generator=gen) * (torch.rand(13, 37, generator=gen) < 0.3)
    for kernels in (("csr_ext", "csr_ext"), ("torch_csr", "csr_ext"), ("csr_ext", "torch_csr")):
        first = SparseLinear(w, w != 0, b, ((1, kernels[0]),))
        second = SparseLinear(w2, w2 != 0, None, ((1, kernels[1]),))
        x = torch.randn(64, 29, generator=gen)
        with torch.no_grad():
            torch.testing.assert_close(second(first(x)), F.linear(F.linear(x, w, b), w2), atol=ATOL, rtol=0)
    x4 = torch.randn(3, 29, 7, 11, generator=gen)
    y4 = ext.csr_conv1x1(x4.reshape(3, 29, 77), layer.crow, layer.col, layer.values, b.new_empty(0))
    torch.testing.assert_close(y4.view(3, 37, 7, 11), F.conv2d(x4, w[:, :, None, None]), atol=ATOL, rtol=0)


# -- fallback without the C++ kernel --------------------------------------------------------------
@pytest.mark.usefixtures("no_ext")
def test_without_the_extension_torch_kernels_serve_after_one_warning() -> None:
    model = lenet(0.95)
    with pytest.warns(RuntimeWarning, match="could not be built") as caught:
        sparse = sparsify(model, measure=favour("csr_ext"))  # csr_ext is not even timed
    assert sum(issubclass(w.category, RuntimeWarning) for w in caught) == 1
    assert all(set(p.timings_ms[1]) == {"dense", "torch_csr"} for p in sparse_plan(sparse))
    x = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), model(x), atol=ATOL, rtol=0)


@needs_ext
def test_a_csr_ext_plan_falls_back_to_torch_csr_where_the_extension_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = lenet(0.95)
    sparse = sparsify(model, measure=favour("csr_ext"))
    assert sparse.features[1].plan == ((1, "csr_ext"),)
    monkeypatch.setattr(_ext, "extension", lambda: None)  # e.g. loaded on a machine without a compiler
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), model(x), atol=ATOL, rtol=0)


# -- persistence and misuse ------------------------------------------------------------------------
def test_sparsified_model_saves_whole_and_its_state_dict_reloads() -> None:
    model = lenet(0.95)
    sparse = sparsify(model, measure=favour("torch_csr"))
    buffer = io.BytesIO()
    torch.save(sparse, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(3, 1, 28, 28)
    twin = sparsify(lenet(0.95, seed=0), measure=favour("torch_csr"))
    with torch.no_grad():
        for v in twin.state_dict().values():
            if v.is_floating_point():
                v.zero_()
    twin.load_state_dict(sparse.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), atol=ATOL, rtol=0)
        torch.testing.assert_close(twin(x), model(x), atol=ATOL, rtol=0)


def test_inputs_that_need_gradients_are_refused() -> None:
    sparse = sparsify(lenet(0.9), measure=favour("torch_csr"))
    with pytest.raises(ConfigError, match="inference"):
        sparse(torch.randn(1, 784, requires_grad=True))


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="batch_sizes"):
        sparsify(lenet(0.9), batch_sizes=(0,), measure=favour("torch_csr"))
    with pytest.raises(ConfigError, match="margin"):
        sparsify(lenet(0.9), margin=0.5, measure=favour("torch_csr"))


def test_real_timing_produces_a_plan_that_computes_the_same() -> None:
    model = prune(nn.Sequential(nn.Linear(40, 20)), 0.9, seed=0).eval()
    sparse = sparsify(model, batch_sizes=(1, 8), rounds=1)
    (entry,) = sparse_plan(sparse)
    assert set(entry.choice) == {1, 8} and all(t["dense"] > 0 for t in entry.timings_ms.values())
    x = torch.randn(8, 40)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), model(x), atol=ATOL, rtol=0)


def test_a_model_off_the_cpu_is_refused_with_the_fix() -> None:
    model = nn.Linear(8, 4, device="meta")  # stands in for a GPU: any non-CPU device
    masks = MaskSet({"weight": torch.ones(4, 8, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="sparse kernels are for CPU inference, but the model is on meta"):
        sparsify(model, masks=masks)
