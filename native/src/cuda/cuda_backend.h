// cuda_backend.h — the CUDA backend as the rest of the engine sees it: plain C++, no CUDA headers.
// A CudaModel holds one model's weights on the GPU (uploaded once, quantized formats kept
// quantized); each CudaSession owns its f16 KV cache and scratch on the device and runs the same
// forward pass as forward.cpp. Builds without CUDA link cuda_backend_stub.cpp instead, where
// cuda_usable() says "built without CUDA" and cuda_load() throws.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "../model.h"

namespace lkv {

// True when this build has CUDA, a driver new enough for its runtime, and a device 0 whose
// architecture the build can run; otherwise false with the reason (fit for a log line) in *why.
bool cuda_usable(std::string* why);

struct CudaSessionOptions {
  int chunk = 256;      // tokens per batched pass (prefill); scratch is sized for it once
  bool graphs = true;   // replay single-token steps as a CUDA graph (env LLAMAKV_CUDA_GRAPHS=0: off)
};

class CudaSession {
 public:
  virtual ~CudaSession() = default;
  // Appends tokens[0..n) at the end of the context, in chunks. With want_logits the logits of the
  // last token are computed on the device (logits() downloads them, argmax() reduces them there).
  // Throws Error("cancelled") when *cancel is set (checked between chunks); chunks done before
  // stay in the context. progress(done, n) after each chunk.
  virtual void eval(const int32_t* tokens, int n, bool want_logits, const std::atomic<bool>* cancel = nullptr,
                    const std::function<void(int, int)>& progress = {}) = 0;
  virtual const std::vector<float>& logits() = 0;  // [n_vocab]; throws when the last eval made none
  virtual int32_t argmax() = 0;                     // index of the largest logit (lowest on ties)
  virtual int n_tokens() const = 0;
  virtual int n_ctx() const = 0;
  virtual void truncate(int n) = 0;                 // keeps positions [0, n)
  virtual int64_t kv_bytes() const = 0;             // device bytes the held positions occupy
  // The cache payload of the CPU "f16" KvCache (kv_cache.cpp), byte for byte, so state files move
  // between backends; test_cuda checks the round trip against the CPU cache.
  virtual void save_kv(std::ostream& out) const = 0;
  virtual void load_kv(std::istream& in) = 0;
};

class CudaModel {
 public:
  virtual ~CudaModel() = default;
  // kv_spec: "f16" (also "off" or empty); other specs throw (compressed caches run on the CPU).
  virtual std::unique_ptr<CudaSession> new_session(int n_ctx, const std::string& kv_spec,
                                                   const CudaSessionOptions& opt = {}) = 0;
  virtual std::string device() const = 0;            // e.g. "NVIDIA H200, sm_90, 132 SMs, 139 GiB"
  virtual int64_t weight_bytes() const = 0;          // device bytes of all weights
  // Bytes one decode step reads from device memory with `context` positions cached: every matrix
  // except the embedding (one row) plus the keys and values of every layer (roofline numerator).
  virtual int64_t decode_bytes(int context) const = 0;
};

// Uploads the model's weights to device 0. Sessions keep the returned model alive. Throws Error
// (no usable device, unsupported shape, out of memory with the numbers).
std::shared_ptr<CudaModel> cuda_load(const Model& m);

}  // namespace lkv
