// CSR sparse weight times dense activations, for secateurs.sparse (CPU, float32).
//
//   Y[n, r, m] = bias[r] + sum over nonzeros k of row r: val[k] * X[n, col[k], m]
//
// A Linear layer is N = 1 with X = x^T (in, batch); a 1x1 convolution is X = x viewed as (N, in, H*W).
// Two loops, because batch 1 and batch > 1 want different memory orders:
//   * one column (a Linear at batch 1): a gather-dot per output row, four partial sums. Work is
//     proportional to the nonzeros, where a dense mat-vec reads every weight;
//   * several columns: X is laid out (in, M) so that each nonzero's X row is contiguous; an output
//     row is accumulated in a fixed block of 64 columns held in vector registers (nonzeros outer,
//     columns inner), then stored with the output's strides. A Linear's x (batch, in) is transposed
//     into a scratch buffer first, and its output is written straight into (batch, out).
// Rows are split over threads with at::parallel_for (torch's pool and thread count); the grain keeps
// small layers on one thread, where waking a second costs more than it saves.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cstdint>

namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// One AVX2+FMA build and one baseline build of each loop; the loader picks by the running CPU.
#define SECATEURS_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SECATEURS_CLONES
#endif

constexpr int64_t kBlock = 64;            // columns per register block (8 AVX2 registers)
constexpr int64_t kWorkPerChunk = 32768;  // multiply-adds one thread should get at least

struct Csr {
  const int32_t* crow;
  const int32_t* col;
  const float* val;
  const float* bias;  // nullptr: no bias
};

SECATEURS_CLONES
void spmv_rows(Csr w, const float* __restrict__ x, float* __restrict__ y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    int32_t k = w.crow[r];
    const int32_t end = w.crow[r + 1];
    for (; k + 4 <= end; k += 4) {
      a0 += w.val[k] * x[w.col[k]];
      a1 += w.val[k + 1] * x[w.col[k + 1]];
      a2 += w.val[k + 2] * x[w.col[k + 2]];
      a3 += w.val[k + 3] * x[w.col[k + 3]];
    }
    for (; k < end; ++k) a0 += w.val[k] * x[w.col[k]];
    y[r] = (w.bias ? w.bias[r] : 0.f) + ((a0 + a1) + (a2 + a3));
  }
}

typedef float v8 __attribute__((vector_size(32)));  // GCC vector: AVX in the v3 clone, 2 x SSE otherwise

// Output rows [r0, r1) of one batch entry: x is (in, m_total) contiguous; y[m * ys_m + r * ys_r].
SECATEURS_CLONES
void spmm_rows(Csr w, const float* __restrict__ x, int64_t m_total, float* __restrict__ y, int64_t ys_m,
               int64_t ys_r, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float b = w.bias ? w.bias[r] : 0.f;
    const int32_t k0 = w.crow[r], k1 = w.crow[r + 1];
    int64_t m0 = 0;
    for (; m0 + kBlock <= m_total; m0 += kBlock) {
      // eight named 8-wide accumulators: the compiler keeps them in registers across the nonzeros
      v8 a0, a1, a2, a3, a4, a5, a6, a7;
      a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = v8{} + b;
      for (int32_t k = k0; k < k1; ++k) {
        const v8 v = v8{} + w.val[k];
        const float* xr = x + static_cast<int64_t>(w.col[k]) * m_total + m0;
        v8 t[8];
        __builtin_memcpy(t, xr, sizeof(t));  // unaligned load of 64 floats
        a0 += v * t[0];
        a1 += v * t[1];
        a2 += v * t[2];
        a3 += v * t[3];
        a4 += v * t[4];
        a5 += v * t[5];
        a6 += v * t[6];
        a7 += v * t[7];
      }
      const v8 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
      const float* flat = reinterpret_cast<const float*>(acc);
      for (int64_t j = 0; j < kBlock; ++j) y[(m0 + j) * ys_m + r * ys_r] = flat[j];
    }
    if (m0 < m_total) {
      const int64_t mb = m_total - m0;
      float acc[kBlock];
      for (int64_t j = 0; j < mb; ++j) acc[j] = b;
      for (int32_t k = k0; k < k1; ++k) {
        const float v = w.val[k];
        const float* xr = x + static_cast<int64_t>(w.col[k]) * m_total + m0;
        for (int64_t j = 0; j < mb; ++j) acc[j] += v * xr[j];
      }
      for (int64_t j = 0; j < mb; ++j) y[(m0 + j) * ys_m + r * ys_r] = acc[j];
    }
  }
}

Csr unpack(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val, const at::Tensor& bias,
           int64_t out) {
  TORCH_CHECK(crow.scalar_type() == at::kInt && col.scalar_type() == at::kInt && crow.is_contiguous() &&
                  col.is_contiguous() && crow.numel() == out + 1,
              "crow/col must be contiguous int32 CSR indices");
  TORCH_CHECK(val.scalar_type() == at::kFloat && val.is_contiguous() && val.numel() == col.numel(),
              "values must be contiguous float32, one per column index");
  TORCH_CHECK(bias.numel() == 0 || (bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == out),
              "bias must be empty or contiguous float32 of length out");
  return {crow.data_ptr<int32_t>(), col.data_ptr<int32_t>(), val.data_ptr<float>(),
          bias.numel() ? bias.data_ptr<float>() : nullptr};
}

int64_t grain_rows(int64_t nnz, int64_t out, int64_t columns) {
  const int64_t per_row = std::max<int64_t>(1, nnz / std::max<int64_t>(out, 1)) * columns;
  return std::max<int64_t>(1, kWorkPerChunk / per_row);
}

// dst (cols, rows) = src (rows, cols)^T in 16 x 16 tiles, rows split over threads. Row-by-row copying
// strides through memory by a whole row per element (4 KiB for 1024 floats: every access then falls
// in the same cache set); tiles keep both sides within a few cache lines.
void transpose(const float* src, float* dst, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = 16;
  const int64_t tiles = (rows + kTile - 1) / kTile;
  at::parallel_for(0, tiles, std::max<int64_t>(1, kWorkPerChunk / (kTile * std::max<int64_t>(cols, 1))),
                   [&](int64_t t0, int64_t t1) {
                     for (int64_t i0 = t0 * kTile; i0 < std::min(rows, t1 * kTile); i0 += kTile)
                       for (int64_t j0 = 0; j0 < cols; j0 += kTile)
                         for (int64_t i = i0; i < std::min(rows, i0 + kTile); ++i)
                           for (int64_t j = j0; j < std::min(cols, j0 + kTile); ++j) dst[j * rows + i] = src[i * cols + j];
                   });
}

}  // namespace

// y = x @ W^T + bias for x (batch, in) float32, either contiguous or the transposed view of a
// contiguous (in, batch) tensor (what this kernel and torch's CSR addmm return for batch > 1: a chain
// of sparse layers then never transposes). Batch 1 returns (1, out) contiguous; batch > 1 returns the
// transposed view of a contiguous (out, batch) tensor.
at::Tensor csr_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val,
                      const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be (batch, in) float32");
  const bool transposed = !x.is_contiguous() && x.t().is_contiguous();
  TORCH_CHECK(x.is_contiguous() || transposed, "x must be contiguous or a transposed contiguous tensor");
  const int64_t out = crow.numel() - 1, batch = x.size(0), in = x.size(1);
  const Csr w = unpack(crow, col, val, bias, out);
  const float* xp = x.data_ptr<float>();
  if (batch == 1 || batch == 0 || out == 0) {
    auto y = at::empty({batch, out}, x.options());
    if (batch == 1 && out > 0) {
      float* yp = y.data_ptr<float>();
      at::parallel_for(0, out, grain_rows(val.numel(), out, 1), [&](int64_t r0, int64_t r1) {
        spmv_rows(w, xp, yp, r0, r1);  // one row of x is contiguous in both layouts
      });
    }
    return y;
  }
  // x^T so each nonzero reads a contiguous row (already so for a transposed input)
  at::Tensor xt;
  const float* xtp = xp;
  if (!transposed) {
    xt = at::empty({in, batch}, x.options());
    transpose(xp, xt.data_ptr<float>(), batch, in);
    xtp = xt.data_ptr<float>();
  }
  auto yt = at::empty({out, batch}, x.options());
  float* ytp = yt.data_ptr<float>();
  at::parallel_for(0, out, grain_rows(val.numel(), out, batch), [&](int64_t r0, int64_t r1) {
    spmm_rows(w, xtp, batch, ytp, 1, batch, r0, r1);
  });
  return yt.t();
}

// 1x1 convolution: x (N, in, M) float32 contiguous (M = H*W); returns (N, out, M).
at::Tensor csr_conv1x1(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val,
                       const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && x.scalar_type() == at::kFloat, "x must be (N, in, M) float32");
  const int64_t out = crow.numel() - 1, n_batch = x.size(0), in = x.size(1), m = x.size(2);
  const Csr w = unpack(crow, col, val, bias, out);
  auto y = at::empty({n_batch, out, m}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (n_batch == 0 || out == 0 || m == 0) return y;
  at::parallel_for(0, n_batch * out, grain_rows(val.numel(), out, m), [&](int64_t i0, int64_t i1) {
    while (i0 < i1) {  // split the range at batch-entry boundaries
      const int64_t n = i0 / out, r0 = i0 % out, r1 = std::min(out, r0 + (i1 - i0));
      spmm_rows(w, xp + n * in * m, m, yp + n * out * m, 1, m, r0, r1);
      i0 += r1 - r0;
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("csr_linear", &csr_linear, "x @ W^T + bias with W in int32 CSR (float32)");
  m.def("csr_conv1x1", &csr_conv1x1, "1x1 convolution with a CSR weight (float32), x as (N, in, H*W)");
}
