// kv_policy.h — bookkeeping of the compressed KV cache, kept apart from its bytes: for one layer
// and KV head, which positions are held, at which precision tier, with what importance; and the
// decisions made from that (evict, demote). Plain data and
// pure functions, so test_kv.cpp checks them on tiny hand-computed cases.
#pragma once

#include <cstdint>
#include <vector>

namespace lkv {

// One layer and KV head, indexed by position [0, n).
struct SlotTable {
  static constexpr int8_t kEvicted = -1;
  static constexpr int8_t kResidual = 127;  // held in the f16 residual window, no tier yet
  std::vector<int8_t> tier;                 // kEvicted, kResidual or a tier index (0 = most bits)
  int held = 0;                             // positions not evicted
  // Importance (meaning set by the policy). Attention sums and maxima (H2O, SnapKV) keep f32; a
  // score set once when the key is stored (key distinctiveness) is ranked as well at f16, at
  // half the bytes.
  bool half = false;                        // set before the first append
  std::vector<float> score;                 // f32 scores (!half)
  std::vector<uint16_t> score_h;            // f16 scores (half)

  int size() const { return (int)tier.size(); }
  float get(int pos) const;
  void set(int pos, float v);
  std::vector<float> scores() const;            // every score as f32 (state files, tests)
  void append(int count, const float* scores);  // new positions in the residual (scores may be null)
  void truncate(int n);                         // forgets positions >= n
  void set_tier(int pos, int8_t t);             // keeps `held` in step
  int64_t bytes() const {
    return (int64_t)tier.size() * (int64_t)(sizeof(int8_t) + (half ? sizeof(uint16_t) : sizeof(float)));
  }
};

// How importance is ranked, higher = keep / more bits.
enum class RankKind {
  PerQuery,  // score is accumulated attention; rank = score / (n - pos), the mean attention each
             // later query gave it (plain H2O sums favour old tokens merely for being old)
  Direct,    // rank = score
};
float slot_rank(const SlotTable& t, RankKind kind, int n, int pos);

struct SlotRules {
  int sinks = 0;   // positions < sinks are never evicted or demoted
  int recent = 0;  // positions >= n - recent are never evicted or demoted
  bool is_protected(int pos, int n) const { return pos < sinks || pos >= n - recent; }
};

// Positions to evict so that at most `budget` stay held, lowest rank first (ties: older first).
// Only quantized (tiered) slots outside the protected ranges are candidates; nothing is evicted
// until held exceeds budget + slack (so eviction runs in batches). Sorted ascending.
std::vector<int> pick_evictions(const SlotTable& t, RankKind kind, int n, const SlotRules& rules, int budget, int slack);

// Tier targets over the quantized slots (all but the sinks), ranked: the first fracs[0] of them
// belong in tier 0, the next fracs[1] in tier 1, ..., the last tier takes the rest. Only
// unprotected slots move.
struct TierPlan {
  std::vector<float> thresholds;       // [tiers-1]: rank needed to be in tier t (t < tiers-1)
  std::vector<std::vector<int>> moves;  // [tiers]: positions to demote into tier t (ascending)
};
// Demotions only (a slot whose target has more bits stays where it is). A target tier's moves are
// kept only when at least min_batch slots are due for it, so demotions run in block-sized batches.
TierPlan plan_tiers(const SlotTable& t, RankKind kind, int n, const SlotRules& rules, const std::vector<double>& fracs,
                    int min_batch);

}  // namespace lkv
