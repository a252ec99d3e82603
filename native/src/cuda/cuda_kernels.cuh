// cuda_kernels.cuh — launchers of every CUDA kernel, on device pointers and a stream. Kernels
// that depend on the position read it from device memory (`pos`), so one recorded decode step
// (a CUDA graph) replays at every position.
#pragma once

#include "cuda_ops.h"
#include "cuda_weights.cuh"

namespace lkv {

// ---- cuda_kernels.cu: elementwise and small ops ----
void launch_get_rows(const DevMatrix& W, const int32_t* ids, int n, float* out, cudaStream_t s);
void launch_rmsnorm(float* out, const float* x, const float* w, int rows, int d, float eps, cudaStream_t s);
void launch_silu_mul(float* gate, const float* up, int64_t n, cudaStream_t s);

struct RopeShape {
  const double* inv_freq;  // [head_dim/2] on the device: freq_scale * base^(-2i/hd) / freq_factor[i]
  int head_dim, n_head, n_head_kv, n_ctx;
};
// Rotates q [n][n_head][hd] in place and k [n][n_head_kv][hd] (adjacent pairs, as forward.cpp's
// rope_apply) and stores k and v as f16 at positions [*pos, *pos+n) of k_cache/v_cache
// ([n_head_kv][n_ctx][hd]).
void launch_rope_store(const RopeShape& r, const int* pos, int n, float* q, const float* k, const float* v,
                       __half* k_cache, __half* v_cache, cudaStream_t s);
void launch_argmax(const float* x, int n, int32_t* out, cudaStream_t s);

// ---- cuda_matmul.cu ----
constexpr int kMatvecMaxTokens = 4;  // Auto path: the vector kernel up to this many tokens
// y[t][r] (=, or += with accumulate) sum_c W[r][c] x[t][c]; x, y 16-byte aligned.
void launch_matmul(const DevMatrix& W, const float* x, int n_tok, float* y, bool accumulate, cudaStream_t s,
                   cuda_ops::MatmulPath path = cuda_ops::MatmulPath::Auto);

// ---- cuda_attention.cu (the f16 cache) and cuda_kv.cu (the compressed cache) ----
// Shared by both attention kernels and the merge that ends both paths.
constexpr int kAttnThreads = 128;   // threads per attention block
constexpr int kAttnChunk = 128;     // keys per pass of a block
constexpr int kAttnMaxSplits = 128; // key ranges per query at most (flash-decoding)

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
void launch_attention_combine(const AttnShape& a, int n, const float* partial, float* out, int n_splits, cudaStream_t s);

}  // namespace lkv
