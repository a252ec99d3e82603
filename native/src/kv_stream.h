// kv_stream.h — the compressed cache's state payload framing ("KVK1"), shared by the CPU cache
// (kv_compressed.cpp) and the CUDA store (cuda/cuda_kv.cu) so state files move between backends:
// little-endian scalars, and vectors as a u64 count followed by the elements.
#pragma once

#include <cstdint>
#include <istream>
#include <ostream>
#include <vector>

#include "common.h"

namespace lkv {
namespace kvstream {

constexpr uint32_t kStateMagic = 0x314b564bu;  // "KVK1"
constexpr uint32_t kStateVersion = 2;  // 2: journal records carry the slot score

template <typename T>
void put(std::ostream& o, const T& x) {
  o.write((const char*)&x, sizeof x);
}
template <typename T>
void put_vec(std::ostream& o, const T* p, uint64_t n) {
  put<uint64_t>(o, n);
  o.write((const char*)p, (std::streamsize)(n * sizeof(T)));
}
template <typename T>
void put_vec(std::ostream& o, const std::vector<T>& v) {
  put_vec(o, v.data(), v.size());
}
template <typename T>
T get(std::istream& in) {
  T x{};
  in.read((char*)&x, sizeof x);
  LKV_CHECK((bool)in, "kv state: truncated");
  return x;
}
// A vector of exactly `expect` entries (the reader's shape says how many).
template <typename T>
void get_vec(std::istream& in, std::vector<T>& v, uint64_t expect, const char* what) {
  const uint64_t n = get<uint64_t>(in);
  LKV_CHECK(n == expect, "kv state: %s has %llu entries, expected %llu", what, (unsigned long long)n, (unsigned long long)expect);
  v.resize((size_t)n);
  in.read((char*)v.data(), (std::streamsize)(n * sizeof(T)));
  LKV_CHECK((bool)in, "kv state: truncated in %s", what);
}
// A vector of at most `limit` entries.
template <typename T>
void get_vec_upto(std::istream& in, std::vector<T>& v, uint64_t limit, const char* what) {
  const uint64_t n = get<uint64_t>(in);
  LKV_CHECK(n <= limit, "kv state: %s has %llu entries (at most %llu)", what, (unsigned long long)n, (unsigned long long)limit);
  v.resize((size_t)n);
  in.read((char*)v.data(), (std::streamsize)(n * sizeof(T)));
  LKV_CHECK((bool)in, "kv state: truncated in %s", what);
}

}  // namespace kvstream
}  // namespace lkv
