// Host emulation of the CUDA runtime and device built-ins that the DCNv3 kernels use, so that the unchanged
// dcnv3_kernels.cu compiles with the host C++ compiler and runs on the CPU (see ../emu_runtime.cpp).
//
// Execution model: every CUDA thread is a fiber; blocks run one after another; inside a block the threads run in
// turn until they finish or reach a warp/block collective, where they wait until every thread the collective
// names has arrived (a thread that exited or waits at another collective is an error, reported through
// cudaGetLastError). Atomics are plain read-modify-writes (fibers never run concurrently) and are counted per
// warp-wide instruction for the sector statistics. In the counting build (emulator.py) the kernels' global loads and
// stores are counted too, through GCC's address-sanitizer checks (see emu_runtime.cpp, record_access).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Only `extern __shared__ T name[]` (dynamic shared memory) is supported: the harness defines `name` once as a global
// buffer, which serves every block because blocks run one at a time.
#define __shared__

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;

enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);

enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
// Accepted and ignored: the launch still checks the 48 KiB default limit of dynamic shared memory.
template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel*, cudaFuncAttribute, int) {
  return cudaSuccess;
}

namespace emu {

// The built-in variables of the fiber that runs now (set on every switch).
struct Builtins {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
extern Builtins builtins;

enum class Collective : int { kShflSync, kShflXor, kShflUp, kShflDown, kSyncWarp, kSyncThreads };

// Blocks the calling thread until the collective completes; returns this lane's result bits.
uint64_t collective(Collective kind, const char* file, int line, unsigned mask, uint64_t bits, int arg, int width);

void record_atomic(const void* address, int bytes, int floats);

// Runs `body` as every thread of the grid; false (with the last error set) when the configuration is invalid
// or a thread failed.
bool run_grid(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);

template <typename T>
T shuffle(Collective kind, const char* file, int line, unsigned mask, T var, int arg, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of an unsupported type");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = collective(kind, file, line, mask, bits, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// kernel<<<grid, block, shared, stream>>>(args...) is rewritten mechanically into this call. Arguments are
// converted to the kernel's parameter types once, as a real launch copies them.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t, Args&&... args) {
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  run_grid(grid, block, shared_bytes, [&] { std::apply(kernel, params); });
}
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, int, Args&&... args) {
  launch(kernel, grid, block, shared_bytes, cudaStream_t(nullptr), std::forward<Args>(args)...);
}

}  // namespace emu

#define threadIdx (::emu::builtins.thread_idx)
#define blockIdx (::emu::builtins.block_idx)
#define blockDim (::emu::builtins.block_dim)
#define gridDim (::emu::builtins.grid_dim)

#define __shfl_sync(mask, var, src, ...) \
  ::emu::shuffle(::emu::Collective::kShflSync, __FILE__, __LINE__, mask, var, src, ::emu::width_or_warp(__VA_ARGS__))
#define __shfl_xor_sync(mask, var, lane_mask, ...) \
  ::emu::shuffle(::emu::Collective::kShflXor, __FILE__, __LINE__, mask, var, lane_mask, ::emu::width_or_warp(__VA_ARGS__))
#define __shfl_up_sync(mask, var, delta, ...) \
  ::emu::shuffle(::emu::Collective::kShflUp, __FILE__, __LINE__, mask, var, delta, ::emu::width_or_warp(__VA_ARGS__))
#define __shfl_down_sync(mask, var, delta, ...) \
  ::emu::shuffle(::emu::Collective::kShflDown, __FILE__, __LINE__, mask, var, delta, ::emu::width_or_warp(__VA_ARGS__))
#define __syncwarp(...) \
  ((void)::emu::collective(::emu::Collective::kSyncWarp, __FILE__, __LINE__, ::emu::mask_or_full(__VA_ARGS__), 0, 0, 32))
#define __syncthreads() ((void)::emu::collective(::emu::Collective::kSyncThreads, __FILE__, __LINE__, 0, 0, 0, 0))

namespace emu {
inline int width_or_warp() { return 32; }
inline int width_or_warp(int width) { return width; }
inline unsigned mask_or_full() { return 0xffffffffu; }
inline unsigned mask_or_full(unsigned mask) { return mask; }
}  // namespace emu

// Device math: rounding conversions and the fast exponential (computed exactly here; the hardware's __expf
// is an approximation within a few ulp).
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __double2int_rd(double x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __double2int_rz(double x) { return static_cast<int>(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __uint_as_float(unsigned int bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
using std::isfinite;  // floor, floorf and fma are the C library's, declared globally by <cmath>

// The emulated atomics' read and write are one atomic operation, counted by record_atomic: the counting build must
// not also count them as a load and a store.
#define EMU_NOT_COUNTED __attribute__((no_sanitize_address))

EMU_NOT_COUNTED inline float atomicAdd(float* address, float value) {
  emu::record_atomic(address, 4, 1);
  const float old = *address;
  *address = old + value;
  return old;
}
EMU_NOT_COUNTED inline double atomicAdd(double* address, double value) {
  emu::record_atomic(address, 8, 0);
  const double old = *address;
  *address = old + value;
  return old;
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Vector atomics of sm_90+: one instruction, each element added atomically (not the vector as a whole).
EMU_NOT_COUNTED inline float2 atomicAdd(float2* address, float2 value) {
  emu::record_atomic(address, 8, 2);
  const float2 old = *address;
  address->x += value.x;
  address->y += value.y;
  return old;
}
EMU_NOT_COUNTED inline float4 atomicAdd(float4* address, float4 value) {
  emu::record_atomic(address, 16, 4);
  const float4 old = *address;
  address->x += value.x;
  address->y += value.y;
  address->z += value.z;
  address->w += value.w;
  return old;
}
#endif
