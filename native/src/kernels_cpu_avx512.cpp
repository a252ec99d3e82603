// kernels_cpu_avx512.cpp — the SIMD kernels (kernels_cpu_simd.inc) compiled for AVX-512
// (F, BW, VL, VNNI): the 256-bit algorithms with VNNI dot products (vpdpbusd) and 32 vector
// registers, which allow bigger register tiles, plus 512-bit kernels where the instruction count
// bounds the speed (LKV_VNNI512 below: the integer prefill panels of 16 rows and the Q4_K/Q5_K
// matrix-vector rows). Zen 4 executes 512-bit ops as two 256-bit halves, Zen 5 and Intel's server
// cores in full; on the Zen 5 EPYC of 2026-12-01 they took Q8_0 prefill from 214 to 450-467
// GOP/s on one core, Q4_K from 158 to 384-401, and Q4_K matrix-vector rows from 21 to 26-29 GB/s.
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
  static constexpr bool kQ8Unsigned = true;
  static inline __m256i dot_u8s8(__m256i u, __m256i s) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
  }
  static inline __m256i dot_u8s8_add(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }
};

// GCC 12 warns about the deliberately undefined pass-through operand of its 512-bit intrinsics.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define LKV_VNNI512 1
#include "kernels_cpu_simd.inc"
#undef LKV_VNNI512
#pragma GCC diagnostic pop

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
