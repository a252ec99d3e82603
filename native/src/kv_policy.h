// kv_policy.h — bookkeeping of the compressed KV cache, kept apart from its bytes: for one layer
// and KV head, which positions are held, at which precision tier, with what importance; and the
// decisions made from that (evict, demote). Plain data and
// pure functions, so test_kv.cpp checks them on tiny hand-computed cases.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace lkv {

// One layer and KV head, indexed by position [0, n): which positions are held, whether a held one
// is still in the f16 residual window or at which tier, and its importance. An evicted position
// costs two bits; only held ones carry a score (and, with several tiers, a tier byte). Positions
// are grouped in chunks of 1024: two bitmaps (held, residual), the held count before each 64-bit
// word, and the held slots' entries in position order, so finding a slot's entry is a popcount
// and evicting or restoring one moves at most a chunk's entries.
class SlotTable {
 public:
  static constexpr int8_t kEvicted = -1;
  static constexpr int8_t kResidual = 127;  // held in the f16 residual window, no tier yet

  // Before the first append. half: f16 scores (a score set once, e.g. key distinctiveness, ranks
  // as well at half the bytes; attention sums and maxima keep f32). tiered: a tier byte per held
  // slot (otherwise every held slot outside the residual is tier 0).
  void configure(bool half, bool tiered);
  bool half() const { return half_; }

  int size() const { return n_; }
  int held() const { return held_; }
  bool is_held(int pos) const { return (chunk(pos).held[word(pos)] & bit(pos)) != 0; }
  int8_t tier(int pos) const;
  float get(int pos) const;         // a held position's score
  void set(int pos, float v);       // a held position's score
  std::vector<float> scores() const;   // by position, 0 where evicted (state files, tests)
  std::vector<int8_t> tiers() const;   // by position
  void append(int count, const float* scores);  // new positions in the residual (scores may be null)
  void truncate(int n);                         // forgets positions >= n
  // Moves a held position to another tier or the residual, or evicts it (its score is dropped).
  void set_tier(int pos, int8_t t);
  void evict(const std::vector<int>& positions);  // ascending (positions not held are skipped)
  // An evicted position back (rewind), with the score it had.
  void restore(int pos, int8_t t, float score);
  // f(pos, score) -> new score, for every held position below `upto`, ascending.
  template <class F>
  void update_held(int upto, F f);
  // f(pos, tier, score) for every held position, ascending.
  template <class F>
  void for_each_held(F f) const;
  int64_t bytes() const;

 private:
  static constexpr int kChunk = 1024, kWords = kChunk / 64;
  struct Chunk {
    uint64_t held[kWords] = {}, res[kWords] = {};
    uint16_t before[kWords] = {};  // held slots in this chunk before each word
    std::vector<uint8_t> slot;     // per held slot, in position order: score (2 or 4 bytes), tier
  };
  static int word(int pos) { return (pos >> 6) & (kWords - 1); }
  static uint64_t bit(int pos) { return 1ull << (pos & 63); }
  const Chunk& chunk(int pos) const { return chunks_[(size_t)(pos / kChunk)]; }
  Chunk& chunk(int pos) { return chunks_[(size_t)(pos / kChunk)]; }
  size_t index(int pos) const {  // the entry of a position in its chunk (or where it would go)
    const Chunk& c = chunk(pos);
    const int w = word(pos);
    return c.before[w] + (size_t)__builtin_popcountll(c.held[w] & ((1ull << (pos & 63)) - 1));
  }
  static void recount(Chunk& c);
  // a held position's entry: score, then the tier byte (tiered) at entry() - 1
  uint8_t* entry_at(int pos) { return chunk(pos).slot.data() + index(pos) * entry(); }
  const uint8_t* entry_at(int pos) const { return chunk(pos).slot.data() + index(pos) * entry(); }
  float read(const uint8_t* e) const;
  void write(uint8_t* e, float v) const;
  size_t entry() const { return (half_ ? 2 : 4) + (tiered_ ? 1 : 0); }

  std::vector<Chunk> chunks_;
  int n_ = 0, held_ = 0;
  bool half_ = false, tiered_ = false;
};

template <class F>
void SlotTable::update_held(int upto, F f) {
  const size_t E = entry();
  for (size_t ci = 0; ci < chunks_.size() && (int)(ci * kChunk) < upto; ci++) {
    Chunk& c = chunks_[ci];
    uint8_t* e = c.slot.data();
    for (int w = 0; w < kWords; w++)
      for (uint64_t bits = c.held[w]; bits; bits &= bits - 1, e += E) {
        const int pos = (int)(ci * kChunk) + 64 * w + __builtin_ctzll(bits);
        if (pos >= upto) return;
        write(e, f(pos, read(e)));
      }
  }
}

template <class F>
void SlotTable::for_each_held(F f) const {
  const size_t E = entry();
  for (size_t ci = 0; ci < chunks_.size(); ci++) {
    const Chunk& c = chunks_[ci];
    const uint8_t* e = c.slot.data();
    for (int w = 0; w < kWords; w++)
      for (uint64_t bits = c.held[w]; bits; bits &= bits - 1, e += E) {
        const int b = __builtin_ctzll(bits);
        const int8_t t = (c.res[w] >> b) & 1 ? kResidual : tiered_ ? (int8_t)e[E - 1] : (int8_t)0;
        f((int)(ci * kChunk) + 64 * w + b, t, read(e));
      }
  }
}

// How importance is ranked, higher = keep / more bits.
enum class RankKind {
  PerQuery,  // score is accumulated attention; rank = score / (n - pos), the mean attention each
             // later query gave it (plain H2O sums favour old tokens merely for being old)
  Direct,    // rank = score
};
inline float slot_rank(RankKind kind, int n, int pos, float score) {
  return kind == RankKind::PerQuery ? score / (float)(n - pos > 1 ? n - pos : 1) : score;
}

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
