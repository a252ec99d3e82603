// backend.cpp — the backend request of Model.load decided once per model: "cpu", "cuda", or
// "auto" (CUDA when compiled, usable and the weights fit; otherwise the CPU with the reason).
// Plain C++ over cuda/cuda_backend.h, so it links the same against the CUDA build and the stub.
#include "backend.h"

#include <fstream>
#include <thread>

#include "common.h"
#include "cuda/cuda_backend.h"

namespace lkv {

void check_backend_name(const std::string& requested) {
  LKV_CHECK(requested.empty() || requested == "auto" || requested == "cpu" || requested == "cuda",
            "unknown backend '%s' (auto, cpu or cuda)", requested.c_str());
}

std::string cpu_name() {
  static const std::string name = [] {
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);)
      if (line.compare(0, 10, "model name") == 0) {
        const size_t colon = line.find(':');
        if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
      }
    return std::string("CPU");
  }();
  return strprintf("%s, %u hardware threads", name.c_str(), std::thread::hardware_concurrency());
}

BackendChoice choose_backend(const Model& m, const std::string& requested) {
  check_backend_name(requested);
  BackendChoice c;
  c.name = "cpu";
  c.device = cpu_name();
  if (requested == "cpu") return c;
  const bool required = requested == "cuda";
  std::string why;
  if (!cuda_usable(&why)) {
    if (required) throw Error("backend 'cuda' is not available: " + why);
    c.note = "CUDA not used: " + why;
    return c;
  }
  try {
    c.cuda = cuda_load(m);  // throws for out of memory (with the numbers) and unsupported shapes
  } catch (const std::exception& e) {
    if (required) throw Error(std::string("backend 'cuda' could not load the model: ") + e.what());
    c.note = std::string("CUDA not used: ") + e.what();
    return c;
  }
  c.name = "cuda";
  c.device = c.cuda->device();
  c.required = required;
  return c;
}

}  // namespace lkv
