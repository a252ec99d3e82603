// gguf.cpp — validating, memory-mapped reader for GGUF v2/v3 files.
//
// Layout (little-endian): "GGUF" | u32 version | u64 n_tensors | u64 n_kv | n_kv x (string key,
// u32 value type, value) | n_tensors x (string name, u32 n_dims, n_dims x u64 ne, u32 ggml type,
// u64 offset) | padding to `general.alignment` | tensor data. Strings are u64 length + bytes.
// Arrays are u32 element type + u64 count + elements (possibly arrays themselves).
//
// Everything read from the file is bounded by the bytes that remain before anything is allocated
// or indexed, so a corrupt or hostile file yields an lkv::Error, never a crash or a huge allocation.
#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <limits>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the GGUF reader assumes a little-endian host");

namespace lkv {

namespace {

constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 16;  // nested arrays deeper than this are rejected
// Smallest possible encodings, used to bound counts by the bytes remaining.
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;          // key length, 1-byte key, type, u8 value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // name length, n_dims, 1 dim, type, offset

const char* value_type_name(uint32_t t) {
  static const char* names[] = {"u8",  "i8",     "u16",   "i16", "u32", "i32", "f32",
                                "bool", "string", "array", "u64", "i64", "f64"};
  return t < sizeof(names) / sizeof(names[0]) ? names[t] : "invalid";
}

bool is_int_type(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16:
    case GgufType::U32: case GgufType::I32: case GgufType::U64: case GgufType::I64:
      return true;
    default:
      return false;
  }
}

bool is_unsigned_type(GgufType t) {
  return t == GgufType::U8 || t == GgufType::U16 || t == GgufType::U32 || t == GgufType::U64;
}

// Minimum encoded size of one value of type t (0 for an invalid type).
uint64_t min_value_bytes(uint32_t t) {
  switch ((GgufType)t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    case GgufType::STRING: return 8;
    case GgufType::ARRAY: return 4 + 8;
    default: return 0;
  }
}

// Printable, length-limited rendering of a name taken from the file, for error messages.
std::string quoted(const std::string& s) {
  std::string out = "'";
  size_t n = std::min<size_t>(s.size(), 120);
  for (size_t k = 0; k < n; k++) {
    unsigned char c = (unsigned char)s[k];
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += (char)c;
    } else if (c < 0x20 || c == 0x7f) {
      out += strprintf("\\x%02x", c);
    } else {
      out += (char)c;  // bytes >= 0x80 pass through (UTF-8, valid or not)
    }
  }
  if (s.size() > n) out += "...";
  out += "'";
  return out;
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }
bool add_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_add_overflow(a, b, out); }

int64_t saturating_i64(double v) {
  if (std::isnan(v)) return 0;
  if (v >= 9223372036854775807.0) return std::numeric_limits<int64_t>::max();
  if (v <= -9223372036854775808.0) return std::numeric_limits<int64_t>::min();
  return (int64_t)v;
}

// Bounds-checked cursor over the file. `where()` names the part being read for error messages.
class Reader {
 public:
  Reader(const uint8_t* p, size_t size, const std::string& label) : p_(p), size_(size), label_(label) {}

  enum class Part { HEADER, KV, TENSOR_INFO };
  void set_part(Part part, uint64_t index = 0, const std::string* name = nullptr) {
    part_ = part;
    index_ = index;
    name_ = name;
  }

  size_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  size_t size() const { return size_; }

  std::string where() const {
    switch (part_) {
      case Part::HEADER: return "header";
      case Part::KV:
        return name_ ? strprintf("metadata kv %llu (%s)", (unsigned long long)index_, quoted(*name_).c_str())
                     : strprintf("metadata kv %llu", (unsigned long long)index_);
      case Part::TENSOR_INFO:
        return name_ ? strprintf("tensor info %llu (%s)", (unsigned long long)index_, quoted(*name_).c_str())
                     : strprintf("tensor info %llu", (unsigned long long)index_);
    }
    return "?";
  }

  [[noreturn]] void fail(const std::string& msg) const { throw Error(label_ + ": " + msg); }

  [[noreturn]] void fail_truncated() const {
    fail(strprintf("truncated file: %s ends past end of file (size %zu)", where().c_str(), size_));
  }

  void need(uint64_t n) const {
    if (n > remaining()) fail_truncated();
  }

  template <class T>
  T rd() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string rd_str(const char* what) {
    uint64_t len = rd<uint64_t>();
    if (len > remaining())
      fail(strprintf("truncated file: %s: %s length %llu exceeds the %llu bytes remaining (size %zu)",
                     where().c_str(), what, (unsigned long long)len, (unsigned long long)remaining(), size_));
    std::string s((const char*)p_ + pos_, (size_t)len);
    pos_ += (size_t)len;
    return s;
  }

 private:
  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& label_;
  Part part_ = Part::HEADER;
  uint64_t index_ = 0;
  const std::string* name_ = nullptr;
};

void read_scalar(Reader& r, GgufType t, GgufValue& v) {
  v.type = t;
  switch (t) {
    case GgufType::U8: v.u = r.rd<uint8_t>(); v.i = (int64_t)v.u; v.f = (double)v.u; break;
    case GgufType::I8: v.i = r.rd<int8_t>(); v.u = (uint64_t)v.i; v.f = (double)v.i; break;
    case GgufType::U16: v.u = r.rd<uint16_t>(); v.i = (int64_t)v.u; v.f = (double)v.u; break;
    case GgufType::I16: v.i = r.rd<int16_t>(); v.u = (uint64_t)v.i; v.f = (double)v.i; break;
    case GgufType::U32: v.u = r.rd<uint32_t>(); v.i = (int64_t)v.u; v.f = (double)v.u; break;
    case GgufType::I32: v.i = r.rd<int32_t>(); v.u = (uint64_t)v.i; v.f = (double)v.i; break;
    case GgufType::U64: v.u = r.rd<uint64_t>(); v.i = (int64_t)v.u; v.f = (double)v.u; break;
    case GgufType::I64: v.i = r.rd<int64_t>(); v.u = (uint64_t)v.i; v.f = (double)v.i; break;
    case GgufType::F32: v.f = r.rd<float>(); break;
    case GgufType::F64: v.f = r.rd<double>(); break;
    case GgufType::BOOL: v.i = r.rd<uint8_t>() != 0; v.u = (uint64_t)v.i; v.f = (double)v.i; break;
    case GgufType::STRING: v.s = r.rd_str("string"); break;
    default: r.fail(strprintf("%s: invalid value type %u", r.where().c_str(), (unsigned)t));
  }
}

void read_value(Reader& r, uint32_t type, GgufValue& v, int depth);

void read_array(Reader& r, GgufValue& v, int depth) {
  if (depth >= kMaxArrayDepth)
    r.fail(strprintf("%s: arrays nested deeper than %d levels", r.where().c_str(), kMaxArrayDepth));
  v.type = GgufType::ARRAY;
  uint32_t et = r.rd<uint32_t>();
  uint64_t min_bytes = min_value_bytes(et);
  if (min_bytes == 0) r.fail(strprintf("%s: invalid array element type %u", r.where().c_str(), (unsigned)et));
  v.elem = (GgufType)et;
  uint64_t n = r.rd<uint64_t>();
  if (n > r.remaining() / min_bytes)
    r.fail(strprintf("truncated file: %s: array count %llu of %s exceeds what the %llu bytes remaining can hold (size %zu)",
                     r.where().c_str(), (unsigned long long)n, value_type_name(et),
                     (unsigned long long)r.remaining(), r.size()));
  v.count = n;
  GgufType t = v.elem;
  if (t == GgufType::STRING) {
    v.strs.reserve((size_t)n);
    for (uint64_t k = 0; k < n; k++) v.strs.push_back(r.rd_str("string"));
  } else if (t == GgufType::ARRAY) {
    v.arr.resize((size_t)n);
    for (uint64_t k = 0; k < n; k++) read_array(r, v.arr[(size_t)k], depth + 1);
  } else {
    // Numbers: every element in both ints and floats (floats saturate when converted to int).
    r.need(n * min_bytes);
    v.ints.resize((size_t)n);
    v.floats.resize((size_t)n);
    GgufValue tmp;
    for (uint64_t k = 0; k < n; k++) {
      read_scalar(r, t, tmp);
      if (t == GgufType::F32 || t == GgufType::F64) {
        v.floats[(size_t)k] = tmp.f;
        v.ints[(size_t)k] = saturating_i64(tmp.f);
      } else {
        v.floats[(size_t)k] = tmp.f;
        v.ints[(size_t)k] = tmp.i;
      }
    }
  }
}

void read_value(Reader& r, uint32_t type, GgufValue& v, int depth) {
  if (min_value_bytes(type) == 0) r.fail(strprintf("%s: invalid value type %u", r.where().c_str(), (unsigned)type));
  if ((GgufType)type == GgufType::ARRAY) {
    read_array(r, v, depth);
  } else {
    read_scalar(r, (GgufType)type, v);
  }
}

}  // namespace

GgufFile::~GgufFile() {
  if (mapping_) munmap(mapping_, mapping_size_);
}

std::unique_ptr<GgufFile> GgufFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // NONBLOCK: a FIFO must not hang us
  LKV_CHECK(fd >= 0, "%s: cannot open: %s", path.c_str(), std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw Error(strprintf("%s: cannot stat: %s", path.c_str(), std::strerror(e)));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": is a directory, not a GGUF file");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  if (st.st_size <= 0) {
    ::close(fd);
    throw Error(path + ": empty file (not a GGUF file)");
  }
  if ((uint64_t)st.st_size > (uint64_t)std::numeric_limits<size_t>::max()) {
    ::close(fd);
    throw Error(path + ": file too large to map");
  }
  size_t size = (size_t)st.st_size;
  void* m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
  int e = errno;
  ::close(fd);
  LKV_CHECK(m != MAP_FAILED, "%s: mmap of %zu bytes failed: %s", path.c_str(), size, std::strerror(e));

  std::unique_ptr<GgufFile> f(new GgufFile());
  f->mapping_ = m;  // owned from here on: unmapped by the destructor, also when parsing throws
  f->mapping_size_ = size;
  f->base_ = (const uint8_t*)m;
  f->size_ = size;
  f->path = path;
  f->parse_all();
  return f;
}

std::unique_ptr<GgufFile> GgufFile::parse(const uint8_t* data, size_t size, const std::string& label) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->base_ = size ? data : nullptr;
  f->size_ = data ? size : 0;
  f->path = label;
  f->parse_all();
  return f;
}

void GgufFile::parse_all() {
  Reader r(base_, size_, path);

  // ---- header
  if (size_ < 4) r.fail_truncated();
  if (std::memcmp(base_, "GGUF", 4) != 0) {
    std::string shown;
    for (int k = 0; k < 4; k++) {
      unsigned char c = base_[k];
      shown += (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    // A big-endian writer would still write the magic bytes in order; a reversed magic hints at
    // a byte-swapping writer.
    if (std::memcmp(base_, "FUGG", 4) == 0)
      r.fail("bad magic 'FUGG' (byte-swapped 'GGUF'): big-endian GGUF files are not supported");
    r.fail(strprintf("bad magic '%s' (bytes %02x %02x %02x %02x): not a GGUF file", shown.c_str(), base_[0], base_[1],
                     base_[2], base_[3]));
  }
  r.rd<uint32_t>();  // magic
  uint32_t ver = r.rd<uint32_t>();
  if (ver != 2 && ver != 3) {
    uint32_t swapped = __builtin_bswap32(ver);
    if (swapped == 2 || swapped == 3)
      r.fail(strprintf("GGUF version field is 0x%08x (%u byte-swapped): big-endian GGUF files are not supported",
                       ver, swapped));
    if (ver == 1) r.fail("unsupported GGUF version 1 (only versions 2 and 3 are supported)");
    r.fail(strprintf("unsupported GGUF version %u (only versions 2 and 3 are supported)", ver));
  }
  version = ver;
  uint64_t n_tensors = r.rd<uint64_t>();
  uint64_t n_kv = r.rd<uint64_t>();
  if (n_kv > r.remaining() / kMinKvBytes)
    r.fail(strprintf("truncated file: metadata kv count %llu is impossible: %llu bytes remain after the header and "
                     "each entry needs at least %llu (size %zu)",
                     (unsigned long long)n_kv, (unsigned long long)r.remaining(), (unsigned long long)kMinKvBytes,
                     size_));
  if (n_tensors > r.remaining() / kMinTensorInfoBytes)
    r.fail(strprintf("truncated file: tensor count %llu is impossible: %llu bytes remain after the header and "
                     "each tensor info needs at least %llu (size %zu)",
                     (unsigned long long)n_tensors, (unsigned long long)r.remaining(),
                     (unsigned long long)kMinTensorInfoBytes, size_));

  // ---- metadata
  std::map<std::string, uint64_t> kv_pos;  // key -> index, for duplicate reports
  for (uint64_t k = 0; k < n_kv; k++) {
    r.set_part(Reader::Part::KV, k);
    std::string key = r.rd_str("key");
    r.set_part(Reader::Part::KV, k, &key);
    if (key.empty()) r.fail(strprintf("metadata kv %llu has an empty key", (unsigned long long)k));
    auto dup = kv_pos.find(key);
    if (dup != kv_pos.end())
      r.fail(strprintf("duplicate metadata key %s (entries %llu and %llu)", quoted(key).c_str(),
                       (unsigned long long)dup->second, (unsigned long long)k));
    uint32_t type = r.rd<uint32_t>();
    GgufValue v;
    read_value(r, type, v, 0);
    kv_pos.emplace(key, k);
    kv.emplace(std::move(key), std::move(v));
  }

  // ---- alignment
  if (const GgufValue* a = find("general.alignment")) {
    LKV_CHECK(a->type == GgufType::U32, "%s: general.alignment has type %s, expected u32", path.c_str(),
              value_type_name((uint32_t)a->type));
    LKV_CHECK(a->u != 0 && (a->u & (a->u - 1)) == 0,
              "%s: bad alignment: general.alignment = %llu is not a nonzero power of two", path.c_str(),
              (unsigned long long)a->u);
    alignment = a->u;
  } else {
    alignment = 32;
  }

  // ---- tensor infos
  r.set_part(Reader::Part::HEADER);
  if (n_tensors > r.remaining() / kMinTensorInfoBytes)
    r.fail(strprintf("truncated file: tensor count %llu is impossible: %llu bytes remain after the metadata and "
                     "each tensor info needs at least %llu (size %zu)",
                     (unsigned long long)n_tensors, (unsigned long long)r.remaining(),
                     (unsigned long long)kMinTensorInfoBytes, size_));
  tensors.reserve((size_t)n_tensors);
  std::vector<uint64_t> rel_offsets;
  rel_offsets.reserve((size_t)n_tensors);
  for (uint64_t k = 0; k < n_tensors; k++) {
    r.set_part(Reader::Part::TENSOR_INFO, k);
    GgufTensor t;
    t.name = r.rd_str("name");
    r.set_part(Reader::Part::TENSOR_INFO, k, &t.name);
    const std::string qn = quoted(t.name);
    if (t.name.empty()) r.fail(strprintf("tensor info %llu has an empty name", (unsigned long long)k));
    auto dup = tensor_index_.find(t.name);
    if (dup != tensor_index_.end())
      r.fail(strprintf("duplicate tensor name %s (tensors %zu and %llu)", qn.c_str(), dup->second,
                       (unsigned long long)k));
    uint32_t n_dims = r.rd<uint32_t>();
    if (n_dims == 0 || n_dims > kMaxDims)
      r.fail(strprintf("tensor %s has %u dimensions (must be 1 to %u)", qn.c_str(), n_dims, kMaxDims));
    t.ne.resize(n_dims);
    for (uint32_t d = 0; d < n_dims; d++) t.ne[d] = r.rd<uint64_t>();
    t.type = r.rd<uint32_t>();
    uint64_t rel = r.rd<uint64_t>();

    // validate type
    if (t.type == (uint32_t)GgmlType::Q8_K)
      r.fail(strprintf("tensor %s has type q8_K (%u), which is not allowed in model files", qn.c_str(),
                       (unsigned)t.type));
    if (!ggml_type_known(t.type))
      r.fail(strprintf("tensor %s has unknown type %u", qn.c_str(), (unsigned)t.type));
    // validate shape
    std::string shape = "[";
    for (uint32_t d = 0; d < n_dims; d++)
      shape += strprintf("%s%llu", d ? ", " : "", (unsigned long long)t.ne[d]);
    shape += "]";
    uint64_t nel = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
      if (t.ne[d] == 0 || t.ne[d] > (uint64_t)std::numeric_limits<int64_t>::max())
        r.fail(strprintf("tensor %s has invalid dimension %u = %llu in shape %s", qn.c_str(), d,
                         (unsigned long long)t.ne[d], shape.c_str()));
      if (mul_overflows(nel, t.ne[d], &nel))
        r.fail(strprintf("tensor %s shape %s: element count overflows 64 bits", qn.c_str(), shape.c_str()));
    }
    uint32_t blk = ggml_block_size(t.type);
    uint32_t tsz = ggml_type_size(t.type);
    if (blk == 0 || tsz == 0) r.fail(strprintf("tensor %s has unknown type %u", qn.c_str(), (unsigned)t.type));
    if (t.ne[0] % blk != 0)
      r.fail(strprintf("tensor %s of type %s has ne[0] = %llu, not a multiple of the block size %u", qn.c_str(),
                       ggml_type_name(t.type), (unsigned long long)t.ne[0], blk));
    uint64_t nbytes = 0;
    if (mul_overflows(nel / blk, tsz, &nbytes))
      r.fail(strprintf("tensor %s shape %s: size in bytes overflows 64 bits", qn.c_str(), shape.c_str()));
    t.nelements = nel;
    t.nbytes = nbytes;
    if (rel % alignment != 0)
      r.fail(strprintf("tensor %s has misaligned offset %llu (not a multiple of the alignment %llu)", qn.c_str(),
                       (unsigned long long)rel, (unsigned long long)alignment));
    rel_offsets.push_back(rel);
    tensor_index_.emplace(t.name, tensors.size());
    tensors.push_back(std::move(t));
  }

  // ---- data section
  uint64_t end_of_infos = r.pos();
  if (n_tensors == 0) {
    data_offset = end_of_infos;
  } else {
    data_offset = (end_of_infos + alignment - 1) / alignment * alignment;  // alignment <= 2^31: no overflow
    LKV_CHECK(data_offset <= size_,
              "%s: truncated file: tensor data section starts at %llu, past end of file (size %zu)", path.c_str(),
              (unsigned long long)data_offset, size_);
  }
  for (size_t k = 0; k < tensors.size(); k++) {
    GgufTensor& t = tensors[k];
    const std::string qn = quoted(t.name);
    uint64_t abs = 0, end = 0;
    if (add_overflows(data_offset, rel_offsets[k], &abs))
      throw Error(strprintf("%s: tensor %s offset %llu is past end of file (size %zu; the absolute offset overflows)",
                            path.c_str(), qn.c_str(), (unsigned long long)rel_offsets[k], size_));
    if (abs >= size_)
      throw Error(strprintf("%s: tensor %s offset %llu (absolute %llu) is past end of file (size %zu)", path.c_str(),
                            qn.c_str(), (unsigned long long)rel_offsets[k], (unsigned long long)abs, size_));
    if (add_overflows(abs, t.nbytes, &end) || end > size_)
      throw Error(strprintf("%s: truncated file: tensor %s data [%llu, %llu + %llu bytes) ends past end of file (size %zu)",
                            path.c_str(), qn.c_str(), (unsigned long long)abs, (unsigned long long)abs,
                            (unsigned long long)t.nbytes, size_));
    t.offset = abs;
    t.data = base_ + abs;
  }
  // overlaps
  std::vector<size_t> order(tensors.size());
  for (size_t k = 0; k < order.size(); k++) order[k] = k;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return tensors[a].offset < tensors[b].offset; });
  for (size_t k = 1; k < order.size(); k++) {
    const GgufTensor& a = tensors[order[k - 1]];
    const GgufTensor& b = tensors[order[k]];
    if (a.offset + a.nbytes > b.offset)
      throw Error(strprintf("%s: tensor data overlaps: %s [%llu, %llu) and %s [%llu, %llu)", path.c_str(),
                            quoted(a.name).c_str(), (unsigned long long)a.offset,
                            (unsigned long long)(a.offset + a.nbytes), quoted(b.name).c_str(),
                            (unsigned long long)b.offset, (unsigned long long)(b.offset + b.nbytes)));
  }
}

// ---- lookups and typed getters

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv.find(key);
  return it == kv.end() ? nullptr : &it->second;
}

const GgufTensor* GgufFile::tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors[it->second];
}

namespace {

std::string type_desc(const GgufValue& v) {
  if (v.type == GgufType::ARRAY) return strprintf("array of %s", value_type_name((uint32_t)v.elem));
  return value_type_name((uint32_t)v.type);
}

[[noreturn]] void missing(const std::string& path, const std::string& key) {
  throw Error(strprintf("%s: metadata key %s missing", path.c_str(), quoted(key).c_str()));
}

[[noreturn]] void wrong_type(const std::string& path, const std::string& key, const GgufValue& v,
                             const char* expected) {
  throw Error(strprintf("%s: metadata key %s has type %s, expected %s", path.c_str(), quoted(key).c_str(),
                        type_desc(v).c_str(), expected));
}

uint64_t as_u64(const std::string& path, const std::string& key, const GgufValue& v) {
  if (!is_int_type(v.type)) wrong_type(path, key, v, "an unsigned integer");
  if (is_unsigned_type(v.type)) return v.u;
  if (v.i < 0)
    throw Error(strprintf("%s: metadata key %s = %lld is negative, expected an unsigned integer", path.c_str(),
                          quoted(key).c_str(), (long long)v.i));
  return (uint64_t)v.i;
}

double as_f64(const std::string& path, const std::string& key, const GgufValue& v) {
  if (v.type == GgufType::F32 || v.type == GgufType::F64 || is_int_type(v.type)) return v.f;
  wrong_type(path, key, v, "a number");
}

}  // namespace

uint64_t GgufFile::get_u64(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) missing(path, key);
  return as_u64(path, key, *v);
}

uint64_t GgufFile::get_u64(const std::string& key, uint64_t dflt) const {
  const GgufValue* v = find(key);
  return v ? as_u64(path, key, *v) : dflt;
}

double GgufFile::get_f64(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) missing(path, key);
  return as_f64(path, key, *v);
}

double GgufFile::get_f64(const std::string& key, double dflt) const {
  const GgufValue* v = find(key);
  return v ? as_f64(path, key, *v) : dflt;
}

std::string GgufFile::get_str(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) missing(path, key);
  if (v->type != GgufType::STRING) wrong_type(path, key, *v, "string");
  return v->s;
}

std::string GgufFile::get_str(const std::string& key, const std::string& dflt) const {
  const GgufValue* v = find(key);
  if (!v) return dflt;
  if (v->type != GgufType::STRING) wrong_type(path, key, *v, "string");
  return v->s;
}

const std::vector<std::string>& GgufFile::get_str_arr(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) missing(path, key);
  if (v->type != GgufType::ARRAY || v->elem != GgufType::STRING) wrong_type(path, key, *v, "array of string");
  return v->strs;
}

std::vector<int64_t> GgufFile::get_int_arr(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return {};
  if (v->type != GgufType::ARRAY || !(is_int_type(v->elem) || v->elem == GgufType::BOOL))
    wrong_type(path, key, *v, "array of integers");
  if (v->elem == GgufType::U64) {
    for (size_t k = 0; k < v->ints.size(); k++)
      LKV_CHECK(v->ints[k] >= 0, "%s: metadata key %s element %zu does not fit in int64", path.c_str(),
                quoted(key).c_str(), k);
  }
  return v->ints;
}

}  // namespace lkv
