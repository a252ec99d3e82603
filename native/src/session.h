// session.h — one conversation's state over a shared model: its KV cache, tokens, cancellation,
// and the versioned, checksummed state file (save/load) tied to the model and KV spec.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "forward.h"
#include "sampler.h"

namespace lkv {

// The engine a model runs on: kernels, a thread pool, and a lock so only one forward pass at a
// time uses the pool.
struct Engine {
  explicit Engine(int threads);
  const Kernels* kernels;
  std::unique_ptr<ThreadPool> pool;
  std::mutex compute;
};

struct GenerateResult {
  int tokens = 0;
  std::string reason;  // "eos", "length", "cancelled"
  double decode_ms = 0;
};

class Session {
 public:
  Session(std::shared_ptr<const Model> model, std::shared_ptr<Engine> engine, int n_ctx, const std::string& kv_spec);

  // Appends tokens (batched prefill). Throws Error("cancelled") if cancelled.
  void eval(const std::vector<int32_t>& tokens, bool want_logits, const std::function<void(int, int)>& progress);
  // Samples up to max_tokens, feeding each back; on_token is called for each sampled token
  // (including the final end-of-generation token, which is not added to the context).
  GenerateResult generate(const SamplingParams& sp, int max_tokens, const std::function<void(int32_t)>& on_token);
  void truncate(int n);
  void cancel() { cancel_.store(true); }
  void reset_cancel() { cancel_.store(false); }

  int n_tokens() const { return (int)state_->tokens.size(); }
  int n_ctx() const { return n_ctx_; }
  const std::vector<int32_t>& tokens() const { return state_->tokens; }
  const std::vector<float>* logits() const { return state_->has_logits ? &state_->logits : nullptr; }
  KvStats kv_stats() const { return state_->kv->stats(); }
  std::string kv_spec() const { return state_->kv->spec(); }

  // State files: atomic write (temp + rename); load verifies version, checksum, model identity
  // and KV spec before replacing anything, so a bad file leaves the session untouched.
  void save(const std::string& path, const std::string& meta) const;
  std::string load(const std::string& path);

 private:
  std::string model_identity() const;
  std::shared_ptr<const Model> model_;
  std::shared_ptr<Engine> engine_;
  int n_ctx_;
  std::unique_ptr<SessionState> state_;
  std::atomic<bool> cancel_{false};
};

}  // namespace lkv
