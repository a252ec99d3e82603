// kv_block.h — one block of the compressed KV cache in memory (kv_formats.h has its byte layout)
// and the reference operations on blocks: quantize rows into a block, read a row back, drop rows,
// and take out / put back single rows for the rewind journal. Internal to the compressed cache.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "kv_compressed.h"
#include "kv_formats.h"

namespace lkv {
namespace kvc {

// f16 -> f32 without branches (exact for finite values; the cache never holds inf/NaN).
inline float half_fast(uint16_t h) {
  const uint32_t mag = (uint32_t)(h & 0x7fff) << 13;
  float f;
  std::memcpy(&f, &mag, 4);
  f *= 5.192296858534828e33f;  // 2^112: rebias the exponent (also scales subnormals exactly)
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits |= (uint32_t)(h & 0x8000) << 16;  // the sign, without a branch
  std::memcpy(&f, &bits, 4);
  return f;
}

// Per-row positions of a block whose rows are not consecutive positions (eviction, tiers), in the
// cheapest of three forms: a bitmap over [base, base + span) when the positions ascend and the
// bitmap is smaller than offsets (a block formed from consecutive tokens and thinned by eviction:
// 16 bytes for 128 positions instead of 2 per row), 2-byte offsets from a base while every position
// lies within 65535 of it, else 4-byte positions.
class RowPositions {
 public:
  bool empty() const { return count_ == 0; }
  size_t size() const { return count_; }
  int32_t operator[](size_t j) const;
  void assign(const int32_t* p, size_t m);  // chooses the form
  void insert(size_t j, int32_t p);
  // Keeps the positions whose newrow[j] >= 0, at index newrow[j] (ascending where kept).
  void compact(const std::vector<int>& newrow);
  std::vector<int32_t> to_vector() const;
  // All positions as int32, expanded into buf; nullptr when empty.
  const int32_t* data(std::vector<int32_t>& buf) const;
  int64_t bytes() const { return 2 * (int64_t)v_.size(); }
  bool is_bitmap() const { return form_ == kBitmap; }

 private:
  enum Form : uint8_t { kOffsets, kWide, kBitmap };
  // kOffsets: offsets from base_; kWide: each position as two halves, low first; kBitmap: bit i of
  // word i / 16 set when base_ + i is held
  std::vector<uint16_t> v_;
  int32_t base_ = 0;
  uint32_t count_ = 0;
  Form form_ = kOffsets;
};

// A read-only view of one part of a block's buffer.
template <class T>
struct Part {
  const T* p = nullptr;
  size_t n = 0;
  const T* data() const { return p; }
  size_t size() const { return n; }
  bool empty() const { return n == 0; }
  const T* begin() const { return p; }
  const T* end() const { return p + n; }
  const T& operator[](size_t i) const { return p[i]; }
  std::vector<T> vec() const { return std::vector<T>(p, p + n); }
};

// A block's descriptor is a fifth of a thinned block's bytes at head_dim 64, 2 bits, so its six
// arrays share one allocation (112 bytes instead of 208 with a vector each).
struct Block {
  uint32_t id = 0;            // unique within its head, increasing
  int32_t n = 0;              // rows
  int32_t emptied = -1;       // cache length when its last row left (kept while the journal may need it)
  int32_t created = 0;        // cache length when the block was formed (truncate re-expands later ones)
  int32_t pos0 = 0;           // rows hold positions pos0, pos0+1, ... when `pos` is empty
  int8_t tier = 0, kbits = 16, vbits = 16;
  RowPositions pos;           // per-row positions (caches with eviction or tiers)

  // key params [head_dim] | value params [n][head_dim / vg] | key outliers | value outliers (4-byte
  // elements first, so each part stays aligned) | key codes [head_dim][kv_planar_bytes(n, kbits)]
  // | value codes [n][kv_value_row_bytes]
  Part<KvQParams> kp() const { return {(const KvQParams*)buf_.data(), nkp_}; }
  Part<KvQParams> vp() const { return {(const KvQParams*)buf_.data() + nkp_, nvp_}; }
  Part<KvOutlier> ko() const { return {(const KvOutlier*)(buf_.data() + 4 * (nkp_ + nvp_)), nko_}; }
  Part<KvOutlier> vo() const { return {(const KvOutlier*)(buf_.data() + 4 * (nkp_ + nvp_ + nko_)), nvo_}; }
  Part<uint8_t> kc() const { return {buf_.data() + words(), nkc_}; }
  Part<uint8_t> vc() const { return {buf_.data() + words() + nkc_, buf_.size() - words() - nkc_}; }
  // Replaces the arrays (outliers sorted by index).
  void pack(const std::vector<KvQParams>& kp, const std::vector<KvQParams>& vp, const std::vector<KvOutlier>& ko,
            const std::vector<KvOutlier>& vo, const std::vector<uint8_t>& kc, const std::vector<uint8_t>& vc);

  int position(int j) const { return pos.empty() ? pos0 + j : pos[j]; }
  int64_t code_bytes() const { return (int64_t)buf_.size() - words(); }
  int64_t param_bytes() const { return 4 * (int64_t)(nkp_ + nvp_); }
  int64_t outlier_bytes() const { return 4 * (int64_t)(nko_ + nvo_); }
  int64_t index_bytes() const { return pos.bytes() + (int64_t)sizeof(Block); }

 private:
  size_t words() const { return 4 * (size_t)(nkp_ + nvp_ + nko_ + nvo_); }
  std::vector<uint8_t> buf_;
  uint32_t nkp_ = 0, nvp_ = 0, nko_ = 0, nvo_ = 0, nkc_ = 0;
};

// One journaled change, undone by truncate(): a row taken out of a block (evicted or demoted), with
// its bytes in the block's format, or a block created by a demotion.
struct Undo {
  int32_t commit = 0;   // the cache length whose commit made the change
  uint32_t block = 0;   // block id
  int32_t pos = 0;
  int16_t row = 0;      // the row's index in the block then
  int8_t tier = 0;      // the slot's tier before
  uint8_t created = 0;  // 1: the block was created (by a demotion); no row data
  uint16_t nko = 0, nvo = 0;
  float score = 0;       // the slot's importance (an evicted slot's is dropped from the table)
  // key codes (one byte each, or f16) | value params | value codes | key outliers | value outliers
  // (outlier index = channel)
  std::vector<uint8_t> data;
  int64_t bytes() const { return (int64_t)sizeof(Undo) + (int64_t)data.size(); }
};

// Byte sizes of an undo record's pieces for a block format.
struct UndoLayout {
  size_t kcodes, vp, vc;
  UndoLayout(int hd, int vg, int kbits, int vbits)
      : kcodes((size_t)kv_planar_bytes(hd, kbits)),
        vp(sizeof(KvQParams) * kv_value_param_count(hd, vg, vbits)),
        vc((size_t)kv_value_row_bytes(hd, vbits)) {}
  size_t size(int nko, int nvo) const { return kcodes + vp + vc + sizeof(KvOutlier) * (size_t)(nko + nvo); }
};

// Row j of a block, dequantized with the reference functions (still rotated when rot is on).
void block_row_ref(const Block& b, int hd, int vg, int j, float* k, float* v);
void block_key_ref(const Block& b, int hd, int j, float* k);  // the key alone
// Quantizes m rows (k, v: [m][hd], already rotated) into one block. outliers: share of elements
// kept exactly; per_row_pos: store each row's position (else rows are pos[0], pos[0]+1, ...).
Block make_block(const float* k, const float* v, const int32_t* pos, int m, const KvTier& tier, int tier_index, int hd, int vg,
                 double outliers, bool per_row_pos, int created);
// Keeps the rows whose keep[j] is set (codes are repacked, never requantized).
void keep_rows(Block& b, const std::vector<uint8_t>& keep, int hd, int vg);
// Row j as an undo record (codes unchanged), and putting one back at its old index.
Undo take_row(const Block& b, int j, int hd, int vg);
void insert_row(Block& b, const Undo& u, int hd, int vg);

}  // namespace kvc
}  // namespace lkv
