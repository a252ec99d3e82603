// cuda_ops.h — each CUDA kernel behind a host-pointer call, for the test harness (test_cuda.cpp)
// and benchmarks: inputs are uploaded, one kernel runs on device 0, outputs come back. Every
// output buffer is passed with `guard` extra elements on each side (out[-guard .. n+guard)); the
// whole span goes to the device and back, so a kernel that writes out of bounds shows up as a
// changed guard. In builds without CUDA every call throws Error("built without CUDA").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../kernels.h"
#include "../kv_cache.h"
#include "../model.h"

namespace lkv {
namespace cuda_ops {

enum class MatmulPath { Auto, Vector, Tiled };  // Auto: as the engine picks (vector for n_tok <= 4)

// y[t*W.rows + r] (=, or += with accumulate) sum_c W[r][c] * x[t*W.cols + c]
void matmul(const WeightView& W, const float* x, int n_tok, float* y, size_t guard, bool accumulate, MatmulPath path);
// out[i*W.cols + c] = W[ids[i]][c]
void get_rows(const WeightView& W, const int32_t* ids, int n, float* out, size_t guard);
// out[r*d + i] = x[r*d + i] / sqrt(mean_i(x[r]^2) + eps) * w[i]
void rmsnorm(float* out, const float* x, const float* w, int rows, int d, float eps, size_t guard);
// gate[i] = silu(gate[i]) * up[i]
void silu_mul(float* gate, const float* up, int n, size_t guard);
// RoPE of q [n][n_head][hd] in place and of k [n][n_head_kv][hd], then k and v stored as f16 at
// positions [pos, pos+n) of a cache [n_head_kv][n_ctx][hd]. k_cache/v_cache hold the whole cache
// (initial contents uploaded, final contents returned).
void rope_store(const LlamaConfig& c, int n_ctx, int pos, int n, float* q, const float* k, const float* v,
                uint16_t* k_cache, uint16_t* v_cache);
// Attention of n queries at positions [pos, pos+n) over n_kv cached positions whose keys and
// values are given as floats [n_kv][n_head_kv*hd] (rounded to f16 on the way in, as the cache
// stores them). n_splits: 0 = as the engine picks; otherwise the number of key ranges per query.
void attention(const KvShape& s, int pos, int n, const float* q, const float* k, const float* v, int n_kv, float* out,
               size_t guard, int n_splits);
int32_t argmax(const float* x, int n);
// The decode step's fused products (launch_matvec_fused) with the RMSNorm of x (norm_w, c.rms_eps)
// inside: q/k/v of n_tok tokens at positions [pos, pos+n_tok) in one call, q roped into q_out
// [n_tok][n_head*hd] (with `guard`), k roped and v stored as f16 into k_cache/v_cache
// ([n_head_kv][n_ctx][hd]; the whole caches go up and come back).
void matvec_qkv(const LlamaConfig& c, const WeightView& wq, const WeightView& wk, const WeightView& wv, const float* x,
                int n_tok, const float* norm_w, int n_ctx, int pos, float* q_out, size_t guard, uint16_t* k_cache,
                uint16_t* v_cache);
// out [n_tok][gate.rows] = silu(gate xn) * (up xn), xn = RMSNorm(x; norm_w, eps), in one call
void matvec_swiglu(const WeightView& gate, const WeightView& up, const float* x, int n_tok, const float* norm_w, float eps,
                   float* out, size_t guard);
// Runs on the CPU, no device needed: W rewritten into the device layout and read back through
// the kernels' decoder (dequant8, compiled for the host too), out [rows][cols]. Lets a machine
// without a GPU check the layout and decoding of every format against dequantize_row_ref.
void dequantize_on_host(const WeightView& W, float* out);
// Device-to-device copy of a buffer of `bytes`, best of a few: (bytes read + bytes written) / s.
double copy_bandwidth_gbs(size_t bytes);

// ---- the compressed KV cache (cuda_kv.cu; specs cuda_holds_kv accepts, not f16) ----
// One block of G = spec's group rows per KV head: k, v [G][n_head_kv*hd], rounded to f16 on the
// way in (the residual window holds f16) and quantized -> per head the block image (key params |
// key codes | value params | value codes, kv_formats.h's bytes), heads one after another.
// on_host: the same quantizer code compiled for and run on the CPU (needs a CUDA build, no GPU);
// otherwise the kernel on device 0, which also checks that nothing outside the block was written.
std::vector<uint8_t> kv_quantize_block(const KvShape& s, const std::string& spec, const float* k, const float* v, bool on_host);
// Runs on the CPU: the rows of (layer, head) held in `payload` (a CPU compressed cache's save()
// bytes) read through the device layout and the kernels' decoder, positions ascending, still
// rotated when the spec rotates: pos [n], k and v [n][hd].
void kv_decode_on_host(const KvShape& s, const std::string& spec, const std::string& payload, int layer, int head,
                       std::vector<int>& pos, std::vector<float>& k, std::vector<float>& v);
// Attention of n queries at positions [pos, pos+n) (q, out: [n][n_head*hd], unrotated) over layer
// 0 of the state in `payload`, loaded into a device store whose unused blocks and residual slots
// are filled with NaN. n_splits as in attention().
void kv_attention(const KvShape& s, const std::string& spec, const std::string& payload, int pos, int n, const float* q,
                  float* out, size_t guard, int n_splits);
// Runs on the CPU: the payload parsed into the device store's image and written back (must be the
// same bytes), and the accounting the device store reports for it (must equal the CPU cache's).
std::string kv_payload_on_host(const KvShape& s, const std::string& spec, const std::string& payload, KvStats* stats);
// The payload loaded into a device store and saved back (must be the same bytes).
std::string kv_payload_roundtrip(const KvShape& s, const std::string& spec, const std::string& payload);

}  // namespace cuda_ops
}  // namespace lkv
