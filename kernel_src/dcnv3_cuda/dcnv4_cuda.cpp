// Torch-facing host side of the DCNv4 CUDA implementation: device guard, stream, allocation, dtype mapping.
// The kernels themselves live in dcnv4_kernels.cu, which sees raw pointers only.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <tuple>

#include "dcnv3_common/dcnv3_params.h"
#include "dcnv3_cuda/dcnv4_cuda_launch.h"
#include "torch_binding.h"

namespace dcnv4 {
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
      TORCH_CHECK(false, "dcnv4: unsupported dtype ", t, " of `value` on CUDA (expected float32, float64, float16 or ",
                  "bfloat16)");
  }
}

// The kernels read each group's 3P columns of offset_mask; the op registration validates this, the kernels rely on it.
void check_offset_mask(const at::Tensor& offset_mask, const dcnv3::Params& p) {
  TORCH_CHECK(offset_mask.dim() == 4 && offset_mask.size(3) >= p.group * p.points * 3,
              "dcnv4: `offset_mask` must be (N, H_out, W_out, D) with D >= group * points * 3 = ",
              p.group * p.points * 3, ", got ", offset_mask.sizes());
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "dcnv4: ", what, " kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace

at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& offset_mask, const dcnv3::Params& p) {
  check_offset_mask(offset_mask, p);
  const c10::cuda::CUDAGuard guard(value.device());
  at::Tensor output = at::empty({p.batch, p.out_h, p.out_w, p.channels}, value.options());
  if (output.numel() == 0) return output;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(value.device().index()).stream();
  check_launch(cuda::launch_forward(to_launch_dtype(value.scalar_type()), value.const_data_ptr(),
                                    offset_mask.const_data_ptr(), output.mutable_data_ptr(), p, offset_mask.size(3),
                                    stream),
               "forward");
  return output;
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_output, const at::Tensor& value,
                                                 const at::Tensor& offset_mask, const dcnv3::Params& p) {
  check_offset_mask(offset_mask, p);
  const c10::cuda::CUDAGuard guard(value.device());
  // grad_value is an atomicAdd scatter: the summation order, and so the rounding, varies between runs.
  at::globalContext().alertNotDeterministic("dcnv4_backward_cuda");
  const bool reduced = value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
  // atomicAdd on half types is slow and lossy: accumulate grad_value in float32 and cast once.
  at::Tensor grad_value_acc =
      at::zeros(value.sizes(), value.options().dtype(reduced ? at::kFloat : value.scalar_type()));
  // The kernel writes every element, the padding columns included (zeros).
  at::Tensor grad_offset_mask = at::empty(offset_mask.sizes(), offset_mask.options());
  if (grad_output.numel() > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(value.device().index()).stream();
    check_launch(cuda::launch_backward(to_launch_dtype(value.scalar_type()), grad_output.const_data_ptr(),
                                       value.const_data_ptr(), offset_mask.const_data_ptr(),
                                       grad_value_acc.mutable_data_ptr(), grad_offset_mask.mutable_data_ptr(), p,
                                       offset_mask.size(3), stream),
                 "backward");
  } else {
    grad_offset_mask.zero_();
  }
  at::Tensor grad_value = reduced ? grad_value_acc.to(value.scalar_type()) : grad_value_acc;
  return {grad_value, grad_offset_mask};
}

}  // namespace dcnv4
