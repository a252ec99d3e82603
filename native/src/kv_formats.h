// kv_formats.h — storage layouts of the compressed KV cache, declared once for C++ and CUDA, with
// the reference (plain, scalar) quantizer beside each. kv_compressed.cpp's fused attention and the
// future CUDA kernels decode exactly these bytes; test_kv.cpp checks them against these functions.
//
// One block holds n <= G rows (tokens) of one KV head at one precision (bits 16, 8, 4, 2 or 1):
//
//   keys   per channel over the block (KIVI): head_dim KvQParams, then channel-major codes: for
//          each channel c, the n codes of that channel planar-packed (below) in
//          kv_planar_bytes(n, bits) bytes. 16 bits: the same channel-major order, one f16 each.
//   values per token in groups of vg channels along head_dim: for each row, head_dim/vg KvQParams,
//          and separately for each row its head_dim codes planar-packed. 16 bits: f16 per value.
//   side   dense-and-sparse outliers (optional): KvOutlier entries sorted by index, each the f16
//          difference between the exact value and its dense dequantized value.
//
//   dequantized x = f16(scale) * code + f16(zero), code in [0, 2^bits).
//
// Planar packing: with per = 8/bits codes per byte and stride S = ceil(n/per) bytes, code i lives
// in byte i % S at bit bits*(i / S). Unpacking is then `per` contiguous shift-and-mask loops of S
// bytes each, which vectorize (the classic interleaved nibble order needs shuffles).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

#if defined(__CUDACC__)
#define LKV_HD __host__ __device__ inline
#else
#define LKV_HD inline
#endif

namespace lkv {

constexpr int kKvMaxGroup = 256;    // rows per block at most (outlier indices are 16-bit)
constexpr int kKvMaxHeadDim = 256;  // row * head_dim + channel fits in 16 bits

// Scale and zero point of one quantization group, both IEEE half.
struct KvQParams {
  uint16_t scale;
  uint16_t zero;
};
static_assert(sizeof(KvQParams) == 4, "KvQParams is two halves");

// One element kept outside the dense codes: index = row * head_dim + channel within its block,
// delta = f16(exact - dense dequantized).
struct KvOutlier {
  uint16_t index;
  uint16_t delta;
};
static_assert(sizeof(KvOutlier) == 4, "KvOutlier is an index and a half");
static_assert(kKvMaxGroup * kKvMaxHeadDim <= 65536, "outlier index must fit 16 bits");

LKV_HD int kv_codes_per_byte(int bits) { return 8 / bits; }
// Bytes of n codes, planar-packed (or n halves for 16 bits).
LKV_HD int kv_planar_bytes(int n, int bits) { return bits == 16 ? 2 * n : (n + 8 / bits - 1) / (8 / bits); }
LKV_HD unsigned kv_planar_get(const uint8_t* p, int n, int bits, int i) {
  const int S = kv_planar_bytes(n, bits);
  return (unsigned)(p[i % S] >> (bits * (i / S))) & ((1u << bits) - 1u);
}
// Sets code i (the bytes must start zeroed).
LKV_HD void kv_planar_put(uint8_t* p, int n, int bits, int i, unsigned code) {
  const int S = kv_planar_bytes(n, bits);
  p[i % S] = (uint8_t)(p[i % S] | (code << (bits * (i / S))));
}

// Bytes of one block's pieces (bits < 16: codes and params; 16: raw halves, no params).
LKV_HD int kv_key_param_count(int head_dim, int kbits) { return kbits == 16 ? 0 : head_dim; }
LKV_HD int kv_key_code_bytes(int n, int head_dim, int kbits) { return head_dim * kv_planar_bytes(n, kbits); }
LKV_HD int kv_value_param_count(int head_dim, int vgroup, int vbits) { return vbits == 16 ? 0 : head_dim / vgroup; }
LKV_HD int kv_value_row_bytes(int head_dim, int vbits) { return kv_planar_bytes(head_dim, vbits); }

// ---- reference quantizers (host) --------------------------------------------------------------

// Round half to even, as std::nearbyint in the default rounding mode, for |x| < 2^22; larger
// magnitudes (and infinities) come out at least as large, which the callers' clamp to
// [0, 2^bits - 1] maps to the same code. Plain adds, so the loops below vectorize.
constexpr float kKvRoundMagic = 12582912.0f;  // 1.5 * 2^23
inline float kv_round(float x) { return (x + kKvRoundMagic) - kKvRoundMagic; }

// The code of x for scale s and zero z (floats of the rounded f16 params): s <= 0 gives 0.
inline unsigned kv_quant_f(float x, float s, float z, float qmax) {
  if (!(s > 0.0f)) return 0;
  const float q = kv_round((x - z) / s);
  return (unsigned)(q < 0.0f ? 0.0f : q > qmax ? qmax : q);
}

inline unsigned kv_quant(float x, KvQParams p, int bits) {
  return kv_quant_f(x, f16_to_f32(p.scale), f16_to_f32(p.zero), (float)((1 << bits) - 1));
}

inline KvQParams kv_params_for(float lo, float hi, int bits) {
  const float qmax = (float)((1 << bits) - 1);
  KvQParams p;
  p.scale = f32_to_f16(std::min((hi - lo) / qmax, 65504.0f));
  p.zero = f32_to_f16(std::max(std::min(lo, 65504.0f), -65504.0f));
  return p;
}

// Sum of squared errors of quantizing x[0, n) with p (scale, zero and codes as kv_quant gives).
inline double kv_fit_error(const float* x, int n, KvQParams p, int bits) {
  const float s = f16_to_f32(p.scale), z = f16_to_f32(p.zero), qmax = (float)((1 << bits) - 1);
  double e = 0;
  if (!(s > 0.0f)) {
    for (int i = 0; i < n; i++) {
      const double d = (double)x[i] - (s * 0.0f + z);
      e += d * d;
    }
    return e;
  }
  for (int i = 0; i < n; i++) {
    float q = kv_round((x[i] - z) / s);
    q = q < 0.0f ? 0.0f : q > qmax ? qmax : q;
    const double d = (double)x[i] - (s * q + z);
    e += d * d;
  }
  return e;
}

// Asymmetric fit of x[i*stride], i < n, skipping elements whose skip[i*stride] is set (skip may be
// null). 8 bits: the min/max range. 4 and 2 bits: the range, shrunk about its centre by one of a
// few factors, whose codes give the least squared error (clipping a few tail values beats
// spending the few levels on them: for Gaussian groups of 64 at 2 bits, ~25% less RMS error).
// 1 bit stops at half the range (levels near +-1.25 sigma of a Gaussian group of 64-128), not at
// the least-squares levels (+-0.8 sigma): those shrink every dequantized vector toward the group's
// centre by a third, which attention does not average away (scores flatten, outputs shrink);
// +-1.25 sigma is the scale at which sum(x * x') = sum(x * x) in expectation. Measured on the
// 1B-shaped model at 2k, k1,v1 with the factors down to 0.23: KL 0.35 against 0.24.
// Scale and zero are rounded to f16 here, and codes are computed with the rounded values, so
// dequantization reproduces exactly what the codes were fitted against.
inline KvQParams kv_fit(const float* x, int n, int stride, int bits, const uint8_t* skip) {
  float buf[kKvMaxGroup > kKvMaxHeadDim ? kKvMaxGroup : kKvMaxHeadDim];  // the elements fitted, contiguous
  int m = 0;
  for (int i = 0; i < n; i++)
    if (!(skip && skip[(size_t)i * stride])) buf[m++] = x[(size_t)i * stride];
  float lo = INFINITY, hi = -INFINITY;
  for (int i = 0; i < m; i++) {
    lo = std::min(lo, buf[i]);
    hi = std::max(hi, buf[i]);
  }
  if (!(lo <= hi)) lo = hi = 0.0f;  // every element skipped
  KvQParams best = kv_params_for(lo, hi, bits);
  if (bits >= 8 || hi == lo) return best;
  double best_err = kv_fit_error(buf, m, best, bits);
  const float mid = 0.5f * (lo + hi), half = 0.5f * (hi - lo);
  for (float a : {0.9f, 0.8f, 0.7f, 0.6f, 0.5f}) {
    const KvQParams p = kv_params_for(mid - a * half, mid + a * half, bits);
    const double e = kv_fit_error(buf, m, p, bits);
    if (e < best_err) {
      best_err = e;
      best = p;
    }
  }
  return best;
}

LKV_HD float kv_dequant(unsigned code, float scale, float zero) { return scale * (float)code + zero; }

// Keys of n rows [n][hd] -> params [hd] and channel-major codes [hd][kv_planar_bytes(n, bits)].
// skip: [n][hd] outlier mask or null. bits 16: codes hold f16 values channel-major.
inline void kv_quantize_keys_ref(const float* k, int n, int hd, int bits, const uint8_t* skip, KvQParams* params,
                                 uint8_t* codes) {
  const int S = kv_planar_bytes(n, bits);
  std::memset(codes, 0, (size_t)hd * S);
  for (int c = 0; c < hd; c++) {
    uint8_t* cc = codes + (size_t)c * S;
    if (bits == 16) {
      for (int j = 0; j < n; j++) {
        const uint16_t h = f32_to_f16(k[(size_t)j * hd + c]);
        std::memcpy(cc + 2 * j, &h, 2);
      }
      continue;
    }
    params[c] = kv_fit(k + c, n, hd, bits, skip ? skip + c : nullptr);
    const float s = f16_to_f32(params[c].scale), z = f16_to_f32(params[c].zero), qmax = (float)((1 << bits) - 1);
    for (int j = 0; j < n; j++) kv_planar_put(cc, n, bits, j, kv_quant_f(k[(size_t)j * hd + c], s, z, qmax));
  }
}

// Key element (row j, channel c) of a block, without outliers.
inline float kv_key_dense_ref(const KvQParams* params, const uint8_t* codes, int n, int bits, int j, int c) {
  const uint8_t* cc = codes + (size_t)c * kv_planar_bytes(n, bits);
  if (bits == 16) {
    uint16_t h;
    std::memcpy(&h, cc + 2 * j, 2);
    return f16_to_f32(h);
  }
  return kv_dequant(kv_planar_get(cc, n, bits, j), f16_to_f32(params[c].scale), f16_to_f32(params[c].zero));
}

// One value row [hd] -> params [hd/vg] and codes [kv_value_row_bytes(hd, bits)].
inline void kv_quantize_value_row_ref(const float* v, int hd, int vg, int bits, const uint8_t* skip, KvQParams* params,
                                      uint8_t* codes) {
  std::memset(codes, 0, (size_t)kv_value_row_bytes(hd, bits));
  if (bits == 16) {
    for (int c = 0; c < hd; c++) {
      const uint16_t h = f32_to_f16(v[c]);
      std::memcpy(codes + 2 * c, &h, 2);
    }
    return;
  }
  const float qmax = (float)((1 << bits) - 1);
  for (int g = 0; g < hd / vg; g++) {
    params[g] = kv_fit(v + g * vg, vg, 1, bits, skip ? skip + g * vg : nullptr);
    const float s = f16_to_f32(params[g].scale), z = f16_to_f32(params[g].zero);
    for (int c = g * vg; c < (g + 1) * vg; c++) kv_planar_put(codes, hd, bits, c, kv_quant_f(v[c], s, z, qmax));
  }
}

inline float kv_value_dense_ref(const KvQParams* params, const uint8_t* codes, int hd, int vg, int bits, int c) {
  if (bits == 16) {
    uint16_t h;
    std::memcpy(&h, codes + 2 * c, 2);
    return f16_to_f32(h);
  }
  const KvQParams p = params[c / vg];
  return kv_dequant(kv_planar_get(codes, hd, bits, c), f16_to_f32(p.scale), f16_to_f32(p.zero));
}

// Dense-and-sparse outlier choice (reference). x holds `groups` quantization groups; group g's
// elements are x[idx[g][0..size)], the flat indices listed in members. Picks `count` elements to
// keep exactly, greedily: each step removes the end element (min or max) of the group whose
// removal most reduces sum over groups of size * range^2 — the dense codes' squared error is
// proportional to that. Marks chosen elements in skip (flat, pre-zeroed by the caller).
inline void kv_select_outliers_ref(const float* x, const std::vector<std::vector<int>>& members, int count, uint8_t* skip) {
  struct G {
    std::vector<int> order;  // member indices sorted by value
    int lo, hi;              // current live range [lo, hi] in order
  };
  std::vector<G> gs(members.size());
  for (size_t g = 0; g < members.size(); g++) {
    gs[g].order = members[g];
    std::sort(gs[g].order.begin(), gs[g].order.end(), [&](int a, int b) { return x[a] < x[b] || (x[a] == x[b] && a < b); });
    gs[g].lo = 0;
    gs[g].hi = (int)gs[g].order.size() - 1;
  }
  auto cost = [&](const G& g, int lo, int hi) {
    if (hi <= lo) return 0.0;
    const double r = (double)x[g.order[hi]] - x[g.order[lo]];
    return (double)(hi - lo + 1) * r * r;
  };
  for (int t = 0; t < count; t++) {
    double best = 0;
    int bg = -1;
    bool bhi = false;
    for (size_t g = 0; g < gs.size(); g++) {
      const G& q = gs[g];
      if (q.hi - q.lo < 2) continue;  // keep at least two elements to fit
      const double now = cost(q, q.lo, q.hi);
      const double gh = now - cost(q, q.lo, q.hi - 1), gl = now - cost(q, q.lo + 1, q.hi);
      if (gh > best) { best = gh; bg = (int)g; bhi = true; }
      if (gl > best) { best = gl; bg = (int)g; bhi = false; }
    }
    if (bg < 0) break;
    G& q = gs[bg];
    skip[bhi ? q.order[q.hi--] : q.order[q.lo++]] = 1;
  }
}

// Normalized fast Walsh–Hadamard transform in place (n a power of two). Orthonormal and
// symmetric, so it is its own inverse: q·k = (Hq)·(Hk), and H(sum p v') = sum p v for v' = Hv.
inline void kv_hadamard(float* x, int n) {
  for (int len = 1; len < n; len <<= 1)
    for (int i = 0; i < n; i += len << 1)
      for (int j = i; j < i + len; j++) {
        const float a = x[j], b = x[j + len];
        x[j] = a + b;
        x[j + len] = a - b;
      }
  const float s = 1.0f / std::sqrt((float)n);
  for (int i = 0; i < n; i++) x[i] *= s;
}

}  // namespace lkv
