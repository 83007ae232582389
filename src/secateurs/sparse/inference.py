"""Sparse inference: masked Linear layers and 1×1 convolutions as CSR, where that is faster.

Whether a sparse product beats a dense one depends on the layer's shape, its sparsity, the batch
size, the thread count and the machine: torch's CSR product wins ~4× at 95 % sparsity and batch 64
but loses 2–6× at batch 1. So `sparsify` does not guess: it times each kernel on each layer's own
shape for the batch sizes you name, and each layer keeps a plan (batch size → kernel) that its
forward follows by the rows of the input it gets. Layers where dense wins at every batch size
stay plain `nn.Linear` / `nn.Conv2d`.

Kernels: "dense" (F.linear / F.conv2d), "torch_csr" (torch.addmm with a CSR weight, MKL) and
"csr_ext" (a small C++ kernel, `secateurs.sparse._ext`; optional: without a compiler the other
two remain). Outputs equal the dense masked model's up to float32 rounding (summation order).

Scope and persistence: CPU inference only (buffers, no parameters, no gradients). A sparsified
model pickles whole (`torch.save(model)` / `torch.load(..., weights_only=False)`); its
`state_dict` loads into a model sparsified from the same masks. Plans are measured on this
machine at these thread counts: on another machine, sparsify the pruned model again.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet, masks_of, remove_masks
from secateurs.sparse import _ext

DENSE, TORCH_CSR, CSR_EXT = "dense", "torch_csr", "csr_ext"
KERNELS = (DENSE, CSR_EXT, TORCH_CSR)  # also the tie-break order of the chooser
_REPORT = "_secateurs_sparse_plan"

Plan = tuple[tuple[int, str], ...]  # ((min_rows, kernel), ...) ascending in min_rows
Measure = Callable[[str, int, str, Callable[[], Any]], float]  # (layer, batch, kernel, run) -> ms


@dataclass(frozen=True)
class LayerPlan:
    """What `sparsify` measured and decided for one layer."""

    name: str
    kind: str  # "linear" or "conv1x1"
    shape: tuple[int, int]  # (out, in)
    nnz: int
    sparsity: float
    timings_ms: dict[int, dict[str, float]]  # batch size -> kernel -> min ms over rounds
    choice: dict[int, str]  # batch size -> kernel
    replaced: bool  # False: dense won at every batch size and the layer stayed dense
    plan: Plan = field(default=())


def choose(timings: Mapping[int, Mapping[str, float]], *, margin: float = 1.05) -> Plan:
    """The plan for one layer from its timings: per batch size the fastest kernel, but a sparse one
    only if dense takes more than `margin` times as long (timing noise must not make a layer
    slower than dense). Ties go to the earlier kernel in KERNELS; pure, so tests inject timings.
    Batch sizes between two measured ones use the smaller one's choice; below the smallest, its.
    """
    if not timings:
        raise ConfigError(
            "no timings to choose from", where="sparse.choose", fix="measure at least one batch"
        )
    plan: list[tuple[int, str]] = []
    for batch in sorted(timings):
        times = timings[batch]
        if DENSE not in times:
            raise ConfigError(f"timings for batch {batch} lack the dense kernel", where="sparse.choose")
        sparse = [(times[k], KERNELS.index(k), k) for k in KERNELS[1:] if k in times]
        best = min(sparse) if sparse else None
        kernel = best[2] if best is not None and times[DENSE] > margin * best[0] else DENSE
        if not plan or plan[-1][1] != kernel:
            plan.append((batch if plan else 1, kernel))
    return tuple(plan)


def _kernel_for(plan: Plan, rows: int) -> str:
    kernel = plan[0][1]
    for min_rows, k in plan:
        if rows >= min_rows:
            kernel = k
    return kernel


class _SparseBase(nn.Module):
    """CSR buffers (int32 row pointers and columns, values), the bias, and the dense weight when
    the plan uses it for some batch sizes."""

    in_features: int
    out_features: int

    def __init__(self, weight2d: Tensor, keep: Tensor, bias: Tensor | None, plan: Plan) -> None:
        super().__init__()
        self.out_features, self.in_features = weight2d.shape
        w = (weight2d * keep).detach()
        # exactly the mask's entries, row-major (a kept weight that happens to be 0.0 stays stored)
        rows, cols = keep.nonzero(as_tuple=True)
        crow = torch.zeros(self.out_features + 1, dtype=torch.int64)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=self.out_features), 0)
        self.register_buffer("crow", crow.to(torch.int32))
        self.register_buffer("col", cols.to(torch.int32).contiguous())
        self.register_buffer("values", w[rows, cols].contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone().contiguous())
        uses_dense = any(k == DENSE for _, k in plan)
        self.register_buffer("weight", w.clone() if uses_dense else None)
        self.plan: Plan = plan
        self._csr: Tensor | None = None
        self._dense_cache: tuple[Tensor | None, Tensor | None] | None = None

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> nn.Module:
        self._csr = None  # buffers may have moved or changed dtype
        self._dense_cache = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_csr"] = None  # caches, rebuilt from the buffers on first use
        state["_dense_cache"] = None
        return state

    def _dense(self) -> tuple[Tensor | None, Tensor | None]:
        """(weight, bias) without nn.Module's attribute lookup (a microsecond per call at batch 1)."""
        cached = self.__dict__.get("_dense_cache")
        if cached is None:
            cached = self._dense_cache = (self._buffers["weight"], self._buffers["bias"])
        return cached

    def with_plan(self, plan: Plan) -> _SparseBase:
        """This module, set to follow `plan` (the timing loop switches kernels this way)."""
        self.plan = plan
        return self

    def csr(self) -> Tensor:
        """The weight as a torch sparse CSR tensor sharing this module's buffers."""
        if self._csr is None:
            with warnings.catch_warnings():  # torch's one-time "CSR support is in beta" notice
                warnings.simplefilter("ignore", UserWarning)
                self._csr = torch.sparse_csr_tensor(
                    self.crow, self.col, self.values, (self.out_features, self.in_features)
                )
        return self._csr

    def _bias_arg(self) -> Tensor:
        return self.bias if self.bias is not None else self.values.new_empty(0)

    def _check_input(self, x: Tensor) -> None:
        if x.requires_grad and torch.is_grad_enabled():
            raise ConfigError(
                f"{type(self).__name__} is for inference and has no gradients",
                fix="run it under torch.inference_mode() / torch.no_grad(), or train the dense model",
            )

    def kernels(self) -> tuple[str, ...]:
        """Kernels this layer can run here: the C++ one needs float32 and a built extension."""
        ok_ext = self.values.dtype == torch.float32 and self.nnz < 2**31 and _ext.extension() is not None
        return (DENSE, CSR_EXT, TORCH_CSR) if ok_ext else (DENSE, TORCH_CSR)

    def extra_repr(self) -> str:
        density = self.nnz / max(1, self.out_features * self.in_features)
        return f"{self.in_features}, {self.out_features}, density={density:.4f}, plan={self.plan}"


class SparseLinear(_SparseBase):
    """A masked nn.Linear in CSR form; its forward runs the kernel its plan names for the batch."""

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad:
            self._check_input(x)
        if x.dim() == 2:
            return self.run(_kernel_for(self.plan, x.shape[0]), x)
        y = self.run(_kernel_for(self.plan, x.numel() // self.in_features), x.reshape(-1, self.in_features))
        return y.reshape(*x.shape[:-1], self.out_features)

    def run(self, kernel: str, x2: Tensor) -> Tensor:
        """One named kernel on x2 (rows, in). The sparse kernels return a transposed view for
        several rows, and take one as input without copying, so sparse layers chain for free."""
        weight, bias = self._dense()
        if kernel == DENSE and weight is not None:
            if x2.shape[0] > 1 and not x2.is_contiguous() and x2.t().is_contiguous():
                # the transposed view a sparse layer before returns: (W xᵀ)ᵀ reads it in place, where
                # F.linear would copy it (twice the time of the product for a small layer)
                if bias is None:
                    return torch.mm(weight, x2.t()).t()
                return torch.addmm(bias.unsqueeze(1), weight, x2.t()).t()
            return F.linear(x2, weight, bias)
        if kernel == CSR_EXT and x2.dtype == torch.float32:
            ext = _ext.extension()
            if ext is not None:
                if not (x2.is_contiguous() or x2.t().is_contiguous()):
                    x2 = x2.contiguous()
                return ext.csr_linear(x2, self.crow, self.col, self.values, self._bias_arg())
        if self.bias is None:
            return torch.mm(self.csr(), x2.t()).t()
        return torch.addmm(self.bias.unsqueeze(1), self.csr(), x2.t()).t()


class SparseConv1x1(_SparseBase):
    """A masked 1×1, stride-1, unpadded, ungrouped nn.Conv2d in CSR form (plan keyed by images)."""

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.dim() != 4:
            raise ConfigError(f"SparseConv1x1 needs (N, C, H, W) input, got shape {tuple(x.shape)}")
        return self.run(_kernel_for(self.plan, x.shape[0]), x)

    def run(self, kernel: str, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if kernel == DENSE and self.weight is not None:
            return F.conv2d(x, self.weight[:, :, None, None], self.bias)
        if kernel == CSR_EXT and x.dtype == torch.float32:
            ext = _ext.extension()
            if ext is not None:
                y = ext.csr_conv1x1(
                    x.reshape(n, c, h * w).contiguous(), self.crow, self.col, self.values, self._bias_arg()
                )
                return y.view(n, self.out_features, h, w)
        cols = x.reshape(n, c, h * w).transpose(0, 1).reshape(c, n * h * w)
        y = (
            torch.mm(self.csr(), cols)
            if self.bias is None
            else torch.addmm(self.bias.unsqueeze(1), self.csr(), cols)
        )
        return y.view(self.out_features, n, h, w).transpose(0, 1)


def min_ms(
    runs: Mapping[str, Callable[[], Any]], *, rounds: int, min_round_ms: float = 2.0
) -> dict[str, float]:
    """Minimum ms per call of each function, rounds interleaved so a slow spell of a shared machine
    hits all alike; each round repeats a call long enough (~min_round_ms) to beat timer noise."""
    iters: dict[str, int] = {}
    with torch.inference_mode():
        for name, run in runs.items():
            run()  # warm-up: lazy CSR build, first-call allocations
            started = time.perf_counter()
            run()
            once = max(time.perf_counter() - started, 1e-7) * 1000
            iters[name] = max(1, min(1000, int(min_round_ms / once)))
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(rounds):
            for name, run in runs.items():
                started = time.perf_counter()
                for _ in range(iters[name]):
                    run()
                best[name] = min(best[name], (time.perf_counter() - started) * 1000 / iters[name])
    return best


def _eligible(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.groups == 1
        and (module.padding in ((0, 0), "valid"))
    ):
        return "conv1x1"
    return None


def _conv_inputs(model: nn.Module, names: Iterable[str], example: Tensor) -> dict[str, tuple[int, int]]:
    """(H, W) of each named conv's input, from one forward of `example`."""
    seen: dict[str, tuple[int, int]] = {}
    modules = dict(model.named_modules())

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, args: tuple[Tensor, ...]) -> None:  # None: the input is unchanged
            seen.setdefault(name, (int(args[0].shape[-2]), int(args[0].shape[-1])))

        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return seen


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def sparsify(
    model: nn.Module,
    *,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = None,
    rounds: int = 5,
    masks: MaskSet | None = None,
    example_input: Tensor | None = None,
    margin: float = 1.05,
    measure: Measure | None = None,
) -> nn.Module:
    """A copy of `model` whose masked Linear layers and 1×1 convolutions run as CSR where that is
    faster, chosen per layer and batch size by timing (min of `rounds`) at `threads` (None: the
    current torch setting). `model` is untouched. Masks come from `masks` or `masks_of(model)`;
    a model without masks is refused (zeros alone do not say what was pruned). 1×1 convolutions
    need `example_input` (one batch) for their spatial size. `measure` replaces the timer (tests).
    See `sparse_plan(result)` for what was measured and chosen.
    """
    masks = masks if masks is not None else masks_of(model)
    if masks is None:
        raise ConfigError(
            "the model has no masks, so there is nothing known to be sparse",
            where="sparsify()",
            fix="prune it with secateurs.prune first, or pass masks=MaskSet({'fc.weight': fc.weight != 0})",
        )
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ConfigError(
            f"sparse kernels are for CPU inference, but the model is on {', '.join(sorted(devices))}",
            where="sparsify()",
            fix="sparsify a CPU copy (model.cpu()) for CPU serving; on a GPU keep the masked dense model",
        )
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ConfigError(
            f"batch_sizes must be positive integers, got {list(batch_sizes)}", where="sparsify()"
        )
    if rounds < 1 or margin < 1.0:
        raise ConfigError(f"need rounds >= 1 and margin >= 1, got {rounds} and {margin}", where="sparsify()")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}", where="sparsify()")

    new = copy.deepcopy(model).eval()
    remove_masks(new)
    targets: list[tuple[str, nn.Module, str]] = []
    for name, module in new.named_modules():
        kind = _eligible(module)
        if kind is not None and (f"{name}.weight" if name else "weight") in masks:
            targets.append((name, module, kind))
    convs = [n for n, _, k in targets if k == "conv1x1"]
    if convs and example_input is None:
        raise ConfigError(
            f"1x1 convolutions {', '.join(convs)} need their input size to be timed",
            where="sparsify()",
            fix="pass example_input=<one input batch>",
        )
    spatial = _conv_inputs(new, convs, example_input) if convs else {}

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    report: list[LayerPlan] = []
    converted: list[tuple[str, str, nn.Module]] = []
    try:
        for name, module, kind in targets:
            key = f"{name}.weight" if name else "weight"
            replacement, entry = _convert(
                name, module, kind, masks[key], sizes, spatial.get(name), rounds, margin, measure
            )
            report.append(entry)
            converted.append((name, kind, replacement))
    finally:
        torch.set_num_threads(before)
    # A masked Linear kept dense in a model with sparse layers is still swapped in (dense-only plan):
    # its input may be the transposed view the sparse kernels return, which its dense kernel reads
    # in place where nn.Linear would copy it.
    any_sparse = any(entry.replaced for entry in report)
    for (name, kind, replacement), entry in zip(converted, report, strict=True):
        if entry.replaced or (any_sparse and kind == "linear" and name):
            if name:
                _set_module(new, name, replacement)
            else:
                new = replacement
    new.__dict__[_REPORT] = report
    return new


def _convert(
    name: str,
    module: nn.Module,
    kind: str,
    mask: Tensor,
    sizes: list[int],
    hw: tuple[int, int] | None,
    rounds: int,
    margin: float,
    measure: Measure | None,
) -> tuple[nn.Module, LayerPlan]:
    weight = module.weight.detach()
    w2 = weight.reshape(weight.shape[0], -1)
    keep = mask.reshape(w2.shape).to(device=w2.device, dtype=torch.bool)
    bias = module.bias.detach() if module.bias is not None else None
    cls = SparseLinear if kind == "linear" else SparseConv1x1
    probe = cls(w2, keep, bias, ((1, DENSE),))  # holds every kernel's data for timing
    gen = torch.Generator().manual_seed(0)
    timings: dict[int, dict[str, float]] = {}
    for b in sizes:
        shape = (b, probe.in_features) if kind == "linear" else (b, probe.in_features, *(hw or (1, 1)))
        x = torch.randn(shape, generator=gen, dtype=w2.dtype)
        # timed through the whole forward, as the model will run it: dense is the original module
        runs: dict[str, Callable[[], Any]] = {DENSE: lambda x=x: module(x)}
        for k in probe.kernels()[1:]:
            runs[k] = lambda k=k, x=x: probe.with_plan(((1, k),))(x)
        if measure is None:
            timings[b] = min_ms(runs, rounds=rounds)
        else:
            timings[b] = {k: float(measure(name, b, k, run)) for k, run in runs.items()}
    plan = choose(timings, margin=margin)
    replaced = any(k != DENSE for _, k in plan)
    entry = LayerPlan(
        name=name,
        kind=kind,
        shape=(probe.out_features, probe.in_features),
        nnz=probe.nnz,
        sparsity=1 - probe.nnz / max(1, w2.numel()),
        timings_ms=timings,
        choice={b: _kernel_for(plan, b) for b in sizes},
        replaced=replaced,
        plan=plan,
    )
    return cls(w2, keep, bias, plan), entry


def sparse_plan(model: nn.Module) -> list[LayerPlan]:
    """What `sparsify` measured and chose for each masked layer of `model` (its result)."""
    report = model.__dict__.get(_REPORT)
    if report is None:
        raise ConfigError("this model was not made by sparsify()", where="sparse_plan()")
    return list(report)
