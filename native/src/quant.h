// quant.h — block layouts of the weight formats the engine reads (llama.cpp's layouts, byte for
// byte), declared once for C++ and CUDA, with reference (scalar) quantizers and dequantizers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gguf.h"

namespace lkv {

constexpr int QK8_0 = 32;
constexpr int QK4_0 = 32;
constexpr int QK_K = 256;
constexpr int K_SCALE_SIZE = 12;

// 32 weights: w = d * qs[i]
struct block_q8_0 {
  uint16_t d;  // f16 scale
  int8_t qs[QK8_0];
};
static_assert(sizeof(block_q8_0) == 34, "q8_0 block is 34 bytes");

// 32 weights: w = d * ((nibble) - 8); qs[j] low nibble = element j, high nibble = element j+16
struct block_q4_0 {
  uint16_t d;
  uint8_t qs[QK4_0 / 2];
};
static_assert(sizeof(block_q4_0) == 18, "q4_0 block is 18 bytes");

// 256 weights in 8 sub-blocks of 32: w = d*sc[j]*q - dmin*m[j], 6-bit sc/m packed in scales[12]
struct block_q4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[K_SCALE_SIZE];
  uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q4_K) == 144, "q4_K block is 144 bytes");

// 256 weights in 16 sub-blocks of 16: w = d * (scales[j] & 15) * q - dmin * (scales[j] >> 4),
// q = 2 bits: element e (h = e/128, j = (e%128)/32, l = e%32) at bits 2j of qs[32h + l]
struct block_q2_K {
  uint8_t scales[QK_K / 16];
  uint8_t qs[QK_K / 4];
  uint16_t d;
  uint16_t dmin;
};
static_assert(sizeof(block_q2_K) == 84, "q2_K block is 84 bytes");

// 256 weights in 16 sub-blocks of 16: w = d * (sc[j] - 32) * (q - 4), q = 3 bits: element e (half
// h = e/128, j = (e%128)/32, l = e%32) has its low 2 bits at bits 2j of qs[32h + l] and its third
// at bit 4h + j of hmask[l]; the 16 6-bit scales are packed in 12 bytes: the low 4 bits of
// scale s in scales[s] (s < 8) or the high nibble of scales[s - 8], its top 2 bits at bits
// 2(s/4) of scales[8 + s%4].
struct block_q3_K {
  uint8_t hmask[QK_K / 8];
  uint8_t qs[QK_K / 4];
  uint8_t scales[12];
  uint16_t d;
};
static_assert(sizeof(block_q3_K) == 110, "q3_K block is 110 bytes");

// 256 weights in 8 sub-blocks of 32: w = d*sc[j]*q - dmin*m[j] with q = 5 bits: the low 4 as in
// Q4_K's qs, the fifth in qh (bit 2g of qh[l]: element l of sub-block 2g, bit 2g+1: of 2g+1)
struct block_q5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[K_SCALE_SIZE];
  uint8_t qh[QK_K / 8];
  uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q5_K) == 176, "q5_K block is 176 bytes");

// 256 weights in 16 sub-blocks of 16: w = d * scales[j] * (q6 - 32)
struct block_q6_K {
  uint8_t ql[QK_K / 2];      // low 4 bits
  uint8_t qh[QK_K / 4];      // high 2 bits
  int8_t scales[QK_K / 16];  // 8-bit sub-block scales
  uint16_t d;
};
static_assert(sizeof(block_q6_K) == 210, "q6_K block is 210 bytes");

// The non-linear 4-bit grid of IQ4_NL and IQ4_XS: a 4-bit index selects one of these int8 values.
constexpr int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// 32 weights: w = d * kIq4Values[index], indices laid out as Q4_0's nibbles (byte j: element j in
// the low nibble, element j+16 in the high one)
struct block_iq4_nl {
  uint16_t d;
  uint8_t qs[16];
};
static_assert(sizeof(block_iq4_nl) == 18, "iq4_nl block is 18 bytes");

// 256 weights in 8 sub-blocks of 32: w = d * (ls[j] - 32) * kIq4Values[index], ls 6 bits (low 4
// in nibble j%2 of scales_l[j/2], high 2 at bits 2j of scales_h); sub-block j's indices in
// qs[16j..16j+16) as IQ4_NL's
struct block_iq4_xs {
  uint16_t d;
  uint16_t scales_h;
  uint8_t scales_l[4];
  uint8_t qs[128];
};
static_assert(sizeof(block_iq4_xs) == 136, "iq4_xs block is 136 bytes");

// Activation formats used by the integer dot products (never stored in files).
struct block_q8_K {
  float d;
  int8_t qs[QK_K];
  int16_t bsums[QK_K / 16];  // sums of each group of 16 qs
};
static_assert(sizeof(block_q8_K) == 292, "q8_K block is 292 bytes");

// Reference routines (scalar, plain C++). n must be a multiple of the type's block size.
void dequantize_row_ref(uint32_t type, const void* src, float* dst, int64_t n);
void quantize_row_ref(uint32_t type, const float* src, void* dst, int64_t n);  // every type above

}  // namespace lkv
