// forward.cpp — Llama 3 forward pass (RMSNorm, RoPE with Llama 3 scaling, grouped-query
// attention through the KV cache, SwiGLU), batched over chunks of tokens.
#include "forward.h"

#include <algorithm>
#include <cmath>

namespace lkv {

std::unique_ptr<SessionState> make_session_state(const Model& m, int n_ctx, const std::string& kv_spec) {
  const LlamaConfig& c = m.cfg;
  LKV_CHECK(n_ctx > 0 && n_ctx <= (1 << 24), "context size %d is out of range", n_ctx);
  auto s = std::make_unique<SessionState>();
  KvShape shape;
  shape.n_layer = c.n_layer;
  shape.n_head = c.n_head;
  shape.n_head_kv = c.n_head_kv;
  shape.head_dim = c.head_dim;
  shape.n_ctx = n_ctx;
  s->kv = make_kv_cache(shape, kv_spec);
  s->logits.assign((size_t)c.n_vocab, 0.0f);
  return s;
}

static void ensure_scratch(const LlamaConfig& c, SessionState& s, int chunk) {
  if (s.chunk >= chunk) return;
  const size_t q_dim = (size_t)c.n_head * c.head_dim, kv_dim = (size_t)c.n_head_kv * c.head_dim;
  s.x.assign((size_t)chunk * c.n_embd, 0.0f);
  s.xb.assign((size_t)chunk * std::max<size_t>(c.n_embd, q_dim), 0.0f);
  s.q.assign((size_t)chunk * q_dim, 0.0f);
  s.k.assign((size_t)chunk * kv_dim, 0.0f);
  s.v.assign((size_t)chunk * kv_dim, 0.0f);
  s.att.assign((size_t)chunk * q_dim, 0.0f);
  s.ffn_gate.assign((size_t)chunk * c.n_ff, 0.0f);
  s.ffn_up.assign((size_t)chunk * c.n_ff, 0.0f);
  s.xlast.assign((size_t)c.n_embd, 0.0f);
  s.chunk = chunk;
}

void rope_apply(const LlamaConfig& c, float* x, int n_heads, int pos) {
  const int hd = c.head_dim, half = hd / 2;
  float cs[512], sn[512];
  for (int i = 0; i < half; i++) {
    const double inv_freq = (double)c.rope_freq_scale * std::pow((double)c.rope_base, -2.0 * i / hd) / c.rope_freq_factors[i];
    const double theta = pos * inv_freq;
    cs[i] = (float)std::cos(theta);
    sn[i] = (float)std::sin(theta);
  }
  for (int h = 0; h < n_heads; h++) {
    float* v = x + (size_t)h * hd;
    for (int i = 0; i < half; i++) {
      const float a = v[2 * i], b = v[2 * i + 1];
      v[2 * i] = a * cs[i] - b * sn[i];
      v[2 * i + 1] = a * sn[i] + b * cs[i];
    }
  }
}

static void check_cancel(const ForwardContext& ctx) {
  if (ctx.cancel && ctx.cancel->load(std::memory_order_relaxed)) throw Error("cancelled");
}

// One chunk of n tokens at positions [pos, pos+n).
static void forward_chunk(const Model& m, SessionState& s, const int32_t* tokens, int n, int pos, const ForwardContext& ctx) {
  const LlamaConfig& c = m.cfg;
  const Kernels& K = *ctx.kernels;
  const int d = c.n_embd;
  const size_t q_dim = (size_t)c.n_head * c.head_dim, kv_dim = (size_t)c.n_head_kv * c.head_dim;
  float* x = s.x.data();     // [n][d] residual stream
  float* xb = s.xb.data();   // [n][d] normed input
  for (int i = 0; i < n; i++) {
    LKV_CHECK(tokens[i] >= 0 && tokens[i] < c.n_vocab, "token id %d is out of range [0, %d)", tokens[i], c.n_vocab);
    K.get_row(m.tok_embd, tokens[i], x + (size_t)i * d);
  }
  for (int l = 0; l < c.n_layer; l++) {
    check_cancel(ctx);
    const LayerWeights& L = m.layers[l];
    // attention block
    for (int i = 0; i < n; i++) K.rmsnorm(xb + (size_t)i * d, x + (size_t)i * d, L.attn_norm.data(), d, c.rms_eps);
    K.matmul(L.wq, xb, n, s.q.data(), ctx.pool);
    K.matmul(L.wk, xb, n, s.k.data(), ctx.pool);
    K.matmul(L.wv, xb, n, s.v.data(), ctx.pool);
    for (int i = 0; i < n; i++) {
      rope_apply(c, s.q.data() + i * q_dim, c.n_head, pos + i);
      rope_apply(c, s.k.data() + i * kv_dim, c.n_head_kv, pos + i);
    }
    s.kv->store(l, pos, n, s.k.data(), s.v.data());
    s.kv->attend(l, pos, n, s.q.data(), s.att.data(), ctx.pool);
    K.matmul(L.wo, s.att.data(), n, xb, ctx.pool);
    for (size_t i = 0; i < (size_t)n * d; i++) x[i] += xb[i];
    // feed-forward block (SwiGLU)
    for (int i = 0; i < n; i++) K.rmsnorm(xb + (size_t)i * d, x + (size_t)i * d, L.ffn_norm.data(), d, c.rms_eps);
    K.matmul(L.w_gate, xb, n, s.ffn_gate.data(), ctx.pool);
    K.matmul(L.w_up, xb, n, s.ffn_up.data(), ctx.pool);
    K.silu_mul(s.ffn_gate.data(), s.ffn_up.data(), n * c.n_ff);
    K.matmul(L.w_down, s.ffn_gate.data(), n, xb, ctx.pool);
    for (size_t i = 0; i < (size_t)n * d; i++) x[i] += xb[i];
  }
  std::copy(x + (size_t)(n - 1) * d, x + (size_t)n * d, s.xlast.begin());
}

void forward(const Model& m, SessionState& s, const int32_t* tokens, int n, const ForwardContext& ctx, bool want_logits,
             const std::function<void(int, int)>& progress) {
  LKV_CHECK(n > 0, "nothing to evaluate");
  const int n_ctx = s.kv->shape().n_ctx;
  const int start = s.kv->n_tokens();
  LKV_CHECK(start + n <= n_ctx, "context is full: %d tokens held + %d new exceed the session's context of %d", start, n, n_ctx);
  const int chunk = std::max(1, std::min(ctx.chunk, n));
  ensure_scratch(m.cfg, s, chunk);
  s.has_logits = false;
  for (int done = 0; done < n;) {
    check_cancel(ctx);
    const int len = std::min(chunk, n - done);
    const int pos = s.kv->n_tokens();
    try {
      forward_chunk(m, s, tokens + done, len, pos, ctx);
    } catch (...) {
      s.kv->truncate(pos);  // drop this chunk's partial layers: the cache stays consistent
      throw;
    }
    s.kv->commit(pos + len);
    s.tokens.insert(s.tokens.end(), tokens + done, tokens + done + len);
    done += len;
    if (progress) progress(done, n);
  }
  if (want_logits) {
    const LlamaConfig& c = m.cfg;
    std::vector<float> xn((size_t)c.n_embd);
    ctx.kernels->rmsnorm(xn.data(), s.xlast.data(), m.output_norm.data(), c.n_embd, c.rms_eps);
    ctx.kernels->matmul(m.output, xn.data(), 1, s.logits.data(), ctx.pool);
    s.has_logits = true;
  }
}

}  // namespace lkv
