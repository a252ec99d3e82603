// cuda_info.cu — what systemInfo() reports about CUDA: the same verdict the backend acts on.
#include "../backend.h"
#include "cuda_backend.h"

namespace lkv {
CudaInfo cuda_info() {
  CudaInfo info;
  info.compiled = true;
  std::string why;
  info.available = cuda_usable(&why);
  info.message = why;  // "NVIDIA H200, sm_90, 132 SMs, 139 GiB", or why CUDA cannot be used
  return info;
}
}  // namespace lkv
