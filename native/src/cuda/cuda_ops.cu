// cuda_ops.cu — host-pointer wrappers of each kernel (cuda_ops.h) for test_cuda and benchmarks.
// Slow on purpose (fresh uploads, one synchronizing call each): they exist to compare kernels
// with the CPU references, not to run models.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda_backend.h"
#include "cuda_kernels.cuh"

namespace lkv {
namespace cuda_ops {

namespace {

void require_device() {
  std::string why;
  if (!cuda_usable(&why)) throw Error("CUDA backend unavailable: " + why);
  cuda_check(cudaSetDevice(0), "cudaSetDevice");
}

template <typename T>
DeviceBuffer upload(const T* p, size_t n, const char* what) {
  DeviceBuffer b(std::max<size_t>(n, 1) * sizeof(T), what);
  if (n) cuda_check(cudaMemcpy(b.get(), p, n * sizeof(T), cudaMemcpyHostToDevice), what);
  return b;
}

template <typename T>
void download(T* p, const DeviceBuffer& b, size_t n, const char* what) {
  cuda_check(cudaDeviceSynchronize(), what);
  if (n) cuda_check(cudaMemcpy(p, b.get(), n * sizeof(T), cudaMemcpyDeviceToHost), what);
}

int sm_count() {
  int n = 0;
  cuda_check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, 0), "cudaDeviceGetAttribute");
  return n;
}

}  // namespace

void matmul(const WeightView& W, const float* x, int n_tok, float* y, size_t guard, bool accumulate, MatmulPath path) {
  require_device();
  LKV_CHECK(guard % 4 == 0, "guard must keep outputs 16-byte aligned");
  DeviceBuffer store;
  const DevMatrix m = upload_matrix(W, store, "test matrix");
  DeviceBuffer dx = upload(x, (size_t)n_tok * W.cols, "x");
  const size_t ny = (size_t)n_tok * W.rows + 2 * guard;
  DeviceBuffer dy = upload(y - guard, ny, "y");
  launch_matmul(m, dx.get<float>(), n_tok, dy.get<float>() + guard, accumulate, 0, path);
  download(y - guard, dy, ny, "matmul");
}

void get_rows(const WeightView& W, const int32_t* ids, int n, float* out, size_t guard) {
  require_device();
  LKV_CHECK(guard % 4 == 0, "guard must keep outputs 16-byte aligned");
  for (int i = 0; i < n; i++) LKV_CHECK(ids[i] >= 0 && ids[i] < W.rows, "get_rows: row %d out of range", ids[i]);
  DeviceBuffer store;
  const DevMatrix m = upload_matrix(W, store, "test matrix");
  DeviceBuffer di = upload(ids, (size_t)n, "ids");
  const size_t no = (size_t)n * W.cols + 2 * guard;
  DeviceBuffer dout = upload(out - guard, no, "out");
  launch_get_rows(m, di.get<int32_t>(), n, dout.get<float>() + guard, 0);
  download(out - guard, dout, no, "get_rows");
}

void rmsnorm(float* out, const float* x, const float* w, int rows, int d, float eps, size_t guard) {
  require_device();
  DeviceBuffer dx = upload(x, (size_t)rows * d, "x"), dw = upload(w, (size_t)d, "w");
  const size_t no = (size_t)rows * d + 2 * guard;
  DeviceBuffer dout = upload(out - guard, no, "out");
  launch_rmsnorm(dout.get<float>() + guard, dx.get<float>(), dw.get<float>(), rows, d, eps, 0);
  download(out - guard, dout, no, "rmsnorm");
}

void silu_mul(float* gate, const float* up, int n, size_t guard) {
  require_device();
  DeviceBuffer du = upload(up, (size_t)n, "up");
  DeviceBuffer dg = upload(gate - guard, (size_t)n + 2 * guard, "gate");
  launch_silu_mul(dg.get<float>() + guard, du.get<float>(), n, 0);
  download(gate - guard, dg, (size_t)n + 2 * guard, "silu_mul");
}

void rope_store(const LlamaConfig& c, int n_ctx, int pos, int n, float* q, const float* k, const float* v,
                uint16_t* k_cache, uint16_t* v_cache) {
  require_device();
  LKV_CHECK(pos >= 0 && pos + n <= n_ctx, "rope_store: positions [%d, %d) outside the cache of %d", pos, pos + n, n_ctx);
  const std::vector<double> inv = rope_inv_freq(c);
  const size_t nq = (size_t)n * c.n_head * c.head_dim, nk = (size_t)n * c.n_head_kv * c.head_dim;
  const size_t nc = (size_t)c.n_head_kv * n_ctx * c.head_dim;
  DeviceBuffer dinv = upload(inv.data(), inv.size(), "inv_freq"), dpos = upload(&pos, 1, "pos");
  DeviceBuffer dq = upload(q, nq, "q"), dk = upload(k, nk, "k"), dv = upload(v, nk, "v");
  DeviceBuffer dkc = upload(k_cache, nc, "k_cache"), dvc = upload(v_cache, nc, "v_cache");
  const RopeShape r{dinv.get<double>(), c.head_dim, c.n_head, c.n_head_kv, n_ctx};
  launch_rope_store(r, dpos.get<int>(), n, dq.get<float>(), dk.get<float>(), dv.get<float>(), dkc.get<__half>(),
                    dvc.get<__half>(), 0);
  download(q, dq, nq, "rope_store");
  download(k_cache, dkc, nc, "rope_store");
  download(v_cache, dvc, nc, "rope_store");
}

void matvec_qkv(const LlamaConfig& c, const WeightView& wq, const WeightView& wk, const WeightView& wv, const float* x,
                int n_tok, const float* norm_w, int n_ctx, int pos, float* q_out, size_t guard, uint16_t* k_cache,
                uint16_t* v_cache) {
  require_device();
  LKV_CHECK(pos >= 0 && pos + n_tok <= n_ctx, "matvec_qkv: positions [%d, %d) outside the cache of %d", pos, pos + n_tok, n_ctx);
  LKV_CHECK(guard % 4 == 0, "guard must keep outputs 16-byte aligned");
  const std::vector<double> inv = rope_inv_freq(c);
  DeviceBuffer sq, sk, sv;
  MvSeg seg[3];
  seg[0].W = upload_matrix(wq, sq, "wq");
  seg[1].W = upload_matrix(wk, sk, "wk");
  seg[2].W = upload_matrix(wv, sv, "wv");
  const size_t nq = (size_t)n_tok * wq.rows + 2 * guard, nc = (size_t)c.n_head_kv * n_ctx * c.head_dim;
  DeviceBuffer dx = upload(x, (size_t)n_tok * wq.cols, "x"), dw = upload(norm_w, (size_t)wq.cols, "norm");
  DeviceBuffer dinv = upload(inv.data(), inv.size(), "inv_freq"), dpos = upload(&pos, 1, "pos");
  DeviceBuffer dq = upload(q_out - guard, nq, "q"), dkc = upload(k_cache, nc, "k_cache"), dvc = upload(v_cache, nc, "v_cache");
  const RopeShape r{dinv.get<double>(), c.head_dim, c.n_head, c.n_head_kv, n_ctx};
  seg[0].y = dq.get<float>() + guard;
  seg[0].out = MvOut::RopeQ;
  seg[1].cache = dkc.get<__half>();
  seg[1].out = MvOut::RopeStoreK;
  seg[2].cache = dvc.get<__half>();
  seg[2].out = MvOut::StoreV;
  MvInput in;
  in.x = dx.get<float>();
  in.n_tok = n_tok;
  in.norm_w = dw.get<float>();
  in.eps = c.rms_eps;
  in.rope = &r;
  in.pos = dpos.get<int>();
  launch_matvec_fused(seg, 3, in, 0);
  download(q_out - guard, dq, nq, "matvec_qkv");
  download(k_cache, dkc, nc, "matvec_qkv");
  download(v_cache, dvc, nc, "matvec_qkv");
}

void matvec_swiglu(const WeightView& gate, const WeightView& up, const float* x, int n_tok, const float* norm_w, float eps,
                   float* out, size_t guard) {
  require_device();
  LKV_CHECK(guard % 4 == 0, "guard must keep outputs 16-byte aligned");
  DeviceBuffer sg, su;
  MvSeg seg[2];
  seg[0].W = upload_matrix(gate, sg, "gate");
  seg[1].W = upload_matrix(up, su, "up");
  const size_t no = (size_t)n_tok * gate.rows + 2 * guard;
  DeviceBuffer dx = upload(x, (size_t)n_tok * gate.cols, "x"), dw = upload(norm_w, (size_t)gate.cols, "norm");
  DeviceBuffer dout = upload(out - guard, no, "out"), dup((size_t)n_tok * up.rows * 4, "up scratch");
  seg[0].y = dout.get<float>() + guard;
  seg[0].out = MvOut::SwiGLU;
  seg[1].y = dup.get<float>();
  MvInput in;
  in.x = dx.get<float>();
  in.n_tok = n_tok;
  in.norm_w = dw.get<float>();
  in.eps = eps;
  launch_matvec_fused(seg, 2, in, 0);
  download(out - guard, dout, no, "matvec_swiglu");
}

void attention(const KvShape& s, int pos, int n, const float* q, const float* k, const float* v, int n_kv, float* out,
               size_t guard, int n_splits) {
  require_device();
  LKV_CHECK(pos >= 0 && n > 0 && pos + n <= n_kv, "attention: queries [%d, %d) need keys up to %d", pos, pos + n, n_kv);
  // the cache has room past n_kv, filled with NaN: a kernel that reads a position it may not see
  // turns its output into NaN
  const int hd = s.head_dim, cap = n_kv + 37;
  const AttnShape a{s.n_head, s.n_head_kv, hd, cap};
  check_attention_shape(a);
  std::vector<uint16_t> kc((size_t)s.n_head_kv * cap * hd, 0x7E00), vc(kc.size(), 0x7E00);
  for (int j = 0; j < n_kv; j++)
    for (int h = 0; h < s.n_head_kv; h++)
      for (int c = 0; c < hd; c++) {
        const size_t src = ((size_t)j * s.n_head_kv + h) * hd + c, dst = ((size_t)h * cap + j) * hd + c;
        kc[dst] = f32_to_f16(k[src]);
        vc[dst] = f32_to_f16(v[src]);
      }
  if (n_splits <= 0) n_splits = attention_splits(a, n, sm_count());
  DeviceBuffer dkc = upload(kc.data(), kc.size(), "k_cache"), dvc = upload(vc.data(), vc.size(), "v_cache");
  DeviceBuffer dq = upload(q, (size_t)n * s.n_head * hd, "q"), dpos = upload(&pos, 1, "pos");
  DeviceBuffer part((std::max<size_t>(attention_partial_floats(a, n, n_splits), 1)) * 4, "attention workspace");
  const size_t no = (size_t)n * s.n_head * hd + 2 * guard;
  DeviceBuffer dout = upload(out - guard, no, "out");
  launch_attention(a, dpos.get<int>(), n, dq.get<float>(), dkc.get<__half>(), dvc.get<__half>(), dout.get<float>() + guard,
                   part.get<float>(), n_splits, 0);
  download(out - guard, dout, no, "attention");
}

int32_t argmax(const float* x, int n) {
  require_device();
  DeviceBuffer dx = upload(x, (size_t)n, "x"), dout(4, "out"), work(argmax_work_bytes(), "arg-max workspace");
  cuda_check(cudaMemset(work.get(), 0, work.bytes()), "arg-max workspace");
  launch_argmax(dx.get<float>(), n, dout.get<int32_t>(), work.get(), 0);
  int32_t r = -1;
  download(&r, dout, 1, "argmax");
  // the workspace is left as it was found (the next launch relies on it)
  unsigned done = 1;
  download(&done, work, 1, "argmax");
  LKV_CHECK(done == 0, "argmax: the workspace counter was left at %u", done);
  return r;
}

void dequantize_on_host(const WeightView& W, float* out) {
  check_dev_matrix_shape(W, "matrix");
  const size_t qrb = dev_q_row_bytes(W.type, W.cols), drb = dev_d_row_bytes(W.type, W.cols);
  std::vector<uint8_t> q(qrb * W.rows), d(drb * W.rows);
  repack_rows(W, 0, W.rows, q.data(), drb ? d.data() : nullptr);
  DevMatrix m;
  m.type = W.type;
  m.rows = (int)W.rows;
  m.cols = (int)W.cols;
  m.q = q.data();
  m.q_stride = qrb;
  m.d = drb ? (const uint16_t*)d.data() : nullptr;
  dispatch_type(W.type, [&](auto t) {
    for (int r = 0; r < m.rows; r++)
      for (int c = 0; c < m.cols; c += 8) dequant8<decltype(t)::value>(m, r, c, out + (size_t)r * m.cols + c);
  });
}

double copy_bandwidth_gbs(size_t bytes) {
  require_device();
  DeviceBuffer a(bytes, "copy benchmark"), b(bytes, "copy benchmark");
  cuda_check(cudaMemset(a.get(), 1, bytes), "memset");
  cudaEvent_t e0, e1;
  cuda_check(cudaEventCreate(&e0), "cudaEventCreate");
  cuda_check(cudaEventCreate(&e1), "cudaEventCreate");
  float best_ms = 1e30f;
  for (int rep = 0; rep < 6; rep++) {  // the first is a warm-up
    cudaEventRecord(e0, 0);
    cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, 0);
    cudaEventRecord(e1, 0);
    cuda_check(cudaEventSynchronize(e1), "copy benchmark");
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (rep > 0) best_ms = std::min(best_ms, ms);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * bytes / (best_ms * 1e-3) / 1e9;
}

}  // namespace cuda_ops
}  // namespace lkv
