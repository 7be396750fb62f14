// Interface between the torch-facing host code (dcnv4_cuda.cpp) and the DCNv4 CUDA kernels (dcnv4_kernels.cu).
// Raw pointers only, so that the .cu translation unit does not include any torch header (fast nvcc).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dcnv3_common/dcnv3_params.h"
#include "dcnv3_cuda/dcnv3_cuda_launch.h"  // DType, LaunchShape

namespace dcnv4 {
namespace cuda {

using dcnv3::cuda::DType;
using dcnv3::cuda::LaunchShape;

// The shapes the launch functions use, exposed for tests and benchmarks (see dcnv3_cuda_launch.h for the fields).
// `offset_mask_dim` is D, the last size of offset_mask. Forward: the widest power of two (at most 16 bytes) dividing
// group_channels with value and out aligned to it. Backward: one channel per thread below compute capability 9 and
// for float64 (contiguous scalar atomics), float4 / float2 atomics from sm_90.
LaunchShape choose_forward_shape(DType dtype, const dcnv3::Params& p, int64_t offset_mask_dim, const void* value,
                                 const void* out, int sm_count);
LaunchShape choose_backward_shape(DType dtype, const dcnv3::Params& p, int64_t offset_mask_dim,
                                  const void* grad_output, const void* value, const void* grad_value_acc, int sm_count,
                                  int compute_major);

// out (N, Ho, Wo, G * Cg) = DCNv4 sampling of value (N, H, W, G * Cg) with offset_mask (N, Ho, Wo, D), on `stream`
// of the current device. Group g reads columns [g * 3P, (g + 1) * 3P) of offset_mask (P (dx, dy) pairs, then P
// weights used as given); the other columns are never read. All tensors NHWC contiguous, dtype `dtype`.
cudaError_t launch_forward(DType dtype, const void* value, const void* offset_mask, void* out, const dcnv3::Params& p,
                           int64_t offset_mask_dim, cudaStream_t stream);

// grad_value_acc must be zero-initialised, (N, H, W, G * Cg), float32 for half dtypes (else `dtype`);
// grad_offset_mask (N, Ho, Wo, D), dtype `dtype`, is fully overwritten (zeros in the columns from G * 3P on).
cudaError_t launch_backward(DType dtype, const void* grad_output, const void* value, const void* offset_mask,
                            void* grad_value_acc, void* grad_offset_mask, const dcnv3::Params& p,
                            int64_t offset_mask_dim, cudaStream_t stream);

}  // namespace cuda
}  // namespace dcnv4
