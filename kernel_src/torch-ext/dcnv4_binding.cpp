// Input validation and device dispatch of the DCNv4 ops (registered in torch_binding.cpp). Messages name the
// offending argument. Unlike the official op there is no batch-size (im2col_step) restriction and any group width
// is accepted.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <tuple>

#include "dcnv3_common/dcnv3_params.h"
#include "argument_checks.h"
#include "torch_binding.h"

namespace {

using argument_checks::check_nhwc_like_value;
using argument_checks::checked_add;
using argument_checks::checked_mul;
using argument_checks::conv_out_size;
using argument_checks::supported_dtype;

constexpr const char* kOp = "dcnv4";
constexpr const char* kCastHint = "cast it to value's dtype";

// Validates every argument and returns the call's Params. Messages name the offending argument.
dcnv3::Params make_params(const at::Tensor& value, const at::Tensor& offset_mask, int64_t kernel_h, int64_t kernel_w,
                          int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                          int64_t dilation_w, int64_t group, int64_t group_channels, double offset_scale,
                          bool remove_center) {
  TORCH_CHECK(value.defined(), "dcnv4: `value` is undefined");
  TORCH_CHECK(value.dim() == 4, "dcnv4: `value` must be a 4-D (N, H, W, C) tensor, got ", value.dim(), "-D shape ",
              value.sizes());
  TORCH_CHECK(supported_dtype(value.scalar_type()),
              "dcnv4: `value` must be float32, float64, float16 or bfloat16, got ", value.scalar_type());
  check_nhwc_like_value(kOp, offset_mask, "offset_mask", value, kCastHint);
  TORCH_CHECK(kernel_h >= 1 && kernel_w >= 1, "dcnv4: `kernel_h` and `kernel_w` must be positive, got (", kernel_h,
              ", ", kernel_w, ")");
  TORCH_CHECK(stride_h >= 1 && stride_w >= 1, "dcnv4: `stride_h` and `stride_w` must be positive, got (", stride_h,
              ", ", stride_w, ")");
  TORCH_CHECK(dilation_h >= 1 && dilation_w >= 1, "dcnv4: `dilation_h` and `dilation_w` must be positive, got (",
              dilation_h, ", ", dilation_w, ")");
  TORCH_CHECK(pad_h >= 0 && pad_w >= 0, "dcnv4: `pad_h` and `pad_w` must be non-negative, got (", pad_h, ", ", pad_w,
              ")");
  TORCH_CHECK(group >= 1, "dcnv4: `group` must be positive, got ", group);
  TORCH_CHECK(group_channels >= 1, "dcnv4: `group_channels` must be positive, got ", group_channels);
  TORCH_CHECK(!remove_center || (kernel_h % 2 == 1 && kernel_w % 2 == 1),
              "dcnv4: `remove_center` needs odd `kernel_h` and `kernel_w`, got (", kernel_h, ", ", kernel_w, ")");
  const int64_t channels = checked_mul(kOp, group, group_channels, "group * group_channels");
  TORCH_CHECK(value.size(3) == channels, "dcnv4: `value` has ", value.size(3),
              " channels but group * group_channels = ", group, " * ", group_channels, " = ", channels);
  const int64_t points = checked_mul(kOp, kernel_h, kernel_w, "kernel_h * kernel_w") - (remove_center ? 1 : 0);
  const int64_t used_columns = checked_mul(kOp, checked_mul(kOp, group, points, "group * points"), 3, "group * points * 3");

  dcnv3::Params p{};
  p.batch = value.size(0);
  p.height = value.size(1);
  p.width = value.size(2);
  p.channels = channels;
  p.out_h = conv_out_size(kOp, p.height, kernel_h, stride_h, pad_h, dilation_h);
  p.out_w = conv_out_size(kOp, p.width, kernel_w, stride_w, pad_w, dilation_w);
  p.kernel_h = kernel_h;
  p.kernel_w = kernel_w;
  p.stride_h = stride_h;
  p.stride_w = stride_w;
  p.pad_h = pad_h;
  p.pad_w = pad_w;
  p.dilation_h = dilation_h;
  p.dilation_w = dilation_w;
  p.group = group;
  p.group_channels = group_channels;
  p.points = points;
  p.offset_scale = offset_scale;
  p.remove_center = remove_center;

  TORCH_CHECK(offset_mask.size(0) == p.batch && offset_mask.size(1) == p.out_h && offset_mask.size(2) == p.out_w,
              "dcnv4: `offset_mask` has shape ", offset_mask.sizes(), " but (N, H_out, W_out) must be (", p.batch, ", ",
              p.out_h, ", ", p.out_w, ") for a ", kernel_h, "x", kernel_w, " kernel with stride (", stride_h, ", ",
              stride_w, "), pad (", pad_h, ", ", pad_w, "), dilation (", dilation_h, ", ", dilation_w, ") on a ",
              p.height, "x", p.width, " input");
  TORCH_CHECK(offset_mask.size(3) >= used_columns, "dcnv4: `offset_mask` must have at least group * points * 3 = ",
              group, " * ", points, " * 3 = ", used_columns, " channels, got ", offset_mask.size(3));
  return p;
}

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& value, const dcnv3::Params& p) {
  check_nhwc_like_value(kOp, grad_output, "grad_output", value, kCastHint);
  TORCH_CHECK(grad_output.size(0) == p.batch && grad_output.size(1) == p.out_h && grad_output.size(2) == p.out_w &&
                  grad_output.size(3) == p.channels,
              "dcnv4: `grad_output` has shape ", grad_output.sizes(), " but the output shape is (", p.batch, ", ",
              p.out_h, ", ", p.out_w, ", ", p.channels, ")");
}

}  // namespace

at::Tensor dcnv4_forward(const at::Tensor& value, const at::Tensor& offset_mask, int64_t kernel_h, int64_t kernel_w,
                         int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                         int64_t dilation_w, int64_t group, int64_t group_channels, double offset_scale,
                         bool remove_center) {
  const dcnv3::Params p = make_params(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                      dilation_h, dilation_w, group, group_channels, offset_scale, remove_center);
  // The loops index NHWC memory directly: strided or sliced inputs are copied once here.
  const at::Tensor v = value.contiguous();
  const at::Tensor om = offset_mask.contiguous();
#if defined(CUDA_KERNEL)
  if (v.is_cuda()) return dcnv4::forward_cuda(v, om, p);
#endif
  TORCH_CHECK(v.is_cpu(), "dcnv4: no implementation for device ", v.device(), " in this build");
  return dcnv4::forward_cpu(v, om, p);
}

std::tuple<at::Tensor, at::Tensor> dcnv4_backward(const at::Tensor& grad_output, const at::Tensor& value,
                                                  const at::Tensor& offset_mask, int64_t kernel_h, int64_t kernel_w,
                                                  int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                                  int64_t dilation_h, int64_t dilation_w, int64_t group,
                                                  int64_t group_channels, double offset_scale, bool remove_center) {
  const dcnv3::Params p = make_params(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                      dilation_h, dilation_w, group, group_channels, offset_scale, remove_center);
  check_grad_output(grad_output, value, p);
  const at::Tensor g = grad_output.contiguous();
  const at::Tensor v = value.contiguous();
  const at::Tensor om = offset_mask.contiguous();
#if defined(CUDA_KERNEL)
  if (v.is_cuda()) return dcnv4::backward_cuda(g, v, om, p);
#endif
  TORCH_CHECK(v.is_cpu(), "dcnv4: no implementation for device ", v.device(), " in this build");
  return dcnv4::backward_cpu(g, v, om, p);
}
