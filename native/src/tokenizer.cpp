// tokenizer.cpp — Llama 3 byte-level BPE with llama.cpp-identical token ids.
//
// Pipeline (as llama.cpp's llama_vocab::tokenize for a "gpt2" vocabulary with the llama3
// pre-tokenizer):
//   1. special-token partition: control / user-defined / unknown tokens are found in the raw
//      text, longest first, each one over all remaining text fragments (with parse_special=false
//      only user-defined tokens are partitioned);
//   2. each text fragment is decoded to code points (each invalid UTF-8 byte -> U+FFFD) and split
//      by the llama3 pre-tokenizer regex, implemented by hand over code points;
//   3. each piece is re-encoded to UTF-8 and mapped byte -> GPT-2 byte-level character;
//   4. a piece that is itself a token is emitted as is ("ignore_merges"); otherwise BPE merges by
//      rank (lowest rank first, leftmost on ties); a final symbol that is not a token falls back
//      to its single bytes (llama.cpp looks each byte of the byte-level string up as a one-byte
//      token and drops those that are missing).
#include "tokenizer.h"

#include <algorithm>
#include <cstring>
#include <queue>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "unicode_tables.h"

namespace lkv {

namespace {

// llama.cpp token attributes (bit flags) and GGUF token types.
enum : uint32_t {
  ATTR_UNDEFINED = 0,
  ATTR_UNKNOWN = 1u << 0,
  ATTR_UNUSED = 1u << 1,
  ATTR_NORMAL = 1u << 2,
  ATTR_CONTROL = 1u << 3,
  ATTR_USER_DEFINED = 1u << 4,
  ATTR_BYTE = 1u << 5,
};

uint32_t attr_from_type(int32_t type) {
  switch (type) {
    case 1: return ATTR_NORMAL;
    case 2: return ATTR_UNKNOWN;
    case 3: return ATTR_CONTROL;
    case 4: return ATTR_USER_DEFINED;
    case 5: return ATTR_UNUSED;
    case 6: return ATTR_BYTE;
    default: return ATTR_UNDEFINED;
  }
}

// ---- code points ----------------------------------------------------------------------------

constexpr uint32_t kReplacement = 0xFFFD;

// Decodes like llama.cpp's unicode_cpts_from_utf8: lead byte decides the length, continuation
// bytes must be 10xxxxxx, no overlong/surrogate checks; a bad sequence yields U+FFFD and skips
// one byte. Values above U+10FFFF (which llama.cpp cannot re-encode) also become U+FFFD.
void utf8_to_cpts(const char* s, size_t n, std::vector<uint32_t>& out) {
  out.clear();
  out.reserve(n);
  const unsigned char* p = reinterpret_cast<const unsigned char*>(s);
  size_t i = 0;
  auto cont = [&](size_t k) { return (p[k] & 0xC0) == 0x80; };
  while (i < n) {
    unsigned c = p[i];
    if (c < 0x80) {
      out.push_back(c);
      i += 1;
    } else if ((c & 0x40) == 0) {
      out.push_back(kReplacement);
      i += 1;
    } else if ((c & 0x20) == 0) {
      if (i + 1 < n && cont(i + 1)) {
        out.push_back(((c & 0x1F) << 6) | (p[i + 1] & 0x3F));
        i += 2;
      } else {
        out.push_back(kReplacement);
        i += 1;
      }
    } else if ((c & 0x10) == 0) {
      if (i + 2 < n && cont(i + 1) && cont(i + 2)) {
        out.push_back(((c & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F));
        i += 3;
      } else {
        out.push_back(kReplacement);
        i += 1;
      }
    } else if ((c & 0x08) == 0) {
      if (i + 3 < n && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
        uint32_t cp = ((c & 0x07) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6) | (p[i + 3] & 0x3F);
        out.push_back(cp <= 0x10FFFF ? cp : kReplacement);
        i += 4;
      } else {
        out.push_back(kReplacement);
        i += 1;
      }
    } else {
      out.push_back(kReplacement);
      i += 1;
    }
  }
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp <= 0x7F) {
    out.push_back((char)cp);
  } else if (cp <= 0x7FF) {
    out.push_back((char)(0xC0 | (cp >> 6)));
    out.push_back((char)(0x80 | (cp & 0x3F)));
  } else if (cp <= 0xFFFF) {
    out.push_back((char)(0xE0 | (cp >> 12)));
    out.push_back((char)(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back((char)(0x80 | (cp & 0x3F)));
  } else {
    out.push_back((char)(0xF0 | (cp >> 18)));
    out.push_back((char)(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back((char)(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back((char)(0x80 | (cp & 0x3F)));
  }
}

// Class of a code point: CLS_LETTER, CLS_NUMBER, CLS_WHITESPACE or 0.
uint8_t cpt_class(uint32_t cp) {
  using namespace unicode_tables;
  if (cp < 0x80) {
    // ASCII fast path (same answers as the table)
    if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return CLS_LETTER;
    if (cp >= '0' && cp <= '9') return CLS_NUMBER;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CLS_WHITESPACE;
    return 0;
  }
  size_t lo = 0, hi = kNumRanges;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (kRanges[mid].last < cp) lo = mid + 1;
    else hi = mid;
  }
  if (lo < kNumRanges && kRanges[lo].first <= cp) return kRanges[lo].cls;
  return 0;
}

// The llama3 pre-tokenizer over code points [0, n): appends piece lengths (in code points).
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
// Follows llama.cpp's hand-written matcher (unicode_regex_split_custom_llama3) exactly,
// including its reading of the alternatives' priority.
void split_llama3_cpts(const std::vector<uint32_t>& cp, std::vector<size_t>& lens) {
  using namespace unicode_tables;
  const size_t n = cp.size();
  std::vector<uint8_t> cls(n);
  for (size_t i = 0; i < n; i++) cls[i] = cpt_class(cp[i]);
  auto is_l = [&](size_t i) { return i < n && cls[i] == CLS_LETTER; };
  auto is_n = [&](size_t i) { return i < n && cls[i] == CLS_NUMBER; };
  auto is_ws = [&](size_t i) { return i < n && cls[i] == CLS_WHITESPACE; };
  auto is_other = [&](size_t i) { return i < n && cls[i] == 0; };  // in range, not \s \p{L} \p{N}
  auto lower = [](uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; };
  auto is_crlf = [&](size_t i) { return i < n && (cp[i] == '\r' || cp[i] == '\n'); };

  size_t pos = 0;
  auto emit = [&](size_t end) {
    if (end > pos) lens.push_back(end - pos);
    pos = end;
  };
  while (pos < n) {
    const uint32_t c = cp[pos];
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (c == '\'' && pos + 1 < n) {
      uint32_t c1 = lower(cp[pos + 1]);
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        emit(pos + 2);
        continue;
      }
      if (pos + 2 < n) {
        uint32_t c2 = lower(cp[pos + 2]);
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
          emit(pos + 3);
          continue;
        }
      }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (!(c == '\r' || c == '\n' || is_n(pos)) && (is_l(pos) || is_l(pos + 1))) {
      size_t e = pos + 1;
      while (is_l(e)) e++;
      emit(e);
      continue;
    }
    // \p{N}{1,3}
    if (is_n(pos)) {
      size_t e = pos;
      while (is_n(e) && e - pos < 3) e++;
      emit(e);
      continue;
    }
    // ' '?[^\s\p{L}\p{N}]+[\r\n]*   (a lone ' ' at the very end also lands here, as in llama.cpp)
    {
      const bool sp = (c == ' ');
      const size_t q = sp ? pos + 1 : pos;
      if (is_other(q) || (sp && q >= n)) {
        size_t e = q;
        while (is_other(e)) e++;
        while (is_crlf(e)) e++;
        emit(e);
        continue;
      }
    }
    // whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+
    size_t nws = 0, last_nl_end = 0;
    while (is_ws(pos + nws)) {
      if (cp[pos + nws] == '\r' || cp[pos + nws] == '\n') last_nl_end = pos + nws + 1;
      nws++;
    }
    if (last_nl_end > 0) {
      emit(last_nl_end);
      continue;
    }
    if (nws > 1 && pos + nws < n) {
      emit(pos + nws - 1);
      continue;
    }
    if (nws > 0) {
      emit(pos + nws);
      continue;
    }
    emit(pos + 1);  // unreachable for in-range code points; kept as llama.cpp's "no match"
  }
}

// GPT-2 byte-level mapping: printable bytes map to themselves, the other 68 to U+0100.. in order.
struct ByteMap {
  std::string enc[256];                          // byte -> UTF-8 of its character
  std::unordered_map<uint32_t, uint8_t> dec;     // character -> byte
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; b++) {
      bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      uint32_t cp = keep ? (uint32_t)b : (uint32_t)(256 + n++);
      append_utf8(cp, enc[b]);
      dec[cp] = (uint8_t)b;
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

size_t utf8_len(unsigned char lead) {
  static const size_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return lookup[lead >> 4];
}

// ---- the tokenizer --------------------------------------------------------------------------

struct PairHash {
  size_t operator()(const std::string& s) const noexcept { return std::hash<std::string_view>()(s); }
};

class Llama3Tokenizer final : public Tokenizer {
 public:
  Llama3Tokenizer(std::vector<std::string> tokens, std::vector<int32_t> types, std::vector<std::string> merges,
                  int32_t bos, int32_t eos, int32_t eot, bool add_bos);

  std::vector<int32_t> encode(const std::string& text, bool add_bos, bool parse_special) const override;
  std::string token_bytes(int32_t id, bool special) const override;
  std::string token_text(int32_t id) const override {
    check_id(id);
    return tokens_[(size_t)id];
  }
  int32_t n_vocab() const override { return (int32_t)tokens_.size(); }
  int32_t bos() const override { return bos_; }
  int32_t eos() const override { return eos_; }
  int32_t eot() const override { return eot_; }
  bool add_bos_default() const override { return add_bos_; }
  bool is_eog(int32_t id) const override { return eog_.count(id) != 0; }
  bool is_control(int32_t id) const override {
    return id >= 0 && (size_t)id < attr_.size() && (attr_[(size_t)id] & ATTR_CONTROL);
  }

 private:
  void check_id(int32_t id) const {
    LKV_CHECK(id >= 0 && (size_t)id < tokens_.size(), "token id %d out of range (vocabulary has %zu tokens)", id,
              tokens_.size());
  }
  int32_t find_token(std::string_view s) const {
    auto it = token_to_id_.find(std::string(s));
    return it == token_to_id_.end() ? -1 : it->second;
  }
  int find_rank(std::string& key, std::string_view a, std::string_view b) const;
  void tokenize_fragment(const char* s, size_t n, std::vector<int32_t>& out) const;
  void bpe_word(const std::string& word, std::vector<int32_t>& out) const;

  std::vector<std::string> tokens_;
  std::vector<uint32_t> attr_;
  std::unordered_map<std::string, int32_t> token_to_id_;
  std::unordered_map<std::string, int32_t, PairHash> ranks_;  // key: u32 len(a) + a + b
  std::vector<int32_t> special_;  // partition order: longest text first
  std::unordered_set<int32_t> eog_;
  std::string special_first_bytes_;  // first byte of every special token (quick reject)
  int32_t bos_ = -1, eos_ = -1, eot_ = -1;
  bool add_bos_ = true;
};

std::string pair_key(std::string_view a, std::string_view b) {
  std::string k;
  k.reserve(4 + a.size() + b.size());
  uint32_t la = (uint32_t)a.size();
  k.append(reinterpret_cast<const char*>(&la), 4);
  k.append(a);
  k.append(b);
  return k;
}

Llama3Tokenizer::Llama3Tokenizer(std::vector<std::string> tokens, std::vector<int32_t> types,
                                 std::vector<std::string> merges, int32_t bos, int32_t eos, int32_t eot,
                                 bool add_bos)
    : tokens_(std::move(tokens)), bos_(bos), eos_(eos), eot_(eot), add_bos_(add_bos) {
  const size_t n = tokens_.size();
  LKV_CHECK(n > 0, "tokenizer: empty vocabulary");
  LKV_CHECK(n <= (size_t)INT32_MAX, "tokenizer: vocabulary too large (%zu tokens)", n);
  LKV_CHECK(types.empty() || types.size() >= n, "tokenizer: %zu token types for %zu tokens", types.size(), n);
  attr_.resize(n);
  token_to_id_.reserve(n * 2);
  for (size_t i = 0; i < n; i++) {
    if (tokens_[i].empty()) tokens_[i] = "[EMPTY_" + std::to_string(i) + "]";  // as llama.cpp
    attr_[i] = types.empty() ? ATTR_NORMAL : attr_from_type(types[i]);
    auto ins = token_to_id_.emplace(tokens_[i], (int32_t)i);
    LKV_CHECK(ins.second, "tokenizer: duplicate token text at ids %d and %zu", ins.first->second, i);
  }
  auto check_special = [&](int32_t id, const char* what) {
    LKV_CHECK(id >= -1 && id < (int64_t)n, "tokenizer: %s token id %d out of range (%zu tokens)", what, id, n);
  };
  check_special(bos_, "bos");
  check_special(eos_, "eos");
  check_special(eot_, "eot");

  ranks_.reserve(merges.size() * 2);
  for (size_t i = 0; i < merges.size(); i++) {
    const std::string& m = merges[i];
    size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
    std::string_view a, b;
    if (sp != std::string::npos) {
      a = std::string_view(m).substr(0, sp);
      b = std::string_view(m).substr(sp + 1);
    }
    ranks_.emplace(pair_key(a, b), (int32_t)std::min(i, (size_t)INT32_MAX));  // first occurrence wins
  }

  // End-of-generation tokens and eot as llama.cpp finds them by name; such tokens are control.
  static const char* const kEotNames[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                          "<|endoftext|>", "<|end_of_text|>", "<EOT>"};
  static const char* const kEogNames[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                          "<|endoftext|>", "<|eom_id|>", "<EOT>", "<|end_of_text|>"};
  if (eot_ < 0) {
    for (const char* name : kEotNames) {
      int32_t id = find_token(name);
      if (id >= 0) {
        eot_ = id;
        break;
      }
    }
  }
  for (const char* name : kEogNames) {
    int32_t id = find_token(name);
    if (id >= 0) {
      eog_.insert(id);
      attr_[(size_t)id] |= ATTR_CONTROL;
    }
  }
  if (eot_ >= 0) attr_[(size_t)eot_] |= ATTR_CONTROL;
  if (eos_ >= 0) eog_.insert(eos_);
  if (eot_ >= 0) eog_.insert(eot_);

  for (size_t i = 0; i < n; i++)
    if (attr_[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) special_.push_back((int32_t)i);
  std::stable_sort(special_.begin(), special_.end(), [&](int32_t a, int32_t b) {
    return tokens_[(size_t)a].size() > tokens_[(size_t)b].size();
  });
  for (int32_t id : special_) {
    char c = tokens_[(size_t)id][0];
    if (special_first_bytes_.find(c) == std::string::npos) special_first_bytes_.push_back(c);
  }
}

int Llama3Tokenizer::find_rank(std::string& key, std::string_view a, std::string_view b) const {
  key.clear();
  uint32_t la = (uint32_t)a.size();
  key.append(reinterpret_cast<const char*>(&la), 4);
  key.append(a);
  key.append(b);
  auto it = ranks_.find(key);
  return it == ranks_.end() ? -1 : it->second;
}

struct Symbol {
  uint32_t start;
  uint32_t len;  // 0 once merged into its left neighbour
  int32_t prev;
  int32_t next;
};

struct Bigram {
  int32_t rank;
  int32_t left;
  int32_t right;
  uint32_t size;  // len(left) + len(right) when queued; a different size means stale
};

struct BigramOrder {  // priority_queue top = lowest rank, then leftmost
  bool operator()(const Bigram& x, const Bigram& y) const {
    return x.rank > y.rank || (x.rank == y.rank && x.left > y.left);
  }
};

void Llama3Tokenizer::bpe_word(const std::string& word, std::vector<int32_t>& out) const {
  // a piece that is a whole token is taken as is (llama.cpp's ignore_merges for llama3)
  {
    int32_t id = find_token(word);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  for (size_t off = 0; off < word.size();) {
    size_t len = std::min(word.size() - off, utf8_len((unsigned char)word[off]));
    int32_t idx = (int32_t)sym.size();
    sym.push_back(Symbol{(uint32_t)off, (uint32_t)len, idx - 1, off + len == word.size() ? -1 : idx + 1});
    off += len;
  }
  std::string key;
  std::vector<Bigram> heap_storage;
  heap_storage.reserve(sym.size());
  std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> heap(BigramOrder(), std::move(heap_storage));
  auto view = [&](int32_t i) { return std::string_view(word).substr(sym[(size_t)i].start, sym[(size_t)i].len); };
  auto add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    int rank = find_rank(key, view(l), view(r));
    if (rank < 0) return;
    heap.push(Bigram{rank, l, r, sym[(size_t)l].len + sym[(size_t)r].len});
  };
  for (int32_t i = 1; i < (int32_t)sym.size(); i++) add(i - 1, i);
  while (!heap.empty()) {
    Bigram bg = heap.top();
    heap.pop();
    Symbol& L = sym[(size_t)bg.left];
    Symbol& R = sym[(size_t)bg.right];
    if (L.len == 0 || R.len == 0 || L.next != bg.right || L.len + R.len != bg.size) continue;  // stale
    L.len += R.len;
    R.len = 0;
    L.next = R.next;
    if (R.next >= 0) sym[(size_t)R.next].prev = bg.left;
    add(L.prev, bg.left);
    add(bg.left, L.next);
  }
  for (int32_t i = 0; i >= 0 && i < (int32_t)sym.size(); i = sym[(size_t)i].next) {
    if (sym[(size_t)i].len == 0) continue;
    std::string_view s = view(i);
    int32_t id = find_token(s);
    if (id >= 0) {
      out.push_back(id);
    } else {
      // llama.cpp's fallback: each byte of the byte-level string as a one-byte token, if any
      for (char ch : s) {
        int32_t bid = find_token(std::string_view(&ch, 1));
        if (bid >= 0) out.push_back(bid);
      }
    }
  }
}

void Llama3Tokenizer::tokenize_fragment(const char* s, size_t n, std::vector<int32_t>& out) const {
  std::vector<uint32_t> cps;
  utf8_to_cpts(s, n, cps);
  std::vector<size_t> lens;
  split_llama3_cpts(cps, lens);
  const ByteMap& bm = byte_map();
  std::string raw, word;
  size_t at = 0;
  for (size_t len : lens) {
    raw.clear();
    for (size_t k = 0; k < len; k++) append_utf8(cps[at + k], raw);
    at += len;
    word.clear();
    for (unsigned char b : raw) word += bm.enc[b];
    bpe_word(word, out);
  }
}

struct Fragment {
  int32_t token;  // -1: raw text [off, off+len)
  size_t off;
  size_t len;
};

std::vector<int32_t> Llama3Tokenizer::encode(const std::string& text, bool add_bos, bool parse_special) const {
  std::vector<int32_t> out;
  if (add_bos && bos_ >= 0) out.push_back(bos_);
  if (text.empty()) return out;

  std::vector<Fragment> frags{Fragment{-1, 0, text.size()}};
  if (text.find_first_of(special_first_bytes_) != std::string::npos) {
    std::vector<Fragment> next;
    for (int32_t id : special_) {
      if (!parse_special && (attr_[(size_t)id] & (ATTR_CONTROL | ATTR_UNKNOWN))) continue;
      const std::string& t = tokens_[(size_t)id];
      bool any = false;
      next.clear();
      for (const Fragment& f : frags) {
        if (f.token >= 0) {
          next.push_back(f);
          continue;
        }
        std::string_view hay(text.data(), f.off + f.len);
        size_t start = f.off;
        for (;;) {
          size_t m = hay.find(t, start);
          if (m == std::string_view::npos) break;
          any = true;
          if (m > start) next.push_back(Fragment{-1, start, m - start});
          next.push_back(Fragment{id, 0, 0});
          start = m + t.size();
        }
        if (start < f.off + f.len) next.push_back(Fragment{-1, start, f.off + f.len - start});
      }
      if (any) frags.swap(next);
    }
  }
  for (const Fragment& f : frags) {
    if (f.token >= 0) out.push_back(f.token);
    else tokenize_fragment(text.data() + f.off, f.len, out);
  }
  return out;
}

std::string Llama3Tokenizer::token_bytes(int32_t id, bool special) const {
  check_id(id);
  const uint32_t a = attr_[(size_t)id];
  const std::string& t = tokens_[(size_t)id];
  if (a & (ATTR_UNKNOWN | ATTR_CONTROL)) return special ? t : std::string();
  if (a & ATTR_USER_DEFINED) return t;
  if (a & ATTR_NORMAL) {
    // undo the byte-level mapping; characters outside it are reported as llama.cpp does
    const ByteMap& bm = byte_map();
    std::vector<uint32_t> cps;
    utf8_to_cpts(t.data(), t.size(), cps);
    std::string out;
    out.reserve(t.size());
    for (uint32_t cp : cps) {
      auto it = bm.dec.find(cp);
      if (it != bm.dec.end()) {
        out.push_back((char)it->second);
      } else {
        std::string u;
        append_utf8(cp, u);
        out += "[UNK_BYTE_0x";
        for (unsigned char c : u) out += strprintf("%02x", c);
        out += t + "]";
      }
    }
    return out;
  }
  if (a & ATTR_BYTE) {  // "<0xAB>" form
    unsigned v = 0;
    if (t.size() >= 5) v = (unsigned)std::strtoul(t.substr(3, 2).c_str(), nullptr, 16);
    return std::string(1, (char)v);
  }
  return std::string();  // unused / undefined
}

// ---- GGUF metadata helpers (read GgufFile::kv directly) ------------------------------------

const GgufValue* kv_find(const GgufFile& f, const char* key) {
  auto it = f.kv.find(key);
  return it == f.kv.end() ? nullptr : &it->second;
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

int32_t kv_token_id(const GgufFile& f, const char* key) {
  const GgufValue* v = kv_find(f, key);
  if (!v) return -1;
  LKV_CHECK(is_int_type(v->type), "%s: metadata key %s is not an integer", f.path.c_str(), key);
  int64_t x = (v->type == GgufType::U64) ? (v->u > (uint64_t)INT32_MAX ? (int64_t)INT32_MAX + 1 : (int64_t)v->u) : v->i;
  if (x < 0) return -1;  // negative id: none
  LKV_CHECK(x <= INT32_MAX, "%s: metadata key %s = %lld is not a token id", f.path.c_str(), key, (long long)x);
  return (int32_t)x;
}

}  // namespace

std::vector<std::string> Tokenizer::split_llama3(const std::string& text) {
  std::vector<uint32_t> cps;
  utf8_to_cpts(text.data(), text.size(), cps);
  std::vector<size_t> lens;
  split_llama3_cpts(cps, lens);
  std::vector<std::string> out;
  size_t at = 0;
  for (size_t len : lens) {
    std::string s;
    for (size_t k = 0; k < len; k++) append_utf8(cps[at + k], s);
    at += len;
    out.push_back(std::move(s));
  }
  return out;
}

std::unique_ptr<Tokenizer> Tokenizer::from_vocab(std::vector<std::string> tokens, std::vector<int32_t> types,
                                                 std::vector<std::string> merges, int32_t bos, int32_t eos,
                                                 int32_t eot, bool add_bos) {
  return std::make_unique<Llama3Tokenizer>(std::move(tokens), std::move(types), std::move(merges), bos, eos, eot,
                                           add_bos);
}

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GgufFile& f) {
  const char* p = f.path.c_str();
  const GgufValue* model = kv_find(f, "tokenizer.ggml.model");
  LKV_CHECK(model && model->type == GgufType::STRING, "%s: metadata key tokenizer.ggml.model missing", p);
  LKV_CHECK(model->s == "gpt2", "%s: unsupported tokenizer model \"%s\" (only Llama 3 byte-level BPE, \"gpt2\")", p,
            model->s.c_str());
  const GgufValue* pre = kv_find(f, "tokenizer.ggml.pre");
  LKV_CHECK(pre && pre->type == GgufType::STRING,
            "%s: metadata key tokenizer.ggml.pre missing (expected \"llama-bpe\")", p);
  LKV_CHECK(pre->s == "llama-bpe" || pre->s == "llama3" || pre->s == "llama-v3",
            "%s: unsupported pre-tokenizer \"%s\" (expected \"llama-bpe\")", p, pre->s.c_str());

  auto str_arr = [&](const char* key) -> const std::vector<std::string>& {
    const GgufValue* v = kv_find(f, key);
    LKV_CHECK(v, "%s: metadata key %s missing", p, key);
    LKV_CHECK(v->type == GgufType::ARRAY && v->elem == GgufType::STRING, "%s: metadata key %s is not a string array",
              p, key);
    return v->strs;
  };
  std::vector<std::string> tokens = str_arr("tokenizer.ggml.tokens");
  std::vector<std::string> merges = str_arr("tokenizer.ggml.merges");
  std::vector<int32_t> types;
  if (const GgufValue* v = kv_find(f, "tokenizer.ggml.token_type")) {
    LKV_CHECK(v->type == GgufType::ARRAY && is_int_type(v->elem), "%s: tokenizer.ggml.token_type is not an integer array",
              p);
    LKV_CHECK(v->ints.size() >= tokens.size(), "%s: tokenizer.ggml.token_type has %zu entries for %zu tokens", p,
              v->ints.size(), tokens.size());
    types.reserve(tokens.size());
    for (size_t i = 0; i < tokens.size(); i++) types.push_back((int32_t)v->ints[i]);
  }
  int32_t bos = kv_token_id(f, "tokenizer.ggml.bos_token_id");
  int32_t eos = kv_token_id(f, "tokenizer.ggml.eos_token_id");
  int32_t eot = kv_token_id(f, "tokenizer.ggml.eot_token_id");
  bool add_bos = true;
  if (const GgufValue* v = kv_find(f, "tokenizer.ggml.add_bos_token")) {
    LKV_CHECK(v->type == GgufType::BOOL || is_int_type(v->type), "%s: tokenizer.ggml.add_bos_token is not a bool", p);
    add_bos = (v->type == GgufType::U64) ? v->u != 0 : v->i != 0;
  }
  const size_t n = tokens.size();
  for (auto [id, what] : {std::pair<int32_t, const char*>{bos, "bos"}, {eos, "eos"}, {eot, "eot"}})
    LKV_CHECK(id < (int64_t)n, "%s: tokenizer.ggml.%s_token_id = %d is outside the vocabulary (%zu tokens)", p, what,
              id, n);
  try {
    return from_vocab(std::move(tokens), std::move(types), std::move(merges), bos, eos, eot, add_bos);
  } catch (const Error& e) {
    throw Error(std::string(p) + ": " + e.what());
  }
}

}  // namespace lkv
