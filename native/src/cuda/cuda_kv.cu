// cuda_kv.cu — the compressed KV cache on the device (cuda_kv.cuh): block layout, the CPU payload
// read and written byte for byte, the store (commit, rewind, stats), and its kernels: RoPE with
// the Hadamard rotation fused into the store, block quantization, and attention with the
// dequantization fused into the q·k and p·v loops (the cache is never expanded to f16).
#include <algorithm>
#include <cmath>
#include <istream>
#include <ostream>
#include <sstream>

#include "../kv_block.h"
#include "../kv_stream.h"
#include "cuda_backend.h"
#include "cuda_kernels.cuh"
#include "cuda_kv.cuh"

namespace lkv {

// ---- layout ---------------------------------------------------------------------------------------

KvDevLayout kv_dev_layout(int hd, const KvSpec& spec) {
  LKV_CHECK(spec.tiers.size() == 1, "CUDA KV: one precision tier only");
  KvDevLayout L;
  L.hd = hd;
  L.G = spec.group;
  L.vg = spec.vgroup == 0 ? hd : spec.vgroup;
  L.kbits = spec.tiers[0].kbits;
  L.vbits = spec.tiers[0].vbits;
  LKV_CHECK(L.G >= 8 && L.G <= kKvMaxGroup && hd % L.vg == 0 && hd <= kKvMaxHeadDim, "CUDA KV: bad block shape");
  L.Sk = kv_planar_bytes(L.G, L.kbits);
  L.ng = kv_value_param_count(hd, L.vg, L.vbits);
  L.RB = kv_value_row_bytes(hd, L.vbits);
  L.kp_bytes = 4 * kv_key_param_count(hd, L.kbits);
  L.kc_off = L.kp_bytes;
  L.kc_bytes = kv_key_code_bytes(L.G, hd, L.kbits);
  L.vp_off = L.kc_off + L.kc_bytes;
  L.vp_bytes = 4 * L.G * L.ng;
  L.vc_off = L.vp_off + L.vp_bytes;
  L.vc_bytes = L.G * L.RB;
  L.image_bytes = L.vc_off + L.vc_bytes;
  L.block_bytes = (L.image_bytes + 15) / 16 * 16;
  // the attention kernel's wide loads: key params 16-aligned (they open the record), value code
  // rows 8-aligned with 8 consecutive channels in one plane
  LKV_CHECK(L.vbits == 16 || (L.vc_off % 8 == 0 && L.RB % 8 == 0), "CUDA KV: value codes not 8-byte aligned");
  return L;
}

// ---- the CPU payload (kv_compressed.cpp's save/load, unmanaged caches) ----------------------------

namespace {

using namespace kvstream;  // the CPU cache's payload framing

void expect_empty(std::istream& in, const char* what) {
  const uint64_t n = get<uint64_t>(in);
  LKV_CHECK(n == 0, "kv state: %s present (%llu entries): this state needs the CPU backend", what, (unsigned long long)n);
}

}  // namespace

KvImage kv_parse_payload(const KvShape& s, const KvSpec& spec, const std::string& spec_str, const KvDevLayout& L,
                         std::istream& in) {
  LKV_CHECK(get<uint32_t>(in) == kStateMagic, "kv state: not a compressed KV cache payload");
  const uint32_t ver = get<uint32_t>(in);
  LKV_CHECK(ver == kStateVersion, "kv state: payload version %u, this build reads %u", ver, kStateVersion);
  const uint64_t sl = get<uint64_t>(in);
  LKV_CHECK(sl < 4096, "kv state: bad spec length");
  std::string sp((size_t)sl, '\0');
  in.read(&sp[0], (std::streamsize)sl);
  LKV_CHECK(in && sp == spec_str, "kv state: made with KV spec '%s', this cache uses '%s'", sp.c_str(), spec_str.c_str());
  LKV_CHECK(get<int32_t>(in) == s.n_layer && get<int32_t>(in) == s.n_head_kv && get<int32_t>(in) == s.head_dim,
            "kv state: made for a different model shape");
  KvImage im;
  im.n_tokens = get<int32_t>(in);
  LKV_CHECK(im.n_tokens >= 0 && im.n_tokens <= s.n_ctx, "kv state: bad token count %d", im.n_tokens);
  const int hd = s.head_dim, G = L.G, n = im.n_tokens;
  const size_t nh = (size_t)s.n_layer * s.n_head_kv;
  im.blocks.resize(nh);
  im.rk.resize(nh);
  im.rv.resize(nh);
  std::vector<KvQParams> kp, vp;
  std::vector<uint8_t> kc, vc;
  for (size_t h = 0; h < nh; h++) {
    const uint32_t next_id = get<uint32_t>(in);
    const uint64_t nb = get<uint64_t>(in);
    LKV_CHECK(nb <= (uint64_t)n / G, "kv state: bad block count");
    if (h == 0) im.next_id = next_id;
    LKV_CHECK(next_id == im.next_id && (h == 0 || nb == im.ids.size()), "kv state: heads differ in their blocks (the CUDA backend needs them alike)");
    im.blocks[h].resize((size_t)nb * L.image_bytes);
    for (uint64_t b = 0; b < nb; b++) {
      const uint32_t id = get<uint32_t>(in);
      const int32_t emptied = get<int32_t>(in), tier = get<int32_t>(in), rows = get<int32_t>(in), created = get<int32_t>(in),
                    pos0 = get<int32_t>(in);
      LKV_CHECK(id < next_id, "kv state: bad block id");
      LKV_CHECK(emptied == -1 && tier == 0 && rows == G && pos0 == (int)b * G && created >= 0 && created <= n,
                "kv state: block %llu is not a full block at its place (the CUDA backend holds no evicted state)",
                (unsigned long long)b);
      if (h == 0) {
        LKV_CHECK(b == 0 || im.ids.back() < id, "kv state: bad block id");
        im.ids.push_back(id);
        im.created.push_back(created);
      } else {
        LKV_CHECK(im.ids[b] == id && im.created[b] == created, "kv state: heads differ in their blocks");
      }
      expect_empty(in, "per-row positions");
      get_vec(in, kp, (uint64_t)kv_key_param_count(hd, L.kbits), "key params");
      get_vec(in, kc, (uint64_t)L.kc_bytes, "key codes");
      get_vec(in, vp, (uint64_t)G * L.ng, "value params");
      get_vec(in, vc, (uint64_t)L.vc_bytes, "value codes");
      expect_empty(in, "key outliers");
      expect_empty(in, "value outliers");
      uint8_t* img = im.blocks[h].data() + (size_t)b * L.image_bytes;
      std::memcpy(img, kp.data(), (size_t)L.kp_bytes);
      std::memcpy(img + L.kc_off, kc.data(), (size_t)L.kc_bytes);
      std::memcpy(img + L.vp_off, vp.data(), (size_t)L.vp_bytes);
      std::memcpy(img + L.vc_off, vc.data(), (size_t)L.vc_bytes);
    }
    im.res0 = (int)nb * G;
    std::vector<int32_t> rpos;
    get_vec(in, rpos, (uint64_t)(n - im.res0), "residual positions");
    for (size_t r = 0; r < rpos.size(); r++) LKV_CHECK(rpos[r] == im.res0 + (int)r, "kv state: bad residual positions");
    get_vec(in, im.rk[h], rpos.size() * hd, "residual keys");
    get_vec(in, im.rv[h], rpos.size() * hd, "residual values");
    expect_empty(in, "slot tiers");
    expect_empty(in, "slot scores");
    expect_empty(in, "key mean");
    LKV_CHECK(get<int64_t>(in) == 0, "kv state: key statistics present: this state needs the CPU backend");
    LKV_CHECK(get<uint64_t>(in) == 0, "kv state: a rewind journal present: this state needs the CPU backend");
  }
  (void)spec;
  return im;
}

void kv_write_payload(const KvShape& s, const std::string& spec_str, const KvDevLayout& L, const KvImage& im, std::ostream& out) {
  put(out, kStateMagic);
  put(out, kStateVersion);
  put<uint64_t>(out, spec_str.size());
  out.write(spec_str.data(), (std::streamsize)spec_str.size());
  put<int32_t>(out, s.n_layer);
  put<int32_t>(out, s.n_head_kv);
  put<int32_t>(out, s.head_dim);
  put<int32_t>(out, im.n_tokens);
  const int hd = s.head_dim, G = L.G;
  const size_t nh = (size_t)s.n_layer * s.n_head_kv;
  std::vector<int32_t> rpos;
  for (int p = im.res0; p < im.n_tokens; p++) rpos.push_back(p);
  for (size_t h = 0; h < nh; h++) {
    put<uint32_t>(out, im.next_id);
    put<uint64_t>(out, im.ids.size());
    for (size_t b = 0; b < im.ids.size(); b++) {
      const uint8_t* img = im.blocks[h].data() + b * L.image_bytes;
      put<uint32_t>(out, im.ids[b]);
      put<int32_t>(out, -1);  // emptied
      put<int32_t>(out, 0);   // tier
      put<int32_t>(out, G);   // rows
      put<int32_t>(out, im.created[b]);
      put<int32_t>(out, (int32_t)b * G);  // pos0
      put<uint64_t>(out, 0);  // per-row positions
      put_vec(out, (const KvQParams*)img, (uint64_t)kv_key_param_count(hd, L.kbits));
      put_vec(out, img + L.kc_off, (uint64_t)L.kc_bytes);
      put_vec(out, (const KvQParams*)(img + L.vp_off), (uint64_t)G * L.ng);
      put_vec(out, img + L.vc_off, (uint64_t)L.vc_bytes);
      put<uint64_t>(out, 0);  // key outliers
      put<uint64_t>(out, 0);  // value outliers
    }
    put_vec(out, rpos.data(), rpos.size());
    put_vec(out, im.rk[h].data(), im.rk[h].size());
    put_vec(out, im.rv[h].data(), im.rv[h].size());
    put<uint64_t>(out, 0);  // slot tiers
    put<uint64_t>(out, 0);  // slot scores
    put<uint64_t>(out, 0);  // key mean
    put<int64_t>(out, 0);   // keys seen
    put<uint64_t>(out, 0);  // journal
  }
}

KvStats kv_image_stats(const KvShape& s, const KvSpec& spec, const std::string& spec_str, const KvDevLayout& L, int nb,
                       int n_tokens) {
  // the same sums, in the same order, as CompressedKvCache::stats()
  KvStats st;
  st.tokens = n_tokens;
  st.spec = spec_str;
  const int hd = s.head_dim, G = L.G, res = n_tokens - nb * G;
  st.f16_bytes = 2LL * 2 * s.n_layer * s.n_head_kv * hd * n_tokens;
  st.tier_tokens.assign(spec.tiers.size(), 0.0);
  const int64_t code = (int64_t)L.kc_bytes + L.vc_bytes, param = (int64_t)L.kp_bytes + L.vp_bytes;
  const int64_t index = (int64_t)sizeof(kvc::Block);
  double rows = 0, resd = 0;
  for (int l = 0; l < s.n_layer; l++) {
    int64_t layer_bytes = 0;
    for (int h = 0; h < s.n_head_kv; h++) {
      for (int b = 0; b < nb; b++) {
        st.code_bytes += code;
        st.param_bytes += param;
        st.index_bytes += index;
        layer_bytes += code + param + index;
        st.tier_tokens[0] += G;
        rows += G;
      }
      const int64_t rb = 2 * (int64_t)(2 * (int64_t)res * hd);
      st.residual_bytes += rb;
      const int64_t ib = 4 * (int64_t)res;
      st.index_bytes += ib;
      layer_bytes += rb + ib;
      resd += res;
      rows += res;
    }
    st.per_layer.push_back(layer_bytes);
    st.bytes += layer_bytes;
  }
  const double nh = (double)s.n_layer * s.n_head_kv;
  st.resident_tokens = rows / nh;
  st.residual_tokens = resd / nh;
  st.evicted_tokens = 0;
  for (double& t : st.tier_tokens) t /= nh;
  return st;
}

// ---- kernels ----------------------------------------------------------------------------------------

namespace {

__device__ __forceinline__ int ring_slot(int p, int cap) { return p % cap; }

// Grid (n, n_kv), hd/2 threads: key head hk of token t roped (as rope_store_kernel) unless it comes
// roped, both rotated when asked, stored as f16 at the ring slot of its position.
__global__ void kv_store_kernel(RopeShape r, const int* pos, const float* k, const float* v, KvDevView kv, int rope, int rotate,
                                float hs) {
  __shared__ float sk[kKvMaxHeadDim], sv[kKvMaxHeadDim];
  const int t = blockIdx.x, hk = blockIdx.y, i = threadIdx.x, hd = r.head_dim;
  const int p = *pos + t;
  const size_t src = ((size_t)t * r.n_head_kv + hk) * hd + 2 * i;
  float2 a = *(const float2*)(k + src);
  const float2 b = *(const float2*)(v + src);
  if (rope) a = rope_rotate(a, p, r.inv_freq[i]);
  sk[2 * i] = a.x;
  sk[2 * i + 1] = a.y;
  sv[2 * i] = b.x;
  sv[2 * i + 1] = b.y;
  if (rotate) {
    hadamard_shared_rows(sk, 1, hd, hs);
    hadamard_shared_rows(sv, 1, hd, hs);
  }
  const size_t dst = ((size_t)hk * kv.cap + ring_slot(p, kv.cap)) * hd + 2 * i;
  *(__half2*)(kv.rk + dst) = __halves2half2(__float2half_rn(sk[2 * i]), __float2half_rn(sk[2 * i + 1]));
  *(__half2*)(kv.rv + dst) = __halves2half2(__float2half_rn(sv[2 * i]), __float2half_rn(sv[2 * i + 1]));
}

__global__ void hadamard_rows_kernel(float* x, int hd, float hs) {
  __shared__ float s[kKvMaxHeadDim];
  float* row = x + (size_t)blockIdx.x * hd;
  const int i = threadIdx.x;
  s[2 * i] = row[2 * i];
  s[2 * i + 1] = row[2 * i + 1];
  hadamard_shared_rows(s, 1, hd, hs);
  row[2 * i] = s[2 * i];
  row[2 * i + 1] = s[2 * i + 1];
}

// Grid (n_layer * n_kv, count), max(hd, G) threads: thread c < hd quantizes key channel c, thread
// j < G value row j, of block b0 + blockIdx.y, from its residual rows.
__global__ void kv_quantize_kernel(KvDevLayout L, uint8_t* blocks, const __half* rk, const __half* rv, int max_blocks, int cap,
                                   int b0) {
  const int lh = blockIdx.x, b = b0 + blockIdx.y, tid = threadIdx.x;
  uint8_t* rec = blocks + ((size_t)lh * max_blocks + b) * L.block_bytes;
  const uint16_t* K = (const uint16_t*)rk + (size_t)lh * cap * L.hd;
  const uint16_t* V = (const uint16_t*)rv + (size_t)lh * cap * L.hd;
  const int p0 = b * L.G;
  if (tid < L.hd) kvd_quantize_key_channel(L, KvRingColumn{K, L.hd, tid, p0, cap}, tid, rec);
  if (tid < L.G) kvd_quantize_value_row(L, KvRow{V + (size_t)((p0 + tid) % cap) * L.hd}, tid, rec);
}

// 8 consecutive channels c0.. of key row j (position p) and of value row j, dequantized.
__device__ __forceinline__ void kv_load_key8(const KvDevView& kv, const uint8_t* hblocks, const __half* hres, int nbG, int p,
                                             int c0, float* f) {
  const KvDevLayout& L = kv.L;
  if (p >= nbG) {
    load8_f16(hres + (size_t)ring_slot(p, kv.cap) * L.hd + c0, f);
    return;
  }
  const int b = p / L.G, j = p - b * L.G;
  const uint8_t* rec = hblocks + (size_t)b * L.block_bytes;
  if (L.kbits == 16) {
#pragma unroll
    for (int c = 0; c < 8; c++) f[c] = __half2float(((const __half*)(rec + L.kc_off + (size_t)(c0 + c) * L.Sk))[j]);
    return;
  }
  // the 8 channels' params: 32 bytes at a 32-byte offset of the 16-aligned record, two loads
  const uint4 pa = *(const uint4*)(rec + 4 * c0), pb = *(const uint4*)(rec + 4 * c0 + 16);
  const uint32_t kp[8] = {pa.x, pa.y, pa.z, pa.w, pb.x, pb.y, pb.z, pb.w};  // scale | zero << 16
  const int byte = j % L.Sk, shift = L.kbits * (j / L.Sk);
  const unsigned mask = (1u << L.kbits) - 1u;
#pragma unroll
  for (int c = 0; c < 8; c++) {
    const unsigned code = (rec[L.kc_off + (size_t)(c0 + c) * L.Sk + byte] >> shift) & mask;
    f[c] = fmaf(f16_bits_to_f32((uint16_t)(kp[c] & 0xFFFF)), (float)code, f16_bits_to_f32((uint16_t)(kp[c] >> 16)));
  }
}

__device__ __forceinline__ void kv_load_value8(const KvDevView& kv, const uint8_t* hblocks, const __half* hres, int nbG, int p,
                                               int c0, float* f) {
  const KvDevLayout& L = kv.L;
  if (p >= nbG) {
    load8_f16(hres + (size_t)ring_slot(p, kv.cap) * L.hd + c0, f);
    return;
  }
  const int b = p / L.G, j = p - b * L.G;
  const uint8_t* rec = hblocks + (size_t)b * L.block_bytes;
  const uint8_t* codes = rec + L.vc_off + (size_t)j * L.RB;
  if (L.vbits == 16) {
#pragma unroll
    for (int c = 0; c < 8; c++) f[c] = __half2float(((const __half*)codes)[c0 + c]);
    return;
  }
  const KvQParams* vp = (const KvQParams*)(rec + L.vp_off) + (size_t)j * L.ng;
  const unsigned mask = (1u << L.vbits) - 1u;
  // a value group is a power of two >= 8 wide and c0 is a multiple of 8: one group for all 8
  const KvQParams q = vp[c0 / L.vg];
  const float s = f16_bits_to_f32(q.scale), z = f16_bits_to_f32(q.zero);
  // channels c0..c0+7 are bytes c0 % RB .. +8 of one bit plane (RB is a multiple of 8 and the code
  // rows are 8-aligned: kv_dev_layout checks it), one 8-byte load
  const uint2 w = *(const uint2*)(codes + c0 % L.RB);
  const int shift = L.vbits * (c0 / L.RB);
#pragma unroll
  for (int c = 0; c < 8; c++) {
    const unsigned code = (((c < 4 ? w.x : w.y) >> (8 * (c & 3))) >> shift) & mask;
    f[c] = fmaf(s, (float)code, z);
  }
}

struct KvAttnParams {
  const float* q;  // [n][n_head][HD]
  KvDevView kv;
  float* out;      // [n][n_head][HD]
  float* part;     // [n][n_head][n_splits][HD + 2]
  const int* pos;
  int n_head, n_splits;
  float scale_log2;
  int rotate;  // q Hadamard-rotated as it is read (scale hs)
  float hs;
};

// cuda_attention.cu's kernel with its two loads replaced: keys and values come from the blocks
// (dequantized in registers) below nb*G and from the f16 residual ring above.
template <int HD, int GMAX>
__global__ void __launch_bounds__(kAttnThreads) kv_attention_kernel(KvAttnParams a) {
  constexpr int L = HD / 8, ROWS = kAttnThreads / L, NW = kAttnThreads / 32;
  __shared__ float s_p[GMAX][kAttnChunk];
  __shared__ float s_m[GMAX], s_l[GMAX], s_corr[GMAX];
  __shared__ __align__(16) float s_o[NW][GMAX][HD];

  const int hk = blockIdx.x, i = blockIdx.y, split = blockIdx.z;
  const int G = a.n_head / a.kv.n_kv;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, dg = tid % L, slot = tid / L;
  const int nbG = *a.kv.nb * a.kv.L.G;

  const int limit = *a.pos + i + 1;
  const int span = attn_span(limit, a.n_splits);
  const int j_begin = split * span, j_end = min(limit, j_begin + span);

  const uint8_t* hblocks = a.kv.blocks + (size_t)hk * a.kv.max_blocks * a.kv.L.block_bytes;
  const __half* hk_res = a.kv.rk + (size_t)hk * a.kv.cap * HD;
  const __half* hv_res = a.kv.rv + (size_t)hk * a.kv.cap * HD;
  const float* qg = a.q + ((size_t)i * a.n_head + hk * G) * HD;  // the group's G query heads
  __shared__ float s_q[GMAX * HD];
  if (a.rotate) {  // uniform over the block
    for (int e = tid; e < G * HD; e += kAttnThreads) s_q[e] = qg[e];
    hadamard_shared_rows(s_q, G, HD, a.hs);
    qg = s_q;
  }
  float qr[GMAX][8], acc[GMAX][8];
#pragma unroll
  for (int g = 0; g < GMAX; g++)
#pragma unroll
    for (int c = 0; c < 8; c++) {
      qr[g][c] = g < G ? qg[g * HD + 8 * dg + c] * a.scale_log2 : 0.0f;
      acc[g][c] = 0.0f;
    }
  if (tid < GMAX) {
    s_m[tid] = -INFINITY;
    s_l[tid] = 0.0f;
    s_corr[tid] = 1.0f;
  }
  __syncthreads();

  for (int j0 = j_begin; j0 < j_end; j0 += kAttnChunk) {
    const int nk = min(kAttnChunk, j_end - j0);
    for (int jj = slot; jj < kAttnChunk; jj += ROWS) {
      float kf[8] = {};
      if (jj < nk) kv_load_key8(a.kv, hblocks, hk_res, nbG, j0 + jj, 8 * dg, kf);
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
    __syncthreads();
    for (int g = warp; g < G; g += NW) {
      float mx = -INFINITY;
      for (int jj = lane; jj < kAttnChunk; jj += 32) mx = fmaxf(mx, s_p[g][jj]);
      mx = warp_max(mx);
      const float m_old = s_m[g], m_new = fmaxf(m_old, mx);
      float sum = 0.0f;
      for (int jj = lane; jj < kAttnChunk; jj += 32) {
        const float p = exp2f(s_p[g][jj] - m_new);
        s_p[g][jj] = p;
        sum += p;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float corr = exp2f(m_old - m_new);
        s_corr[g] = corr;
        s_l[g] = s_l[g] * corr + sum;
        s_m[g] = m_new;
      }
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
      const float corr = g < G ? s_corr[g] : 1.0f;
#pragma unroll
      for (int c = 0; c < 8; c++) acc[g][c] *= corr;
    }
    for (int jj = slot; jj < nk; jj += ROWS) {
      float vf[8];
      kv_load_value8(a.kv, hblocks, hv_res, nbG, j0 + jj, 8 * dg, vf);
#pragma unroll
      for (int g = 0; g < GMAX; g++) {
        const float p = g < G ? s_p[g][jj] : 0.0f;
#pragma unroll
        for (int c = 0; c < 8; c++) acc[g][c] = fmaf(p, vf[c], acc[g][c]);
      }
    }
    __syncthreads();
  }

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
      for (int c = 0; c < 8; c++) s_o[warp][g][8 * dg + c] = acc[g][c];
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
        p[HD] = s_m[g];
        p[HD + 1] = s_l[g];
      }
    }
  }
}

float hadamard_scale(int hd) { return 1.0f / std::sqrt((float)hd); }  // as kv_hadamard

}  // namespace

// ---- launchers --------------------------------------------------------------------------------------

void launch_kv_rope_store(const RopeShape& r, const int* pos, int n, float* q, const float* k, const float* v,
                          const KvDevView& kv, bool rotate, cudaStream_t s, bool roped) {
  if (!roped) launch_rope_q(r, pos, n, q, s);
  kv_store_kernel<<<dim3(n, r.n_head_kv), r.head_dim / 2, 0, s>>>(r, pos, k, v, kv, roped ? 0 : 1, rotate ? 1 : 0,
                                                                  hadamard_scale(r.head_dim));
  LKV_CUDA_LAUNCHED("kv_store");
}

void launch_hadamard_rows(float* x, int rows, int hd, cudaStream_t s) {
  if (rows <= 0) return;
  hadamard_rows_kernel<<<rows, hd / 2, 0, s>>>(x, hd, hadamard_scale(hd));
  LKV_CUDA_LAUNCHED("hadamard_rows");
}

void launch_kv_quantize(const KvDevLayout& L, uint8_t* blocks, const __half* rk, const __half* rv, int n_layer, int n_kv,
                        int max_blocks, int cap, int b0, int count, cudaStream_t s) {
  if (count <= 0) return;
  const int threads = std::max(L.hd, L.G);
  kv_quantize_kernel<<<dim3(n_layer * n_kv, count), threads, 0, s>>>(L, blocks, rk, rv, max_blocks, cap, b0);
  LKV_CUDA_LAUNCHED("kv_quantize");
}

void launch_kv_attention(const AttnShape& a, const KvDevView& kv, const int* pos, int n, const float* q, float* out,
                         float* partial, int n_splits, bool rotate, cudaStream_t s) {
  LKV_CHECK(n_splits >= 1 && n_splits <= kAttnMaxSplits && (n_splits == 1 || partial), "attention: bad split count %d", n_splits);
  LKV_CHECK(kv.L.hd == a.head_dim && kv.n_kv == a.n_head_kv && kv.L.vg >= 8, "kv attention: layout does not match the shape");
  KvAttnParams p;
  p.q = q;
  p.kv = kv;
  p.out = out;
  p.part = partial;
  p.pos = pos;
  p.n_head = a.n_head;
  p.n_splits = n_splits;
  p.scale_log2 = (float)(1.4426950408889634 / std::sqrt((double)a.head_dim));
  p.rotate = rotate ? 1 : 0;
  p.hs = hadamard_scale(a.head_dim);
  const dim3 grid(a.n_head_kv, n, n_splits);
  const bool small_group = a.n_head / a.n_head_kv <= 4;
  if (a.head_dim == 64) {
    if (small_group) kv_attention_kernel<64, 4><<<grid, kAttnThreads, 0, s>>>(p);
    else kv_attention_kernel<64, 8><<<grid, kAttnThreads, 0, s>>>(p);
  } else {
    if (small_group) kv_attention_kernel<128, 4><<<grid, kAttnThreads, 0, s>>>(p);
    else kv_attention_kernel<128, 8><<<grid, kAttnThreads, 0, s>>>(p);
  }
  LKV_CUDA_LAUNCHED("kv_attention");
  if (n_splits > 1) launch_attention_combine(a, pos, n, partial, out, n_splits, s, rotate);
  else if (rotate) launch_hadamard_rows(out, n * a.n_head, a.head_dim, s);
}

// ---- the store --------------------------------------------------------------------------------------

CudaKvStore::CudaKvStore(const KvShape& s, const KvSpec& spec, int chunk)
    : s_(s), spec_(spec), spec_str_(kv_spec_string(spec)), L_(kv_dev_layout(s.head_dim, spec)), chunk_(std::max(1, chunk)) {
  LKV_CHECK(!spec.managed() && spec.outliers == 0.0, "the CUDA backend holds KV specs without eviction, tiers or outliers");
  LKV_CHECK(!spec.rotate || (s.head_dim & (s.head_dim - 1)) == 0, "KV spec '%s': rotation needs a power-of-two head_dim",
            spec_str_.c_str());
  max_blocks_ = s.n_ctx / L_.G;
  const int cap = std::min(s.n_ctx, spec.residual + L_.G + chunk_);
  const size_t nh = (size_t)s.n_layer * s.n_head_kv;
  blocks_ = DeviceBuffer(std::max<size_t>(1, nh * max_blocks_ * L_.block_bytes), "the compressed KV cache (blocks)");
  cap_ = cap;
  rk_ = DeviceBuffer(nh * cap_ * s.head_dim * 2, "the compressed KV cache (residual keys)");
  rv_ = DeviceBuffer(nh * cap_ * s.head_dim * 2, "the compressed KV cache (residual values)");
  nb_dev_ = DeviceBuffer(4, "KV block count");
  cuda_check(cudaMemset(blocks_.get(), 0, blocks_.bytes()), "clear KV cache");
  cuda_check(cudaMemset(nb_dev_.get(), 0, 4), "clear KV cache");
  cuda_check(cudaHostAlloc((void**)&nb_host_, 4, cudaHostAllocDefault), "cudaHostAlloc");
}

CudaKvStore::~CudaKvStore() {
  if (nb_host_) cudaFreeHost(nb_host_);
}

KvDevView CudaKvStore::view(int layer) const {
  const size_t nkv = (size_t)s_.n_head_kv;
  KvDevView v;
  v.L = L_;
  v.blocks = blocks_.get<uint8_t>() + (size_t)layer * nkv * max_blocks_ * L_.block_bytes;
  v.rk = rk_.get<__half>() + (size_t)layer * nkv * cap_ * s_.head_dim;
  v.rv = rv_.get<__half>() + (size_t)layer * nkv * cap_ * s_.head_dim;
  v.nb = nb_dev_.get<int>();
  v.n_kv = s_.n_head_kv;
  v.max_blocks = max_blocks_;
  v.cap = cap_;
  return v;
}

int64_t CudaKvStore::device_bytes() const { return (int64_t)(blocks_.bytes() + rk_.bytes() + rv_.bytes()); }

void CudaKvStore::set_nb(int nb) {
  nb_ = nb;
  cuda_check(cudaMemcpy(nb_dev_.get(), &nb, 4, cudaMemcpyHostToDevice), "KV block count");
}

bool CudaKvStore::reserve(int len, int n) {
  const int need = len - nb_ * L_.G + n;
  if (need <= cap_) return false;
  KvImage im = download();
  im.n_tokens = len;
  const int old = cap_;
  cap_ = std::min(s_.n_ctx, std::max(need, 2 * old));
  const size_t nh = (size_t)s_.n_layer * s_.n_head_kv;
  DeviceBuffer rk(nh * cap_ * s_.head_dim * 2, "the compressed KV cache (residual keys)");
  DeviceBuffer rv(nh * cap_ * s_.head_dim * 2, "the compressed KV cache (residual values)");
  rk_ = std::move(rk);
  rv_ = std::move(rv);
  gen_++;
  upload(im);
  return true;
}

void CudaKvStore::commit(int n, cudaStream_t s) {
  LKV_CHECK(n >= n_tokens_ || n >= nb_ * L_.G, "kv cache: bad commit");
  const int G = L_.G, R = spec_.residual, nb0 = nb_;
  int committed = n - nb_ * G, nb = nb_;
  while (committed >= R + G) {
    ids_.push_back(next_id_++);
    created_.push_back(n);
    nb++;
    committed -= G;
  }
  n_tokens_ = n;
  if (nb == nb0) return;
  LKV_CHECK(nb <= max_blocks_, "kv cache: block capacity exceeded");
  launch_kv_quantize(L_, blocks_.get<uint8_t>(), rk_.get<__half>(), rv_.get<__half>(), s_.n_layer, s_.n_head_kv, max_blocks_, cap_,
                     nb0, nb - nb0, s);
  *nb_host_ = nb;
  cuda_check(cudaMemcpyAsync(nb_dev_.get(), nb_host_, 4, cudaMemcpyHostToDevice, s), "KV block count");
  cuda_check(cudaStreamSynchronize(s), "KV quantization");
  nb_ = nb;
}

// Pulls the held state to the host (blocks as images, residual rows by position).
KvImage CudaKvStore::download() const {
  cuda_check(cudaDeviceSynchronize(), "KV download");
  KvImage im;
  im.n_tokens = n_tokens_;
  im.next_id = next_id_;
  im.ids = ids_;
  im.created = created_;
  im.res0 = nb_ * L_.G;
  const size_t nh = (size_t)s_.n_layer * s_.n_head_kv;
  const int hd = s_.head_dim, rows = n_tokens_ - im.res0;
  im.blocks.resize(nh);
  im.rk.resize(nh);
  im.rv.resize(nh);
  std::vector<uint8_t> rec((size_t)nb_ * L_.block_bytes);
  std::vector<uint16_t> ring((size_t)cap_ * hd);
  for (size_t h = 0; h < nh; h++) {
    if (nb_) cuda_check(cudaMemcpy(rec.data(), blocks_.get<uint8_t>() + h * max_blocks_ * L_.block_bytes, rec.size(), cudaMemcpyDeviceToHost),
                        "KV download");
    im.blocks[h].resize((size_t)nb_ * L_.image_bytes);
    for (int b = 0; b < nb_; b++)
      std::memcpy(im.blocks[h].data() + (size_t)b * L_.image_bytes, rec.data() + (size_t)b * L_.block_bytes, (size_t)L_.image_bytes);
    for (int side = 0; side < 2; side++) {
      const DeviceBuffer& buf = side ? rv_ : rk_;
      std::vector<uint16_t>& dst = side ? im.rv[h] : im.rk[h];
      cuda_check(cudaMemcpy(ring.data(), buf.get<uint16_t>() + h * cap_ * hd, ring.size() * 2, cudaMemcpyDeviceToHost), "KV download");
      dst.resize((size_t)rows * hd);
      for (int r = 0; r < rows; r++)
        std::memcpy(dst.data() + (size_t)r * hd, ring.data() + (size_t)((im.res0 + r) % cap_) * hd, (size_t)hd * 2);
    }
  }
  return im;
}

// Replaces the held state (the residual must fit the ring: callers grow it first).
void CudaKvStore::upload(const KvImage& im) {
  const size_t nh = (size_t)s_.n_layer * s_.n_head_kv;
  const int hd = s_.head_dim, nb = (int)im.ids.size(), rows = im.n_tokens - im.res0;
  LKV_CHECK(nb <= max_blocks_ && rows <= cap_, "kv cache: state does not fit the device store");
  std::vector<uint8_t> rec((size_t)nb * L_.block_bytes, 0);
  std::vector<uint16_t> ring((size_t)cap_ * hd, 0);
  for (size_t h = 0; h < nh; h++) {
    for (int b = 0; b < nb; b++)
      std::memcpy(rec.data() + (size_t)b * L_.block_bytes, im.blocks[h].data() + (size_t)b * L_.image_bytes, (size_t)L_.image_bytes);
    if (nb) cuda_check(cudaMemcpy(blocks_.get<uint8_t>() + h * max_blocks_ * L_.block_bytes, rec.data(), rec.size(), cudaMemcpyHostToDevice),
                       "KV upload");
    for (int side = 0; side < 2; side++) {
      const std::vector<uint16_t>& src = side ? im.rv[h] : im.rk[h];
      for (int r = 0; r < rows; r++)
        std::memcpy(ring.data() + (size_t)((im.res0 + r) % cap_) * hd, src.data() + (size_t)r * hd, (size_t)hd * 2);
      DeviceBuffer& buf = side ? rv_ : rk_;
      cuda_check(cudaMemcpy(buf.get<uint16_t>() + h * cap_ * hd, ring.data(), ring.size() * 2, cudaMemcpyHostToDevice), "KV upload");
    }
  }
  next_id_ = im.next_id;
  ids_ = im.ids;
  created_ = im.created;
  n_tokens_ = im.n_tokens;
  set_nb(nb);
}

void CudaKvStore::truncate(int n) {
  LKV_CHECK(n >= 0 && n <= n_tokens_, "kv cache: cannot truncate to %d (holds %d)", n, n_tokens_);
  int keep = nb_;
  while (keep > 0 && created_[(size_t)keep - 1] > n) keep--;  // blocks formed after n (the newest ones)
  if (keep == nb_) {
    n_tokens_ = n;
    return;
  }
  // As CompressedKvCache::truncate: their rows below n go back to the residual, dequantized by
  // the reference (block_row_ref) and rounded to f16; rows from n on are dropped.
  KvImage im = download();
  const int hd = s_.head_dim, G = L_.G, vg = L_.vg;
  const size_t nh = (size_t)s_.n_layer * s_.n_head_kv;
  const int res0 = keep * G;
  std::vector<float> kr((size_t)hd), vr((size_t)hd);
  for (size_t h = 0; h < nh; h++) {
    std::vector<uint16_t> rk, rv;
    for (int b = keep; b < nb_; b++) {
      const uint8_t* img = im.blocks[h].data() + (size_t)b * L_.image_bytes;
      kvc::Block blk;
      blk.kbits = L_.kbits;
      blk.vbits = L_.vbits;
      blk.n = G;
      blk.pack(std::vector<KvQParams>((const KvQParams*)img, (const KvQParams*)(img + L_.kp_bytes)),
               std::vector<KvQParams>((const KvQParams*)(img + L_.vp_off), (const KvQParams*)(img + L_.vp_off + L_.vp_bytes)), {}, {},
               std::vector<uint8_t>(img + L_.kc_off, img + L_.kc_off + L_.kc_bytes),
               std::vector<uint8_t>(img + L_.vc_off, img + L_.vc_off + L_.vc_bytes));
      for (int j = 0; j < G && b * G + j < n; j++) {
        kvc::block_row_ref(blk, hd, vg, j, kr.data(), vr.data());
        for (int c = 0; c < hd; c++) {
          rk.push_back(f32_to_f16(kr[c]));
          rv.push_back(f32_to_f16(vr[c]));
        }
      }
    }
    const int old_rows = std::max(0, n - im.res0);
    rk.insert(rk.end(), im.rk[h].begin(), im.rk[h].begin() + (size_t)old_rows * hd);
    rv.insert(rv.end(), im.rv[h].begin(), im.rv[h].begin() + (size_t)old_rows * hd);
    im.rk[h] = std::move(rk);
    im.rv[h] = std::move(rv);
    im.blocks[h].resize((size_t)keep * L_.image_bytes);
  }
  im.ids.resize((size_t)keep);
  im.created.resize((size_t)keep);
  im.res0 = res0;
  im.n_tokens = n;
  const int need = n - res0 + chunk_;
  if (need > cap_) {
    cap_ = std::min(s_.n_ctx, need);
    rk_ = DeviceBuffer(nh * cap_ * hd * 2, "the compressed KV cache (residual keys)");
    rv_ = DeviceBuffer(nh * cap_ * hd * 2, "the compressed KV cache (residual values)");
    gen_++;
  }
  upload(im);
}

KvStats CudaKvStore::stats() const { return kv_image_stats(s_, spec_, spec_str_, L_, nb_, n_tokens_); }

void CudaKvStore::save(std::ostream& out) const { kv_write_payload(s_, spec_str_, L_, download(), out); }

void CudaKvStore::load(std::istream& in) {
  KvImage im = kv_parse_payload(s_, spec_, spec_str_, L_, in);  // throws before anything changes
  const int rows = im.n_tokens - im.res0;
  if (rows + chunk_ > cap_) {
    const size_t nh = (size_t)s_.n_layer * s_.n_head_kv;
    const int cap = std::min(s_.n_ctx, rows + chunk_);
    DeviceBuffer rk(nh * cap * s_.head_dim * 2, "the compressed KV cache (residual keys)");
    DeviceBuffer rv(nh * cap * s_.head_dim * 2, "the compressed KV cache (residual values)");
    cap_ = cap;
    rk_ = std::move(rk);
    rv_ = std::move(rv);
    gen_++;
  }
  upload(im);
}

void CudaKvStore::poison_unused() {
  const size_t nh = (size_t)s_.n_layer * s_.n_head_kv;
  const int hd = s_.head_dim;
  std::vector<uint16_t> nan((size_t)hd, 0x7E00);
  for (size_t h = 0; h < nh; h++) {
    if (nb_ < max_blocks_)
      cuda_check(cudaMemset(blocks_.get<uint8_t>() + (h * max_blocks_ + nb_) * L_.block_bytes, 0xFF,
                            (size_t)(max_blocks_ - nb_) * L_.block_bytes),
                 "poison");
    const int held = n_tokens_ - nb_ * L_.G;
    for (int r = held; r < cap_; r++) {  // the slots no held position maps to
      const int slot = (n_tokens_ + (r - held)) % cap_;
      for (int side = 0; side < 2; side++) {
        const DeviceBuffer& buf = side ? rv_ : rk_;
        cuda_check(cudaMemcpy(buf.get<uint16_t>() + (h * cap_ + slot) * hd, nan.data(), (size_t)hd * 2, cudaMemcpyHostToDevice), "poison");
      }
    }
  }
}

// ---- host-pointer wrappers for test_cuda (cuda_ops.h) -----------------------------------------------

namespace cuda_ops {

namespace {

void require_device_kv() {
  std::string why;
  if (!cuda_usable(&why)) throw Error("CUDA backend unavailable: " + why);
  cuda_check(cudaSetDevice(0), "cudaSetDevice");
}

KvSpec device_spec(const std::string& spec, int hd) {
  std::string why;
  LKV_CHECK(!cuda_is_f16_kv(spec), "KV spec '%s' is the f16 cache, not a compressed one", spec.c_str());
  if (!cuda_holds_kv(spec, &why)) throw Error(why);
  return parse_kv_spec(spec);
}

}  // namespace

std::vector<uint8_t> kv_quantize_block(const KvShape& s, const std::string& spec_text, const float* k, const float* v, bool on_host) {
  const KvSpec spec = device_spec(spec_text, s.head_dim);
  const KvDevLayout L = kv_dev_layout(s.head_dim, spec);
  const int hd = s.head_dim, G = L.G, nkv = s.n_head_kv;
  // rows per head, f16, as the residual ring holds them: [head][G][hd]
  std::vector<uint16_t> rk((size_t)nkv * G * hd), rv(rk.size());
  for (int h = 0; h < nkv; h++)
    for (int j = 0; j < G; j++)
      for (int c = 0; c < hd; c++) {
        const size_t src = ((size_t)j * nkv + h) * hd + c, dst = ((size_t)h * G + j) * hd + c;
        rk[dst] = f32_to_f16(k[src]);
        rv[dst] = f32_to_f16(v[src]);
      }
  std::vector<uint8_t> out((size_t)nkv * L.image_bytes);
  if (on_host) {
    std::vector<uint8_t> rec((size_t)L.block_bytes);
    for (int h = 0; h < nkv; h++) {
      const uint16_t* K = rk.data() + (size_t)h * G * hd;
      const uint16_t* V = rv.data() + (size_t)h * G * hd;
      std::fill(rec.begin(), rec.end(), 0);
      for (int c = 0; c < hd; c++) kvd_quantize_key_channel(L, KvRingColumn{K, hd, c, 0, G}, c, rec.data());
      for (int j = 0; j < G; j++) kvd_quantize_value_row(L, KvRow{V + (size_t)j * hd}, j, rec.data());
      std::memcpy(out.data() + (size_t)h * L.image_bytes, rec.data(), (size_t)L.image_bytes);
    }
    return out;
  }
  require_device_kv();
  // blocks [guard][head 0][head 1]...[guard], guards and padding filled with a sentinel byte
  const size_t guard = 256, span = (size_t)nkv * L.block_bytes;
  std::vector<uint8_t> blocks(span + 2 * guard, 0xA5);
  DeviceBuffer db(blocks.size(), "test blocks"), dk(rk.size() * 2, "test keys"), dv(rv.size() * 2, "test values");
  cuda_check(cudaMemcpy(db.get(), blocks.data(), blocks.size(), cudaMemcpyHostToDevice), "upload");
  cuda_check(cudaMemcpy(dk.get(), rk.data(), rk.size() * 2, cudaMemcpyHostToDevice), "upload");
  cuda_check(cudaMemcpy(dv.get(), rv.data(), rv.size() * 2, cudaMemcpyHostToDevice), "upload");
  launch_kv_quantize(L, db.get<uint8_t>() + guard, dk.get<__half>(), dv.get<__half>(), 1, nkv, 1, G, 0, 1, 0);
  cuda_check(cudaDeviceSynchronize(), "kv_quantize");
  cuda_check(cudaMemcpy(blocks.data(), db.get(), blocks.size(), cudaMemcpyDeviceToHost), "download");
  for (size_t i = 0; i < guard; i++)
    LKV_CHECK(blocks[i] == 0xA5 && blocks[guard + span + i] == 0xA5, "kv_quantize wrote outside its blocks (guard changed)");
  for (int h = 0; h < nkv; h++) {
    const uint8_t* rec = blocks.data() + guard + (size_t)h * L.block_bytes;
    for (int i = L.image_bytes; i < L.block_bytes; i++) LKV_CHECK(rec[i] == 0xA5, "kv_quantize wrote into a block's padding");
    std::memcpy(out.data() + (size_t)h * L.image_bytes, rec, (size_t)L.image_bytes);
  }
  return out;
}

void kv_decode_on_host(const KvShape& s, const std::string& spec_text, const std::string& payload, int layer, int head,
                       std::vector<int>& pos, std::vector<float>& k, std::vector<float>& v) {
  const KvSpec spec = device_spec(spec_text, s.head_dim);
  const KvDevLayout L = kv_dev_layout(s.head_dim, spec);
  std::istringstream in(payload);
  const KvImage im = kv_parse_payload(s, spec, kv_spec_string(spec), L, in);
  const int hd = s.head_dim;
  const size_t h = (size_t)layer * s.n_head_kv + head;
  pos.clear();
  k.clear();
  v.clear();
  for (size_t b = 0; b < im.ids.size(); b++) {
    const uint8_t* rec = im.blocks[h].data() + b * L.image_bytes;
    for (int j = 0; j < L.G; j++) {
      pos.push_back((int)b * L.G + j);
      for (int c = 0; c < hd; c++) k.push_back(kvd_key(L, rec, j, c));
      for (int c = 0; c < hd; c++) v.push_back(kvd_value(L, rec, j, c));
    }
  }
  for (int p = im.res0; p < im.n_tokens; p++) {
    pos.push_back(p);
    const size_t r = (size_t)(p - im.res0) * hd;
    for (int c = 0; c < hd; c++) k.push_back(f16_to_f32(im.rk[h][r + c]));
    for (int c = 0; c < hd; c++) v.push_back(f16_to_f32(im.rv[h][r + c]));
  }
}

void kv_attention(const KvShape& s, const std::string& spec_text, const std::string& payload, int pos, int n, const float* q,
                  float* out, size_t guard, int n_splits) {
  require_device_kv();
  const KvSpec spec = device_spec(spec_text, s.head_dim);
  const int hd = s.head_dim;
  KvShape one = s;
  one.n_layer = 1;
  CudaKvStore store(one, spec, 1);
  std::istringstream in(payload);
  store.load(in);
  LKV_CHECK(pos >= 0 && n > 0 && pos + n <= store.n_tokens(), "kv_attention: queries [%d, %d) need keys up to %d", pos, pos + n,
            store.n_tokens());
  store.poison_unused();
  const AttnShape a{s.n_head, s.n_head_kv, hd, s.n_ctx};
  check_attention_shape(a);
  if (n_splits <= 0) {
    int sms = 0;
    cuda_check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "cudaDeviceGetAttribute");
    n_splits = attention_splits(a, n, sms);
  }
  const size_t nq = (size_t)n * s.n_head * hd, no = nq + 2 * guard;
  DeviceBuffer dq(nq * 4, "q"), dpos(4, "pos"), dout(no * 4, "out");
  DeviceBuffer part(std::max<size_t>(attention_partial_floats(a, n, n_splits), 1) * 4, "attention workspace");
  cuda_check(cudaMemcpy(dq.get(), q, nq * 4, cudaMemcpyHostToDevice), "upload");
  cuda_check(cudaMemcpy(dpos.get(), &pos, 4, cudaMemcpyHostToDevice), "upload");
  cuda_check(cudaMemcpy(dout.get(), out - guard, no * 4, cudaMemcpyHostToDevice), "upload");
  float* o = dout.get<float>() + guard;
  launch_kv_attention(a, store.view(0), dpos.get<int>(), n, dq.get<float>(), o, part.get<float>(), n_splits, spec.rotate, 0);
  cuda_check(cudaDeviceSynchronize(), "kv_attention");
  cuda_check(cudaMemcpy(out - guard, dout.get(), no * 4, cudaMemcpyDeviceToHost), "download");
}

std::string kv_payload_on_host(const KvShape& s, const std::string& spec_text, const std::string& payload, KvStats* stats) {
  const KvSpec spec = device_spec(spec_text, s.head_dim);
  const KvDevLayout L = kv_dev_layout(s.head_dim, spec);
  const std::string spec_str = kv_spec_string(spec);
  std::istringstream in(payload);
  const KvImage im = kv_parse_payload(s, spec, spec_str, L, in);
  if (stats) *stats = kv_image_stats(s, spec, spec_str, L, (int)im.ids.size(), im.n_tokens);
  std::ostringstream out;
  kv_write_payload(s, spec_str, L, im, out);
  return out.str();
}

std::string kv_payload_roundtrip(const KvShape& s, const std::string& spec_text, const std::string& payload) {
  require_device_kv();
  const KvSpec spec = device_spec(spec_text, s.head_dim);
  CudaKvStore store(s, spec, 1);
  std::istringstream in(payload);
  store.load(in);
  std::ostringstream out;
  store.save(out);
  return out.str();
}

}  // namespace cuda_ops

}  // namespace lkv
