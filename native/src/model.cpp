// model.cpp — reads Llama 3 hyperparameters and binds weights to the mapped GGUF, checking every
// name, type and shape the forward pass relies on.
#include "model.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "quant.h"

namespace lkv {

namespace {

int checked_int(const GgufFile& f, const std::string& key, uint64_t lo, uint64_t hi, uint64_t v) {
  LKV_CHECK(v >= lo && v <= hi, "%s: %s = %llu is out of range [%llu, %llu]", f.path.c_str(), key.c_str(),
            (unsigned long long)v, (unsigned long long)lo, (unsigned long long)hi);
  return (int)v;
}

int get_int(const GgufFile& f, const std::string& key, uint64_t lo, uint64_t hi) {
  return checked_int(f, key, lo, hi, f.get_u64(key));
}

int get_int(const GgufFile& f, const std::string& key, uint64_t lo, uint64_t hi, uint64_t dflt) {
  return checked_int(f, key, lo, hi, f.get_u64(key, dflt));
}

const GgufTensor& need_tensor(const GgufFile& f, const std::string& name) {
  const GgufTensor* t = f.tensor(name);
  LKV_CHECK(t != nullptr, "%s: missing tensor '%s'", f.path.c_str(), name.c_str());
  return *t;
}

bool matrix_type_ok(uint32_t type) {
  switch ((GgmlType)type) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q8_0:
    case GgmlType::Q4_0: case GgmlType::Q2_K: case GgmlType::Q3_K: case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K:
    case GgmlType::IQ4_NL: case GgmlType::IQ4_XS:
      return true;
    default:
      return false;
  }
}

// A 2-D weight with GGUF dims [cols, rows].
WeightView bind_matrix(const GgufFile& f, const std::string& name, int64_t cols, int64_t rows) {
  const GgufTensor& t = need_tensor(f, name);
  LKV_CHECK(matrix_type_ok(t.type), "%s: tensor '%s' has type %s, which llamakv does not support (supported: f32, f16, bf16, q8_0, q4_0, q4_K, q6_K)",
            f.path.c_str(), name.c_str(), ggml_type_name(t.type));
  bool shape_ok = t.ne.size() == 2 && (int64_t)t.ne[0] == cols && (int64_t)t.ne[1] == rows;
  if (!shape_ok && t.ne.size() == 3 && t.ne[2] == 1) shape_ok = (int64_t)t.ne[0] == cols && (int64_t)t.ne[1] == rows;
  LKV_CHECK(shape_ok, "%s: tensor '%s' has shape [%s], expected [%lld, %lld]", f.path.c_str(), name.c_str(),
            [&] { std::string s; for (size_t i = 0; i < t.ne.size(); i++) s += (i ? ", " : "") + std::to_string(t.ne[i]); return s; }().c_str(),
            (long long)cols, (long long)rows);
  WeightView w;
  w.type = t.type;
  w.data = t.data;
  w.rows = rows;
  w.cols = cols;
  w.row_bytes = ggml_row_bytes(t.type, (uint64_t)cols);
  return w;
}

std::vector<float> read_vector(const GgufFile& f, const std::string& name, int64_t n) {
  const GgufTensor& t = need_tensor(f, name);
  LKV_CHECK(t.nelements == (uint64_t)n && t.ne.size() == 1, "%s: tensor '%s' has %llu elements in %zu dims, expected a vector of %lld",
            f.path.c_str(), name.c_str(), (unsigned long long)t.nelements, t.ne.size(), (long long)n);
  LKV_CHECK(t.type == (uint32_t)GgmlType::F32 || t.type == (uint32_t)GgmlType::F16 || t.type == (uint32_t)GgmlType::BF16,
            "%s: tensor '%s' has type %s, expected f32/f16/bf16", f.path.c_str(), name.c_str(), ggml_type_name(t.type));
  std::vector<float> out((size_t)n);
  dequantize_row_ref(t.type, t.data, out.data(), n);
  for (float v : out) LKV_CHECK(std::isfinite(v), "%s: tensor '%s' holds a non-finite value", f.path.c_str(), name.c_str());
  return out;
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path, const std::function<void(double)>& progress) {
  std::unique_ptr<Model> m(new Model());
  m->file = GgufFile::open(path);
  const GgufFile& f = *m->file;

  const std::string arch = f.get_str("general.architecture");
  LKV_CHECK(arch == "llama", "%s: architecture '%s' is not supported (llamakv runs Llama 3 models, architecture 'llama')",
            path.c_str(), arch.c_str());

  LlamaConfig& c = m->cfg;
  c.name = f.get_str("general.name", "");
  c.n_embd = get_int(f, "llama.embedding_length", 1, 1 << 16);
  c.n_layer = get_int(f, "llama.block_count", 1, 1024);
  c.n_head = get_int(f, "llama.attention.head_count", 1, 1024);
  c.n_head_kv = get_int(f, "llama.attention.head_count_kv", 1, 1024, (uint64_t)c.n_head);
  c.n_ff = get_int(f, "llama.feed_forward_length", 1, 1 << 20);
  c.n_ctx_train = get_int(f, "llama.context_length", 1, 1u << 30);
  LKV_CHECK(c.n_head % c.n_head_kv == 0, "%s: head_count %d is not a multiple of head_count_kv %d", path.c_str(), c.n_head, c.n_head_kv);
  c.head_dim = get_int(f, "llama.attention.key_length", 1, 1024, (uint64_t)(c.n_embd / c.n_head));
  int v_len = get_int(f, "llama.attention.value_length", 1, 1024, (uint64_t)c.head_dim);
  LKV_CHECK(v_len == c.head_dim, "%s: key_length %d != value_length %d is not supported", path.c_str(), c.head_dim, v_len);
  LKV_CHECK(c.head_dim % 2 == 0, "%s: head size %d must be even for RoPE", path.c_str(), c.head_dim);
  int n_rot = get_int(f, "llama.rope.dimension_count", 1, 1024, (uint64_t)c.head_dim);
  LKV_CHECK(n_rot == c.head_dim, "%s: partial rotary embeddings (rope.dimension_count %d < head size %d) are not supported",
            path.c_str(), n_rot, c.head_dim);
  c.rms_eps = (float)f.get_f64("llama.attention.layer_norm_rms_epsilon", 1e-5);
  LKV_CHECK(c.rms_eps > 0 && c.rms_eps < 1, "%s: layer_norm_rms_epsilon %g is out of range", path.c_str(), c.rms_eps);
  c.rope_base = (float)f.get_f64("llama.rope.freq_base", 10000.0);
  LKV_CHECK(c.rope_base > 1 && std::isfinite(c.rope_base), "%s: rope.freq_base %g is out of range", path.c_str(), c.rope_base);

  const std::string scaling = f.get_str("llama.rope.scaling.type", "linear");
  double factor = f.get_f64("llama.rope.scaling.factor", 0.0);
  if (factor == 0.0) factor = f.get_f64("llama.rope.scale_linear", 0.0);
  if (scaling == "linear") {
    LKV_CHECK(factor >= 0 && std::isfinite(factor), "%s: rope.scaling.factor %g is out of range", path.c_str(), factor);
    c.rope_freq_scale = factor == 0.0 ? 1.0f : (float)(1.0 / factor);
  } else if (scaling == "none") {
    c.rope_freq_scale = 1.0f;
  } else {
    throw Error(strprintf("%s: rope scaling type '%s' is not supported (supported: none, linear, llama3 rope_freqs)", path.c_str(), scaling.c_str()));
  }
  c.rope_freq_factors.assign((size_t)c.head_dim / 2, 1.0f);
  if (f.tensor("rope_freqs.weight")) {
    c.rope_freq_factors = read_vector(f, "rope_freqs.weight", c.head_dim / 2);
    for (float v : c.rope_freq_factors) LKV_CHECK(v > 0, "%s: rope_freqs.weight holds a non-positive factor", path.c_str());
    c.rope_scaling = c.rope_freq_scale != 1.0f ? "linear+llama3" : "llama3";
  } else {
    c.rope_scaling = c.rope_freq_scale != 1.0f ? "linear" : "none";
  }

  m->tokenizer = Tokenizer::from_gguf(f);
  c.n_vocab = m->tokenizer->n_vocab();
  uint64_t vocab_key = f.get_u64("llama.vocab_size", (uint64_t)c.n_vocab);
  LKV_CHECK(vocab_key == (uint64_t)c.n_vocab, "%s: llama.vocab_size %llu differs from the %d tokens in the vocabulary",
            path.c_str(), (unsigned long long)vocab_key, c.n_vocab);
  m->chat_template = f.get_str("tokenizer.chat_template", "");

  const int64_t q_dim = (int64_t)c.n_head * c.head_dim;
  const int64_t kv_dim = (int64_t)c.n_head_kv * c.head_dim;
  m->tok_embd = bind_matrix(f, "token_embd.weight", c.n_embd, c.n_vocab);
  m->output_norm = read_vector(f, "output_norm.weight", c.n_embd);
  if (f.tensor("output.weight")) {
    m->output = bind_matrix(f, "output.weight", c.n_embd, c.n_vocab);
  } else {
    m->output = m->tok_embd;
    c.tied_output = true;
  }
  std::map<std::string, int> counts;
  uint64_t biggest_bytes = 0;
  for (int l = 0; l < c.n_layer; l++) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights L;
    L.attn_norm = read_vector(f, p + "attn_norm.weight", c.n_embd);
    L.wq = bind_matrix(f, p + "attn_q.weight", c.n_embd, q_dim);
    L.wk = bind_matrix(f, p + "attn_k.weight", c.n_embd, kv_dim);
    L.wv = bind_matrix(f, p + "attn_v.weight", c.n_embd, kv_dim);
    L.wo = bind_matrix(f, p + "attn_output.weight", q_dim, c.n_embd);
    L.ffn_norm = read_vector(f, p + "ffn_norm.weight", c.n_embd);
    L.w_gate = bind_matrix(f, p + "ffn_gate.weight", c.n_embd, c.n_ff);
    L.w_up = bind_matrix(f, p + "ffn_up.weight", c.n_embd, c.n_ff);
    L.w_down = bind_matrix(f, p + "ffn_down.weight", c.n_ff, c.n_embd);
    m->layers.push_back(std::move(L));
    if (progress) progress((double)(l + 1) / c.n_layer);
  }
  std::map<std::string, uint64_t> bytes_by_type;
  for (const GgufTensor& t : f.tensors) {
    counts[ggml_type_name(t.type)]++;
    if (t.ne.size() >= 2) bytes_by_type[ggml_type_name(t.type)] += t.nelements;
  }
  for (auto& kv : counts) m->type_counts.emplace_back(kv.first, kv.second);
  for (auto& kv : bytes_by_type) {
    if (kv.second > biggest_bytes) {
      biggest_bytes = kv.second;
      m->weight_type = kv.first;
    }
  }
  return m;
}

}  // namespace lkv
