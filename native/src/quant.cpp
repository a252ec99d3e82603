// quant.cpp — reference (scalar) quantizers and dequantizers for the block layouts in quant.h.
// Outputs are byte-compatible with llama.cpp's formats; the quantizers are our own least-squares
// searches (simpler than llama.cpp's, same block semantics).
#include "quant.h"

#include <cmath>
#include <cstring>

namespace lkv {

namespace {

inline int round_int(float v) { return (int)std::lrintf(v); }
inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Q4_K packs eight 6-bit scales and eight 6-bit mins in 12 bytes:
// j < 4: sc = s[j] & 63, m = s[j+4] & 63; the top 2 bits of s[0..7] carry bits 4-5 of the
// scales/mins of sub-blocks 4..7, whose low 4 bits sit in s[8..11] (scale low, min high nibble).
inline void q4k_scale_min(int j, const uint8_t* s, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void q4k_pack_scales(const int* sc, const int* m, uint8_t* s) {
  std::memset(s, 0, K_SCALE_SIZE);
  for (int j = 0; j < 8; j++) {
    if (j < 4) {
      s[j] = (uint8_t)sc[j];
      s[j + 4] = (uint8_t)m[j];
    } else {
      s[j + 4] = (uint8_t)((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
      s[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
      s[j] |= (uint8_t)((m[j] >> 4) << 6);
    }
  }
}

// Fit x[i] ~ scale * L[i] - mn with L in [0, nmax], mn >= 0, minimising the weighted squared
// error: try a sweep of step sizes around (max-min)/nmax and refit (scale, mn) by least squares
// for each candidate assignment. Returns scale; *mn_out gets mn.
float fit_affine(const float* x, const float* w, int n, int nmax, float* mn_out) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; i++) {
    lo = std::fmin(lo, x[i]);
    hi = std::fmax(hi, x[i]);
  }
  if (lo > 0) lo = 0;  // the format subtracts a non-negative min only
  if (hi <= lo) {
    *mn_out = -lo;
    return 0.f;
  }
  auto error_of = [&](float a, float b) {  // b = offset (= -mn); L re-derived from (a, b)
    float err = 0;
    for (int i = 0; i < n; i++) {
      int l = clampi(round_int((x[i] - b) / a), 0, nmax);
      float e = a * l + b - x[i];
      err += w[i] * e * e;
    }
    return err;
  };
  float best_a = (hi - lo) / nmax, best_b = lo;
  float best_err = error_of(best_a, best_b);
  for (int step = 0; step <= 20; step++) {
    float iscale = (nmax - 1.0f + 0.1f * step) / (hi - lo);
    float sw = 0, swl = 0, swll = 0, swx = 0, swlx = 0;
    for (int i = 0; i < n; i++) {
      int l = clampi(round_int(iscale * (x[i] - lo)), 0, nmax);
      sw += w[i];
      swl += w[i] * l;
      swll += w[i] * l * l;
      swx += w[i] * x[i];
      swlx += w[i] * l * x[i];
    }
    float det = sw * swll - swl * swl;
    if (!(det > 0)) continue;
    float a = (sw * swlx - swx * swl) / det;
    float b = (swll * swx - swl * swlx) / det;
    if (b > 0) {  // offset must be <= 0: refit the scale alone
      b = 0;
      a = swlx / swll;
    }
    if (!(a > 0)) continue;
    float err = error_of(a, b);
    if (err < best_err) {
      best_err = err;
      best_a = a;
      best_b = b;
    }
  }
  *mn_out = -best_b;
  return best_a;
}

// Fit x[i] ~ scale * L[i] with L in [-nmax, nmax-1], weights x^2 (large values matter most).
// The largest-magnitude value maps near -nmax, so the returned scale may be negative.
float fit_symmetric(const float* x, int n, int nmax) {
  float amax = 0, vmax = 0;
  for (int i = 0; i < n; i++) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      vmax = x[i];
    }
  }
  if (amax < 1e-15f) return 0.f;
  float best_scale = -vmax / nmax, best_score = -1;
  for (int step = -9; step <= 9; step++) {
    float iscale = -(nmax + 0.1f * step) / vmax;
    double slx = 0, sll = 0;
    for (int i = 0; i < n; i++) {
      int l = clampi(round_int(iscale * x[i]), -nmax, nmax - 1);
      double w = (double)x[i] * x[i];
      slx += w * x[i] * l;
      sll += w * l * l;
    }
    if (sll > 0 && slx * slx / sll > best_score) {
      best_score = slx * slx / sll;
      best_scale = (float)(slx / sll);
    }
  }
  return best_scale;
}

void quantize_q8_0(const float* x, block_q8_0* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += QK8_0) {
    float amax = 0;
    for (int i = 0; i < QK8_0; i++) amax = std::fmax(amax, std::fabs(x[i]));
    float d = amax / 127.f;
    float id = d > 0 ? 1.f / d : 0.f;
    y[b].d = f32_to_f16(d);
    for (int i = 0; i < QK8_0; i++) y[b].qs[i] = (int8_t)clampi(round_int(x[i] * id), -127, 127);
  }
}

void quantize_q4_0(const float* x, block_q4_0* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += QK4_0) {
    float amax = 0, vmax = 0;
    for (int i = 0; i < QK4_0; i++) {
      if (std::fabs(x[i]) > amax) {
        amax = std::fabs(x[i]);
        vmax = x[i];
      }
    }
    float d = vmax / -8.f;  // the extreme value maps to nibble 0 (-8)
    float id = d != 0 ? 1.f / d : 0.f;
    y[b].d = f32_to_f16(d);
    for (int j = 0; j < QK4_0 / 2; j++) {
      int lo = clampi(round_int(x[j] * id) + 8, 0, 15);
      int hi = clampi(round_int(x[j + 16] * id) + 8, 0, 15);
      y[b].qs[j] = (uint8_t)(lo | (hi << 4));
    }
  }
}

// Q2_K, Q4_K and Q5_K: per 256-value super-block, an affine fit of each of its nsub sub-blocks
// (values 0..nmax), their scales and mins as integers 0..smax against f16 d and dmin, then the
// values re-derived against the scales as stored: L[256], sc[nsub], m[nsub], d and dmin.
void fit_k_affine(const float* x, int nsub, int nmax, int smax, uint8_t* L, int* sc, int* m, uint16_t* d16, uint16_t* dmin16) {
  const int len = QK_K / nsub;
  float scale[16], mn[16], w[32];
  float max_scale = 0, max_mn = 0;
  for (int j = 0; j < nsub; j++) {
    const float* xs = x + len * j;
    float s2 = 0;
    for (int i = 0; i < len; i++) s2 += xs[i] * xs[i];
    float rms = std::sqrt(s2 / len);
    for (int i = 0; i < len; i++) w[i] = rms + std::fabs(xs[i]);
    scale[j] = fit_affine(xs, w, len, nmax, &mn[j]);
    max_scale = std::fmax(max_scale, scale[j]);
    max_mn = std::fmax(max_mn, mn[j]);
  }
  // scales and mins relative to the block's largest (d and dmin in f16)
  float isc = max_scale > 0 ? smax / max_scale : 0.f;
  float imn = max_mn > 0 ? smax / max_mn : 0.f;
  for (int j = 0; j < nsub; j++) {
    sc[j] = clampi(round_int(isc * scale[j]), 0, smax);
    m[j] = clampi(round_int(imn * mn[j]), 0, smax);
  }
  *d16 = f32_to_f16(max_scale / smax);
  *dmin16 = f32_to_f16(max_mn / smax);
  float d = f16_to_f32(*d16), dmin = f16_to_f32(*dmin16);
  for (int j = 0; j < nsub; j++) {
    float ds = d * sc[j], dm = dmin * m[j];
    for (int i = 0; i < len; i++)
      L[len * j + i] = ds > 0 ? (uint8_t)clampi(round_int((x[len * j + i] + dm) / ds), 0, nmax) : 0;
  }
}

// Q4_K and Q5_K: 8 sub-blocks of 32, 6-bit scales and mins packed as q4k_pack_scales does.
void quantize_k_affine(const float* x, int nmax, uint8_t* L, uint8_t* scales, uint16_t* d16, uint16_t* dmin16) {
  int sc[8], m[8];
  fit_k_affine(x, 8, nmax, 63, L, sc, m, d16, dmin16);
  q4k_pack_scales(sc, m, scales);
}

void quantize_q2_K(const float* x, block_q2_K* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += QK_K) {
    uint8_t L[QK_K];
    int sc[16], m[16];
    fit_k_affine(x, 16, 3, 15, L, sc, m, &y[b].d, &y[b].dmin);
    for (int j = 0; j < 16; j++) y[b].scales[j] = (uint8_t)(sc[j] | (m[j] << 4));
    std::memset(y[b].qs, 0, sizeof y[b].qs);
    for (int e = 0; e < QK_K; e++) y[b].qs[32 * (e / 128) + e % 32] |= (uint8_t)(L[e] << (2 * ((e % 128) / 32)));
  }
}

// The low nibbles of L in 4 groups of 32 bytes: byte l of group g = L[64g + l] | L[64g + 32 + l] << 4.
void pack_k_nibbles(const uint8_t* L, uint8_t* qs) {
  for (int g = 0; g < 4; g++)
    for (int l = 0; l < 32; l++) qs[32 * g + l] = (uint8_t)((L[64 * g + l] & 0xF) | ((L[64 * g + 32 + l] & 0xF) << 4));
}

void quantize_q4_K(const float* x, block_q4_K* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += QK_K) {
    uint8_t L[QK_K];
    quantize_k_affine(x, 15, L, y[b].scales, &y[b].d, &y[b].dmin);
    pack_k_nibbles(L, y[b].qs);
  }
}

void quantize_q5_K(const float* x, block_q5_K* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += QK_K) {
    uint8_t L[QK_K];
    quantize_k_affine(x, 31, L, y[b].scales, &y[b].d, &y[b].dmin);
    pack_k_nibbles(L, y[b].qs);
    // the fifth bits: bit s of qh[l] for element l of sub-block s
    for (int l = 0; l < 32; l++) {
      uint8_t h = 0;
      for (int sb = 0; sb < 8; sb++) h |= (uint8_t)((L[32 * sb + l] >> 4) << sb);
      y[b].qh[l] = h;
    }
  }
}

// Q3_K's 6-bit scale s (0..63, stored biased by 32) from its 12 packed bytes.
int q3k_scale(const uint8_t* b, int s) {
  const int low = s < 8 ? b[s] & 0xF : b[s - 8] >> 4;
  return low | (((b[8 + s % 4] >> (2 * (s / 4))) & 3) << 4);
}

// Q3_K and Q6_K: a symmetric fit of each 16-value sub-block (values -nmax..nmax-1), the sub-block
// scales as integers in [-smax, smax-1] against one f16 d (the largest maps to -smax). Returns
// false, with d and every Ls 0, for an all-zero block.
bool fit_sub16_scales(const float* x, int nmax, int smax, uint16_t* d, int* Ls) {
  float scale[16];
  float max_abs = 0, max_scale = 0;
  for (int j = 0; j < 16; j++) {
    scale[j] = fit_symmetric(x + 16 * j, 16, nmax);
    if (std::fabs(scale[j]) > max_abs) {
      max_abs = std::fabs(scale[j]);
      max_scale = scale[j];
    }
  }
  *d = 0;
  for (int j = 0; j < 16; j++) Ls[j] = 0;
  if (max_abs < 1e-15f) return false;
  const float iscale = -(float)smax / max_scale;
  *d = f32_to_f16(1.f / iscale);
  for (int j = 0; j < 16; j++) Ls[j] = clampi(round_int(iscale * scale[j]), -smax, smax - 1);
  return true;
}

void quantize_q3_K(const float* x, block_q3_K* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += QK_K) {
    std::memset(&y[b], 0, sizeof(block_q3_K));
    int Ls[16];
    fit_sub16_scales(x, 4, 32, &y[b].d, Ls);
    for (int j = 0; j < 16; j++) {
      const int v = Ls[j] + 32;
      if (j < 8) y[b].scales[j] |= (uint8_t)(v & 0xF);
      else y[b].scales[j - 8] |= (uint8_t)((v & 0xF) << 4);
      y[b].scales[8 + j % 4] |= (uint8_t)((v >> 4) << (2 * (j / 4)));
    }
    const float d = f16_to_f32(y[b].d);
    for (int e = 0; e < QK_K; e++) {
      const float ds = d * Ls[e / 16];
      const int u = ds != 0 ? clampi(round_int(x[e] / ds), -4, 3) + 4 : 4;
      const int h = e / 128, j = (e % 128) / 32, l = e % 32;
      y[b].qs[32 * h + l] |= (uint8_t)((u & 3) << (2 * j));
      y[b].hmask[l] |= (uint8_t)((u >> 2) << (4 * h + j));
    }
  }
}

void quantize_q6_K(const float* x, block_q6_K* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += QK_K) {
    std::memset(&y[b], 0, sizeof(block_q6_K));
    int Ls[16];
    if (!fit_sub16_scales(x, 32, 128, &y[b].d, Ls)) continue;  // all zero: d = 0
    for (int j = 0; j < 16; j++) y[b].scales[j] = (int8_t)Ls[j];
    float d = f16_to_f32(y[b].d);
    uint8_t L[QK_K];
    for (int j = 0; j < 16; j++) {
      float ds = d * y[b].scales[j];
      for (int i = 0; i < 16; i++)
        L[16 * j + i] = ds != 0 ? (uint8_t)(clampi(round_int(x[16 * j + i] / ds), -32, 31) + 32) : 32;
    }
    // two halves of 128: ql[64h + l] = L[l] | L[l+64] << 4, ql[64h + 32 + l] = L[l+32] | L[l+96] << 4,
    // qh[32h + l] = the high 2 bits of L[l], L[l+32], L[l+64], L[l+96] at bits 0, 2, 4, 6
    for (int h = 0; h < 2; h++) {
      const uint8_t* Lh = L + 128 * h;
      uint8_t* ql = y[b].ql + 64 * h;
      uint8_t* qh = y[b].qh + 32 * h;
      for (int l = 0; l < 32; l++) {
        ql[l] = (uint8_t)((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
        ql[l + 32] = (uint8_t)((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
        qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                          ((Lh[l + 96] >> 4) << 6));
      }
    }
  }
}

// The kIq4Values index nearest to v (the lower one on a tie): a binary search over the midpoints
// of the ascending grid.
int iq4_index(float v) {
  int lo = 0, hi = 15;
  while (lo < hi) {
    const int m = (lo + hi) / 2;
    if (v > 0.5f * (kIq4Values[m] + kIq4Values[m + 1])) lo = m + 1;
    else hi = m;
  }
  return lo;
}

// 32 values as IQ4 indices against scale d (byte j: element j low, j+16 high); the scale that
// maps the largest-magnitude value onto the grid's end (-127), refined by least squares over a few
// candidates. Returns the scale.
float fit_iq4(const float* x, uint8_t* qs) {
  float amax = 0, vmax = 0;
  for (int i = 0; i < 32; i++)
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      vmax = x[i];
    }
  float best_d = 0, best_err = INFINITY;
  for (int step = -6; step <= 6 && amax > 0; step++) {
    const float d = vmax / (-127.f + 4.f * step);
    double sxl = 0, sll = 0, err = 0;
    for (int i = 0; i < 32; i++) {
      const float l = kIq4Values[iq4_index(x[i] / d)];
      sxl += (double)x[i] * l;
      sll += (double)l * l;
    }
    const float dd = sll > 0 ? (float)(sxl / sll) : d;  // the least-squares scale for these indices
    for (int i = 0; i < 32; i++) {
      const float e = dd * kIq4Values[iq4_index(x[i] / dd)] - x[i];
      err += (double)e * e;
    }
    if (err < best_err) {
      best_err = (float)err;
      best_d = dd;
    }
  }
  for (int j = 0; j < 16; j++) {
    const int lo = best_d != 0 ? iq4_index(x[j] / best_d) : 8, hi = best_d != 0 ? iq4_index(x[j + 16] / best_d) : 8;
    qs[j] = (uint8_t)(lo | (hi << 4));
  }
  return best_d;
}

void quantize_iq4_nl(const float* x, block_iq4_nl* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 32) {
    y[b].d = f32_to_f16(fit_iq4(x, y[b].qs));
    const float d = f16_to_f32(y[b].d);  // re-derive the indices against the stored scale
    for (int j = 0; j < 16; j++)
      y[b].qs[j] = d != 0 ? (uint8_t)(iq4_index(x[j] / d) | (iq4_index(x[j + 16] / d) << 4)) : 0x88;
  }
}

void quantize_iq4_xs(const float* x, block_iq4_xs* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += QK_K) {
    float s[8], max_abs = 0, max_s = 0;
    for (int j = 0; j < 8; j++) {
      s[j] = fit_iq4(x + 32 * j, y[b].qs + 16 * j);
      if (std::fabs(s[j]) > max_abs) {
        max_abs = std::fabs(s[j]);
        max_s = s[j];
      }
    }
    const float d = max_abs > 0 ? max_s / -32.f : 0.f;  // the largest sub-block scale maps to -32
    y[b].d = f32_to_f16(d);
    const float ds = f16_to_f32(y[b].d);
    y[b].scales_h = 0;
    std::memset(y[b].scales_l, 0, 4);
    for (int j = 0; j < 8; j++) {
      const int ls = ds != 0 ? clampi(round_int(s[j] / ds), -32, 31) + 32 : 32;
      y[b].scales_l[j / 2] |= (uint8_t)((ls & 0xF) << (4 * (j % 2)));
      y[b].scales_h |= (uint16_t)((ls >> 4) << (2 * j));
      const float dl = ds * (ls - 32);
      for (int i = 0; i < 16; i++) {
        const float* xs = x + 32 * j;
        y[b].qs[16 * j + i] = dl != 0 ? (uint8_t)(iq4_index(xs[i] / dl) | (iq4_index(xs[i + 16] / dl) << 4)) : 0x88;
      }
    }
  }
}

void quantize_q8_K(const float* x, block_q8_K* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += QK_K) {
    float amax = 0;
    for (int i = 0; i < QK_K; i++) amax = std::fmax(amax, std::fabs(x[i]));
    float d = amax / 127.f;
    float id = d > 0 ? 1.f / d : 0.f;
    y[b].d = d;
    for (int i = 0; i < QK_K; i++) y[b].qs[i] = (int8_t)clampi(round_int(x[i] * id), -127, 127);
    for (int g = 0; g < QK_K / 16; g++) {
      int s = 0;
      for (int i = 0; i < 16; i++) s += y[b].qs[16 * g + i];
      y[b].bsums[g] = (int16_t)s;
    }
  }
}

// Q4_K, and Q5_K when qh is non-null (the fifth bit of element l of sub-block s: bit s of qh[l]).
void dequantize_k_affine(uint16_t d16, uint16_t dmin16, const uint8_t* scales, const uint8_t* qs, const uint8_t* qh,
                         float* y) {
  float d = f16_to_f32(d16), dmin = f16_to_f32(dmin16);
  for (int g = 0; g < 4; g++) {  // 64 values: low nibbles then high nibbles of 32 bytes
    int sc0, m0, sc1, m1;
    q4k_scale_min(2 * g, scales, &sc0, &m0);
    q4k_scale_min(2 * g + 1, scales, &sc1, &m1);
    const uint8_t* q = qs + 32 * g;
    for (int l = 0; l < 32; l++) *y++ = d * sc0 * ((q[l] & 0xF) | (qh ? ((qh[l] >> (2 * g)) & 1) << 4 : 0)) - dmin * m0;
    for (int l = 0; l < 32; l++) *y++ = d * sc1 * ((q[l] >> 4) | (qh ? ((qh[l] >> (2 * g + 1)) & 1) << 4 : 0)) - dmin * m1;
  }
}

void dequantize_q4_K(const block_q4_K* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++) dequantize_k_affine(x[b].d, x[b].dmin, x[b].scales, x[b].qs, nullptr, y + b * QK_K);
}

void dequantize_q5_K(const block_q5_K* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++) dequantize_k_affine(x[b].d, x[b].dmin, x[b].scales, x[b].qs, x[b].qh, y + b * QK_K);
}

void dequantize_q2_K(const block_q2_K* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++) {
    const float d = f16_to_f32(x[b].d), dmin = f16_to_f32(x[b].dmin);
    for (int e = 0; e < QK_K; e++) {
      const int q = (x[b].qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
      const uint8_t sc = x[b].scales[e / 16];
      *y++ = d * (sc & 0xF) * q - dmin * (sc >> 4);
    }
  }
}

void dequantize_q3_K(const block_q3_K* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++) {
    const float d = f16_to_f32(x[b].d);
    for (int e = 0; e < QK_K; e++) {
      const int h = e / 128, j = (e % 128) / 32, l = e % 32;
      const int u = ((x[b].qs[32 * h + l] >> (2 * j)) & 3) | (((x[b].hmask[l] >> (4 * h + j)) & 1) << 2);
      *y++ = d * (q3k_scale(x[b].scales, e / 16) - 32) * (u - 4);
    }
  }
}

void dequantize_iq4_nl(const block_iq4_nl* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, y += 32) {
    const float d = f16_to_f32(x[b].d);
    for (int j = 0; j < 16; j++) {
      y[j] = d * kIq4Values[x[b].qs[j] & 0xF];
      y[j + 16] = d * kIq4Values[x[b].qs[j] >> 4];
    }
  }
}

void dequantize_iq4_xs(const block_iq4_xs* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++) {
    const float d = f16_to_f32(x[b].d);
    for (int j = 0; j < 8; j++, y += 32) {
      const int ls = ((x[b].scales_l[j / 2] >> (4 * (j % 2))) & 0xF) | (((x[b].scales_h >> (2 * j)) & 3) << 4);
      const float dl = d * (ls - 32);
      const uint8_t* qs = x[b].qs + 16 * j;
      for (int i = 0; i < 16; i++) {
        y[i] = dl * kIq4Values[qs[i] & 0xF];
        y[i + 16] = dl * kIq4Values[qs[i] >> 4];
      }
    }
  }
}

void dequantize_q6_K(const block_q6_K* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++) {
    float d = f16_to_f32(x[b].d);
    for (int h = 0; h < 2; h++, y += 128) {
      const uint8_t* ql = x[b].ql + 64 * h;
      const uint8_t* qh = x[b].qh + 32 * h;
      const int8_t* sc = x[b].scales + 8 * h;
      for (int l = 0; l < 32; l++) {
        int s = l / 16;
        int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * sc[s] * q1;
        y[l + 32] = d * sc[s + 2] * q2;
        y[l + 64] = d * sc[s + 4] * q3;
        y[l + 96] = d * sc[s + 6] * q4;
      }
    }
  }
}

int64_t blocks_of(uint32_t type, int64_t n) {
  uint32_t bs = ggml_block_size(type);
  LKV_CHECK(bs != 0, "unsupported tensor type %s", ggml_type_name(type));
  LKV_CHECK(n >= 0 && n % bs == 0, "%lld elements is not a multiple of the %s block size %u",
            (long long)n, ggml_type_name(type), bs);
  return n / bs;
}

}  // namespace

void dequantize_row_ref(uint32_t type, const void* src, float* dst, int64_t n) {
  int64_t nb = blocks_of(type, n);
  switch ((GgmlType)type) {
    case GgmlType::F32:
      std::memcpy(dst, src, (size_t)n * 4);
      return;
    case GgmlType::F16: {
      const uint16_t* s = (const uint16_t*)src;
      for (int64_t i = 0; i < n; i++) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case GgmlType::BF16: {
      const uint16_t* s = (const uint16_t*)src;
      for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case GgmlType::Q8_0: {
      const block_q8_0* x = (const block_q8_0*)src;
      for (int64_t b = 0; b < nb; b++) {
        float d = f16_to_f32(x[b].d);
        for (int i = 0; i < QK8_0; i++) dst[b * QK8_0 + i] = d * x[b].qs[i];
      }
      return;
    }
    case GgmlType::Q4_0: {
      const block_q4_0* x = (const block_q4_0*)src;
      for (int64_t b = 0; b < nb; b++) {
        float d = f16_to_f32(x[b].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
          dst[b * QK4_0 + j] = d * ((x[b].qs[j] & 0xF) - 8);
          dst[b * QK4_0 + j + 16] = d * ((x[b].qs[j] >> 4) - 8);
        }
      }
      return;
    }
    case GgmlType::Q2_K: dequantize_q2_K((const block_q2_K*)src, dst, nb); return;
    case GgmlType::Q3_K: dequantize_q3_K((const block_q3_K*)src, dst, nb); return;
    case GgmlType::Q4_K: dequantize_q4_K((const block_q4_K*)src, dst, nb); return;
    case GgmlType::Q5_K: dequantize_q5_K((const block_q5_K*)src, dst, nb); return;
    case GgmlType::Q6_K: dequantize_q6_K((const block_q6_K*)src, dst, nb); return;
    case GgmlType::IQ4_NL: dequantize_iq4_nl((const block_iq4_nl*)src, dst, nb); return;
    case GgmlType::IQ4_XS: dequantize_iq4_xs((const block_iq4_xs*)src, dst, nb); return;
    case GgmlType::Q8_K: {
      const block_q8_K* x = (const block_q8_K*)src;
      for (int64_t b = 0; b < nb; b++)
        for (int i = 0; i < QK_K; i++) dst[b * QK_K + i] = x[b].d * x[b].qs[i];
      return;
    }
  }
  throw Error(strprintf("dequantize: unsupported tensor type %s", ggml_type_name(type)));
}

void quantize_row_ref(uint32_t type, const float* src, void* dst, int64_t n) {
  int64_t nb = blocks_of(type, n);
  switch ((GgmlType)type) {
    case GgmlType::F32:
      std::memcpy(dst, src, (size_t)n * 4);
      return;
    case GgmlType::F16: {
      uint16_t* d = (uint16_t*)dst;
      for (int64_t i = 0; i < n; i++) d[i] = f32_to_f16(src[i]);
      return;
    }
    case GgmlType::BF16: {
      uint16_t* d = (uint16_t*)dst;
      for (int64_t i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case GgmlType::Q8_0: quantize_q8_0(src, (block_q8_0*)dst, nb); return;
    case GgmlType::Q4_0: quantize_q4_0(src, (block_q4_0*)dst, nb); return;
    case GgmlType::Q2_K: quantize_q2_K(src, (block_q2_K*)dst, nb); return;
    case GgmlType::Q3_K: quantize_q3_K(src, (block_q3_K*)dst, nb); return;
    case GgmlType::Q4_K: quantize_q4_K(src, (block_q4_K*)dst, nb); return;
    case GgmlType::Q5_K: quantize_q5_K(src, (block_q5_K*)dst, nb); return;
    case GgmlType::Q6_K: quantize_q6_K(src, (block_q6_K*)dst, nb); return;
    case GgmlType::IQ4_NL: quantize_iq4_nl(src, (block_iq4_nl*)dst, nb); return;
    case GgmlType::IQ4_XS: quantize_iq4_xs(src, (block_iq4_xs*)dst, nb); return;
    case GgmlType::Q8_K: quantize_q8_K(src, (block_q8_K*)dst, nb); return;
  }
  throw Error(strprintf("quantize: unsupported tensor type %s", ggml_type_name(type)));
}

}  // namespace lkv
