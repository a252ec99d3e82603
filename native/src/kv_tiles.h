// kv_tiles.h — the fused inner loops of compressed-cache attention, per instruction set: decode
// one block (or residual tile) into a small float tile and score / accumulate up to four query
// rows against it. A plain version of each kernel (vectorized by the compiler through LKV_CLONES)
// plus AVX2 and AVX-512 ones, chosen at run time. Internal to the compressed cache.
#pragma once

#include <cstdint>
#include <vector>

#include "kv_block.h"

namespace lkv {
namespace kvc {

// A tile is one block (or up to kResTile residual rows). Keys are decoded transposed, kt[c*ts + j],
// values row-major, vt[j*hd + c]; scores for up to 4 query rows at a time go to s[r*ts + j]. The
// residual's keys are read straight from their f16 rows. Each kernel has a plain version (vectorized
// by the compiler per ISA through LKV_CLONES) and AVX2 / AVX-512 ones, picked at run time.

constexpr int kRows = 4;  // query rows per kernel call

// Query tokens per attention task (one KV head, that many tokens x its group of query heads): a
// task decodes every block (or converts every f16 tile) it reads once for all its rows, so prefill
// wants many rows per task; but at least 4 tasks per thread, so every thread stays busy.
inline int query_tile_tokens(int n, int n_head_kv, int threads) {
  int qt = 32;
  while (qt > 8 && (int64_t)n_head_kv * ((n + qt - 1) / qt) < 4 * (int64_t)threads) qt /= 2;
  return qt;
}

struct TileOps {
  const char* name;
  // key codes as floats (bits < 16: scale and zero are folded into the query instead; outliers
  // are added to the scores), or the f16 keys
  void (*decode_keys)(const Block& b, int hd, float* kt, int ts);
  void (*decode_values)(const Block& b, int hd, int vg, float* vt);
  void (*decode_rows)(const uint16_t* src, int nk, int hd, float* vt);  // f16 rows -> floats
  // s[r*ts + j] = scale * (q_r . k_j + bias_r), r < R, j < nk; keys transposed (kt), or f16 rows (kr, no bias)
  void (*scores_t)(const float* q, int R, const float* kt, int hd, int ts, int nk, float* s, float scale, const float* bias);
  void (*scores_rows)(const float* q, int R, const uint16_t* kr, int hd, int ts, int nk, float* s, float scale);
  // o_r[c] += sum_j p[r*ts + j] * vt[j*hd + c], r < R, j < nk
  void (*accum)(const float* p, int R, int ts, int nk, const float* vt, int hd, float* o);
  // online-softmax step of one query row (see softmax_step_generic)
  void (*softmax)(float* s, int vis, int upto, float& m, float& l, float* o, int hd);
  // Decode (R <= kRows query rows) without a float tile, or nullptr: the block's quantized keys
  // straight from their codes (kbits < 16), s as scores_t with q folded; and its quantized values
  // (vbits < 16, where values_fit) straight into o, each row's scale and zero folded into the
  // probabilities (scratch: nk * (hd / vg) * kRows floats).
  void (*scores_codes)(const Block& b, const float* qf, int R, int hd, int ts, float* s, float scale, const float* bias);
  void (*accum_codes)(const Block& b, const float* p, int R, int ts, int nk, int hd, int vg, float* scratch, float* o);
};

// Whether accum_codes takes a block with these value bits: groups of whole 16-channel steps, and
// planes of whole 16-channel steps or of 8 channels (taken two at a time: head_dim 64 at 1 bit).
inline bool values_fit(int hd, int vg, int vbits) {
  const int plane = vbits < 16 ? hd / (8 / vbits) : 0;
  return vbits < 16 && vg % 16 == 0 && (plane % 16 == 0 || (plane == 8 && vbits < 8));
}

// A block's per-channel key scale and zero as floats (16 bits: 1 and 0).
// The fastest ops this CPU and this cache's layout allow (avx512 false: at most the AVX2 ones, for
// tests); the plain ones.
const TileOps* pick_tile_ops(int hd, int vg, const std::vector<KvTier>& tiers, bool avx512 = true);
const TileOps* generic_tile_ops();

// A block's per-channel key scale and zero as floats (16 bits: 1 and 0).
void key_params(const Block& b, int hd, float* sc, float* z);
// Folds per-channel key scale and zero into R query rows: q.k_j = qf.code_j + bias.
void fold_keys(const float* sc, const float* z, const float* q, int R, int hd, float* qf, float* bias);
// The key outliers' share of the scores of R query rows (q unfolded).
void add_outlier_scores(const Block& b, const float* q, int R, int hd, float* s, int ts, float scale);

}  // namespace kvc
}  // namespace lkv
