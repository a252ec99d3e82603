// forward.h — the Llama 3 forward pass over a session's state:
//   forward(model, state, tokens, n, pos) evaluates n tokens at positions [pos, pos+n),
//   appending their keys/values to the session's KV cache, and leaves the logits of the
//   last position in state.logits.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "kernels.h"
#include "kv_cache.h"
#include "model.h"

namespace lkv {

// Per-session state: the KV cache plus scratch buffers sized for one chunk of tokens.
struct SessionState {
  std::unique_ptr<KvCache> kv;
  std::vector<int32_t> tokens;  // every token in the context, in order
  std::vector<float> logits;    // [n_vocab] of the last evaluated position
  bool has_logits = false;
  // scratch, [chunk][...]
  std::vector<float> x, xb, q, k, v, att, ffn_gate, ffn_up, xlast;
  int chunk = 0;
};

std::unique_ptr<SessionState> make_session_state(const Model& m, int n_ctx, const std::string& kv_spec);

struct ForwardContext {
  const Kernels* kernels = nullptr;
  ThreadPool* pool = nullptr;
  const std::atomic<bool>* cancel = nullptr;  // checked between chunks and layers
  int chunk = 256;                            // tokens per batched pass
};

// Evaluates tokens[0..n) at the session's current end, in chunks. Throws Error("cancelled") when
// cancelled; positions evaluated before that stay in the cache (the caller may truncate).
// progress(done, total) is called after each chunk.
void forward(const Model& m, SessionState& s, const int32_t* tokens, int n, const ForwardContext& ctx,
             bool want_logits, const std::function<void(int, int)>& progress = {});

// RoPE (adjacent pairs, as GGUF's llama layout): rotates x [n_heads][head_dim] at position pos.
void rope_apply(const LlamaConfig& c, float* x, int n_heads, int pos);

}  // namespace lkv
