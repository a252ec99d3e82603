// cuda_kernels.cuh — launchers of every CUDA kernel, on device pointers and a stream. Kernels
// that depend on the position read it from device memory (`pos`), so one recorded decode step
// (a CUDA graph) replays at every position.
#pragma once

#include <vector>

#include "cuda_ops.h"
#include "cuda_weights.cuh"

namespace lkv {

// ---- cuda_kernels.cu: elementwise and small ops ----
void launch_get_rows(const DevMatrix& W, const int32_t* ids, int n, float* out, cudaStream_t s);
void launch_rmsnorm(float* out, const float* x, const float* w, int rows, int d, float eps, cudaStream_t s);
void launch_silu_mul(float* gate, const float* up, int64_t n, cudaStream_t s);

// inv_freq of RopeShape for a model: freq_scale * base^(-2i/hd) / freq_factor[i], in double, exactly
// as forward.cpp's rope_apply computes it
std::vector<double> rope_inv_freq(const LlamaConfig& c);
struct RopeShape {
  const double* inv_freq;  // [head_dim/2] on the device: freq_scale * base^(-2i/hd) / freq_factor[i]
  int head_dim, n_head, n_head_kv, n_ctx;
};
// Rotates q [n][n_head][hd] in place and k [n][n_head_kv][hd] (adjacent pairs, as forward.cpp's
// rope_apply) and stores k and v as f16 at positions [*pos, *pos+n) of k_cache/v_cache
// ([n_head_kv][n_ctx][hd]).
void launch_rope_store(const RopeShape& r, const int* pos, int n, float* q, const float* k, const float* v,
                       __half* k_cache, __half* v_cache, cudaStream_t s);
// RoPE of q alone, in place (the compressed cache stores k itself).
void launch_rope_q(const RopeShape& r, const int* pos, int n, float* q, cudaStream_t s);
// The rotation of RoPE for the pair (a.x, a.y) at position p, frequency inv_freq: the angle in
// double (as rope_apply), the products rounded one by one (no FMA), so results match the CPU.
__device__ __forceinline__ float2 rope_rotate(float2 a, int p, double inv_freq) {
  double sn_d, cs_d;
  sincos((double)p * inv_freq, &sn_d, &cs_d);
  const float cs = (float)cs_d, sn = (float)sn_d;
  return make_float2(__fsub_rn(__fmul_rn(a.x, cs), __fmul_rn(a.y, sn)), __fadd_rn(__fmul_rn(a.x, sn), __fmul_rn(a.y, cs)));
}

// The normalized fast Walsh-Hadamard transform of `rows` rows of hd floats in shared memory (row r
// at x + r*hd) by all threads of a 1-D block, in kv_hadamard's butterfly order: every element sees
// the same float operations as on the CPU. Every thread of the block must call it.
__device__ __forceinline__ void hadamard_shared_rows(float* x, int rows, int hd, float hs) {
  const int half = hd / 2, pairs = rows * half;
  for (int len = 1; len < hd; len <<= 1) {
    __syncthreads();
    for (int e = threadIdx.x; e < pairs; e += blockDim.x) {
      float* xr = x + (e / half) * hd;
      const int i = e % half, j = (i / len) * 2 * len + i % len;
      const float a = xr[j], b = xr[j + len];
      xr[j] = __fadd_rn(a, b);
      xr[j + len] = __fsub_rn(a, b);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < rows * hd; e += blockDim.x) x[e] = __fmul_rn(x[e], hs);
  __syncthreads();
}

// The largest of x[0..n) (lowest index on ties, NaNs never win; all NaN: 0) into *out, by several
// blocks whose last one merges their results. work: argmax_work_bytes(), zeroed once before the
// first use (each launch leaves it zeroed again).
size_t argmax_work_bytes();
void launch_argmax(const float* x, int n, int32_t* out, void* work, cudaStream_t s);

// ---- cuda_matmul.cu ----
constexpr int kMatvecMaxTokens = 4;  // Auto path: the vector kernel up to this many tokens
// y[t][r] (=, or += with accumulate) sum_c W[r][c] x[t][c]; x, y 16-byte aligned.
void launch_matmul(const DevMatrix& W, const float* x, int n_tok, float* y, bool accumulate, cudaStream_t s,
                   cuda_ops::MatmulPath path = cuda_ops::MatmulPath::Auto);

// The decode step's fused products (n_tok <= kMatvecMaxTokens): several matrices that read the
// same input in one launch, the RMSNorm of the input computed inside (each block sums x^2 over the
// whole row it reads anyway), and what follows each product done on its output rows, so a layer
// needs no separate norm, RoPE, KV-store or SwiGLU kernel.
enum class MvOut : int {
  Store,       // y[t][r] = (W x)[r]
  Accumulate,  // y[t][r] += (W x)[r]
  RopeQ,       // rows are heads x head_dim: RoPE at position *pos + t, into y
  RopeStoreK,  // RoPE, then stored as f16 into cache [n_head_kv][n_ctx][hd] at position *pos + t
  StoreV,      // stored as f16 into cache at position *pos + t
  SwiGLU,      // with the next segment (same rows): y[t][r] = silu((W x)[r]) * (W' x)[r]
};
struct MvSeg {
  DevMatrix W;
  float* y = nullptr;        // Store, Accumulate, RopeQ, SwiGLU
  __half* cache = nullptr;   // RopeStoreK, StoreV
  MvOut out = MvOut::Store;
};
struct MvInput {
  const float* x = nullptr;       // [n_tok][W.cols], 16-byte aligned
  int n_tok = 1;
  const float* norm_w = nullptr;  // when set, x / sqrt(mean(x^2) + eps) * norm_w is multiplied
  float eps = 0.0f;
  const RopeShape* rope = nullptr;  // RopeQ, RopeStoreK, StoreV
  const int* pos = nullptr;
};
// One launch per run of segments with the same weight type (a SwiGLU pair with different types
// becomes two products and a silu_mul).
void launch_matvec_fused(const MvSeg* segs, int n_seg, const MvInput& in, cudaStream_t s);

// ---- cuda_attention.cu (the f16 cache) and cuda_kv.cu (the compressed cache) ----
// Shared by both attention kernels and the merge that ends both paths.
constexpr int kAttnThreads = 128;   // threads per attention block
constexpr int kAttnChunk = 128;     // keys per pass of a block
constexpr int kAttnMaxSplits = 128; // key ranges per query at most (flash-decoding)

constexpr int kAttnMinSpan = 64;    // keys per range at least: short contexts use fewer ranges

// Keys per range when the `limit` visible keys of a query are split into at most n_splits ranges
// (a multiple of 32); ranges past the last key are empty. The attention kernels and their merge
// agree on it.
__device__ __forceinline__ int ceil_div_dev(int a, int b) { return (a + b - 1) / b; }
__device__ __forceinline__ int attn_span(int limit, int n_splits) {
  return max(kAttnMinSpan, ((limit + n_splits - 1) / n_splits + 31) & ~31);
}

struct AttnShape {
  int n_head, n_head_kv, head_dim, n_ctx;
};
// Throws Error when the kernels do not cover this shape (head_dim 64 or 128, group <= 8).
void check_attention_shape(const AttnShape& a);
// Key ranges each query is split into (flash-decoding): enough blocks to fill the GPU when few
// queries run, one range for batched prefill. Depends only on n, so a recorded graph stays valid.
int attention_splits(const AttnShape& a, int n, int sm_count);
size_t attention_partial_floats(const AttnShape& a, int n, int n_splits);  // workspace size (0 for 1 split)
// Causal attention of q [n][n_head][hd] at positions [*pos, *pos+n) over cached positions
// [0, *pos+i] of k_cache/v_cache ([n_head_kv][n_ctx][hd], f16) into out [n][n_head][hd].
void launch_attention(const AttnShape& a, const int* pos, int n, const float* q, const __half* k_cache,
                      const __half* v_cache, float* out, float* partial, int n_splits, cudaStream_t s);
// The flash-decoding merge: partial [n][n_head][n_splits][hd + 2] (o unnormalized, m, l in log2
// units) -> out [n][n_head][hd]. Both attention paths (f16 and compressed cache) end with it.
// rotate: the merged outputs are Hadamard-transformed (scale 1/sqrt(hd)) before they are written,
// for a cache that holds rotated keys and values.
void launch_attention_combine(const AttnShape& a, const int* pos, int n, const float* partial, float* out, int n_splits,
                              cudaStream_t s, bool rotate = false);

}  // namespace lkv
