// kv_spec.cpp — the compressed cache's spec strings: parsing (grammar in kv_compressed.h), the
// canonical form, and the named presets.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common.h"
#include "kv_compressed.h"

namespace lkv {

namespace {

// Presets. `off` is the dense f16 cache (make_kv_cache handles it); the rest are spec strings.
struct Preset {
  const char* name;
  const char* spec;
};
// What a preset is for (chosen with `llamakv tune` on the needle model at 4k/16k/32k and the
// 1B-shaped model at 2k; README has the table):
//   q8, q4, q2  plain quantization, every token kept;
//   balanced    2-bit keys and values (g128, one value group per head, Hadamard rotation) plus
//               question-agnostic eviction of 40% of the evictable tokens (all but the sinks
//               and the recent window), moved between heads by their measured locality (hl0.9:
//               a head whose probed queries put 90% of their attention on the sinks and the
//               recent window keeps only those, and its share goes to the other heads). 2-bit
//               alone stops near 6x (scales, the f16 residual and the slot index), so 8x needs
//               eviction. On the needle model (2026-12-01, seed-1 model, 32 needles): 32/32 at
//               4k, 16k (haystack seeds 1-3) and 32k, at 7.9x / 11.5x / 12.4x (head_dim 128);
//               one cut for every head (hl0) finds them too, at 7.1x / 9.5x / 10.1x: the
//               layer-0 previous-token head streams, and its share is what hl saves.
//   max         balanced's eviction and head budgets at 1 bit (keys: two levels per channel
//               and block of 128 tokens; values: two per row, after the rotation): on the needle
//               model (2026-12-01) 32/32 at 4k, 16k and 32k at 11.8x / 18.8x / 20.9x. The 2-bit
//               format keeping 40% with one cut for every head (max until 2026-12-01) reached
//               12.9x / 14.0x with 31/32: at 2 bits the retrieval head alone stops near 7x;
//               halving its bits loses no needle here. A trained model's keys are less
//               separable than this one's hand-made codes: run `llamakv tune` before relying on
//               1 bit.
const Preset kPresets[] = {
    {"q8", "k8,v8,g64,vg64,r64,norot,o0,b1.0,s4,w128,h2o,ow32,rw512"},
    {"q4", "k4,v4,g64,vg32,r128,rot,o0,b1.0,s4,w128,h2o,ow32,rw512"},
    {"q2", "k2,v2,g64,vg64,r128,rot,o0,b1.0,s4,w128,h2o,ow32,rw512"},
    {"balanced", "k2,v2,g128,vg0,r32,rot,o0,b0.6,s8,w256,hl0.9,agnostic,ow32,rw512"},
    {"max", "k1,v1,g128,vg0,r32,rot,o0,b0.6,s8,w256,hl0.9,agnostic,ow32,rw256"},
};

bool valid_bits(int b) { return b == 16 || b == 8 || b == 4 || b == 2 || b == 1; }
bool pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }

std::string fmt_frac(double f) {
  std::string s = strprintf("%.6g", f);
  if (s.find('.') == std::string::npos && s.find('e') == std::string::npos) s += ".0";
  return s;
}

class Parser {
 public:
  explicit Parser(const std::string& t) : text_(t) {}

  KvSpec run() {
    KvSpec s;
    bool first = true, have_kv = false, have_tiers = false;
    while (i_ < text_.size()) {
      if (text_[i_] == ',') { i_++; continue; }
      const size_t start = i_;
      std::string word;
      while (i_ < text_.size() && std::islower((unsigned char)text_[i_])) word += text_[i_++];
      // names with digits in them
      for (const char* w : {"h2o", "q8", "q4", "q2"})
        if (text_.compare(start, std::strlen(w), w) == 0) {
          i_ = start + std::strlen(w);
          word = w;
        }
      const std::string item = "'" + text_.substr(start, std::min(text_.size(), next_sep()) - start) + "'";
      if (word.empty()) fail(strprintf("expected a knob name at %s", item.c_str()));
      if (first && !kv_preset(word).empty()) {
        end_item(item);
        s = parse_kv_spec(kv_preset(word));
        first = false;
        continue;
      }
      first = false;
      if (word == "off" || word == "q8" || word == "q4" || word == "q2" || word == "balanced" || word == "max")
        fail(strprintf("preset %s must come first", item.c_str()));
      if (word == "k" || word == "v") {
        const int b = integer(item);
        if (!valid_bits(b)) fail(strprintf("%s: bits must be 16, 8, 4, 2 or 1", item.c_str()));
        if (have_tiers) fail(strprintf("%s: give either k/v bits or tiers (t...), not both", item.c_str()));
        if (!have_kv && s.tiers.size() != 1) s.tiers = {s.tiers[0]};  // k/v replace a preset's tiers
        s.tiers[0].frac = 1.0;
        have_kv = true;
        (word == "k" ? s.tiers[0].kbits : s.tiers[0].vbits) = b;
      } else if (word == "t") {
        if (have_kv) fail(strprintf("%s: give either k/v bits or tiers (t...), not both", item.c_str()));
        have_tiers = true;
        s.tiers = tiers(item);
      } else if (word == "g") {
        s.group = integer(item);
        if (!pow2(s.group) || s.group < 8 || s.group > 256) fail(strprintf("%s: key block must be a power of two in [8, 256]", item.c_str()));
      } else if (word == "vg") {
        s.vgroup = integer(item);
        if (s.vgroup != 0 && (!pow2(s.vgroup) || s.vgroup < 8))
          fail(strprintf("%s: value group must be 0 (whole head) or a power of two >= 8", item.c_str()));
      } else if (word == "r") {
        s.residual = integer(item);
        if (s.residual < 0 || s.residual > 1 << 20) fail(strprintf("%s: residual window out of range", item.c_str()));
      } else if (word == "rot" || word == "norot") {
        s.rotate = word == "rot";
      } else if (word == "o") {
        s.outliers = number(item);
        if (!(s.outliers >= 0 && s.outliers <= 0.25)) fail(strprintf("%s: outlier share must be in [0, 0.25]", item.c_str()));
      } else if (word == "b") {
        const size_t v0 = i_;
        const double x = number(item);
        if (text_.substr(v0, i_ - v0).find('.') != std::string::npos) {
          if (!(x > 0 && x <= 1)) fail(strprintf("%s: a budget share must be in (0, 1]", item.c_str()));
          s.budget_frac = x;
          s.budget_tokens = 0;
        } else {
          if (!(x >= 1 && x <= (1 << 24))) fail(strprintf("%s: a token budget must be >= 1", item.c_str()));
          s.budget_tokens = (int)x;
          s.budget_frac = 1.0;
        }
      } else if (word == "s") {
        s.sinks = integer(item);
        if (s.sinks < 0) fail(strprintf("%s: sinks must be >= 0", item.c_str()));
      } else if (word == "w") {
        s.recent = integer(item);
        if (s.recent < 0) fail(strprintf("%s: recent window must be >= 0", item.c_str()));
      } else if (word == "h2o" || word == "snapkv" || word == "agnostic") {
        s.policy = word == "h2o" ? KvPolicy::H2O : word == "snapkv" ? KvPolicy::SnapKV : KvPolicy::Agnostic;
      } else if (word == "ow") {
        s.obs_window = integer(item);
        if (s.obs_window < 1 || s.obs_window > 4096) fail(strprintf("%s: observation window must be in [1, 4096]", item.c_str()));
      } else if (word == "rw") {
        s.rewind = integer(item);
      } else if (word == "hl") {
        s.locality = number(item);
        if (!(s.locality >= 0 && s.locality <= 1)) fail(strprintf("%s: a locality threshold must be in [0, 1]", item.c_str()));
      } else {
        fail(strprintf("unknown knob %s", item.c_str()));
      }
      end_item(item);
    }
    if (first) fail("empty spec");
    if (!s.evicts()) s.locality = 0.0;  // head budgets only move evictions between heads
    if (s.budget_tokens > 0 && s.budget_tokens < s.sinks + 1)
      fail(strprintf("budget b%d leaves no room beyond the %d sinks", s.budget_tokens, s.sinks));
    return s;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(strprintf("bad KV spec '%s': %s (grammar: k4,v2,g64,vg32,r128,rot,o0.01,b0.5,s4,w128,h2o; presets: off, q8, q4, "
                          "q2, balanced, max)",
                          text_.c_str(), why.c_str()));
  }
  size_t next_sep() const {
    size_t j = i_;
    while (j < text_.size() && text_[j] != ',') j++;
    return j;
  }
  // After an item: a separator, the end, or (when the item ended in a digit) the next item.
  void end_item(const std::string& item) {
    if (i_ >= text_.size() || text_[i_] == ',') return;
    if (i_ > 0 && std::isdigit((unsigned char)text_[i_ - 1]) && std::islower((unsigned char)text_[i_])) return;
    fail(strprintf("unexpected '%c' in %s", text_[i_], item.c_str()));
  }
  int integer(const std::string& item) {
    const size_t v0 = i_;
    while (i_ < text_.size() && std::isdigit((unsigned char)text_[i_])) i_++;
    if (i_ == v0 || i_ - v0 > 9) fail(strprintf("%s needs a whole number", item.c_str()));
    return std::atoi(text_.substr(v0, i_ - v0).c_str());
  }
  double number(const std::string& item) {
    const size_t v0 = i_;
    while (i_ < text_.size() && (std::isdigit((unsigned char)text_[i_]) || text_[i_] == '.')) i_++;
    const std::string t = text_.substr(v0, i_ - v0);
    char* end = nullptr;
    const double x = std::strtod(t.c_str(), &end);
    if (t.empty() || *end != '\0' || std::count(t.begin(), t.end(), '.') > 1) fail(strprintf("%s needs a number", item.c_str()));
    return x;
  }
  std::vector<KvTier> tiers(const std::string& item) {
    std::vector<KvTier> out;
    double total = 0;
    for (;;) {
      KvTier t;
      t.kbits = t.vbits = integer(item);
      if (i_ < text_.size() && text_[i_] == 'x') {
        i_++;
        t.vbits = integer(item);
      }
      if (!valid_bits(t.kbits) || !valid_bits(t.vbits)) fail(strprintf("%s: tier bits must be 16, 8, 4, 2 or 1", item.c_str()));
      const bool has_frac = i_ < text_.size() && text_[i_] == ':';
      if (has_frac) {
        i_++;
        t.frac = number(item);
        if (!(t.frac > 0 && t.frac <= 1)) fail(strprintf("%s: tier shares must be in (0, 1]", item.c_str()));
      }
      const bool more = i_ < text_.size() && text_[i_] == '/';
      if (more && !has_frac) fail(strprintf("%s: every tier but the last needs a share (bits:share)", item.c_str()));
      if (!more) {
        if (has_frac) fail(strprintf("%s: the last tier takes the rest; it has no share", item.c_str()));
        t.frac = std::max(0.0, 1.0 - total);
        out.push_back(t);
        break;
      }
      total += t.frac;
      out.push_back(t);
      i_++;
    }
    if (total > 1.0 + 1e-9) fail(strprintf("%s: tier shares add up to more than 1", item.c_str()));
    for (size_t j = 1; j < out.size(); j++)
      if (out[j].kbits > out[j - 1].kbits || out[j].vbits > out[j - 1].vbits)
        fail(strprintf("%s: tiers go from most bits to fewest", item.c_str()));
    return out;
  }

  const std::string& text_;
  size_t i_ = 0;
};

}  // namespace

std::string kv_preset(const std::string& name) {
  for (const Preset& p : kPresets)
    if (name == p.name) return p.spec;
  return "";
}

KvSpec parse_kv_spec(const std::string& text) { return Parser(text).run(); }

KvSpec kv_spec_uniform(const KvSpec& spec) {
  KvSpec u = spec;
  KvTier t = spec.tiers.back();
  t.frac = 1.0;
  u.tiers = {t};
  u.budget_frac = 1.0;
  u.budget_tokens = 0;
  u.outliers = 0.0;
  u.locality = 0.0;
  return u;
}

std::string kv_spec_string(const KvSpec& s) {
  std::string out;
  if (s.tiers.size() == 1) {
    out = strprintf("k%d,v%d", s.tiers[0].kbits, s.tiers[0].vbits);
  } else {
    out = "t";
    for (size_t i = 0; i < s.tiers.size(); i++) {
      const KvTier& t = s.tiers[i];
      if (i) out += "/";
      out += t.kbits == t.vbits ? strprintf("%d", t.kbits) : strprintf("%dx%d", t.kbits, t.vbits);
      if (i + 1 < s.tiers.size()) out += ":" + fmt_frac(t.frac);
    }
  }
  out += strprintf(",g%d,vg%d,r%d,%s,o%s", s.group, s.vgroup, s.residual, s.rotate ? "rot" : "norot", strprintf("%.6g", s.outliers).c_str());
  out += s.budget_tokens > 0 ? strprintf(",b%d", s.budget_tokens) : ",b" + fmt_frac(s.budget_frac);
  out += strprintf(",s%d,w%d", s.sinks, s.recent);
  if (s.locality > 0) out += ",hl" + fmt_frac(s.locality);
  out += strprintf(",%s,ow%d,rw%d", s.policy == KvPolicy::H2O ? "h2o" : s.policy == KvPolicy::SnapKV ? "snapkv" : "agnostic",
                   s.obs_window, s.rewind);
  return out;
}

}  // namespace lkv
