// cuda_stub.cpp — used when the build found no CUDA compiler.
#include "backend.h"

namespace lkv {
CudaInfo cuda_info() {
  CudaInfo info;
  info.message = "built without CUDA";
  return info;
}
}  // namespace lkv
