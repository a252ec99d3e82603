// sampler.cpp — the sampling chain: penalty -> (greedy | top-k -> softmax(T) -> top-p -> min-p -> draw).
#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "common.h"

namespace lkv {

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {
  LKV_CHECK(std::isfinite(p.temperature) && p.temperature >= 0, "temperature must be >= 0");
  LKV_CHECK(p.top_p > 0, "top_p must be > 0");
  LKV_CHECK(p.min_p >= 0 && p.min_p < 1, "min_p must be in [0, 1)");
  LKV_CHECK(p.repeat_penalty > 0, "repeat_penalty must be > 0");
}

int32_t Sampler::sample(const float* logits, int n_vocab, const std::vector<int32_t>& history) {
  work_.assign(logits, logits + n_vocab);
  if (p_.repeat_penalty != 1.0f && p_.repeat_last_n != 0) {
    const size_t window = p_.repeat_last_n < 0 ? history.size() : std::min(history.size(), (size_t)p_.repeat_last_n);
    std::unordered_set<int32_t> seen(history.end() - window, history.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= n_vocab) continue;
      work_[t] = work_[t] > 0 ? work_[t] / p_.repeat_penalty : work_[t] * p_.repeat_penalty;
    }
  }
  if (p_.temperature <= 0.0f) {
    return (int32_t)(std::max_element(work_.begin(), work_.end()) - work_.begin());
  }
  // top-k (partial sort keeps this cheap at a 128k vocabulary)
  const int k = p_.top_k > 0 ? std::min(p_.top_k, n_vocab) : n_vocab;
  cand_.resize((size_t)n_vocab);
  for (int i = 0; i < n_vocab; i++) cand_[i] = {work_[i], i};
  auto by_logit = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) { return a.first > b.first; };
  std::partial_sort(cand_.begin(), cand_.begin() + k, cand_.end(), by_logit);
  cand_.resize((size_t)k);
  // softmax at temperature
  const float mx = cand_[0].first;
  double sum = 0;
  for (auto& c : cand_) sum += (c.first = (float)std::exp((c.first - mx) / p_.temperature));
  for (auto& c : cand_) c.first = (float)(c.first / sum);
  // top-p: smallest prefix with mass >= top_p
  size_t keep = cand_.size();
  if (p_.top_p < 1.0f) {
    double acc = 0;
    for (size_t i = 0; i < cand_.size(); i++) {
      acc += cand_[i].first;
      if (acc >= p_.top_p) { keep = i + 1; break; }
    }
  }
  // min-p: drop tokens below min_p * p(max)
  if (p_.min_p > 0) {
    const float floor_p = p_.min_p * cand_[0].first;
    size_t i = 1;
    while (i < keep && cand_[i].first >= floor_p) i++;
    keep = i;
  }
  cand_.resize(keep);
  double total = 0;
  for (auto& c : cand_) total += c.first;
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  for (auto& c : cand_) {
    r -= c.first;
    if (r <= 0) return c.second;
  }
  return cand_.back().second;
}

}  // namespace lkv
