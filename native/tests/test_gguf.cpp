// test_gguf.cpp — GGUF reader tests: builds GGUF files in memory with a tiny writer, checks that
// valid v2/v3 files round-trip through GgufFile::parse / open and the typed getters, and that every
// kind of corrupt file is rejected with an lkv::Error naming the problem.
//
//   test_gguf                   run the tests; last line "N passed, M failed"; exit 1 on failure
//   test_gguf --write-seeds DIR write a few valid GGUF files into DIR (fuzzing seeds)
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "common.h"
#include "gguf.h"

using namespace lkv;

namespace {

// ---------------------------------------------------------------- a tiny GGUF writer

struct Bytes {
  std::vector<uint8_t> b;
  template <class T>
  Bytes& put(T v) {
    uint8_t tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof(T));
    b.insert(b.end(), tmp, tmp + sizeof(T));
    return *this;
  }
  Bytes& u8(uint8_t v) { return put(v); }
  Bytes& u32(uint32_t v) { return put(v); }
  Bytes& u64(uint64_t v) { return put(v); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& raw(const std::vector<uint8_t>& v) {
    b.insert(b.end(), v.begin(), v.end());
    return *this;
  }
  size_t size() const { return b.size(); }
};

enum : uint32_t { T_U8 = 0, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 };

// An encoded value (type id + payload), so arrays can nest.
struct Val {
  uint32_t type;
  Bytes payload;
};
template <class T>
Val scalar(uint32_t type, T v) {
  Val x{type, {}};
  x.payload.put(v);
  return x;
}
Val vstr(const std::string& s) {
  Val x{T_STR, {}};
  x.payload.str(s);
  return x;
}
// Array of elements that must all have type `elem` (payloads concatenated).
Val varr(uint32_t elem, const std::vector<Val>& elems) {
  Val x{T_ARR, {}};
  x.payload.u32(elem).u64(elems.size());
  for (auto& e : elems) x.payload.raw(e.payload.b);
  return x;
}
template <class T>
Val varr_num(uint32_t elem, const std::vector<T>& v) {
  std::vector<Val> e;
  for (T x : v) e.push_back(scalar(elem, x));
  return varr(elem, e);
}

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type;
  std::vector<uint8_t> data;  // nbytes of it are written
  bool auto_offset = true;
  uint64_t offset = 0;  // relative, when !auto_offset
};

struct Builder {
  uint32_t version = 3;
  uint32_t alignment = 32;  // used for layout; write general.alignment yourself to change it
  std::vector<std::pair<std::string, Val>> kvs;
  std::vector<TensorSpec> tensors;
  // positions recorded by build()
  size_t header_end = 0, kv_end = 0, info_end = 0, data_start = 0;
  std::vector<size_t> kv_ends, info_ends, data_offsets;

  Builder& kv(const std::string& k, const Val& v) {
    kvs.push_back({k, v});
    return *this;
  }
  Builder& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, size_t nbytes) {
    TensorSpec t{name, ne, type, {}};
    t.data.resize(nbytes);
    for (size_t k = 0; k < nbytes; k++) t.data[k] = (uint8_t)(k * 7 + name.size() * 13 + 1);
    tensors.push_back(t);
    return *this;
  }

  std::vector<uint8_t> build() {
    Bytes w;
    w.b = {'G', 'G', 'U', 'F'};
    w.u32(version).u64(tensors.size()).u64(kvs.size());
    header_end = w.size();
    kv_ends.clear();
    for (auto& kv : kvs) {
      w.str(kv.first).u32(kv.second.type).raw(kv.second.payload.b);
      kv_ends.push_back(w.size());
    }
    kv_end = w.size();
    uint64_t off = 0;
    data_offsets.clear();
    info_ends.clear();
    for (auto& t : tensors) {
      if (t.auto_offset) {
        t.offset = off;
        off += (t.data.size() + alignment - 1) / alignment * alignment;
      }
      w.str(t.name).u32((uint32_t)t.ne.size());
      for (uint64_t d : t.ne) w.u64(d);
      w.u32(t.type).u64(t.offset);
      info_ends.push_back(w.size());
    }
    info_end = w.size();
    if (!tensors.empty()) {
      while (w.size() % alignment) w.u8(0);
    }
    data_start = w.size();
    for (auto& t : tensors) {
      if (t.offset > ((uint64_t)1 << 24)) continue;  // bogus offsets for negative tests: write nothing
      size_t at = data_start + t.offset;
      if (w.b.size() < at + t.data.size()) w.b.resize(at + t.data.size(), 0);
      std::memcpy(w.b.data() + at, t.data.data(), t.data.size());
      data_offsets.push_back(at);
    }
    return w.b;
  }
};

// A valid file with every metadata type, arrays of every element type, nested arrays and one
// tensor of each supported ggml type.
Builder full_builder(uint32_t version) {
  Builder g;
  g.version = version;
  g.kv("general.architecture", vstr("llama"))
      .kv("t.u8", scalar<uint8_t>(T_U8, 200))
      .kv("t.i8", scalar<int8_t>(T_I8, -100))
      .kv("t.u16", scalar<uint16_t>(T_U16, 60000))
      .kv("t.i16", scalar<int16_t>(T_I16, -30000))
      .kv("t.u32", scalar<uint32_t>(T_U32, 4000000000u))
      .kv("t.i32", scalar<int32_t>(T_I32, -2000000000))
      .kv("t.i32pos", scalar<int32_t>(T_I32, 128256))
      .kv("t.f32", scalar<float>(T_F32, 1e-5f))
      .kv("t.bool", scalar<uint8_t>(T_BOOL, 1))
      .kv("t.str", vstr("hello, world"))
      .kv("t.str_empty", vstr(""))
      .kv("t.str_badutf8", vstr(std::string("\xff\xfe\xc3(", 4)))
      .kv("t.u64", scalar<uint64_t>(T_U64, 18000000000000000000ull))
      .kv("t.i64", scalar<int64_t>(T_I64, -9000000000000000000ll))
      .kv("t.f64", scalar<double>(T_F64, 500000.25))
      .kv("a.u8", varr_num<uint8_t>(T_U8, {1, 2, 255}))
      .kv("a.i8", varr_num<int8_t>(T_I8, {-1, 0, 127}))
      .kv("a.u16", varr_num<uint16_t>(T_U16, {65535}))
      .kv("a.i16", varr_num<int16_t>(T_I16, {-32768, 5}))
      .kv("a.u32", varr_num<uint32_t>(T_U32, {1, 4294967295u}))
      .kv("a.i32", varr_num<int32_t>(T_I32, {1, 1, 3, 3, -7}))
      .kv("a.f32", varr_num<float>(T_F32, {0.5f, -1.25f}))
      .kv("a.bool", varr_num<uint8_t>(T_BOOL, {0, 1, 1}))
      .kv("a.u64", varr_num<uint64_t>(T_U64, {7, 1ull << 40}))
      .kv("a.u64big", varr_num<uint64_t>(T_U64, {1ull << 63}))
      .kv("a.i64", varr_num<int64_t>(T_I64, {-5}))
      .kv("a.f64", varr_num<double>(T_F64, {3.5, -0.0}))
      .kv("a.empty", varr(T_I32, {}))
      .kv("a.str", varr(T_STR, {vstr("a b"), vstr(""), vstr("Ġt he")}))
      .kv("a.nested", varr(T_ARR, {varr_num<int32_t>(T_I32, {1, 2}), varr_num<int32_t>(T_I32, {}),
                                   varr_num<float>(T_F32, {9.0f})}))
      .kv("a.nested_str", varr(T_ARR, {varr(T_STR, {vstr("x"), vstr("yz")})}))
      .kv("a.nested2", varr(T_ARR, {varr(T_ARR, {varr_num<uint8_t>(T_U8, {42})})}));
  g.tensor("token_embd.weight", {4, 3}, 0, 4 * 3 * 4);  // F32
  g.tensor("blk.0.f16", {8}, 1, 16);                     // F16
  g.tensor("blk.0.bf16", {2, 2, 2, 2}, 30, 32);          // BF16, 4 dims
  g.tensor("blk.0.q8_0", {64, 2}, 8, 2 * 2 * 34);        // Q8_0
  g.tensor("blk.0.q4_0", {32, 1, 3}, 2, 3 * 18);         // Q4_0
  g.tensor("blk.0.q4_k", {256}, 12, 144);                // Q4_K
  g.tensor("blk.0.q6_k", {512, 2}, 14, 4 * 210);         // Q6_K
  return g;
}

// ---------------------------------------------------------------- test harness

int g_pass = 0, g_fail = 0;
std::string g_note;  // the expected error's message, shown on the PASS line

void report(const std::string& name, const std::string& problem) {
  std::string note = g_note;
  g_note.clear();
  if (problem.empty()) {
    g_pass++;
    if (note.empty()) std::printf("PASS %s\n", name.c_str());
    else std::printf("PASS %s -> %s\n", name.c_str(), note.c_str());
  } else {
    g_fail++;
    std::printf("FAIL %s: %s\n", name.c_str(), problem.c_str());
  }
  std::fflush(stdout);
}

// Runs fn; it returns "" on success or a description of the failure. Exceptions count as failures.
void check(const std::string& name, const std::function<std::string()>& fn) {
  std::string problem;
  try {
    problem = fn();
  } catch (const Error& e) {
    problem = std::string("unexpected lkv::Error: ") + e.what();
  } catch (const std::exception& e) {
    problem = std::string("unexpected std::exception: ") + e.what();
  }
  report(name, problem);
}

// fn must throw lkv::Error whose message contains every one of `needles`.
void expect_error(const std::string& name, const std::function<void()>& fn, const std::vector<std::string>& needles) {
  std::string problem;
  try {
    fn();
    problem = "no error";
  } catch (const Error& e) {
    std::string msg = e.what();
    for (auto& n : needles)
      if (msg.find(n) == std::string::npos) problem += "message lacks \"" + n + "\"; ";
    if (!problem.empty()) problem += "got: " + msg;
    else g_note = msg;
  } catch (const std::exception& e) {
    problem = std::string("wrong exception type: ") + e.what();
  }
  report(name, problem);
}

void expect_parse_error(const std::string& name, const std::vector<uint8_t>& bytes,
                        const std::vector<std::string>& needles) {
  // Copy into an exactly-sized heap buffer so AddressSanitizer catches any read past the end.
  std::vector<uint8_t> copy(bytes);
  copy.shrink_to_fit();
  std::vector<std::string> n = needles;
  n.insert(n.begin(), "case.gguf: ");
  expect_error(name, [&] { GgufFile::parse(copy.data(), copy.size(), "case.gguf"); }, n);
}

#define REQ(cond)                                                             \
  do {                                                                        \
    if (!(cond)) return std::string("check failed: ") + #cond + " (line " + std::to_string(__LINE__) + ")"; \
  } while (0)

template <class T>
void patch(std::vector<uint8_t>& b, size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof(T));
}

// ---------------------------------------------------------------- valid files

std::string check_full(const GgufFile& f, const Builder& g, uint32_t version) {
  REQ(f.version == version);
  REQ(f.alignment == 32);
  REQ(f.kv.size() == g.kvs.size());
  REQ(f.tensors.size() == g.tensors.size());
  REQ(f.data_offset == g.data_start);
  REQ(f.data_offset % 32 == 0);

  // typed getters on scalars
  REQ(f.get_str("general.architecture") == "llama");
  REQ(f.get_u64("t.u8") == 200);
  REQ(f.get_u64("t.u16") == 60000);
  REQ(f.get_u64("t.u32") == 4000000000u);
  REQ(f.get_u64("t.i32pos") == 128256);
  REQ(f.get_u64("t.u64") == 18000000000000000000ull);
  REQ(f.get_u64("missing.key", 77) == 77);
  REQ(f.get_f64("t.f32") == (double)1e-5f);
  REQ(f.get_f64("t.f64") == 500000.25);
  REQ(f.get_f64("t.i8") == -100);
  REQ(f.get_f64("t.i16") == -30000);
  REQ(f.get_f64("t.i32") == -2000000000);
  REQ(f.get_f64("t.i64") == -9e18);
  REQ(f.get_f64("t.u32") == 4000000000.0);
  REQ(f.get_f64("missing.key", 2.5) == 2.5);
  REQ(f.get_str("t.str") == "hello, world");
  REQ(f.get_str("t.str_empty") == "");
  REQ(f.get_str("t.str_badutf8") == std::string("\xff\xfe\xc3(", 4));
  REQ(f.get_str("missing.key", "dflt") == "dflt");

  // raw values
  const GgufValue* v = f.find("t.i8");
  REQ(v && v->type == GgufType::I8 && v->i == -100);
  v = f.find("t.i64");
  REQ(v && v->type == GgufType::I64 && v->i == -9000000000000000000ll);
  v = f.find("t.bool");
  REQ(v && v->type == GgufType::BOOL && v->i == 1);
  v = f.find("t.u64");
  REQ(v && v->type == GgufType::U64 && v->u == 18000000000000000000ull);
  REQ(f.find("nope") == nullptr);

  // arrays
  auto& strs = f.get_str_arr("a.str");
  REQ(strs.size() == 3 && strs[0] == "a b" && strs[1].empty() && strs[2] == "Ġt he");
  REQ((f.get_int_arr("a.i32") == std::vector<int64_t>{1, 1, 3, 3, -7}));
  REQ((f.get_int_arr("a.u8") == std::vector<int64_t>{1, 2, 255}));
  REQ((f.get_int_arr("a.i8") == std::vector<int64_t>{-1, 0, 127}));
  REQ((f.get_int_arr("a.u16") == std::vector<int64_t>{65535}));
  REQ((f.get_int_arr("a.i16") == std::vector<int64_t>{-32768, 5}));
  REQ((f.get_int_arr("a.u32") == std::vector<int64_t>{1, 4294967295ll}));
  REQ((f.get_int_arr("a.u64") == std::vector<int64_t>{7, 1ll << 40}));
  REQ((f.get_int_arr("a.i64") == std::vector<int64_t>{-5}));
  REQ((f.get_int_arr("a.bool") == std::vector<int64_t>{0, 1, 1}));
  REQ(f.get_int_arr("a.empty").empty());
  REQ(f.get_int_arr("missing.key").empty());
  v = f.find("a.f32");
  REQ(v && v->type == GgufType::ARRAY && v->elem == GgufType::F32 && v->count == 2);
  REQ(v->floats.size() == 2 && v->floats[0] == 0.5 && v->floats[1] == -1.25);
  v = f.find("a.f64");
  REQ(v && v->elem == GgufType::F64 && v->floats.size() == 2 && v->floats[0] == 3.5 && std::signbit(v->floats[1]));
  v = f.find("a.i32");
  REQ(v && v->floats.size() == 5 && v->floats[4] == -7.0);
  v = f.find("a.empty");
  REQ(v && v->type == GgufType::ARRAY && v->elem == GgufType::I32 && v->count == 0);
  v = f.find("a.nested");
  REQ(v && v->type == GgufType::ARRAY && v->elem == GgufType::ARRAY && v->count == 3 && v->arr.size() == 3);
  REQ(v->arr[0].type == GgufType::ARRAY && v->arr[0].elem == GgufType::I32 &&
      (v->arr[0].ints == std::vector<int64_t>{1, 2}));
  REQ(v->arr[1].count == 0 && v->arr[1].ints.empty());
  REQ(v->arr[2].elem == GgufType::F32 && v->arr[2].floats.size() == 1 && v->arr[2].floats[0] == 9.0);
  v = f.find("a.nested_str");
  REQ(v && v->arr.size() == 1 && v->arr[0].elem == GgufType::STRING &&
      (v->arr[0].strs == std::vector<std::string>{"x", "yz"}));
  v = f.find("a.nested2");
  REQ(v && v->arr.size() == 1 && v->arr[0].arr.size() == 1 && v->arr[0].arr[0].elem == GgufType::U8 &&
      v->arr[0].arr[0].ints.size() == 1 && v->arr[0].arr[0].ints[0] == 42);

  // tensors
  for (size_t k = 0; k < g.tensors.size(); k++) {
    const TensorSpec& s = g.tensors[k];
    const GgufTensor* t = f.tensor(s.name);
    REQ(t != nullptr);
    REQ(t == &f.tensors[k]);
    REQ(t->name == s.name && t->type == s.type && t->ne == s.ne);
    REQ(t->nbytes == s.data.size());
    uint64_t nel = 1;
    for (auto d : s.ne) nel *= d;
    REQ(t->nelements == nel);
    REQ(t->rows() == nel / s.ne[0]);
    REQ(t->offset == g.data_start + s.offset);
    REQ(t->offset % 32 == 0);
    REQ(t->data == f.base() + t->offset);
    REQ(std::memcmp(t->data, s.data.data(), s.data.size()) == 0);
  }
  REQ(f.tensor("nope") == nullptr);
  return "";
}

void test_valid() {
  for (uint32_t version : {3u, 2u}) {
    std::string vn = "v" + std::to_string(version);
    check("valid " + vn + " file with every metadata type round-trips through parse", [&] {
      Builder g = full_builder(version);
      auto bytes = g.build();
      auto f = GgufFile::parse(bytes.data(), bytes.size(), "full.gguf");
      return check_full(*f, g, version);
    });
  }

  check("valid file round-trips through open (mmap)", [&] {
    Builder g = full_builder(3);
    auto bytes = g.build();
    std::string path = "/tmp/test_gguf_" + std::to_string(getpid()) + ".gguf";
    FILE* fp = std::fopen(path.c_str(), "wb");
    REQ(fp);
    REQ(std::fwrite(bytes.data(), 1, bytes.size(), fp) == bytes.size());
    std::fclose(fp);
    std::string r;
    try {
      auto f = GgufFile::open(path);
      REQ(f->path == path);
      REQ(f->size() == bytes.size());
      r = check_full(*f, g, 3);
    } catch (...) {
      unlink(path.c_str());
      throw;
    }
    unlink(path.c_str());
    return r;
  });

  check("custom general.alignment 64 is honoured", [&] {
    Builder g;
    g.alignment = 64;
    g.kv("general.alignment", scalar<uint32_t>(T_U32, 64));
    g.tensor("a", {3}, 0, 12).tensor("b", {5}, 0, 20);
    auto bytes = g.build();
    auto f = GgufFile::parse(bytes.data(), bytes.size(), "a64.gguf");
    REQ(f->alignment == 64);
    REQ(f->data_offset % 64 == 0);
    REQ(f->tensors[1].offset == f->data_offset + 64);
    return std::string();
  });

  check("file with no tensors and no metadata parses", [&] {
    Builder g;
    auto bytes = g.build();
    REQ(bytes.size() == 24);
    auto f = GgufFile::parse(bytes.data(), bytes.size(), "empty.gguf");
    REQ(f->kv.empty() && f->tensors.empty());
    return std::string();
  });

  check("tensors stored out of order, with gaps, parse", [&] {
    Builder g;
    g.tensor("a", {8}, 0, 32).tensor("b", {8}, 0, 32);
    g.tensors[0].auto_offset = false;
    g.tensors[0].offset = 96;
    g.tensors[1].auto_offset = false;
    g.tensors[1].offset = 0;
    auto bytes = g.build();
    auto f = GgufFile::parse(bytes.data(), bytes.size(), "order.gguf");
    REQ(f->tensor("a")->offset == f->data_offset + 96);
    REQ(f->tensor("b")->offset == f->data_offset);
    return std::string();
  });

  // getter errors on a valid file
  Builder g = full_builder(3);
  auto bytes = g.build();
  auto f = GgufFile::parse(bytes.data(), bytes.size(), "full.gguf");
  const GgufFile& F = *f;
  expect_error("get_u64 on a missing key", [&] { F.get_u64("no.such.key"); }, {"full.gguf", "'no.such.key'", "missing"});
  expect_error("get_f64 on a missing key", [&] { F.get_f64("no.such.key"); }, {"missing"});
  expect_error("get_str on a missing key", [&] { F.get_str("no.such.key"); }, {"missing"});
  expect_error("get_str_arr on a missing key", [&] { F.get_str_arr("no.such.key"); }, {"missing"});
  expect_error("get_u64 on a string", [&] { F.get_u64("t.str"); }, {"'t.str'", "has type string"});
  expect_error("get_u64 with default on a string", [&] { F.get_u64("t.str", 1); }, {"has type string"});
  expect_error("get_u64 on a negative integer", [&] { F.get_u64("t.i32"); }, {"'t.i32'", "negative"});
  expect_error("get_u64 on a float", [&] { F.get_u64("t.f32"); }, {"has type f32"});
  expect_error("get_f64 on a string", [&] { F.get_f64("t.str"); }, {"has type string"});
  expect_error("get_f64 on a bool", [&] { F.get_f64("t.bool"); }, {"has type bool"});
  expect_error("get_str on an integer", [&] { F.get_str("t.u32"); }, {"has type u32", "expected string"});
  expect_error("get_str with default on an array", [&] { F.get_str("a.str", "x"); }, {"has type array of string"});
  expect_error("get_str_arr on an int array", [&] { F.get_str_arr("a.i32"); }, {"has type array of i32"});
  expect_error("get_int_arr on a float array", [&] { F.get_int_arr("a.f32"); }, {"has type array of f32"});
  expect_error("get_int_arr on a string array", [&] { F.get_int_arr("a.str"); }, {"array of string"});
  expect_error("get_int_arr on a scalar", [&] { F.get_int_arr("t.i32"); }, {"has type i32"});
  expect_error("get_int_arr on u64 values above INT64_MAX", [&] { F.get_int_arr("a.u64big"); }, {"does not fit"});
}

// ---------------------------------------------------------------- corrupt files

Builder small_builder() {
  Builder g;
  g.kv("general.architecture", vstr("llama")).kv("k.u32", scalar<uint32_t>(T_U32, 5));
  g.tensor("blk.0.attn_q.weight", {4, 2}, 0, 32).tensor("blk.0.attn_k.weight", {32}, 8, 34);
  return g;
}

std::vector<uint8_t> truncated(std::vector<uint8_t> b, size_t n) {
  b.resize(n);
  return b;
}

void test_corrupt() {
  Builder g = small_builder();
  const auto good = g.build();
  check("the base file for corruption tests is valid", [&] {
    auto f = GgufFile::parse(good.data(), good.size(), "good.gguf");
    REQ(f->tensors.size() == 2);
    return std::string();
  });

  // magic, version, endianness
  {
    auto b = good;
    b[3] = 'X';
    expect_parse_error("bad magic", b, {"bad magic 'GGUX'"});
    expect_parse_error("not a GGUF file at all", {'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd'},
                       {"bad magic 'hell'"});
  }
  for (uint32_t v : {0u, 1u, 4u, 99u}) {
    auto b = good;
    patch<uint32_t>(b, 4, v);
    expect_parse_error("unsupported version " + std::to_string(v), b,
                       {"unsupported GGUF version " + std::to_string(v)});
  }
  {
    auto b = good;
    patch<uint32_t>(b, 4, 0x03000000u);  // version 3 written big-endian
    expect_parse_error("big-endian file", b, {"big-endian"});
  }

  // truncation at every stage
  expect_parse_error("empty input", {}, {"truncated file: header"});
  expect_parse_error("truncated magic", truncated(good, 3), {"truncated file: header"});
  expect_parse_error("truncated header (in version)", truncated(good, 6), {"truncated file: header"});
  expect_parse_error("truncated header (in tensor count)", truncated(good, 12), {"truncated file: header"});
  expect_parse_error("truncated header (in kv count)", truncated(good, g.header_end - 1), {"truncated file: header"});
  {
    // metadata only (no tensors), so the up-front count bounds pass and the reads themselves truncate
    Builder k;
    k.kv("general.architecture", vstr("llama")).kv("k.u32", scalar<uint32_t>(T_U32, 5));
    auto kb = k.build();
    Builder k1;
    k1.kv("general.architecture", vstr("llama"));
    auto k1b = k1.build();
    expect_parse_error("truncated kv (in first key)", truncated(k1b, k1.header_end + 14),
                       {"truncated file: metadata kv 0: key length 20 exceeds the 6 bytes remaining"});
    expect_parse_error("truncated kv (in second value)", truncated(kb, k.kv_ends[1] - 2),
                       {"truncated file: metadata kv 1 ('k.u32') ends past end of file (size"});
    expect_parse_error("truncated kv (in value type)", truncated(kb, k.kv_ends[0] - 15),
                       {"truncated file: metadata kv 0 ('general.architecture') ends past end of file"});
    expect_parse_error("truncated kv (string value)", truncated(kb, k.kv_ends[0] - 2),
                       {"truncated file: metadata kv 0 ('general.architecture')", "string length 5"});
  }
  {
    Builder k;
    k.tensor("blk.0.attn_q.weight", {4, 2}, 0, 32);
    auto kb = k.build();
    expect_parse_error("truncated tensor info 0 (in dims)", truncated(kb, k.kv_end + 33),
                       {"truncated file: tensor info 0 ('blk.0.attn_q.weight') ends past end of file"});
    expect_parse_error("truncated tensor info 0 (in name)", truncated(kb, k.kv_end + 12),
                       {"truncated file: tensor count 1 is impossible"});
  }
  expect_parse_error("truncated tensor info 1", truncated(good, g.info_ends[1] - 3),
                     {"truncated file: tensor info 1 ('blk.0.attn_k.weight') ends past end of file (size"});
  expect_parse_error("truncated tensor data", truncated(good, good.size() - 1),
                     {"truncated file: tensor 'blk.0.attn_k.weight' data", "ends past end of file"});
  check("base file's tensor infos end unaligned", [&] { REQ(g.info_end % 32 != 0); return std::string(); });
  expect_parse_error("truncated before the data section", truncated(good, g.info_end),
                     {"truncated file: tensor data section starts at"});

  // tensor placement
  {
    Builder h = small_builder();
    h.tensors[1].auto_offset = false;
    h.tensors[1].offset = 1ull << 26;
    expect_parse_error("tensor offset past end", h.build(), {"tensor 'blk.0.attn_k.weight' offset 67108864", "past end of file"});
  }
  {
    Builder h = small_builder();
    h.tensors[1].auto_offset = false;
    h.tensors[1].offset = ~0ull - 31;  // aligned, absolute offset overflows
    expect_parse_error("tensor offset that overflows", h.build(), {"past end of file"});
  }
  {
    Builder h = small_builder();
    h.tensors[1].auto_offset = false;
    h.tensors[1].offset = 36;
    expect_parse_error("misaligned offset", h.build(), {"tensor 'blk.0.attn_k.weight' has misaligned offset 36"});
  }
  {
    Builder h = small_builder();
    h.tensors[1].auto_offset = false;
    h.tensors[1].offset = 0;
    h.tensors[0].auto_offset = false;
    h.tensors[0].offset = 0;
    expect_parse_error("overlapping tensor data", h.build(), {"overlap"});
  }

  // tensor shape and type
  {
    Builder h = small_builder();
    h.tensors[0].ne = {1ull << 32, 1ull << 32};
    expect_parse_error("dims whose product overflows", h.build(), {"tensor 'blk.0.attn_q.weight'", "overflows"});
    h.tensors[0].ne = {1ull << 31, 1ull << 31, 1ull << 2};
    expect_parse_error("dims whose product overflows (3 dims)", h.build(), {"overflows"});
    h.tensors[0].ne = {1ull << 32, (1ull << 32) - 1};
    h.tensors[0].type = 8;  // Q8_0: element count 2^64-2^32 fits, byte count (x 34/32) would not
    expect_parse_error("byte size overflows", h.build(), {"overflows"});
  }
  {
    Builder h = small_builder();
    h.tensors[0].ne = {1ull << 40};
    expect_parse_error("huge tensor past end of file", h.build(), {"truncated file: tensor 'blk.0.attn_q.weight' data"});
  }
  {
    Builder h = small_builder();
    h.tensors[1].ne = {33};
    expect_parse_error("ne[0] not a multiple of the block size", h.build(),
                       {"tensor 'blk.0.attn_k.weight'", "ne[0] = 33", "not a multiple of the block size 32"});
    h.tensors[1].ne = {16, 2};
    expect_parse_error("ne[0] smaller than the block size", h.build(), {"not a multiple of the block size"});
  }
  {
    Builder h = small_builder();
    h.tensors[0].type = 99;
    expect_parse_error("unknown tensor type", h.build(), {"tensor 'blk.0.attn_q.weight' has unknown type 99"});
    h.tensors[0].type = 0x80000000u;
    expect_parse_error("unknown tensor type (huge)", h.build(), {"has unknown type 2147483648"});
    h.tensors[0].type = 15;
    h.tensors[0].ne = {256};
    expect_parse_error("q8_K tensor in a file", h.build(), {"q8_K", "not allowed"});
  }
  {
    Builder h = small_builder();
    h.tensors[0].ne = {1, 1, 1, 1, 1};
    expect_parse_error("five dimensions", h.build(), {"tensor 'blk.0.attn_q.weight' has 5 dimensions"});
    h.tensors[0].ne = {};
    expect_parse_error("zero dimensions", h.build(), {"has 0 dimensions"});
    h.tensors[0].ne = {4, 0};
    expect_parse_error("a zero dimension", h.build(), {"invalid dimension 1 = 0"});
    h.tensors[0].ne = {1ull << 63};
    expect_parse_error("a dimension above INT64_MAX", h.build(), {"invalid dimension 0"});
  }
  {
    Builder h = small_builder();
    auto b = h.build();
    patch<uint32_t>(b, g.kv_end + 8 + h.tensors[0].name.size(), 0xffffffffu);
    expect_parse_error("n_dims 2^32-1", b, {"4294967295 dimensions"});
  }
  {
    Builder h = small_builder();
    h.tensors[1].name = h.tensors[0].name;
    expect_parse_error("duplicate tensor name", h.build(), {"duplicate tensor name 'blk.0.attn_q.weight'"});
    h.tensors[1].name = "";
    expect_parse_error("empty tensor name", h.build(), {"empty name"});
  }

  // absurd counts
  {
    Builder h;
    h.kv("big.array", Val{T_ARR, {}});
    h.kvs[0].second.payload.u32(T_U8).u64(1ull << 62);
    expect_parse_error("array count 2^62", h.build(), {"'big.array'", "array count 4611686018427387904"});
    h.kvs[0].second.payload = Bytes();
    h.kvs[0].second.payload.u32(T_STR).u64(1ull << 62);
    expect_parse_error("array count 2^62 of strings", h.build(), {"array count 4611686018427387904"});
    h.kvs[0].second.payload = Bytes();
    h.kvs[0].second.payload.u32(T_ARR).u64(1ull << 62);
    expect_parse_error("array count 2^62 of arrays", h.build(), {"array count 4611686018427387904"});
    h.kvs[0].second.payload = Bytes();
    h.kvs[0].second.payload.u32(T_U64).u64(3).u64(1).u64(2);  // third element missing
    expect_parse_error("array one element short", h.build(), {"truncated file: metadata kv 0 ('big.array')"});
  }
  {
    Builder h;
    h.kv("big.string", Val{T_STR, {}});
    h.kvs[0].second.payload.u64(1ull << 62).u64(0);
    expect_parse_error("string length 2^62", h.build(), {"'big.string'", "string length 4611686018427387904"});
    Builder k;
    k.kv("x", vstr("y"));
    auto b = k.build();
    patch<uint64_t>(b, k.header_end, 1ull << 62);
    expect_parse_error("key length 2^62", b, {"metadata kv 0", "key length 4611686018427387904"});
  }
  {
    Builder h;
    h.kv("a", scalar<uint32_t>(T_U32, 1));
    auto b = h.build();
    patch<uint64_t>(b, 8, 1ull << 40);
    expect_parse_error("tensor count 2^40", b, {"tensor count 1099511627776"});
    patch<uint64_t>(b, 8, ~0ull);
    expect_parse_error("tensor count 2^64-1", b, {"tensor count 18446744073709551615"});
    patch<uint64_t>(b, 8, 0);
    patch<uint64_t>(b, 16, 1ull << 40);
    expect_parse_error("kv count 2^40", b, {"metadata kv count 1099511627776"});
  }
  {
    // one tensor declared, plenty of bytes after the header but they are all metadata
    Builder h;
    h.kv("pad", vstr(std::string(200, 'x')));
    auto b = h.build();
    patch<uint64_t>(b, 8, 2);
    expect_parse_error("tensor count checked again after the metadata", b, {"tensor count 2", "after the metadata"});
  }
  {
    // deeply nested arrays
    Val v = varr_num<uint8_t>(T_U8, {1});
    for (int d = 0; d < 40; d++) v = varr(T_ARR, {v});
    Builder h;
    h.kv("deep", v);
    expect_parse_error("arrays nested 40 deep", h.build(), {"'deep'", "nested deeper"});
  }

  // metadata validity
  {
    Builder h;
    h.kv("dup", scalar<uint32_t>(T_U32, 1)).kv("other", vstr("x")).kv("dup", vstr("again"));
    expect_parse_error("duplicate key", h.build(), {"duplicate metadata key 'dup' (entries 0 and 2)"});
  }
  {
    Builder h;
    h.kv("", scalar<uint32_t>(T_U32, 1));
    expect_parse_error("empty key", h.build(), {"empty key"});
  }
  {
    Builder h;
    h.kv("x", Val{13, {}});
    h.kvs[0].second.payload.u32(0);
    expect_parse_error("invalid value type", h.build(), {"metadata kv 0 ('x')", "invalid value type 13"});
    h.kvs[0].second = Val{T_ARR, {}};
    h.kvs[0].second.payload.u32(77).u64(0);
    expect_parse_error("invalid array element type", h.build(), {"invalid array element type 77"});
  }
  for (uint32_t a : {0u, 3u, 48u}) {
    Builder h = small_builder();
    h.kv("general.alignment", scalar<uint32_t>(T_U32, a));
    expect_parse_error("bad alignment " + std::to_string(a), h.build(),
                       {"bad alignment", "general.alignment = " + std::to_string(a), "power of two"});
  }
  {
    Builder h = small_builder();
    h.kv("general.alignment", scalar<uint64_t>(T_U64, 32));
    expect_parse_error("alignment of the wrong type", h.build(), {"general.alignment has type u64, expected u32"});
  }
  {
    Builder h;
    h.tensor("w", {8}, 0, 32);
    h.kv("general.alignment", scalar<uint32_t>(T_U32, 1u << 31));
    expect_parse_error("alignment 2^31 puts data past end", h.build(), {"truncated file: tensor data section"});
  }
  {
    Builder h = small_builder();
    h.tensors[0].name = std::string("bad\x01name\n", 9);
    h.tensors[0].type = 99;
    expect_parse_error("control characters in names are escaped", h.build(), {"'bad\\x01name\\x0a'"});
  }
}

void test_open_errors() {
  expect_error("open a missing file", [] { GgufFile::open("/nonexistent/dir/model.gguf"); },
               {"/nonexistent/dir/model.gguf", "cannot open", "No such file"});
  expect_error("open a directory", [] { GgufFile::open("/tmp"); }, {"/tmp: ", "directory"});
  std::string fifo = "/tmp/test_gguf_fifo_" + std::to_string(getpid());
  if (mkfifo(fifo.c_str(), 0600) == 0) {
    expect_error("open a FIFO (must not block)", [&] { GgufFile::open(fifo); }, {fifo, "not a regular file"});
    unlink(fifo.c_str());
  }
  std::string path = "/tmp/test_gguf_empty_" + std::to_string(getpid()) + ".gguf";
  FILE* fp = std::fopen(path.c_str(), "wb");
  if (fp) std::fclose(fp);
  expect_error("open an empty file", [&] { GgufFile::open(path); }, {path, "empty"});
  unlink(path.c_str());
  path = "/tmp/test_gguf_trunc_" + std::to_string(getpid()) + ".gguf";
  fp = std::fopen(path.c_str(), "wb");
  Builder g = small_builder();
  auto b = g.build();
  if (fp) {
    std::fwrite(b.data(), 1, b.size() - 5, fp);
    std::fclose(fp);
  }
  expect_error("open a truncated file", [&] { GgufFile::open(path); }, {path + ": truncated file"});
  unlink(path.c_str());
}

// ---------------------------------------------------------------- seeds for the fuzzer

int write_seeds(const std::string& dir) {
  mkdir(dir.c_str(), 0755);
  std::vector<std::pair<std::string, std::vector<uint8_t>>> seeds;
  seeds.push_back({"full_v3.gguf", full_builder(3).build()});
  seeds.push_back({"full_v2.gguf", full_builder(2).build()});
  seeds.push_back({"small.gguf", small_builder().build()});
  seeds.push_back({"empty.gguf", Builder().build()});
  {
    Builder h;
    h.alignment = 64;
    h.kv("general.alignment", scalar<uint32_t>(T_U32, 64))
        .kv("tokenizer.ggml.tokens", varr(T_STR, {vstr("a"), vstr("b"), vstr("ab")}))
        .kv("tokenizer.ggml.merges", varr(T_STR, {vstr("a b")}))
        .kv("tokenizer.ggml.token_type", varr_num<int32_t>(T_I32, {1, 1, 3}));
    h.tensor("output_norm.weight", {16}, 0, 64).tensor("output.weight", {32, 3}, 8, 3 * 34);
    seeds.push_back({"align64.gguf", h.build()});
  }
  for (auto& s : seeds) {
    std::string p = dir + "/" + s.first;
    FILE* fp = std::fopen(p.c_str(), "wb");
    if (!fp || std::fwrite(s.second.data(), 1, s.second.size(), fp) != s.second.size()) {
      std::fprintf(stderr, "cannot write %s\n", p.c_str());
      if (fp) std::fclose(fp);
      return 1;
    }
    std::fclose(fp);
  }
  std::printf("wrote %zu seeds to %s\n", seeds.size(), dir.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--write-seeds") return write_seeds(argv[2]);
  if (argc != 1) {
    std::fprintf(stderr, "usage: %s [--write-seeds DIR]\n", argv[0]);
    return 2;
  }
  test_valid();
  test_corrupt();
  test_open_errors();
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
