// test_kernels.cpp — every optimized CPU kernel (each SIMD path this CPU has, plus the scalar
// fallback) against the plain reference on fresh random inputs, with a named error budget per
// weight type, NaN checks and guard values around every output; quantizer round trips; one
// hand-built block per layout; thread-pool behaviour; informational timings. Needs no model.
// Usage: test_kernels [seed] [--no-timing]   (prints the seed it used; ends with "N passed, M failed")
//        test_kernels --timing [--type=q8_0]   (timings only)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common.h"
#include "kernels.h"
#include "quant.h"
#include "threadpool.h"
#include "test_util.h"

using namespace lkv;
using namespace lkvtest;

namespace {



// ---- error budgets --------------------------------------------------------------------------
// Matmul: RMS of (optimized - reference) over the outputs, divided by the typical size of one
// dot product, sqrt(mean over outputs of sum_c (w*x)^2) — the output RMS of an incoherent sum,
// but stable when a case has a single output that happens to be near zero.
// Float weights: both sides use the same exact weights; only summation order differs (float vs
// double accumulation over <= 2k terms): ~1e-7 relative.
// Q8_0/Q4_0/IQ4: the activations are rounded to 8 bits per block of 32: step amax/127 with amax about
// 2.5 sigma, rounding error step/sqrt(12) = 0.006 of x's RMS, passed on unchanged to the output.
// Q2_K..Q6_K: Q8_K activations, one scale per 256 (amax about 3.2 sigma): 0.0075.
// The maximum single error may be a few RMS: allowed 6x.
double matmul_budget(uint32_t type) {
  switch ((GgmlType)type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16: return 2e-6;
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::IQ4_NL:
    case GgmlType::IQ4_XS: return 1.0e-2;
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K: return 1.3e-2;
    default: return 0;
  }
}

// Quantize -> dequantize of Gaussian data, RMS error over RMS of the data. Step / sqrt(12):
// F16 rel. step 2^-10 -> 3e-4 (RMS over a magnitude range ~2e-4); BF16 2^-7 -> 2e-3 (~1.6e-3);
// Q8_0 amax(32)~2.5 sigma /127 -> 0.0057; Q8_K amax(256)~3.2 sigma/127 -> 0.0073;
// Q4_0 amax/8 ~ 0.31 sigma -> 0.09; Q4_K (4 bit + min over 32, fitted) ~0.07-0.08; Q5_K (5 bit)
// half of that, ~0.035-0.04; Q6_K (6 bit over 16, fitted) ~0.02; Q3_K (3 bit over 16, fitted)
// ~0.15; Q2_K (2 bit + min over 16, 4-bit scales) ~0.28; IQ4_NL/IQ4_XS (16-value non-linear grid, fitted scale per 32) ~0.075. Budgets are
// those with ~30% margin.
double roundtrip_budget(uint32_t type) {
  switch ((GgmlType)type) {
    case GgmlType::F32: return 0;
    case GgmlType::F16: return 4e-4;
    case GgmlType::BF16: return 2.6e-3;
    case GgmlType::Q8_0: return 8e-3;
    case GgmlType::Q8_K: return 1e-2;
    case GgmlType::Q4_0: return 0.12;
    case GgmlType::Q2_K: return 0.36;
    case GgmlType::Q3_K: return 0.20;
    case GgmlType::IQ4_NL:
    case GgmlType::IQ4_XS: return 0.10;
    case GgmlType::Q4_K: return 0.10;
    case GgmlType::Q5_K: return 0.05;
    case GgmlType::Q6_K: return 0.03;
    default: return 0;
  }
}

// ---- weights ------------------------------------------------------------------------------



// ---- matmul against the reference -----------------------------------------------------------

struct MatmulResult {
  double err_rms = 0, err_max = 0;  // normalized by the dot-product scale
  double err2_sum = 0;               // sum of squared normalized errors (to pool small cases)
  size_t n_out = 0;
  bool finite = true, guards = true;
};

MatmulResult check_matmul(const Kernels& k, uint32_t type, int64_t rows, int64_t cols, int n_tok, bool raw,
                          ThreadPool* pool) {
  std::vector<uint8_t> w = make_weights(type, rows, cols, raw);
  WeightView W{type, w.data(), rows, cols, ggml_row_bytes(type, cols)};
  std::vector<float> x = gauss_vec((size_t)n_tok * cols);
  std::vector<float> ref((size_t)n_tok * rows);
  kernels_reference().matmul(W, x.data(), n_tok, ref.data(), nullptr);
  Guarded y((size_t)n_tok * rows);
  k.matmul(W, x.data(), n_tok, y.data(), pool);

  // typical size of one dot product (see matmul_budget)
  std::vector<float> row(cols);
  double scale2 = 0;
  for (int64_t r = 0; r < rows; r++) {
    dequantize_row_ref(type, w.data() + r * W.row_bytes, row.data(), cols);
    for (int t = 0; t < n_tok; t++)
      for (int64_t c = 0; c < cols; c++) {
        double p = (double)row[c] * x[(size_t)t * cols + c];
        scale2 += p * p;
      }
  }
  const double scale = std::sqrt(scale2 / (rows * (double)n_tok)) + 1e-30;
  MatmulResult res;
  double e2 = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    const float v = y.data()[i];
    if (!std::isfinite(v)) res.finite = false;
    const double e = std::fabs((double)v - ref[i]);
    e2 += e * e;
    if (!(e <= res.err_max)) res.err_max = e;  // NaN-propagating
  }
  res.err_rms = std::sqrt(e2 / ref.size()) / scale;
  res.err2_sum = e2 / (scale * scale);
  res.n_out = ref.size();
  res.err_max /= scale;
  res.guards = y.guards_intact();
  return res;
}

void test_matmul(const Kernels& k, ThreadPool* pool2, ThreadPool* pool3) {
  struct Shape { int64_t rows, cols; };
  const Shape shapes[] = {{1, 256}, {7, 256}, {33, 512}, {64, 768}, {130, 1024}, {67, 2048}};
  const int toks[] = {1, 2, 3, 7, 16, 33};
  for (uint32_t type : kWeightTypes) {
    const double budget = matmul_budget(type);
    for (const Shape& s : shapes) {
      for (int raw = 0; raw < 2; raw++) {
        if (raw && (type == kF32 || type == kF16 || type == kBF16)) continue;
        double worst_max = 0, err2 = 0;
        size_t n_out = 0;
        bool finite = true, guards = true, threw = false;
        std::string what;
        int i = 0;
        for (int n_tok : toks) {
          ThreadPool* pool = (i++ % 3 == 0) ? nullptr : (i % 3 == 1 ? pool2 : pool3);
          try {
            MatmulResult r = check_matmul(k, type, s.rows, s.cols, n_tok, raw, pool);
            err2 += r.err2_sum;
            n_out += r.n_out;
            if (!(r.err_max <= worst_max)) worst_max = r.err_max;
            finite &= r.finite;
            guards &= r.guards;
          } catch (const std::exception& e) {
            threw = true;
            what = e.what();
          }
        }
        // RMS pooled over the six token counts (a 1-row case has 62 outputs in all)
        const double worst_rms = n_out ? std::sqrt(err2 / n_out) : 0;
        const bool ok = !threw && finite && guards && worst_rms <= budget && worst_max <= 6 * budget;
        char name[128], detail[256];
        std::snprintf(name, sizeof name, "matmul/%s/%s/%lldx%lld%s", k.name, ggml_type_name(type),
                      (long long)s.rows, (long long)s.cols, raw ? "/raw" : "");
        std::snprintf(detail, sizeof detail, "n_tok 1..33: err rms %.2e max %.2e (budget %.1e)%s%s%s%s",
                      worst_rms, worst_max, budget, finite ? "" : " NON-FINITE", guards ? "" : " GUARD OVERWRITTEN",
                      threw ? " threw: " : "", what.c_str());
        report(ok, name, detail);
      }
    }
  }
  // shapes that reach the other tiling paths: more tokens than one token chunk (64) with rows
  // that are not a multiple of the register tile, and rows longer than one segment of the
  // Q8_0/Q4_0 prefill tile (512 blocks) with an odd block count, at decode and prefill sizes; and
  // enough rows that the work is split into chunks of more than 8 rows (the 16-row panels of the
  // AVX-512 build: 32-row chunks here, the last one 13 rows), over more than one panel span
  for (uint32_t type : kWeightTypes) {
    struct Case { int64_t rows, cols; int n_tok; };
    const Case cases[] = {{37, 256, 77}, {9, 16640, 6}, {5, 16640, 1}, {1005, 4096, 19}};
    for (const Case& c : cases) {
      if (c.cols % ggml_block_size(type)) continue;
      // The budgets are RMS over many outputs; an RMS of 5 outputs scatters by +-50%, so
      // cases with few outputs are repeated on fresh inputs until >= 64 outputs are pooled
      // (with 5 outputs the Q8_0 case exceeded its budget in about 1 run of 50).
      MatmulResult r;
      double e2 = 0;
      while (r.n_out < 64) {
        MatmulResult one = check_matmul(k, type, c.rows, c.cols, c.n_tok, false, pool2);
        e2 += one.err2_sum;
        r.n_out += one.n_out;
        if (!(one.err_max <= r.err_max)) r.err_max = one.err_max;
        r.finite &= one.finite;
        r.guards &= one.guards;
      }
      r.err_rms = std::sqrt(e2 / r.n_out);
      // float accumulation error grows like sqrt(terms): the 2k-term budget scaled for long rows
      const double budget = matmul_budget(type) * (matmul_budget(type) < 1e-4 ? std::sqrt(std::max(1.0, c.cols / 2048.0)) : 1.0);
      const bool ok = r.finite && r.guards && r.err_rms <= budget && r.err_max <= 6 * budget;
      char name[128], detail[160];
      std::snprintf(name, sizeof name, "matmul/%s/%s/%lldx%lld x %d tok", k.name, ggml_type_name(type), (long long)c.rows,
                    (long long)c.cols, c.n_tok);
      std::snprintf(detail, sizeof detail, "err rms %.2e max %.2e (budget %.1e)%s%s", r.err_rms, r.err_max, budget,
                    r.finite ? "" : " NON-FINITE", r.guards ? "" : " GUARD OVERWRITTEN");
      report(ok, name, detail);
    }
  }
  // a batch of tokens (the prefill panel kernel) against the same tokens one at a time (the decode
  // kernel): both take the same 8-bit activations and exact integer block sums, so they differ only
  // in the order of float additions; the budget (1e-5 of the outputs' RMS) is ~1000x below the
  // quantization error the reference comparisons allow, so a token or row mixed up in either path
  // fails here even where it would hide in those. 11 rows: one chunk of 8 rows and one of 3; 523:
  // chunks of 16 (the AVX-512 build's 16-row panels) and one of 11
  for (uint32_t type : {kQ8_0, kQ4_0, kIQ4_NL, kIQ4_XS, kQ2_K, kQ3_K, kQ4_K, kQ5_K, kQ6_K}) {
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{11, 2048}, {11, 16640}, {523, 2048}}) {
      const int n_tok = 9;
      std::vector<uint8_t> w = make_weights(type, rows, cols, false);
      WeightView W{type, w.data(), rows, cols, ggml_row_bytes(type, cols)};
      std::vector<float> x = gauss_vec((size_t)n_tok * cols), yb((size_t)n_tok * rows), y1(rows);
      k.matmul(W, x.data(), n_tok, yb.data(), pool2);
      double e2 = 0, s2 = 0;
      bool finite = true;
      for (int t = 0; t < n_tok; t++) {
        k.matmul(W, x.data() + (size_t)t * cols, 1, y1.data(), pool2);
        for (int64_t r = 0; r < rows; r++) {
          const double b = yb[(size_t)t * rows + r], d = b - y1[r];
          finite &= std::isfinite(b) && std::isfinite(y1[r]);
          e2 += d * d;
          s2 += b * b;
        }
      }
      const double rel = std::sqrt(e2 / s2);
      char detail[128];
      std::snprintf(detail, sizeof detail, "9 tokens at once and one at a time: rms diff %.2e of the outputs' rms (budget 1e-5)", rel);
      report(finite && rel <= 1e-5,
             std::string("matmul/") + k.name + "/" + ggml_type_name(type) + "/batch=single/" + std::to_string(rows) + "x" + std::to_string(cols),
             detail);
    }
  }
  // columns that are not a multiple of 8 (float types have block size 1), and an odd number of
  // 32-blocks
  for (uint32_t type : {kF32, kF16, kBF16, kQ8_0, kQ4_0}) {
    const int64_t cols = ggml_block_size(type) == 1 ? 75 : 96;
    MatmulResult r = check_matmul(k, type, 13, cols, 5, false, pool2);
    const bool ok = r.finite && r.guards && r.err_rms <= matmul_budget(type) && r.err_max <= 6 * matmul_budget(type);
    char detail[160];
    std::snprintf(detail, sizeof detail, "err rms %.2e max %.2e%s%s", r.err_rms, r.err_max, r.finite ? "" : " NON-FINITE",
                  r.guards ? "" : " GUARD OVERWRITTEN");
    report(ok, std::string("matmul/") + k.name + "/" + ggml_type_name(type) + "/13x" + std::to_string(cols) + " (column tail)",
           detail);
  }
}

void test_elementwise(const Kernels& k) {
  const Kernels& ref = kernels_reference();
  for (int n : {1, 7, 64, 2048, 8195}) {
    std::vector<float> x = gauss_vec(n, 3.f), w = gauss_vec(n);
    Guarded a(n), b(n);
    ref.rmsnorm(a.data(), x.data(), w.data(), n, 1e-5f);
    k.rmsnorm(b.data(), x.data(), w.data(), n, 1e-5f);
    double maxrel = 0;
    bool finite = true;
    for (int i = 0; i < n; i++) {
      finite &= std::isfinite(b.data()[i]);
      maxrel = std::fmax(maxrel, std::fabs(a.data()[i] - b.data()[i]) / (std::fabs(a.data()[i]) + 1e-6));
    }
    // in place (out aliases x)
    std::vector<float> xin = x;
    k.rmsnorm(xin.data(), xin.data(), w.data(), n, 1e-5f);
    bool alias_ok = true;
    for (int i = 0; i < n; i++) alias_ok &= std::fabs(xin[i] - b.data()[i]) <= 1e-6f * (std::fabs(b.data()[i]) + 1e-6f);
    // budget: float sum of squares vs double, then 2 roundings: 1e-5 relative per element
    report(finite && alias_ok && b.guards_intact() && maxrel <= 1e-5, std::string("rmsnorm/") + k.name + "/n=" + std::to_string(n),
           "max rel err " + std::to_string(maxrel) + (alias_ok ? "" : " IN-PLACE MISMATCH"));
  }
  for (int n : {1, 7, 64, 2048, 8195}) {
    std::vector<float> g = gauss_vec(n, 4.f), up = gauss_vec(n);
    if (n > 4) { g[0] = 100.f; g[1] = -100.f; g[2] = 90.f; g[3] = -90.f; }  // the exp clamps
    Guarded a(n), b(n);
    std::memcpy(a.data(), g.data(), n * 4);
    std::memcpy(b.data(), g.data(), n * 4);
    ref.silu_mul(a.data(), up.data(), n);
    k.silu_mul(b.data(), up.data(), n);
    double maxerr = 0;
    bool finite = true;
    for (int i = 0; i < n; i++) {
      finite &= std::isfinite(b.data()[i]);
      // budget: the vector exp is good to ~2e-7 relative; 2e-6 of max(|out|, |up|) per element
      maxerr = std::fmax(maxerr, std::fabs(a.data()[i] - b.data()[i]) / (std::fabs(a.data()[i]) + std::fabs(up[i]) + 1e-6));
    }
    report(finite && b.guards_intact() && maxerr <= 2e-6, std::string("silu_mul/") + k.name + "/n=" + std::to_string(n),
           "max rel err " + std::to_string(maxerr));
  }
  for (uint32_t type : kWeightTypes) {
    const int64_t rows = 5, cols = 512;
    std::vector<uint8_t> w = make_weights(type, rows, cols, true);
    WeightView W{type, w.data(), rows, cols, ggml_row_bytes(type, cols)};
    Guarded a(cols), b(cols);
    ref.get_row(W, 3, a.data());
    k.get_row(W, 3, b.data());
    bool same = std::memcmp(a.data(), b.data(), cols * 4) == 0;
    report(same && b.guards_intact(), std::string("get_row/") + k.name + "/" + ggml_type_name(type), same ? "exact" : "MISMATCH");
  }
}

void test_errors(const Kernels& k) {
  std::vector<uint8_t> w(34 * 8);
  std::vector<float> x(256), y(8);
  auto throws = [&](const WeightView& W) {
    try {
      k.matmul(W, x.data(), 1, y.data(), nullptr);
    } catch (const Error&) {
      return true;
    }
    return false;
  };
  bool ok = throws(WeightView{kQ8_0, w.data(), 1, 256, 33}) &&   // wrong row_bytes
            throws(WeightView{kQ8_0, w.data(), 1, 100, 34}) &&   // cols not a block multiple
            throws(WeightView{kQ8_K, w.data(), 1, 256, 292}) &&  // activation-only type
            throws(WeightView{77, w.data(), 1, 256, 34});        // unknown type
  report(ok, std::string("errors/") + k.name, "bad shapes and types throw lkv::Error");
}

// ---- quantizers ---------------------------------------------------------------------------

void test_roundtrip() {
  for (uint32_t type : {kF32, kF16, kBF16, kQ8_0, kQ4_0, kQ2_K, kQ3_K, kQ4_K, kQ5_K, kQ6_K, kIQ4_NL, kIQ4_XS, kQ8_K}) {
    const int64_t n = 8192;
    std::vector<float> x = gauss_vec(n, 0.7f), back(n);
    std::vector<uint8_t> q(ggml_row_bytes(type, n));
    quantize_row_ref(type, x.data(), q.data(), n);
    dequantize_row_ref(type, q.data(), back.data(), n);
    double e2 = 0, x2 = 0;
    for (int64_t i = 0; i < n; i++) {
      e2 += (double)(back[i] - x[i]) * (back[i] - x[i]);
      x2 += (double)x[i] * x[i];
    }
    const double rel = std::sqrt(e2 / x2);
    // edge rows: all zeros must come back as zeros; a constant positive row must stay finite
    // and close (Q4_K's min is clamped to <= 0, so it has to use the scale)
    std::vector<float> z(256, 0.f), zb(256, 1.f), c(256, 0.37f), cb(256);
    std::vector<uint8_t> zq(ggml_row_bytes(type, 256));
    quantize_row_ref(type, z.data(), zq.data(), 256);
    dequantize_row_ref(type, zq.data(), zb.data(), 256);
    quantize_row_ref(type, c.data(), zq.data(), 256);
    dequantize_row_ref(type, zq.data(), cb.data(), 256);
    bool edges = true;
    for (int i = 0; i < 256; i++) edges &= zb[i] == 0.f && std::isfinite(cb[i]) && std::fabs(cb[i] - 0.37f) < 0.37f * 0.1f;
    char detail[128];
    std::snprintf(detail, sizeof detail, "rms rel err %.2e (budget %.1e)%s", rel, roundtrip_budget(type),
                  edges ? "" : " ZERO/CONSTANT ROW WRONG");
    report(rel <= roundtrip_budget(type) && edges, std::string("roundtrip/") + ggml_type_name(type), detail);
  }
}

// ---- hand-built blocks --------------------------------------------------------------------

bool same_values(const std::vector<float>& got, const std::vector<float>& want, std::string* why) {
  for (size_t i = 0; i < want.size(); i++) {
    if (got[i] != want[i]) {
      *why = "element " + std::to_string(i) + ": got " + std::to_string(got[i]) + ", want " + std::to_string(want[i]);
      return false;
    }
  }
  return true;
}

void test_layouts() {
  std::string why;
  {  // F16 / BF16 bit patterns
    const uint16_t h[4] = {0x3C00, 0xC000, 0x7BFF, 0x0001};  // 1, -2, 65504, 2^-24
    const uint16_t b[3] = {0x3F80, 0x4049, 0xBF00};           // 1, 3.140625, -0.5
    std::vector<float> got(4), gotb(3);
    dequantize_row_ref(kF16, h, got.data(), 4);
    dequantize_row_ref(kBF16, b, gotb.data(), 3);
    bool ok = same_values(got, {1.f, -2.f, 65504.f, std::ldexp(1.f, -24)}, &why) &&
              same_values(gotb, {1.f, 3.140625f, -0.5f}, &why);
    report(ok, "layout/f16+bf16", ok ? "known bit patterns" : why);
  }
  {  // Q8_0: d = 0.5, qs[i] = i - 16
    block_q8_0 blk;
    blk.d = 0x3800;
    std::vector<float> want(32), got(32);
    for (int i = 0; i < 32; i++) { blk.qs[i] = (int8_t)(i - 16); want[i] = 0.5f * (i - 16); }
    dequantize_row_ref(kQ8_0, &blk, got.data(), 32);
    bool ok = same_values(got, want, &why);
    report(ok, "layout/q8_0", ok ? "d=0.5, qs=i-16" : why);
  }
  {  // Q4_0: d = 2; byte j: low nibble = element j, high nibble = element j + 16
    block_q4_0 blk;
    blk.d = 0x4000;
    std::vector<float> want(32), got(32);
    for (int j = 0; j < 16; j++) {
      blk.qs[j] = (uint8_t)(j | ((15 - j) << 4));
      want[j] = 2.f * (j - 8);
      want[j + 16] = 2.f * (15 - j - 8);
    }
    dequantize_row_ref(kQ4_0, &blk, got.data(), 32);
    bool ok = same_values(got, want, &why);
    report(ok, "layout/q4_0", ok ? "d=2, nibbles j / 15-j" : why);
  }
  {  // Q4_K: d = 1, dmin = 0.5; scales and mins chosen so the 6-bit packing's high bits matter:
     // sc = 1 2 3 4 17 33 50 63, m = 0 5 10 63 16 32 48 7, packed by hand:
     // bytes 0-3 = sc0-3 | (sc4-7 >> 4) << 6, bytes 4-7 = m0-3 | (m4-7 >> 4) << 6,
     // bytes 8-11 = (sc4-7 & 15) | (m4-7 & 15) << 4
    block_q4_K blk;
    blk.d = 0x3C00;
    blk.dmin = 0x3800;
    const uint8_t packed[12] = {0x41, 0x82, 0xC3, 0xC4, 0x40, 0x85, 0xCA, 0x3F, 0x01, 0x01, 0x02, 0x7F};
    std::memcpy(blk.scales, packed, 12);
    const int sc[8] = {1, 2, 3, 4, 17, 33, 50, 63}, m[8] = {0, 5, 10, 63, 16, 32, 48, 7};
    std::vector<float> want(256), got(256);
    for (int e = 0; e < 256; e++) {
      // element e: 32-byte group e/64, byte e%32, low nibble for the first 32 of the 64
      const int g = e / 64, l = e % 32, q = (e * 7 + 3) % 16;
      uint8_t& byte = blk.qs[32 * g + l];
      if (e % 64 < 32) byte = (uint8_t)((byte & 0xF0) | q);
      else byte = (uint8_t)((byte & 0x0F) | (q << 4));
      const int j = e / 32;
      want[e] = 1.f * sc[j] * q - 0.5f * m[j];
    }
    dequantize_row_ref(kQ4_K, &blk, got.data(), 256);
    bool ok = same_values(got, want, &why);
    report(ok, "layout/q4_K", ok ? "hand-packed 6-bit scales/mins, all 8 sub-blocks" : why);
    // Q5_K: the same header and nibbles, and the fifth bit of element e (sub-block j = e/32,
    // l = e%32) at bit j of qh[l]: set for the elements with (e * 5) % 3 == 0
    block_q5_K b5;
    b5.d = blk.d;
    b5.dmin = blk.dmin;
    std::memcpy(b5.scales, blk.scales, 12);
    std::memcpy(b5.qs, blk.qs, sizeof b5.qs);
    std::memset(b5.qh, 0, sizeof b5.qh);
    for (int e = 0; e < 256; e++) {
      const int j = e / 32, high = (e * 5) % 3 == 0;
      if (high) b5.qh[e % 32] |= (uint8_t)(1 << j);
      want[e] += 1.f * sc[j] * 16 * high;
    }
    dequantize_row_ref(kQ5_K, &b5, got.data(), 256);
    ok = same_values(got, want, &why);
    report(ok, "layout/q5_K", ok ? "q4_K's header and nibbles plus hand-set fifth bits in qh" : why);
  }
  {  // Q6_K: d = 0.25, scales[j] = j - 8 (negative ones too), q6 value of element e = (5e+1) % 64.
     // Element e: half h = e/128, l = e%32, quarter k = (e%128)/32; low 4 bits in
     // ql[64h + l + 32*(k&1)] (low nibble for k < 2, high for k >= 2), high 2 bits in
     // qh[32h + l] at bit 2k.
    block_q6_K blk;
    std::memset(&blk, 0, sizeof blk);
    blk.d = 0x3400;
    for (int j = 0; j < 16; j++) blk.scales[j] = (int8_t)(j - 8);
    std::vector<float> want(256), got(256);
    for (int e = 0; e < 256; e++) {
      const int q = (5 * e + 1) % 64, h = e / 128, l = e % 32, k = (e % 128) / 32;
      uint8_t& lo = blk.ql[64 * h + l + 32 * (k & 1)];
      lo |= (uint8_t)((q & 0xF) << (k >= 2 ? 4 : 0));
      blk.qh[32 * h + l] |= (uint8_t)((q >> 4) << (2 * k));
      want[e] = 0.25f * (e / 16 - 8) * (q - 32);
    }
    dequantize_row_ref(kQ6_K, &blk, got.data(), 256);
    bool ok = same_values(got, want, &why);
    report(ok, "layout/q6_K", ok ? "hand-packed ql/qh, signed scales" : why);
  }
  {  // Q3_K (as llama.cpp's dequantize_row_q3_K reads it): d = 0.5, 6-bit scale of sub-block s =
     // 4s + 3 (stored; the value is that minus 32), element e's 3-bit value u = (3e + 1) % 8 (the
     // weight is u - 4). Element e (h = e/128, j = (e%128)/32, l = e%32): bits 0-1 of u at bits
     // 2j of qs[32h + l], bit 2 at bit 4h + j of hmask[l]. Scale s: low nibble in scales[s]
     // (s < 8) or the high nibble of scales[s - 8], top 2 bits at bits 2(s/4) of scales[8 + s%4].
    block_q3_K blk;
    std::memset(&blk, 0, sizeof blk);
    blk.d = 0x3800;
    for (int s = 0; s < 16; s++) {
      const int v = 4 * s + 3;
      if (s < 8) blk.scales[s] |= (uint8_t)(v & 0xF);
      else blk.scales[s - 8] |= (uint8_t)((v & 0xF) << 4);
      blk.scales[8 + s % 4] |= (uint8_t)((v >> 4) << (2 * (s / 4)));
    }
    std::vector<float> want(256), got(256);
    for (int e = 0; e < 256; e++) {
      const int u = (3 * e + 1) % 8, h = e / 128, j = (e % 128) / 32, l = e % 32;
      blk.qs[32 * h + l] |= (uint8_t)((u & 3) << (2 * j));
      blk.hmask[l] |= (uint8_t)((u >> 2) << (4 * h + j));
      want[e] = 0.5f * (4 * (e / 16) + 3 - 32) * (u - 4);
    }
    dequantize_row_ref(kQ3_K, &blk, got.data(), 256);
    bool ok = same_values(got, want, &why);
    report(ok, "layout/q3_K", ok ? "hand-packed qs/hmask, 6-bit signed scales" : why);
  }
  {  // Q2_K (as llama.cpp's dequantize_row_q2_K reads it): d = 0.5, dmin = 0.25, sub-block s's
     // scale s % 16 (low nibble) and min 15 - s (high nibble), element e's value (7e + 2) % 4 at
     // bits 2j of qs[32h + l] (h = e/128, j = (e%128)/32, l = e%32)
    block_q2_K blk;
    std::memset(&blk, 0, sizeof blk);
    blk.d = 0x3800;
    blk.dmin = 0x3400;
    for (int s = 0; s < 16; s++) blk.scales[s] = (uint8_t)(s | ((15 - s) << 4));
    std::vector<float> want(256), got(256);
    for (int e = 0; e < 256; e++) {
      const int q = (7 * e + 2) % 4, s = e / 16;
      blk.qs[32 * (e / 128) + e % 32] |= (uint8_t)(q << (2 * ((e % 128) / 32)));
      want[e] = 0.5f * s * q - 0.25f * (15 - s);
    }
    dequantize_row_ref(kQ2_K, &blk, got.data(), 256);
    bool ok = same_values(got, want, &why);
    report(ok, "layout/q2_K", ok ? "hand-packed 2-bit values, 4-bit scales and mins" : why);
  }
  {  // IQ4_NL and IQ4_XS (as llama.cpp's dequantize_row_iq4_nl/_xs read them): the grid
     // -127 -104 -83 -65 -49 -35 -22 -10 1 13 25 38 53 69 89 113; element i of a 32-block has
     // index (5i + 3) % 16 (byte i%16, low nibble for i < 16). IQ4_NL: d = 0.25. IQ4_XS: d = 0.5,
     // sub-block j's 6-bit scale 7j + 5 (value 7j - 27): low 4 bits in nibble j%2 of scales_l[j/2],
     // top 2 at bits 2j of scales_h.
    const int grid[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    block_iq4_nl nl;
    nl.d = 0x3400;
    std::memset(nl.qs, 0, sizeof nl.qs);
    std::vector<float> want(32), got(32);
    for (int i = 0; i < 32; i++) {
      const int idx = (5 * i + 3) % 16;
      nl.qs[i % 16] |= (uint8_t)(idx << (i < 16 ? 0 : 4));
      want[i] = 0.25f * grid[idx];
    }
    dequantize_row_ref(kIQ4_NL, &nl, got.data(), 32);
    bool ok = same_values(got, want, &why);
    report(ok, "layout/iq4_nl", ok ? "hand-packed indices into the non-linear grid" : why);
    block_iq4_xs xs;
    std::memset(&xs, 0, sizeof xs);
    xs.d = 0x3800;
    want.assign(256, 0.f);
    got.assign(256, 0.f);
    for (int j = 0; j < 8; j++) {
      const int ls = 7 * j + 5;
      xs.scales_l[j / 2] |= (uint8_t)((ls & 0xF) << (4 * (j % 2)));
      xs.scales_h |= (uint16_t)((ls >> 4) << (2 * j));
      for (int i = 0; i < 32; i++) {
        const int idx = (5 * i + 3 + j) % 16;
        xs.qs[16 * j + i % 16] |= (uint8_t)(idx << (i < 16 ? 0 : 4));
        want[32 * j + i] = 0.5f * (ls - 32) * grid[idx];
      }
    }
    dequantize_row_ref(kIQ4_XS, &xs, got.data(), 256);
    ok = same_values(got, want, &why);
    report(ok, "layout/iq4_xs", ok ? "hand-packed 6-bit scales and indices, all 8 sub-blocks" : why);
  }
  {  // the quantizers produce what the dequantizers read: Q6_K / Q4_K of a ramp
    std::vector<float> x(256), back(256);
    for (int i = 0; i < 256; i++) x[i] = (i - 100) * 0.01f;
    block_q6_K q6;
    quantize_row_ref(kQ6_K, x.data(), &q6, 256);
    dequantize_row_ref(kQ6_K, &q6, back.data(), 256);
    double m6 = 0;
    for (int i = 0; i < 256; i++) m6 = std::fmax(m6, std::fabs(back[i] - x[i]));
    block_q4_K q4;
    quantize_row_ref(kQ4_K, x.data(), &q4, 256);
    dequantize_row_ref(kQ4_K, &q4, back.data(), 256);
    double m4 = 0;
    for (int i = 0; i < 256; i++) m4 = std::fmax(m4, std::fabs(back[i] - x[i]));
    block_q5_K q5;
    quantize_row_ref(kQ5_K, x.data(), &q5, 256);
    dequantize_row_ref(kQ5_K, &q5, back.data(), 256);
    double m5 = 0;
    for (int i = 0; i < 256; i++) m5 = std::fmax(m5, std::fabs(back[i] - x[i]));
    // a ramp from -1 to 1.55: q6_K is symmetric per 16 values, step ~ |max|/32 <= 1.55/32, so
    // half a step is 0.024; q4_K's min is clamped to <= 0, so its all-positive sub-blocks step
    // by max/15 <= 1.55/15: half a step 0.052; q5_K by max/31: 0.025.
    char d[128];
    std::snprintf(d, sizeof d, "ramp max err q6_K %.4f (<0.026) q4_K %.4f (<0.055) q5_K %.4f (<0.027)", m6, m4, m5);
    report(m6 < 0.026 && m4 < 0.055 && m5 < 0.027, "layout/ramp", d);
  }
}

// ---- thread pool --------------------------------------------------------------------------

void test_threadpool() {
  for (int nt : {1, 2, 3, 8}) {
    ThreadPool pool(nt);
    bool ok = pool.size() == nt;
    for (int rep = 0; rep < 200 && ok; rep++) {
      const int n = rep % 37;
      std::vector<int> hits(n, 0);
      pool.run(n, [&](int i) { hits[i]++; });
      for (int i = 0; i < n; i++) ok &= hits[i] == 1;
    }
    // an exception in a task reaches the caller, and the pool keeps working
    bool caught = false;
    try {
      pool.run(16, [](int i) { if (i == 5) throw Error("task 5"); });
    } catch (const Error&) {
      caught = true;
    }
    std::atomic<int> sum{0};
    pool.run(10, [&](int i) {
      pool.run(3, [&](int j) { sum += i * 3 + j; });  // nested: runs inline
    });
    ok &= caught && sum == 29 * 30 / 2;
    report(ok, "threadpool/" + std::to_string(nt), "every task once, exceptions, nested run");
  }
  {  // many short runs in a row, more threads than this machine may have cores (workers get
     // preempted and wake up late): every task exactly once per run, never a task of another run
    ThreadPool pool(3);
    bool ok = true;
    std::vector<std::atomic<int>> hits(64);
    for (int rep = 0; rep < 20000 && ok; rep++) {
      const int n = 2 + rep % 23;
      for (int i = 0; i < n; i++) hits[i].store(0, std::memory_order_relaxed);
      const int tag = rep;
      pool.run(n, [&, tag](int i) {
        if (tag != rep) ok = false;  // a stale function would see another run's tag
        hits[i].fetch_add(1, std::memory_order_relaxed);
      });
      for (int i = 0; i < n; i++) ok &= hits[i].load(std::memory_order_relaxed) == 1;
    }
    report(ok, "threadpool/stress", "20000 short runs on 3 threads: every task exactly once");
  }
  {  // sleeping workers wake up
    ThreadPool pool(2);
    pool.run(4, [](int) {});
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::atomic<int> n{0};
    pool.run(64, [&](int) { n++; });
    report(n == 64, "threadpool/wake", "after the workers went to sleep");
  }
}

// ---- timings (informational) --------------------------------------------------------------

// Wall time per call, and the calling thread's CPU time per call: on a shared machine the
// second shows what the kernel costs when it gets a core (run single-threaded for that).
struct Timing { double wall, cpu; };
Timing time_of(const std::function<void()>& fn, int reps) {
  fn();  // warm up
  timespec c0, c1;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; i++) fn();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
  const double cpu = (c1.tv_sec - c0.tv_sec) + 1e-9 * (c1.tv_nsec - c0.tv_nsec);
  return {wall / reps, cpu / reps};
}

void timings(ThreadPool* pool, const char* only_type) {
  const Kernels& k = kernels_best();
  std::printf("timing (%s; informational): wall time with %d threads, and 1 thread's CPU time\n", k.name, pool->size());
  for (uint32_t type : {kQ8_0, kF16, kQ4_K, kQ6_K, kQ4_0, kBF16}) {
    if (only_type && std::strcmp(only_type, ggml_type_name(type))) continue;
    for (int64_t rows : {2048, 8192}) {
      const int64_t cols = 2048;
      std::vector<uint8_t> w = make_weights(type, rows, cols, true);
      WeightView W{type, w.data(), rows, cols, ggml_row_bytes(type, cols)};
      std::vector<float> x = gauss_vec(cols), y(rows);
      const double bytes = (double)W.row_bytes * rows;
      const int reps = rows == 2048 ? 40 : 10;
      Timing mt = time_of([&] { k.matmul(W, x.data(), 1, y.data(), pool); }, reps);
      Timing st = time_of([&] { k.matmul(W, x.data(), 1, y.data(), nullptr); }, reps);
      std::printf("  matvec %-5s %5lldx%lld: %2d thr %7.1f us %5.1f GB/s | 1 thr cpu %7.1f us %5.1f GB/s\n",
                  ggml_type_name(type), (long long)rows, (long long)cols, pool->size(), mt.wall * 1e6,
                  bytes / mt.wall / 1e9, st.cpu * 1e6, bytes / st.cpu / 1e9);
    }
    const int64_t rows = 2048, cols = 2048;
    const int n_tok = 512;
    std::vector<uint8_t> w = make_weights(type, rows, cols, true);
    WeightView W{type, w.data(), rows, cols, ggml_row_bytes(type, cols)};
    std::vector<float> x = gauss_vec((size_t)n_tok * cols), y((size_t)n_tok * rows);
    const double ops = 2.0 * rows * cols * n_tok;
    Timing mt = time_of([&] { k.matmul(W, x.data(), n_tok, y.data(), pool); }, 2);
    Timing st = time_of([&] { k.matmul(W, x.data(), n_tok, y.data(), nullptr); }, 1);
    std::printf("  matmul %-5s %5lldx%lld x %d tok: %2d thr %7.1f ms %5.0f GOP/s | 1 thr cpu %7.1f ms %5.0f GOP/s\n",
                ggml_type_name(type), (long long)rows, (long long)cols, n_tok, pool->size(), mt.wall * 1e3,
                ops / mt.wall / 1e9, st.cpu * 1e3, ops / st.cpu / 1e9);
  }
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = (uint64_t)std::chrono::steady_clock::now().time_since_epoch().count();
  bool timing = true, only_timing = false;
  const char* only_type = nullptr;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--no-timing")) timing = false;
    else if (!std::strcmp(argv[i], "--timing")) only_timing = true;
    else if (!std::strncmp(argv[i], "--type=", 7)) only_type = argv[i] + 7;
    else seed = std::strtoull(argv[i], nullptr, 10);
  }
  g_rng.seed(seed);
  std::printf("test_kernels: seed %llu, cpu: %s, best: %s\n", (unsigned long long)seed, cpu_features(),
              kernels_best().name);
  try {
    if (only_timing) {
      ThreadPool pool(2);
      timings(&pool, only_type);
      return 0;
    }
    test_layouts();
    test_roundtrip();
    test_threadpool();
    ThreadPool pool2(2), pool3(3);
    for (const char* isa : {"avx512", "avx2", "scalar"}) {
      const Kernels* k = kernels_for(isa);
      if (!k) {
        std::printf("SKIP %s: not supported by this CPU\n", isa);
        continue;
      }
      test_matmul(*k, &pool2, &pool3);
      test_elementwise(*k);
      test_errors(*k);
    }
    if (timing) timings(&pool2, nullptr);
  } catch (const std::exception& e) {
    report(false, "unexpected exception", e.what());
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
