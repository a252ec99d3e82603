// kv_compressed.h — the compressed KV cache: KIVI-layout quantization (keys per channel over
// blocks of G tokens, values per token in groups), an f16 residual window, optional Hadamard
// rotation, dense-and-sparse outliers, importance-driven eviction and precision tiers; attention
// decodes the blocks tile by tile inside its loop (kv_formats.h has the byte layouts).
//
// Spec grammar (what `--kv SPEC` and make_kv_cache accept besides "f16"/"f32"/"off"):
//
//   spec   := item (',' item)*          items may also be written back to back when the previous
//                                       one ends in a digit: "k4v2g32r128" = "k4,v2,g32,r128"
//   item   := preset                    off | q8 | q4 | q2 | balanced | max (first item only;
//                                       later items override it: "q4,r64")
//           | k BITS | v BITS           key / value bits: 16, 8, 4, 2 or 1 (one tier)
//           | t TIER ('/' TIER)*        precision tiers, most important first, instead of k/v:
//                                       TIER := BITS[xBITS][':' FRACTION], bits for keys x values;
//                                       FRACTION = share of the held (quantized) slots; the last
//                                       tier takes the rest: "t8:0.1/4:0.3/2", "t8:0.2/4x2"
//           | g N                       key block: tokens per per-channel scale/zero (8..256, 2^k)
//           | vg N                      value group along head_dim (2^k dividing head_dim; 0 = all)
//           | r N                       residual window: newest N tokens stay f16 (plus the open
//                                       block: between N and N+G-1 tokens are f16)
//           | rot | norot               Hadamard rotation of each head (head_dim a power of two)
//           | o FRACTION                outliers: that share of elements kept exactly (0 = none)
//           | b FRACTION | b TOKENS     budget per layer and KV head: a number with '.' is the share
//                                       kept of the tokens eviction may take (all but the sinks
//                                       and the recent window; b1.0 = keep all), an integer a
//                                       token count
//           | s N                       attention sinks: first N tokens never evicted or demoted
//           | w N                       recent window: last N tokens never evicted or demoted
//           | h2o | snapkv | agnostic   importance: accumulated attention (H2O); pooled attention
//                                       of the last `ow` queries of each prefill chunk (SnapKV);
//                                       key distinctiveness, 1 - cosine to the running mean key
//                                       (KeyDiff; needs no queries: for a workspace prefilled
//                                       before any question exists)
//           | ow N                      SnapKV observation window (queries per chunk)
//           | hl FRACTION               head-adaptive budget (with eviction): a KV head whose probed
//                                       queries (the last `ow` of each prefill chunk, once the
//                                       context is 4x the sinks and recent window; 16 chunks) put on average
//                                       at least that share of their attention on the sinks and
//                                       the recent window is a streaming head: it keeps only
//                                       those, and the tokens it gives up go to the other heads,
//                                       so the budget is the mean over heads (DuoAttention's
//                                       streaming/retrieval split, measured instead of trained).
//                                       0 = off; written only when on
//           | rw N                      rewind window: evictions and demotions of the last N
//                                       tokens are journaled so truncate() undoes them exactly
//                                       (the journal's bytes are counted; 0 = no journal)
//
// Canonical form (spec() returns it, state files compare it): every knob, in the order
//   k,v | t ; g ; vg ; r ; rot|norot ; o ; b ; s ; w ; [hl] ; policy ; ow ; rw
// e.g. "k4,v4,g64,vg32,r128,rot,o0,b1.0,s4,w128,h2o,ow32,rw1024".
//
// Rewind (truncate to n): journaled evictions and demotions made after n are undone exactly, and
// records from before n are dropped (n is taken as the checkpoint later rewinds return to);
// blocks quantized after n go back to the f16 residual window from their dequantized rows (the
// residual's exact f16 rows are not kept: that would cost a residual as long as the window);
// importance scores keep what later queries added.
#pragma once

#include <string>
#include <vector>

#include "kv_cache.h"

namespace lkv {

enum class KvPolicy { H2O, SnapKV, Agnostic };

struct KvTier {
  int kbits = 16, vbits = 16;
  double frac = 1.0;  // share of held quantized slots (the last tier: the rest)
};

struct KvSpec {
  std::vector<KvTier> tiers{KvTier{}};
  int group = 64;            // G: key block tokens
  int vgroup = 0;            // value group along head_dim (0 = head_dim)
  int residual = 128;        // R
  bool rotate = false;
  double outliers = 0.0;     // share of elements kept exactly
  double budget_frac = 1.0;  // used when budget_tokens == 0
  int budget_tokens = 0;     // > 0: absolute budget per layer and KV head
  int sinks = 4;
  int recent = 128;
  KvPolicy policy = KvPolicy::H2O;
  int obs_window = 32;
  int rewind = 512;          // rw: journal window in tokens
  double locality = 0.0;     // hl: streaming-head threshold (0 = off; only with eviction)

  bool evicts() const { return budget_tokens > 0 || budget_frac < 1.0; }
  bool managed() const { return evicts() || tiers.size() > 1; }  // needs per-slot bookkeeping
};

// Parses a spec (grammar above). Throws Error naming the offending item.
KvSpec parse_kv_spec(const std::string& text);
std::string kv_spec_string(const KvSpec& s);
// The same format with every token kept at one precision (the last, least precise tier) and no
// outliers: how the CUDA backend runs a spec whose eviction, tiers or outliers it does not hold.
KvSpec kv_spec_uniform(const KvSpec& spec);
// The expansion of a preset name, or "" if it is not one ("off" is the dense f16 cache).
std::string kv_preset(const std::string& name);

// Creates the compressed cache (make_kv_cache dispatches here). Throws Error when the spec does
// not fit the shape (e.g. rotation with a head_dim that is not a power of two).
std::unique_ptr<KvCache> make_compressed_kv_cache(const KvShape& shape, const KvSpec& spec);

// Test hooks on a cache made by make_compressed_kv_cache.
namespace kvtest {
// Use the plain reference attention (row-by-row dequantization, double accumulation) instead of
// the tiled optimized loop.
void set_reference(KvCache* cache, bool on);
// Use the plain LKV_CLONES tile kernels even where AVX-512 ones exist; the name of those in use.
void use_generic_ops(KvCache* cache, bool on);
// Use at most the AVX2 tile kernels (on an AVX-512 CPU, the ones it would not pick); returns the
// name of those in use.
const char* use_avx2_ops(KvCache* cache, bool on);
const char* ops_name(const KvCache* cache);
// Dequantized (and un-rotated) rows of one layer and KV head that the cache holds, positions
// ascending: pos [n], k and v [n][head_dim].
void dequantize_head(const KvCache* cache, int layer, int head, std::vector<int>& pos, std::vector<float>& k,
                     std::vector<float>& v);
// The slot table (scores and tiers by position) of a managed cache (one with a budget or tiers).
void slot_table(const KvCache* cache, int layer, int head, std::vector<float>& score, std::vector<int>& tier);
}  // namespace kvtest

}  // namespace lkv
