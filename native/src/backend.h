// backend.h — which compute backend a model runs on. CUDA is compiled only when nvcc was found at
// build time; otherwise cuda_stub.cpp answers "built without CUDA" and the addon still loads.
// choose_backend() is the one place the "auto" / "cpu" / "cuda" request is decided (backend.cpp).
#pragma once

#include <memory>
#include <string>

namespace lkv {

class Model;
class CudaModel;

struct CudaInfo {
  bool compiled = false;   // built with the CUDA backend
  bool available = false;  // a usable device is present right now
  std::string message;     // "built without CUDA", "no CUDA device", "NVIDIA H200, 139 GiB"...
};
CudaInfo cuda_info();

// The outcome of a backend request for one model.
struct BackendChoice {
  std::string name;                 // "cpu" or "cuda": where the model's sessions run
  std::string device;               // "NVIDIA H200, sm_90, 132 SMs, 139 GiB" or the CPU's name
  std::string note;                 // "auto" fell back to the CPU: why (fit for a log line); else ""
  bool required = false;            // "cuda" was asked for: a session the device cannot hold is an error
  std::shared_ptr<CudaModel> cuda;  // the weights on the device when name == "cuda"
};

// Throws Error unless `requested` is "auto", "cpu" or "cuda" (the empty string means "auto").
void check_backend_name(const std::string& requested);

// "cpu": never touches CUDA. "cuda": uploads the weights or throws Error naming the cause (built
// without CUDA, no device, missing or old driver, GPU too old for the build, out of memory with the
// numbers). "auto": CUDA when compiled, usable and the upload succeeds; otherwise the CPU, with
// the reason in `note`.
BackendChoice choose_backend(const Model& m, const std::string& requested);

// The CPU's model name (from /proc/cpuinfo where there is one), for info().device.
std::string cpu_name();

}  // namespace lkv
