// test_util.h — what the C++ test programs share: PASS/FAIL reporting and counts, the seeded
// random source with Gaussian helpers, the GGML weight types under test, and guarded output
// buffers (NaN sentinels on both sides of an output, so an unwritten element or a write past
// the end is caught). Each test program is its own executable, so the state here is per program.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gguf.h"
#include "quant.h"

namespace lkvtest {

inline int g_passed = 0, g_failed = 0;
inline std::mt19937_64 g_rng;

inline void report(bool ok, const std::string& name, const std::string& detail = "") {
  (ok ? g_passed : g_failed)++;
  std::printf("%s %s  %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
  std::fflush(stdout);
}

inline float gauss() {
  static std::normal_distribution<float> nd(0.f, 1.f);
  return nd(g_rng);
}
inline std::vector<float> gauss_vec(size_t n, float scale = 1.f) {
  std::vector<float> v(n);
  for (auto& f : v) f = gauss() * scale;
  return v;
}

using lkv::GgmlType;
constexpr uint32_t kF32 = (uint32_t)GgmlType::F32, kF16 = (uint32_t)GgmlType::F16, kBF16 = (uint32_t)GgmlType::BF16,
                   kQ8_0 = (uint32_t)GgmlType::Q8_0, kQ4_0 = (uint32_t)GgmlType::Q4_0, kQ2_K = (uint32_t)GgmlType::Q2_K, kQ3_K = (uint32_t)GgmlType::Q3_K, kQ4_K = (uint32_t)GgmlType::Q4_K,
                   kQ5_K = (uint32_t)GgmlType::Q5_K, kQ6_K = (uint32_t)GgmlType::Q6_K, kQ8_K = (uint32_t)GgmlType::Q8_K,
                   kIQ4_NL = (uint32_t)GgmlType::IQ4_NL, kIQ4_XS = (uint32_t)GgmlType::IQ4_XS;
constexpr uint32_t kWeightTypes[] = {kF32, kF16, kBF16, kQ8_0, kQ4_0, kQ2_K, kQ3_K, kQ4_K, kQ5_K, kQ6_K, kIQ4_NL, kIQ4_XS};

// A random weight matrix: either quantized Gaussian data, or (raw) random bytes with sane scale
// fields, which reach every bit pattern of the values (e.g. q8_0's -128, all 6-bit scales).
inline std::vector<uint8_t> make_weights(uint32_t type, int64_t rows, int64_t cols, bool raw, float scale = 0.05f) {
  const size_t rb = lkv::ggml_row_bytes(type, cols);
  std::vector<uint8_t> w(rb * rows);  // exact size, so ASan builds catch reads past the end
  if (!raw || type == kF32 || type == kF16 || type == kBF16) {
    for (int64_t r = 0; r < rows; r++) {
      std::vector<float> row = gauss_vec(cols, scale);
      lkv::quantize_row_ref(type, row.data(), w.data() + r * rb, cols);
    }
    return w;
  }
  for (auto& b : w) b = (uint8_t)g_rng();
  auto half = [](float lo, float hi) { return lkv::f32_to_f16(std::uniform_real_distribution<float>(lo, hi)(g_rng)); };
  const int64_t nb = rows * cols / lkv::ggml_block_size(type);
  for (int64_t b = 0; b < nb; b++) {
    uint8_t* blk = w.data() + b * lkv::ggml_type_size(type);
    uint16_t h;
    switch ((GgmlType)type) {
      case GgmlType::Q8_0: h = half(-0.002f, 0.002f); std::memcpy(blk, &h, 2); break;
      case GgmlType::Q4_0: h = half(-0.02f, 0.02f); std::memcpy(blk, &h, 2); break;
      case GgmlType::Q4_K:
      case GgmlType::Q5_K:
        h = half(0, 0.002f); std::memcpy(blk, &h, 2);
        h = half(0, 0.002f); std::memcpy(blk + 2, &h, 2);
        break;
      case GgmlType::Q6_K: h = half(-0.0002f, 0.0002f); std::memcpy(blk + 208, &h, 2); break;
      case GgmlType::Q3_K: h = half(-0.002f, 0.002f); std::memcpy(blk + 108, &h, 2); break;
      case GgmlType::Q2_K:
        h = half(0, 0.002f); std::memcpy(blk + 80, &h, 2);
        h = half(0, 0.002f); std::memcpy(blk + 82, &h, 2);
        break;
      case GgmlType::IQ4_NL: h = half(-0.002f, 0.002f); std::memcpy(blk, &h, 2); break;
      case GgmlType::IQ4_XS: h = half(-0.0001f, 0.0001f); std::memcpy(blk, &h, 2); break;
      default: break;
    }
  }
  return w;
}

constexpr size_t kGuard = 64;  // a multiple of 4: outputs stay 16-byte aligned on the device
constexpr uint32_t kSentinel = 0x7fa5c3e1u;  // a NaN with a recognizable payload

struct Guarded {
  std::vector<float> buf;
  size_t n;
  explicit Guarded(size_t n_) : buf(n_ + 2 * kGuard), n(n_) {
    float s;
    std::memcpy(&s, &kSentinel, 4);
    for (auto& f : buf) f = s;  // outputs start as NaN too: an unwritten output fails the NaN check
  }
  float* data() { return buf.data() + kGuard; }
  bool guards_intact() const {
    for (size_t i = 0; i < kGuard; i++) {
      uint32_t a, b;
      std::memcpy(&a, &buf[i], 4);
      std::memcpy(&b, &buf[kGuard + n + i], 4);
      if (a != kSentinel || b != kSentinel) return false;
    }
    return true;
  }
};

}  // namespace lkvtest
