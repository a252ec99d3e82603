// model.h — a Llama 3 model: hyperparameters read from GGUF metadata, weights bound to the
// memory-mapped tensors (validated names, types and shapes), and the tokenizer. Immutable after
// load and shared by every session.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gguf.h"
#include "kernels.h"
#include "tokenizer.h"

namespace lkv {

struct LlamaConfig {
  std::string name;
  int n_vocab = 0;
  int n_embd = 0;      // model width
  int n_layer = 0;
  int n_head = 0;      // query heads
  int n_head_kv = 0;   // key/value heads (GQA: n_head % n_head_kv == 0)
  int head_dim = 0;    // attention.key_length (defaults to n_embd / n_head)
  int n_ff = 0;        // SwiGLU hidden size
  int n_ctx_train = 0;
  float rms_eps = 1e-5f;
  float rope_base = 10000.0f;
  float rope_freq_scale = 1.0f;          // linear scaling (1 / rope.scaling.factor)
  std::vector<float> rope_freq_factors;  // head_dim/2 divisors from rope_freqs.weight (1 when absent)
  std::string rope_scaling = "none";     // "none", "linear", "llama3" (rope_freqs), "linear+llama3"
  bool tied_output = false;
};

struct LayerWeights {
  std::vector<float> attn_norm;  // [n_embd]
  WeightView wq;                 // [n_head*head_dim rows, n_embd cols]
  WeightView wk;                 // [n_head_kv*head_dim, n_embd]
  WeightView wv;                 // [n_head_kv*head_dim, n_embd]
  WeightView wo;                 // [n_embd, n_head*head_dim]
  std::vector<float> ffn_norm;   // [n_embd]
  WeightView w_gate;             // [n_ff, n_embd]
  WeightView w_up;               // [n_ff, n_embd]
  WeightView w_down;             // [n_embd, n_ff]
};

class Model {
 public:
  // Maps the file, validates every tensor the forward pass reads, builds the tokenizer.
  // progress(fraction) is called from the loading thread.
  static std::unique_ptr<Model> load(const std::string& path, const std::function<void(double)>& progress = {});

  LlamaConfig cfg;
  WeightView tok_embd;             // [n_vocab rows, n_embd]
  std::vector<float> output_norm;  // [n_embd]
  WeightView output;               // [n_vocab, n_embd] (== tok_embd when tied)
  std::vector<LayerWeights> layers;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<GgufFile> file;

  std::string chat_template;            // tokenizer.chat_template, empty when absent
  std::string weight_type;              // predominant type of the layer matrices
  std::vector<std::pair<std::string, int>> type_counts;  // tensor type name -> count

 private:
  Model() = default;
};

}  // namespace lkv
