"""The optional C++ CSR kernel: compiled once, lazily, into torch's extension cache.

Torch's own CSR product (MKL) carries a fixed cost of ~10 µs per call, which is more than a dense
mat-vec of a LeNet-sized layer costs; at batch 1 it is slower than dense below 99 % sparsity. The
kernel in `csrc/csr_kernels.cpp` does a gather-dot per output row at batch 1 and a register-blocked
row update for larger batches, at a pybind call cost of ~1 µs. If it cannot be built (no compiler,
no headers, another CPU architecture) everything still works on torch's kernels, after one warning.
Set SECATEURS_SPARSE_EXT=0 to skip it without a warning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import ModuleType

_SOURCE = Path(__file__).parent / "csrc" / "csr_kernels.cpp"
_NAME = "secateurs_sparse_csr"
_state: dict[str, ModuleType | bool | None] = {"tried": False, "module": None}


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load

    return load(_NAME, sources=[str(_SOURCE)], extra_cflags=["-O3"], verbose=False)


def extension() -> ModuleType | None:
    """The compiled kernel module, or None when it is disabled or failed to build (warned once)."""
    if not _state["tried"]:
        _state["tried"] = True
        if os.environ.get("SECATEURS_SPARSE_EXT", "1") == "0":
            return None
        try:
            _state["module"] = _build()
        except Exception as err:  # any build or import failure: fall back, never crash
            warnings.warn(
                f"secateurs.sparse: the C++ CSR kernel could not be built ({type(err).__name__}: "
                f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}); "
                "using torch's dense and CSR kernels only",
                RuntimeWarning,
                stacklevel=2,
            )
    module = _state["module"]
    return module if isinstance(module, ModuleType) else None


def reset() -> None:
    """Forget the loading attempt, so that the next `extension()` tries again (tests)."""
    _state["tried"] = False
    _state["module"] = None
