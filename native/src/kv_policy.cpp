// kv_policy.cpp — slot bookkeeping and eviction/demotion decisions (see kv_policy.h).
#include "kv_policy.h"

#include <algorithm>
#include <cstring>

#include "common.h"

namespace lkv {

void SlotTable::configure(bool half, bool tiered) {
  LKV_CHECK(n_ == 0, "slot table: configured after use");
  half_ = half;
  tiered_ = tiered;
}

float SlotTable::read(const uint8_t* e) const {
  if (half_) {
    uint16_t h;
    std::memcpy(&h, e, 2);
    return f16_to_f32(h);
  }
  float v;
  std::memcpy(&v, e, 4);
  return v;
}

void SlotTable::write(uint8_t* e, float v) const {
  if (half_) {
    const uint16_t h = f32_to_f16(v);
    std::memcpy(e, &h, 2);
  } else {
    std::memcpy(e, &v, 4);
  }
}

void SlotTable::recount(Chunk& c) {
  int sum = 0;
  for (int w = 0; w < kWords; w++) {
    c.before[w] = (uint16_t)sum;
    sum += __builtin_popcountll(c.held[w]);
  }
}

int8_t SlotTable::tier(int pos) const {
  if (!is_held(pos)) return kEvicted;
  const Chunk& c = chunk(pos);
  if (c.res[word(pos)] & bit(pos)) return kResidual;
  return tiered_ ? (int8_t)entry_at(pos)[entry() - 1] : (int8_t)0;
}

float SlotTable::get(int pos) const { return read(entry_at(pos)); }

void SlotTable::set(int pos, float v) { write(entry_at(pos), v); }

std::vector<float> SlotTable::scores() const {
  std::vector<float> out((size_t)n_, 0.0f);
  for_each_held([&](int p, int8_t, float s) { out[(size_t)p] = s; });
  return out;
}

std::vector<int8_t> SlotTable::tiers() const {
  std::vector<int8_t> out((size_t)n_, kEvicted);
  for_each_held([&](int p, int8_t t, float) { out[(size_t)p] = t; });
  return out;
}

void SlotTable::append(int count, const float* scores) {
  const size_t E = entry();
  for (int i = 0; i < count; i++, n_++) {
    if (n_ % kChunk == 0) chunks_.emplace_back();
    Chunk& c = chunks_.back();
    const int w = word(n_);
    if (n_ % 64 == 0 && w > 0) c.before[w] = (uint16_t)(c.before[w - 1] + __builtin_popcountll(c.held[w - 1]));
    c.held[w] |= bit(n_);
    c.res[w] |= bit(n_);
    c.slot.resize(c.slot.size() + E);
    uint8_t* e = c.slot.data() + c.slot.size() - E;
    write(e, scores ? scores[i] : 0.0f);
    if (tiered_) e[E - 1] = (uint8_t)kResidual;
  }
  held_ += count;
}

void SlotTable::truncate(int n) {
  if (n >= n_) return;
  chunks_.resize((size_t)((n + kChunk - 1) / kChunk));
  if (n % kChunk) {
    Chunk& c = chunks_.back();
    const int w = word(n);
    const uint64_t low = (1ull << (n & 63)) - 1;
    c.held[w] &= low;
    c.res[w] &= low;
    for (int x = w + 1; x < kWords; x++) c.held[x] = c.res[x] = 0;
    recount(c);
    c.slot.resize((c.before[kWords - 1] + (size_t)__builtin_popcountll(c.held[kWords - 1])) * entry());
  }
  n_ = n;
  held_ = 0;
  for (const Chunk& c : chunks_)
    for (int w = 0; w < kWords; w++) held_ += __builtin_popcountll(c.held[w]);
}

void SlotTable::set_tier(int pos, int8_t t) {
  if (t == kEvicted) return evict({pos});
  LKV_CHECK(is_held(pos), "slot table: position %d is evicted (restore() brings one back)", pos);
  Chunk& c = chunk(pos);
  if (t == kResidual) c.res[word(pos)] |= bit(pos);
  else c.res[word(pos)] &= ~bit(pos);
  if (tiered_ && t != kResidual) entry_at(pos)[entry() - 1] = (uint8_t)t;
}

void SlotTable::evict(const std::vector<int>& positions) {
  const size_t E = entry();
  for (size_t a = 0; a < positions.size();) {  // one chunk at a time: one pass over its entries
    const size_t ci = (size_t)(positions[a] / kChunk);
    Chunk& c = chunks_[ci];
    std::vector<uint8_t> drop(c.slot.size() / E, 0);
    const size_t first = a;
    for (; a < positions.size() && (size_t)(positions[a] / kChunk) == ci; a++)
      if (is_held(positions[a])) drop[index(positions[a])] = 1;  // entries found before any bit moves
    for (size_t i = first; i < a; i++) {
      const int p = positions[i];
      if (!is_held(p)) continue;
      c.held[word(p)] &= ~bit(p);
      c.res[word(p)] &= ~bit(p);
      held_--;
    }
    recount(c);
    size_t out = 0;
    for (size_t i = 0; i < drop.size(); i++)
      if (!drop[i]) {
        if (out != i) std::memmove(c.slot.data() + out * E, c.slot.data() + i * E, E);
        out++;
      }
    c.slot.resize(out * E);
  }
}

void SlotTable::restore(int pos, int8_t t, float score) {
  LKV_CHECK(pos < n_ && !is_held(pos) && t != kEvicted, "slot table: cannot restore position %d", pos);
  Chunk& c = chunk(pos);
  const size_t E = entry(), at = index(pos) * E;
  c.slot.insert(c.slot.begin() + (ptrdiff_t)at, E, 0);
  write(c.slot.data() + at, score);
  if (tiered_) c.slot[at + E - 1] = (uint8_t)t;
  c.held[word(pos)] |= bit(pos);
  if (t == kResidual) c.res[word(pos)] |= bit(pos);
  recount(c);
  held_++;
}

int64_t SlotTable::bytes() const {
  int64_t b = 0;
  for (const Chunk& c : chunks_) b += (int64_t)(sizeof(c.held) + sizeof(c.res) + sizeof(c.before) + sizeof(c.slot) + c.slot.size());
  return b;
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
  t.for_each_held([&](int p, int8_t tr, float score) {
    if (p >= n || tr == SlotTable::kResidual || p < rules.sinks) return;
    if (!with_protected && rules.is_protected(p, n)) return;
    c.push_back({slot_rank(kind, n, p, score), p});
  });
  return c;
}
}  // namespace

std::vector<int> pick_evictions(const SlotTable& t, RankKind kind, int n, const SlotRules& rules, int budget, int slack) {
  std::vector<int> out;
  if (t.held() <= budget + slack) return out;
  std::vector<Cand> c = candidates(t, kind, n, rules);
  const int k = std::min((int)c.size(), t.held() - budget);
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
    if (tier_of > t.tier(c[r].pos) && !rules.is_protected(c[r].pos, n)) plan.moves[tier_of].push_back(c[r].pos);
  }
  for (auto& m : plan.moves) {
    if ((int)m.size() < min_batch) m.clear();
    std::sort(m.begin(), m.end());
  }
  return plan;
}


}  // namespace lkv
