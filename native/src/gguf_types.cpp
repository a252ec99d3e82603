// gguf_types.cpp — sizes and names of the ggml tensor types the engine knows (kept apart from
// the GGUF reader so the kernels and their tests link without it).
#include "gguf.h"

#include <cstdio>

namespace lkv {

namespace {
struct TypeInfo {
  uint32_t block;  // elements per block
  uint32_t bytes;  // bytes per block
  const char* name;
  bool in_files;   // a type we accept in model files (Q8_K is activations only)
};

bool type_info(uint32_t type, TypeInfo* out) {
  switch ((GgmlType)type) {
    case GgmlType::F32: *out = {1, 4, "f32", true}; return true;
    case GgmlType::F16: *out = {1, 2, "f16", true}; return true;
    case GgmlType::BF16: *out = {1, 2, "bf16", true}; return true;
    case GgmlType::Q8_0: *out = {32, 34, "q8_0", true}; return true;
    case GgmlType::Q4_0: *out = {32, 18, "q4_0", true}; return true;
    case GgmlType::Q2_K: *out = {256, 84, "q2_K", true}; return true;
    case GgmlType::Q3_K: *out = {256, 110, "q3_K", true}; return true;
    case GgmlType::Q4_K: *out = {256, 144, "q4_K", true}; return true;
    case GgmlType::Q5_K: *out = {256, 176, "q5_K", true}; return true;
    case GgmlType::Q6_K: *out = {256, 210, "q6_K", true}; return true;
    case GgmlType::Q8_K: *out = {256, 292, "q8_K", false}; return true;
    case GgmlType::IQ4_NL: *out = {32, 18, "iq4_nl", true}; return true;
    case GgmlType::IQ4_XS: *out = {256, 136, "iq4_xs", true}; return true;
  }
  return false;
}
}  // namespace

uint32_t ggml_block_size(uint32_t type) {
  TypeInfo t;
  return type_info(type, &t) ? t.block : 0;
}

uint32_t ggml_type_size(uint32_t type) {
  TypeInfo t;
  return type_info(type, &t) ? t.bytes : 0;
}

bool ggml_type_known(uint32_t type) {
  TypeInfo t;
  return type_info(type, &t) && t.in_files;
}

const char* ggml_type_name(uint32_t type) {
  TypeInfo t;
  if (type_info(type, &t)) return t.name;
  static thread_local char buf[32];
  std::snprintf(buf, sizeof buf, "type#%u", type);
  return buf;
}

uint64_t ggml_row_bytes(uint32_t type, uint64_t n) {
  TypeInfo t;
  LKV_CHECK(type_info(type, &t), "row size of unknown tensor type %u", type);
  LKV_CHECK(n % t.block == 0, "%llu elements is not a multiple of the %s block size %u",
            (unsigned long long)n, t.name, t.block);
  return n / t.block * t.bytes;
}

}  // namespace lkv
