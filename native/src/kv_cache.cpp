// kv_cache.cpp — the dense KV caches (f32 and f16) and the reference attention.
// Layout: per layer and KV head, positions in order, head_dim values each, so one head's keys
// are contiguous. Attention is tiled flash-style: for each KV head, a block of queries (all the
// query heads of its group) runs over key tiles converted to f32 (keys transposed so scores are
// vertical FMAs), with an online softmax; no n×n score matrix is ever held.
#include "kv_cache.h"

#include <algorithm>
#include <cmath>
#include <istream>
#include <ostream>
#include <vector>

#include "common.h"
#include "simd_math.h"

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

constexpr int KTILE = 64;  // keys per tile
constexpr int QTILE = 8;   // query tokens per task

inline void load_row(const float* src, float* dst, int n) { std::memcpy(dst, src, sizeof(float) * n); }

LKV_CLONES void load_row(const uint16_t* src, float* dst, int n) {
  for (int i = 0; i < n; i++) dst[i] = f16_to_f32(src[i]);
}

// s[j] = sum_c q[c] * kt[c*KTILE + j], j < nk (kt is a transposed key tile)
LKV_CLONES void tile_scores(const float* q, const float* kt, int hd, float* s, float scale) {
  float acc[KTILE] = {0};
  for (int c = 0; c < hd; c++) {
    const float qc = q[c];
    const float* row = kt + (size_t)c * KTILE;
#pragma GCC ivdep
    for (int j = 0; j < KTILE; j++) acc[j] += qc * row[j];
  }
  for (int j = 0; j < KTILE; j++) s[j] = acc[j] * scale;
}

// Online-softmax update of one query row with one tile: s holds scores (nk valid), vt the
// values [nk][hd]. m, l are the running max and denominator; o the unnormalized output.
LKV_CLONES void tile_update(float* s, int nk, const float* vt, int hd, float& m, float& l, float* o) {
  float mx = m;
  for (int j = 0; j < nk; j++) mx = s[j] > mx ? s[j] : mx;
  const float corr = exp_approx(m - mx);
  float sum = 0;
  for (int j = 0; j < nk; j++) {
    s[j] = exp_approx(s[j] - mx);
    sum += s[j];
  }
  l = l * corr + sum;
  m = mx;
  for (int c = 0; c < hd; c++) o[c] *= corr;
  for (int j = 0; j < nk; j++) {
    const float p = s[j];
    const float* vr = vt + (size_t)j * hd;
#pragma GCC ivdep
    for (int c = 0; c < hd; c++) o[c] += p * vr[c];
  }
}

template <typename T>
class DenseKvCache final : public KvCache {
 public:
  DenseKvCache(const KvShape& s, const char* name) : s_(s), name_(name) {
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
      grow(K, (size_t)(pos + n) * hd);
      grow(V, (size_t)(pos + n) * hd);
      for (int i = 0; i < n; i++) {
        convert(k + (size_t)i * stride + h * hd, K.data() + (size_t)(pos + i) * hd, hd);
        convert(v + (size_t)i * stride + h * hd, V.data() + (size_t)(pos + i) * hd, hd);
      }
    }
    len_[layer] = pos + n;
  }

  void attend(int layer, int pos, int n, const float* q, float* out, ThreadPool* pool) override {
    const int hd = s_.head_dim, group = s_.n_head / s_.n_head_kv;
    const int n_kv = len_[layer];
    LKV_CHECK(pos + n <= n_kv, "kv cache: attention past stored positions");
    const int q_tiles = (n + QTILE - 1) / QTILE;
    const int n_tasks = s_.n_head_kv * q_tiles;
    const float scale = 1.0f / std::sqrt((float)hd);
    auto task = [&](int t) {
      const int hk = t % s_.n_head_kv, qt = t / s_.n_head_kv;
      const int i0 = qt * QTILE, i1 = std::min(n, i0 + QTILE);
      const int rows = (i1 - i0) * group;
      const T* K = k_[(size_t)layer * s_.n_head_kv + hk].data();
      const T* V = v_[(size_t)layer * s_.n_head_kv + hk].data();
      std::vector<float> kt((size_t)KTILE * hd), vt((size_t)KTILE * hd), krow(hd), s(KTILE);
      std::vector<float> m(rows, -INFINITY), l(rows, 0.0f), o((size_t)rows * hd, 0.0f);
      const int last_needed = pos + i1 - 1;  // the latest query sees keys 0..last_needed
      for (int j0 = 0; j0 <= last_needed; j0 += KTILE) {
        const int nk = std::min(KTILE, last_needed + 1 - j0);
        for (int j = 0; j < nk; j++) {
          load_row(K + (size_t)(j0 + j) * hd, krow.data(), hd);
          for (int c = 0; c < hd; c++) kt[(size_t)c * KTILE + j] = krow[c];
          load_row(V + (size_t)(j0 + j) * hd, vt.data() + (size_t)j * hd, hd);
        }
        for (int j = nk; j < KTILE; j++)
          for (int c = 0; c < hd; c++) kt[(size_t)c * KTILE + j] = 0.0f;
        for (int i = i0; i < i1; i++) {
          const int visible = std::min(nk, pos + i + 1 - j0);  // causal mask within the tile
          if (visible <= 0) continue;
          for (int g = 0; g < group; g++) {
            const int h = hk * group + g, r = (i - i0) * group + g;
            tile_scores(q + ((size_t)i * s_.n_head + h) * hd, kt.data(), hd, s.data(), scale);
            tile_update(s.data(), visible, vt.data(), hd, m[r], l[r], o.data() + (size_t)r * hd);
          }
        }
      }
      for (int i = i0; i < i1; i++)
        for (int g = 0; g < group; g++) {
          const int h = hk * group + g, r = (i - i0) * group + g;
          float* dst = out + ((size_t)i * s_.n_head + h) * hd;
          const float inv = 1.0f / l[r];
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
    const int hd = s_.head_dim;
    for (auto& K : k_) K.resize(std::min(K.size(), (size_t)n * hd));
    for (auto& V : v_) V.resize(std::min(V.size(), (size_t)n * hd));
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
    st.spec = name_;
    return st;
  }

  const KvShape& shape() const override { return s_; }
  std::string spec() const override { return name_; }

  void save(std::ostream& out) const override {
    const int hd = s_.head_dim;
    const int32_t n = n_tokens_;
    out.write((const char*)&n, sizeof n);
    for (size_t i = 0; i < k_.size(); i++) {
      out.write((const char*)k_[i].data(), (std::streamsize)((size_t)n_tokens_ * hd * sizeof(T)));
      out.write((const char*)v_[i].data(), (std::streamsize)((size_t)n_tokens_ * hd * sizeof(T)));
    }
  }

  void load(std::istream& in) override {
    int32_t n = 0;
    in.read((char*)&n, sizeof n);
    LKV_CHECK(in && n >= 0 && n <= s_.n_ctx, "kv state: bad token count");
    const int hd = s_.head_dim;
    for (size_t i = 0; i < k_.size(); i++) {
      k_[i].resize((size_t)n * hd);
      v_[i].resize((size_t)n * hd);
      in.read((char*)k_[i].data(), (std::streamsize)((size_t)n * hd * sizeof(T)));
      in.read((char*)v_[i].data(), (std::streamsize)((size_t)n * hd * sizeof(T)));
      LKV_CHECK((bool)in, "kv state: truncated");
    }
    for (auto& L : len_) L = n;
    n_tokens_ = n;
  }

 private:
  static void grow(std::vector<T>& a, size_t need) {
    if (a.capacity() < need) a.reserve(std::max(need, a.capacity() * 2));
    a.resize(need);
  }
  static void convert(const float* src, float* dst, int n) { std::memcpy(dst, src, sizeof(float) * n); }
  static void convert(const float* src, uint16_t* dst, int n) {
    for (int i = 0; i < n; i++) dst[i] = f32_to_f16(src[i]);
  }

  KvShape s_;
  std::string name_;
  std::vector<std::vector<T>> k_, v_;  // [layer * n_head_kv + head] -> positions x head_dim
  std::vector<int> len_;               // positions stored per layer
  int n_tokens_ = 0;
};

}  // namespace

std::unique_ptr<KvCache> make_kv_cache(const KvShape& shape, const std::string& spec) {
  LKV_CHECK(shape.n_layer > 0 && shape.n_head_kv > 0 && shape.head_dim > 0 && shape.n_ctx > 0 &&
                shape.n_head % shape.n_head_kv == 0,
            "kv cache: bad shape");
  if (spec == "f32") return std::unique_ptr<KvCache>(new DenseKvCache<float>(shape, "f32"));
  if (spec == "f16" || spec == "off" || spec.empty()) return std::unique_ptr<KvCache>(new DenseKvCache<uint16_t>(shape, "f16"));
  throw Error(strprintf("unknown KV cache spec '%s' (known: f16, f32)", spec.c_str()));
}

}  // namespace lkv
