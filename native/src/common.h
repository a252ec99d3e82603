// common.h — error type, checks, and half-precision conversions shared by every engine file.
// Errors are C++ exceptions carrying a message; the N-API layer turns them into JS Errors.
// Nothing in native/ may call exit() or abort().
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace lkv {

struct Error : std::runtime_error {
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

std::string strprintf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// Hands the heap's free pages back to the system (glibc: malloc_trim; elsewhere nothing). Called
// where a whole KV cache has just been freed: its arrays come from the heap once glibc's dynamic
// mmap threshold has risen, and freed heap memory otherwise stays resident (replacing a 32k f16
// cache by loading a state held both, 2 GiB, until the process ended).
void release_free_memory();

#define LKV_CHECK(cond, ...)                                   \
  do {                                                         \
    if (!(cond)) throw ::lkv::Error(::lkv::strprintf(__VA_ARGS__)); \
  } while (0)

// IEEE half <-> float, exact (round-to-nearest-even on the way down).
inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      do { man <<= 1; e++; } while ((man & 0x400) == 0);
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);  // overflow -> inf
  if (absx < 0x38800000u) {                                    // subnormal or zero in half
    if (absx < 0x33000000u) return (uint16_t)sign;
    // value = m * 2^(e-150); a half subnormal unit is 2^-24, so the mantissa is m >> (126 - e)
    uint32_t e = absx >> 23;
    uint32_t m = (absx & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e;
    uint32_t half_m = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_m & 1))) half_m++;
    return (uint16_t)(sign | half_m);
  }
  uint32_t e = (absx >> 23) - 127 + 15;
  uint32_t m = absx & 0x7fffff;
  uint32_t h = (e << 10) | (m >> 13);
  uint32_t rem = m & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;  // may carry into exponent: correct
  return (uint16_t)(sign | h);
}

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);  // quiet NaN
  x += 0x7fff + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}

}  // namespace lkv
