// simd_math.h — small loops written so GCC vectorizes them for each ISA (target_clones picks
// AVX-512 / AVX2 / baseline at load time): dot products, axpy, scaling, a vectorizable exp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LKV_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LKV_CLONES
#endif

namespace lkv {

// 2^f on [-0.5, 0.5] as a degree-6 polynomial, highest power first (Horner): exp_approx and its
// SIMD versions in kv_tiles.cpp evaluate this one.
constexpr float kExp2Poly[7] = {1.5403530393381606e-4f, 1.3333558146428443e-3f, 9.6181291076284772e-3f,
                                5.5504108664821580e-2f, 2.4022650695910071e-1f, 6.9314718055994531e-1f, 1.0f};

// exp(x) for x <= 0 (arguments above 88 overflow); relative error < 4e-6. Plain code so the
// compiler can vectorize it: round-to-nearest by the magic-number trick, the polynomial above
// for 2^f, and the exponent added as integer bits.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  float t = x * 1.4426950408889634f;
  float n = (t + 12582912.0f) - 12582912.0f;
  float f = t - n;
  float p = kExp2Poly[0];
  for (int i = 1; i < 7; i++) p = p * f + kExp2Poly[i];
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += (int32_t)((uint32_t)(int32_t)n << 23);  // unsigned shift: n is negative
  float r;
  std::memcpy(&r, &bits, 4);
  return r;
}

}  // namespace lkv
