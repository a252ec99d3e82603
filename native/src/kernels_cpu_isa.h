// kernels_cpu_isa.h — the contract between the CPU kernel driver (kernels_cpu.cpp: argument
// checks, activation quantization, work splitting) and one instruction-set module
// (kernels_cpu_avx2.cpp, kernels_cpu_avx512.cpp). Internal to the kernels; not for engine code.
#pragma once

#include <cstdint>

#include "kernels.h"
#include "quant.h"

namespace lkv {
namespace cpu {

// Activations quantized to 8 bits in blocks of 32 for Q8_0/Q4_0 weights: token t's values are
// qs[t*cols .. t*cols+cols), its block scales d[t*nb .. t*nb+nb) (f16-rounded, as llama.cpp's).
struct ActQ8 {
  const int8_t* qs;
  const float* d;
  int64_t cols;
  int64_t nb;  // blocks per token = cols / 32
  // The same values + 128 as unsigned bytes (qs ^ 0x80), for the modules whose prefill kernel
  // takes them (IsaOps::q8_unsigned): u8 x s8 dot products without the sign trick. Set only for
  // more than 3 tokens; nullptr otherwise.
  const uint8_t* qu = nullptr;
};

// mm_q8_0's prefill kernel repacks 8 weight rows at a time, kQ8PanelBlocks blocks of them, into a
// per-thread buffer of kQ8PanelBytes (values, |values| and scales; the AVX-512 module 16 rows of
// fewer blocks); mm_qk's repacks kQKPanelBlocks super-blocks of 8 rows into the same buffer.
constexpr int64_t kQ8PanelBlocks = 128;
constexpr size_t kQ8PanelBytes = kQ8PanelBlocks * (2 * 8 * 32 + 8 * sizeof(float));
constexpr int64_t kQKPanelBlocks = 16;

// Every matmul entry computes y[t*W.rows + r] for r in [r0, r1) and t in [t0, t1).
struct IsaOps {
  const char* name;
  // mm_q8_0's prefill kernel wants ActQ8::qu
  bool q8_unsigned;
  // F32, F16, BF16 weights against float activations
  void (*mm_float)(const WeightView& W, const float* x, float* y, int64_t r0, int64_t r1, int t0, int t1);
  // Q8_0 or Q4_0 weights against ActQ8 activations; `panel`: kQ8PanelBytes, 64-byte aligned, the
  // calling thread's own
  void (*mm_q8_0)(const WeightView& W, const ActQ8& a, float* y, int64_t r0, int64_t r1, int t0, int t1,
                  uint8_t* panel);
  // Q4_K or Q6_K weights against Q8_K activations (token t's blocks at a + t*cols/256); `panel`
  // as for mm_q8_0
  void (*mm_qk)(const WeightView& W, const block_q8_K* a, float* y, int64_t r0, int64_t r1, int t0, int t1,
                uint8_t* panel);
  // one token row of n values (n % 32 == 0, resp. n % 256 == 0)
  void (*quantize_q8)(const float* x, int8_t* qs, float* d, int64_t n);
  void (*quantize_q8_K)(const float* x, block_q8_K* y, int64_t n);
  void (*rmsnorm)(float* out, const float* x, const float* w, int n, float eps);
  void (*silu_mul)(float* gate, const float* up, int n);
};

// nullptr when this CPU lacks the module's instructions.
const IsaOps* isa_avx512();
const IsaOps* isa_avx2();

}  // namespace cpu
}  // namespace lkv
