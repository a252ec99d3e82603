// kernels_cpu.cpp — the optimized CPU kernels: argument checks, activation quantization and
// work splitting over the ThreadPool, with the inner loops supplied by an instruction-set module
// (kernels_cpu_avx512.cpp, kernels_cpu_avx2.cpp) or, on other CPUs, by the scalar code here.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"
#include "kernels.h"
#include "kernels_cpu_isa.h"
#include "quant.h"

namespace lkv {

namespace {

using cpu::ActQ8;
using cpu::IsaOps;

// ---- scalar fallback: dequantize one row at a time, float dot products --------------------

void scalar_mm_any(const WeightView& W, const float* x, float* y, int64_t r0, int64_t r1, int t0, int t1) {
  static thread_local std::vector<float> row;
  row.resize((size_t)W.cols);
  for (int64_t r = r0; r < r1; r++) {
    dequantize_row_ref(W.type, W.data + r * W.row_bytes, row.data(), W.cols);
    for (int t = t0; t < t1; t++) {
      const float* xt = x + (int64_t)t * W.cols;
      float s[4] = {0, 0, 0, 0};
      int64_t c = 0;
      for (; c + 4 <= W.cols; c += 4)
        for (int k = 0; k < 4; k++) s[k] += row[c + k] * xt[c + k];
      for (; c < W.cols; c++) s[0] += row[c] * xt[c];
      y[(int64_t)t * W.rows + r] = (s[0] + s[1]) + (s[2] + s[3]);
    }
  }
}

void scalar_rmsnorm(float* out, const float* x, const float* w, int n, float eps) {
  double ss = 0;
  for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
  const float scale = (float)(1.0 / std::sqrt(ss / n + eps));
  for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

void scalar_silu_mul(float* gate, const float* up, int n) {
  for (int i = 0; i < n; i++) gate[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
}

// ---- the driver ---------------------------------------------------------------------------

// Grow-only, 64-byte aligned scratch for quantized activations, one per calling thread.
struct alignas(64) Line { uint8_t b[64]; };
uint8_t* scratch(size_t bytes) {
  static thread_local std::vector<Line> buf;
  if (buf.size() * 64 < bytes) buf.resize((bytes + 63) / 64);
  return buf.data()->b;
}

// The integer prefill kernels' repacked weight panel (Q8_0, Q4_0, the IQ4s and the K-quants), one per thread
// that runs a task (the calling thread runs tasks too, so this cannot be scratch()'s buffer, which
// holds the activations).
uint8_t* panel_scratch() {
  static thread_local std::vector<Line> buf((cpu::kQ8PanelBytes + 63) / 64);
  return buf.data()->b;
}

void run_tasks(ThreadPool* pool, int n, const std::function<void(int)>& fn) {
  if (pool && n > 1) {
    pool->run(n, fn);
  } else {
    for (int i = 0; i < n; i++) fn(i);
  }
}

void check_weights(const WeightView& W, const char* what) {
  LKV_CHECK(ggml_type_known(W.type), "%s: unsupported weight type %s", what, ggml_type_name(W.type));
  LKV_CHECK(W.rows >= 0 && W.cols > 0, "%s: bad shape %lld x %lld", what, (long long)W.rows, (long long)W.cols);
  LKV_CHECK(ggml_row_bytes(W.type, (uint64_t)W.cols) == W.row_bytes,
            "%s: row_bytes %zu does not match %lld %s values", what, W.row_bytes, (long long)W.cols,
            ggml_type_name(W.type));
  LKV_CHECK(W.data != nullptr || W.rows == 0, "%s: no weight data", what);
}

// y[t*rows + r] for all rows and tokens, with `isa` the SIMD module or nullptr for scalar.
void matmul_with(const IsaOps* isa, const WeightView& W, const float* x, int n_tok, float* y, ThreadPool* pool) {
  check_weights(W, "matmul");
  LKV_CHECK(n_tok >= 0, "matmul: n_tok %d", n_tok);
  if (W.rows == 0 || n_tok == 0) return;
  const GgmlType type = (GgmlType)W.type;
  const bool q8 = type == GgmlType::Q8_0 || type == GgmlType::Q4_0 || type == GgmlType::IQ4_NL || type == GgmlType::IQ4_XS;
  const bool qk = type == GgmlType::Q2_K || type == GgmlType::Q3_K || type == GgmlType::Q4_K || type == GgmlType::Q5_K ||
                  type == GgmlType::Q6_K;
  const int n_threads = pool ? pool->size() : 1;

  // 1. quantize the activations once (the integer paths), split over tokens
  ActQ8 a8{nullptr, nullptr, W.cols, W.cols / 32};
  block_q8_K* a8k = nullptr;
  size_t act_bytes_per_tok = (size_t)W.cols * sizeof(float);  // what one token's activations occupy
  if (isa && q8) {
    const size_t qs_bytes = ((size_t)n_tok * W.cols + 63) & ~(size_t)63;
    const bool unsigned_copy = isa->q8_unsigned && n_tok > 3;
    uint8_t* buf = scratch((unsigned_copy ? 2 : 1) * qs_bytes + (size_t)n_tok * a8.nb * sizeof(float));
    a8.qs = (const int8_t*)buf;
    a8.d = (const float*)(buf + qs_bytes);
    if (unsigned_copy) a8.qu = buf + qs_bytes + (size_t)n_tok * a8.nb * sizeof(float);
    run_tasks(n_tok >= 8 ? pool : nullptr, n_tok, [&](int t) {
      int8_t* qs = (int8_t*)a8.qs + (int64_t)t * W.cols;
      isa->quantize_q8(x + (int64_t)t * W.cols, qs, (float*)a8.d + t * a8.nb, W.cols);
      if (unsigned_copy) {
        uint8_t* qu = (uint8_t*)a8.qu + (int64_t)t * W.cols;
        for (int64_t c = 0; c < W.cols; c++) qu[c] = (uint8_t)qs[c] ^ 0x80;  // x + 128
      }
    });
    // the prefill kernel works through a row kQ8PanelBlocks blocks at a time
    const int64_t span = std::min<int64_t>(a8.nb, cpu::kQ8PanelBlocks);
    act_bytes_per_tok = (size_t)span * (32 + sizeof(float));
  } else if (isa && qk) {
    const int64_t nb = W.cols / QK_K;
    a8k = (block_q8_K*)scratch((size_t)n_tok * nb * sizeof(block_q8_K));
    run_tasks(n_tok >= 8 ? pool : nullptr, n_tok,
              [&](int t) { isa->quantize_q8_K(x + (int64_t)t * W.cols, a8k + t * nb, W.cols); });
    act_bytes_per_tok = std::min<int64_t>(nb, cpu::kQKPanelBlocks) * sizeof(block_q8_K);  // a panel's span
  }

  // 2. tasks = row chunks x token chunks, handed out dynamically (a thread that the shared
  // machine preempts holds up at most one chunk). Few tokens (decode): row chunks only, sized
  // so that each thread gets about 16 (rows stream from memory; more chunks balance better,
  // fewer cost less per chunk). Prefill: token chunks whose activations stay in L2 while the
  // weights they share are reused from closer: the float tile reuses a tile of rows from L1
  // (activations ~192 KiB); the integer kernels reuse a repacked panel (46-70 KiB, L2) across the
  // activations of the panel's span (~290 KiB for 64 tokens; L2 is 512 KiB on Zen 3).
  int tok_chunk = n_tok;
  if (n_tok > 4) {
    const size_t act_budget = (size_t)(isa && (q8 || qk) ? 320 : 192) << 10;
    tok_chunk = (int)std::max<size_t>(8, act_budget / act_bytes_per_tok);
    tok_chunk = std::min(tok_chunk, 64) & ~3;
    if (tok_chunk >= n_tok) tok_chunk = n_tok;
  }
  const int n_tchunks = (n_tok + tok_chunk - 1) / tok_chunk;
  int64_t row_chunk = n_tok <= 4 ? 256 : 64;
  while (row_chunk > 8 && ((W.rows + row_chunk - 1) / row_chunk) * n_tchunks < 16 * n_threads) row_chunk /= 2;
  const int64_t n_rchunks = (W.rows + row_chunk - 1) / row_chunk;
  LKV_CHECK(n_rchunks * n_tchunks < (1LL << 31), "matmul: too many tasks");
  run_tasks(pool, (int)(n_rchunks * n_tchunks), [&](int i) {
    const int64_t r0 = (i / n_tchunks) * row_chunk;
    const int64_t r1 = r0 + row_chunk < W.rows ? r0 + row_chunk : W.rows;
    const int t0 = (i % n_tchunks) * tok_chunk;
    const int t1 = t0 + tok_chunk < n_tok ? t0 + tok_chunk : n_tok;
    if (!isa)
      scalar_mm_any(W, x, y, r0, r1, t0, t1);
    else if (q8)
      isa->mm_q8_0(W, a8, y, r0, r1, t0, t1, panel_scratch());
    else if (qk)
      isa->mm_qk(W, a8k, y, r0, r1, t0, t1, panel_scratch());
    else
      isa->mm_float(W, x, y, r0, r1, t0, t1);
  });
}

void get_row_any(const WeightView& W, int64_t row, float* out) {
  check_weights(W, "get_row");
  LKV_CHECK(row >= 0 && row < W.rows, "get_row: row %lld out of range [0, %lld)", (long long)row, (long long)W.rows);
  dequantize_row_ref(W.type, W.data + row * W.row_bytes, out, W.cols);
}

// One Kernels table per module; a plain function pointer cannot carry the module, so each gets
// its own small wrappers.
template <const IsaOps* (*GET)()>
struct SimdKernels {
  static void matmul(const WeightView& W, const float* x, int n_tok, float* y, ThreadPool* pool) {
    matmul_with(GET(), W, x, n_tok, y, pool);
  }
  static void rmsnorm(float* out, const float* x, const float* w, int n, float eps) { GET()->rmsnorm(out, x, w, n, eps); }
  static void silu_mul(float* gate, const float* up, int n) { GET()->silu_mul(gate, up, n); }
};

void scalar_matmul(const WeightView& W, const float* x, int n_tok, float* y, ThreadPool* pool) {
  matmul_with(nullptr, W, x, n_tok, y, pool);
}

const Kernels kAvx512 = {"avx512", SimdKernels<cpu::isa_avx512>::matmul, SimdKernels<cpu::isa_avx512>::rmsnorm,
                         SimdKernels<cpu::isa_avx512>::silu_mul, get_row_any};
const Kernels kAvx2 = {"avx2", SimdKernels<cpu::isa_avx2>::matmul, SimdKernels<cpu::isa_avx2>::rmsnorm,
                       SimdKernels<cpu::isa_avx2>::silu_mul, get_row_any};
const Kernels kScalar = {"scalar", scalar_matmul, scalar_rmsnorm, scalar_silu_mul, get_row_any};

}  // namespace

const Kernels* kernels_for(const char* isa) {
  if (!isa) return nullptr;
  const std::string name = isa;
  if (name == "reference") return &kernels_reference();
  if (name == "avx512") return cpu::isa_avx512() ? &kAvx512 : nullptr;
  if (name == "avx2") return cpu::isa_avx2() ? &kAvx2 : nullptr;
  if (name == "scalar") return &kScalar;
  return nullptr;
}

const Kernels& kernels_best() {
  static const Kernels* best = cpu::isa_avx512() ? &kAvx512 : cpu::isa_avx2() ? &kAvx2 : &kScalar;
  return *best;
}

const char* cpu_features() {
  static const std::string features = [] {
    std::string s;
    auto add = [&](bool on, const char* name) {
      if (on) s += (s.empty() ? "" : " ") + std::string(name);
    };
    // __builtin_cpu_supports takes string literals only
    add(__builtin_cpu_supports("avx512f"), "avx512f");
    add(__builtin_cpu_supports("avx512bw"), "avx512bw");
    add(__builtin_cpu_supports("avx512vl"), "avx512vl");
    add(__builtin_cpu_supports("avx512vnni"), "avx512vnni");
    add(__builtin_cpu_supports("avx512bf16"), "avx512bf16");
    add(__builtin_cpu_supports("avx2"), "avx2");
    add(__builtin_cpu_supports("fma"), "fma");
    add(__builtin_cpu_supports("f16c"), "f16c");
    return s.empty() ? std::string("none") : s;
  }();
  return features.c_str();
}

}  // namespace lkv
