// backend.h — which compute backends this build has. CUDA is compiled only when nvcc was found
// at build time; otherwise cuda_stub.cpp answers "built without CUDA" and the addon still loads.
#pragma once

#include <string>

namespace lkv {

struct CudaInfo {
  bool compiled = false;   // built with the CUDA backend
  bool available = false;  // a usable device is present right now
  std::string message;     // "built without CUDA", "no CUDA device", "NVIDIA H200, 139 GiB"...
};
CudaInfo cuda_info();

}  // namespace lkv
