// kernels_ref.cpp — the plain scalar reference for every op in kernels.h: dequantize a row with
// dequantize_row_ref and accumulate in double. Slow and obviously right; the tests measure the
// optimized kernels against it.
#include <cmath>
#include <vector>

#include "common.h"
#include "kernels.h"
#include "quant.h"

namespace lkv {

namespace {

void ref_matmul(const WeightView& W, const float* x, int n_tok, float* y, ThreadPool*) {
  LKV_CHECK(ggml_row_bytes(W.type, (uint64_t)W.cols) == W.row_bytes, "matmul: row_bytes %zu does not match %lld %s values",
            W.row_bytes, (long long)W.cols, ggml_type_name(W.type));
  std::vector<float> row((size_t)W.cols);
  for (int64_t r = 0; r < W.rows; r++) {
    dequantize_row_ref(W.type, W.data + (size_t)r * W.row_bytes, row.data(), W.cols);
    for (int t = 0; t < n_tok; t++) {
      const float* xt = x + (size_t)t * W.cols;
      double s = 0;
      for (int64_t c = 0; c < W.cols; c++) s += (double)row[c] * xt[c];
      y[(size_t)t * W.rows + r] = (float)s;
    }
  }
}

void ref_rmsnorm(float* out, const float* x, const float* w, int n, float eps) {
  double ss = 0;
  for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
  float scale = (float)(1.0 / std::sqrt(ss / n + eps));
  for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

void ref_silu_mul(float* gate, const float* up, int n) {
  for (int i = 0; i < n; i++) {
    double g = gate[i];
    gate[i] = (float)(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void ref_get_row(const WeightView& W, int64_t row, float* out) {
  LKV_CHECK(row >= 0 && row < W.rows, "get_row: row %lld out of range [0, %lld)", (long long)row, (long long)W.rows);
  dequantize_row_ref(W.type, W.data + (size_t)row * W.row_bytes, out, W.cols);
}

}  // namespace

const Kernels& kernels_reference() {
  static const Kernels k = {"reference", ref_matmul, ref_rmsnorm, ref_silu_mul, ref_get_row};
  return k;
}

}  // namespace lkv
