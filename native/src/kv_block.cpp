// kv_block.cpp — reference operations on compressed-cache blocks (see kv_block.h).
#include "kv_block.h"

#include <algorithm>
#include <cmath>

namespace lkv {
namespace kvc {

// Row j of a block (its key alone, or key and value), dequantized with the reference functions
// (still rotated when rot is on).
void block_key_ref(const Block& b, int hd, int j, float* k) {
  for (int c = 0; c < hd; c++) k[c] = kv_key_dense_ref(b.kp().data(), b.kc().data(), b.n, b.kbits, j, c);
  const Part<KvOutlier> ko = b.ko();
  auto it = std::lower_bound(ko.begin(), ko.end(), (uint16_t)(j * hd), [](const KvOutlier& o, uint16_t x) { return o.index < x; });
  for (; it != ko.end() && it->index < (j + 1) * hd; ++it) k[it->index - j * hd] += f16_to_f32(it->delta);
}

void block_row_ref(const Block& b, int hd, int vg, int j, float* k, float* v) {
  block_key_ref(b, hd, j, k);
  const int ng = b.vbits == 16 ? 0 : hd / vg, RB = kv_value_row_bytes(hd, b.vbits);
  for (int c = 0; c < hd; c++)
    v[c] = kv_value_dense_ref(b.vp().data() + (size_t)j * ng, b.vc().data() + (size_t)j * RB, hd, vg, b.vbits, c);
  const Part<KvOutlier> vo = b.vo();
  auto it = std::lower_bound(vo.begin(), vo.end(), (uint16_t)(j * hd), [](const KvOutlier& o, uint16_t x) { return o.index < x; });
  for (; it != vo.end() && it->index < (j + 1) * hd; ++it) v[it->index - j * hd] += f16_to_f32(it->delta);
}

void Block::pack(const std::vector<KvQParams>& kp, const std::vector<KvQParams>& vp, const std::vector<KvOutlier>& ko,
                 const std::vector<KvOutlier>& vo, const std::vector<uint8_t>& kc, const std::vector<uint8_t>& vc) {
  nkp_ = (uint32_t)kp.size();
  nvp_ = (uint32_t)vp.size();
  nko_ = (uint32_t)ko.size();
  nvo_ = (uint32_t)vo.size();
  nkc_ = (uint32_t)kc.size();
  std::vector<uint8_t> buf(words() + kc.size() + vc.size());
  uint8_t* d = buf.data();
  auto put = [&d](const void* src, size_t bytes) {
    if (bytes) std::memcpy(d, src, bytes);
    d += bytes;
  };
  put(kp.data(), 4 * kp.size());
  put(vp.data(), 4 * vp.size());
  put(ko.data(), 4 * ko.size());
  put(vo.data(), 4 * vo.size());
  put(kc.data(), kc.size());
  put(vc.data(), vc.size());
  buf_ = std::move(buf);
}

int32_t RowPositions::operator[](size_t j) const {
  if (form_ == kOffsets) return base_ + (int32_t)v_[j];
  if (form_ == kWide) return (int32_t)((uint32_t)v_[2 * j] | (uint32_t)v_[2 * j + 1] << 16);
  size_t w = 0;  // the j-th set bit
  for (;; w++) {
    const size_t c = (size_t)__builtin_popcount(v_[w]);
    if (j < c) break;
    j -= c;
  }
  uint32_t bits = v_[w];
  for (; j > 0; j--) bits &= bits - 1;
  return base_ + (int32_t)(16 * w) + __builtin_ctz(bits);
}

void RowPositions::assign(const int32_t* p, size_t m) {
  v_.clear();
  form_ = kOffsets;
  count_ = (uint32_t)m;
  if (m > 0) {
    const int32_t lo = *std::min_element(p, p + m), hi = *std::max_element(p, p + m);
    base_ = lo;
    bool ascending = true;
    for (size_t j = 1; j < m; j++) ascending &= p[j] > p[j - 1];
    const int64_t words = ((int64_t)hi - lo) / 16 + 1;
    if (ascending && words < (int64_t)m) {
      form_ = kBitmap;
      v_.assign((size_t)words, 0);
      for (size_t j = 0; j < m; j++) v_[(size_t)(p[j] - lo) / 16] |= (uint16_t)(1u << ((p[j] - lo) % 16));
    } else if ((int64_t)hi - lo > 65535) {
      form_ = kWide;
      v_.resize(2 * m);
      for (size_t j = 0; j < m; j++) {
        v_[2 * j] = (uint16_t)((uint32_t)p[j] & 0xffff);
        v_[2 * j + 1] = (uint16_t)((uint32_t)p[j] >> 16);
      }
    } else {
      v_.resize(m);
      for (size_t j = 0; j < m; j++) v_[j] = (uint16_t)(p[j] - lo);
    }
  }
  v_.shrink_to_fit();
}

void RowPositions::insert(size_t j, int32_t p) {
  if (form_ == kOffsets && !v_.empty() && p >= base_ && (int64_t)p - base_ <= 65535) {  // fits the current base
    v_.insert(v_.begin() + (ptrdiff_t)j, (uint16_t)(p - base_));
    count_++;
    return;
  }
  std::vector<int32_t> all = to_vector();
  all.insert(all.begin() + (ptrdiff_t)j, p);
  assign(all.data(), all.size());
}

void RowPositions::compact(const std::vector<int>& newrow) {
  std::vector<int32_t> all = to_vector(), kept;
  for (size_t j = 0; j < all.size(); j++)
    if (newrow[j] >= 0) kept.push_back(all[j]);
  assign(kept.data(), kept.size());
}

std::vector<int32_t> RowPositions::to_vector() const {
  std::vector<int32_t> v;
  v.reserve(count_);
  if (form_ == kBitmap) {
    for (size_t w = 0; w < v_.size(); w++)
      for (uint32_t bits = v_[w]; bits; bits &= bits - 1) v.push_back(base_ + (int32_t)(16 * w) + __builtin_ctz(bits));
    return v;
  }
  for (size_t j = 0; j < count_; j++) v.push_back((*this)[j]);
  return v;
}

const int32_t* RowPositions::data(std::vector<int32_t>& buf) const {
  if (empty()) return nullptr;
  buf = to_vector();
  return buf.data();
}

// Quantizes m rows (k, v: [m][hd], already rotated) into one block.
Block make_block(const float* k, const float* v, const int32_t* pos, int m, const KvTier& tier, int tier_index, int hd, int vg,
                 double outliers, bool per_row_pos, int created) {
  Block b;
  b.tier = tier_index;
  b.kbits = tier.kbits;
  b.vbits = tier.vbits;
  b.n = m;
  b.created = created;
  b.pos0 = pos[0];
  if (per_row_pos) b.pos.assign(pos, (size_t)m);
  const size_t ne = (size_t)m * hd;
  std::vector<uint8_t> kskip, vskip;
  const int count = (int)std::lround(outliers * (double)ne);
  if (count > 0 && b.kbits < 16) {
    kskip.assign(ne, 0);
    std::vector<std::vector<int>> groups((size_t)hd);
    for (int c = 0; c < hd; c++)
      for (int j = 0; j < m; j++) groups[c].push_back(j * hd + c);
    kv_select_outliers_ref(k, groups, count, kskip.data());
  }
  if (count > 0 && b.vbits < 16) {
    vskip.assign(ne, 0);
    std::vector<std::vector<int>> groups;
    for (int j = 0; j < m; j++)
      for (int g = 0; g < hd / vg; g++) {
        groups.emplace_back();
        for (int i = 0; i < vg; i++) groups.back().push_back(j * hd + g * vg + i);
      }
    kv_select_outliers_ref(v, groups, count, vskip.data());
  }
  std::vector<KvQParams> kp((size_t)kv_key_param_count(hd, b.kbits)), vp;
  std::vector<uint8_t> kc((size_t)kv_key_code_bytes(m, hd, b.kbits)), vc;
  std::vector<KvOutlier> ko, vo;
  kv_quantize_keys_ref(k, m, hd, b.kbits, kskip.empty() ? nullptr : kskip.data(), kp.data(), kc.data());
  const int ng = kv_value_param_count(hd, vg, b.vbits), RB = kv_value_row_bytes(hd, b.vbits);
  vp.resize((size_t)m * ng);
  vc.resize((size_t)m * RB);
  for (int j = 0; j < m; j++)
    kv_quantize_value_row_ref(v + (size_t)j * hd, hd, vg, b.vbits, vskip.empty() ? nullptr : vskip.data() + (size_t)j * hd,
                              vp.data() + (size_t)j * ng, vc.data() + (size_t)j * RB);
  // exact values of the outliers, as differences to what the dense codes give
  for (size_t e = 0; e < kskip.size(); e++)
    if (kskip[e]) {
      const int j = (int)(e / hd), c = (int)(e % hd);
      const float d = k[e] - kv_key_dense_ref(kp.data(), kc.data(), m, b.kbits, j, c);
      ko.push_back({(uint16_t)e, f32_to_f16(d)});
    }
  for (size_t e = 0; e < vskip.size(); e++)
    if (vskip[e]) {
      const int j = (int)(e / hd), c = (int)(e % hd);
      const float d = v[e] - kv_value_dense_ref(vp.data() + (size_t)j * ng, vc.data() + (size_t)j * RB, hd, vg, b.vbits, c);
      vo.push_back({(uint16_t)e, f32_to_f16(d)});
    }
  b.pack(kp, vp, ko, vo, kc, vc);
  return b;
}

// Keeps the rows of b whose keep[j] is set (codes are repacked, never requantized).
void keep_rows(Block& b, const std::vector<uint8_t>& keep, int hd, int vg) {
  std::vector<int> newrow((size_t)b.n, -1);
  int m = 0;
  for (int j = 0; j < b.n; j++)
    if (keep[j]) newrow[j] = m++;
  if (m == b.n) return;
  if (b.pos.empty()) {  // rows stop being consecutive positions
    std::vector<int32_t> p((size_t)b.n);
    for (int j = 0; j < b.n; j++) p[(size_t)j] = b.pos0 + j;
    b.pos.assign(p.data(), p.size());
  }
  const int So = kv_planar_bytes(b.n, b.kbits), Sn = kv_planar_bytes(m, b.kbits);
  std::vector<uint8_t> kc((size_t)hd * Sn, 0);
  for (int c = 0; c < hd; c++) {
    const uint8_t* src = b.kc().data() + (size_t)c * So;
    uint8_t* dst = kc.data() + (size_t)c * Sn;
    for (int j = 0; j < b.n; j++) {
      if (newrow[j] < 0) continue;
      if (b.kbits == 16) std::memcpy(dst + 2 * newrow[j], src + 2 * j, 2);
      else kv_planar_put(dst, m, b.kbits, newrow[j], kv_planar_get(src, b.n, b.kbits, j));
    }
  }
  const int ng = kv_value_param_count(hd, vg, b.vbits), RB = kv_value_row_bytes(hd, b.vbits);
  std::vector<uint8_t> vc;
  std::vector<KvQParams> vp;
  for (int j = 0; j < b.n; j++) {
    if (newrow[j] < 0) continue;
    vc.insert(vc.end(), b.vc().data() + (size_t)j * RB, b.vc().data() + (size_t)(j + 1) * RB);
    vp.insert(vp.end(), b.vp().data() + (size_t)j * ng, b.vp().data() + (size_t)(j + 1) * ng);
  }
  std::vector<KvOutlier> lists[2];
  for (int i = 0; i < 2; i++)
    for (const KvOutlier& o : i == 0 ? b.ko() : b.vo()) {
      const int r = newrow[o.index / hd];
      if (r >= 0) lists[i].push_back({(uint16_t)(r * hd + o.index % hd), o.delta});
    }
  b.pos.compact(newrow);
  b.pack(b.kp().vec(), vp, lists[0], lists[1], kc, vc);
  b.n = m;
}

// Row j of b as an undo record (codes unchanged).
Undo take_row(const Block& b, int j, int hd, int vg) {
  Undo u;
  u.block = b.id;
  u.row = (int16_t)j;
  u.pos = b.position(j);
  u.tier = (int8_t)b.tier;
  std::vector<KvOutlier> ko, vo;
  for (const KvOutlier& o : b.ko())
    if (o.index / hd == j) ko.push_back({(uint16_t)(o.index % hd), o.delta});
  for (const KvOutlier& o : b.vo())
    if (o.index / hd == j) vo.push_back({(uint16_t)(o.index % hd), o.delta});
  u.nko = (uint16_t)ko.size();
  u.nvo = (uint16_t)vo.size();
  const UndoLayout L(hd, vg, b.kbits, b.vbits);
  u.data.resize(L.size(u.nko, u.nvo));
  uint8_t* d = u.data.data();
  const int S = kv_planar_bytes(b.n, b.kbits);
  for (int c = 0; c < hd; c++) {  // the row's key codes, planar-packed along the channels
    if (b.kbits == 16) std::memcpy(d + 2 * c, b.kc().data() + (size_t)c * S + 2 * j, 2);
    else kv_planar_put(d, hd, b.kbits, c, kv_planar_get(b.kc().data() + (size_t)c * S, b.n, b.kbits, j));
  }
  d += L.kcodes;
  if (L.vp) std::memcpy(d, b.vp().data() + (size_t)j * (L.vp / sizeof(KvQParams)), L.vp);  // none at 16 bits
  d += L.vp;
  std::memcpy(d, b.vc().data() + (size_t)j * L.vc, L.vc);
  d += L.vc;
  if (!ko.empty()) std::memcpy(d, ko.data(), sizeof(KvOutlier) * ko.size());
  d += sizeof(KvOutlier) * ko.size();
  if (!vo.empty()) std::memcpy(d, vo.data(), sizeof(KvOutlier) * vo.size());
  return u;
}

// Puts an undo record's row back into b at its old index.
void insert_row(Block& b, const Undo& u, int hd, int vg) {
  const UndoLayout L(hd, vg, b.kbits, b.vbits);
  const uint8_t* kcodes = u.data.data();
  const uint8_t* vp = kcodes + L.kcodes;
  const uint8_t* vc = vp + L.vp;
  const KvOutlier* ko = (const KvOutlier*)(vc + L.vc);
  const KvOutlier* vo = ko + u.nko;
  const int j = u.row, n = b.n, m = n + 1;
  const int So = kv_planar_bytes(n, b.kbits), Sn = kv_planar_bytes(m, b.kbits);
  std::vector<uint8_t> kc((size_t)hd * Sn, 0);
  for (int c = 0; c < hd; c++) {
    const uint8_t* src = b.kc().data() + (size_t)c * So;
    uint8_t* dst = kc.data() + (size_t)c * Sn;
    for (int r = 0; r < m; r++) {
      if (b.kbits == 16) std::memcpy(dst + 2 * r, r == j ? kcodes + 2 * c : src + 2 * (r < j ? r : r - 1), 2);
      else
        kv_planar_put(dst, m, b.kbits, r,
                      r == j ? kv_planar_get(kcodes, hd, b.kbits, c) : kv_planar_get(src, n, b.kbits, r < j ? r : r - 1));
    }
  }
  const size_t ng = L.vp / sizeof(KvQParams);
  std::vector<KvQParams> vps = b.vp().vec();
  std::vector<uint8_t> vcs = b.vc().vec();
  vps.insert(vps.begin() + (ptrdiff_t)((size_t)j * ng), (const KvQParams*)vp, (const KvQParams*)vp + ng);
  vcs.insert(vcs.begin() + (ptrdiff_t)((size_t)j * L.vc), vc, vc + L.vc);
  b.pos.insert((size_t)j, u.pos);
  std::vector<KvOutlier> lists[2] = {b.ko().vec(), b.vo().vec()};
  for (int i = 0; i < 2; i++) {
    for (KvOutlier& o : lists[i])
      if (o.index / hd >= j) o.index = (uint16_t)(o.index + hd);
    const KvOutlier* add = i == 0 ? ko : vo;
    const int na = i == 0 ? u.nko : u.nvo;
    for (int x = 0; x < na; x++) lists[i].push_back({(uint16_t)(j * hd + add[x].index), add[x].delta});
    std::sort(lists[i].begin(), lists[i].end(), [](const KvOutlier& a, const KvOutlier& c) { return a.index < c.index; });
  }
  b.pack(b.kp().vec(), vps, lists[0], lists[1], kc, vcs);
  b.n = m;
  b.emptied = -1;
}

}  // namespace kvc
}  // namespace lkv
