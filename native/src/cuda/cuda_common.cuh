// cuda_common.cuh — what every CUDA file shares: errors as lkv::Error (never abort), device
// allocations that report out-of-memory with the numbers, and small device helpers.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "../common.h"

namespace lkv {

// Throws Error("CUDA error in <what>: <message>") when err is not cudaSuccess.
void cuda_check(cudaError_t err, const char* what);
// After a kernel launch: surfaces launch-configuration errors at the launch that caused them.
#define LKV_CUDA_LAUNCHED(name) ::lkv::cuda_check(cudaGetLastError(), name)

// cudaMalloc that throws "CUDA out of memory: <what> needs X MiB, Y MiB of Z MiB free on <GPU>".
void* cuda_alloc(size_t bytes, const char* what);

// An owned device allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, const char* what) : p_(bytes ? cuda_alloc(bytes, what) : nullptr), bytes_(bytes) {}
  ~DeviceBuffer() { if (p_) cudaFree(p_); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  template <typename T = void>
  T* get() const { return (T*)p_; }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// ---- helpers ----------------------------------------------------------------------------------
// The bit and rounding helpers compile for the host as well, so the weight decoder
// (cuda_weights.cuh) can be checked on a machine without a GPU (cuda_ops::dequantize_on_host).

__host__ __device__ __forceinline__ float bits_to_f32(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
__host__ __device__ __forceinline__ float f16_bits_to_f32(uint16_t h) {
#ifdef __CUDA_ARCH__
  return __half2float(__ushort_as_half(h));
#else
  return f16_to_f32(h);
#endif
}
__host__ __device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }
// 8 f16 values (16-byte aligned) to float; bits are taken apart with shifts, not by punning a
// local through another type (undefined behaviour the optimizer may exploit)
__device__ __forceinline__ void f16x8_to_f32(const uint4& u, float* f) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; k++) {
    f[2 * k] = f16_bits_to_f32((uint16_t)(w[k] & 0xFFFF));
    f[2 * k + 1] = f16_bits_to_f32((uint16_t)(w[k] >> 16));
  }
}
__device__ __forceinline__ void load8_f16(const __half* p, float* f) { f16x8_to_f32(*(const uint4*)p, f); }

// a * b and a - b rounded once each, never fused into an FMA (to round as the C++ reference does)
__host__ __device__ __forceinline__ float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
__host__ __device__ __forceinline__ float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
// __byte_perm: result byte i = byte (s >> 4i) & 7 of the pair {x (bytes 0-3), y (bytes 4-7)}
__host__ __device__ __forceinline__ uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#ifdef __CUDA_ARCH__
  return __byte_perm(x, y, s);
#else
  const uint64_t b = (uint64_t)x | ((uint64_t)y << 32);
  uint32_t r = 0;
  for (int i = 0; i < 4; i++) r |= (uint32_t)((b >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

inline int ceil_div(int64_t a, int64_t b) { return (int)((a + b - 1) / b); }

}  // namespace lkv
