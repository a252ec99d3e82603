// kernels_cpu_avx512.cpp — the SIMD kernels (kernels_cpu_simd.inc) compiled for AVX-512
// (F, BW, VL, VNNI): the same 256-bit algorithms with VNNI dot products (vpdpbusd) and 32
// vector registers, which allow bigger register tiles. On Zen 4, 512-bit ops are executed as
// two 256-bit halves, so 256-bit vectors lose nothing there.
#include <immintrin.h>

#include "common.h"
#include "kernels_cpu_isa.h"

namespace lkv {
namespace cpu {

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
namespace {

struct Isa {
  static constexpr const char* kName = "avx512";
  static constexpr int kFloatR = 4, kFloatT = 4;  // 16 accumulators of 32 registers
  static constexpr int kPanelT = 6;
  static constexpr int kQ8RowTokens = 3;
  static constexpr int kQKPanelT = 6;
  static inline __m256i dot_u8s8(__m256i u, __m256i s) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
  }
  static inline __m256i dot_u8s8_add(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }
};

#include "kernels_cpu_simd.inc"

}  // namespace
#pragma GCC pop_options

const IsaOps* isa_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
                         __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok ? &kOps : nullptr;
}

}  // namespace cpu
}  // namespace lkv
