// kv_policy.cpp — slot bookkeeping and eviction/demotion decisions (see kv_policy.h).
#include "kv_policy.h"

#include <algorithm>

#include "common.h"

namespace lkv {

float SlotTable::get(int pos) const { return half ? f16_to_f32(score_h[(size_t)pos]) : score[(size_t)pos]; }

void SlotTable::set(int pos, float v) {
  if (half) score_h[(size_t)pos] = f32_to_f16(v);
  else score[(size_t)pos] = v;
}

std::vector<float> SlotTable::scores() const {
  if (!half) return score;
  std::vector<float> out(score_h.size());
  for (size_t p = 0; p < out.size(); p++) out[p] = f16_to_f32(score_h[p]);
  return out;
}

void SlotTable::append(int count, const float* scores) {
  for (int i = 0; i < count; i++) {
    tier.push_back(kResidual);
    const float s = scores ? scores[i] : 0.0f;
    if (half) score_h.push_back(f32_to_f16(s));
    else score.push_back(s);
  }
  held += count;
}

void SlotTable::truncate(int n) {
  if (n >= size()) return;
  for (int p = n; p < size(); p++)
    if (tier[p] != kEvicted) held--;
  tier.resize((size_t)n);
  if (half) score_h.resize((size_t)n);
  else score.resize((size_t)n);
}

void SlotTable::set_tier(int pos, int8_t t) {
  if (tier[pos] == kEvicted && t != kEvicted) held++;
  if (tier[pos] != kEvicted && t == kEvicted) held--;
  tier[pos] = t;
}

float slot_rank(const SlotTable& t, RankKind kind, int n, int pos) {
  if (kind == RankKind::PerQuery) return t.get(pos) / (float)std::max(1, n - pos);
  return t.get(pos);
}

namespace {
struct Cand {
  float rank;
  int pos;
};
// Lower rank first; on ties the older position first.
bool less_important(const Cand& a, const Cand& b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

// Held, quantized slots; protected ones only when with_protected (sinks never: they keep the top tier).
std::vector<Cand> candidates(const SlotTable& t, RankKind kind, int n, const SlotRules& rules, bool with_protected = false) {
  std::vector<Cand> c;
  for (int p = 0; p < std::min(n, t.size()); p++) {
    const int8_t tr = t.tier[p];
    if (tr == SlotTable::kEvicted || tr == SlotTable::kResidual || p < rules.sinks) continue;
    if (!with_protected && rules.is_protected(p, n)) continue;
    c.push_back({slot_rank(t, kind, n, p), p});
  }
  return c;
}
}  // namespace

std::vector<int> pick_evictions(const SlotTable& t, RankKind kind, int n, const SlotRules& rules, int budget, int slack) {
  std::vector<int> out;
  if (t.held <= budget + slack) return out;
  std::vector<Cand> c = candidates(t, kind, n, rules);
  const int k = std::min((int)c.size(), t.held - budget);
  if (k <= 0) return out;
  std::nth_element(c.begin(), c.begin() + (k - 1), c.end(), less_important);
  std::sort(c.begin(), c.begin() + k, less_important);
  for (int i = 0; i < k; i++) out.push_back(c[i].pos);
  std::sort(out.begin(), out.end());
  return out;
}

TierPlan plan_tiers(const SlotTable& t, RankKind kind, int n, const SlotRules& rules, const std::vector<double>& fracs,
                    int min_batch) {
  const int T = (int)fracs.size();
  TierPlan plan;
  plan.thresholds.assign((size_t)std::max(0, T - 1), 0.0f);
  plan.moves.assign((size_t)T, {});
  if (T <= 1) return plan;
  std::vector<Cand> c = candidates(t, kind, n, rules, true);
  // most important first
  std::sort(c.begin(), c.end(), [](const Cand& a, const Cand& b) { return less_important(b, a); });
  const int E = (int)c.size();
  std::vector<int> end((size_t)T);  // tier t covers ranked indices [end[t-1], end[t])
  double cum = 0;
  for (int i = 0; i < T; i++) {
    cum += fracs[i];
    end[i] = i == T - 1 ? E : std::min(E, (int)(cum * E + 0.5));
  }
  for (int i = 0; i < T - 1; i++) {
    // the rank of the last slot in tier i; an empty tier (or none ranked) admits nothing new
    plan.thresholds[i] = end[i] > 0 && E > 0 ? c[(size_t)std::min(end[i], E) - 1].rank : 3.0e38f;
    if (end[i] <= 0 && i > 0) plan.thresholds[i] = plan.thresholds[i - 1];
  }
  int tier_of = 0;
  for (int r = 0; r < E; r++) {
    while (tier_of < T - 1 && r >= end[tier_of]) tier_of++;
    if (tier_of > t.tier[c[r].pos] && !rules.is_protected(c[r].pos, n)) plan.moves[tier_of].push_back(c[r].pos);
  }
  for (auto& m : plan.moves) {
    if ((int)m.size() < min_batch) m.clear();
    std::sort(m.begin(), m.end());
  }
  return plan;
}


}  // namespace lkv
