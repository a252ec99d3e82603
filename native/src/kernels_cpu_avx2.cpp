// kernels_cpu_avx2.cpp — the SIMD kernels (kernels_cpu_simd.inc) compiled for AVX2 + FMA + F16C;
// u8 x s8 dot products by maddubs + madd. Selected at run time; the file builds with plain -O3.
#include <immintrin.h>

#include "common.h"
#include "kernels_cpu_isa.h"

namespace lkv {
namespace cpu {

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace {

struct Isa {
  static constexpr const char* kName = "avx2";
  // tiles sized for 16 registers: float 8 accumulators + 4 weights + x; the q8 panel kernel
  // 2 per token (integer block sums, float totals) + values, |values| and temporaries
  static constexpr int kFloatR = 4, kFloatT = 2;
  static constexpr int kPanelT = 5;
  static constexpr int kQ8RowTokens = 3;
  static constexpr int kQKPanelT = 5;
  static constexpr bool kQ8Unsigned = false;
  // 8 lanes, each the sum of 4 products u8*s8. maddubs saturates at int16, which the callers
  // rule out (|u| <= 128 with |s| <= 127, or u <= 63).
  static inline __m256i dot_u8s8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
  }
  static inline __m256i dot_u8s8_add(__m256i acc, __m256i u, __m256i s) { return _mm256_add_epi32(acc, dot_u8s8(u, s)); }
};

#include "kernels_cpu_simd.inc"

}  // namespace
#pragma GCC pop_options

const IsaOps* isa_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok ? &kOps : nullptr;
}

}  // namespace cpu
}  // namespace lkv
