// kernels.h — the compute boundary of the CPU engine: every heavy op, with a plain scalar
// reference (kernels_ref.cpp) and an optimized implementation (kernels_cpu.cpp: threads plus
// AVX2 / AVX-512 paths chosen at run time, scalar fallback). Tests compare the two on random
// inputs (native/tests/test_kernels.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "threadpool.h"

namespace lkv {

// A weight matrix as stored in the file: `rows` rows of `cols` elements, row-major, each row
// `row_bytes` long in format `type` (a GgmlType). Never copied or dequantized as a whole.
struct WeightView {
  uint32_t type = 0;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;
};

struct Kernels {
  const char* name;  // "reference", "avx512", "avx2", "scalar"
  // y[t*W.rows + r] = sum_c W[r][c] * x[t*W.cols + c]   for t in [0, n_tok), r in [0, W.rows)
  void (*matmul)(const WeightView& W, const float* x, int n_tok, float* y, ThreadPool* pool);
  // out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]    (out may alias x)
  void (*rmsnorm)(float* out, const float* x, const float* w, int n, float eps);
  // gate[i] = silu(gate[i]) * up[i]
  void (*silu_mul)(float* gate, const float* up, int n);
  // row-gather of an embedding: out[c] = W[row][c] as float
  void (*get_row)(const WeightView& W, int64_t row, float* out);
};

const Kernels& kernels_reference();
const Kernels& kernels_best();        // best for this CPU (detected once)
const char* cpu_features();           // e.g. "avx512f avx512bw avx512vnni avx2 fma f16c"
// One specific implementation, for tests and benchmarks: "reference", "avx512", "avx2" or
// "scalar"; nullptr when this CPU lacks the instructions (or the name is unknown).
const Kernels* kernels_for(const char* isa);

}  // namespace lkv
