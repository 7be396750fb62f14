// Interface between the torch-facing host code (dcnv3_cuda.cpp) and the CUDA kernels (dcnv3_kernels.cu).
// Raw pointers only, so that the .cu translation unit does not include any torch header (fast nvcc).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dcnv3_common/dcnv3_params.h"

namespace dcnv3 {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// How a launch splits the work: `vec` channels per vector access, `lanes` threads per (pixel, group), `blocks`
// of the grid-stride launch, and 64-bit indices (`wide_index`) when a buffer has 2^31 elements or more.
struct LaunchShape {
  int vec;
  int lanes;
  int64_t blocks;
  bool wide_index;
};

// The shapes the launch functions use, exposed for tests and benchmarks. Widths are the widest power of two (at
// most 16 bytes; in the backward at most 16 bytes of float accumulators, and 1 below compute capability 9 or for
// float64) that divides group_channels and to which every pointer is aligned.
LaunchShape choose_forward_shape(DType dtype, const Params& p, const void* value, const void* out, int sm_count);
LaunchShape choose_backward_shape(DType dtype, const Params& p, const void* grad_output, const void* value,
                                  const void* grad_value_acc, int sm_count, int compute_major);

// out (N, Ho, Wo, C) = DCNv3 sampling of value with offset and mask, on `stream` of the current device. With
// mask_logits, `mask` holds logits and the softmax over each group's points is applied inside the kernel. All
// tensors NHWC contiguous, dtype `dtype`.
cudaError_t launch_forward(DType dtype, const void* value, const void* offset, const void* mask, void* out,
                           const Params& p, bool mask_logits, cudaStream_t stream);

// grad_value_acc must be zero-initialised, (N, H, W, C), float32 for half dtypes (else `dtype`); grad_offset and
// grad_mask (dtype `dtype`) are fully overwritten, grad_mask with the gradient w.r.t. the logits under mask_logits.
cudaError_t launch_backward(DType dtype, const void* grad_output, const void* value, const void* offset,
                            const void* mask, void* grad_value_acc, void* grad_offset, void* grad_mask,
                            const Params& p, bool mask_logits, cudaStream_t stream);

}  // namespace cuda
}  // namespace dcnv3
