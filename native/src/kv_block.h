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

struct Block {
  uint32_t id = 0;            // unique within its head, increasing
  int tier = 0, kbits = 16, vbits = 16;
  int n = 0;                  // rows
  int emptied = -1;           // cache length when its last row left (kept while the journal may need it)
  int created = 0;            // cache length when the block was formed (truncate re-expands later ones)
  int32_t pos0 = 0;           // rows hold positions pos0, pos0+1, ... when `pos` is empty
  RowPositions pos;           // per-row positions (caches with eviction or tiers)
  std::vector<KvQParams> kp;  // [head_dim]
  std::vector<uint8_t> kc;    // [head_dim][kv_planar_bytes(n, kbits)]
  std::vector<KvQParams> vp;  // [n][head_dim / vg]
  std::vector<uint8_t> vc;    // [n][kv_value_row_bytes]
  std::vector<KvOutlier> ko, vo;

  int position(int j) const { return pos.empty() ? pos0 + j : pos[j]; }
  int64_t code_bytes() const { return (int64_t)kc.size() + (int64_t)vc.size(); }
  int64_t param_bytes() const { return 4 * (int64_t)(kp.size() + vp.size()); }
  int64_t outlier_bytes() const { return 4 * (int64_t)(ko.size() + vo.size()); }
  int64_t index_bytes() const { return pos.bytes() + (int64_t)sizeof(Block); }
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
