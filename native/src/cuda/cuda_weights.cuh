// cuda_weights.cuh — weight matrices on the device and the one decoder every kernel reads them
// with. The bytes are the file's quantized blocks (quant.h), rearranged only so that every load
// is aligned: Q8_0, Q4_0 and IQ4_NL split into a value array and an f16 scale array (their 34-
// and 18-byte blocks are only 2-byte aligned), Q6_K blocks padded from 210 to 224 bytes, Q3_K
// from 110 to 112, Q2_K from 84 to 96 and IQ4_XS from 136 to 144; Q4_K (144 bytes), Q5_K (176), F16, BF16 and F32
// rows are copied as they are.
#pragma once

#include <type_traits>

#include "../kernels.h"
#include "../quant.h"
#include "cuda_common.cuh"

namespace lkv {

// The super-block formats' device blocks: the file's blocks padded to a multiple of 16 bytes, so
// every load is aligned (Q4_K's 144 and Q5_K's 176 already are).
constexpr size_t dev_block_bytes(size_t file_bytes) { return (file_bytes + 15) & ~(size_t)15; }
constexpr int kQ6KDeviceBlock = (int)dev_block_bytes(sizeof(block_q6_K));     // 210 -> 224
constexpr int kQ3KDeviceBlock = (int)dev_block_bytes(sizeof(block_q3_K));     // 110 -> 112
constexpr int kQ2KDeviceBlock = (int)dev_block_bytes(sizeof(block_q2_K));     // 84 -> 96
constexpr int kIQ4XSDeviceBlock = (int)dev_block_bytes(sizeof(block_iq4_xs));  // 136 -> 144

struct DevMatrix {
  uint32_t type = 0;           // GgmlType
  int rows = 0, cols = 0;      // cols: a multiple of 32 (256 for the K formats)
  const uint8_t* q = nullptr;  // row r at q + r * q_stride (16-byte aligned)
  size_t q_stride = 0;
  const uint16_t* d = nullptr; // Q8_0/Q4_0/IQ4_NL: f16 scale of each 32 values, row r at d + r * cols/32
};

// Device bytes of one row in each array (0 for d when the type has none).
size_t dev_q_row_bytes(uint32_t type, int64_t cols);
size_t dev_d_row_bytes(uint32_t type, int64_t cols);
// Host side: rewrites rows [r0, r0+nr) of W into the device layout (q_out: nr * q-row bytes,
// d_out: nr * d-row bytes or null).
void repack_rows(const WeightView& W, int64_t r0, int64_t nr, uint8_t* q_out, uint8_t* d_out);
// Throws Error naming the problem when the CUDA kernels cannot take this matrix.
void check_dev_matrix_shape(const WeightView& W, const char* what);
// Uploads W into `store` (q array, then d array) and returns the view.
DevMatrix upload_matrix(const WeightView& W, DeviceBuffer& store, const char* what);

// ---- the decoder ------------------------------------------------------------------------------

// int8 in each byte of w -> float, exact, without the slow int->float conversion: the biased byte
// goes into the mantissa of 2^23 and the bias comes off with one subtraction.
__host__ __device__ __forceinline__ void i8x4_to_f32(uint32_t w, float* f) {
  const uint32_t u = w ^ 0x80808080u;  // q + 128, in 0..255
#pragma unroll
  for (int k = 0; k < 4; k++) f[k] = bits_to_f32(byte_perm(u, 0x4B000000u, 0x7440 | k)) - 8388736.0f;
}
// a small non-negative integer (< 2^23) minus `bias`, exact
__host__ __device__ __forceinline__ float small_int_f32(uint32_t v, float bias) {
  return bits_to_f32(v | 0x4B000000u) - (8388608.0f + bias);
}

__host__ __device__ __forceinline__ void q4k_scale_min_dev(int j, const uint8_t* s, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// v[0..8) = W[row][c .. c+8), c a multiple of 8. Products are rounded as quant.cpp's reference
// dequantizer rounds them (mul_rn stops contraction into FMAs), so values match it exactly.
// kIq4Values[i] (quant.h) without a table in memory: the 16 int8 values packed 4 to a word.
__host__ __device__ __forceinline__ float iq4_value(uint32_t i) {
  const uint32_t w = i < 8 ? (i < 4 ? 0xBFAD9881u : 0xF6EADDCFu) : (i < 12 ? 0x26190D01u : 0x71594535u);
  return (float)(int8_t)(uint8_t)(w >> (8 * (i & 3)));
}

template <uint32_t T>
__host__ __device__ __forceinline__ void dequant8(const DevMatrix& W, int row, int c, float* v) {
  const uint8_t* r = W.q + (size_t)row * W.q_stride;
  if constexpr (T == (uint32_t)GgmlType::F32) {
    const float4 a = *(const float4*)(r + (size_t)c * 4), b = *(const float4*)(r + (size_t)c * 4 + 16);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  } else if constexpr (T == (uint32_t)GgmlType::F16) {
    const uint4 u = *(const uint4*)(r + (size_t)c * 2);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
      v[2 * k] = f16_bits_to_f32((uint16_t)(w[k] & 0xFFFF));
      v[2 * k + 1] = f16_bits_to_f32((uint16_t)(w[k] >> 16));
    }
  } else if constexpr (T == (uint32_t)GgmlType::BF16) {
    const uint4 u = *(const uint4*)(r + (size_t)c * 2);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
      v[2 * k] = bits_to_f32(w[k] << 16);
      v[2 * k + 1] = bits_to_f32(w[k] & 0xFFFF0000u);
    }
  } else if constexpr (T == (uint32_t)GgmlType::Q8_0) {
    const uint2 u = *(const uint2*)(r + c);
    const float d = f16_bits_to_f32(W.d[(size_t)row * (W.cols / 32) + c / 32]);
    i8x4_to_f32(u.x, v);
    i8x4_to_f32(u.y, v + 4);
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = mul_rn(d, v[k]);
  } else if constexpr (T == (uint32_t)GgmlType::Q4_0 || T == (uint32_t)GgmlType::IQ4_NL) {
    // block b: 16 bytes; element j < 16 is the low nibble of byte j, element j+16 the high one;
    // Q4_0's weight is d * (nibble - 8), IQ4_NL's d * kIq4Values[nibble]
    const int b = c / 32, w = c % 32;
    const uint2 u = *(const uint2*)(r + b * 16 + (w & 15));
    const int shift = w >= 16 ? 4 : 0;
    const float d = f16_bits_to_f32(W.d[(size_t)row * (W.cols / 32) + b]);
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const uint32_t word = k < 4 ? u.x : u.y, nib = (word >> (8 * (k & 3) + shift)) & 0xF;
      v[k] = mul_rn(d, T == (uint32_t)GgmlType::Q4_0 ? small_int_f32(nib, 8.0f) : iq4_value(nib));
    }
  } else if constexpr (T == (uint32_t)GgmlType::IQ4_XS) {
    // sub-block j = (c%256)/32: scale d * (ls - 32) (ls: nibble j%2 of scales_l[j/2], bits 2j of
    // scales_h), indices in qs[16j..] as IQ4_NL's
    const uint8_t* blk = r + (size_t)(c / 256) * kIQ4XSDeviceBlock;
    const int j = (c % 256) / 32, w = c % 32;
    const int ls = ((blk[4 + j / 2] >> (4 * (j % 2))) & 0xF) | (((*(const uint16_t*)(blk + 2) >> (2 * j)) & 3) << 4);
    const float dl = mul_rn(f16_bits_to_f32(*(const uint16_t*)blk), (float)(ls - 32));
    const uint2 u = *(const uint2*)(blk + 8 + 16 * j + (w & 15));
    const int shift = w >= 16 ? 4 : 0;
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const uint32_t word = k < 4 ? u.x : u.y;
      v[k] = mul_rn(dl, iq4_value((word >> (8 * (k & 3) + shift)) & 0xF));
    }
  } else if constexpr (T == (uint32_t)GgmlType::Q4_K) {
    // 256 values: 4 groups of 64 over 32 bytes each; low nibbles are sub-block 2g, high 2g+1
    const uint8_t* blk = r + (size_t)(c / 256) * sizeof(block_q4_K);
    const int w = c % 256, g = w / 64, hi = (w / 32) & 1, l0 = w % 32;
    int sc, m;
    q4k_scale_min_dev(2 * g + hi, blk + 4, &sc, &m);
    const float d = f16_bits_to_f32(*(const uint16_t*)blk), dmin = f16_bits_to_f32(*(const uint16_t*)(blk + 2));
    const float ds = mul_rn(d, (float)sc), dm = mul_rn(dmin, (float)m);
    const uint2 u = *(const uint2*)(blk + 16 + 32 * g + l0);
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const uint32_t word = k < 4 ? u.x : u.y;
      v[k] = sub_rn(mul_rn(ds, small_int_f32((word >> (8 * (k & 3) + 4 * hi)) & 0xF, 0.0f)), dm);
    }
  } else if constexpr (T == (uint32_t)GgmlType::Q5_K) {
    // Q4_K's layout with qh (32 bytes) before qs: the fifth bit of element l of sub-block s is
    // bit s of qh[l]
    const uint8_t* blk = r + (size_t)(c / 256) * sizeof(block_q5_K);
    const int w = c % 256, g = w / 64, hi = (w / 32) & 1, l0 = w % 32, s = 2 * g + hi;
    int sc, m;
    q4k_scale_min_dev(s, blk + 4, &sc, &m);
    const float d = f16_bits_to_f32(*(const uint16_t*)blk), dmin = f16_bits_to_f32(*(const uint16_t*)(blk + 2));
    const float ds = mul_rn(d, (float)sc), dm = mul_rn(dmin, (float)m);
    const uint2 u = *(const uint2*)(blk + 48 + 32 * g + l0);
    const uint2 h = *(const uint2*)(blk + 16 + l0);
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const uint32_t word = k < 4 ? u.x : u.y, hw = k < 4 ? h.x : h.y;
      const uint32_t q = ((word >> (8 * (k & 3) + 4 * hi)) & 0xF) | (((hw >> (8 * (k & 3) + s)) & 1) << 4);
      v[k] = sub_rn(mul_rn(ds, small_int_f32(q, 0.0f)), dm);
    }
  } else if constexpr (T == (uint32_t)GgmlType::Q2_K) {
    // element e (h = e/128, j = (e%128)/32, l = e%32) at bits 2j of qs[32h + l]; sub-block e/16's
    // scale (low nibble) and min (high nibble) in scales[e/16]
    const uint8_t* blk = r + (size_t)(c / 256) * kQ2KDeviceBlock;
    const int w = c % 256, h = w / 128, j = (w % 128) / 32, l0 = w % 32;
    const uint8_t sm = blk[w / 16];
    const float dl = mul_rn(f16_bits_to_f32(*(const uint16_t*)(blk + 80)), (float)(sm & 0xF));
    const float ml = mul_rn(f16_bits_to_f32(*(const uint16_t*)(blk + 82)), (float)(sm >> 4));
    const uint2 q = *(const uint2*)(blk + 16 + 32 * h + l0);
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const uint32_t qw = k < 4 ? q.x : q.y;
      v[k] = sub_rn(mul_rn(dl, small_int_f32((qw >> (8 * (k & 3) + 2 * j)) & 3, 0.0f)), ml);
    }
  } else if constexpr (T == (uint32_t)GgmlType::Q3_K) {
    // element e (h = e/128, j = (e%128)/32, l = e%32): bits 0-1 at bits 2j of qs[32h + l], bit 2
    // at bit 4h + j of hmask[l]; sub-block e/16's 6-bit scale less 32 (see quant.h)
    const uint8_t* blk = r + (size_t)(c / 256) * kQ3KDeviceBlock;
    const int w = c % 256, h = w / 128, j = (w % 128) / 32, l0 = w % 32, s = w / 16;
    const uint8_t* sb = blk + 96;
    const int sc = ((s < 8 ? sb[s] & 0xF : sb[s - 8] >> 4) | (((sb[8 + s % 4] >> (2 * (s / 4))) & 3) << 4)) - 32;
    const float ds = mul_rn(f16_bits_to_f32(*(const uint16_t*)(blk + 108)), (float)sc);
    const uint2 q = *(const uint2*)(blk + 32 + 32 * h + l0);
    const uint2 hm = *(const uint2*)(blk + l0);
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const uint32_t qw = k < 4 ? q.x : q.y, hw = k < 4 ? hm.x : hm.y;
      const uint32_t u = ((qw >> (8 * (k & 3) + 2 * j)) & 3) | (((hw >> (8 * (k & 3) + 4 * h + j)) & 1) << 2);
      v[k] = mul_rn(ds, small_int_f32(u, 4.0f));
    }
  } else if constexpr (T == (uint32_t)GgmlType::Q6_K) {
    // two halves of 128; quarter qq of a half takes ql[l] or ql[l+32] (low or high nibble) and
    // 2 bits of qh[l]; scale sc[8h + l/16 + 2qq] (see dequantize_q6_K in quant.cpp)
    const uint8_t* blk = r + (size_t)(c / 256) * kQ6KDeviceBlock;
    const int w = c % 256, h = w / 128, qq = (w % 128) / 32, l0 = w % 32;
    const uint2 ql = *(const uint2*)(blk + 64 * h + 32 * (qq & 1) + l0);
    const uint2 qh = *(const uint2*)(blk + 128 + 32 * h + l0);
    const int sc = (int8_t)blk[192 + 8 * h + l0 / 16 + 2 * qq];
    const float ds = mul_rn(f16_bits_to_f32(*(const uint16_t*)(blk + 208)), (float)sc);
    const int lshift = qq >= 2 ? 4 : 0, hshift = 2 * qq;
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const uint32_t lw = k < 4 ? ql.x : ql.y, hw = k < 4 ? qh.x : qh.y;
      const uint32_t q = ((lw >> (8 * (k & 3) + lshift)) & 0xF) | (((hw >> (8 * (k & 3) + hshift)) & 3) << 4);
      v[k] = mul_rn(ds, small_int_f32(q, 32.0f));
    }
  }
}

// Calls f(std::integral_constant<uint32_t, T>{}) with T the matrix type, so a generic lambda can
// instantiate its kernel for each format: dispatch_type(W.type, [&](auto t) { k<t.value><<<..>>>(); }).
template <typename F>
void dispatch_type(uint32_t type, F&& f) {
  using G = GgmlType;
  switch ((G)type) {
    case G::F32: f(std::integral_constant<uint32_t, (uint32_t)G::F32>{}); return;
    case G::F16: f(std::integral_constant<uint32_t, (uint32_t)G::F16>{}); return;
    case G::BF16: f(std::integral_constant<uint32_t, (uint32_t)G::BF16>{}); return;
    case G::Q8_0: f(std::integral_constant<uint32_t, (uint32_t)G::Q8_0>{}); return;
    case G::Q4_0: f(std::integral_constant<uint32_t, (uint32_t)G::Q4_0>{}); return;
    case G::Q2_K: f(std::integral_constant<uint32_t, (uint32_t)G::Q2_K>{}); return;
    case G::Q3_K: f(std::integral_constant<uint32_t, (uint32_t)G::Q3_K>{}); return;
    case G::Q4_K: f(std::integral_constant<uint32_t, (uint32_t)G::Q4_K>{}); return;
    case G::Q5_K: f(std::integral_constant<uint32_t, (uint32_t)G::Q5_K>{}); return;
    case G::Q6_K: f(std::integral_constant<uint32_t, (uint32_t)G::Q6_K>{}); return;
    case G::IQ4_NL: f(std::integral_constant<uint32_t, (uint32_t)G::IQ4_NL>{}); return;
    case G::IQ4_XS: f(std::integral_constant<uint32_t, (uint32_t)G::IQ4_XS>{}); return;
    default: break;
  }
  throw Error(strprintf("CUDA backend: weight type %s is not supported", ggml_type_name(type)));
}

}  // namespace lkv
