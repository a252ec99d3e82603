// kv_cache.cpp — the dense KV caches (f32 and f16) and the reference attention.
// Layout: per layer and KV head, keys in tiles of 64 positions stored dimension-major
// ([tile][dim][64]) so a query's scores against a tile are vertical FMAs with no transposition at
// attention time; values row-major ([position][dim]). Attention is tiled flash-style: for each KV
// head, a block of queries (all the query heads of its group) runs over key tiles with an online
// softmax; no n×n score matrix is ever held. Each tile is made float once (f16) and shared by every
// query row, four rows per call of the compressed cache's tile kernels (kv_tiles.h).
#include "kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <istream>
#include <ostream>
#include <vector>

#include "common.h"
#include "kv_compressed.h"
#include "kv_tiles.h"

namespace lkv {

void attention_reference(const KvShape& s, int pos, int n, const float* q, const float* k, const float* v, int n_kv,
                         float* out) {
  const int hd = s.head_dim, group = s.n_head / s.n_head_kv, kv_stride = s.n_head_kv * hd;
  const double scale = 1.0 / std::sqrt((double)hd);
  std::vector<double> sc;
  for (int i = 0; i < n; i++) {
    const int last = std::min(pos + i, n_kv - 1);
    for (int h = 0; h < s.n_head; h++) {
      const int hk = h / group;
      const float* qh = q + ((size_t)i * s.n_head + h) * hd;
      sc.assign((size_t)last + 1, 0.0);
      double mx = -1e300;
      for (int j = 0; j <= last; j++) {
        double d = 0;
        for (int c = 0; c < hd; c++) d += (double)qh[c] * k[(size_t)j * kv_stride + hk * hd + c];
        sc[j] = d * scale;
        mx = std::max(mx, sc[j]);
      }
      double sum = 0;
      for (int j = 0; j <= last; j++) sum += (sc[j] = std::exp(sc[j] - mx));
      float* o = out + ((size_t)i * s.n_head + h) * hd;
      for (int c = 0; c < hd; c++) {
        double acc = 0;
        for (int j = 0; j <= last; j++) acc += sc[j] * v[(size_t)j * kv_stride + hk * hd + c];
        o[c] = (float)(acc / sum);
      }
    }
  }
}

namespace {

constexpr int KTILE = 64;  // keys per tile: keys are stored tile-transposed, [tile][dim][KTILE]

template <typename T>
class DenseKvCache final : public KvCache {
 public:
  DenseKvCache(const KvShape& s, const char* name)
      : s_(s), name_(name), ops_(kvc::pick_tile_ops(s.head_dim, s.head_dim, std::vector<KvTier>{KvTier{}})) {
    k_.resize((size_t)s.n_layer * s.n_head_kv);
    v_.resize((size_t)s.n_layer * s.n_head_kv);
    len_.assign((size_t)s.n_layer, 0);
  }

  void store(int layer, int pos, int n, const float* k, const float* v) override {
    LKV_CHECK(layer >= 0 && layer < s_.n_layer, "kv cache: layer %d out of range", layer);
    LKV_CHECK(pos == len_[layer], "kv cache: layer %d stores position %d but holds %d", layer, pos, len_[layer]);
    LKV_CHECK(pos + n <= s_.n_ctx, "context is full: %d + %d tokens exceed the session's %d", pos, n, s_.n_ctx);
    const int hd = s_.head_dim, stride = s_.n_head_kv * hd;
    for (int h = 0; h < s_.n_head_kv; h++) {
      std::vector<T>& K = k_[(size_t)layer * s_.n_head_kv + h];
      std::vector<T>& V = v_[(size_t)layer * s_.n_head_kv + h];
      grow(K, k_elems(pos + n), k_elems(s_.n_ctx));
      grow(V, (size_t)(pos + n) * hd, (size_t)s_.n_ctx * hd);
      for (int i = 0; i < n; i++) {
        const int p = pos + i;
        const float* ks = k + (size_t)i * stride + h * hd;
        T* kt = K.data() + (size_t)(p / KTILE) * hd * KTILE + p % KTILE;
        for (int c = 0; c < hd; c++) kt[(size_t)c * KTILE] = convert1(ks[c]);
        const float* vs = v + (size_t)i * stride + h * hd;
        T* vd = V.data() + (size_t)p * hd;
        for (int c = 0; c < hd; c++) vd[c] = convert1(vs[c]);
      }
    }
    len_[layer] = pos + n;
  }

  // Per (KV head, block of QTILE query tokens): the key tiles in order, each made float once (f16)
  // or used in place (f32) and shared by every query row of the block, kRows rows per kernel call
  // (the compressed cache's tile kernels: scores, online softmax, value accumulation).
  void attend(int layer, int pos, int n, const float* q, float* out, ThreadPool* pool) override {
    const int hd = s_.head_dim, group = s_.n_head / s_.n_head_kv, nh = s_.n_head;
    LKV_CHECK(pos + n <= len_[layer], "kv cache: attention past stored positions");
    const int QTILE = kvc::query_tile_tokens(n, s_.n_head_kv, pool ? pool->size() : 1);
    const int q_tiles = (n + QTILE - 1) / QTILE;
    const int n_tasks = s_.n_head_kv * q_tiles;
    const float scale = 1.0f / std::sqrt((float)hd);
    const kvc::TileOps& ops = *ops_;
    constexpr int R4 = kvc::kRows;
    auto task = [&](int t) {
      const int hk = t % s_.n_head_kv, qt = t / s_.n_head_kv;
      const int i0 = qt * QTILE, i1 = std::min(n, i0 + QTILE);
      const int rows = (i1 - i0) * group;  // row r: query token i0 + r / group, head hk * group + r % group
      const T* K = k_[(size_t)layer * s_.n_head_kv + hk].data();
      const T* V = v_[(size_t)layer * s_.n_head_kv + hk].data();
      // buffers live per thread across calls (whatever they hold is finite and written before read)
      thread_local std::vector<float> kt, vt, sc, qr, m, l, o;
      if (kt.size() < (size_t)hd * KTILE) kt.resize((size_t)hd * KTILE);
      if (vt.size() < (size_t)hd * KTILE) vt.resize((size_t)hd * KTILE);
      if (sc.size() < (size_t)R4 * KTILE) sc.resize((size_t)R4 * KTILE);
      qr.resize((size_t)rows * hd);
      for (int i = i0; i < i1; i++)
        std::memcpy(qr.data() + (size_t)(i - i0) * group * hd, q + ((size_t)i * nh + (size_t)hk * group) * hd, sizeof(float) * group * hd);
      m.assign((size_t)rows, -INFINITY);
      l.assign((size_t)rows, 0.0f);
      o.assign((size_t)rows * hd, 0.0f);
      const int last_needed = pos + i1 - 1;  // the latest query sees keys 0..last_needed
      for (int j0 = 0; j0 <= last_needed; j0 += KTILE) {
        const int nk = std::min(KTILE, last_needed + 1 - j0);
        const float* ktile = float_keys(K + (size_t)(j0 / KTILE) * hd * KTILE, hd, kt.data());
        const float* vtile = float_values(V + (size_t)j0 * hd, nk, hd, vt.data());
        for (int r0 = 0; r0 < rows; r0 += R4) {
          const int R = std::min(R4, rows - r0);
          int vis[R4], upto = 0;
          for (int r = 0; r < R; r++) {
            vis[r] = std::max(0, std::min(nk, pos + i0 + (r0 + r) / group + 1 - j0));  // causal mask
            upto = std::max(upto, vis[r]);
          }
          if (upto == 0) continue;
          ops.scores_t(qr.data() + (size_t)r0 * hd, R, ktile, hd, KTILE, upto, sc.data(), scale, nullptr);
          for (int r = 0; r < R; r++)
            ops.softmax(sc.data() + (size_t)r * KTILE, vis[r], upto, m[(size_t)(r0 + r)], l[(size_t)(r0 + r)], o.data() + (size_t)(r0 + r) * hd, hd);
          ops.accum(sc.data(), R, KTILE, upto, vtile, hd, o.data() + (size_t)r0 * hd);
        }
      }
      for (int r = 0; r < rows; r++) {
        float* dst = out + ((size_t)(i0 + r / group) * nh + (size_t)hk * group + r % group) * hd;
        const float inv = 1.0f / l[(size_t)r];
        for (int c = 0; c < hd; c++) dst[c] = o[(size_t)r * hd + c] * inv;
      }
    };
    if (pool && n_tasks > 1) pool->run(n_tasks, task);
    else for (int t = 0; t < n_tasks; t++) task(t);
  }

  void commit(int n) override {
    for (int l = 0; l < s_.n_layer; l++) LKV_CHECK(len_[l] >= n, "kv cache: commit(%d) before layer %d stored it", n, l);
    n_tokens_ = n;
  }
  int n_tokens() const override { return n_tokens_; }

  void truncate(int n) override {
    LKV_CHECK(n >= 0 && n <= n_tokens_, "kv cache: cannot truncate to %d (holds %d)", n, n_tokens_);
    for (auto& K : k_) K.resize(std::min(K.size(), k_elems(n)));
    for (auto& V : v_) V.resize(std::min(V.size(), (size_t)n * s_.head_dim));
    for (auto& L : len_) L = std::min(L, n);
    n_tokens_ = n;
  }

  KvStats stats() const override {
    KvStats st;
    st.tokens = n_tokens_;
    st.resident_tokens = n_tokens_;
    const int64_t per_tok_layer = 2LL * s_.n_head_kv * s_.head_dim;
    st.f16_bytes = per_tok_layer * 2 * s_.n_layer * n_tokens_;
    for (int l = 0; l < s_.n_layer; l++) st.per_layer.push_back(per_tok_layer * (int64_t)sizeof(T) * n_tokens_);
    st.bytes = per_tok_layer * (int64_t)sizeof(T) * s_.n_layer * n_tokens_;
    st.code_bytes = st.bytes;
    st.spec = name_;
    return st;
  }

  const KvShape& shape() const override { return s_; }
  std::string spec() const override { return name_; }

  void save(std::ostream& out) const override {
    const int32_t n = n_tokens_;
    out.write((const char*)&n, sizeof n);
    for (size_t i = 0; i < k_.size(); i++) {
      // columns past n in the last key tile are never read; write zeros so files are deterministic
      std::vector<T> kcopy(k_[i].begin(), k_[i].begin() + (std::ptrdiff_t)k_elems(n));
      for (size_t e = 0; e < kcopy.size(); e++)
        if ((int)((e / ((size_t)s_.head_dim * KTILE)) * KTILE + e % KTILE) >= n) kcopy[e] = T(0);
      out.write((const char*)kcopy.data(), (std::streamsize)(kcopy.size() * sizeof(T)));
      out.write((const char*)v_[i].data(), (std::streamsize)((size_t)n * s_.head_dim * sizeof(T)));
    }
  }

  void load(std::istream& in) override {
    int32_t n = 0;
    in.read((char*)&n, sizeof n);
    LKV_CHECK(in && n >= 0 && n <= s_.n_ctx, "kv state: bad token count");
    for (size_t i = 0; i < k_.size(); i++) {
      grow(k_[i], k_elems(n), k_elems(s_.n_ctx));
      grow(v_[i], (size_t)n * s_.head_dim, (size_t)s_.n_ctx * s_.head_dim);
      k_[i].resize(k_elems(n));
      v_[i].resize((size_t)n * s_.head_dim);
      in.read((char*)k_[i].data(), (std::streamsize)(k_[i].size() * sizeof(T)));
      in.read((char*)v_[i].data(), (std::streamsize)(v_[i].size() * sizeof(T)));
      LKV_CHECK((bool)in, "kv state: truncated");
    }
    for (auto& L : len_) L = n;
    n_tokens_ = n;
  }

 private:
  // elements of a key array holding n positions (whole tiles)
  size_t k_elems(int n) const { return (size_t)((n + KTILE - 1) / KTILE) * KTILE * s_.head_dim; }
  // Grows a key or value array to `need` elements. The first growth reserves room for the whole
  // context (`full`): address space only, pages become resident as positions are written. Growing
  // by doubling held the old and the new array at once at every doubling (the cache's peak
  // memory twice its size) and copied the cache each time.
  static void grow(std::vector<T>& a, size_t need, size_t full) {
    if (a.size() >= need) return;
    if (a.capacity() < need) a.reserve(std::max(need, full));
    a.resize(need);
  }
  static T convert1(float x);
  // A key tile ([hd][KTILE]) and nk value rows as floats: in place for the f32 cache, converted into
  // `buf` for the f16 one (the whole key tile: columns past the stored length are finite and unread).
  const float* float_keys(const T* tile, int hd, float* buf) const;
  const float* float_values(const T* rows, int nk, int hd, float* buf) const;

  KvShape s_;
  std::string name_;
  const kvc::TileOps* ops_;
  std::vector<std::vector<T>> k_, v_;  // [layer * n_head_kv + head]: keys tile-transposed, values row-major
  std::vector<int> len_;               // positions stored per layer
  int n_tokens_ = 0;
};

template <>
float DenseKvCache<float>::convert1(float x) { return x; }
template <>
uint16_t DenseKvCache<uint16_t>::convert1(float x) { return f32_to_f16(x); }
template <>
const float* DenseKvCache<float>::float_keys(const float* tile, int, float*) const { return tile; }
template <>
const float* DenseKvCache<uint16_t>::float_keys(const uint16_t* tile, int hd, float* buf) const {
  ops_->decode_rows(tile, KTILE, hd, buf);
  return buf;
}
template <>
const float* DenseKvCache<float>::float_values(const float* rows, int, int, float*) const { return rows; }
template <>
const float* DenseKvCache<uint16_t>::float_values(const uint16_t* rows, int nk, int hd, float* buf) const {
  ops_->decode_rows(rows, nk, hd, buf);
  return buf;
}

}  // namespace

std::unique_ptr<KvCache> make_kv_cache(const KvShape& shape, const std::string& spec) {
  LKV_CHECK(shape.n_layer > 0 && shape.n_head_kv > 0 && shape.head_dim > 0 && shape.n_ctx > 0 &&
                shape.n_head % shape.n_head_kv == 0,
            "kv cache: bad shape");
  if (spec == "f32") return std::unique_ptr<KvCache>(new DenseKvCache<float>(shape, "f32"));
  if (spec == "f16" || spec == "off" || spec.empty()) return std::unique_ptr<KvCache>(new DenseKvCache<uint16_t>(shape, "f16"));
  return make_compressed_kv_cache(shape, parse_kv_spec(spec));  // throws on a bad spec
}

}  // namespace lkv
