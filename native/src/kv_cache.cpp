// kv_cache.cpp — the dense KV caches (f32 and f16) and the reference attention.
// Layout: per layer and KV head, keys in tiles of 64 positions stored dimension-major
// ([tile][dim][64]) so a query's scores against a tile are vertical FMAs with no transposition at
// attention time; values row-major ([position][dim]). Attention is tiled flash-style: for each KV
// head, a block of queries (all the query heads of its group) runs over key tiles with an online
// softmax; no n×n score matrix is ever held.
#include "kv_cache.h"

#include <algorithm>
#include <cmath>
#include <istream>
#include <ostream>
#include <vector>

#include "common.h"
#include "kv_compressed.h"
#include "simd_math.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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
constexpr int QTILE = 8;   // query tokens per task

// ---- per-tile kernels: scores s[j] = scale * q . k_j over one key tile, and the online-softmax
// update of one query row with that tile's values. Generic versions first (vectorized by the
// compiler per ISA), then AVX2+FMA+F16C versions chosen at run time.

inline float load1(const float* p) { return *p; }
inline float load1(const uint16_t* p) { return f16_to_f32(*p); }

template <typename T>
LKV_CLONES void scores_generic(const float* q, const T* kt, int hd, float* s, float scale) {
  float acc[KTILE] = {0};
  for (int c = 0; c < hd; c++) {
    const float qc = q[c];
    const T* row = kt + (size_t)c * KTILE;
    for (int j = 0; j < KTILE; j++) acc[j] += qc * load1(row + j);
  }
  for (int j = 0; j < KTILE; j++) s[j] = acc[j] * scale;
}

// p[j] = exp(s[j] - mx) for j < n, returns their sum
LKV_CLONES float exp_shift(float* s, int n, float mx) {
  float sum = 0;
  for (int j = 0; j < n; j++) {
    s[j] = exp_approx(s[j] - mx);
    sum += s[j];
  }
  return sum;
}

template <typename T>
LKV_CLONES void accum_generic(const float* p, int nk, const T* v, int hd, float* o) {
  for (int j = 0; j < nk; j++) {
    const float pj = p[j];
    const T* vr = v + (size_t)j * hd;
    for (int c = 0; c < hd; c++) o[c] += pj * load1(vr + c);
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
}
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

template <typename T>
__attribute__((target("avx2,fma,f16c"))) void scores_avx2(const float* q, const T* kt, int hd, float* s, float scale) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (int c = 0; c < hd; c++) {
    const __m256 qc = _mm256_set1_ps(q[c]);
    const T* r = kt + (size_t)c * KTILE;
    a0 = _mm256_fmadd_ps(qc, load8(r), a0);
    a1 = _mm256_fmadd_ps(qc, load8(r + 8), a1);
    a2 = _mm256_fmadd_ps(qc, load8(r + 16), a2);
    a3 = _mm256_fmadd_ps(qc, load8(r + 24), a3);
    a4 = _mm256_fmadd_ps(qc, load8(r + 32), a4);
    a5 = _mm256_fmadd_ps(qc, load8(r + 40), a5);
    a6 = _mm256_fmadd_ps(qc, load8(r + 48), a6);
    a7 = _mm256_fmadd_ps(qc, load8(r + 56), a7);
  }
  const __m256 sc = _mm256_set1_ps(scale);
  _mm256_storeu_ps(s, _mm256_mul_ps(a0, sc));
  _mm256_storeu_ps(s + 8, _mm256_mul_ps(a1, sc));
  _mm256_storeu_ps(s + 16, _mm256_mul_ps(a2, sc));
  _mm256_storeu_ps(s + 24, _mm256_mul_ps(a3, sc));
  _mm256_storeu_ps(s + 32, _mm256_mul_ps(a4, sc));
  _mm256_storeu_ps(s + 40, _mm256_mul_ps(a5, sc));
  _mm256_storeu_ps(s + 48, _mm256_mul_ps(a6, sc));
  _mm256_storeu_ps(s + 56, _mm256_mul_ps(a7, sc));
}

template <typename T>
__attribute__((target("avx2,fma,f16c"))) void accum_avx2(const float* p, int nk, const T* v, int hd, float* o) {
  int j = 0;
  for (; j + 2 <= nk; j += 2) {  // two value rows per pass halve the loads and stores of o
    const __m256 p0 = _mm256_set1_ps(p[j]), p1 = _mm256_set1_ps(p[j + 1]);
    const T* v0 = v + (size_t)j * hd;
    const T* v1 = v0 + hd;
    for (int c = 0; c < hd; c += 8) {
      __m256 acc = _mm256_loadu_ps(o + c);
      acc = _mm256_fmadd_ps(p0, load8(v0 + c), acc);
      acc = _mm256_fmadd_ps(p1, load8(v1 + c), acc);
      _mm256_storeu_ps(o + c, acc);
    }
  }
  for (; j < nk; j++) {
    const __m256 p0 = _mm256_set1_ps(p[j]);
    const T* v0 = v + (size_t)j * hd;
    for (int c = 0; c < hd; c += 8) _mm256_storeu_ps(o + c, _mm256_fmadd_ps(p0, load8(v0 + c), _mm256_loadu_ps(o + c)));
  }
}
#endif

template <typename T>
struct TileOps {
  void (*scores)(const float* q, const T* kt, int hd, float* s, float scale);
  void (*accum)(const float* p, int nk, const T* v, int hd, float* o);
};

template <typename T>
TileOps<T> pick_tile_ops(int hd) {
#if defined(__x86_64__)
  if (hd % 8 == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return {&scores_avx2<T>, &accum_avx2<T>};
#endif
  return {&scores_generic<T>, &accum_generic<T>};
}

template <typename T>
class DenseKvCache final : public KvCache {
 public:
  DenseKvCache(const KvShape& s, const char* name) : s_(s), name_(name), ops_(pick_tile_ops<T>(s.head_dim)) {
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
      grow(K, k_elems(pos + n));
      grow(V, (size_t)(pos + n) * hd);
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

  void attend(int layer, int pos, int n, const float* q, float* out, ThreadPool* pool) override {
    const int hd = s_.head_dim, group = s_.n_head / s_.n_head_kv;
    LKV_CHECK(pos + n <= len_[layer], "kv cache: attention past stored positions");
    const int q_tiles = (n + QTILE - 1) / QTILE;
    const int n_tasks = s_.n_head_kv * q_tiles;
    const float scale = 1.0f / std::sqrt((float)hd);
    auto task = [&](int t) {
      const int hk = t % s_.n_head_kv, qt = t / s_.n_head_kv;
      const int i0 = qt * QTILE, i1 = std::min(n, i0 + QTILE);
      const int rows = (i1 - i0) * group;
      const T* K = k_[(size_t)layer * s_.n_head_kv + hk].data();
      const T* V = v_[(size_t)layer * s_.n_head_kv + hk].data();
      thread_local std::vector<float> m, l, o;
      float s[KTILE];
      m.assign(rows, -INFINITY);
      l.assign(rows, 0.0f);
      o.assign((size_t)rows * hd, 0.0f);
      const int last_needed = pos + i1 - 1;  // the latest query sees keys 0..last_needed
      for (int j0 = 0; j0 <= last_needed; j0 += KTILE) {
        const int nk = std::min(KTILE, last_needed + 1 - j0);
        const T* kt = K + (size_t)(j0 / KTILE) * hd * KTILE;
        const T* vt = V + (size_t)j0 * hd;
        for (int i = i0; i < i1; i++) {
          const int visible = std::min(nk, pos + i + 1 - j0);  // causal mask within the tile
          if (visible <= 0) continue;
          for (int g = 0; g < group; g++) {
            const int h = hk * group + g, r = (i - i0) * group + g;
            ops_.scores(q + ((size_t)i * s_.n_head + h) * hd, kt, hd, s, scale);
            float mx = m[r];
            for (int j = 0; j < visible; j++) mx = s[j] > mx ? s[j] : mx;
            const float corr = exp_approx(m[r] - mx);
            const float sum = exp_shift(s, visible, mx);
            l[r] = l[r] * corr + sum;
            m[r] = mx;
            float* orow = o.data() + (size_t)r * hd;
            if (corr != 1.0f)
              for (int c = 0; c < hd; c++) orow[c] *= corr;
            ops_.accum(s, visible, vt, hd, orow);
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
  static void grow(std::vector<T>& a, size_t need) {
    if (a.size() >= need) return;
    if (a.capacity() < need) a.reserve(std::max(need, a.capacity() * 2));
    a.resize(need);
  }
  static T convert1(float x);

  KvShape s_;
  std::string name_;
  TileOps<T> ops_;
  std::vector<std::vector<T>> k_, v_;  // [layer * n_head_kv + head]: keys tile-transposed, values row-major
  std::vector<int> len_;               // positions stored per layer
  int n_tokens_ = 0;
};

template <>
float DenseKvCache<float>::convert1(float x) { return x; }
template <>
uint16_t DenseKvCache<uint16_t>::convert1(float x) { return f32_to_f16(x); }

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
