// session.h — one conversation's state over a shared model: its KV cache, tokens, cancellation,
// and the versioned, checksummed state file (save/load) tied to the model and KV spec. A session
// runs on the CPU (forward.cpp) or, when the model's weights are on the GPU and the device holds
// its KV spec, delegates to a CudaSession; state files are the same either way.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "forward.h"
#include "sampler.h"

namespace lkv {

class CudaModel;
class CudaSession;

// The engine a model runs on: kernels, a thread pool, and a lock so only one forward pass at a
// time uses the pool. With the CUDA backend also the weights on the device and a lock for it.
struct Engine {
  explicit Engine(int threads);
  const Kernels* kernels;
  std::unique_ptr<ThreadPool> pool;
  std::mutex compute;
  std::shared_ptr<CudaModel> cuda;  // set when the model runs on CUDA (choose_backend)
  bool cuda_required = false;       // backend "cuda": a device session that cannot be made is an error
  std::mutex device;                // one device pass at a time
};

struct GenerateResult {
  int tokens = 0;
  std::string reason;  // "eos", "length", "cancelled"
  double decode_ms = 0;
};

class Session {
 public:
  // On CUDA when engine->cuda is set and cuda_kv_for(kv_spec) names a spec the device holds: the
  // spec itself (f16, or one quantized precision without eviction, tiers or outliers), or its
  // format with every token kept (backend_note() says so); otherwise on the CPU, with the reason
  // in backend_note() (a format the device lacks, or under "auto" a device allocation that failed).
  Session(std::shared_ptr<const Model> model, std::shared_ptr<Engine> engine, int n_ctx, const std::string& kv_spec);
  ~Session();

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
  // On CUDA the logits are downloaded at the first call after an evaluation.
  const std::vector<float>* logits() const;
  KvStats kv_stats() const;
  std::string kv_spec() const;
  const char* backend() const { return cuda_ ? "cuda" : "cpu"; }
  const std::string& backend_note() const { return backend_note_; }

  // State files: atomic write (temp + rename); load verifies version, checksum, model identity
  // and KV spec before replacing anything, so a bad file leaves the session untouched.
  void save(const std::string& path, const std::string& meta) const;
  std::string load(const std::string& path);

 private:
  std::string model_identity() const;
  std::shared_ptr<const Model> model_;
  std::shared_ptr<Engine> engine_;
  int n_ctx_;
  std::unique_ptr<SessionState> state_;  // on CUDA: tokens and has_logits only (no kv, no scratch)
  std::unique_ptr<CudaSession> cuda_;    // set when this session runs on the device
  std::string backend_note_;
  std::atomic<bool> cancel_{false};
};

}  // namespace lkv
