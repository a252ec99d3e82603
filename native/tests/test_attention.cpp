// test_attention.cpp — the dense KV caches' fused attention (f32, f16; AVX2 and generic tiles)
// against attention_reference on random inputs, across head sizes, GQA groups, query blocks that
// cross key tiles, rewinds and state round-trips, and that a freed cache's memory goes back to
// the system. Budget 5e-5 (max abs error relative to the
// output RMS; the reference sees the keys/values as the cache rounds them, so what remains is
// float accumulation and the 4e-6 exp approximation); guard values around outputs; NaN checks.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <vector>

#include "kv_cache.h"
#include "common.h"

using namespace lkv;

static int passed = 0, failed = 0;

static void check(bool ok, const std::string& name, const std::string& detail) {
  std::printf("%s %s %s\n", ok ? "ok  " : "FAIL", name.c_str(), detail.c_str());
  (ok ? passed : failed)++;
}

static float f16_round(float x) { return f16_to_f32(f32_to_f16(x)); }

// Runs one case: prefill `n0` tokens in chunks of `chunk`, then decode `n1` single tokens,
// comparing every attend() output with the reference over the same (rounded) keys/values.
static void run_case(const char* spec, int hd, int n_head, int n_head_kv, int n0, int chunk, int n1, uint32_t seed) {
  KvShape s{1, n_head, n_head_kv, hd, n0 + n1 + 8};
  auto cache = make_kv_cache(s, spec);
  const bool half = std::string(spec) == "f16";
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int kv_dim = n_head_kv * hd, q_dim = n_head * hd;
  std::vector<float> K, V;  // everything stored so far (rounded as the cache holds it)
  double worst = 0;
  bool nan = false, guard_ok = true;
  auto step = [&](int pos, int n) {
    std::vector<float> k((size_t)n * kv_dim), v((size_t)n * kv_dim), q((size_t)n * q_dim);
    for (auto& x : k) x = nd(rng) * 2.0f;
    for (auto& x : v) x = nd(rng);
    for (auto& x : q) x = nd(rng) * 2.0f;
    cache->store(0, pos, n, k.data(), v.data());
    for (auto x : k) K.push_back(half ? f16_round(x) : x);
    for (auto x : v) V.push_back(half ? f16_round(x) : x);
    const float sentinel = 12345.0f;
    std::vector<float> out((size_t)n * q_dim + 16, sentinel), ref((size_t)n * q_dim);
    cache->attend(0, pos, n, q.data(), out.data() + 8, nullptr);
    cache->commit(pos + n);
    attention_reference(s, pos, n, q.data(), K.data(), V.data(), pos + n, ref.data());
    for (int i = 0; i < 8; i++) guard_ok &= out[i] == sentinel && out[out.size() - 1 - i] == sentinel;
    double rms = 0;
    for (float x : ref) rms += (double)x * x;
    rms = std::sqrt(rms / ref.size()) + 1e-12;
    for (size_t i = 0; i < ref.size(); i++) {
      const float o = out[i + 8];
      if (!std::isfinite(o)) nan = true;
      worst = std::max(worst, std::fabs((double)o - ref[i]) / rms);
    }
  };
  int pos = 0;
  while (pos < n0) {
    const int n = std::min(chunk, n0 - pos);
    step(pos, n);
    pos += n;
  }
  for (int i = 0; i < n1; i++, pos++) step(pos, 1);
  const double budget = 5e-5;
  char detail[200];
  std::snprintf(detail, sizeof detail, "max err/rms %.2e (budget %.0e)%s%s", worst, budget, nan ? " NaN" : "", guard_ok ? "" : " GUARD");
  char name[200];
  std::snprintf(name, sizeof name, "%s hd=%d heads=%d/%d prefill=%d/%d decode=%d", spec, hd, n_head, n_head_kv, n0, chunk, n1);
  check(worst <= budget && !nan && guard_ok, name, detail);
}

// Rewinding and a state round trip give the same attention as a cache that never held the tail.
static void rewind_case(const char* spec) {
  KvShape s{2, 4, 2, 64, 512};
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  auto fill = [&](int n) { std::vector<float> a((size_t)n * 128); for (auto& x : a) x = nd(rng); return a; };
  auto a = make_kv_cache(s, spec), b = make_kv_cache(s, spec);
  auto k1 = fill(150), v1 = fill(150), k2 = fill(70), v2 = fill(70), k3 = fill(30), v3 = fill(30), q = fill(60);
  for (int l = 0; l < 2; l++) { a->store(l, 0, 150, k1.data(), v1.data()); b->store(l, 0, 150, k1.data(), v1.data()); }
  a->commit(150); b->commit(150);
  for (int l = 0; l < 2; l++) a->store(l, 150, 70, k2.data(), v2.data());
  a->commit(220);
  a->truncate(150);
  std::stringstream ss;
  a->save(ss);
  auto c = make_kv_cache(s, spec);
  c->load(ss);
  bool same = c->n_tokens() == 150;
  for (auto* x : {a.get(), b.get(), c.get()}) { for (int l = 0; l < 2; l++) x->store(l, 150, 30, k3.data(), v3.data()); x->commit(180); }
  std::vector<float> oa(30 * 4 * 64 * 2), ob(oa.size()), oc(oa.size());
  a->attend(1, 150, 30, q.data(), oa.data(), nullptr);
  b->attend(1, 150, 30, q.data(), ob.data(), nullptr);
  c->attend(1, 150, 30, q.data(), oc.data(), nullptr);
  for (size_t i = 0; i < 30 * 4 * 64; i++) same &= oa[i] == ob[i] && oc[i] == ob[i];
  check(same && a->stats().tokens == 180, std::string(spec) + " rewind + save/load equals a fresh cache", "");
}

// Resident anonymous memory of this process, MiB (Linux; -1 elsewhere).
static double rss_anon_mib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("RssAnon:", 0) == 0) return std::atof(line.c_str() + 8) / 1024.0;
  return -1;
}

// A cache replaced by another (what loading a state does) must not stay resident: the second
// generation of arrays comes from the heap (glibc raised its mmap threshold when the first was
// unmapped), and freed heap memory stays resident until release_free_memory().
static void release_case() {
  if (rss_anon_mib() < 0) return;
  KvShape s{1, 8, 8, 64, 32768};  // 16 arrays of 4 MiB: 64 MiB when full
  std::vector<float> k((size_t)4096 * 8 * 64, 0.5f), v = k;
  auto fill = [&](KvCache& c) {
    for (int pos = 0; pos < s.n_ctx; pos += 4096) {
      c.store(0, pos, 4096, k.data(), v.data());
      c.commit(pos + 4096);
    }
  };
  const double base = rss_anon_mib();
  auto cur = make_kv_cache(s, "f16");
  fill(*cur);
  const double one = rss_anon_mib() - base;
  double kept = 0;  // resident beyond one cache after a replacement, before releasing
  for (int gen = 0; gen < 3; gen++) {  // as Session::load: the new cache is filled, then the old one freed
    auto next = make_kv_cache(s, "f16");
    fill(*next);
    cur = std::move(next);
    kept = std::max(kept, rss_anon_mib() - base - one);
  }
  release_free_memory();
  const double released = rss_anon_mib() - base - one;
  check(one > 48 && released < 16, "f16 cache replaced three times: the freed caches go back to the system",
        strprintf("RssAnon: one cache +%.0f MiB; freed ones still resident +%.0f before release_free_memory, +%.0f after", one,
                  kept, released));
}

int main() {
  for (const char* spec : {"f32", "f16"}) {
    run_case(spec, 64, 4, 2, 130, 32, 5, 1);     // tiles crossed by query blocks
    run_case(spec, 64, 8, 1, 64, 64, 3, 2);      // GQA 8, exactly one tile
    run_case(spec, 128, 4, 4, 200, 200, 2, 3);   // MHA, one big block
    run_case(spec, 48, 6, 3, 77, 13, 4, 4);      // head size 48
    run_case(spec, 20, 2, 1, 40, 7, 3, 5);       // head size not a multiple of 8: generic path
    run_case(spec, 64, 32, 8, 300, 128, 4, 6);   // Llama-3.2-1B attention shape
    rewind_case(spec);
  }
  release_case();
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
