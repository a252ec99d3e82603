// cuda_kernels.cu — the small kernels of the forward pass: embedding rows, RMSNorm, SwiGLU,
// RoPE fused with the KV store, arg-max of the logits; and the error helpers of cuda_common.cuh.
#include <algorithm>
#include <climits>
#include <cmath>

#include "cuda_kernels.cuh"

namespace lkv {

void cuda_check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  throw Error(strprintf("CUDA error in %s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err)));
}

void* cuda_alloc(size_t bytes, const char* what) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaSuccess) return p;
  (void)cudaGetLastError();
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  int dev = 0;
  cudaGetDevice(&dev);
  cudaDeviceProp prop;
  const char* name = cudaGetDeviceProperties(&prop, dev) == cudaSuccess ? prop.name : "the GPU";
  if (err == cudaErrorMemoryAllocation)
    throw Error(strprintf("CUDA out of memory: %s needs %.1f MiB, %.1f MiB of %.1f MiB are free on %s", what,
                          bytes / 1048576.0, free_b / 1048576.0, total_b / 1048576.0, name));
  throw Error(strprintf("CUDA error allocating %.1f MiB for %s: %s", bytes / 1048576.0, what, cudaGetErrorString(err)));
}

namespace {

__device__ __forceinline__ float block_sum(float v, float* red /* [32] shared */) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = (blockDim.x + 31) / 32;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = 0;
  for (int w = 0; w < nw; w++) s += red[w];  // same order in every thread: every thread gets the same sum
  __syncthreads();                           // red may be reused by the caller
  return s;
}

template <uint32_t T>
__global__ void get_rows_kernel(DevMatrix W, const int32_t* ids, float* out) {
  const int t = blockIdx.y, row = ids[t];
  float* dst = out + (size_t)t * W.cols;
  for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < W.cols / 8; o += gridDim.x * blockDim.x) {
    float v[8];
    dequant8<T>(W, row, 8 * o, v);
    ((float4*)dst)[2 * o] = make_float4(v[0], v[1], v[2], v[3]);
    ((float4*)dst)[2 * o + 1] = make_float4(v[4], v[5], v[6], v[7]);
  }
}

// One block per row. out may alias x: each element is read and written by the same thread.
__global__ void rmsnorm_kernel(float* out, const float* x, const float* w, int d, float eps) {
  __shared__ float red[32];
  const float* xr = x + (size_t)blockIdx.x * d;
  float* orow = out + (size_t)blockIdx.x * d;
  float ss = 0;
  for (int i = threadIdx.x; i < d; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
  ss = block_sum(ss, red);
  const float scale = 1.0f / sqrtf(ss / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) orow[i] = xr[i] * scale * w[i];
}

__global__ void silu_mul_kernel(float* gate, const float* up, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// Block (hd/2, 8): thread x owns pair x of every head; the heads are split over y. q and k are
// rotated as rope_apply rotates them (rope_rotate); k and v are then stored as f16.
__global__ void rope_store_kernel(RopeShape r, const int* pos, float* q, const float* k, const float* v,
                                  __half* k_cache, __half* v_cache) {
  const int t = blockIdx.x, i = threadIdx.x, hd = r.head_dim;
  const int p = *pos + t;
  const double f = r.inv_freq[i];
  for (int h = threadIdx.y; h < r.n_head + r.n_head_kv; h += blockDim.y) {
    if (h < r.n_head) {
      float2* x = (float2*)(q + ((size_t)t * r.n_head + h) * hd) + i;
      *x = rope_rotate(*x, p, f);
    } else {
      const int hk = h - r.n_head;
      const size_t src = ((size_t)t * r.n_head_kv + hk) * hd + 2 * i;
      const size_t dst = ((size_t)hk * r.n_ctx + p) * hd + 2 * i;
      const float2 a = rope_rotate(*(const float2*)(k + src), p, f), b = *(const float2*)(v + src);
      *(__half2*)(k_cache + dst) = __halves2half2(__float2half_rn(a.x), __float2half_rn(a.y));
      *(__half2*)(v_cache + dst) = __halves2half2(__float2half_rn(b.x), __float2half_rn(b.y));
    }
  }
}

constexpr int kArgmaxThreads = 256, kArgmaxMaxBlocks = 132;

struct ArgmaxWork {
  unsigned int done;  // blocks finished in the launch under way; the last one resets it
  float val[kArgmaxMaxBlocks];
  int idx[kArgmaxMaxBlocks];
};

__device__ __forceinline__ bool argmax_better(float v, int i, float bv, int b) { return v > bv || (v == bv && i < b); }

// The block's best (value, index) into thread 0's registers (every thread's pair enters).
__device__ __forceinline__ void argmax_block(float& best, int& bi) {
  __shared__ float sv[32];
  __shared__ int si[32];
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (argmax_better(ov, oi, best, bi)) { best = ov; bi = oi; }
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) { sv[warp] = best; si[warp] = bi; }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < (int)(blockDim.x + 31) / 32; w++)
      if (argmax_better(sv[w], si[w], best, bi)) { best = sv[w]; bi = si[w]; }
  __syncthreads();
}

// Each block scans a strided share of x; the last block to finish merges the blocks' results.
// Indices never found stay INT_MAX, so an all-NaN input gives token 0.
__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(const float* x, int n, int32_t* out, ArgmaxWork* w) {
  float best = -INFINITY;
  int bi = INT_MAX;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const float v = x[i];
    if (v > best || (bi == INT_MAX && v == best)) { best = v; bi = i; }  // ascending i: ties keep the first
  }
  argmax_block(best, bi);
  __shared__ bool last;
  if (threadIdx.x == 0) {
    w->val[blockIdx.x] = best;
    w->idx[blockIdx.x] = bi;
    __threadfence();
    last = atomicAdd(&w->done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  best = -INFINITY;
  bi = INT_MAX;
  for (int b = threadIdx.x; b < (int)gridDim.x; b += blockDim.x) {
    const float v = __ldcg(&w->val[b]);
    const int i = __ldcg(&w->idx[b]);
    if (argmax_better(v, i, best, bi)) { best = v; bi = i; }
  }
  argmax_block(best, bi);
  if (threadIdx.x == 0) {
    *out = bi == INT_MAX ? 0 : bi;
    w->done = 0;
  }
}

}  // namespace

std::vector<double> rope_inv_freq(const LlamaConfig& c) {
  std::vector<double> inv((size_t)c.head_dim / 2);
  for (int i = 0; i < c.head_dim / 2; i++)
    inv[i] = (double)c.rope_freq_scale * std::pow((double)c.rope_base, -2.0 * i / c.head_dim) / c.rope_freq_factors[i];
  return inv;
}

void launch_get_rows(const DevMatrix& W, const int32_t* ids, int n, float* out, cudaStream_t s) {
  const int threads = 128, blocks = std::min(ceil_div(W.cols / 8, threads), 64);
  dispatch_type(W.type, [&](auto t) { get_rows_kernel<decltype(t)::value><<<dim3(blocks, n), threads, 0, s>>>(W, ids, out); });
  LKV_CUDA_LAUNCHED("get_rows");
}

void launch_rmsnorm(float* out, const float* x, const float* w, int rows, int d, float eps, cudaStream_t s) {
  rmsnorm_kernel<<<rows, 256, 0, s>>>(out, x, w, d, eps);
  LKV_CUDA_LAUNCHED("rmsnorm");
}

void launch_silu_mul(float* gate, const float* up, int64_t n, cudaStream_t s) {
  const int threads = 256, blocks = (int)std::min<int64_t>((n + threads - 1) / threads, 65536);
  silu_mul_kernel<<<blocks, threads, 0, s>>>(gate, up, n);
  LKV_CUDA_LAUNCHED("silu_mul");
}

void launch_rope_store(const RopeShape& r, const int* pos, int n, float* q, const float* k, const float* v,
                       __half* k_cache, __half* v_cache, cudaStream_t s) {
  rope_store_kernel<<<n, dim3(r.head_dim / 2, 8), 0, s>>>(r, pos, q, k, v, k_cache, v_cache);
  LKV_CUDA_LAUNCHED("rope_store");
}

size_t argmax_work_bytes() { return sizeof(ArgmaxWork); }

void launch_rope_q(const RopeShape& r, const int* pos, int n, float* q, cudaStream_t s) {
  RopeShape qr = r;
  qr.n_head_kv = 0;  // rope_store_kernel's heads are q's, then k's: none of the latter
  launch_rope_store(qr, pos, n, q, nullptr, nullptr, nullptr, nullptr, s);
}

void launch_argmax(const float* x, int n, int32_t* out, void* work, cudaStream_t s) {
  const int blocks = std::max(1, std::min(kArgmaxMaxBlocks, ceil_div(n, 8 * kArgmaxThreads)));
  argmax_kernel<<<blocks, kArgmaxThreads, 0, s>>>(x, n, out, (ArgmaxWork*)work);
  LKV_CUDA_LAUNCHED("argmax");
}

}  // namespace lkv
