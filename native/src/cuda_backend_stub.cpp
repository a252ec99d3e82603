// cuda_backend_stub.cpp — the CUDA backend interface (cuda/cuda_backend.h, cuda/cuda_ops.h) in
// builds without CUDA: nothing is usable and every entry point says why. Compiled only when CMake
// found no CUDA compiler (with cuda_stub.cpp), so the addon and test_cuda always link.
#include "common.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_ops.h"

namespace lkv {

namespace {
const char* kWhy = "built without CUDA";
[[noreturn]] void unavailable() { throw Error(std::string("CUDA backend unavailable: ") + kWhy); }
}  // namespace

bool cuda_usable(std::string* why) {
  if (why) *why = kWhy;
  return false;
}

std::shared_ptr<CudaModel> cuda_load(const Model&) { unavailable(); }

namespace cuda_ops {
void matmul(const WeightView&, const float*, int, float*, size_t, bool, MatmulPath) { unavailable(); }
void get_rows(const WeightView&, const int32_t*, int, float*, size_t) { unavailable(); }
void rmsnorm(float*, const float*, const float*, int, int, float, size_t) { unavailable(); }
void silu_mul(float*, const float*, int, size_t) { unavailable(); }
void rope_store(const LlamaConfig&, int, int, int, float*, const float*, const float*, uint16_t*, uint16_t*) { unavailable(); }
void attention(const KvShape&, int, int, const float*, const float*, const float*, int, float*, size_t, int) { unavailable(); }
int32_t argmax(const float*, int) { unavailable(); }
void matvec_qkv(const LlamaConfig&, const WeightView&, const WeightView&, const WeightView&, const float*, int, const float*, int,
                int, float*, size_t, uint16_t*, uint16_t*) { unavailable(); }
void matvec_swiglu(const WeightView&, const WeightView&, const float*, int, const float*, float, float*, size_t) { unavailable(); }
void dequantize_on_host(const WeightView&, float*) { unavailable(); }
double copy_bandwidth_gbs(size_t) { unavailable(); }
}  // namespace cuda_ops

}  // namespace lkv
