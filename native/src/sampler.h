// sampler.h — next-token choice from logits: repetition penalty, then greedy (temperature 0)
// or temperature + top-k + top-p + min-p with a seeded generator.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace lkv {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  int top_k = 40;            // <= 0 = off
  float top_p = 0.95f;       // >= 1 = off
  float min_p = 0.05f;       // <= 0 = off
  float repeat_penalty = 1.0f;  // 1 = off; divides positive logits, multiplies negative ones
  int repeat_last_n = 64;
  uint64_t seed = 0xc0ffee;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // history: recent tokens (the penalty window is taken from its end).
  int32_t sample(const float* logits, int n_vocab, const std::vector<int32_t>& history);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
  std::vector<float> work_;
};

}  // namespace lkv
