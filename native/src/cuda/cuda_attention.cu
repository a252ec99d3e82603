// cuda_attention.cu — causal grouped-query attention over the f16 KV cache with an online softmax,
// one kernel for prefill and decode. A block takes one query token, one KV head with all the query
// heads of its group (so each key and value is read once for the group), and one range of keys;
// it walks the range 128 keys at a time: scores into shared memory, the running max and sum, then
// the weighted values. With several ranges per query (flash-decoding, used when few queries run)
// each block leaves (o, m, l) and a second kernel merges them. Scores are kept in log2 units.
#include <algorithm>
#include <cmath>

#include "cuda_kernels.cuh"

namespace lkv {

namespace {

constexpr int kAttnMaxGroup = 8;       // query heads per KV head
constexpr int kAttnSplitMaxTokens = 8; // more queries than this: one key range each

struct AttnParams {
  const float* q;      // [n][n_head][HD]
  const __half* K;     // [n_head_kv][n_ctx][HD]
  const __half* V;
  float* out;          // [n][n_head][HD]
  float* part;         // [n][n_head][n_splits][HD + 2]: o (unnormalized), m, l
  const int* pos;
  int n_head, n_head_kv, n_ctx, n_splits;
  float scale_log2;    // log2(e) / sqrt(HD)
};

// Thread tid owns dims 8*(tid % L) .. +8 of the key (and value) row tid / L of each pass, L = HD/8:
// the L threads of a row are adjacent lanes, so a warp reads 32/L whole consecutive rows.
template <int HD, int GMAX>
__global__ void __launch_bounds__(kAttnThreads, GMAX <= 4 ? 4 : 2) attention_kernel(AttnParams a) {
  constexpr int L = HD / 8, ROWS = kAttnThreads / L, NW = kAttnThreads / 32;
  __shared__ float s_p[GMAX][kAttnChunk];  // scores, then probabilities
  __shared__ float s_m[GMAX], s_l[GMAX], s_corr[GMAX];
  __shared__ __align__(16) float s_o[NW][GMAX][HD];

  const int hk = blockIdx.x, i = blockIdx.y, split = blockIdx.z;
  const int G = a.n_head / a.n_head_kv;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, dg = tid % L, slot = tid / L;

  // this block's keys: [j_begin, j_end) of the query's visible [0, limit)
  const int limit = *a.pos + i + 1;
  const int span = attn_span(limit, a.n_splits);
  const int j_begin = split * span, j_end = min(limit, j_begin + span);

  const __half* Kh = a.K + (size_t)hk * a.n_ctx * HD + 8 * dg;
  const __half* Vh = a.V + (size_t)hk * a.n_ctx * HD + 8 * dg;
  float qr[GMAX][8], acc[GMAX][8];
#pragma unroll
  for (int g = 0; g < GMAX; g++)
#pragma unroll
    for (int c = 0; c < 8; c++) {
      qr[g][c] = g < G ? a.q[((size_t)i * a.n_head + hk * G + g) * HD + 8 * dg + c] * a.scale_log2 : 0.0f;
      acc[g][c] = 0.0f;
    }
  if (tid < GMAX) {
    s_m[tid] = -INFINITY;
    s_l[tid] = 0.0f;
    s_corr[tid] = 1.0f;
  }
  __syncthreads();

  // Each thread takes PER rows of a chunk, and issues the loads of B of them before it uses any:
  // enough bytes in flight to keep the memory busy (rows past the range load as zeros).
  constexpr int PER = kAttnChunk / ROWS, B = HD == 64 ? 8 : 4;
  auto load_rows = [&](const __half* base, int j0, int nk, int b0, uint4* raw) {
#pragma unroll
    for (int b = 0; b < B; b++) {
      const int jj = slot + (b0 + b) * ROWS;
      raw[b] = jj < nk ? __ldg((const uint4*)(base + (size_t)(j0 + jj) * HD)) : make_uint4(0, 0, 0, 0);
    }
  };
  for (int j0 = j_begin; j0 < j_end; j0 += kAttnChunk) {
    const int nk = min(kAttnChunk, j_end - j0);
    // 1. scores of keys j0 .. j0+nk (every lane joins the shuffles; rows past nk score -inf)
    uint4 raw[B];
#pragma unroll
    for (int b0 = 0; b0 < PER; b0 += B) {
      load_rows(Kh, j0, nk, b0, raw);
#pragma unroll
      for (int b = 0; b < B; b++) {
        const int jj = slot + (b0 + b) * ROWS;
        float kf[8];
        f16x8_to_f32(raw[b], kf);
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
          float d = 0.0f;
#pragma unroll
          for (int c = 0; c < 8; c++) d = fmaf(qr[g][c], kf[c], d);
#pragma unroll
          for (int o = L / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
          if (dg == 0 && g < G) s_p[g][jj] = jj < nk ? d : -INFINITY;
        }
      }
    }
    load_rows(Vh, j0, nk, 0, raw);  // the first values do not wait for the softmax
    __syncthreads();
    // 2. per head: new running max, probabilities, running sum (warp w takes heads w, w+NW, ...)
    for (int g = warp; g < G; g += NW) {
      float mx = -INFINITY;
      for (int jj = lane; jj < kAttnChunk; jj += 32) mx = fmaxf(mx, s_p[g][jj]);
      mx = warp_max(mx);
      const float m_old = s_m[g], m_new = fmaxf(m_old, mx);  // finite: the chunk has a visible key
      float sum = 0.0f;
      for (int jj = lane; jj < kAttnChunk; jj += 32) {
        const float p = exp2f(s_p[g][jj] - m_new);
        s_p[g][jj] = p;
        sum += p;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float corr = exp2f(m_old - m_new);  // 0 on the first chunk (m_old = -inf)
        s_corr[g] = corr;
        s_l[g] = s_l[g] * corr + sum;
        s_m[g] = m_new;
      }
    }
    __syncthreads();
    // 3. rescale and add the weighted values
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
      const float corr = g < G ? s_corr[g] : 1.0f;
#pragma unroll
      for (int c = 0; c < 8; c++) acc[g][c] *= corr;
    }
#pragma unroll
    for (int b0 = 0; b0 < PER; b0 += B) {
      if (b0 > 0) load_rows(Vh, j0, nk, b0, raw);
#pragma unroll
      for (int b = 0; b < B; b++) {
        const int jj = slot + (b0 + b) * ROWS;  // past nk: p = 0 (score -inf) and v = 0
        float vf[8];
        f16x8_to_f32(raw[b], vf);
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
          const float p = g < G ? s_p[g][jj] : 0.0f;
#pragma unroll
          for (int c = 0; c < 8; c++) acc[g][c] = fmaf(p, vf[c], acc[g][c]);
        }
      }
    }
    __syncthreads();
  }

  // sum acc over the rows each thread took: first across the lanes of a warp with the same dims
  // (xor L, 2L, ...), then across warps through shared memory, in a fixed order
#pragma unroll
  for (int g = 0; g < GMAX; g++)
#pragma unroll
    for (int c = 0; c < 8; c++)
#pragma unroll
      for (int o = L; o < 32; o <<= 1) acc[g][c] += __shfl_xor_sync(0xffffffffu, acc[g][c], o);
  if (lane < L)
#pragma unroll
    for (int g = 0; g < GMAX; g++)
#pragma unroll
      for (int c = 0; c < 8; c++) s_o[warp][g][8 * dg + c] = acc[g][c];  // g >= G: zeros, never read
  __syncthreads();
  for (int e = tid; e < G * HD; e += kAttnThreads) {
    const int g = e / HD, d = e % HD, h = hk * G + g;
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < NW; w++) o += s_o[w][g][d];
    if (a.n_splits == 1) {
      a.out[((size_t)i * a.n_head + h) * HD + d] = o / s_l[g];
    } else {
      float* p = a.part + (((size_t)i * a.n_head + h) * a.n_splits + split) * (HD + 2);
      p[d] = o;
      if (d == 0) {
        p[HD] = s_m[g];      // -inf for an empty range
        p[HD + 1] = s_l[g];  // 0 for an empty range
      }
    }
  }
}

// One block of hd threads per (head, query): out = sum_s o_s 2^(m_s - M) / sum_s l_s 2^(m_s - M)
// over the ranges that hold keys (the rest are empty: m = -inf, l = 0).
// The split weights are found in parallel (thread d takes splits d, d + hd; n_splits <= 128 and
// hd >= 64), so the one serial loop left is each thread's sum over independent loads.
__global__ void __launch_bounds__(128) attention_combine_kernel(const float* part, float* out, const int* pos, int n_head,
                                                                int n_splits_all, int hd, int rotate, float hs) {
  __shared__ float s_w[kAttnMaxSplits];
  __shared__ float s_x[128];
  __shared__ float s_red[2][4];
  const int h = blockIdx.x, i = blockIdx.y, d = threadIdx.x, lane = d % 32, warp = d / 32, nw = hd / 32;
  const float* p = part + ((size_t)i * n_head + h) * n_splits_all * (hd + 2);
  const int limit = *pos + i + 1, n_splits = min(n_splits_all, ceil_div_dev(limit, attn_span(limit, n_splits_all)));
  float m = -INFINITY;
  for (int s = d; s < n_splits; s += hd) m = fmaxf(m, p[(size_t)s * (hd + 2) + hd]);
  m = warp_max(m);
  if (lane == 0) s_red[0][warp] = m;
  __syncthreads();
  float M = s_red[0][0];
  for (int w = 1; w < nw; w++) M = fmaxf(M, s_red[0][w]);  // finite: range 0 is never empty
  float l = 0.0f;
  for (int s = d; s < n_splits; s += hd) {
    const float w = exp2f(p[(size_t)s * (hd + 2) + hd] - M);  // 0 for an empty range
    s_w[s] = w;
    l = fmaf(p[(size_t)s * (hd + 2) + hd + 1], w, l);
  }
  l = warp_sum(l);
  if (lane == 0) s_red[1][warp] = l;
  __syncthreads();
  float L = 0.0f;
  for (int w = 0; w < nw; w++) L += s_red[1][w];
  float o = 0.0f;
#pragma unroll 8
  for (int s = 0; s < n_splits; s++) o = fmaf(p[(size_t)s * (hd + 2) + d], s_w[s], o);
  float r = o / L;
  if (rotate) {  // uniform over the block
    s_x[d] = r;
    hadamard_shared_rows(s_x, 1, hd, hs);
    r = s_x[d];
  }
  out[((size_t)i * n_head + h) * hd + d] = r;
}

}  // namespace

void check_attention_shape(const AttnShape& a) {
  LKV_CHECK(a.head_dim == 64 || a.head_dim == 128, "CUDA backend: head size %d is not supported (64 or 128)", a.head_dim);
  LKV_CHECK(a.n_head_kv > 0 && a.n_head % a.n_head_kv == 0 && a.n_head / a.n_head_kv <= kAttnMaxGroup,
            "CUDA backend: %d query heads over %d KV heads is not supported (at most %d per KV head)", a.n_head,
            a.n_head_kv, kAttnMaxGroup);
  LKV_CHECK(a.n_ctx > 0 && (int64_t)a.n_ctx * a.n_head_kv * a.head_dim < ((int64_t)1 << 31),
            "CUDA backend: context %d is too large", a.n_ctx);
}

int attention_splits(const AttnShape& a, int n, int sm_count) {
  if (n > kAttnSplitMaxTokens) return 1;
  const int want = ceil_div(4 * (int64_t)sm_count, (int64_t)a.n_head_kv * n);  // about 4 blocks per SM
  return std::max(1, std::min(want, kAttnMaxSplits));
}

size_t attention_partial_floats(const AttnShape& a, int n, int n_splits) {
  return n_splits > 1 ? (size_t)n * a.n_head * n_splits * (a.head_dim + 2) : 0;
}

void launch_attention(const AttnShape& a, const int* pos, int n, const float* q, const __half* k_cache,
                      const __half* v_cache, float* out, float* partial, int n_splits, cudaStream_t s) {
  LKV_CHECK(n_splits >= 1 && n_splits <= kAttnMaxSplits && (n_splits == 1 || partial),
            "attention: bad split count %d", n_splits);
  AttnParams p;
  p.q = q;
  p.K = k_cache;
  p.V = v_cache;
  p.out = out;
  p.part = partial;
  p.pos = pos;
  p.n_head = a.n_head;
  p.n_head_kv = a.n_head_kv;
  p.n_ctx = a.n_ctx;
  p.n_splits = n_splits;
  p.scale_log2 = (float)(1.4426950408889634 / std::sqrt((double)a.head_dim));
  const dim3 grid(a.n_head_kv, n, n_splits);
  const bool small_group = a.n_head / a.n_head_kv <= 4;
  if (a.head_dim == 64) {
    if (small_group) attention_kernel<64, 4><<<grid, kAttnThreads, 0, s>>>(p);
    else attention_kernel<64, 8><<<grid, kAttnThreads, 0, s>>>(p);
  } else {
    if (small_group) attention_kernel<128, 4><<<grid, kAttnThreads, 0, s>>>(p);
    else attention_kernel<128, 8><<<grid, kAttnThreads, 0, s>>>(p);
  }
  LKV_CUDA_LAUNCHED("attention");
  if (n_splits > 1) launch_attention_combine(a, pos, n, partial, out, n_splits, s);
}

void launch_attention_combine(const AttnShape& a, const int* pos, int n, const float* partial, float* out, int n_splits,
                              cudaStream_t s, bool rotate) {
  LKV_CHECK(n_splits >= 1 && n_splits <= kAttnMaxSplits && (a.head_dim == 64 || a.head_dim == 128),
            "attention merge: %d splits of head size %d", n_splits, a.head_dim);
  attention_combine_kernel<<<dim3(a.n_head, n), a.head_dim, 0, s>>>(partial, out, pos, a.n_head, n_splits, a.head_dim, rotate ? 1 : 0,
                                                                      1.0f / std::sqrt((float)a.head_dim));
  LKV_CUDA_LAUNCHED("attention_combine");
}

}  // namespace lkv
