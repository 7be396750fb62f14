// Kernels with known global-memory traffic for the emulator's counting build (test_cuda_emu_memory_counters.py).
// One warp of 32 threads each; the counts the test expects are in the comments.
#include <cstdint>

#include "cuda_runtime.h"

namespace probe {

// VEC floats moved with one aligned memory instruction (the kernels' Pack).
struct alignas(16) Pack4 {
  float v[4];
};

// out[i] = in[i * stride]: the loads touch 4 sectors (stride 1: 128 consecutive bytes) or 32 (stride >= 8: one per
// lane); the stores 4.
__global__ void gather(const float* in, float* out, int stride) {
  const int i = int(threadIdx.x);
  out[i] = in[i * stride];
}

// One 16-byte load and store per lane: 512 consecutive bytes, 16 sectors each, one instruction each.
__global__ void copy_packs(const float* in, float* out) {
  const int i = int(threadIdx.x);
  const Pack4 pk = *reinterpret_cast<const Pack4*>(in + 4 * i);
  *reinterpret_cast<Pack4*>(out + 4 * i) = pk;
}

// Lane i loads in[32 k + i] for k < i % 4 + 1 (a lane-dependent trip count, i.e. divergence): 4 load instructions
// with 32, 24, 16 and 8 lanes, 4 sectors each. The local array lives on the thread's stack, not in global memory.
__global__ void diverging_sum(const float* in, float* out) {
  const int i = int(threadIdx.x);
  volatile float local[4] = {0.f, 0.f, 0.f, 0.f};
  for (int k = 0; k < i % 4 + 1; ++k) local[k] = in[32 * k + i];
  out[i] = local[0] + local[1] + local[2] + local[3];
}

// Launch functions (the harness's C entry points call them): one block of one warp; the CUDA error.
int launch_gather(const float* in, float* out, int stride) {
  gather<<<1, 32, 0, nullptr>>>(in, out, stride);
  return int(cudaGetLastError());
}

int launch_copy_packs(const float* in, float* out) {
  copy_packs<<<1, 32, 0, nullptr>>>(in, out);
  return int(cudaGetLastError());
}

int launch_diverging_sum(const float* in, float* out) {
  diverging_sum<<<1, 32, 0, nullptr>>>(in, out);
  return int(cudaGetLastError());
}

}  // namespace probe
