// cuda_info.cu — reports whether a CUDA device is usable (the CUDA backend proper is issue 7).
#include <cuda_runtime.h>

#include <string>

#include "../backend.h"

namespace lkv {
CudaInfo cuda_info() {
  CudaInfo info;
  info.compiled = true;
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess || n == 0) {
    info.message = std::string("no CUDA device: ") + (err != cudaSuccess ? cudaGetErrorString(err) : "none found");
    return info;
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    info.message = "CUDA device 0 could not be queried";
    return info;
  }
  info.available = true;
  info.message = std::string(prop.name) + ", " + std::to_string(prop.totalGlobalMem >> 30) + " GiB, sm_" +
                 std::to_string(prop.major) + std::to_string(prop.minor);
  return info;
}
}  // namespace lkv
