// cuda_engine.cu — the CUDA backend proper: device checks (cuda_usable), the model's weights on the
// device (CudaModelImpl) and a session with its KV cache (f16, or compressed: cuda_kv.cuh) and
// scratch (CudaSessionImpl) whose forward_chunk mirrors forward.cpp op by op. Per decoded token only the token id goes up and,
// when asked for, the logits (or their arg-max) come down.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <istream>
#include <ostream>

#include "cuda_backend.h"
#include "cuda_kernels.cuh"
#include "cuda_kv.cuh"

namespace lkv {

namespace {

__global__ void probe_kernel() {}

// The real architectures this build has code for (nvcc lists them, e.g. 800,860,890,900).
std::vector<int> built_archs() {
  std::vector<int> v = {__CUDA_ARCH_LIST__};
  std::sort(v.begin(), v.end());
  return v;
}

std::string archs_text() {
  std::string s;
  for (int a : built_archs()) s += (s.empty() ? "sm_" : ", sm_") + std::to_string(a / 10);
  return s;
}

std::string describe_device(int dev, int* sm_count) {
  cudaDeviceProp p;
  cuda_check(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  if (sm_count) *sm_count = p.multiProcessorCount;
  return strprintf("%s, sm_%d%d, %d SMs, %zu GiB", p.name, p.major, p.minor, p.multiProcessorCount, p.totalGlobalMem >> 30);
}

// The checks behind cuda_usable, run once per process (the answer does not change while it runs).
bool check_device(std::string& w) {
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  if (driver == 0) {
    w = "no NVIDIA driver is installed (the CUDA backend needs one)";
    return false;
  }
  if (driver / 1000 < runtime / 1000) {
    w = strprintf("the NVIDIA driver supports CUDA %d.%d, this build needs CUDA %d.x: update the driver", driver / 1000,
                  driver % 1000 / 10, runtime / 1000);
    return false;
  }
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    w = err == cudaErrorInsufficientDriver
            ? strprintf("the NVIDIA driver (CUDA %d.%d) is too old for this build (CUDA %d.%d): update the driver",
                        driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10)
            : std::string("no CUDA device") + (err != cudaSuccess ? std::string(": ") + cudaGetErrorString(err) : "");
    return false;
  }
  cudaDeviceProp p;
  err = cudaGetDeviceProperties(&p, 0);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    w = std::string("CUDA device 0 could not be queried: ") + cudaGetErrorString(err);
    return false;
  }
  const int cc = p.major * 10 + p.minor, oldest = built_archs().front() / 10;
  if (cc < oldest) {
    w = strprintf("%s (sm_%d) is too old for this build, which runs on %s and newer (rebuild with -DLLAMAKV_CUDA_ARCHS=%d)",
                  p.name, cc, archs_text().c_str(), cc);
    return false;
  }
  cudaFuncAttributes attr;
  err = cudaFuncGetAttributes(&attr, probe_kernel);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    w = strprintf("%s (sm_%d) cannot run this build's kernels (built for %s): %s", p.name, cc, archs_text().c_str(),
                  cudaGetErrorString(err));
    return false;
  }
  w = describe_device(0, nullptr);
  return true;
}

}  // namespace

bool cuda_usable(std::string* why) {
  static std::string message;
  static const bool usable = check_device(message);
  if (why) *why = message;
  return usable;
}

namespace {

constexpr int kCpuKeyTile = 64;  // kv_cache.cpp stores keys in tiles of 64 positions: its save format

struct DevLayer {
  const float* attn_norm;  // [n_embd]
  DevMatrix wq, wk, wv, wo;
  const float* ffn_norm;   // [n_embd]
  DevMatrix w_gate, w_up, w_down;
};

class CudaModelImpl final : public CudaModel, public std::enable_shared_from_this<CudaModelImpl> {
 public:
  explicit CudaModelImpl(const Model& m);
  std::unique_ptr<CudaSession> new_session(int n_ctx, const std::string& kv_spec, const CudaSessionOptions& opt) override;
  std::string device() const override { return device_name; }
  int64_t weight_bytes() const override { return weight_bytes_; }
  int64_t decode_bytes(int context) const override {
    return decode_weight_bytes_ + (int64_t)context * cfg.n_layer * cfg.n_head_kv * cfg.head_dim * 2 * 2;
  }

  LlamaConfig cfg;
  int sm_count = 0;
  std::string device_name;
  DevMatrix tok_embd, output;  // the same when the output is tied
  const float* output_norm = nullptr;
  std::vector<DevLayer> layers;
  const double* rope_inv_freq = nullptr;  // [head_dim/2]

 private:
  DevMatrix matrix(const WeightView& W, const char* what) {
    store_.emplace_back();
    DevMatrix d = upload_matrix(W, store_.back(), what);
    weight_bytes_ += (int64_t)store_.back().bytes();
    return d;
  }
  template <typename T>
  const T* array(const std::vector<T>& v, const char* what) {
    store_.emplace_back(v.size() * sizeof(T), what);
    cuda_check(cudaMemcpy(store_.back().get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), what);
    weight_bytes_ += (int64_t)store_.back().bytes();
    return store_.back().get<T>();
  }

  std::vector<DeviceBuffer> store_;  // every allocation of the model
  int64_t weight_bytes_ = 0, decode_weight_bytes_ = 0;
};

CudaModelImpl::CudaModelImpl(const Model& m) : cfg(m.cfg) {
  std::string why;
  if (!cuda_usable(&why)) throw Error("CUDA backend unavailable: " + why);
  cuda_check(cudaSetDevice(0), "cudaSetDevice");
  device_name = describe_device(0, &sm_count);
  const LlamaConfig& c = cfg;
  check_attention_shape(AttnShape{c.n_head, c.n_head_kv, c.head_dim, 1});
  LKV_CHECK(c.n_embd % 32 == 0 && c.n_ff % 32 == 0, "CUDA backend: width %d and feed-forward size %d must be multiples of 32",
            c.n_embd, c.n_ff);

  // refuse early, with the numbers, when the weights cannot fit
  auto dev_bytes = [](const WeightView& W) { return (dev_q_row_bytes(W.type, W.cols) + dev_d_row_bytes(W.type, W.cols)) * W.rows; };
  size_t need = dev_bytes(m.tok_embd) + (m.output.data == m.tok_embd.data ? 0 : dev_bytes(m.output));
  for (const LayerWeights& L : m.layers)
    for (const WeightView* W : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) need += dev_bytes(*W);
  size_t free_b = 0, total_b = 0;
  cuda_check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  if (need > free_b)
    throw Error(strprintf("CUDA out of memory: the model's weights need %.1f MiB, %.1f MiB of %.1f MiB are free on %s",
                          need / 1048576.0, free_b / 1048576.0, total_b / 1048576.0, device_name.c_str()));

  tok_embd = matrix(m.tok_embd, "token_embd.weight");
  output = m.output.data == m.tok_embd.data ? tok_embd : matrix(m.output, "output.weight");
  output_norm = array(m.output_norm, "output_norm.weight");
  decode_weight_bytes_ = (int64_t)(dev_q_row_bytes(output.type, output.cols) + dev_d_row_bytes(output.type, output.cols)) * output.rows;
  for (size_t l = 0; l < m.layers.size(); l++) {
    const LayerWeights& L = m.layers[l];
    const int64_t before = weight_bytes_;
    DevLayer d;
    d.attn_norm = array(L.attn_norm, "attn_norm.weight");
    d.wq = matrix(L.wq, "attn_q.weight");
    d.wk = matrix(L.wk, "attn_k.weight");
    d.wv = matrix(L.wv, "attn_v.weight");
    d.wo = matrix(L.wo, "attn_output.weight");
    d.ffn_norm = array(L.ffn_norm, "ffn_norm.weight");
    d.w_gate = matrix(L.w_gate, "ffn_gate.weight");
    d.w_up = matrix(L.w_up, "ffn_up.weight");
    d.w_down = matrix(L.w_down, "ffn_down.weight");
    layers.push_back(d);
    decode_weight_bytes_ += weight_bytes_ - before;
  }
  rope_inv_freq = array(lkv::rope_inv_freq(c), "rope frequencies");
}

class CudaSessionImpl final : public CudaSession {
 public:
  // kv_spec: "f16" (also "off" or empty) or a compressed spec cuda_holds_kv accepts.
  CudaSessionImpl(std::shared_ptr<const CudaModelImpl> m, int n_ctx, const std::string& kv_spec, const CudaSessionOptions& opt);
  ~CudaSessionImpl() override;
  void eval(const int32_t* tokens, int n, bool want_logits, const std::atomic<bool>* cancel,
            const std::function<void(int, int)>& progress) override;
  const std::vector<float>& logits() override;
  int32_t argmax() override;
  int n_tokens() const override { return n_tokens_; }
  int n_ctx() const override { return n_ctx_; }
  void truncate(int n) override {
    LKV_CHECK(n >= 0 && n <= n_tokens_, "truncate: %d is outside [0, %d]", n, n_tokens_);
    if (ckv_) ckv_->truncate(n);
    n_tokens_ = n;
    logits_valid_ = false;
  }
  int64_t kv_bytes() const override { return ckv_ ? ckv_->stats().bytes : (int64_t)n_tokens_ * kv_bytes_per_pos(); }
  std::string kv_spec() const override { return ckv_ ? ckv_->spec_string() : std::string("f16"); }
  KvStats kv_stats() const override;
  void save_kv(std::ostream& out) const override;
  void load_kv(std::istream& in) override;

 private:
  void forward_chunk(int n, bool want_logits);  // enqueues; positions start at step_[0]
  void capture_step_graph();
  int64_t kv_bytes_per_pos() const { return (int64_t)m_->cfg.n_layer * m_->cfg.n_head_kv * m_->cfg.head_dim * 2 * 2; }
  __half* k_head(int layer, int h) const { return kc_.get<__half>() + ((size_t)layer * attn_.n_head_kv + h) * n_ctx_ * attn_.head_dim; }
  __half* v_head(int layer, int h) const { return vc_.get<__half>() + ((size_t)layer * attn_.n_head_kv + h) * n_ctx_ * attn_.head_dim; }

  std::shared_ptr<const CudaModelImpl> m_;
  int n_ctx_, chunk_, n_tokens_ = 0;
  bool graphs_;
  bool fused_ = true;  // the fused decode products (LLAMAKV_CUDA_FUSED=0: the separate kernels, as prefill)
  std::unique_ptr<CudaKvStore> ckv_;  // the compressed cache (null: the f16 cache kc_/vc_)
  uint64_t graph_gen_ = 0;            // ckv_'s generation when graph_ was recorded
  AttnShape attn_;
  RopeShape rope_;
  cudaStream_t stream_ = nullptr;
  cudaGraphExec_t graph_ = nullptr;  // one decode step with logits, recorded at the first use
  int32_t* h_step_ = nullptr;        // pinned: [0] position, [1..chunk] tokens, [chunk+1] arg-max of the logits
  // device state: f16 KV cache [n_layer][n_head_kv][n_ctx][head_dim] (unless compressed), and
  // scratch [chunk][...]
  DeviceBuffer kc_, vc_;
  DeviceBuffer step_;                // int32 [1 + chunk]: position, tokens
  DeviceBuffer x_, xb_;              // [chunk][n_embd] residual stream, normed input
  DeviceBuffer q_, k_, v_, att_;     // [chunk][n_head*hd], [chunk][n_head_kv*hd] x2, [chunk][n_head*hd]
  DeviceBuffer gate_, up_;           // [chunk][n_ff]
  DeviceBuffer logits_, part_, best_;  // [n_vocab], attention workspace, int32
  DeviceBuffer argmax_work_;           // launch_argmax's workspace (zeroed once)
  std::vector<float> logits_host_;
  bool logits_valid_ = false, logits_fresh_ = false;
};

CudaSessionImpl::CudaSessionImpl(std::shared_ptr<const CudaModelImpl> m, int n_ctx, const std::string& kv_spec,
                                 const CudaSessionOptions& opt)
    : m_(std::move(m)), n_ctx_(n_ctx), chunk_(std::max(1, opt.chunk)), graphs_(opt.graphs) {
  const LlamaConfig& c = m_->cfg;
  LKV_CHECK(n_ctx > 0 && n_ctx <= (1 << 24), "context size %d is out of range", n_ctx);
  if (const char* e = std::getenv("LLAMAKV_CUDA_GRAPHS")) graphs_ = graphs_ && std::strcmp(e, "0") != 0;
  if (const char* e = std::getenv("LLAMAKV_CUDA_FUSED")) fused_ = std::strcmp(e, "0") != 0;
  attn_ = AttnShape{c.n_head, c.n_head_kv, c.head_dim, n_ctx};
  check_attention_shape(attn_);
  rope_ = RopeShape{m_->rope_inv_freq, c.head_dim, c.n_head, c.n_head_kv, n_ctx};
  cuda_check(cudaSetDevice(0), "cudaSetDevice");

  const size_t kv_elems = (size_t)c.n_layer * c.n_head_kv * n_ctx * c.head_dim;
  const size_t q_dim = (size_t)c.n_head * c.head_dim, kv_dim = (size_t)c.n_head_kv * c.head_dim;
  const size_t ch = (size_t)chunk_;
  if (cuda_is_f16_kv(kv_spec)) {
    kc_ = DeviceBuffer(kv_elems * 2, "the KV cache (keys)");
    vc_ = DeviceBuffer(kv_elems * 2, "the KV cache (values)");
    cuda_check(cudaMemset(kc_.get(), 0, kc_.bytes()), "clear KV cache");
    cuda_check(cudaMemset(vc_.get(), 0, vc_.bytes()), "clear KV cache");
  } else {
    const KvShape ks{c.n_layer, c.n_head, c.n_head_kv, c.head_dim, n_ctx};
    ckv_ = std::make_unique<CudaKvStore>(ks, parse_kv_spec(kv_spec), chunk_);
  }
  step_ = DeviceBuffer((ch + 1) * 4, "token ids");
  x_ = DeviceBuffer(ch * c.n_embd * 4, "scratch");
  xb_ = DeviceBuffer(ch * c.n_embd * 4, "scratch");
  q_ = DeviceBuffer(ch * q_dim * 4, "scratch");
  k_ = DeviceBuffer(ch * kv_dim * 4, "scratch");
  v_ = DeviceBuffer(ch * kv_dim * 4, "scratch");
  att_ = DeviceBuffer(ch * q_dim * 4, "scratch");
  gate_ = DeviceBuffer(ch * c.n_ff * 4, "scratch");
  up_ = DeviceBuffer(ch * c.n_ff * 4, "scratch");
  logits_ = DeviceBuffer((size_t)c.n_vocab * 4, "logits");
  size_t part = 0;
  for (int n = 1; n <= chunk_ && n <= 64; n++)
    part = std::max(part, attention_partial_floats(attn_, n, attention_splits(attn_, n, m_->sm_count)));
  part_ = DeviceBuffer(part * 4, "attention workspace");
  best_ = DeviceBuffer(4, "arg-max");
  argmax_work_ = DeviceBuffer(argmax_work_bytes(), "arg-max workspace");
  cuda_check(cudaMemset(argmax_work_.get(), 0, argmax_work_.bytes()), "arg-max workspace");
  logits_host_.assign((size_t)c.n_vocab, 0.0f);
  cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  cuda_check(cudaHostAlloc((void**)&h_step_, (ch + 2) * 4, cudaHostAllocDefault), "cudaHostAlloc");
}

CudaSessionImpl::~CudaSessionImpl() {
  if (stream_) cudaStreamSynchronize(stream_);
  if (graph_) cudaGraphExecDestroy(graph_);
  if (stream_) cudaStreamDestroy(stream_);
  if (h_step_) cudaFreeHost(h_step_);
}

void CudaSessionImpl::forward_chunk(int n, bool want_logits) {
  const CudaModelImpl& M = *m_;
  const LlamaConfig& c = M.cfg;
  const int d = c.n_embd;
  cudaStream_t s = stream_;
  const int* pos = step_.get<int>();
  const int32_t* ids = step_.get<int32_t>() + 1;
  float *x = x_.get<float>(), *xb = xb_.get<float>(), *q = q_.get<float>(), *k = k_.get<float>(), *v = v_.get<float>();
  float *att = att_.get<float>(), *gate = gate_.get<float>(), *up = up_.get<float>();
  const int splits = attention_splits(attn_, n, M.sm_count);
  // Up to kMatvecMaxTokens tokens (decode) the products run as fused matrix-vector launches: the
  // RMSNorm inside them, q/k/v in one launch with RoPE and the f16 KV store on their outputs,
  // gate/up in one with SwiGLU. Larger chunks (prefill) take the tiled products and the separate
  // kernels; both compute the same thing, rounded differently.
  const bool fused = fused_ && n <= kMatvecMaxTokens;
  MvInput in;
  in.n_tok = n;
  in.eps = c.rms_eps;
  in.rope = &rope_;
  in.pos = pos;
  launch_get_rows(M.tok_embd, ids, n, x, s);
  for (int l = 0; l < c.n_layer; l++) {
    const DevLayer& L = M.layers[l];
    // attention block
    if (fused) {
      in.x = x;
      in.norm_w = L.attn_norm;
      MvSeg qkv[3];
      qkv[0].W = L.wq;
      qkv[1].W = L.wk;
      qkv[2].W = L.wv;
      qkv[0].y = q;
      if (!ckv_) {
        qkv[0].out = MvOut::RopeQ;
        qkv[1].out = MvOut::RopeStoreK;
        qkv[1].cache = k_head(l, 0);
        qkv[2].out = MvOut::StoreV;
        qkv[2].cache = v_head(l, 0);
      } else {  // q and k roped here; the compressed cache rotates and stores k and v itself
        qkv[0].out = MvOut::RopeQ;
        qkv[1].out = MvOut::RopeQ;
        qkv[1].y = k;
        qkv[2].y = v;
      }
      launch_matvec_fused(qkv, 3, in, s);
    } else {
      launch_rmsnorm(xb, x, L.attn_norm, n, d, c.rms_eps, s);
      launch_matmul(L.wq, xb, n, q, false, s);
      launch_matmul(L.wk, xb, n, k, false, s);
      launch_matmul(L.wv, xb, n, v, false, s);
    }
    if (!ckv_) {
      if (!fused) launch_rope_store(rope_, pos, n, q, k, v, k_head(l, 0), v_head(l, 0), s);
      launch_attention(attn_, pos, n, q, k_head(l, 0), v_head(l, 0), att, part_.get<float>(), splits, s);
    } else {
      // as CompressedKvCache: keys and values rotated before they are stored, the queries before
      // attention and the outputs after it (the rotation is orthonormal and its own inverse; the
      // attention launch does both of the latter)
      const KvDevView kv = ckv_->view(l);
      const bool rot = ckv_->spec().rotate;
      launch_kv_rope_store(rope_, pos, n, q, k, v, kv, rot, s, /*roped=*/fused);
      launch_kv_attention(attn_, kv, pos, n, q, att, part_.get<float>(), splits, rot, s);
    }
    launch_matmul(L.wo, att, n, x, /*accumulate=*/true, s);  // x += wo . att
    // feed-forward block (SwiGLU)
    if (fused) {
      in.x = x;
      in.norm_w = L.ffn_norm;
      MvSeg ffn[2];
      ffn[0].W = L.w_gate;
      ffn[0].y = gate;
      ffn[0].out = MvOut::SwiGLU;
      ffn[1].W = L.w_up;
      ffn[1].y = up;
      launch_matvec_fused(ffn, 2, in, s);
    } else {
      launch_rmsnorm(xb, x, L.ffn_norm, n, d, c.rms_eps, s);
      launch_matmul(L.w_gate, xb, n, gate, false, s);
      launch_matmul(L.w_up, xb, n, up, false, s);
      launch_silu_mul(gate, up, (int64_t)n * c.n_ff, s);
    }
    launch_matmul(L.w_down, gate, n, x, /*accumulate=*/true, s);  // x += w_down . (silu(gate) * up)
  }
  if (want_logits) {
    const float* last = x + (size_t)(n - 1) * d;
    MvSeg head;
    head.W = M.output;
    head.y = logits_.get<float>();
    MvInput hin;
    hin.x = last;
    hin.norm_w = M.output_norm;
    hin.eps = c.rms_eps;
    launch_matvec_fused(&head, 1, hin, s);
    // the arg-max rides along (a few microseconds), so greedy decoding needs no second round trip
    launch_argmax(logits_.get<float>(), c.n_vocab, best_.get<int32_t>(), argmax_work_.get(), s);
    cuda_check(cudaMemcpyAsync(h_step_ + chunk_ + 1, best_.get(), 4, cudaMemcpyDeviceToHost, s), "arg-max download");
  }
}

void CudaSessionImpl::capture_step_graph() {
  cudaGraph_t g = nullptr;
  cuda_check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "CUDA graph capture");
  try {
    forward_chunk(1, true);
  } catch (...) {
    cudaStreamEndCapture(stream_, &g);
    if (g) cudaGraphDestroy(g);
    throw;
  }
  cuda_check(cudaStreamEndCapture(stream_, &g), "CUDA graph capture");
  const cudaError_t err = cudaGraphInstantiate(&graph_, g, 0);
  cudaGraphDestroy(g);
  cuda_check(err, "CUDA graph instantiation");
}

void CudaSessionImpl::eval(const int32_t* tokens, int n, bool want_logits, const std::atomic<bool>* cancel,
                           const std::function<void(int, int)>& progress) {
  const LlamaConfig& c = m_->cfg;
  LKV_CHECK(n > 0, "nothing to evaluate");
  LKV_CHECK(n_tokens_ + n <= n_ctx_, "context is full: %d tokens held + %d new exceed the session's context of %d", n_tokens_,
            n, n_ctx_);
  for (int i = 0; i < n; i++)
    LKV_CHECK(tokens[i] >= 0 && tokens[i] < c.n_vocab, "token id %d is out of range [0, %d)", tokens[i], c.n_vocab);
  logits_valid_ = false;
  for (int done = 0; done < n;) {
    if (cancel && cancel->load(std::memory_order_relaxed)) throw Error("cancelled");
    const int len = std::min(chunk_, n - done);
    const bool logits_now = want_logits && done + len == n;
    const bool use_graph = graphs_ && len == 1 && logits_now;
    try {
      if (ckv_ && (ckv_->reserve(n_tokens_, len) || ckv_->generation() != graph_gen_) && graph_) {
        cudaGraphExecDestroy(graph_);  // recorded with the residual ring's old address
        graph_ = nullptr;
      }
      if (use_graph && !graph_) {
        capture_step_graph();
        if (ckv_) graph_gen_ = ckv_->generation();
      }
      h_step_[0] = n_tokens_;
      std::memcpy(h_step_ + 1, tokens + done, (size_t)len * 4);
      cuda_check(cudaMemcpyAsync(step_.get(), h_step_, (size_t)(len + 1) * 4, cudaMemcpyHostToDevice, stream_), "token upload");
      if (use_graph) cuda_check(cudaGraphLaunch(graph_, stream_), "CUDA graph launch");
      else forward_chunk(len, logits_now);
      cuda_check(cudaStreamSynchronize(stream_), "the forward pass");
    } catch (...) {
      cudaStreamSynchronize(stream_);  // nothing may still read h_step_ or the scratch
      throw;
    }
    n_tokens_ += len;
    done += len;
    if (ckv_) ckv_->commit(n_tokens_, stream_);  // full blocks leave the residual window, as the CPU's commit
    if (progress) progress(done, n);
  }
  logits_valid_ = want_logits;
  logits_fresh_ = false;
}

const std::vector<float>& CudaSessionImpl::logits() {
  LKV_CHECK(logits_valid_, "no logits: the last evaluation did not ask for them");
  if (!logits_fresh_) {
    cuda_check(cudaMemcpy(logits_host_.data(), logits_.get(), logits_host_.size() * 4, cudaMemcpyDeviceToHost), "logits download");
    logits_fresh_ = true;
  }
  return logits_host_;
}

int32_t CudaSessionImpl::argmax() {
  LKV_CHECK(logits_valid_, "no logits: the last evaluation did not ask for them");
  return h_step_[chunk_ + 1];  // computed and downloaded with the logits (forward_chunk)
}

// Payload of DenseKvCache<uint16_t>::save: int32 n, then per (layer, head): keys in tiles of 64
// positions stored [tile][dim][64] (zeros past n), values [n][dim].
void CudaSessionImpl::save_kv(std::ostream& out) const {
  if (ckv_) return ckv_->save(out);  // kv_compressed.cpp's payload
  const int n = n_tokens_, hd = attn_.head_dim;
  const size_t k_elems = (size_t)(n + kCpuKeyTile - 1) / kCpuKeyTile * kCpuKeyTile * hd;
  out.write((const char*)&n, 4);
  std::vector<uint16_t> rows((size_t)n * hd), tiled(k_elems);
  for (int l = 0; l < m_->cfg.n_layer; l++)
    for (int h = 0; h < attn_.n_head_kv; h++) {
      cuda_check(cudaMemcpy(rows.data(), k_head(l, h), rows.size() * 2, cudaMemcpyDeviceToHost), "KV download");
      std::fill(tiled.begin(), tiled.end(), 0);
      for (int p = 0; p < n; p++)
        for (int c = 0; c < hd; c++) tiled[((size_t)(p / kCpuKeyTile) * hd + c) * kCpuKeyTile + p % kCpuKeyTile] = rows[(size_t)p * hd + c];
      out.write((const char*)tiled.data(), (std::streamsize)(tiled.size() * 2));
      cuda_check(cudaMemcpy(rows.data(), v_head(l, h), rows.size() * 2, cudaMemcpyDeviceToHost), "KV download");
      out.write((const char*)rows.data(), (std::streamsize)(rows.size() * 2));
    }
}

void CudaSessionImpl::load_kv(std::istream& in) {
  if (ckv_) {
    ckv_->load(in);
    n_tokens_ = ckv_->n_tokens();
    logits_valid_ = false;
    return;
  }
  int32_t n = 0;
  in.read((char*)&n, 4);
  LKV_CHECK(in && n >= 0 && n <= n_ctx_, "kv state: bad token count");
  const int hd = attn_.head_dim;
  const size_t k_elems = (size_t)(n + kCpuKeyTile - 1) / kCpuKeyTile * kCpuKeyTile * hd;
  std::vector<uint16_t> rows((size_t)n * hd), tiled(k_elems);
  for (int l = 0; l < m_->cfg.n_layer; l++)
    for (int h = 0; h < attn_.n_head_kv; h++) {
      in.read((char*)tiled.data(), (std::streamsize)(tiled.size() * 2));
      LKV_CHECK((bool)in, "kv state: truncated");
      for (int p = 0; p < n; p++)
        for (int c = 0; c < hd; c++) rows[(size_t)p * hd + c] = tiled[((size_t)(p / kCpuKeyTile) * hd + c) * kCpuKeyTile + p % kCpuKeyTile];
      cuda_check(cudaMemcpy(k_head(l, h), rows.data(), rows.size() * 2, cudaMemcpyHostToDevice), "KV upload");
      in.read((char*)rows.data(), (std::streamsize)(rows.size() * 2));
      LKV_CHECK((bool)in, "kv state: truncated");
      cuda_check(cudaMemcpy(v_head(l, h), rows.data(), rows.size() * 2, cudaMemcpyHostToDevice), "KV upload");
    }
  n_tokens_ = n;
  logits_valid_ = false;
}

// As DenseKvCache<uint16_t>::stats() (kv_cache.cpp) for f16, CompressedKvCache::stats() otherwise.
KvStats CudaSessionImpl::kv_stats() const {
  if (ckv_) return ckv_->stats();
  const LlamaConfig& c = m_->cfg;
  KvStats st;
  st.tokens = n_tokens_;
  st.resident_tokens = (double)st.tokens;
  st.bytes = kv_bytes();
  st.f16_bytes = st.bytes;
  st.code_bytes = st.bytes;
  st.per_layer.assign((size_t)c.n_layer, st.bytes / c.n_layer);
  st.spec = "f16";
  return st;
}

std::unique_ptr<CudaSession> CudaModelImpl::new_session(int n_ctx, const std::string& kv_spec, const CudaSessionOptions& opt) {
  std::string why;
  if (!cuda_holds_kv(kv_spec, &why)) throw Error(why + "; it runs on the CPU backend");
  return std::make_unique<CudaSessionImpl>(shared_from_this(), n_ctx, kv_spec, opt);
}

}  // namespace

std::shared_ptr<CudaModel> cuda_load(const Model& m) { return std::make_shared<CudaModelImpl>(m); }

}  // namespace lkv
