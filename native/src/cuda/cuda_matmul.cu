// cuda_matmul.cu — weight upload (repack to the aligned device layout of cuda_weights.cuh) and the
// two matrix products, both reading the quantized weights through dequant8 with f32 activations:
//   matvec_kernel  decode (1..4 tokens): memory-bound; a block of 4 warps streams 2 rows, each
//                  thread 8 values at a time, reused for every token; several matrices per
//                  launch, with the RMSNorm of the input and RoPE / KV store / SwiGLU fused in
//                  (launch_matvec_fused).
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

constexpr int kMvThreads = 128, kMvMaxSegs = 3;

struct MvSegDev {
  DevMatrix W;
  float* y;
  __half* cache;
  int out;       // MvOut
  int blocks;    // blocks of this and the earlier segments
};
struct MvParams {
  MvSegDev seg[kMvMaxSegs];  // unused ones: blocks = the total, so never selected
  const float* x;
  int n_tok, cols;
  const float* norm_w;
  float eps;
  RopeShape rope;
  const int* pos;
};

// A block of 4 warps computes two dot products per token over the whole row width, each thread 8
// columns at a time: rows 2b and 2b+1 of its segment, or for a SwiGLU pair row b of both
// matrices. Every block reads all of x, so with norm_w it also sums x^2 for the RMSNorm scale.
template <uint32_t T, int NT>
__global__ void __launch_bounds__(kMvThreads) matvec_kernel(MvParams p) {
  // this block's segment, selected with constant indices only (a kernel parameter indexed with
  // a variable would be copied to local memory)
  const int bx = blockIdx.x;
  const int si = bx < p.seg[0].blocks ? 0 : bx < p.seg[1].blocks ? 1 : 2;
  const int lb = bx - (si == 0 ? 0 : si == 1 ? p.seg[0].blocks : p.seg[1].blocks);
  MvSegDev g = p.seg[0];
  if (si == 1) g = p.seg[1];
  else if (si == 2) g = p.seg[2];
  const MvOut out = (MvOut)g.out;
  const bool swiglu = out == MvOut::SwiGLU;  // never in the last segment: its partner follows
  const DevMatrix W0 = g.W;
  const DevMatrix W1 = !swiglu ? W0 : si == 0 ? p.seg[1].W : p.seg[2].W;
  const int r0 = swiglu ? lb : 2 * lb, r1 = swiglu ? lb : 2 * lb + 1;
  const int lr0 = min(r0, W0.rows - 1), lr1 = min(r1, W1.rows - 1);
  const bool norm = p.norm_w != nullptr;
  const int n_oct = p.cols / 8;

  float acc[2][NT] = {}, ss[NT] = {};
#pragma unroll 2  // two columns' loads in flight per row (a 2048-wide row is two per thread)
  for (int o = threadIdx.x; o < n_oct; o += kMvThreads) {
    float xv[NT][8];
#pragma unroll
    for (int t = 0; t < NT; t++) {
      const float4* xp = (const float4*)(p.x + (size_t)t * p.cols) + 2 * o;
      const float4 a = t < p.n_tok ? __ldg(xp) : make_float4(0, 0, 0, 0);
      const float4 b = t < p.n_tok ? __ldg(xp + 1) : make_float4(0, 0, 0, 0);
      xv[t][0] = a.x; xv[t][1] = a.y; xv[t][2] = a.z; xv[t][3] = a.w;
      xv[t][4] = b.x; xv[t][5] = b.y; xv[t][6] = b.z; xv[t][7] = b.w;
    }
    if (norm) {
      const float4 a = __ldg((const float4*)p.norm_w + 2 * o), b = __ldg((const float4*)p.norm_w + 2 * o + 1);
      const float nw[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
      for (int t = 0; t < NT; t++)
#pragma unroll
        for (int k = 0; k < 8; k++) {
          ss[t] = fmaf(xv[t][k], xv[t][k], ss[t]);
          xv[t][k] *= nw[k];
        }
    }
    float w[8];
    dequant8<T>(W0, lr0, 8 * o, w);
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
      for (int k = 0; k < 8; k++) acc[0][t] = fmaf(w[k], xv[t][k], acc[0][t]);
    dequant8<T>(W1, lr1, 8 * o, w);
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
      for (int k = 0; k < 8; k++) acc[1][t] = fmaf(w[k], xv[t][k], acc[1][t]);
  }

  constexpr int NW = kMvThreads / 32, NV = 3 * NT;  // per warp: acc[0][*], acc[1][*], ss[*]
  __shared__ float red[NW][NV];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int t = 0; t < NT; t++) {
    const float a0 = warp_sum(acc[0][t]), a1 = warp_sum(acc[1][t]), sq = norm ? warp_sum(ss[t]) : 0.0f;
    if (lane == 0) {
      red[warp][t] = a0;
      red[warp][NT + t] = a1;
      red[warp][2 * NT + t] = sq;
    }
  }
  __syncthreads();
  const int t = threadIdx.x;
  if (t >= p.n_tok || t >= NT) return;
  float v0 = 0, v1 = 0, sq = 0;
#pragma unroll
  for (int w = 0; w < NW; w++) {
    v0 += red[w][t];
    v1 += red[w][NT + t];
    sq += red[w][2 * NT + t];
  }
  if (norm) {
    const float scale = 1.0f / sqrtf(sq / p.cols + p.eps);
    v0 *= scale;
    v1 *= scale;
  }
  const int rows = W0.rows;
  float* y = g.y;
  switch (out) {
    case MvOut::Store:
    case MvOut::Accumulate: {
      const bool accum = out == MvOut::Accumulate;
      float* dst = y + (size_t)t * rows + r0;
      dst[0] = accum ? dst[0] + v0 : v0;
      if (r1 < rows) dst[1] = accum ? dst[1] + v1 : v1;
      break;
    }
    case MvOut::SwiGLU:
      y[(size_t)t * rows + r0] = v0 / (1.0f + expf(-v0)) * v1;  // as silu_mul_kernel
      break;
    case MvOut::RopeQ:
    case MvOut::RopeStoreK:
    case MvOut::StoreV: {
      const int hd = p.rope.head_dim, c = r0 % hd, pos = *p.pos + t;
      float2 a = make_float2(v0, v1);
      if (out != MvOut::StoreV) a = rope_rotate(a, pos, p.rope.inv_freq[c / 2]);
      if (out == MvOut::RopeQ) {
        *(float2*)(y + (size_t)t * rows + r0) = a;
      } else {
        const size_t dst = ((size_t)(r0 / hd) * p.rope.n_ctx + pos) * hd + c;
        *(__half2*)(g.cache + dst) = __halves2half2(__float2half_rn(a.x), __float2half_rn(a.y));
      }
      break;
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

void launch_matvec_fused(const MvSeg* segs, int n_seg, const MvInput& in, cudaStream_t s) {
  LKV_CHECK(n_seg >= 1 && in.n_tok >= 1 && in.n_tok <= kMatvecMaxTokens, "matvec: %d segments, %d tokens", n_seg, in.n_tok);
  for (int i = 0; i < n_seg;) {
    // the run of segments [i, j) with segs[i]'s type (a SwiGLU segment always with its partner)
    int j = i;
    bool split_swiglu = false;
    MvParams p{};
    int blocks = 0;
    while (j < n_seg && j - i < kMvMaxSegs && segs[j].W.type == segs[i].W.type) {
      const MvSeg& g = segs[j];
      LKV_CHECK(g.W.cols == segs[i].W.cols, "matvec: segments of different widths");
      const bool rope = g.out == MvOut::RopeQ || g.out == MvOut::RopeStoreK || g.out == MvOut::StoreV;
      LKV_CHECK(!rope || (in.rope && in.pos && g.W.rows % 2 == 0 && g.W.rows % in.rope->head_dim == 0),
                "matvec: RoPE/store output needs the RoPE shape and whole heads");
      if (g.out == MvOut::SwiGLU) {
        LKV_CHECK(j + 1 < n_seg && segs[j + 1].W.rows == g.W.rows, "matvec: a SwiGLU segment needs its partner");
        if (segs[j + 1].W.type != g.W.type || j + 2 - i > kMvMaxSegs) {
          if (j == i) split_swiglu = true;
          break;
        }
        p.seg[j - i] = MvSegDev{g.W, g.y, g.cache, (int)g.out, blocks += g.W.rows};
        p.seg[j + 1 - i] = MvSegDev{segs[j + 1].W, segs[j + 1].y, nullptr, (int)MvOut::Store, blocks};
        j += 2;
        continue;
      }
      p.seg[j - i] = MvSegDev{g.W, g.y, g.cache, (int)g.out, blocks += ceil_div(g.W.rows, 2)};
      j++;
    }
    if (split_swiglu) {  // gate and up of different types: two products, then silu_mul
      MvSeg gate = segs[i], up = segs[i + 1];
      gate.out = up.out = MvOut::Store;
      launch_matvec_fused(&gate, 1, in, s);
      launch_matvec_fused(&up, 1, in, s);
      launch_silu_mul(gate.y, up.y, (int64_t)in.n_tok * gate.W.rows, s);
      i += 2;
      continue;
    }
    for (int k = j - i; k < kMvMaxSegs; k++) p.seg[k].blocks = blocks;
    p.x = in.x;
    p.n_tok = in.n_tok;
    p.cols = segs[i].W.cols;
    p.norm_w = in.norm_w;
    p.eps = in.eps;
    if (in.rope) p.rope = *in.rope;
    p.pos = in.pos;
    dispatch_type(segs[i].W.type, [&](auto t) {
      constexpr uint32_t T = decltype(t)::value;
      if (in.n_tok == 1) matvec_kernel<T, 1><<<blocks, kMvThreads, 0, s>>>(p);
      else if (in.n_tok == 2) matvec_kernel<T, 2><<<blocks, kMvThreads, 0, s>>>(p);
      else matvec_kernel<T, 4><<<blocks, kMvThreads, 0, s>>>(p);
    });
    LKV_CUDA_LAUNCHED("matvec");
    i = j;
  }
}

void launch_matmul(const DevMatrix& W, const float* x, int n_tok, float* y, bool accumulate, cudaStream_t s,
                   cuda_ops::MatmulPath path) {
  LKV_CHECK(n_tok > 0, "matmul: no tokens");
  const bool vec = path == cuda_ops::MatmulPath::Vector ||
                   (path == cuda_ops::MatmulPath::Auto && n_tok <= kMatvecMaxTokens);
  LKV_CHECK(!vec || n_tok <= kMatvecMaxTokens, "matmul: the vector kernel takes at most %d tokens", kMatvecMaxTokens);
  if (vec) {
    MvSeg g;
    g.W = W;
    g.y = y;
    g.out = accumulate ? MvOut::Accumulate : MvOut::Store;
    MvInput in;
    in.x = x;
    in.n_tok = n_tok;
    launch_matvec_fused(&g, 1, in, s);
    return;
  }
  const int acc = accumulate ? 1 : 0;
  dispatch_type(W.type, [&](auto t) {
    constexpr uint32_t T = decltype(t)::value;
    const dim3 grid(ceil_div(W.rows, kTileRows), ceil_div(n_tok, kTileToks));
    tiled_kernel<T><<<grid, kTileThreads, 0, s>>>(W, x, n_tok, y, acc);
  });
  LKV_CUDA_LAUNCHED("matmul");
}

}  // namespace lkv
