// fuzz_gguf.cpp — libFuzzer target for the GGUF reader. Parses the input; when it parses, touches
// the first and last byte of every tensor's data and calls every getter on every key. Only
// lkv::Error is caught: any other exception, crash or sanitizer report is a finding.
// Built by native/CMakeLists.txt with -DLLAMAKV_FUZZ=ON (clang); run by native/tools/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gguf.h"

namespace {

volatile uint64_t g_sink;

void touch_value(const lkv::GgufValue& v, uint64_t& acc, int depth) {
  acc += (uint64_t)v.type + v.u + (uint64_t)v.i + v.s.size() + v.count;
  if (v.type != lkv::GgufType::ARRAY) return;
  if (v.elem == lkv::GgufType::STRING) {
    if (v.strs.size() != v.count) __builtin_trap();
    for (auto& s : v.strs) acc += s.size() ? (uint8_t)s.back() : 0;
  } else if (v.elem == lkv::GgufType::ARRAY) {
    if (v.arr.size() != v.count) __builtin_trap();
    for (auto& a : v.arr) touch_value(a, acc, depth + 1);
  } else {
    if (v.ints.size() != v.count || v.floats.size() != v.count) __builtin_trap();
    for (size_t k = 0; k < v.ints.size(); k++) acc += (uint64_t)v.ints[k] + (v.floats[k] > 0);
  }
}

template <class F>
void try_get(F&& f) {
  try {
    f();
  } catch (const lkv::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Copy into an exactly-sized buffer so AddressSanitizer flags any read past the end.
  std::vector<uint8_t> buf(data, data + size);
  std::unique_ptr<lkv::GgufFile> f;
  try {
    f = lkv::GgufFile::parse(buf.data(), buf.size(), "fuzz.gguf");
  } catch (const lkv::Error&) {
    return 0;
  }
  uint64_t acc = f->version + f->alignment + f->data_offset;
  if (f->data_offset > f->size()) __builtin_trap();
  for (const auto& t : f->tensors) {
    if (t.nbytes == 0 || t.data != f->base() + t.offset) __builtin_trap();
    if (t.offset % f->alignment != (f->data_offset % f->alignment)) __builtin_trap();
    acc += t.data[0] + t.data[t.nbytes - 1] + t.rows() + t.nelements + t.ne.size();
    if (f->tensor(t.name) != &t) __builtin_trap();
    acc += std::strlen(lkv::ggml_type_name(t.type)) + lkv::ggml_row_bytes(t.type, t.ne[0]);
  }
  for (const auto& kv : f->kv) {
    const std::string& key = kv.first;
    if (f->find(key) != &kv.second) __builtin_trap();
    touch_value(kv.second, acc, 0);
    try_get([&] { acc += f->get_u64(key); });
    try_get([&] { acc += f->get_u64(key, 1); });
    try_get([&] { acc += (uint64_t)(f->get_f64(key) > 0); });
    try_get([&] { acc += (uint64_t)(f->get_f64(key, 0.5) > 0); });
    try_get([&] { acc += f->get_str(key).size(); });
    try_get([&] { acc += f->get_str(key, "x").size(); });
    try_get([&] { acc += f->get_str_arr(key).size(); });
    try_get([&] { acc += f->get_int_arr(key).size(); });
  }
  try_get([&] { acc += f->get_u64("no.such.key"); });
  acc += f->get_u64("no.such.key", 3) + f->get_int_arr("no.such.key").size();
  g_sink = acc;
  return 0;
}
