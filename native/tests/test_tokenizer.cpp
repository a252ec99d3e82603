// test_tokenizer.cpp — hand-computed checks of the Llama 3 tokenizer (pre-tokenizer split,
// BPE merge order, ignore_merges, byte fallback, special-token partitioning, decoding) on a tiny
// vocabulary built with Tokenizer::from_vocab. Optional: LLAMAKV_TEST_VOCAB_JSON=<a Hugging Face
// tokenizer.json of Llama 3> adds golden cases on the real vocabulary.
// Prints one line per case and ends with "N passed, N failed"; exit status 1 on any failure.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer.h"

using lkv::Tokenizer;

static int g_pass = 0, g_fail = 0;

static std::string show(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '\n') o += "\\n";
    else if (c == '\r') o += "\\r";
    else if (c == '\t') o += "\\t";
    else if (c == '"' || c == '\\') { o += '\\'; o += (char)c; }
    else if (c < 0x20 || c == 0x7f) { char b[8]; std::snprintf(b, sizeof b, "\\x%02x", c); o += b; }
    else o += (char)c;
  }
  return o + "\"";
}
static std::string show(const std::vector<std::string>& v) {
  std::string o = "[";
  for (size_t i = 0; i < v.size(); i++) o += (i ? ", " : "") + show(v[i]);
  return o + "]";
}
static std::string show(int32_t v) { return std::to_string(v); }
static std::string show(const std::vector<int32_t>& v) {
  std::string o = "[";
  for (size_t i = 0; i < v.size(); i++) o += (i ? "," : "") + std::to_string(v[i]);
  return o + "]";
}

template <class T>
static void check(const std::string& name, const T& got, const T& want) {
  if (got == want) {
    g_pass++;
    std::printf("PASS %s\n", name.c_str());
  } else {
    g_fail++;
    std::printf("FAIL %s\n  got  %s\n  want %s\n", name.c_str(), show(got).c_str(), show(want).c_str());
  }
}
static void check_true(const std::string& name, bool ok, const std::string& detail = "") {
  if (ok) {
    g_pass++;
    std::printf("PASS %s\n", name.c_str());
  } else {
    g_fail++;
    std::printf("FAIL %s %s\n", name.c_str(), detail.c_str());
  }
}
static void check_throws(const std::string& name, const std::function<void()>& f) {
  try {
    f();
  } catch (const lkv::Error& e) {
    check_true(name + " (" + e.what() + ")", true);
    return;
  } catch (...) {
    check_true(name, false, "threw something other than lkv::Error");
    return;
  }
  check_true(name, false, "did not throw");
}

// ---- tiny vocabulary --------------------------------------------------------------------------

// GPT-2 byte-level character of a byte (written out independently of the implementation).
static std::string byte_char(int b) {
  static std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    int n = 0;
    for (int i = 0; i < 256; i++) {
      bool keep = (i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174 && i <= 255);
      unsigned cp = keep ? (unsigned)i : 256u + (unsigned)n++;
      std::string s;
      if (cp < 0x80) s.push_back((char)cp);
      else { s.push_back((char)(0xC0 | (cp >> 6))); s.push_back((char)(0x80 | (cp & 0x3F))); }
      t[i] = s;
    }
    return t;
  }();
  return table[b];
}

// ids 0..255: the byte-level character of byte i (so a byte's token id equals its value)
enum {
  T_HE = 256, T_LL, T_HELL, T_HELLO, T_SP_W, T_OR, T_SP_WOR, T_LD, T_SP_WORLD,
  T_BOS, T_EOT, T_TOOL, T_END, T_END_BANG, T_AB, T_BC, T_AA, T_UNUSED, T_COUNT
};

static std::unique_ptr<Tokenizer> tiny() {
  std::vector<std::string> toks;
  std::vector<int32_t> types;
  for (int b = 0; b < 256; b++) { toks.push_back(byte_char(b)); types.push_back(1); }
  auto add = [&](const std::string& s, int type) { toks.push_back(s); types.push_back(type); };
  add("he", 1); add("ll", 1); add("hell", 1); add("hello", 1);
  add("\xC4\xA0w", 1);            // "Ġw"
  add("or", 1);
  add("\xC4\xA0wor", 1);
  add("ld", 1);
  add("\xC4\xA0world", 1);
  add("<|begin_of_text|>", 3);
  add("<|eot_id|>", 3);
  add("<tool>", 4);               // user-defined: partitioned even without parse_special
  add("<|end|>", 3);
  add("<|end|>!", 3);             // longer special token containing a shorter one
  add("ab", 1); add("bc", 1); add("aa", 1);
  add("<unused0>", 5);
  std::vector<std::string> merges = {
      "h e", "l l", "he ll", "hell o", "\xC4\xA0 w", "o r", "\xC4\xA0w or", "l d", "\xC4\xA0wor ld",
      "b c",   // ranks before "a b": "abc" -> a + bc
      "a b",
      "a a",
      "x y",   // merge whose result is not a token -> byte fallback
      "\xC3\x83 \xC2\xA9",  // "Ã ©" (the bytes of "é"), result "Ã©" not a token
  };
  return Tokenizer::from_vocab(toks, types, merges, T_BOS, T_EOT, -1, true);
}

static std::vector<int32_t> bytes_of(const std::string& s) {
  std::vector<int32_t> v;
  for (unsigned char c : s) v.push_back(c);
  return v;
}
static std::string decode(const Tokenizer& t, const std::vector<int32_t>& ids, bool special = true) {
  std::string s;
  for (int32_t id : ids) s += t.token_bytes(id, special);
  return s;
}

// ---- split cases: one per regex branch --------------------------------------------------------

static void split_cases() {
  using V = std::vector<std::string>;
  auto sp = [](const char* name, const std::string& in, const V& want) {
    check(std::string("split ") + name, Tokenizer::split_llama3(in), want);
  };
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
  sp("contractions", "I'm here's they'd we've you're she'll it't", V{"I", "'m", " here", "'s", " they", "'d", " we", "'ve", " you", "'re", " she", "'ll", " it", "'t"});
  sp("contractions upper case", "I'M YOU'RE WE'Ve THEY'LL HE'D", V{"I", "'M", " YOU", "'RE", " WE", "'Ve", " THEY", "'LL", " HE", "'D"});
  sp("apostrophe + other letters", "'x 'S's 'rex", V{"'x", " '", "S", "'s", " '", "rex"});
  sp("lone apostrophes", "'1 ''", V{"'", "1", " ''"});
  // [^\r\n\p{L}\p{N}]?\p{L}+
  sp("letters with one leading non-letter", "(hello) _x \tword", V{"(hello", ")", " _", "x", " ", "\tword"});
  sp("newline is not a letter prefix", "a\nb\r\nc", V{"a", "\n", "b", "\r\n", "c"});
  sp("digit is not a letter prefix", "1a a1", V{"1", "a", " a", "1"});
  sp("accented letters", "naïve café Zürich", V{"naïve", " café", " Zürich"});
  sp("combining mark splits letters", "e\xCC\x81t", V{"e", "\xCC\x81t"});
  // \p{N}{1,3}
  sp("digit runs split in threes", "1234567 12 1e100", V{"123", "456", "7", " ", "12", " ", "1", "e", "100"});
  sp("non-ASCII digits", "\xD9\xA3\xD9\xA4\xD9\xA5\xD9\xA6 \xC2\xBD", V{"\xD9\xA3\xD9\xA4\xD9\xA5", "\xD9\xA6", " ", "\xC2\xBD"});
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  sp("punctuation runs with trailing newlines", "x...\n\ny !?\r\n", V{"x", "...\n\n", "y", " !?\r\n"});
  sp("punctuation then space", "a+= b", V{"a", "+=", " b"});
  sp("lone space at end", "a ", V{"a", " "});
  // \s*[\r\n]+
  sp("whitespace ending in newlines", "a  \n\n  b", V{"a", "  \n\n", " ", " b"});
  sp("crlf runs", "x\r\n\r\ny", V{"x", "\r\n\r\n", "y"});
  // \s+(?!\S) and \s+
  sp("whitespace run before a non-space", "a    b", V{"a", "   ", " b"});
  sp("whitespace run at end", "a   ", V{"a", "   "});
  sp("tabs and spaces", "if\t\t  x", V{"if", "\t\t ", " x"});
  sp("space before digits", "x  42", V{"x", " ", " ", "42"});
  sp("unicode whitespace", "a\xC2\xA0\xC2\xA0" "b\xE3\x80\x80" "c", V{"a", "\xC2\xA0", "\xC2\xA0" "b", "\xE3\x80\x80" "c"});
  // scripts
  sp("CJK", "日本語のテキスト，中文。", V{"日本語のテキスト", "，中文", "。"});
  sp("Arabic", "مرحبا بالعالم", V{"مرحبا", " بالعالم"});
  sp("emoji with skin tone and ZWJ", "hi 👍🏽 👨‍👩‍👧!", V{"hi", " 👍🏽", " 👨‍👩‍👧!"});
  // invalid UTF-8: each bad byte becomes U+FFFD (EF BF BD)
  sp("invalid utf-8", std::string("a\xff" "b\xc3", 4), V{"a", "\xEF\xBF\xBD" "b", "\xEF\xBF\xBD"});
  sp("empty", "", V{});
}

// ---- BPE and special tokens on the tiny vocabulary --------------------------------------------

static void bpe_cases() {
  auto t = tiny();
  const Tokenizer& T = *t;
  using I = std::vector<int32_t>;
  auto enc = [&](const std::string& s, bool bos = false, bool special = true) { return T.encode(s, bos, special); };

  check("whole-word tokens (ignore_merges)", enc("hello world"), I{T_HELLO, T_SP_WORLD});
  check("merges run by rank, leftmost first", enc("hellohe"), I{T_HELLO, T_HE});
  check("partial merges", enc(" worl"), I{T_SP_WOR, 'l'});
  check("lower rank wins over position", enc("abc"), I{'a', T_BC});
  check("equal ranks: leftmost first", enc("aaa"), I{T_AA, 'a'});
  check("no merges: byte tokens", enc("hi"), I{'h', 'i'});
  check("merge result missing: byte fallback", enc("xy"), I{'x', 'y'});
  // llama.cpp's fallback looks up single bytes of the byte-level string; "Ã©" has none -> dropped
  check("merge result missing, non-ASCII: dropped like llama.cpp", enc("é"), I{});
  check("non-ASCII without merges: byte-level chars", enc("ü"), I{0xC3, 0xBC});
  check("space + letters: Ġ", enc(" w"), I{T_SP_W});
  check("add_bos", enc("hello", true), I{T_BOS, T_HELLO});
  check("empty with bos", enc("", true), I{T_BOS});
  check("empty", enc(""), I{});

  // special tokens
  check("parse_special: control tokens", enc("<|begin_of_text|>hello<|eot_id|>"), I{T_BOS, T_HELLO, T_EOT});
  check("parse_special=false: control tokens are text", enc("<|eot_id|>hi", false, false),
        bytes_of("<|eot_id|>hi"));
  check("parse_special=false: user-defined still partitioned", enc("a<tool>b", false, false), I{'a', T_TOOL, 'b'});
  check("parse_special: user-defined", enc("a<tool>b"), I{'a', T_TOOL, 'b'});
  check("longest special token first", enc("<|end|>!<|end|>"), I{T_END_BANG, T_END});
  check("adjacent specials and split text", enc("he<|eot_id|><|eot_id|>llo"), I{T_HE, T_EOT, T_EOT, T_LL, 'o'});
  check("partial special text is plain", enc("<|eot_id"), bytes_of("<|eot_id"));
  check("bos + special text", enc("<|begin_of_text|>", true), I{T_BOS, T_BOS});
  check("pre-tokenizer restarts after a special token", enc("x<|eot_id|> world"), I{'x', T_EOT, T_SP_WORLD});

  // decoding
  check("token_bytes undoes byte-level mapping", T.token_bytes(T_SP_WORLD, false), std::string(" world"));
  check("token_bytes of a byte char", T.token_bytes(0x0A, false), std::string("\n"));
  check("token_bytes control special=true", T.token_bytes(T_EOT, true), std::string("<|eot_id|>"));
  check("token_bytes control special=false", T.token_bytes(T_EOT, false), std::string());
  check("token_bytes user-defined", T.token_bytes(T_TOOL, false), std::string("<tool>"));
  check("token_bytes unused", T.token_bytes(T_UNUSED, true), std::string());
  check("token_text", T.token_text(T_SP_W), std::string("\xC4\xA0w"));
  for (const std::string& s : {std::string("hello world, 日本語 👨‍👩‍👧 naïve\r\n\t  x = 1234567;\n\n"),
                               std::string("<|begin_of_text|>hi<|eot_id|><tool>"), std::string("   "),
                               std::string("a\x00" "b", 3), std::string("\x7f\x01 \xC2\x85")}) {
    check("roundtrip " + show(s), decode(T, enc(s)), s);
    check("roundtrip (no special) " + show(s), decode(T, enc(s, false, false)), s);
  }
  check("invalid utf-8 decodes to U+FFFD", decode(T, enc(std::string("a\xff" "b", 3))), std::string("a\xEF\xBF\xBD" "b"));
  {
    // every byte value, alone: no crash, some output
    bool ok = true;
    for (int b = 0; b < 256; b++) ok = ok && !enc(std::string(1, (char)b)).empty();
    check_true("all single bytes encode", ok);
  }

  // metadata
  check("n_vocab", T.n_vocab(), (int32_t)T_COUNT);
  check("bos", T.bos(), (int32_t)T_BOS);
  check("eot found by name", T.eot(), (int32_t)T_EOT);
  check_true("is_eog eot", T.is_eog(T_EOT));
  check_true("is_eog <|end|> by name", T.is_eog(T_END));
  check_true("not eog", !T.is_eog(T_BOS) && !T.is_eog(T_HELLO));
  check_true("is_control", T.is_control(T_BOS) && !T.is_control(T_TOOL) && !T.is_control(T_HE));
  check_true("add_bos_default", T.add_bos_default());
  check_throws("token_bytes out of range", [&] { T.token_bytes(T_COUNT, true); });

  // malformed vocabularies
  check_throws("duplicate tokens", [] { Tokenizer::from_vocab({"a", "b", "a"}, {}, {}, -1, -1, -1, true); });
  check_throws("bos out of range", [] { Tokenizer::from_vocab({"a", "b"}, {}, {}, 5, -1, -1, true); });
  check_throws("too few token types", [] { Tokenizer::from_vocab({"a", "b"}, {1}, {}, -1, -1, -1, true); });
  check_throws("empty vocabulary", [] { Tokenizer::from_vocab({}, {}, {}, -1, -1, -1, true); });
}

// ---- optional: golden cases on the real Llama 3 vocabulary (HF tokenizer.json) ---------------

namespace json {
struct Value {
  enum Kind { Null, Bool, Num, Str, Arr, Obj } kind = Null;
  double num = 0;
  bool b = false;
  std::string str;
  std::vector<Value> arr;
  std::vector<std::pair<std::string, Value>> obj;
  const Value* get(const std::string& k) const {
    for (auto& kv : obj) if (kv.first == k) return &kv.second;
    return nullptr;
  }
};
struct Parser {
  const std::string& s;
  size_t i = 0;
  explicit Parser(const std::string& src) : s(src) {}
  void ws() { while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) i++; }
  [[noreturn]] void fail(const char* what) { throw std::runtime_error(std::string("json: ") + what + " at " + std::to_string(i)); }
  static void put_utf8(unsigned cp, std::string& o) {
    if (cp < 0x80) o.push_back((char)cp);
    else if (cp < 0x800) { o.push_back((char)(0xC0 | (cp >> 6))); o.push_back((char)(0x80 | (cp & 0x3F))); }
    else if (cp < 0x10000) { o.push_back((char)(0xE0 | (cp >> 12))); o.push_back((char)(0x80 | ((cp >> 6) & 0x3F))); o.push_back((char)(0x80 | (cp & 0x3F))); }
    else { o.push_back((char)(0xF0 | (cp >> 18))); o.push_back((char)(0x80 | ((cp >> 12) & 0x3F))); o.push_back((char)(0x80 | ((cp >> 6) & 0x3F))); o.push_back((char)(0x80 | (cp & 0x3F))); }
  }
  unsigned hex4() {
    if (i + 4 > s.size()) fail("short \\u");
    unsigned v = (unsigned)std::stoul(s.substr(i, 4), nullptr, 16);
    i += 4;
    return v;
  }
  std::string string() {
    if (s[i] != '"') fail("expected string");
    i++;
    std::string o;
    while (i < s.size() && s[i] != '"') {
      char c = s[i++];
      if (c != '\\') { o.push_back(c); continue; }
      if (i >= s.size()) fail("bad escape");
      char e = s[i++];
      switch (e) {
        case 'n': o += '\n'; break; case 't': o += '\t'; break; case 'r': o += '\r'; break;
        case 'b': o += '\b'; break; case 'f': o += '\f'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && i + 6 <= s.size() && s[i] == '\\' && s[i + 1] == 'u') {
            i += 2;
            unsigned lo = hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(cp, o);
          break;
        }
        default: o += e;
      }
    }
    if (i >= s.size()) fail("unterminated string");
    i++;
    return o;
  }
  Value value() {
    ws();
    if (i >= s.size()) fail("unexpected end");
    Value v;
    char c = s[i];
    if (c == '{') {
      v.kind = Value::Obj; i++; ws();
      if (s[i] == '}') { i++; return v; }
      for (;;) {
        ws(); std::string k = string(); ws();
        if (s[i] != ':') fail("expected :");
        i++;
        v.obj.emplace_back(std::move(k), value()); ws();
        if (s[i] == ',') { i++; continue; }
        if (s[i] == '}') { i++; return v; }
        fail("expected , or }");
      }
    }
    if (c == '[') {
      v.kind = Value::Arr; i++; ws();
      if (s[i] == ']') { i++; return v; }
      for (;;) {
        v.arr.push_back(value()); ws();
        if (s[i] == ',') { i++; continue; }
        if (s[i] == ']') { i++; return v; }
        fail("expected , or ]");
      }
    }
    if (c == '"') { v.kind = Value::Str; v.str = string(); return v; }
    if (s.compare(i, 4, "true") == 0) { v.kind = Value::Bool; v.b = true; i += 4; return v; }
    if (s.compare(i, 5, "false") == 0) { v.kind = Value::Bool; i += 5; return v; }
    if (s.compare(i, 4, "null") == 0) { i += 4; return v; }
    size_t end = i;
    while (end < s.size() && std::strchr("+-0123456789.eE", s[end])) end++;
    if (end == i) fail("unexpected character");
    v.kind = Value::Num; v.num = std::stod(s.substr(i, end - i)); i = end;
    return v;
  }
};
}  // namespace json

static void golden_cases(const char* path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) { check_true(std::string("open ") + path, false); return; }
  std::stringstream ss;
  ss << f.rdbuf();
  std::string src = ss.str();
  json::Value root;
  try {
    json::Parser p(src);
    root = p.value();
  } catch (const std::exception& e) {
    check_true("parse tokenizer.json", false, e.what());
    return;
  }
  const json::Value* model = root.get("model");
  const json::Value* vocab = model ? model->get("vocab") : nullptr;
  const json::Value* jmerges = model ? model->get("merges") : nullptr;
  const json::Value* added = root.get("added_tokens");
  if (!vocab || !jmerges || !added) { check_true("tokenizer.json layout", false); return; }
  size_t n = vocab->obj.size();
  for (auto& a : added->arr) n = std::max(n, (size_t)a.get("id")->num + 1);
  std::vector<std::string> toks(n);
  std::vector<int32_t> types(n, 1);
  for (auto& kv : vocab->obj) toks[(size_t)kv.second.num] = kv.first;
  for (auto& a : added->arr) {
    size_t id = (size_t)a.get("id")->num;
    toks[id] = a.get("content")->str;
    const json::Value* sp = a.get("special");
    types[id] = (sp && sp->b) ? 3 : 4;
  }
  std::vector<std::string> merges;
  for (auto& m : jmerges->arr) {
    if (m.kind == json::Value::Str) merges.push_back(m.str);
    else if (m.kind == json::Value::Arr && m.arr.size() == 2) merges.push_back(m.arr[0].str + " " + m.arr[1].str);
  }
  auto bos_it = std::find(toks.begin(), toks.end(), std::string("<|begin_of_text|>"));
  int32_t bos = bos_it == toks.end() ? -1 : (int32_t)(bos_it - toks.begin());
  std::unique_ptr<Tokenizer> t;
  try {
    t = Tokenizer::from_vocab(toks, types, merges, bos, -1, -1, true);
  } catch (const std::exception& e) {
    check_true("load real vocabulary", false, e.what());
    return;
  }
  using I = std::vector<int32_t>;
  // ids from Hugging Face's Llama 3 tokenizer (identical to llama.cpp's for these inputs)
  const std::vector<std::pair<std::string, I>> cases = {
      {"Hello, world!", I{9906, 11, 1917, 0}},
      {"I'M here, you'RE there.", I{40, 28703, 1618, 11, 499, 95253, 1070, 13}},
      {"1234567 \xD9\xA3\xD9\xA4\xD9\xA5\xD9\xA6", I{4513, 10961, 22, 220, 117413, 124079, 124043, 149, 99}},
      {"  indented\n\n\tcode();\r\n", I{220, 1280, 16243, 271, 44443, 1679}},
      {"日本語のテキスト 👨‍👩‍👧 café", I{102433, 102158, 16144, 57933, 62903, 71634, 62904, 101, 102470, 9468, 239, 102, 102470, 9468, 239, 100, 53050}},
      {"<|begin_of_text|>hi<|eot_id|>", I{128000, 6151, 128009}},
  };
  for (auto& c : cases) {
    check("golden " + show(c.first), t->encode(c.first, false, true), c.second);
    check("golden roundtrip " + show(c.first), decode(*t, t->encode(c.first, false, true)), c.first);
  }
  check("golden eot", t->eot(), (int32_t)128009);
}

int main() {
  try {
    split_cases();
    bpe_cases();
    if (const char* p = std::getenv("LLAMAKV_TEST_VOCAB_JSON")) golden_cases(p);
  } catch (const std::exception& e) {
    g_fail++;
    std::printf("FAIL uncaught exception: %s\n", e.what());
  }
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
