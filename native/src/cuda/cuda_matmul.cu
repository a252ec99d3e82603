// cuda_matmul.cu — weight upload (repack to the aligned device layout of cuda_weights.cuh) and the
// two matrix products, both reading the quantized weights through dequant8 with f32 activations:
//   matvec_kernel  decode (1..4 tokens): memory-bound; a block of 4 warps streams 2 rows, each
//                  thread 8 values at a time, reused for every token.
//   tiled_kernel   prefill: 64 rows x 64 tokens per block, 32 columns at a time dequantized into
//                  shared memory, 4x4 outputs per thread (plain FP32; a tensor-core path is future work).
#include <algorithm>
#include <cstring>
#include <vector>

#include "cuda_kernels.cuh"

namespace lkv {

// ---- layout and upload ------------------------------------------------------------------------

size_t dev_q_row_bytes(uint32_t type, int64_t cols) {
  switch ((GgmlType)type) {
    case GgmlType::F32: return (size_t)cols * 4;
    case GgmlType::F16:
    case GgmlType::BF16: return (size_t)cols * 2;
    case GgmlType::Q8_0: return (size_t)cols;
    case GgmlType::Q4_0:
    case GgmlType::IQ4_NL: return (size_t)cols / 2;
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::IQ4_XS: return (size_t)(cols / QK_K) * dev_block_bytes(ggml_type_size(type));
    default: return 0;
  }
}

size_t dev_d_row_bytes(uint32_t type, int64_t cols) {
  const GgmlType t = (GgmlType)type;
  return (t == GgmlType::Q8_0 || t == GgmlType::Q4_0 || t == GgmlType::IQ4_NL) ? (size_t)(cols / 32) * 2 : 0;
}

void check_dev_matrix_shape(const WeightView& W, const char* what) {
  LKV_CHECK(dev_q_row_bytes(W.type, QK_K) != 0, "CUDA backend: %s has weight type %s, which it does not support", what,
            ggml_type_name(W.type));
  const int64_t block = ggml_block_size(W.type) > 32 ? ggml_block_size(W.type) : 32;
  LKV_CHECK(W.rows > 0 && W.rows <= INT32_MAX / 2 && W.cols > 0 && W.cols <= (1 << 24) && W.cols % block == 0,
            "CUDA backend: %s is %lld x %lld; it needs rows of a multiple of %lld values", what, (long long)W.rows,
            (long long)W.cols, (long long)block);
  LKV_CHECK(W.row_bytes == ggml_row_bytes(W.type, (uint64_t)W.cols), "CUDA backend: %s: row_bytes %zu does not match %lld %s values",
            what, W.row_bytes, (long long)W.cols, ggml_type_name(W.type));
}

// nb blocks of `bytes` each at a `stride`-byte stride, the padding zeroed.
static void pad_blocks(const uint8_t* src, int64_t nb, size_t bytes, size_t stride, uint8_t* q) {
  for (int64_t b = 0; b < nb; b++) {
    std::memcpy(q + stride * b, src + b * bytes, bytes);
    std::memset(q + stride * b + bytes, 0, stride - bytes);
  }
}

void repack_rows(const WeightView& W, int64_t r0, int64_t nr, uint8_t* q_out, uint8_t* d_out) {
  const size_t qrb = dev_q_row_bytes(W.type, W.cols), drb = dev_d_row_bytes(W.type, W.cols);
  const int64_t nb32 = W.cols / 32, nbk = W.cols / QK_K;
  for (int64_t i = 0; i < nr; i++) {
    const uint8_t* src = W.data + (size_t)(r0 + i) * W.row_bytes;
    uint8_t* q = q_out + (size_t)i * qrb;
    uint8_t* d = d_out ? d_out + (size_t)i * drb : nullptr;
    switch ((GgmlType)W.type) {
      case GgmlType::Q8_0:  // [d | 32 qs] blocks -> qs row + d row
        for (int64_t b = 0; b < nb32; b++) {
          std::memcpy(q + 32 * b, src + b * sizeof(block_q8_0) + 2, 32);
          std::memcpy(d + 2 * b, src + b * sizeof(block_q8_0), 2);
        }
        break;
      case GgmlType::Q4_0:  // [d | 16 bytes of nibbles] blocks -> nibble row + d row
      case GgmlType::IQ4_NL:
        for (int64_t b = 0; b < nb32; b++) {
          std::memcpy(q + 16 * b, src + b * sizeof(block_q4_0) + 2, 16);
          std::memcpy(d + 2 * b, src + b * sizeof(block_q4_0), 2);
        }
        break;
      default:  // F32, F16, BF16 as in the file; the super-block formats padded (dev_block_bytes)
        if (qrb == W.row_bytes) std::memcpy(q, src, qrb);
        else pad_blocks(src, nbk, ggml_type_size(W.type), qrb / nbk, q);
        break;
    }
  }
}

DevMatrix upload_matrix(const WeightView& W, DeviceBuffer& store, const char* what) {
  check_dev_matrix_shape(W, what);
  const size_t qrb = dev_q_row_bytes(W.type, W.cols), drb = dev_d_row_bytes(W.type, W.cols);
  const size_t q_bytes = qrb * (size_t)W.rows, d_off = (q_bytes + 255) / 256 * 256;
  store = DeviceBuffer(d_off + drb * (size_t)W.rows, what);
  // repack and copy in slabs of about 32 MiB, so host memory stays small for any matrix
  const int64_t slab = std::max<int64_t>(1, (int64_t)((32u << 20) / (qrb + drb)));
  std::vector<uint8_t> hq((size_t)std::min(slab, W.rows) * qrb), hd((size_t)std::min(slab, W.rows) * drb);
  for (int64_t r0 = 0; r0 < W.rows; r0 += slab) {
    const int64_t nr = std::min(slab, W.rows - r0);
    repack_rows(W, r0, nr, hq.data(), drb ? hd.data() : nullptr);
    cuda_check(cudaMemcpy(store.get<uint8_t>() + r0 * qrb, hq.data(), nr * qrb, cudaMemcpyHostToDevice), what);
    if (drb)
      cuda_check(cudaMemcpy(store.get<uint8_t>() + d_off + r0 * drb, hd.data(), nr * drb, cudaMemcpyHostToDevice), what);
  }
  DevMatrix m;
  m.type = W.type;
  m.rows = (int)W.rows;
  m.cols = (int)W.cols;
  m.q = store.get<uint8_t>();
  m.q_stride = qrb;
  m.d = drb ? (const uint16_t*)(store.get<uint8_t>() + d_off) : nullptr;
  return m;
}

// ---- kernels ----------------------------------------------------------------------------------

namespace {

constexpr int kMvThreads = 128, kMvRows = 2;

template <uint32_t T, int NT>
__global__ void __launch_bounds__(kMvThreads) matvec_kernel(DevMatrix W, const float* __restrict__ x, int n_tok,
                                                           float* __restrict__ y, int accumulate) {
  const int row0 = blockIdx.x * kMvRows;
  const int n_oct = W.cols / 8;
  float acc[kMvRows][NT] = {};
  for (int o = threadIdx.x; o < n_oct; o += kMvThreads) {
    float xv[NT][8];
#pragma unroll
    for (int t = 0; t < NT; t++) {
      const float4* xp = (const float4*)(x + (size_t)t * W.cols) + 2 * o;
      const float4 a = t < n_tok ? __ldg(xp) : make_float4(0, 0, 0, 0);
      const float4 b = t < n_tok ? __ldg(xp + 1) : make_float4(0, 0, 0, 0);
      xv[t][0] = a.x; xv[t][1] = a.y; xv[t][2] = a.z; xv[t][3] = a.w;
      xv[t][4] = b.x; xv[t][5] = b.y; xv[t][6] = b.z; xv[t][7] = b.w;
    }
#pragma unroll
    for (int r = 0; r < kMvRows; r++) {
      float w[8];
      dequant8<T>(W, min(row0 + r, W.rows - 1), 8 * o, w);
#pragma unroll
      for (int t = 0; t < NT; t++)
#pragma unroll
        for (int k = 0; k < 8; k++) acc[r][t] = fmaf(w[k], xv[t][k], acc[r][t]);
    }
  }
  __shared__ float red[kMvThreads / 32][kMvRows * NT];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int r = 0; r < kMvRows; r++)
#pragma unroll
    for (int t = 0; t < NT; t++) {
      const float s = warp_sum(acc[r][t]);
      if (lane == 0) red[warp][r * NT + t] = s;
    }
  __syncthreads();
  if (threadIdx.x < kMvRows * NT) {
    const int r = threadIdx.x / NT, t = threadIdx.x % NT, row = row0 + r;
    float s = 0;
    for (int w = 0; w < kMvThreads / 32; w++) s += red[w][threadIdx.x];
    if (row < W.rows && t < n_tok) {
      float* dst = y + (size_t)t * W.rows + row;
      *dst = accumulate ? *dst + s : s;
    }
  }
}

constexpr int kTileRows = 64, kTileToks = 64, kTileK = 32, kTileThreads = 256;

// Thread (tx, ty) of 16 x 16 computes rows r0 + 4tx .. +4 for tokens t0 + 4ty .. +4. Loader: thread
// tid dequantizes 8 values of row tid/4 (columns 8 * (tid%4)) and loads 8 activations of token tid/4.
template <uint32_t T>
__global__ void __launch_bounds__(kTileThreads) tiled_kernel(DevMatrix W, const float* __restrict__ x, int n_tok,
                                                            float* __restrict__ y, int accumulate) {
  __shared__ __align__(16) float Ws[kTileK][kTileRows + 4];  // [k][row], +4 keeps float4 alignment
  __shared__ __align__(16) float Xs[kTileK][kTileToks + 4];  // [k][token]
  const int r0 = blockIdx.x * kTileRows, t0 = blockIdx.y * kTileToks;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int lr = tid / 4, lo = tid % 4;
  const bool w_ok = r0 + lr < W.rows, x_ok = t0 + lr < n_tok;
  const int w_row = min(r0 + lr, W.rows - 1);
  const float* xrow = x + (size_t)min(t0 + lr, n_tok - 1) * W.cols;
  float acc[4][4] = {};  // [token][row]
  for (int k0 = 0; k0 < W.cols; k0 += kTileK) {
    float w[8];
    dequant8<T>(W, w_row, k0 + 8 * lo, w);
    const float4 a = __ldg((const float4*)(xrow + k0 + 8 * lo)), b = __ldg((const float4*)(xrow + k0 + 8 * lo) + 1);
    const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 8; i++) {
      Ws[8 * lo + i][lr] = w_ok ? w[i] : 0.0f;
      Xs[8 * lo + i][lr] = x_ok ? xv[i] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTileK; k++) {
      const float4 wv = *(const float4*)&Ws[k][4 * tx], xq = *(const float4*)&Xs[k][4 * ty];
      const float wr[4] = {wv.x, wv.y, wv.z, wv.w}, xt[4] = {xq.x, xq.y, xq.z, xq.w};
#pragma unroll
      for (int j = 0; j < 4; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[j][i] = fmaf(xt[j], wr[i], acc[j][i]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const int t = t0 + 4 * ty + j;
    if (t >= n_tok) continue;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int r = r0 + 4 * tx + i;
      if (r >= W.rows) continue;
      float* dst = y + (size_t)t * W.rows + r;
      *dst = accumulate ? *dst + acc[j][i] : acc[j][i];
    }
  }
}

}  // namespace

void launch_matmul(const DevMatrix& W, const float* x, int n_tok, float* y, bool accumulate, cudaStream_t s,
                   cuda_ops::MatmulPath path) {
  LKV_CHECK(n_tok > 0, "matmul: no tokens");
  const bool vec = path == cuda_ops::MatmulPath::Vector ||
                   (path == cuda_ops::MatmulPath::Auto && n_tok <= kMatvecMaxTokens);
  LKV_CHECK(!vec || n_tok <= kMatvecMaxTokens, "matmul: the vector kernel takes at most %d tokens", kMatvecMaxTokens);
  const int acc = accumulate ? 1 : 0;
  dispatch_type(W.type, [&](auto t) {
    constexpr uint32_t T = decltype(t)::value;
    if (vec) {
      const int grid = ceil_div(W.rows, kMvRows);
      if (n_tok == 1) matvec_kernel<T, 1><<<grid, kMvThreads, 0, s>>>(W, x, n_tok, y, acc);
      else if (n_tok == 2) matvec_kernel<T, 2><<<grid, kMvThreads, 0, s>>>(W, x, n_tok, y, acc);
      else matvec_kernel<T, 4><<<grid, kMvThreads, 0, s>>>(W, x, n_tok, y, acc);
    } else {
      const dim3 grid(ceil_div(W.rows, kTileRows), ceil_div(n_tok, kTileToks));
      tiled_kernel<T><<<grid, kTileThreads, 0, s>>>(W, x, n_tok, y, acc);
    }
  });
  LKV_CUDA_LAUNCHED("matmul");
}

}  // namespace lkv
