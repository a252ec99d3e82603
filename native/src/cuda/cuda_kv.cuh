// cuda_kv.cuh — the compressed KV cache on the device (specs without eviction or tiers): KIVI
// blocks of G tokens in exactly kv_formats.h's bytes, an f16 residual window, optional Hadamard
// rotation. The quantizer and the decoder below compile for the host too, so a machine without a
// GPU checks them against kv_formats.h's reference functions (test_cuda --host).
//
// Device layout, per layer and KV head:
//   blocks    [max_blocks] records of block_bytes: key params [hd] | key codes [hd][Sk] |
//             value params [G][hd/vg] | value codes [G][RB] (each piece as kv_formats.h lays it
//             out; pieces absent at 16 bits). Block b holds positions [b*G, (b+1)*G).
//   residual  f16 rows [cap][hd] of keys and of values, a ring: position p at slot p % cap. It
//             holds positions [nb*G, len); cap is grown (on the host) when a rewind needs more.
// Without eviction every head forms the same blocks at the same commits, so the bookkeeping
// (block count, ids, creation lengths) is kept once, on the host, and nb once on the device.
#pragma once

#include <string>
#include <vector>

#include "../kv_compressed.h"
#include "../kv_formats.h"
#include "cuda_common.cuh"

namespace lkv {

// Byte layout of one block record (all heads and blocks alike).
struct KvDevLayout {
  int hd = 0, G = 0, vg = 0, kbits = 16, vbits = 16;
  int Sk = 0;   // bytes per channel of key codes (kv_planar_bytes(G, kbits); 2G at 16 bits)
  int ng = 0;   // value groups per row (0 at 16 bits)
  int RB = 0;   // value code bytes per row
  int kp_bytes = 0, kc_off = 0, kc_bytes = 0, vp_off = 0, vp_bytes = 0, vc_off = 0, vc_bytes = 0;
  int image_bytes = 0;  // kp | kc | vp | vc without padding
  int block_bytes = 0;  // the record, padded to 16
};
KvDevLayout kv_dev_layout(int hd, const KvSpec& spec);

// ---- the quantizer and decoder, host and device ------------------------------------------------
// Every float operation rounds as kv_formats.h's reference does on the host (no FMA contraction,
// IEEE division, round-half-even), and min/max take the same operand on ties (-0 vs +0), so the
// codes, scales and zero points are identical, not merely close.

__host__ __device__ __forceinline__ uint16_t kvd_f2h(float f) {
#ifdef __CUDA_ARCH__
  return __half_as_ushort(__float2half_rn(f));
#else
  return f32_to_f16(f);
#endif
}
// One f16 (little-endian, as kv_formats.h stores it) at p, which is 2-byte aligned: records start
// 16-aligned and every offset and stride in them is even. On the device it is one 16-bit store:
// written as two byte stores (h & 0xFF, h >> 8), nvcc 13's sm_90 code stored the high byte
// right and zero for the low byte (test_cuda kv-quantize/k16 on an H200, 2026-11-30).
__host__ __device__ __forceinline__ void kvd_put_f16(uint8_t* p, uint16_t h) {
#ifdef __CUDA_ARCH__
  *reinterpret_cast<uint16_t*>(p) = h;
#else
  std::memcpy(p, &h, 2);
#endif
}
__host__ __device__ __forceinline__ float kvd_add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
__host__ __device__ __forceinline__ float kvd_div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
__host__ __device__ __forceinline__ double kvd_dsub(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
__host__ __device__ __forceinline__ double kvd_dfma_free(double e, double d) {  // e + d*d, two roundings
#ifdef __CUDA_ARCH__
  return __dadd_rn(e, __dmul_rn(d, d));
#else
  return e + d * d;
#endif
}
__host__ __device__ __forceinline__ float kvd_rint(float x) {
#ifdef __CUDA_ARCH__
  return rintf(x);
#else
  return std::nearbyint(x);
#endif
}
// std::min / std::max exactly: the first operand unless the second is strictly beyond it
__host__ __device__ __forceinline__ float kvd_min(float a, float b) { return b < a ? b : a; }
__host__ __device__ __forceinline__ float kvd_max(float a, float b) { return a < b ? b : a; }

__host__ __device__ inline KvQParams kvd_params_for(float lo, float hi, int bits) {
  const float qmax = (float)((1 << bits) - 1);
  KvQParams p;
  p.scale = kvd_f2h(kvd_min(kvd_div(sub_rn(hi, lo), qmax), 65504.0f));
  p.zero = kvd_f2h(kvd_max(kvd_min(lo, 65504.0f), -65504.0f));
  return p;
}

__host__ __device__ inline unsigned kvd_quant(float x, KvQParams p, int bits) {
  const float s = f16_bits_to_f32(p.scale), z = f16_bits_to_f32(p.zero);
  if (!(s > 0.0f)) return 0;
  const float q = kvd_rint(kvd_div(sub_rn(x, z), s));
  const float qmax = (float)((1 << bits) - 1);
  return (unsigned)(q < 0.0f ? 0.0f : q > qmax ? qmax : q);
}

// kv_fit without outliers over x(i), i < n (x: a callable giving element i as float).
template <typename X>
__host__ __device__ inline KvQParams kvd_fit(const X& x, int n, int bits) {
  float lo = INFINITY, hi = -INFINITY;
  for (int i = 0; i < n; i++) {
    const float v = x(i);
    lo = kvd_min(lo, v);
    hi = kvd_max(hi, v);
  }
  if (!(lo <= hi)) lo = hi = 0.0f;
  KvQParams best = kvd_params_for(lo, hi, bits);
  if (bits >= 8 || hi == lo) return best;
  auto err = [&](KvQParams p) {
    const float s = f16_bits_to_f32(p.scale), z = f16_bits_to_f32(p.zero);
    double e = 0;
    for (int i = 0; i < n; i++) {
      const float v = x(i);
      const double d = kvd_dsub((double)v, (double)kvd_add(mul_rn(s, (float)kvd_quant(v, p, bits)), z));
      e = kvd_dfma_free(e, d);
    }
    return e;
  };
  double best_err = err(best);
  const float mid = mul_rn(0.5f, kvd_add(lo, hi)), half = mul_rn(0.5f, sub_rn(hi, lo));
  const float shrink[5] = {0.9f, 0.8f, 0.7f, 0.6f, 0.5f};
  for (int t = 0; t < 5; t++) {
    const float ah = mul_rn(shrink[t], half);
    const KvQParams p = kvd_params_for(sub_rn(mid, ah), kvd_add(mid, ah), bits);
    const double e = err(p);
    if (e < best_err) {
      best_err = e;
      best = p;
    }
  }
  return best;
}

// Channel c of the keys of one block, k(j) = key row j's channel c, j < G -> rec's params and
// codes of channel c (kv_quantize_keys_ref's bytes for that channel).
template <typename X>
__host__ __device__ inline void kvd_quantize_key_channel(const KvDevLayout& L, const X& k, int c, uint8_t* rec) {
  uint8_t* cc = rec + L.kc_off + (size_t)c * L.Sk;
  if (L.kbits == 16) {
    for (int j = 0; j < L.G; j++) kvd_put_f16(cc + 2 * j, kvd_f2h(k(j)));
    return;
  }
  for (int i = 0; i < L.Sk; i++) cc[i] = 0;
  const KvQParams p = kvd_fit(k, L.G, L.kbits);
  ((KvQParams*)rec)[c] = p;
  for (int j = 0; j < L.G; j++) kv_planar_put(cc, L.G, L.kbits, j, kvd_quant(k(j), p, L.kbits));
}

// Value row j of one block, v(c) = its channel c -> rec's params and codes of row j
// (kv_quantize_value_row_ref's bytes).
template <typename X>
__host__ __device__ inline void kvd_quantize_value_row(const KvDevLayout& L, const X& v, int j, uint8_t* rec) {
  uint8_t* codes = rec + L.vc_off + (size_t)j * L.RB;
  if (L.vbits == 16) {
    for (int c = 0; c < L.hd; c++) kvd_put_f16(codes + 2 * c, kvd_f2h(v(c)));
    return;
  }
  for (int i = 0; i < L.RB; i++) codes[i] = 0;
  KvQParams* params = (KvQParams*)(rec + L.vp_off) + (size_t)j * L.ng;
  for (int g = 0; g < L.ng; g++) {
    const int c0 = g * L.vg;
    params[g] = kvd_fit([&](int i) { return v(c0 + i); }, L.vg, L.vbits);
  }
  for (int c = 0; c < L.hd; c++) kv_planar_put(codes, L.hd, L.vbits, c, kvd_quant(v(c), params[c / L.vg], L.vbits));
}

// Element accessors for the quantizer (f16 bits): channel c of the rows of block positions
// p0 .. p0+G-1 in a ring of cap rows [cap][hd], and channel c of one row.
struct KvRingColumn {
  const uint16_t* ring;
  int hd, c, p0, cap;
  __host__ __device__ float operator()(int j) const { return f16_bits_to_f32(ring[(size_t)((p0 + j) % cap) * hd + c]); }
};
struct KvRow {
  const uint16_t* row;
  __host__ __device__ float operator()(int c) const { return f16_bits_to_f32(row[c]); }
};

// Element (row j, channel c) of a block record, dequantized as the kernels do it.
__host__ __device__ __forceinline__ float kvd_key(const KvDevLayout& L, const uint8_t* rec, int j, int c) {
  const uint8_t* cc = rec + L.kc_off + (size_t)c * L.Sk;
  if (L.kbits == 16) return f16_bits_to_f32((uint16_t)(cc[2 * j] | (cc[2 * j + 1] << 8)));
  const KvQParams p = ((const KvQParams*)rec)[c];
  const unsigned code = (cc[j % L.Sk] >> (L.kbits * (j / L.Sk))) & ((1u << L.kbits) - 1u);
  return mul_rn(f16_bits_to_f32(p.scale), (float)code) + f16_bits_to_f32(p.zero);
}
__host__ __device__ __forceinline__ float kvd_value(const KvDevLayout& L, const uint8_t* rec, int j, int c) {
  const uint8_t* codes = rec + L.vc_off + (size_t)j * L.RB;
  if (L.vbits == 16) return f16_bits_to_f32((uint16_t)(codes[2 * c] | (codes[2 * c + 1] << 8)));
  const KvQParams p = ((const KvQParams*)(rec + L.vp_off))[(size_t)j * L.ng + c / L.vg];
  const unsigned code = (codes[c % L.RB] >> (L.vbits * (c / L.RB))) & ((1u << L.vbits) - 1u);
  return mul_rn(f16_bits_to_f32(p.scale), (float)code) + f16_bits_to_f32(p.zero);
}

// ---- the cache state as the CPU's payload holds it (host) ---------------------------------------

// What CompressedKvCache::save writes for an unmanaged spec, parsed: per (layer, head) the block
// images (kp | kc | vp | vc of full blocks) and the f16 residual rows. Ids and creation lengths
// are the same in every head (the parser refuses a payload where they are not).
struct KvImage {
  int n_tokens = 0;
  uint32_t next_id = 0;
  std::vector<uint32_t> ids;       // [nb]
  std::vector<int32_t> created;    // [nb]
  int res0 = 0;                    // first residual position (nb * G)
  std::vector<std::vector<uint8_t>> blocks;    // [layer*n_kv + head]: nb images
  std::vector<std::vector<uint16_t>> rk, rv;   // [layer*n_kv + head]: (n_tokens - res0) rows [hd]
};
// Throws Error for a payload this layout cannot hold (other spec, shape, eviction state).
KvImage kv_parse_payload(const KvShape& s, const KvSpec& spec, const std::string& spec_str, const KvDevLayout& L,
                         std::istream& in);
void kv_write_payload(const KvShape& s, const std::string& spec_str, const KvDevLayout& L, const KvImage& im, std::ostream& out);
// Exactly CompressedKvCache::stats() for this state.
KvStats kv_image_stats(const KvShape& s, const KvSpec& spec, const std::string& spec_str, const KvDevLayout& L, int nb,
                       int n_tokens);

// ---- the device store ---------------------------------------------------------------------------

// What the kernels of one layer see.
struct KvDevView {
  KvDevLayout L;
  const uint8_t* blocks;   // this layer: [n_kv][max_blocks][block_bytes]
  __half* rk;              // this layer: [n_kv][cap][hd]
  __half* rv;
  const int* nb;           // device: blocks held
  int n_kv, max_blocks, cap;
};

class CudaKvStore {
 public:
  // n_ctx positions at most; residual room for `chunk` new rows past the window.
  CudaKvStore(const KvShape& s, const KvSpec& spec, int chunk);
  ~CudaKvStore();
  const KvSpec& spec() const { return spec_; }
  const std::string& spec_string() const { return spec_str_; }
  const KvDevLayout& layout() const { return L_; }
  KvDevView view(int layer) const;
  // Before storing n more rows at length `len`: grows the residual if it could overflow (true:
  // pointers changed, recorded graphs are stale).
  bool reserve(int len, int n);
  // After every layer stored positions [0, n): quantizes the full blocks that left the window
  // (kernels on s), as CompressedKvCache::commit.
  void commit(int n, cudaStream_t s);
  // Back to n positions: blocks formed after n return to the residual, dequantized (synchronous).
  void truncate(int n);
  int n_tokens() const { return n_tokens_; }
  int blocks() const { return nb_; }
  KvStats stats() const;
  void save(std::ostream& out) const;        // the CPU cache's payload, byte for byte
  void load(std::istream& in);               // leaves the store unchanged when it throws
  // Device bytes allocated (blocks and residual ring).
  int64_t device_bytes() const;
  // Changes whenever the residual ring is reallocated (kernels recorded before hold stale pointers).
  uint64_t generation() const { return gen_; }
  // Tests: unused blocks and residual slots filled with NaN, so a kernel reading them shows it.
  void poison_unused();

 private:
  KvImage download() const;
  void upload(const KvImage& im);
  void set_nb(int nb);

  KvShape s_;
  KvSpec spec_;
  std::string spec_str_;
  KvDevLayout L_;
  int chunk_, max_blocks_, cap_ = 0;
  int nb_ = 0, n_tokens_ = 0;
  uint32_t next_id_ = 0;
  std::vector<uint32_t> ids_;
  std::vector<int32_t> created_;
  DeviceBuffer blocks_, rk_, rv_, nb_dev_, scratch_;
  int* nb_host_ = nullptr;  // pinned
  uint64_t gen_ = 0;
};

// ---- launchers ------------------------------------------------------------------------------------

struct RopeShape;
// RoPE of q [n][n_head][hd] in place (as launch_rope_store) and of k, then k and v Hadamard-rotated
// when `rotate` (scale hs = 1/sqrt(hd)) and stored as f16 at ring slots of positions [*pos, *pos+n).
// roped: q and k come roped already (the fused decode products did it); only the store runs.
void launch_kv_rope_store(const RopeShape& r, const int* pos, int n, float* q, const float* k, const float* v,
                          const KvDevView& kv, bool rotate, cudaStream_t s, bool roped = false);
// The normalized Walsh-Hadamard transform of rows [rows][hd] in place (kv_hadamard's order).
void launch_hadamard_rows(float* x, int rows, int hd, cudaStream_t s);
// Quantizes blocks [b0, b0 + count) of every layer and head from their residual rows.
void launch_kv_quantize(const KvDevLayout& L, uint8_t* blocks, const __half* rk, const __half* rv, int n_layer, int n_kv,
                        int max_blocks, int cap, int b0, int count, cudaStream_t s);
// Causal attention of q [n][n_head][hd] at positions [*pos, *pos+n) over the compressed cache of
// one layer, as launch_attention over f16. rotate (a cache of Hadamard-rotated keys and values): q
// is rotated as the kernel reads it and out rotated back as it is written (the transform is its
// own inverse), so q and out are in the model's own basis either way.
struct AttnShape;
void launch_kv_attention(const AttnShape& a, const KvDevView& kv, const int* pos, int n, const float* q, float* out,
                         float* partial, int n_splits, bool rotate, cudaStream_t s);

}  // namespace lkv
