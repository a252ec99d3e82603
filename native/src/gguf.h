// gguf.h — a validating reader for GGUF v2/v3 files (memory-mapped).
// Every count, size, offset and dimension is checked against the file before use; a bad file
// throws lkv::Error naming the problem. Tensor data stays in the mapping (never copied).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common.h"

namespace lkv {

// ggml tensor type ids as stored in GGUF (only the ones the engine reads are named).
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q8_0 = 8,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,  // activations only, never in files we accept
  IQ4_NL = 20,
  IQ4_XS = 23,
  BF16 = 30,
};
const char* ggml_type_name(uint32_t type);  // "q4_K" etc., "type#N" when unknown

// GGUF metadata value types.
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};

struct GgufValue {
  GgufType type = GgufType::U8;
  // scalars: integers in i (and u for unsigned), floats in f, bools in i
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string s;  // STRING
  // ARRAY: element type and elements; strings in strs, numbers in nums (as double and int64),
  // nested arrays in arr.
  // (gguf.cpp: every numeric or bool array fills both ints and floats, count entries each; floats
  // convert to ints saturating, NaN -> 0. u64 values above INT64_MAX wrap in i / ints; u is exact.)
  GgufType elem = GgufType::U8;
  uint64_t count = 0;
  std::vector<std::string> strs;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<GgufValue> arr;
};

struct GgufTensor {
  std::string name;
  uint32_t type = 0;            // GgmlType value (validated to be a known type)
  std::vector<uint64_t> ne;     // dims, ne[0] = row length (innermost)
  uint64_t nelements = 0;
  uint64_t nbytes = 0;
  uint64_t offset = 0;          // absolute offset in file
  const uint8_t* data = nullptr;
  uint64_t rows() const { uint64_t r = 1; for (size_t k = 1; k < ne.size(); k++) r *= ne[k]; return r; }
};

class GgufFile {
 public:
  // Maps and parses a file. Throws Error with the path and the problem.
  static std::unique_ptr<GgufFile> open(const std::string& path);
  // Parses a buffer the caller keeps alive (fuzzing, tests).
  static std::unique_ptr<GgufFile> parse(const uint8_t* data, size_t size, const std::string& label);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // start of the tensor data section
  std::string path;
  std::map<std::string, GgufValue> kv;
  std::vector<GgufTensor> tensors;

  const GgufValue* find(const std::string& key) const;
  const GgufTensor* tensor(const std::string& name) const;  // nullptr when absent

  // Typed getters: throw Error "<path>: metadata key K missing / has type T, expected ..."
  // Integer getters accept any integer type whose value fits.
  uint64_t get_u64(const std::string& key) const;
  uint64_t get_u64(const std::string& key, uint64_t dflt) const;
  double get_f64(const std::string& key) const;          // any float or integer type
  double get_f64(const std::string& key, double dflt) const;
  std::string get_str(const std::string& key) const;
  std::string get_str(const std::string& key, const std::string& dflt) const;
  const std::vector<std::string>& get_str_arr(const std::string& key) const;
  std::vector<int64_t> get_int_arr(const std::string& key) const;  // empty when absent

  const uint8_t* base() const { return base_; }
  size_t size() const { return size_; }

 private:
  GgufFile() = default;
  void parse_all();
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  void* mapping_ = nullptr;  // munmap on destruction when non-null
  size_t mapping_size_ = 0;
  std::map<std::string, size_t> tensor_index_;
};

// Bytes needed for n elements of a type (n must be a multiple of the block size; checked).
uint64_t ggml_row_bytes(uint32_t type, uint64_t n);
uint32_t ggml_block_size(uint32_t type);   // elements per block; 0 when unknown
uint32_t ggml_type_size(uint32_t type);    // bytes per block; 0 when unknown
bool ggml_type_known(uint32_t type);

}  // namespace lkv
