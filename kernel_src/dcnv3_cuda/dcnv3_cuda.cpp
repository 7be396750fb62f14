// Torch-facing host side of the CUDA implementation: device guard, stream, allocation, dtype mapping.
// The kernels themselves live in dcnv3_kernels.cu, which sees raw pointers only.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <tuple>

#include "dcnv3_common/dcnv3_params.h"
#include "dcnv3_cuda/dcnv3_cuda_launch.h"
#include "torch_binding.h"

namespace dcnv3 {
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
      TORCH_CHECK(false, "dcnv3: unsupported dtype ", t, " on CUDA (expected float32, float64, float16 or bfloat16)");
  }
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "dcnv3: ", what, " kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace

at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask, const Params& p,
                        bool mask_logits) {
  const c10::cuda::CUDAGuard guard(value.device());
  at::Tensor output = at::empty({p.batch, p.out_h, p.out_w, p.channels}, value.options());
  if (output.numel() == 0) return output;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(value.device().index()).stream();
  check_launch(cuda::launch_forward(to_launch_dtype(value.scalar_type()), value.const_data_ptr(),
                                    offset.const_data_ptr(), mask.const_data_ptr(), output.mutable_data_ptr(), p,
                                    mask_logits, stream),
               "forward");
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_output, const at::Tensor& value,
                                                             const at::Tensor& offset, const at::Tensor& mask,
                                                             const Params& p, bool mask_logits) {
  const c10::cuda::CUDAGuard guard(value.device());
  // grad_value is an atomicAdd scatter: the summation order, and so the rounding, varies between runs.
  at::globalContext().alertNotDeterministic("dcnv3_backward_cuda");
  const bool reduced = value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
  // atomicAdd on half types is slow and lossy: accumulate grad_value in float32 and cast once.
  at::Tensor grad_value_acc =
      at::zeros(value.sizes(), value.options().dtype(reduced ? at::kFloat : value.scalar_type()));
  // The kernel writes every element of these two.
  at::Tensor grad_offset = at::empty(offset.sizes(), offset.options());
  at::Tensor grad_mask = at::empty(mask.sizes(), mask.options());
  if (grad_output.numel() > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(value.device().index()).stream();
    check_launch(cuda::launch_backward(to_launch_dtype(value.scalar_type()), grad_output.const_data_ptr(),
                                       value.const_data_ptr(), offset.const_data_ptr(), mask.const_data_ptr(),
                                       grad_value_acc.mutable_data_ptr(), grad_offset.mutable_data_ptr(),
                                       grad_mask.mutable_data_ptr(), p, mask_logits, stream),
                 "backward");
  }
  at::Tensor grad_value = reduced ? grad_value_acc.to(value.scalar_type()) : grad_value_acc;
  return {grad_value, grad_offset, grad_mask};
}

}  // namespace dcnv3
