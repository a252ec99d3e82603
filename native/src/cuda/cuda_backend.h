// cuda_backend.h — the CUDA backend as the rest of the engine sees it: plain C++, no CUDA headers.
// A CudaModel holds one model's weights on the GPU (uploaded once, quantized formats kept
// quantized); each CudaSession owns its KV cache (f16, or compressed: cuda_kv.cuh) and scratch on
// the device and runs the same forward pass as forward.cpp. Builds without CUDA link cuda_backend_stub.cpp instead, where
// cuda_usable() says "built without CUDA" and cuda_load() throws.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "../kv_cache.h"
#include "../kv_compressed.h"
#include "../model.h"

namespace lkv {

// True when this build has CUDA, a driver new enough for its runtime, and a device 0 whose
// architecture the build can run; otherwise false with the reason (fit for a log line) in *why.
bool cuda_usable(std::string* why);

// The dense f16 cache's spec names ("f16", "off" or empty): the device's plain KV layout.
inline bool cuda_is_f16_kv(const std::string& spec) { return spec == "f16" || spec == "off" || spec.empty(); }

// KV specs Session routes to a CudaSession (it falls back to the CPU for the rest, saying why):
// f16, and compressed specs without eviction, tiers or
// outliers (quantized blocks at one precision, the f16 residual window, optional rotation), with
// value groups of at least 8. Otherwise false with the reason in *why. (The presets q8, q4 and q2
// qualify; balanced and max evict.)
inline bool cuda_holds_kv(const std::string& spec, std::string* why = nullptr) {
  if (cuda_is_f16_kv(spec)) return true;
  auto no = [&](const std::string& w) {
    if (why) *why = w;
    return false;
  };
  if (spec == "f32") return no("the f32 cache is CPU-only (the device keeps f16)");
  KvSpec s;
  try {
    s = parse_kv_spec(spec);
  } catch (const std::exception& e) {
    return no(e.what());
  }
  if (s.evicts()) return no("KV spec '" + spec + "' evicts tokens (the CUDA backend holds caches without eviction)");
  if (s.tiers.size() > 1) return no("KV spec '" + spec + "' has precision tiers (the CUDA backend holds one precision)");
  if (s.outliers > 0) return no("KV spec '" + spec + "' keeps outliers (the CUDA backend holds dense codes only)");
  if (s.vgroup != 0 && s.vgroup < 8) return no("KV spec '" + spec + "': value groups under 8 are not on the CUDA backend");
  return true;
}

// The KV spec a CUDA session runs for `spec`: `spec` itself when the device holds it; when it
// only adds eviction, tiers or outliers to a format the device holds, that format with every
// token kept at one precision (kv_spec_uniform: GPU speed, more bytes than the spec asked for);
// otherwise "" (the session runs on the CPU). *why says which and why.
inline std::string cuda_kv_for(const std::string& spec, std::string* why) {
  if (cuda_holds_kv(spec, why)) return spec;
  std::string uniform;
  try {
    uniform = kv_spec_string(kv_spec_uniform(parse_kv_spec(spec)));
  } catch (const std::exception&) {
    return "";  // not a spec: *why has the parse error
  }
  if (!cuda_holds_kv(uniform)) return "";  // *why: the first reason the device cannot hold spec
  if (why)
    *why = "KV spec '" + spec + "' runs on the GPU as '" + uniform +
           "', every token kept at one precision (the CUDA backend does not evict, tier or keep outliers yet; the CPU backend does)";
  return uniform;
}

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
  virtual int64_t kv_bytes() const = 0;             // bytes the held positions occupy (as kv_stats().bytes)
  // The canonical spec ("f16", or kv_spec_string of a compressed spec) and the accounting, exactly
  // what the CPU cache of that spec reports for the same positions.
  virtual std::string kv_spec() const = 0;
  virtual KvStats kv_stats() const = 0;
  // The cache payload of the CPU KvCache of the same spec (kv_cache.cpp for f16,
  // kv_compressed.cpp otherwise), byte for byte, so state files move between backends; test_cuda
  // checks the round trip against the CPU cache. load_kv leaves the session as it was when it throws
  // (compressed specs; an f16 payload is size-checked by Session first).
  virtual void save_kv(std::ostream& out) const = 0;
  virtual void load_kv(std::istream& in) = 0;
};

class CudaModel {
 public:
  virtual ~CudaModel() = default;
  // kv_spec: one cuda_holds_kv accepts; other specs throw (they run on the CPU).
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
