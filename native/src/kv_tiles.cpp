// kv_tiles.cpp — compressed-cache attention kernels per instruction set (see kv_tiles.h).
#include "kv_tiles.h"

#include <algorithm>

#include "simd_math.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace lkv {
namespace kvc {

LKV_CLONES void key_params(const Block& b, int hd, float* __restrict sc, float* __restrict z) {
  if (b.kbits == 16) {
    std::fill(sc, sc + hd, 1.0f);
    std::fill(z, z + hd, 0.0f);
    return;
  }
  const KvQParams* p = b.kp().data();
  for (int c = 0; c < hd; c++) {  // branch-free: the compiler vectorizes it per clone
    sc[c] = half_fast(p[c].scale);
    z[c] = half_fast(p[c].zero);
  }
}

// Folds per-channel key scale and zero into R query rows: q.k_j = qf.code_j + bias.
LKV_CLONES void fold_keys(const float* __restrict sc, const float* __restrict z, const float* __restrict q, int R, int hd,
                          float* __restrict qf, float* __restrict bias) {
  // hd is a multiple of 8 (the compressed cache requires it): eight partial sums, so the compiler vectorizes the
  // bias dot product (a single sum is one dependent add per channel)
  for (int r = 0; r < R; r++) {
    const float* qr = q + (size_t)r * hd;
    float* fr = qf + (size_t)r * hd;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int c = 0; c < hd; c += 8)
      for (int e = 0; e < 8; e++) {
        fr[c + e] = qr[c + e] * sc[c + e];
        acc[e] += qr[c + e] * z[c + e];
      }
    bias[r] = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  }
}

// The key outliers' share of the scores of R query rows (q unfolded).
void add_outlier_scores(const Block& b, const float* q, int R, int hd, float* s, int ts, float scale) {
  for (const KvOutlier& o : b.ko()) {
    const int j = o.index / hd, c = o.index % hd;
    const float d = f16_to_f32(o.delta) * scale;
    for (int r = 0; r < R; r++) s[(size_t)r * ts + j] += q[(size_t)r * hd + c] * d;
  }
}
void add_outliers_values(const Block& b, float* vt) {
  for (const KvOutlier& o : b.vo()) vt[o.index] += f16_to_f32(o.delta);
}

LKV_CLONES void decode_keys_generic(const Block& b, int hd, float* __restrict kt, int ts) {
  const int n = b.n, bits = b.kbits, S = kv_planar_bytes(n, bits);
  for (int c = 0; c < hd; c++) {
    const uint8_t* cc = b.kc().data() + (size_t)c * S;
    float* row = kt + (size_t)c * ts;
    if (bits == 16) {
      const uint16_t* src = (const uint16_t*)cc;
      for (int j = 0; j < n; j++) row[j] = half_fast(src[j]);
      continue;
    }
    const int per = 8 / bits;
    const unsigned mask = (1u << bits) - 1;
    for (int t = 0; t < per; t++) {
      const int sh = bits * t;
      float* dst = row + t * S;
      for (int k = 0; k < S; k++) dst[k] = (float)((cc[k] >> sh) & mask);
    }
  }
}

LKV_CLONES void decode_values_generic(const Block& b, int hd, int vg, float* __restrict vt) {
  const int bits = b.vbits, RB = kv_value_row_bytes(hd, bits), ng = hd / vg;
  for (int j = 0; j < b.n; j++) {
    const uint8_t* rc = b.vc().data() + (size_t)j * RB;
    float* dst = vt + (size_t)j * hd;
    if (bits == 16) {
      const uint16_t* src = (const uint16_t*)rc;
      for (int c = 0; c < hd; c++) dst[c] = half_fast(src[c]);
      continue;
    }
    const KvQParams* p = b.vp().data() + (size_t)j * ng;
    const int per = 8 / bits, S = RB;
    const unsigned mask = (1u << bits) - 1;
    for (int t = 0; t < per; t++) {
      const int sh = bits * t;
      for (int c = t * S; c < std::min(hd, (t + 1) * S);) {
        const int g = c / vg, end = std::min(std::min(hd, (t + 1) * S), (g + 1) * vg);
        const float sc = f16_to_f32(p[g].scale), z = f16_to_f32(p[g].zero);
        const uint8_t* src = rc + (c - t * S);
        float* d = dst + c;
        const int len = end - c;
        for (int k = 0; k < len; k++) d[k] = sc * (float)((src[k] >> sh) & mask) + z;
        c = end;
      }
    }
  }
  add_outliers_values(b, vt);
}

LKV_CLONES void decode_rows_generic(const uint16_t* __restrict src, int nk, int hd, float* __restrict vt) {
  for (size_t e = 0; e < (size_t)nk * hd; e++) vt[e] = half_fast(src[e]);
}

LKV_CLONES void scores_t_generic(const float* __restrict q, int R, const float* __restrict kt, int hd, int ts, int nk,
                                 float* __restrict s, float scale, const float* __restrict bias) {
  for (int r = 0; r < R; r++) {
    float* sr = s + (size_t)r * ts;
    const float* qr = q + (size_t)r * hd;
    for (int j = 0; j < nk; j++) sr[j] = 0.0f;
    for (int c = 0; c < hd; c++) {
      const float qc = qr[c];
      const float* row = kt + (size_t)c * ts;
      for (int j = 0; j < nk; j++) sr[j] += qc * row[j];
    }
    const float bs = bias ? bias[r] : 0.0f;
    for (int j = 0; j < nk; j++) sr[j] = (sr[j] + bs) * scale;
  }
}

LKV_CLONES void scores_rows_generic(const float* __restrict q, int R, const uint16_t* __restrict kr, int hd, int ts, int nk,
                                    float* __restrict s, float scale) {
  float k[kKvMaxHeadDim];
  for (int j = 0; j < nk; j++) {
    for (int c = 0; c < hd; c++) k[c] = half_fast(kr[(size_t)j * hd + c]);
    for (int r = 0; r < R; r++) {
      float d = 0;
      for (int c = 0; c < hd; c++) d += q[(size_t)r * hd + c] * k[c];
      s[(size_t)r * ts + j] = d * scale;
    }
  }
}

LKV_CLONES void accum_generic(const float* __restrict p, int R, int ts, int nk, const float* __restrict vt, int hd,
                              float* __restrict o) {
  for (int r = 0; r < R; r++) {
    float* orow = o + (size_t)r * hd;
    const float* pr = p + (size_t)r * ts;
    for (int j = 0; j < nk; j++) {
      const float pj = pr[j];
      const float* vr = vt + (size_t)j * hd;
      for (int c = 0; c < hd; c++) orow[c] += pj * vr[c];
    }
  }
}

// Online-softmax step of one query row: scores s[0, vis) become probabilities (s[vis, upto) zeroed
// so a shared accumulation over `upto` rows adds nothing for them); rescales the row's output.
LKV_CLONES void softmax_step_generic(float* __restrict s, int vis, int upto, float& m, float& l, float* __restrict o, int hd) {
  if (vis <= 0) {
    for (int j = 0; j < upto; j++) s[j] = 0.0f;
    return;
  }
  float mx = m;
  for (int j = 0; j < vis; j++) mx = s[j] > mx ? s[j] : mx;
  const float corr = exp_approx(m - mx);
  float sum = 0;
  for (int j = 0; j < vis; j++) {
    s[j] = exp_approx(s[j] - mx);
    sum += s[j];
  }
  for (int j = vis; j < upto; j++) s[j] = 0.0f;
  l = l * corr + sum;
  m = mx;
  if (corr != 1.0f)
    for (int c = 0; c < hd; c++) o[c] *= corr;
}

const TileOps kGenericOps = {"generic", decode_keys_generic, decode_values_generic, decode_rows_generic,
                             scores_t_generic, scores_rows_generic, accum_generic, softmax_step_generic, nullptr, nullptr};

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 warns about the deliberately undefined pass-through of masked loads.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define LKV_AVX2 __attribute__((target("avx2,fma,f16c")))

// 8 codes of one plane from 8 zero-extended bytes, as scale * code + zero
LKV_AVX2 inline __m256 dq8(__m256i bytes, __m128i cnt, __m256i mask, __m256 sc, __m256 z) {
  const __m256i x = _mm256_and_si256(_mm256_srl_epi32(bytes, cnt), mask);
  return _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(x), z);
}
LKV_AVX2 inline __m256i load8u(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p)); }

// Four query rows x 16 lanes of accumulators (named members, so GCC keeps them in registers):
// the register tile of the AVX2 score and accumulation loops.
struct Tile4x2 {
  __m256 a0, b0, a1, b1, a2, b2, a3, b3;
  // row r += w_r * (x, y) for the four rows' scalars w0..w3
  LKV_AVX2 inline void fma(__m256 x, __m256 y, const float* w0, const float* w1, const float* w2, const float* w3) {
    __m256 w = _mm256_broadcast_ss(w0);
    a0 = _mm256_fmadd_ps(w, x, a0);
    b0 = _mm256_fmadd_ps(w, y, b0);
    w = _mm256_broadcast_ss(w1);
    a1 = _mm256_fmadd_ps(w, x, a1);
    b1 = _mm256_fmadd_ps(w, y, b1);
    w = _mm256_broadcast_ss(w2);
    a2 = _mm256_fmadd_ps(w, x, a2);
    b2 = _mm256_fmadd_ps(w, y, b2);
    w = _mm256_broadcast_ss(w3);
    a3 = _mm256_fmadd_ps(w, x, a3);
    b3 = _mm256_fmadd_ps(w, y, b3);
  }
  // row r of s (ts apart) = scale * (acc_r + bias_r), 16 lanes, rows < R
  LKV_AVX2 inline void store_scores(float* s, int R, int ts, const float* bias, float scale) const {
    const __m256 acc[4][2] = {{a0, b0}, {a1, b1}, {a2, b2}, {a3, b3}};
    const __m256 vs = _mm256_set1_ps(scale);
    for (int r = 0; r < R; r++) {
      const __m256 bs = _mm256_set1_ps(bias ? bias[r] : 0.0f);
      _mm256_storeu_ps(s + (size_t)r * ts, _mm256_mul_ps(_mm256_add_ps(acc[r][0], bs), vs));
      _mm256_storeu_ps(s + (size_t)r * ts + 8, _mm256_mul_ps(_mm256_add_ps(acc[r][1], bs), vs));
    }
  }
  // rows < R from / to o (hd apart), 16 channels; rows >= R read as zero; add: to every lane of row r
  LKV_AVX2 inline void load(const float* o, int R, int hd) {
    const __m256 z = _mm256_setzero_ps();
    a0 = _mm256_loadu_ps(o), b0 = _mm256_loadu_ps(o + 8);
    a1 = R > 1 ? _mm256_loadu_ps(o + hd) : z, b1 = R > 1 ? _mm256_loadu_ps(o + hd + 8) : z;
    a2 = R > 2 ? _mm256_loadu_ps(o + 2 * (size_t)hd) : z, b2 = R > 2 ? _mm256_loadu_ps(o + 2 * (size_t)hd + 8) : z;
    a3 = R > 3 ? _mm256_loadu_ps(o + 3 * (size_t)hd) : z, b3 = R > 3 ? _mm256_loadu_ps(o + 3 * (size_t)hd + 8) : z;
  }
  LKV_AVX2 inline void store(float* o, int R, int hd, const float* add = nullptr) const {
    const __m256 acc[4][2] = {{a0, b0}, {a1, b1}, {a2, b2}, {a3, b3}};
    for (int r = 0; r < R; r++) {
      const __m256 d = _mm256_set1_ps(add ? add[r] : 0.0f);
      _mm256_storeu_ps(o + (size_t)r * hd, add ? _mm256_add_ps(acc[r][0], d) : acc[r][0]);
      _mm256_storeu_ps(o + (size_t)r * hd + 8, add ? _mm256_add_ps(acc[r][1], d) : acc[r][1]);
    }
  }
};

LKV_AVX2 void decode_keys_avx2(const Block& b, int hd, float* __restrict kt, int ts) {
  const int n = b.n, bits = b.kbits, S = kv_planar_bytes(n, bits);
  if (bits == 16) {
    for (int c = 0; c < hd; c++) {
      const uint16_t* src = (const uint16_t*)(b.kc().data() + (size_t)c * S);
      float* dst = kt + (size_t)c * ts;
      int j = 0;
      for (; j + 8 <= n; j += 8) _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + j))));
      for (; j < n; j++) dst[j] = half_fast(src[j]);
    }
    return;
  }
  const int per = 8 / bits;
  const unsigned m1 = (1u << bits) - 1;
  const __m256i mask = _mm256_set1_epi32((int)m1);
  for (int c = 0; c < hd; c++) {
    const uint8_t* cc = b.kc().data() + (size_t)c * S;
    float* row = kt + (size_t)c * ts;
    int k = 0;
    if (bits == 8) {
      for (; k + 8 <= S; k += 8) _mm256_storeu_ps(row + k, _mm256_cvtepi32_ps(load8u(cc + k)));
    } else {
      for (; k + 8 <= S; k += 8) {
        const __m256i x = load8u(cc + k);
        _mm256_storeu_ps(row + k, _mm256_cvtepi32_ps(_mm256_and_si256(x, mask)));
        for (int t = 1; t < per; t++)
          _mm256_storeu_ps(row + t * S + k, _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(x, _mm_cvtsi32_si128(bits * t)), mask)));
      }
    }
    for (; k < S; k++)
      for (int t = 0; t < per; t++) row[t * S + k] = (float)((cc[k] >> (bits * t)) & m1);
  }
}

// Needs vg % 8 == 0 and (hd / codes-per-byte) % 8 == 0 (checked when picking the ops).
LKV_AVX2 void decode_values_avx2(const Block& b, int hd, int vg, float* __restrict vt) {
  const int bits = b.vbits, RB = kv_value_row_bytes(hd, bits), ng = hd / vg;
  const __m256i mask = _mm256_set1_epi32((1 << (bits & 15)) - 1);
  for (int j = 0; j < b.n; j++) {
    const uint8_t* rc = b.vc().data() + (size_t)j * RB;
    float* dst = vt + (size_t)j * hd;
    if (bits == 16) {
      const uint16_t* src = (const uint16_t*)rc;
      for (int c = 0; c < hd; c += 8) _mm256_storeu_ps(dst + c, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + c))));
      continue;
    }
    const KvQParams* p = b.vp().data() + (size_t)j * ng;
    float scs[kKvMaxHeadDim / 8], zs[kKvMaxHeadDim / 8];
    for (int g = 0; g < ng; g++) {
      scs[g] = half_fast(p[g].scale);
      zs[g] = half_fast(p[g].zero);
    }
    const int per = 8 / bits, S = RB, vshift = __builtin_ctz((unsigned)vg);  // vg is a power of two
    if (per == 1) {
      for (int c = 0; c < hd; c += 8) {
        const int g = c >> vshift;
        _mm256_storeu_ps(dst + c, _mm256_fmadd_ps(_mm256_set1_ps(scs[g]), _mm256_cvtepi32_ps(load8u(rc + c)), _mm256_set1_ps(zs[g])));
      }
      continue;
    }
    for (int k = 0; k < S; k += 8) {
      const __m256i x = load8u(rc + k);
      for (int t = 0; t < per; t++) {
        const int c = t * S + k, g = c >> vshift;
        _mm256_storeu_ps(dst + c, dq8(x, _mm_cvtsi32_si128(bits * t), mask, _mm256_set1_ps(scs[g]), _mm256_set1_ps(zs[g])));
      }
    }
  }
  add_outliers_values(b, vt);
}

LKV_AVX2 void decode_rows_avx2(const uint16_t* __restrict src, int nk, int hd, float* __restrict vt) {
  const size_t ne = (size_t)nk * hd;  // hd % 8 == 0
  for (size_t e = 0; e < ne; e += 8) _mm256_storeu_ps(vt + e, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + e))));
}

// Four query rows against 16 keys per step (8 accumulators). Stores all 16 lanes: s has room
// (ts >= nk rounded up to 32), and lanes past nk are never read.
LKV_AVX2 void scores_t_avx2(const float* __restrict q, int R, const float* __restrict kt, int hd, int ts, int nk,
                            float* __restrict s, float scale, const float* __restrict bias) {
  const float* q0 = q;
  const float* q1 = q + (size_t)std::min(1, R - 1) * hd;
  const float* q2 = q + (size_t)std::min(2, R - 1) * hd;
  const float* q3 = q + (size_t)std::min(3, R - 1) * hd;
  for (int j = 0; j < nk; j += 16) {
    Tile4x2 t{};
    const float* col = kt + j;
    for (int c = 0; c < hd; c++)
      t.fma(_mm256_loadu_ps(col + (size_t)c * ts), _mm256_loadu_ps(col + (size_t)c * ts + 8), q0 + c, q1 + c, q2 + c, q3 + c);
    t.store_scores(s + j, R, ts, bias, scale);
  }
}

LKV_AVX2 inline float hsum8(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

LKV_AVX2 void scores_rows_avx2(const float* __restrict q, int R, const uint16_t* __restrict kr, int hd, int ts, int nk,
                               float* __restrict s, float scale) {
  for (int j = 0; j < nk; j++) {
    const uint16_t* k = kr + (size_t)j * hd;
    __m256 acc[kRows] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int c = 0; c < hd; c += 8) {
      const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(k + c)));
      for (int r = 0; r < R; r++) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)r * hd + c), x, acc[r]);
    }
    for (int r = 0; r < R; r++) s[(size_t)r * ts + j] = hsum8(acc[r]) * scale;
  }
}

// 16 channels x 4 rows of output stay in registers over the tile (named, so GCC keeps them there).
LKV_AVX2 void accum_avx2(const float* __restrict p, int R, int ts, int nk, const float* __restrict vt, int hd,
                         float* __restrict o) {
  if (R == 4 && hd % 16 == 0) {
    const float* p0 = p;
    const float* p1 = p + ts;
    const float* p2 = p + 2 * (size_t)ts;
    const float* p3 = p + 3 * (size_t)ts;
    for (int c0 = 0; c0 < hd; c0 += 16) {
      Tile4x2 t;
      t.load(o + c0, 4, hd);
      const float* v = vt + c0;
      for (int j = 0; j < nk; j++, v += hd) t.fma(_mm256_loadu_ps(v), _mm256_loadu_ps(v + 8), p0 + j, p1 + j, p2 + j, p3 + j);
      t.store(o + c0, 4, hd);
    }
    return;
  }
  for (int r = 0; r < R; r++) {  // fewer rows: one row at a time, 8 channels per register
    const float* pr = p + (size_t)r * ts;
    for (int c0 = 0; c0 < hd; c0 += 8) {
      __m256 a = _mm256_loadu_ps(o + (size_t)r * hd + c0);
      for (int j = 0; j < nk; j++) a = _mm256_fmadd_ps(_mm256_broadcast_ss(pr + j), _mm256_loadu_ps(vt + (size_t)j * hd + c0), a);
      _mm256_storeu_ps(o + (size_t)r * hd + c0, a);
    }
  }
}

// exp(x) for x <= 0, as exp_approx (simd_math.h), 8 lanes.
LKV_AVX2 inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f));
  const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, n);
  __m256 p = _mm256_set1_ps(kExp2Poly[0]);
  for (int i = 1; i < 7; i++) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2Poly[i]));
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}

LKV_AVX2 void softmax_step_avx2(float* __restrict s, int vis, int upto, float& m, float& l, float* __restrict o, int hd) {
  if (vis <= 0) {
    for (int j = 0; j < upto; j++) s[j] = 0.0f;
    return;
  }
  int j = 0;
  __m256 vmx = _mm256_set1_ps(m);
  for (; j + 8 <= vis; j += 8) vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(s + j));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(vmx), _mm256_extractf128_ps(vmx, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  float mx = _mm_cvtss_f32(h);
  for (; j < vis; j++) mx = s[j] > mx ? s[j] : mx;
  const float corr = exp_approx(m - mx);
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  for (j = 0; j + 8 <= vis; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
    _mm256_storeu_ps(s + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = hsum8(vsum);
  for (; j < vis; j++) sum += (s[j] = exp_approx(s[j] - mx));
  for (j = vis; j < upto; j++) s[j] = 0.0f;
  l = l * corr + sum;
  m = mx;
  if (corr != 1.0f) {
    const __m256 vc = _mm256_set1_ps(corr);
    for (int c = 0; c < hd; c += 8) _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_loadu_ps(o + c), vc));
  }
}

// 16 codes of one plane from 16 bytes, as floats: the bytes shifted (16-bit lanes: what crosses
// into a byte from its neighbour is masked off) and masked, then widened.
LKV_AVX2 inline void codes16(const uint8_t* src, __m128i cnt, __m128i bmask, __m256& lo, __m256& hi) {
  const __m128i x = _mm_and_si128(_mm_srl_epi16(_mm_loadu_si128((const __m128i*)src), cnt), bmask);
  lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x));
  hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(x, x)));
}

// The four query rows a kernel step reads: rows 0..R-1 of q (hd apart), the last repeated for
// rows >= R (their results are computed and never stored).
inline void four_rows(const float* q, int R, int hd, const float*& q0, const float*& q1, const float*& q2, const float*& q3) {
  q0 = q;
  q1 = q + (size_t)std::min(1, R - 1) * hd;
  q2 = q + (size_t)std::min(2, R - 1) * hd;
  q3 = q + (size_t)std::min(3, R - 1) * hd;
}

// Four query rows (q folded: scale and zero in qf and bias) against 16 keys of one plane per
// step, read from the codes. A step may run past its plane's S keys: those lanes land on indices
// the next plane owns (it is processed later and overwrites them) or on indices >= n (< ts, never
// read). Only the last channel's bytes past S would lie past the buffer: that step reads a copy.
LKV_AVX2 void scores_codes_avx2(const Block& b, const float* __restrict qf, int R, int hd, int ts, float* __restrict s,
                                float scale, const float* __restrict bias) {
  const int n = b.n, bits = b.kbits, S = kv_planar_bytes(n, bits), per = 8 / bits;
  const __m128i bmask = _mm_set1_epi8((char)((1 << bits) - 1));
  const float *q0, *q1, *q2, *q3;
  four_rows(qf, R, hd, q0, q1, q2, q3);
  const uint8_t* kc = b.kc().data();
  for (int t = 0; t < per; t++) {
    const __m128i cnt = _mm_cvtsi32_si128(bits * t);
    for (int k = 0; k < S; k += 16) {
      Tile4x2 acc{};
      const int full = k + 16 <= S ? hd : hd - 1;
      alignas(16) uint8_t tail[16] = {};
      if (full < hd) std::memcpy(tail, kc + (size_t)(hd - 1) * S + k, (size_t)(S - k));
      for (int c = 0; c < hd; c++) {
        __m256 x, y;
        codes16(c < full ? kc + (size_t)c * S + k : tail, cnt, bmask, x, y);
        acc.fma(x, y, q0 + c, q1 + c, q2 + c, q3 + c);
      }
      acc.store_scores(s + t * S + k, R, ts, bias, scale);
    }
  }
}

// The weights accum_codes multiplies the codes by: W[g][r][j] = p_rj * scale_jg (0 for rows >= R)
// and Z[r][g] = sum_j p_rj * (zero_jg + scale_jg * mid), for nk rows of block b.
// Returns mid, half the code range.
inline float* weight_row(float* W, int g, int r, int nk) { return W + ((size_t)g * kRows + r) * nk; }
LKV_AVX2 float value_weights(const Block& b, const float* __restrict p, int R, int ts, int nk, int hd, int vg,
                             float* __restrict W, float (*Z)[kKvMaxHeadDim / 16]) {
  const int ng = hd / vg;
  const float mid = 0.5f * (float)((1 << b.vbits) - 1);
  auto wrow = [&](int g, int r) { return weight_row(W, g, r, nk); };
  for (int r = 0; r < kRows; r++)
    for (int g = 0; g < ng; g++) Z[r][g] = 0.0f;
  // 8 rows' params of one group at a time (one load with one group per row, else a gather)
  const int j0 = nk & ~7;
  {
    const __m256i lo16 = _mm256_set1_epi32(0xffff);
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(ng));
    const __m256 vm = _mm256_set1_ps(mid);
    for (int g = 0; g < ng; g++) {
      __m256 zacc[kRows] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int j = 0; j < j0; j += 8) {
        const KvQParams* base = b.vp().data() + (size_t)j * ng + g;
        const __m256i prm = ng == 1 ? _mm256_loadu_si256((const __m256i*)base)  // {scale, zero} x 8
                                    : _mm256_i32gather_epi32((const int*)base, idx, 4);
        // [s0..s3 z0..z3 | s4..s7 z4..z7] -> [s0..s7 | z0..z7]
        const __m256i packed = _mm256_permute4x64_epi64(
            _mm256_packus_epi32(_mm256_and_si256(prm, lo16), _mm256_srli_epi32(prm, 16)), 0xD8);
        const __m256 sc = _mm256_cvtph_ps(_mm256_castsi256_si128(packed));
        const __m256 z = _mm256_fmadd_ps(sc, vm, _mm256_cvtph_ps(_mm256_extracti128_si256(packed, 1)));
        for (int r = 0; r < R; r++) {
          const __m256 pv = _mm256_loadu_ps(p + (size_t)r * ts + j);
          _mm256_storeu_ps(wrow(g, r) + j, _mm256_mul_ps(pv, sc));
          zacc[r] = _mm256_fmadd_ps(pv, z, zacc[r]);
        }
      }
      for (int r = 0; r < R; r++) Z[r][g] = hsum8(zacc[r]);
    }
  }
  for (int j = j0; j < nk; j++) {
    const KvQParams* pp = b.vp().data() + (size_t)j * ng;
    for (int g = 0; g < ng; g++) {
      const float sc = half_fast(pp[g].scale), z = half_fast(pp[g].zero) + sc * mid;
      for (int r = 0; r < R; r++) {
        const float pr = p[(size_t)r * ts + j];
        wrow(g, r)[j] = pr * sc;
        Z[r][g] += pr * z;
      }
    }
  }
  for (int r = R; r < kRows; r++)
    for (int g = 0; g < ng; g++) std::fill(wrow(g, r), wrow(g, r) + nk, 0.0f);
  return mid;
}

// o_r += p_rj * delta for the outliers of block b's first nk rows (exact deltas on top of the
// dense codes).
inline void add_outlier_products(const Block& b, const float* __restrict p, int R, int ts, int nk, int hd, float* __restrict o) {
  for (const KvOutlier& v : b.vo()) {
    const int j = v.index / hd, c = v.index % hd;
    if (j >= nk) continue;
    const float d = f16_to_f32(v.delta);
    for (int r = 0; r < R; r++) o[(size_t)r * hd + c] += p[(size_t)r * ts + j] * d;
  }
}

// Value planes per accum_codes step of 16 channels: one plane's 16 bytes, or (S == 8: head_dim 64
// at 1 bit) planes t and t+1 from the same 8 bytes.
inline int value_step_planes(int S) { return S == 8 ? 2 : 1; }
// The 16 codes (bytes) of one step of a value row: src at the step's first byte; cnt and cnt1 the
// shifts of planes t and t + 1.
LKV_AVX2 inline __m128i value_step_codes(const uint8_t* src, int planes, __m128i cnt, __m128i cnt1, __m128i bmask) {
  if (planes == 2) {
    const __m128i y = _mm_loadl_epi64((const __m128i*)src);
    return _mm_and_si128(_mm_unpacklo_epi64(_mm_srl_epi16(y, cnt), _mm_srl_epi16(y, cnt1)), bmask);
  }
  return _mm_and_si128(_mm_srl_epi16(_mm_loadu_si128((const __m128i*)src), cnt), bmask);
}

// o_r += sum_j p_rj * (scale_jg * code_jc + zero_jg) as sum_j (p_rj * scale_jg) * (code_jc - mid)
// plus sum_j p_rj * (zero_jg + scale_jg * mid) per group: 16 channels of one plane (and one group)
// per step, the codes read once for all four rows. The codes are centred (mid = half the code
// range) so that the sums hold the signal, not a large offset that cancels at the end. Needs
// values_fit.
LKV_AVX2 void accum_codes_avx2(const Block& b, const float* __restrict p, int R, int ts, int nk, int hd, int vg,
                               float* __restrict scratch, float* __restrict o) {
  const int bits = b.vbits, S = kv_value_row_bytes(hd, bits), per = 8 / bits;
  float Z[kRows][kKvMaxHeadDim / 16];
  const float mid = value_weights(b, p, R, ts, nk, hd, vg, scratch, Z);  // weights [g][kRows][j] in scratch
  auto wrow = [&](int g, int r) { return weight_row(scratch, g, r, nk); };
  const __m128i bmask = _mm_set1_epi8((char)((1 << bits) - 1));
  const __m256 vmid = _mm256_set1_ps(mid);
  const int planes = value_step_planes(S);
  for (int t = 0; t < per; t += planes)
    for (int k = 0; k < S; k += 16) {
      const int c0 = t * S + k, g = c0 / vg;
      const __m128i cnt = _mm_cvtsi32_si128(bits * t), cnt1 = _mm_cvtsi32_si128(bits * (t + 1));
      Tile4x2 acc;
      acc.load(o + c0, R, hd);
      const uint8_t* src = b.vc().data() + k;
      const float *w0 = wrow(g, 0), *w1 = wrow(g, 1), *w2 = wrow(g, 2), *w3 = wrow(g, 3);
      for (int j = 0; j < nk; j++, src += S) {
        const __m128i x = value_step_codes(src, planes, cnt, cnt1, bmask);
        const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x));
        const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(x, x)));
        acc.fma(_mm256_sub_ps(lo, vmid), _mm256_sub_ps(hi, vmid), w0 + j, w1 + j, w2 + j, w3 + j);
      }
      const float zg[kRows] = {Z[0][g], Z[1][g], Z[2][g], Z[3][g]};
      acc.store(o + c0, R, hd, zg);
    }
  add_outlier_products(b, p, R, ts, nk, hd, o);
}

const TileOps kAvx2Ops = {"avx2", decode_keys_avx2, decode_values_avx2, decode_rows_avx2, scores_t_avx2, scores_rows_avx2,
                          accum_avx2, softmax_step_avx2, scores_codes_avx2, accum_codes_avx2};

#define LKV_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))

LKV_AVX512 inline __mmask16 tail16(int left) { return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1); }

// 16 codes from 16 bytes (masked), shifted and masked, as floats, scale * code + zero
LKV_AVX512 inline __m512 dq16(const uint8_t* src, __mmask16 m, __m128i cnt, __m512i mask, __m512 sc, __m512 z) {
  __m512i x = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, src));
  x = _mm512_and_si512(_mm512_srl_epi32(x, cnt), mask);
  return _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(x), z);
}

// 16-bit keys: writes up to 15 floats past the row's end (ts leaves room, see ts_). Codes: each
// plane's last step stores only its own lanes: a full store would land on the next plane's first
// rows, which this loop order (steps outer, planes inner) has already written.
LKV_AVX512 void decode_keys_avx512(const Block& b, int hd, float* __restrict kt, int ts) {
  const int n = b.n, bits = b.kbits, S = kv_planar_bytes(n, bits);
  if (bits == 16) {
    for (int c = 0; c < hd; c++) {
      const uint16_t* src = (const uint16_t*)(b.kc().data() + (size_t)c * S);
      float* dst = kt + (size_t)c * ts;
      for (int j = 0; j < n; j += 16)
        _mm512_storeu_ps(dst + j, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail16(n - j), src + j)));
    }
    return;
  }
  const int per = 8 / bits;
  const __m512i mask = _mm512_set1_epi32((1 << bits) - 1);
  for (int c = 0; c < hd; c++) {
    const uint8_t* cc = b.kc().data() + (size_t)c * S;
    float* row = kt + (size_t)c * ts;
    for (int k = 0; k < S; k += 16) {
      const __mmask16 m = tail16(S - k);
      const __m512i x = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, cc + k));
      for (int t = 0; t < per; t++)
        _mm512_mask_storeu_ps(row + t * S + k, m,
                              _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srl_epi32(x, _mm_cvtsi32_si128(bits * t)), mask)));
    }
  }
}

// Needs vg % 16 == 0 and value planes of whole 16-channel steps or of 8 channels (values_fit, checked
// when picking the ops).
LKV_AVX512 void decode_values_avx512(const Block& b, int hd, int vg, float* __restrict vt) {
  const int bits = b.vbits, RB = kv_value_row_bytes(hd, bits), ng = hd / vg;
  const __m512i mask = _mm512_set1_epi32((1 << (bits & 15)) - 1);
  for (int j = 0; j < b.n; j++) {
    const uint8_t* rc = b.vc().data() + (size_t)j * RB;
    float* dst = vt + (size_t)j * hd;
    if (bits == 16) {
      const uint16_t* src = (const uint16_t*)rc;
      for (int c = 0; c < hd; c += 16) _mm512_storeu_ps(dst + c, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + c))));
      continue;
    }
    const KvQParams* p = b.vp().data() + (size_t)j * ng;
    float scs[kKvMaxHeadDim / 8], zs[kKvMaxHeadDim / 8];
    for (int g = 0; g < ng; g++) {
      scs[g] = half_fast(p[g].scale);
      zs[g] = half_fast(p[g].zero);
    }
    const int per = 8 / bits, S = RB, vshift = __builtin_ctz((unsigned)vg);  // vg is a power of two
    for (int t = 0; t < per; t++) {
      const __m128i cnt = _mm_cvtsi32_si128(bits * t);
      for (int k = 0; k < S; k += 16) {  // masked: a plane may be 8 channels (head_dim 64 at 1 bit)
        const int c = t * S + k, g = c >> vshift;
        const __mmask16 m = tail16(S - k);
        _mm512_mask_storeu_ps(dst + c, m, dq16(rc + k, m, cnt, mask, _mm512_set1_ps(scs[g]), _mm512_set1_ps(zs[g])));
      }
    }
  }
  add_outliers_values(b, vt);
}

LKV_AVX512 void decode_rows_avx512(const uint16_t* __restrict src, int nk, int hd, float* __restrict vt) {
  const size_t ne = (size_t)nk * hd;  // hd % 16 == 0
  for (size_t e = 0; e < ne; e += 16) _mm512_storeu_ps(vt + e, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + e))));
}

// Four query rows against 16 keys per step: one load of kt feeds four FMAs.
LKV_AVX512 void scores_t_avx512(const float* __restrict q, int R, const float* __restrict kt, int hd, int ts, int nk,
                                float* __restrict s, float scale, const float* __restrict bias) {
  const __m512 vs = _mm512_set1_ps(scale);
  const float* q0 = q;
  const float* q1 = q + (size_t)std::min(1, R - 1) * hd;
  const float* q2 = q + (size_t)std::min(2, R - 1) * hd;
  const float* q3 = q + (size_t)std::min(3, R - 1) * hd;
  for (int j = 0; j < nk; j += 32) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    const float* col = kt + j;
    for (int c = 0; c < hd; c++) {
      const __m512 x = _mm512_loadu_ps(col + (size_t)c * ts), y = _mm512_loadu_ps(col + (size_t)c * ts + 16);
      const __m512 w0 = _mm512_set1_ps(q0[c]), w1 = _mm512_set1_ps(q1[c]), w2 = _mm512_set1_ps(q2[c]), w3 = _mm512_set1_ps(q3[c]);
      a0 = _mm512_fmadd_ps(w0, x, a0);
      a1 = _mm512_fmadd_ps(w1, x, a1);
      a2 = _mm512_fmadd_ps(w2, x, a2);
      a3 = _mm512_fmadd_ps(w3, x, a3);
      b0 = _mm512_fmadd_ps(w0, y, b0);
      b1 = _mm512_fmadd_ps(w1, y, b1);
      b2 = _mm512_fmadd_ps(w2, y, b2);
      b3 = _mm512_fmadd_ps(w3, y, b3);
    }
    const __mmask16 m0 = tail16(nk - j), m1 = tail16(nk - j - 16 < 0 ? 0 : nk - j - 16);
    const __m512 acc[4][2] = {{a0, b0}, {a1, b1}, {a2, b2}, {a3, b3}};
    for (int r = 0; r < R; r++) {
      const __m512 bs = _mm512_set1_ps(bias ? bias[r] : 0.0f);
      _mm512_mask_storeu_ps(s + (size_t)r * ts + j, m0, _mm512_mul_ps(_mm512_add_ps(acc[r][0], bs), vs));
      _mm512_mask_storeu_ps(s + (size_t)r * ts + j + 16, m1, _mm512_mul_ps(_mm512_add_ps(acc[r][1], bs), vs));
    }
  }
}

LKV_AVX512 void scores_rows_avx512(const float* __restrict q, int R, const uint16_t* __restrict kr, int hd, int ts, int nk,
                                   float* __restrict s, float scale) {
  for (int j = 0; j < nk; j++) {
    const uint16_t* k = kr + (size_t)j * hd;
    __m512 acc[kRows] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int c = 0; c < hd; c += 16) {
      const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(k + c)));
      for (int r = 0; r < R; r++) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(q + (size_t)r * hd + c), x, acc[r]);
    }
    for (int r = 0; r < R; r++) s[(size_t)r * ts + j] = _mm512_reduce_add_ps(acc[r]) * scale;
  }
}

// Output rows stay in registers over the tile: 64 channels x R rows per pass.
LKV_AVX512 void accum_avx512(const float* __restrict p, int R, int ts, int nk, const float* __restrict vt, int hd,
                             float* __restrict o) {
  for (int c0 = 0; c0 < hd; c0 += 64) {
    const int nc = std::min(64, hd - c0) / 16;  // hd % 16 == 0
    __m512 acc[kRows][4];
    for (int r = 0; r < kRows; r++)
      for (int u = 0; u < 4; u++) acc[r][u] = r < R && u < nc ? _mm512_loadu_ps(o + (size_t)r * hd + c0 + 16 * u) : _mm512_setzero_ps();
    if (R == 4 && nc == 4) {  // the decode case (group of 4 heads, head_dim 64): fully unrolled
      for (int j = 0; j < nk; j++) {
        const float* v = vt + (size_t)j * hd + c0;
        const __m512 x0 = _mm512_loadu_ps(v), x1 = _mm512_loadu_ps(v + 16), x2 = _mm512_loadu_ps(v + 32), x3 = _mm512_loadu_ps(v + 48);
        for (int r = 0; r < 4; r++) {
          const __m512 w = _mm512_set1_ps(p[(size_t)r * ts + j]);
          acc[r][0] = _mm512_fmadd_ps(w, x0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(w, x1, acc[r][1]);
          acc[r][2] = _mm512_fmadd_ps(w, x2, acc[r][2]);
          acc[r][3] = _mm512_fmadd_ps(w, x3, acc[r][3]);
        }
      }
    } else {
      for (int j = 0; j < nk; j++) {
        const float* v = vt + (size_t)j * hd + c0;
        for (int u = 0; u < nc; u++) {
          const __m512 x = _mm512_loadu_ps(v + 16 * u);
          for (int r = 0; r < R; r++) acc[r][u] = _mm512_fmadd_ps(_mm512_set1_ps(p[(size_t)r * ts + j]), x, acc[r][u]);
        }
      }
    }
    for (int r = 0; r < R; r++)
      for (int u = 0; u < nc; u++) _mm512_storeu_ps(o + (size_t)r * hd + c0 + 16 * u, acc[r][u]);
  }
}

// 16 codes of one plane (lanes outside mask m read 0) as floats.
LKV_AVX512 inline __m512 codes16_512(const uint8_t* src, __mmask16 m, __m128i cnt, __m128i bmask) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srl_epi16(_mm_maskz_loadu_epi8(m, src), cnt), bmask)));
}

// scores_codes_avx2 with 16-lane vectors: four query rows against 16 keys of one plane per step,
// each step's loads and stores masked to the plane's own bytes.
LKV_AVX512 void scores_codes_avx512(const Block& b, const float* __restrict qf, int R, int hd, int ts, float* __restrict s,
                                    float scale, const float* __restrict bias) {
  const int n = b.n, bits = b.kbits, S = kv_planar_bytes(n, bits), per = 8 / bits;
  const __m128i bmask = _mm_set1_epi8((char)((1 << bits) - 1));
  const float *q0, *q1, *q2, *q3;
  four_rows(qf, R, hd, q0, q1, q2, q3);
  const uint8_t* kc = b.kc().data();
  const __m512 vs = _mm512_set1_ps(scale);
  for (int t = 0; t < per; t++) {
    const __m128i cnt = _mm_cvtsi32_si128(bits * t);
    for (int k = 0; k < S; k += 16) {
      const __mmask16 m = tail16(S - k);
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int c = 0; c < hd; c++) {
        const __m512 x = codes16_512(kc + (size_t)c * S + k, m, cnt, bmask);
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(q0[c]), x, a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(q1[c]), x, a1);
        a2 = _mm512_fmadd_ps(_mm512_set1_ps(q2[c]), x, a2);
        a3 = _mm512_fmadd_ps(_mm512_set1_ps(q3[c]), x, a3);
      }
      const __m512 acc[kRows] = {a0, a1, a2, a3};
      for (int r = 0; r < R; r++)
        _mm512_mask_storeu_ps(s + (size_t)r * ts + t * S + k, m,
                              _mm512_mul_ps(_mm512_add_ps(acc[r], _mm512_set1_ps(bias ? bias[r] : 0.0f)), vs));
    }
  }
}

// accum_codes_avx2 with 16-lane vectors (the same weights; values_fit).
LKV_AVX512 void accum_codes_avx512(const Block& b, const float* __restrict p, int R, int ts, int nk, int hd, int vg,
                                   float* __restrict scratch, float* __restrict o) {
  const int bits = b.vbits, S = kv_value_row_bytes(hd, bits), per = 8 / bits;
  float Z[kRows][kKvMaxHeadDim / 16];
  const float mid = value_weights(b, p, R, ts, nk, hd, vg, scratch, Z);  // weights [g][kRows][j] in scratch
  auto wrow = [&](int g, int r) { return weight_row(scratch, g, r, nk); };
  const __m128i bmask = _mm_set1_epi8((char)((1 << bits) - 1));
  const __m512 vmid = _mm512_set1_ps(mid);
  const int planes = value_step_planes(S);
  for (int t = 0; t < per; t += planes)
    for (int k = 0; k < S; k += 16) {
      const int c0 = t * S + k, g = c0 / vg;
      const __m128i cnt = _mm_cvtsi32_si128(bits * t), cnt1 = _mm_cvtsi32_si128(bits * (t + 1));
      __m512 a[kRows];
      for (int r = 0; r < kRows; r++) a[r] = r < R ? _mm512_loadu_ps(o + (size_t)r * hd + c0) : _mm512_setzero_ps();
      __m512 a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
      const uint8_t* src = b.vc().data() + k;
      const float *w0 = wrow(g, 0), *w1 = wrow(g, 1), *w2 = wrow(g, 2), *w3 = wrow(g, 3);
      for (int j = 0; j < nk; j++, src += S) {
        const __m512 v =
            _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(value_step_codes(src, planes, cnt, cnt1, bmask))), vmid);
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(w0[j]), v, a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(w1[j]), v, a1);
        a2 = _mm512_fmadd_ps(_mm512_set1_ps(w2[j]), v, a2);
        a3 = _mm512_fmadd_ps(_mm512_set1_ps(w3[j]), v, a3);
      }
      const __m512 acc[kRows] = {a0, a1, a2, a3};
      for (int r = 0; r < R; r++) _mm512_storeu_ps(o + (size_t)r * hd + c0, _mm512_add_ps(acc[r], _mm512_set1_ps(Z[r][g])));
    }
  add_outlier_products(b, p, R, ts, nk, hd, o);
}

// exp(x) for x <= 0, as exp8, 16 lanes.
LKV_AVX512 inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(kExp2Poly[0]);
  for (int i = 1; i < 7; i++) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[i]));
  const __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
  return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
}

// softmax_step_avx2 in 16 lanes, the tails masked: in a prefill the exponentials are a fifth of
// the attention's instructions at head_dim 64.
LKV_AVX512 void softmax_step_avx512(float* __restrict s, int vis, int upto, float& m, float& l, float* __restrict o, int hd) {
  if (vis <= 0) {
    for (int j = 0; j < upto; j++) s[j] = 0.0f;
    return;
  }
  __m512 vmx = _mm512_set1_ps(m);
  for (int j = 0; j < vis; j += 16) vmx = _mm512_mask_max_ps(vmx, tail16(vis - j), vmx, _mm512_maskz_loadu_ps(tail16(vis - j), s + j));
  const float mx = _mm512_reduce_max_ps(vmx);
  const float corr = exp_approx(m - mx);
  const __m512 vm = _mm512_set1_ps(mx);
  __m512 vsum = _mm512_setzero_ps();
  for (int j = 0; j < vis; j += 16) {
    const __mmask16 k = tail16(vis - j);
    const __m512 e = _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), vm)));
    _mm512_mask_storeu_ps(s + j, k, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  for (int j = vis; j < upto; j++) s[j] = 0.0f;
  l = l * corr + _mm512_reduce_add_ps(vsum);
  m = mx;
  if (corr != 1.0f) {
    const __m512 vc = _mm512_set1_ps(corr);
    for (int c = 0; c < hd; c += 16) _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_loadu_ps(o + c), vc));  // hd % 16 == 0
  }
}

const TileOps kAvx512Ops = {"avx512", decode_keys_avx512, decode_values_avx512, decode_rows_avx512,
                            scores_t_avx512, scores_rows_avx512, accum_avx512, softmax_step_avx512,
                            scores_codes_avx512, accum_codes_avx512};
#pragma GCC diagnostic pop
#endif

// The fastest ops this CPU and this cache's layout allow.
const TileOps* generic_tile_ops() { return &kGenericOps; }

const TileOps* pick_tile_ops(int hd, int vg, const std::vector<KvTier>& tiers, bool avx512) {
  (void)avx512;
#if defined(__x86_64__) && defined(__GNUC__)
  bool fits = hd % 16 == 0 && vg % 16 == 0;
  for (const KvTier& t : tiers) fits &= t.vbits == 16 || values_fit(hd, vg, t.vbits);
  if (fits && avx512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return &kAvx512Ops;
  bool fits8 = hd % 8 == 0 && vg % 8 == 0;
  for (const KvTier& t : tiers) fits8 &= t.vbits == 16 || (hd / (8 / t.vbits)) % 8 == 0;
  if (fits8 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return &kAvx2Ops;
#endif
  return &kGenericOps;
}

}  // namespace kvc
}  // namespace lkv
