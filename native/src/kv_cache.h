// kv_cache.h — the attention KV cache behind one small interface. A cache stores the (roped)
// keys and values of every position of one session and computes causal attention over them, so
// each storage format (f32, f16 here; the compressed formats of kv_compressed.*) owns its fused
// attention loop and never expands to f16 in memory.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "threadpool.h"

namespace lkv {

struct KvShape {
  int n_layer = 0;
  int n_head = 0;     // query heads
  int n_head_kv = 0;  // cached heads
  int head_dim = 0;
  int n_ctx = 0;      // maximum positions
};

struct KvStats {
  int64_t tokens = 0;           // logical length (positions stored)
  double resident_tokens = 0;   // mean tokens held per layer and head
  int64_t bytes = 0;            // bytes actually held
  int64_t f16_bytes = 0;        // an f16 cache of the same logical length
  std::vector<int64_t> per_layer;
  std::string spec;
  // Breakdown of `bytes` (compressed caches; a dense cache's bytes are all code_bytes).
  int64_t code_bytes = 0;      // quantized codes (or dense values)
  int64_t param_bytes = 0;     // scales and zero points
  int64_t outlier_bytes = 0;   // dense-and-sparse side lists
  int64_t residual_bytes = 0;  // f16 residual window
  int64_t index_bytes = 0;     // positions, slot bookkeeping, block headers
  int64_t journal_bytes = 0;   // undo records kept for an exact rewind
  double residual_tokens = 0;  // mean tokens per layer and head held in the f16 residual
  double evicted_tokens = 0;   // mean tokens per layer and head evicted
  std::vector<double> tier_tokens;  // mean tokens per layer and head quantized at each tier
  int streaming_heads = -1;         // (layer, KV head)s the head budgets (hl) keep as streaming; -1 without hl
};

class KvCache {
 public:
  virtual ~KvCache() = default;
  // Stores keys/values of n tokens at positions [pos, pos+n) of `layer`.
  // k, v: [n][n_head_kv * head_dim]. pos must equal the current length (append only).
  virtual void store(int layer, int pos, int n, const float* k, const float* v) = 0;
  // Causal attention of n queries at positions [pos, pos+n) over cached positions <= each
  // query's own. q, out: [n][n_head * head_dim]. Scale 1/sqrt(head_dim).
  virtual void attend(int layer, int pos, int n, const float* q, float* out, ThreadPool* pool) = 0;
  // Marks positions [0, n) as complete once every layer has stored them.
  virtual void commit(int n) = 0;
  virtual int n_tokens() const = 0;
  // Rewinds to the first n positions (n <= n_tokens()).
  virtual void truncate(int n) = 0;
  virtual KvStats stats() const = 0;
  virtual const KvShape& shape() const = 0;
  virtual std::string spec() const = 0;
  // Serialization of the held state (format-specific payload; framing is the session's job).
  virtual void save(std::ostream& out) const = 0;
  virtual void load(std::istream& in) = 0;
};

// Creates a cache for a spec string: "f32", "f16" (default, also "off"), or a compressed spec.
// Throws Error for an unknown spec.
std::unique_ptr<KvCache> make_kv_cache(const KvShape& shape, const std::string& spec);

// Plain attention over float keys/values, the reference every cache format is tested against.
// k, v: [n_kv][n_head_kv*head_dim] rows for positions 0..n_kv-1; q, out as in KvCache::attend.
void attention_reference(const KvShape& s, int pos, int n, const float* q, const float* k, const float* v,
                         int n_kv, float* out);

}  // namespace lkv
