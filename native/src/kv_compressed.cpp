// kv_compressed.cpp — the compressed KV cache (grammar and knobs: kv_compressed.h; byte layouts:
// kv_formats.h; blocks in memory: kv_block.h; attention kernels per ISA: kv_tiles.h; slot
// bookkeeping and decisions: kv_policy.h; spec strings: kv_spec.cpp).
//
// Per layer and KV head: quantized blocks (each n <= G rows at one tier) plus an f16 residual of
// the newest rows. store() only appends to the residual (Hadamard-rotated when asked), so a chunk
// attends to its own tokens in f16; commit() quantizes every full block of G rows that has left
// the residual window, then (with a budget or tiers) evicts and demotes. attend() walks the blocks
// and residual tiles once per (KV head, query tile): each block is decoded into a small float tile
// (codes unpacked, scale and zero applied, outliers added) and consumed at once by the same
// online-softmax loops as the dense cache; nothing larger than one tile is ever expanded.
#include "kv_compressed.h"

#include <algorithm>
#include <cmath>
#include <istream>
#include <ostream>

#include "common.h"
#include "kv_block.h"
#include "kv_formats.h"
#include "kv_policy.h"
#include "kv_stream.h"
#include "kv_tiles.h"
#include "simd_math.h"

namespace lkv {

namespace {

using namespace kvc;

using namespace kvstream;
constexpr int kResTile = 64;  // residual rows per tile

struct Head {
  std::vector<Block> blocks;    // by increasing id
  uint32_t next_id = 0;
  std::vector<Undo> journal;    // oldest first
  std::vector<int32_t> rpos;     // residual positions, ascending
  std::vector<uint16_t> rk, rv;  // residual rows [rows][head_dim], f16 (rotated when rot)
  SlotTable table;               // positions -> tier, importance (managed caches only)
  std::vector<float> kmean;      // running mean key (agnostic policy)
  int64_t kcount = 0;
  double loc_sum = 0;            // hl: the probed chunks' local attention shares, summed
  int32_t loc_n = 0;             //     and counted

  int res_rows() const { return (int)rpos.size(); }
};

// ---- the cache ----------------------------------------------------------------------------------

class CompressedKvCache final : public KvCache {
 public:
  CompressedKvCache(const KvShape& s, const KvSpec& spec) : s_(s), spec_(spec), spec_str_(kv_spec_string(spec)) {
    const int hd = s.head_dim;
    LKV_CHECK(hd % 8 == 0 && hd <= kKvMaxHeadDim, "KV spec '%s': head_dim %d is not supported (a multiple of 8, at most %d)",
              spec_str_.c_str(), hd, kKvMaxHeadDim);
    LKV_CHECK(!spec.rotate || (hd & (hd - 1)) == 0,
              "KV spec '%s': Hadamard rotation (rot) needs a power-of-two head_dim; this model's is %d (use norot)", spec_str_.c_str(), hd);
    vg_ = spec.vgroup == 0 ? hd : spec.vgroup;
    LKV_CHECK(vg_ <= hd && hd % vg_ == 0, "KV spec '%s': value group vg%d must divide head_dim %d", spec_str_.c_str(), vg_, hd);
    LKV_CHECK(spec.group <= kKvMaxGroup, "KV spec: key block too large");
    // tile stride: room for the AVX-512 decode's spill (<= 19 floats past G) and 32-wide score steps
    ts_ = ((std::max(spec.group, kResTile) + 31) / 32) * 32 + 32;
    ops_ = pick_tile_ops(hd, vg_, spec_.tiers);
    heads_.resize((size_t)s.n_layer * s.n_head_kv);
    for (Head& H : heads_) {
      if (spec_.policy == KvPolicy::Agnostic && spec_.managed()) H.kmean.assign((size_t)hd, 0.0f);
      // a score set once (key distinctiveness) ranks as well at f16; attention sums keep f32
      H.table.configure(spec_.policy == KvPolicy::Agnostic, spec_.tiers.size() > 1);
    }
    len_.assign((size_t)s.n_layer, 0);
    for (const KvTier& t : spec_.tiers) fracs_.push_back(t.frac);
  }

  void store(int layer, int pos, int n, const float* k, const float* v) override {
    LKV_CHECK(layer >= 0 && layer < s_.n_layer, "kv cache: layer %d out of range", layer);
    LKV_CHECK(pos == len_[layer], "kv cache: layer %d stores position %d but holds %d", layer, pos, len_[layer]);
    LKV_CHECK(pos + n <= s_.n_ctx, "context is full: %d + %d tokens exceed the session's %d", pos, n, s_.n_ctx);
    const int hd = s_.head_dim, stride = s_.n_head_kv * hd;
    std::vector<float> kr((size_t)hd), vr((size_t)hd), scores((size_t)n);
    for (int h = 0; h < s_.n_head_kv; h++) {
      Head& H = head(layer, h);
      const size_t base = H.rk.size();
      H.rk.resize(base + (size_t)n * hd);
      H.rv.resize(base + (size_t)n * hd);
      for (int i = 0; i < n; i++) {
        std::memcpy(kr.data(), k + (size_t)i * stride + h * hd, sizeof(float) * hd);
        std::memcpy(vr.data(), v + (size_t)i * stride + h * hd, sizeof(float) * hd);
        if (spec_.rotate) {
          kv_hadamard(kr.data(), hd);
          kv_hadamard(vr.data(), hd);
        }
        for (int c = 0; c < hd; c++) {
          H.rk[base + (size_t)i * hd + c] = f32_to_f16(kr[c]);
          H.rv[base + (size_t)i * hd + c] = f32_to_f16(vr[c]);
        }
        H.rpos.push_back(pos + i);
        if (!H.kmean.empty()) scores[i] = key_distinctiveness(H, kr.data());
      }
      if (spec_.managed()) H.table.append(n, H.kmean.empty() ? nullptr : scores.data());
      if (!H.kmean.empty() && rescore_due(H.kcount - n, H.kcount)) rescore(H, pos + n);
    }
    len_[layer] = pos + n;
  }

  void attend(int layer, int pos, int n, const float* q, float* out, ThreadPool* pool) override {
    LKV_CHECK(pos + n <= len_[layer], "kv cache: attention past stored positions");
    if (pool) pool_ = pool;
    const bool probe = n > 1 && locality_probe_due(pos + n) && head(layer, 0).loc_n < kLocalityProbes;
    if (reference_) return attend_reference(layer, pos, n, q, out, probe);
    const bool scores = spec_.managed() && spec_.policy != KvPolicy::Agnostic;
    // one query (decode): the attention pass keeps its scores and gathers the mass itself
    attend_tiled(layer, pos, n, q, out, pool, scores || probe);
    if ((scores && n > 1) || probe) gather_importance(layer, pos, n, q, pool, scores && n > 1, probe);
  }

  void commit(int n) override {
    for (int l = 0; l < s_.n_layer; l++) LKV_CHECK(len_[l] >= n, "kv cache: commit(%d) before layer %d stored it", n, l);
    const int tasks = (int)heads_.size();
    const std::vector<int> budgets = head_budgets(n);
    auto task = [&](int i) { settle(heads_[(size_t)i], n, budgets.empty() ? -1 : budgets[(size_t)i]); };
    if (pool_ && tasks > 1) pool_->run(tasks, task);
    else for (int i = 0; i < tasks; i++) task(i);
    n_tokens_ = n;
  }

  int n_tokens() const override { return n_tokens_; }

  void truncate(int n) override {
    LKV_CHECK(n >= 0 && n <= n_tokens_, "kv cache: cannot truncate to %d (holds %d)", n, n_tokens_);
    const int hd = s_.head_dim;
    for (Head& H : heads_) {
      undo_after(H, n);  // evictions and demotions after n, exactly (within the rewind window)
      // n is a checkpoint (the sidecar rewinds to its workspace prefix after every question):
      // records from before it only serve rewinds further back, which stay approximate anyway.
      purge_journal(H, n + spec_.rewind);
      // Blocks formed after n go back to the residual window (their rows below n, dequantized):
      // at length n those rows were f16 or at their earlier tier, so this restores the window.
      std::vector<int32_t> pos;
      std::vector<float> k, v;
      std::vector<float> kr((size_t)hd), vr((size_t)hd);
      std::vector<Block> kept;
      for (Block& b : H.blocks) {
        if (b.created <= n) {
          kept.push_back(std::move(b));
          continue;
        }
        for (int j = 0; j < b.n; j++) {
          if (b.position(j) >= n) continue;
          block_row_ref(b, hd, vg_, j, kr.data(), vr.data());
          pos.push_back(b.position(j));
          k.insert(k.end(), kr.begin(), kr.end());
          v.insert(v.end(), vr.begin(), vr.end());
        }
      }
      H.blocks = std::move(kept);
      for (int r = 0; r < H.res_rows(); r++) {
        if (H.rpos[r] >= n) break;
        pos.push_back(H.rpos[r]);
        for (int c = 0; c < hd; c++) {
          k.push_back(f16_to_f32(H.rk[(size_t)r * hd + c]));
          v.push_back(f16_to_f32(H.rv[(size_t)r * hd + c]));
        }
      }
      std::vector<int> order(pos.size());
      for (size_t i = 0; i < order.size(); i++) order[i] = (int)i;
      std::sort(order.begin(), order.end(), [&](int a, int b) { return pos[a] < pos[b]; });
      H.rpos.clear();
      H.rk.clear();
      H.rv.clear();
      for (int i : order) {
        H.rpos.push_back(pos[i]);
        for (int c = 0; c < hd; c++) {
          H.rk.push_back(f32_to_f16(k[(size_t)i * hd + c]));
          H.rv.push_back(f32_to_f16(v[(size_t)i * hd + c]));
        }
      }
      H.rk.shrink_to_fit();
      H.rv.shrink_to_fit();
      H.rpos.shrink_to_fit();
      if (spec_.managed()) {
        H.table.truncate(n);
        for (int p : H.rpos) H.table.set_tier(p, SlotTable::kResidual);
      }
    }
    for (int& L : len_) L = std::min(L, n);
    n_tokens_ = n;
  }

  KvStats stats() const override {
    KvStats st;
    st.tokens = n_tokens_;
    st.spec = spec_str_;
    const int hd = s_.head_dim;
    st.f16_bytes = 2LL * 2 * s_.n_layer * s_.n_head_kv * hd * n_tokens_;
    st.tier_tokens.assign(spec_.tiers.size(), 0.0);
    double rows = 0, res = 0, evicted = 0;
    for (int l = 0; l < s_.n_layer; l++) {
      int64_t layer_bytes = 0;
      for (int h = 0; h < s_.n_head_kv; h++) {
        const Head& H = heads_[(size_t)l * s_.n_head_kv + h];
        for (const Block& b : H.blocks) {
          st.code_bytes += b.code_bytes();
          st.param_bytes += b.param_bytes();
          st.outlier_bytes += b.outlier_bytes();
          st.index_bytes += b.index_bytes();
          layer_bytes += b.code_bytes() + b.param_bytes() + b.outlier_bytes() + b.index_bytes();
          st.tier_tokens[(size_t)b.tier] += b.n;
          rows += b.n;
        }
        for (const Undo& u : H.journal) {
          st.journal_bytes += u.bytes();
          layer_bytes += u.bytes();
        }
        const int64_t rb = 2 * (int64_t)(H.rk.size() + H.rv.size());
        st.residual_bytes += rb;
        const int64_t ib = 4 * (int64_t)H.rpos.size() + H.table.bytes() + 4 * (int64_t)H.kmean.size();
        st.index_bytes += ib;
        layer_bytes += rb + ib;
        res += H.res_rows();
        rows += H.res_rows();
        if (spec_.managed()) evicted += H.table.size() - H.table.held();
      }
      st.per_layer.push_back(layer_bytes);
      st.bytes += layer_bytes;
    }
    const double nh = (double)s_.n_layer * s_.n_head_kv;
    st.resident_tokens = rows / nh;
    st.residual_tokens = res / nh;
    st.evicted_tokens = evicted / nh;
    if (spec_.locality > 0) {
      st.streaming_heads = 0;
      for (const Head& H : heads_) st.streaming_heads += streaming(H);
    }
    for (double& t : st.tier_tokens) t /= nh;
    return st;
  }

  const KvShape& shape() const override { return s_; }
  std::string spec() const override { return spec_str_; }

  void save(std::ostream& out) const override {
    put(out, kStateMagic);
    put(out, kStateVersion);
    put<uint64_t>(out, spec_str_.size());
    out.write(spec_str_.data(), (std::streamsize)spec_str_.size());
    put<int32_t>(out, s_.n_layer);
    put<int32_t>(out, s_.n_head_kv);
    put<int32_t>(out, s_.head_dim);
    put<int32_t>(out, n_tokens_);
    for (const Head& H : heads_) {
      put<uint32_t>(out, H.next_id);
      put<uint64_t>(out, H.blocks.size());
      for (const Block& b : H.blocks) {
        put<uint32_t>(out, b.id);
        put<int32_t>(out, b.emptied);
        put<int32_t>(out, b.tier);
        put<int32_t>(out, b.n);
        put<int32_t>(out, b.created);
        put<int32_t>(out, b.pos0);
        put_vec(out, b.pos.to_vector());
        put_vec(out, b.kp().data(), b.kp().size());
        put_vec(out, b.kc().data(), b.kc().size());
        put_vec(out, b.vp().data(), b.vp().size());
        put_vec(out, b.vc().data(), b.vc().size());
        put_vec(out, b.ko().data(), b.ko().size());
        put_vec(out, b.vo().data(), b.vo().size());
      }
      put_vec(out, H.rpos);
      put_vec(out, H.rk);
      put_vec(out, H.rv);
      put_vec(out, H.table.tiers());
      put_vec(out, H.table.scores());
      put_vec(out, H.kmean);
      put<int64_t>(out, H.kcount);
      if (spec_.locality > 0) {  // hl specs only (the spec is in the header)
        put<double>(out, H.loc_sum);
        put<int32_t>(out, H.loc_n);
      }
      put<uint64_t>(out, H.journal.size());
      for (const Undo& u : H.journal) {
        put(out, u.commit);
        put(out, u.block);
        put(out, u.pos);
        put(out, u.row);
        put(out, u.tier);
        put(out, u.created);
        put(out, u.score);
        put(out, u.nko);
        put(out, u.nvo);
        put_vec(out, u.data);
      }
    }
  }

  void load(std::istream& in) override {
    LKV_CHECK(get<uint32_t>(in) == kStateMagic, "kv state: not a compressed KV cache payload");
    const uint32_t ver = get<uint32_t>(in);
    LKV_CHECK(ver == kStateVersion, "kv state: payload version %u, this build reads %u", ver, kStateVersion);
    const uint64_t sl = get<uint64_t>(in);
    LKV_CHECK(sl < 4096, "kv state: bad spec length");
    std::string spec((size_t)sl, '\0');
    in.read(&spec[0], (std::streamsize)sl);
    LKV_CHECK(in && spec == spec_str_, "kv state: made with KV spec '%s', this cache uses '%s'", spec.c_str(), spec_str_.c_str());
    LKV_CHECK(get<int32_t>(in) == s_.n_layer && get<int32_t>(in) == s_.n_head_kv && get<int32_t>(in) == s_.head_dim,
              "kv state: made for a different model shape");
    const int n = get<int32_t>(in);
    LKV_CHECK(n >= 0 && n <= s_.n_ctx, "kv state: bad token count %d", n);
    const int hd = s_.head_dim;
    std::vector<Head> heads(heads_.size());
    for (Head& H : heads) {
      H.table.configure(heads_[0].table.half(), spec_.tiers.size() > 1);
      H.next_id = get<uint32_t>(in);
      const uint64_t nb = get<uint64_t>(in);
      LKV_CHECK(nb <= 2 * (uint64_t)n + 1, "kv state: bad block count");
      std::vector<int> seen;
      for (uint64_t i = 0; i < nb; i++) {
        Block b;
        b.id = get<uint32_t>(in);
        LKV_CHECK(b.id < H.next_id && (H.blocks.empty() || H.blocks.back().id < b.id), "kv state: bad block id");
        b.emptied = get<int32_t>(in);
        b.tier = get<int32_t>(in);
        LKV_CHECK(b.tier >= 0 && b.tier < (int)spec_.tiers.size(), "kv state: bad tier %d", b.tier);
        b.kbits = spec_.tiers[(size_t)b.tier].kbits;
        b.vbits = spec_.tiers[(size_t)b.tier].vbits;
        b.n = get<int32_t>(in);
        LKV_CHECK(b.n >= 0 && b.n <= spec_.group, "kv state: bad block size %d", b.n);
        b.created = get<int32_t>(in);
        b.pos0 = get<int32_t>(in);
        std::vector<int32_t> pos;
        get_vec_upto(in, pos, (uint64_t)b.n, "positions");
        LKV_CHECK(pos.empty() || (int)pos.size() == b.n, "kv state: bad positions");
        b.pos.assign(pos.data(), pos.size());
        for (int j = 0; j < b.n; j++) {
          LKV_CHECK(b.position(j) >= 0 && b.position(j) < n, "kv state: position out of range");
          seen.push_back(b.position(j));
        }
        std::vector<KvQParams> kp, vp;
        std::vector<uint8_t> kc, vc;
        std::vector<KvOutlier> ko, vo;
        get_vec(in, kp, (uint64_t)kv_key_param_count(hd, b.kbits), "key params");
        get_vec(in, kc, (uint64_t)kv_key_code_bytes(b.n, hd, b.kbits), "key codes");
        get_vec(in, vp, (uint64_t)b.n * kv_value_param_count(hd, vg_, b.vbits), "value params");
        get_vec(in, vc, (uint64_t)b.n * kv_value_row_bytes(hd, b.vbits), "value codes");
        get_vec_upto(in, ko, (uint64_t)b.n * hd, "key outliers");
        get_vec_upto(in, vo, (uint64_t)b.n * hd, "value outliers");
        for (auto* list : {&ko, &vo})
          for (size_t e = 0; e < list->size(); e++)
            LKV_CHECK((*list)[e].index < b.n * hd && (e == 0 || (*list)[e - 1].index < (*list)[e].index), "kv state: bad outlier list");
        b.pack(kp, vp, ko, vo, kc, vc);
        H.blocks.push_back(std::move(b));
      }
      get_vec_upto(in, H.rpos, (uint64_t)n, "residual positions");
      for (size_t r = 0; r < H.rpos.size(); r++) {
        LKV_CHECK(H.rpos[r] >= 0 && H.rpos[r] < n && (r == 0 || H.rpos[r - 1] < H.rpos[r]), "kv state: bad residual positions");
        seen.push_back(H.rpos[r]);
      }
      get_vec(in, H.rk, (uint64_t)H.rpos.size() * hd, "residual keys");
      get_vec(in, H.rv, (uint64_t)H.rpos.size() * hd, "residual values");
      std::sort(seen.begin(), seen.end());
      LKV_CHECK(std::adjacent_find(seen.begin(), seen.end()) == seen.end(), "kv state: a position is held twice");
      LKV_CHECK(spec_.managed() || (int)seen.size() == n, "kv state: %zu positions held, expected %d", seen.size(), n);
      const uint64_t tn = spec_.managed() ? (uint64_t)n : 0;
      std::vector<int8_t> tiers;
      get_vec(in, tiers, tn, "slot tiers");
      std::vector<float> scores;
      get_vec(in, scores, tn, "slot scores");
      for (float x : scores) LKV_CHECK(std::isfinite(x), "kv state: bad slot score");
      for (int8_t t : tiers)
        LKV_CHECK(t == SlotTable::kEvicted || t == SlotTable::kResidual || (t >= 0 && t < (int)spec_.tiers.size()),
                  "kv state: bad slot tier");
      H.table.append((int)tn, scores.data());
      std::vector<int> evicted;
      for (int p = 0; p < (int)tn; p++) {
        if (tiers[(size_t)p] == SlotTable::kEvicted) evicted.push_back(p);
        else H.table.set_tier(p, tiers[(size_t)p]);
      }
      H.table.evict(evicted);
      LKV_CHECK(!spec_.managed() || H.table.held() == (int)seen.size(), "kv state: slot table disagrees with the blocks");
      get_vec(in, H.kmean, heads_[0].kmean.size(), "key mean");
      H.kcount = get<int64_t>(in);
      if (spec_.locality > 0) {
        H.loc_sum = get<double>(in);
        H.loc_n = get<int32_t>(in);
        LKV_CHECK(H.loc_n >= 0 && H.loc_sum >= 0 && H.loc_sum <= 1.001 * H.loc_n, "kv state: bad head locality");
      }
      const uint64_t nj = get<uint64_t>(in);
      LKV_CHECK(nj <= (uint64_t)n * 2 + 1, "kv state: bad journal length");
      for (uint64_t i = 0; i < nj; i++) {
        Undo u;
        u.commit = get<int32_t>(in);
        u.block = get<uint32_t>(in);
        u.pos = get<int32_t>(in);
        u.row = get<int16_t>(in);
        u.tier = get<int8_t>(in);
        u.created = get<uint8_t>(in);
        u.score = get<float>(in);
        u.nko = get<uint16_t>(in);
        u.nvo = get<uint16_t>(in);
        LKV_CHECK(u.commit <= n && (H.journal.empty() || H.journal.back().commit <= u.commit) && u.block < H.next_id && u.created <= 1,
                  "kv state: bad journal record");
        size_t want = 0;
        if (!u.created) {
          LKV_CHECK(u.tier >= 0 && u.tier < (int)spec_.tiers.size() && u.pos >= 0 && u.pos < n && u.row >= 0 &&
                        u.row <= spec_.group && u.nko <= hd && u.nvo <= hd,
                    "kv state: bad journal record");
          const KvTier& t = spec_.tiers[(size_t)u.tier];
          want = UndoLayout(hd, vg_, t.kbits, t.vbits).size(u.nko, u.nvo);
        }
        get_vec(in, u.data, want, "journal record");
        H.journal.push_back(std::move(u));
      }
    }
    heads_ = std::move(heads);
    for (int& L : len_) L = n;
    n_tokens_ = n;
  }

  // ---- test hooks ----
  bool reference_ = false;
  void use_generic_ops(bool on) { ops_ = on ? generic_tile_ops() : pick_tile_ops(s_.head_dim, vg_, spec_.tiers); }
  void use_avx2_ops(bool on) { ops_ = pick_tile_ops(s_.head_dim, vg_, spec_.tiers, !on); }
  const char* ops_name() const { return ops_->name; }
  const SlotTable& table(int layer, int h) const { return heads_[(size_t)layer * s_.n_head_kv + h].table; }

  void dequantize_head(int layer, int h, std::vector<int>& pos, std::vector<float>& k, std::vector<float>& v) const {
    const Head& H = heads_[(size_t)layer * s_.n_head_kv + h];
    const int hd = s_.head_dim;
    std::vector<std::pair<int, std::vector<float>>> rows;  // position -> k ++ v
    std::vector<float> kr((size_t)hd), vr((size_t)hd);
    auto add = [&](int p) {
      if (spec_.rotate) {
        kv_hadamard(kr.data(), hd);
        kv_hadamard(vr.data(), hd);
      }
      std::vector<float> kv(kr);
      kv.insert(kv.end(), vr.begin(), vr.end());
      rows.emplace_back(p, std::move(kv));
    };
    for (const Block& b : H.blocks)
      for (int j = 0; j < b.n; j++) {
        block_row_ref(b, hd, vg_, j, kr.data(), vr.data());
        add(b.position(j));
      }
    for (int r = 0; r < H.res_rows(); r++) {
      for (int c = 0; c < hd; c++) {
        kr[c] = f16_to_f32(H.rk[(size_t)r * hd + c]);
        vr[c] = f16_to_f32(H.rv[(size_t)r * hd + c]);
      }
      add(H.rpos[r]);
    }
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    pos.clear();
    k.clear();
    v.clear();
    for (auto& r : rows) {
      pos.push_back(r.first);
      k.insert(k.end(), r.second.begin(), r.second.begin() + hd);
      v.insert(v.end(), r.second.begin() + hd, r.second.end());
    }
  }

 private:
  Head& head(int l, int h) { return heads_[(size_t)l * s_.n_head_kv + h]; }

  RankKind rank_kind() const { return spec_.policy == KvPolicy::H2O ? RankKind::PerQuery : RankKind::Direct; }

  // Question-agnostic importance (KeyDiff): how unlike the average key this key points, 1 - cosine
  // against the running mean of the keys seen before it. Needs no query, so it works while a
  // workspace is prefilled before any question exists. No key-only score can know which dims a
  // future question will read: the needle model hides its needles from exactly this (its unused
  // key dims carry random filler content), so blind eviction loses needles there by design.
  static float distinctiveness(const std::vector<float>& mean, const float* k) {
    double dot = 0, nk = 0, nm = 0;
    for (size_t c = 0; c < mean.size(); c++) {
      dot += (double)k[c] * mean[c];
      nk += (double)k[c] * k[c];
      nm += (double)mean[c] * mean[c];
    }
    return nk > 0 && nm > 0 ? (float)(1.0 - dot / std::sqrt(nk * nm)) : 1.0f;
  }
  static float key_distinctiveness(Head& H, const float* k) {
    const float s = distinctiveness(H.kmean, k);
    H.kcount++;
    for (size_t c = 0; c < H.kmean.size(); c++) H.kmean[c] += (k[c] - H.kmean[c]) / (float)H.kcount;
    return s;
  }
  // The first keys were scored against a mean of few keys: whenever the count reaches a power of
  // two up to 4096, every held key is scored again against the mean of all keys so far, so early
  // tokens rank on the same footing as later ones before eviction reaches them.
  static bool rescore_due(int64_t before, int64_t after) {
    for (int64_t m = 64; m <= 4096; m *= 2)
      if (before < m && after >= m) return true;
    return false;
  }
  void rescore(Head& H, int upto) {
    const int hd = s_.head_dim;
    std::vector<float> kr((size_t)hd);
    for (const Block& b : H.blocks)
      for (int j = 0; j < b.n; j++) {
        block_key_ref(b, hd, j, kr.data());
        H.table.set(b.position(j), distinctiveness(H.kmean, kr.data()));
      }
    for (int r = 0; r < H.res_rows() && H.rpos[r] < upto; r++) {
      for (int c = 0; c < hd; c++) kr[c] = f16_to_f32(H.rk[(size_t)r * hd + c]);
      H.table.set(H.rpos[r], distinctiveness(H.kmean, kr.data()));
    }
  }

  static void add_block(Head& H, Block b) {
    b.id = H.next_id++;
    H.blocks.push_back(std::move(b));
  }

  static Block* find_block(Head& H, uint32_t id) {
    auto it = std::lower_bound(H.blocks.begin(), H.blocks.end(), id, [](const Block& b, uint32_t x) { return b.id < x; });
    return it != H.blocks.end() && it->id == id ? &*it : nullptr;
  }

  // Undoes the journaled changes made by commits after n, newest first.
  void undo_after(Head& H, int n) {
    while (!H.journal.empty() && H.journal.back().commit > n) {
      const Undo u = std::move(H.journal.back());
      H.journal.pop_back();
      Block* b = find_block(H, u.block);
      if (u.created) {
        if (b) H.blocks.erase(H.blocks.begin() + (b - H.blocks.data()));
      } else if (b) {
        LKV_CHECK(u.row >= 0 && u.row <= b->n && b->n < spec_.group && b->tier == u.tier &&
                      u.data.size() == UndoLayout(s_.head_dim, vg_, b->kbits, b->vbits).size(u.nko, u.nvo),
                  "kv cache: the rewind journal does not match its blocks");
        insert_row(*b, u, s_.head_dim, vg_);
        if (H.table.is_held(u.pos)) H.table.set_tier(u.pos, u.tier);  // a demotion undone
        else H.table.restore(u.pos, u.tier, u.score);                 // an eviction undone
      } else {
        H.table.set_tier(u.pos, SlotTable::kEvicted);  // its block is gone (cannot happen: blocks outlive their records)
      }
    }
  }

  // Forgets journal records older than the rewind window, and the empty blocks they kept.
  void purge_journal(Head& H, int n) {
    const int horizon = n - spec_.rewind;
    size_t drop = 0;
    while (drop < H.journal.size() && H.journal[drop].commit <= horizon) drop++;
    if (drop) H.journal.erase(H.journal.begin(), H.journal.begin() + (ptrdiff_t)drop);
    H.blocks.erase(std::remove_if(H.blocks.begin(), H.blocks.end(),
                                  [&](const Block& b) { return b.n == 0 && b.emptied >= 0 && b.emptied <= horizon; }),
                   H.blocks.end());
  }

  // ---- head-adaptive budgets (hl) ----
  // Probes per head: a mean of this many chunks decides, and later chunks skip the extra pass over
  // the sink and recent-window blocks for the last `ow` queries.
  static constexpr int kLocalityProbes = 16;
  // Probed once the context is 4x what every head keeps anyway (before that the sinks and the
  // window are most of the keys, and every head looks local).
  bool locality_probe_due(int len) const {
    return spec_.locality > 0 && spec_.evicts() && len >= 4 * (spec_.sinks + spec_.recent);
  }
  // A head is streaming once probed and its mean local share reaches the threshold.
  bool streaming(const Head& H) const { return spec_.locality > 0 && H.loc_n > 0 && H.loc_sum / H.loc_n >= spec_.locality; }
  // Per head, the slots it may hold at length n: streaming heads the sinks and the recent window,
  // the others the uniform budget plus an equal share of what the streaming heads gave up (at most
  // n). Empty when the budget is uniform (no hl, or no head streaming).
  // Until the heads are probed nothing is evicted (a retrieval head thinned by the uniform budget
  // before it was known would lose those tokens for good), unless no prefill chunk ever probes
  // them (token-by-token decoding): from twice the probe's start on, the budget is uniform.
  std::vector<int> head_budgets(int n) const {
    if (spec_.locality <= 0 || !spec_.evicts()) return {};
    const int probe_from = 4 * (spec_.sinks + spec_.recent);
    bool probed = true;
    for (const Head& H : heads_) probed &= H.loc_n > 0;
    if (!probed && n < 2 * probe_from) return std::vector<int>(heads_.size(), n);
    const int uniform = spec_.budget_tokens > 0 ? spec_.budget_tokens : fraction_budget(n);
    const int floor = std::min(uniform, spec_.sinks + spec_.recent);
    int n_stream = 0;
    for (const Head& H : heads_) n_stream += streaming(H);
    if (n_stream == 0) return {};
    const int n_other = (int)heads_.size() - n_stream;
    const int64_t freed = (int64_t)n_stream * (uniform - floor);
    const int extra = n_other > 0 ? (int)(freed / n_other) : 0;
    std::vector<int> b(heads_.size());
    for (size_t i = 0; i < heads_.size(); i++) b[i] = streaming(heads_[i]) ? floor : (int)std::min<int64_t>(n, (int64_t)uniform + extra);
    return b;
  }

  // Quantizes full blocks out of the residual window, then enforces the budget (`budget` slots, or
  // the spec's own when < 0) and the tiers.
  void settle(Head& H, int n, int budget_override) {
    const int hd = s_.head_dim, G = spec_.group, R = spec_.residual;
    const bool managed = spec_.managed();
    const RankKind kind = rank_kind();
    SlotRules rules;
    rules.sinks = spec_.sinks;
    rules.recent = spec_.recent;
    int committed = 0;
    while (committed < H.res_rows() && H.rpos[committed] < n) committed++;
    const bool flushing = committed >= R + G;
    if (managed && flushing && spec_.tiers.size() > 1) {
      // demotions, in batches of at least half a block (so demoted rows form full-ish blocks)
      TierPlan plan = plan_tiers(H.table, kind, n, rules, fracs_, std::max(1, G / 2));
      for (int t = 1; t < (int)plan.moves.size(); t++)
        if (!plan.moves[t].empty()) move_rows(H, plan.moves[t], t, n);
    }
    // Full blocks of the oldest residual rows, at the top tier: per-token tiers come from the
    // demotions above, so blocks stay whole instead of splitting each flush three ways.
    std::vector<float> k, v;
    while (committed >= R + G) {
      k.resize((size_t)G * hd);
      v.resize((size_t)G * hd);
      for (size_t e = 0; e < (size_t)G * hd; e++) {
        k[e] = f16_to_f32(H.rk[e]);
        v[e] = f16_to_f32(H.rv[e]);
      }
      const int32_t* pos = H.rpos.data();
      add_block(H, make_block(k.data(), v.data(), pos, G, spec_.tiers[0], 0, hd, vg_, spec_.outliers, managed, n));
      if (managed)
        for (int j = 0; j < G; j++) H.table.set_tier(pos[j], 0);
      H.rpos.erase(H.rpos.begin(), H.rpos.begin() + G);
      H.rk.erase(H.rk.begin(), H.rk.begin() + (size_t)G * hd);
      H.rv.erase(H.rv.begin(), H.rv.begin() + (size_t)G * hd);
      committed -= G;
    }
    if (managed && flushing) compact(H, n);
    if (flushing) {
      H.rk.shrink_to_fit();
      H.rv.shrink_to_fit();
      H.rpos.shrink_to_fit();
    }
    if (managed && spec_.evicts()) {
      const int budget = budget_override >= 0 ? budget_override : spec_.budget_tokens > 0 ? spec_.budget_tokens : fraction_budget(n);
      const std::vector<int> ev = pick_evictions(H.table, kind, n, rules, budget, std::max(1, G / 2));
      if (!ev.empty()) move_rows(H, ev, -1, n);
    }
    if (managed && spec_.rewind > 0) purge_journal(H, n);
  }

  // A fractional budget keeps that share of the positions eviction may take (neither sinks nor the
  // recent window). A share of all n would thin the oldest tokens hardest: while the context is
  // short, the protected window is most of it, and the whole cut fell on the few old tokens (at
  // 512 tokens `balanced` evicted 62% of them, not 30%), so early needles were lost first.
  int fraction_budget(int n) const {
    const int kept = std::min(n, spec_.sinks + spec_.recent);
    return kept + (int)std::ceil(spec_.budget_frac * (double)(n - kept));
  }

  // Blocks left sparse by demotions and evictions are merged, at tiers of 8 bits or more only:
  // requantizing 8-bit codes at 8 bits costs next to nothing, at 2 bits it would not.
  void compact(Head& H, int n) {
    const int G = spec_.group;
    for (int t = 0; t < (int)spec_.tiers.size(); t++) {
      if (spec_.tiers[(size_t)t].kbits < 8 || spec_.tiers[(size_t)t].vbits < 8) continue;
      std::vector<int> rows;
      int blocks = 0;
      for (const Block& b : H.blocks)
        if (b.tier == t && b.n > 0 && b.n < G / 4 && b.created < n) {
          blocks++;
          for (int j = 0; j < b.n; j++) rows.push_back(b.position(j));
        }
      if (blocks < 2 || (int)rows.size() < G) continue;  // a full block's worth: rows move once, not every flush
      std::sort(rows.begin(), rows.end());
      move_rows(H, rows, t, n);
    }
  }

  // Moves the rows at `positions` (ascending) out of their blocks: evicted (to_tier < 0) or
  // requantized into new blocks of tier to_tier.
  void move_rows(Head& H, const std::vector<int>& positions, int to_tier, int n) {
    const int hd = s_.head_dim, G = spec_.group;
    const bool journal = spec_.rewind > 0;
    std::vector<float> k, v, kr((size_t)hd), vr((size_t)hd);
    std::vector<int32_t> pos;
    for (Block& b : H.blocks) {
      std::vector<uint8_t> keep((size_t)b.n, 1);
      bool any = false;
      for (int j = 0; j < b.n; j++) {
        const int p = b.position(j);
        if (!std::binary_search(positions.begin(), positions.end(), p)) continue;
        keep[j] = 0;
        any = true;
        if (to_tier >= 0) {
          block_row_ref(b, hd, vg_, j, kr.data(), vr.data());
          k.insert(k.end(), kr.begin(), kr.end());
          v.insert(v.end(), vr.begin(), vr.end());
          pos.push_back(p);
        }
      }
      if (!any) continue;
      if (journal)  // highest row first, so undoing in reverse re-inserts lowest first
        for (int j = b.n - 1; j >= 0; j--)
          if (!keep[j]) {
            Undo u = take_row(b, j, hd, vg_);
            u.commit = n;
            u.score = H.table.get(u.pos);
            H.journal.push_back(std::move(u));
          }
      keep_rows(b, keep, hd, vg_);
      if (b.n == 0) b.emptied = n;
    }
    if (!journal)
      H.blocks.erase(std::remove_if(H.blocks.begin(), H.blocks.end(), [](const Block& b) { return b.n == 0; }), H.blocks.end());
    if (to_tier < 0) {
      H.table.evict(positions);
      return;
    }
    // rows in position order, in blocks of at most G
    std::vector<int> order(pos.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = (int)i;
    std::sort(order.begin(), order.end(), [&](int a, int b) { return pos[a] < pos[b]; });
    for (size_t s = 0; s < order.size(); s += (size_t)G) {
      const size_t m = std::min(order.size() - s, (size_t)G);
      std::vector<float> kk, vv;
      std::vector<int32_t> pp;
      for (size_t i = s; i < s + m; i++) {
        const int r = order[i];
        kk.insert(kk.end(), k.begin() + (size_t)r * hd, k.begin() + (size_t)(r + 1) * hd);
        vv.insert(vv.end(), v.begin() + (size_t)r * hd, v.begin() + (size_t)(r + 1) * hd);
        pp.push_back(pos[r]);
        H.table.set_tier(pos[r], (int8_t)to_tier);
      }
      add_block(H, make_block(kk.data(), vv.data(), pp.data(), (int)m, spec_.tiers[(size_t)to_tier], to_tier, hd, vg_,
                              spec_.outliers, true, n));
      if (journal) {
        Undo u;
        u.commit = n;
        u.created = 1;
        u.block = H.blocks.back().id;
        H.journal.push_back(std::move(u));
      }
    }
  }

  // The optimized attention: per (KV head, query tile), every block and residual tile decoded
  // once into a float tile and used by all query rows of the group. With `gather`, the final
  // softmax max and denominator of each (query, head) are kept for gather_importance.
  void attend_tiled(int layer, int pos, int n, const float* q, float* out, ThreadPool* pool, bool gather) {
    const int hd = s_.head_dim, group = s_.n_head / s_.n_head_kv, nh = s_.n_head;
    const int QT = query_tile_tokens(n, s_.n_head_kv, pool ? pool->size() : 1);
    const int q_tiles = (n + QT - 1) / QT;
    const int n_tasks = s_.n_head_kv * q_tiles;
    const float scale = 1.0f / std::sqrt((float)hd);
    if (gather) {
      att_m_.assign((size_t)n * nh, 0.0f);
      att_l_.assign((size_t)n * nh, 0.0f);
    }
    auto task = [&](int t) {
      const int hk = t % s_.n_head_kv, qt = t / s_.n_head_kv;
      const int i0 = qt * QT, i1 = std::min(n, i0 + QT), rows = (i1 - i0) * group;
      const Head& H = heads_[(size_t)layer * s_.n_head_kv + hk];
      const TileOps& ops = *ops_;
      // Tile buffers (80 KB at head_dim 64) live per thread across calls: zeroing fresh ones for
      // every head of every layer of every decoded token cost more than some kernels. Whatever
      // they hold from before is finite and never read before being written.
      thread_local std::vector<float> kt, vt, s;
      for (auto [v, size] : {std::pair<std::vector<float>*, size_t>{&kt, (size_t)hd * ts_}, {&vt, (size_t)ts_ * hd},
                             {&s, (size_t)kRows * ts_}})
        if (v->size() < size) v->resize(size);
      std::vector<float> qr((size_t)rows * hd);
      std::vector<float> m((size_t)rows, -INFINITY), l((size_t)rows, 0.0f), o((size_t)rows * hd, 0.0f);
      std::vector<int> vis((size_t)rows);
      for (int i = i0; i < i1; i++)
        for (int g = 0; g < group; g++) {
          float* dst = qr.data() + (size_t)((i - i0) * group + g) * hd;
          std::memcpy(dst, q + ((size_t)i * nh + hk * group + g) * hd, sizeof(float) * hd);
          if (spec_.rotate) kv_hadamard(dst, hd);
        }
      // One tile of nk rows (keys in kt, or f16 rows kr when non-null; values in vt) for every
      // query row, kRows at a time; vis[r] rows visible to row r.
      const Block* blk = nullptr;  // the block in kt, when kr is null
      std::vector<int32_t> posbuf;  // a block's row positions, when keeping raw scores
      std::vector<float> qf((size_t)kRows * hd), ksc((size_t)hd), kz((size_t)hd);
      float bias[kRows];
      // n == 1 with gather: raw scores of every visible row per query row, and their positions
      const bool keep = gather && n == 1;
      std::vector<std::vector<float>> raw(keep ? (size_t)rows : 0);  // [row][visible row index]
      std::vector<int32_t> raw_pos;
      const int32_t* tile_pos = nullptr;
      // One group of query rows (decode): blocks are read straight from their codes where the ops
      // can (decoding a float tile pays off only when several row groups share it).
      const bool from_codes = rows <= kRows;
      bool fk = false, fv = false;  // this block's keys / values read from codes
      auto consume = [&](int nk, const uint16_t* kr) {
        for (int r0 = 0; r0 < rows; r0 += kRows) {
          const int R = std::min(kRows, rows - r0);
          int upto = 0;
          for (int r = r0; r < r0 + R; r++) upto = std::max(upto, vis[r]);
          if (upto == 0) continue;
          if (kr) {
            ops.scores_rows(qr.data() + (size_t)r0 * hd, R, kr, hd, ts_, upto, s.data(), scale);
          } else {
            fold_keys(ksc.data(), kz.data(), qr.data() + (size_t)r0 * hd, R, hd, qf.data(), bias);
            if (fk) ops.scores_codes(*blk, qf.data(), R, hd, ts_, s.data(), scale, bias);
            else ops.scores_t(qf.data(), R, kt.data(), hd, ts_, upto, s.data(), scale, bias);
            add_outlier_scores(*blk, qr.data() + (size_t)r0 * hd, R, hd, s.data(), ts_, scale);
          }
          if (keep) {  // one query: every row sees the same vis[0] rows of this tile
            if (r0 == 0) raw_pos.insert(raw_pos.end(), tile_pos, tile_pos + vis[0]);
            for (int r = 0; r < R; r++) {
              const float* sr = s.data() + (size_t)r * ts_;
              raw[(size_t)(r0 + r)].insert(raw[(size_t)(r0 + r)].end(), sr, sr + vis[0]);
            }
          }
          for (int r = 0; r < R; r++)
            ops.softmax(s.data() + (size_t)r * ts_, vis[r0 + r], upto, m[r0 + r], l[r0 + r], o.data() + (size_t)(r0 + r) * hd, hd);
          if (fv && !kr) ops.accum_codes(*blk, s.data(), R, ts_, upto, hd, vg_, vt.data(), o.data() + (size_t)r0 * hd);
          else ops.accum(s.data(), R, ts_, upto, vt.data(), hd, o.data() + (size_t)r0 * hd);
        }
        (void)nk;
      };
      for (const Block& b : H.blocks) {  // every block precedes the queries: no mask
        if (b.n == 0) continue;
        fk = from_codes && ops.scores_codes && b.kbits < 16;
        fv = from_codes && ops.accum_codes && values_fit(hd, vg_, b.vbits);
        if (!fk) ops.decode_keys(b, hd, kt.data(), ts_);
        if (!fv) ops.decode_values(b, hd, vg_, vt.data());
        blk = &b;
        tile_pos = keep ? b.pos.data(posbuf) : nullptr;
        key_params(b, hd, ksc.data(), kz.data());
        std::fill(vis.begin(), vis.end(), b.n);
        consume(b.n, nullptr);
      }
      const int last_needed = pos + i1 - 1;
      for (int r0 = 0; r0 < H.res_rows() && H.rpos[r0] <= last_needed; r0 += kResTile) {
        const int nk = std::min(kResTile, H.res_rows() - r0);
        ops.decode_rows(H.rv.data() + (size_t)r0 * hd, nk, hd, vt.data());
        int visible = 0;
        for (int i = i0; i < i1; i++) {
          while (visible < nk && H.rpos[r0 + visible] <= pos + i) visible++;  // causal mask
          for (int g = 0; g < group; g++) vis[(size_t)(i - i0) * group + g] = visible;
        }
        tile_pos = H.rpos.data() + r0;
        consume(nk, H.rk.data() + (size_t)r0 * hd);
      }
      for (int i = i0; i < i1; i++)
        for (int g = 0; g < group; g++) {
          const int h = hk * group + g, r = (i - i0) * group + g;
          float* dst = out + ((size_t)i * nh + h) * hd;
          const float inv = 1.0f / l[r];
          for (int c = 0; c < hd; c++) dst[c] = o[(size_t)r * hd + c] * inv;
          if (spec_.rotate) kv_hadamard(dst, hd);
          if (gather) {
            att_m_[(size_t)i * nh + h] = m[r];
            att_l_[(size_t)i * nh + h] = l[r];
          }
        }
      if (keep) {  // the final max and denominator turn the kept scores into probabilities
        std::vector<float> mass((size_t)len_[layer], 0.0f);
        for (int r = 0; r < rows; r++) {
          const float mx = m[r], inv = 1.0f / l[r];
          const std::vector<float>& sr = raw[(size_t)r];
          for (size_t x = 0; x < raw_pos.size(); x++) mass[(size_t)raw_pos[x]] += exp_approx(sr[x] - mx) * inv;
        }
        Head& Hm = heads_[(size_t)layer * s_.n_head_kv + hk];
        apply_mass(Hm, mass, rows);
      }
    };
    if (pool && n_tasks > 1) pool->run(n_tasks, task);
    else for (int t = 0; t < n_tasks; t++) task(t);
  }

  // Adds one attend call's attention mass (per position, summed over `rows` query rows) to a
  // head's importance: H2O sums it; SnapKV averages over the rows, max-pools over neighbouring
  // positions (kernel 7) and keeps the largest value a slot has seen.
  void apply_mass(Head& H, const std::vector<float>& mass, int rows) {
    const int len = (int)mass.size();
    SlotTable& T = H.table;
    if (spec_.policy != KvPolicy::SnapKV) {  // H2O: f32 sums
      T.update_held(len, [&](int p, float s) { return s + mass[(size_t)p]; });
      return;
    }
    const float norm = 1.0f / (float)rows;
    const float* m = mass.data();
    auto pooled = [&](int p) {  // held positions only: evicted ones get no score
      if (p >= 3 && p + 3 < len)  // interior: fixed window
        return std::max(std::max(std::max(m[p - 3], m[p - 2]), std::max(m[p - 1], m[p])),
                        std::max(std::max(m[p + 1], m[p + 2]), m[p + 3]));
      float mx = 0;
      for (int d = std::max(0, p - 3); d <= std::min(len - 1, p + 3); d++) mx = std::max(mx, m[d]);
      return mx;
    };
    T.update_held(len, [&](int p, float s) { return std::max(s, pooled(p) * norm); });
  }

  // Importance from attention, per KV head: H2O adds every query's attention (summed over the
  // group's heads) to each slot; SnapKV takes the last `ow` queries of this chunk, averages, max-
  // pools over neighbouring positions (kernel 7) and keeps the largest such value per slot.
  // probe (hl): also the share of the last `ow` queries' attention that falls on the sinks and on
  // the recent window (keys from w before the first probed query on), added to the head's mean.
  // With H2O scores the mass of every query is gathered; the probe then takes a second pass.
  void gather_importance(int layer, int pos, int n, const float* q, ThreadPool* pool, bool scores, bool probe) {
    const int obs_first = std::max(0, n - spec_.obs_window);
    const bool snap = spec_.policy == KvPolicy::SnapKV;
    if (scores && probe && !snap) {
      gather_importance(layer, pos, n, q, pool, true, false);
      scores = false;
    }
    const int hd = s_.head_dim, group = s_.n_head / s_.n_head_kv, nh = s_.n_head;
    const float scale = 1.0f / std::sqrt((float)hd);
    const int first = snap || !scores ? obs_first : 0;
    const int len = len_[layer];
    auto task = [&](int hk) {
      Head& H = head(layer, hk);
      const int nq = (n - first) * group;
      std::vector<float> kt((size_t)hd * ts_), s((size_t)kRows * ts_), qr((size_t)nq * hd);
      std::vector<float> mass((size_t)len, 0.0f);
      std::vector<int32_t> posbuf;
      for (int i = first; i < n; i++)
        for (int g = 0; g < group; g++) {
          float* dst = qr.data() + (size_t)((i - first) * group + g) * hd;
          std::memcpy(dst, q + ((size_t)i * nh + hk * group + g) * hd, sizeof(float) * hd);
          if (spec_.rotate) kv_hadamard(dst, hd);
        }
      const TileOps& ops = *ops_;
      const Block* blk = nullptr;
      std::vector<float> qf((size_t)kRows * hd), ksc((size_t)hd), kz((size_t)hd);
      float bias[kRows];
      // adds the attention of the selected queries to the tile's rows (keys in kt, or f16 rows kr)
      auto add_tile = [&](int nk, const int32_t* position, bool causal, const uint16_t* kr) {
        int visible = causal ? 0 : nk;
        for (int i = first; i < n; i++) {
          while (causal && visible < nk && position[visible] <= pos + i) visible++;
          if (visible == 0) continue;
          for (int g0 = 0; g0 < group; g0 += kRows) {
            const int R = std::min(kRows, group - g0);
            const float* qrow = qr.data() + (size_t)((i - first) * group + g0) * hd;
            if (kr) {
              ops.scores_rows(qrow, R, kr, hd, ts_, visible, s.data(), scale);
            } else {
              fold_keys(ksc.data(), kz.data(), qrow, R, hd, qf.data(), bias);
              ops.scores_t(qf.data(), R, kt.data(), hd, ts_, visible, s.data(), scale, bias);
              add_outlier_scores(*blk, qrow, R, hd, s.data(), ts_, scale);
            }
            for (int r = 0; r < R; r++) {
              const int h = hk * group + g0 + r;
              const float mx = att_m_[(size_t)i * nh + h], inv = 1.0f / att_l_[(size_t)i * nh + h];
              const float* sr = s.data() + (size_t)r * ts_;
              for (int j = 0; j < visible; j++) mass[(size_t)position[j]] += exp_approx(sr[j] - mx) * inv;
            }
          }
        }
      };
      // the probe alone needs only the keys it counts (the softmax normalizers are attend's), so
      // blocks with no sink and nothing in the recent window are skipped: its cost stays that of
      // the window, not of the context
      const int local_from = std::max(0, pos + first - spec_.recent), sink_end = std::min(spec_.sinks, local_from);
      for (const Block& b : H.blocks) {  // managed caches keep per-row positions in every block
        if (b.n == 0) continue;
        const int32_t* position = b.pos.data(posbuf);
        if (!scores) {
          bool counted = false;
          for (int j = 0; j < b.n && !counted; j++) counted = position[j] < sink_end || position[j] >= local_from;
          if (!counted) continue;
        }
        ops.decode_keys(b, hd, kt.data(), ts_);
        blk = &b;
        key_params(b, hd, ksc.data(), kz.data());
        add_tile(b.n, position, false, nullptr);
      }
      for (int r0 = 0; r0 < H.res_rows(); r0 += kResTile) {
        const int nk = std::min(kResTile, H.res_rows() - r0);
        add_tile(nk, H.rpos.data() + r0, true, H.rk.data() + (size_t)r0 * hd);
      }
      if (scores) apply_mass(H, mass, (n - first) * group);
      if (probe) {
        double local = 0;
        for (int p = 0; p < sink_end; p++) local += mass[(size_t)p];
        for (int p = local_from; p < len; p++) local += mass[(size_t)p];
        H.loc_sum += local / ((n - first) * group);
        H.loc_n++;
      }
    };
    if (pool && s_.n_head_kv > 1) pool->run(s_.n_head_kv, task);
    else for (int h = 0; h < s_.n_head_kv; h++) task(h);
  }

  // Plain attention over the dequantized rows (reference functions only), double accumulation.
  // probe: the head-locality probe of gather_importance, in double.
  void attend_reference(int layer, int pos, int n, const float* q, float* out, bool probe) {
    const int hd = s_.head_dim, group = s_.n_head / s_.n_head_kv;
    const double scale = 1.0 / std::sqrt((double)hd);
    const int obs_first = std::max(0, n - spec_.obs_window), local_from = std::max(0, pos + obs_first - spec_.recent);
    for (int hk = 0; hk < s_.n_head_kv; hk++) {
      std::vector<int> ps;
      std::vector<float> k, v;
      dequantize_head(layer, hk, ps, k, v);
      std::vector<double> sc(ps.size());
      double local = 0;
      for (int i = 0; i < n; i++)
        for (int g = 0; g < group; g++) {
          const int h = hk * group + g;
          const float* qh = q + ((size_t)i * s_.n_head + h) * hd;
          double mx = -1e300;
          size_t vis = 0;
          while (vis < ps.size() && ps[vis] <= pos + i) vis++;
          for (size_t j = 0; j < vis; j++) {
            double d = 0;
            for (int c = 0; c < hd; c++) d += (double)qh[c] * k[j * hd + c];
            sc[j] = d * scale;
            mx = std::max(mx, sc[j]);
          }
          double sum = 0;
          for (size_t j = 0; j < vis; j++) sum += (sc[j] = std::exp(sc[j] - mx));
          float* o = out + ((size_t)i * s_.n_head + h) * hd;
          for (int c = 0; c < hd; c++) {
            double acc = 0;
            for (size_t j = 0; j < vis; j++) acc += sc[j] * v[j * hd + c];
            o[c] = (float)(acc / sum);
          }
          if (probe && i >= obs_first)
            for (size_t j = 0; j < vis; j++)
              if (ps[j] < std::min(spec_.sinks, local_from) || ps[j] >= local_from) local += sc[j] / sum;
        }
      if (probe) {
        Head& H = head(layer, hk);
        H.loc_sum += local / ((n - obs_first) * group);
        H.loc_n++;
      }
    }
  }

  KvShape s_;
  KvSpec spec_;
  std::string spec_str_;
  int vg_ = 0, ts_ = 0;
  const TileOps* ops_ = generic_tile_ops();
  std::vector<double> fracs_;
  std::vector<Head> heads_;  // [layer * n_head_kv + head]
  std::vector<int> len_;     // positions stored per layer
  int n_tokens_ = 0;
  ThreadPool* pool_ = nullptr;         // the last pool attend() was given, for commit()
  std::vector<float> att_m_, att_l_;  // [n][n_head] softmax max and denominator of the last attend
};

}  // namespace

std::unique_ptr<KvCache> make_compressed_kv_cache(const KvShape& shape, const KvSpec& spec) {
  return std::unique_ptr<KvCache>(new CompressedKvCache(shape, spec));
}

namespace kvtest {
void set_reference(KvCache* cache, bool on) {
  auto* c = dynamic_cast<CompressedKvCache*>(cache);
  LKV_CHECK(c, "not a compressed KV cache");
  c->reference_ = on;
}
void dequantize_head(const KvCache* cache, int layer, int head, std::vector<int>& pos, std::vector<float>& k,
                     std::vector<float>& v) {
  auto* c = dynamic_cast<const CompressedKvCache*>(cache);
  LKV_CHECK(c, "not a compressed KV cache");
  c->dequantize_head(layer, head, pos, k, v);
}
void use_generic_ops(KvCache* cache, bool on) {
  auto* c = dynamic_cast<CompressedKvCache*>(cache);
  LKV_CHECK(c, "not a compressed KV cache");
  c->use_generic_ops(on);
}
const char* use_avx2_ops(KvCache* cache, bool on) {
  auto* c = dynamic_cast<CompressedKvCache*>(cache);
  LKV_CHECK(c, "not a compressed KV cache");
  c->use_avx2_ops(on);
  return c->ops_name();
}
const char* ops_name(const KvCache* cache) {
  auto* c = dynamic_cast<const CompressedKvCache*>(cache);
  LKV_CHECK(c, "not a compressed KV cache");
  return c->ops_name();
}
void slot_table(const KvCache* cache, int layer, int head, std::vector<float>& score, std::vector<int>& tier) {
  auto* c = dynamic_cast<const CompressedKvCache*>(cache);
  LKV_CHECK(c, "not a compressed KV cache");
  const SlotTable& t = c->table(layer, head);
  score = t.scores();
  const std::vector<int8_t> tiers = t.tiers();
  tier.assign(tiers.begin(), tiers.end());
}
}  // namespace kvtest

}  // namespace lkv
