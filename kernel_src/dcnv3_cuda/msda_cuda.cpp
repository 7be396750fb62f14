// Torch-facing host side of the CUDA multi-scale deformable attention: device guard, stream, allocation, dtype
// mapping. The kernels live in msda_kernels.cu, which sees raw pointers only.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <tuple>

#include "dcnv3_common/msda_sampling.h"
#include "dcnv3_cuda/msda_cuda_launch.h"
#include "torch_binding.h"

namespace msda {
namespace {

cuda::DType to_launch_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return cuda::DType::kFloat32;
    case at::kDouble:
      return cuda::DType::kFloat64;
    case at::kHalf:
      return cuda::DType::kFloat16;
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "msda: unsupported dtype ", t, " on CUDA (expected float32, float64, float16 or bfloat16)");
  }
}

void check_channels(const Params& p) {
  TORCH_CHECK(p.channels <= cuda::kMaxChannels, "msda: `value` has ", p.channels,
              " channels per head; the CUDA kernels take at most ", cuda::kMaxChannels);
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "msda: ", what, " kernel launch failed: ", cudaGetErrorString(err));
}

cudaStream_t stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

}  // namespace

at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                        const at::Tensor& sampling_locations, const at::Tensor& attention_weights, const Params& p) {
  check_channels(p);
  const c10::cuda::CUDAGuard guard(value.device());
  at::Tensor output = at::empty({p.batch, p.queries, p.heads * p.channels}, value.options());
  if (output.numel() == 0) return output;
  check_launch(cuda::launch_forward(to_launch_dtype(value.scalar_type()), value.const_data_ptr(),
                                    spatial_shapes.const_data_ptr<int64_t>(),
                                    level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr(),
                                    attention_weights.const_data_ptr(), output.mutable_data_ptr(), p, stream_of(value)),
               "forward");
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_output, const at::Tensor& value,
                                                             const at::Tensor& spatial_shapes,
                                                             const at::Tensor& level_start_index,
                                                             const at::Tensor& sampling_locations,
                                                             const at::Tensor& attention_weights, const Params& p) {
  check_channels(p);
  const c10::cuda::CUDAGuard guard(value.device());
  // grad_value is an atomicAdd scatter: the summation order, and so the rounding, varies between runs.
  at::globalContext().alertNotDeterministic("msda_backward_cuda");
  const bool reduced = value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
  // atomicAdd on half types is slow and lossy: accumulate grad_value in float32 and cast once.
  at::Tensor grad_value_acc =
      at::zeros(value.sizes(), value.options().dtype(reduced ? at::kFloat : value.scalar_type()));
  // Zeroed: with no channels (D = 0) the kernel runs no thread, but the gradients are still defined as zeros.
  at::Tensor grad_locations = at::zeros(sampling_locations.sizes(), sampling_locations.options());
  at::Tensor grad_weights = at::zeros(attention_weights.sizes(), attention_weights.options());
  if (grad_output.numel() > 0) {
    check_launch(cuda::launch_backward(to_launch_dtype(value.scalar_type()), grad_output.const_data_ptr(),
                                       value.const_data_ptr(), spatial_shapes.const_data_ptr<int64_t>(),
                                       level_start_index.const_data_ptr<int64_t>(),
                                       sampling_locations.const_data_ptr(), attention_weights.const_data_ptr(),
                                       grad_value_acc.mutable_data_ptr(), grad_locations.mutable_data_ptr(),
                                       grad_weights.mutable_data_ptr(), p, stream_of(value)),
                 "backward");
  }
  at::Tensor grad_value = reduced ? grad_value_acc.to(value.scalar_type()) : grad_value_acc;
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace msda
