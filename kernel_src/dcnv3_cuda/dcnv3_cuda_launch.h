// Interface between the torch-facing host code (dcnv3_cuda.cpp) and the CUDA kernels (dcnv3_kernels.cu).
// Raw pointers only, so that the .cu translation unit does not include any torch header (fast nvcc).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dcnv3_common/dcnv3_params.h"

namespace dcnv3 {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// How the work is split: `vec` channels per vector load, `lanes` threads per (pixel, group).
struct LaunchShape {
  int vec;
  int lanes;
};

// Widest vector width (elements, power of two, at most 16 bytes) such that group_channels is a
// multiple of it and every pointer in `ptrs` is aligned to it; plus the matching lanes per group.
LaunchShape choose_launch_shape(DType dtype, int64_t group_channels, const void* const* ptrs, int num_ptrs);

// out (N, Ho, Wo, C) = DCNv3 sampling of value with offset and mask. All NHWC contiguous, dtype `dtype`.
cudaError_t launch_forward(DType dtype, const void* value, const void* offset, const void* mask, void* out,
                           const Params& p, LaunchShape shape, cudaStream_t stream);

// grad_value_acc must be zero-initialised, (N, H, W, C), float32 for half dtypes (else `dtype`);
// grad_offset and grad_mask are fully overwritten (dtype `dtype`).
cudaError_t launch_backward(DType dtype, const void* grad_output, const void* value, const void* offset,
                            const void* mask, void* grad_value_acc, void* grad_offset, void* grad_mask,
                            const Params& p, LaunchShape shape, cudaStream_t stream);

}  // namespace cuda
}  // namespace dcnv3
