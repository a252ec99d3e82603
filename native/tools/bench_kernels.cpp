// bench_kernels.cpp — microbenchmark of the CPU matmul kernels at Llama-3.2-1B shapes, printing
// achieved bandwidth (matrix-vector) or GOP/s (prefill) next to the machine's read bandwidth.
// Weights are spread over enough copies to defeat the caches, as in a real decode.
// Usage: bench_kernels [--isa=avx2] [--threads=2] [--type=q8_0] [--reps=7] [--mode=all|bw|matvec|model|prefill]
//                      [--tok=512] [--cpu]
// Timing only; correctness lives in tests/test_kernels.cpp.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <immintrin.h>

#include "common.h"
#include "kernels.h"
#include "quant.h"
#include "threadpool.h"

using namespace lkv;

namespace {

std::mt19937_64 g_rng(42);

// Wall time, or with --cpu the calling thread's CPU time (with --threads=1 that is what the kernel
// costs when it has a core, whatever else the shared machine runs).
bool g_cpu_clock = false;
double now() {
  if (g_cpu_clock) {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Stats { double best, median; };
Stats stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v.front(), v[v.size() / 2]};
}

std::vector<float> gauss_vec(size_t n, float scale) {
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (auto& f : v) f = nd(g_rng);
  return v;
}

// `copies` matrices of rows x cols, quantized from Gaussian data (one template, copied).
struct Weights {
  std::vector<uint8_t> bytes;
  std::vector<WeightView> views;
};
Weights make_weights(uint32_t type, int64_t rows, int64_t cols, int copies) {
  const size_t rb = ggml_row_bytes(type, cols);
  const int64_t tmpl_rows = std::min<int64_t>(rows, 1024);
  std::vector<uint8_t> tmpl(rb * tmpl_rows);
  for (int64_t r = 0; r < tmpl_rows; r++) {
    std::vector<float> row = gauss_vec(cols, 0.05f);
    quantize_row_ref(type, row.data(), tmpl.data() + r * rb, cols);
  }
  Weights w;
  w.bytes.resize(rb * rows * copies);
  for (size_t off = 0; off < w.bytes.size(); off += tmpl.size())
    std::memcpy(w.bytes.data() + off, tmpl.data(), std::min(tmpl.size(), w.bytes.size() - off));
  for (int i = 0; i < copies; i++) w.views.push_back({type, w.bytes.data() + rb * rows * i, rows, cols, rb});
  return w;
}

// Read bandwidth of `pool` threads summing a 512 MiB buffer (each thread a contiguous part).
double read_bandwidth(ThreadPool* pool, int reps) {
  const size_t n = (size_t)512 << 20;
  std::vector<uint8_t> buf(n, 1);
  const int parts = pool ? pool->size() : 1;
  std::vector<double> t;
  std::atomic<long long> sink{0};
  for (int rep = 0; rep < reps; rep++) {
    const double t0 = now();
    auto part = [&](int p) {
      const __m256i* a = (const __m256i*)(buf.data() + n / parts * p);
      const size_t m = n / parts / 32;
      __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
      for (size_t i = 0; i < m; i += 4) {
        s0 = _mm256_xor_si256(s0, _mm256_load_si256(a + i));
        s1 = _mm256_xor_si256(s1, _mm256_load_si256(a + i + 1));
        s2 = _mm256_xor_si256(s2, _mm256_load_si256(a + i + 2));
        s3 = _mm256_xor_si256(s3, _mm256_load_si256(a + i + 3));
      }
      s0 = _mm256_xor_si256(_mm256_xor_si256(s0, s1), _mm256_xor_si256(s2, s3));
      sink += _mm256_extract_epi64(s0, 0);
    };
    if (pool) pool->run(parts, part); else part(0);
    t.push_back(now() - t0);
  }
  return n / stats(t).best / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  std::string isa = "", mode = "all", type_name = "q8_0";
  int threads = 2, reps = 7, n_tok = 512;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto val = [&](const char* key) { return a.rfind(key, 0) == 0 ? a.substr(std::strlen(key)) : std::string(); };
    if (!val("--isa=").empty()) isa = val("--isa=");
    else if (!val("--threads=").empty()) threads = std::atoi(val("--threads=").c_str());
    else if (!val("--type=").empty()) type_name = val("--type=");
    else if (!val("--reps=").empty()) reps = std::atoi(val("--reps=").c_str());
    else if (!val("--mode=").empty()) mode = val("--mode=");
    else if (!val("--tok=").empty()) n_tok = std::atoi(val("--tok=").c_str());
    else if (a == "--cpu") g_cpu_clock = true;
    else { std::fprintf(stderr, "unknown argument %s\n", argv[i]); return 2; }
  }
  const Kernels* k = isa.empty() ? &kernels_best() : kernels_for(isa.c_str());
  if (!k) { std::fprintf(stderr, "isa %s not available\n", isa.c_str()); return 2; }
  uint32_t type = 0;
  for (uint32_t t : {0u, 1u, 30u, 8u, 2u, 10u, 11u, 12u, 13u, 14u, 20u, 23u})
    if (type_name == ggml_type_name(t)) type = t;
  if (type_name != ggml_type_name(type)) { std::fprintf(stderr, "unknown type %s\n", type_name.c_str()); return 2; }
  ThreadPool pool(threads);
  ThreadPool* pp = threads > 1 ? &pool : nullptr;
  std::printf("bench_kernels: %s, %s, %d threads, %s time, cpu: %s\n", k->name, ggml_type_name(type), threads,
              g_cpu_clock ? "CPU" : "wall", cpu_features());

  if (mode == "all" || mode == "bw") {
    std::printf("read bandwidth: 1 thread %.1f GB/s, %d threads %.1f GB/s\n", read_bandwidth(nullptr, 5), threads,
                read_bandwidth(pp, 5));
  }

  struct Shape { const char* name; int64_t rows, cols; };
  const Shape shapes[] = {{"wq/wo", 2048, 2048}, {"wk/wv", 512, 2048}, {"gate/up", 8192, 2048},
                          {"down", 2048, 8192}, {"output", 128256, 2048}};
  if (mode == "all" || mode == "matvec") {
    for (const Shape& s : shapes) {
      const size_t mbytes = ggml_row_bytes(type, s.cols) * s.rows;
      const int copies = (int)std::max<size_t>(1, ((size_t)256 << 20) / mbytes);
      Weights w = make_weights(type, s.rows, s.cols, copies);
      std::vector<float> x = gauss_vec(s.cols, 1.f), y(s.rows);
      for (auto& v : w.views) k->matmul(v, x.data(), 1, y.data(), pp);  // warm up
      std::vector<double> t;
      for (int rep = 0; rep < reps; rep++) {
        const double t0 = now();
        for (auto& v : w.views) k->matmul(v, x.data(), 1, y.data(), pp);
        t.push_back((now() - t0) / copies);
      }
      Stats st = stats(t);
      std::printf("  matvec %-8s %6lldx%-5lld %8.1f us  best %5.1f GB/s  median %5.1f GB/s\n", s.name, (long long)s.rows,
                  (long long)s.cols, st.best * 1e6, mbytes / st.best / 1e9, mbytes / st.median / 1e9);
    }
  }
  if (mode == "all" || mode == "model") {
    // one decode token of the 1B model: 16 layers x (q k v o gate up down) + the output matrix
    const int n_layer = 16;
    Weights q = make_weights(type, 2048, 2048, 2 * n_layer), kv = make_weights(type, 512, 2048, 2 * n_layer);
    Weights gu = make_weights(type, 8192, 2048, 2 * n_layer), dn = make_weights(type, 2048, 8192, n_layer);
    Weights out = make_weights(type, 128256, 2048, 1);
    std::vector<float> x = gauss_vec(8192, 1.f), y(128256);
    size_t bytes = 0;
    auto token = [&](bool count) {
      for (int l = 0; l < n_layer; l++) {
        for (const WeightView* v : {&q.views[2 * l], &kv.views[2 * l], &kv.views[2 * l + 1], &q.views[2 * l + 1],
                                    &gu.views[2 * l], &gu.views[2 * l + 1], &dn.views[l]}) {
          k->matmul(*v, x.data(), 1, y.data(), pp);
          if (count) bytes += v->row_bytes * v->rows;
        }
      }
      k->matmul(out.views[0], x.data(), 1, y.data(), pp);
      if (count) bytes += out.views[0].row_bytes * out.views[0].rows;
    };
    token(true);
    std::vector<double> t;
    for (int rep = 0; rep < reps; rep++) {
      const double t0 = now();
      token(false);
      t.push_back(now() - t0);
    }
    Stats st = stats(t);
    std::printf("  decode token (matmuls only, %.2f GB): best %.1f ms = %.1f tok/s %.1f GB/s, median %.1f ms %.1f GB/s\n",
                bytes / 1e9, st.best * 1e3, 1 / st.best, bytes / st.best / 1e9, st.median * 1e3, bytes / st.median / 1e9);
  }
  if (mode == "all" || mode == "prefill") {
    for (const Shape& s : shapes) {
      if (s.rows > 8192) continue;
      Weights w = make_weights(type, s.rows, s.cols, 1);
      std::vector<float> x = gauss_vec((size_t)n_tok * s.cols, 1.f), y((size_t)n_tok * s.rows);
      k->matmul(w.views[0], x.data(), n_tok, y.data(), pp);
      std::vector<double> t;
      for (int rep = 0; rep < std::max(1, reps / 2); rep++) {
        const double t0 = now();
        k->matmul(w.views[0], x.data(), n_tok, y.data(), pp);
        t.push_back(now() - t0);
      }
      Stats st = stats(t);
      const double ops = 2.0 * s.rows * s.cols * n_tok;
      std::printf("  matmul %-8s %6lldx%-5lld x %d tok %8.2f ms  best %5.0f GOP/s  median %5.0f GOP/s\n", s.name,
                  (long long)s.rows, (long long)s.cols, n_tok, st.best * 1e3, ops / st.best / 1e9, ops / st.median / 1e9);
    }
  }
  return 0;
}
