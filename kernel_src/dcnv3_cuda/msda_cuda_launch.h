// Interface between the torch-facing host code (msda_cuda.cpp) and the multi-scale deformable attention kernels
// (msda_kernels.cu). Raw pointers only, so that the .cu translation unit includes no torch header (fast nvcc).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dcnv3_common/msda_sampling.h"

namespace msda {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// Channels a head may have on CUDA: 32 lanes of at most kMaxVec channels each.
constexpr int64_t kMaxChannels = 256;

// How a launch splits the work: `lanes` threads (a power of two <= 32, aligned inside a warp) per (image, query,
// head), each on `vec` consecutive channels, and `blocks` of the grid-stride launch.
struct LaunchShape {
  int vec;
  int lanes;
  int64_t blocks;
};

// The shape both launch functions use for `p` on a device with `sm_count` SMs (exposed for tests).
LaunchShape choose_shape(const Params& p, int sm_count);

// out (N, Q, M * D) on `stream` of the current device. spatial_shapes (L, 2) and level_start (L,) are int64 device
// arrays; every tensor is contiguous and of `dtype`, p.channels <= kMaxChannels.
cudaError_t launch_forward(DType dtype, const void* value, const int64_t* spatial_shapes, const int64_t* level_start,
                           const void* sampling_locations, const void* attention_weights, void* out, const Params& p,
                           cudaStream_t stream);

// grad_value_acc must be zero-initialised, (N, S, M, D), float32 for half dtypes (else `dtype`); grad_locations and
// grad_weights (dtype `dtype`) are fully overwritten.
cudaError_t launch_backward(DType dtype, const void* grad_output, const void* value, const int64_t* spatial_shapes,
                            const int64_t* level_start, const void* sampling_locations,
                            const void* attention_weights, void* grad_value_acc, void* grad_locations,
                            void* grad_weights, const Params& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace msda
