// cuda_kv_stub.cpp — the compressed-KV test entry points of cuda_ops.h (cuda_kv.cu) in builds
// without CUDA: each says "built without CUDA", so test_cuda links and reports its cases skipped.
#include "../common.h"
#include "cuda_ops.h"

namespace lkv {
namespace cuda_ops {

namespace {
[[noreturn]] void unavailable() { throw Error("CUDA backend unavailable: built without CUDA"); }
}  // namespace

std::vector<uint8_t> kv_quantize_block(const KvShape&, const std::string&, const float*, const float*, bool) { unavailable(); }
void kv_decode_on_host(const KvShape&, const std::string&, const std::string&, int, int, std::vector<int>&, std::vector<float>&,
                       std::vector<float>&) {
  unavailable();
}
void kv_attention(const KvShape&, const std::string&, const std::string&, int, int, const float*, float*, size_t, int) {
  unavailable();
}
std::string kv_payload_on_host(const KvShape&, const std::string&, const std::string&, KvStats*) { unavailable(); }
std::string kv_payload_roundtrip(const KvShape&, const std::string&, const std::string&) { unavailable(); }

}  // namespace cuda_ops
}  // namespace lkv
