// Op registration and input validation for the DCNv3 kernel (the MSDA ops are validated in msda_binding.cpp, the
// DCNv4 ops in dcnv4_binding.cpp).
//
// The CPU implementation is registered in every build variant (a CUDA build also serves CPU tensors,
// which matters because the `kernels` resolver picks the CUDA variant whenever torch is a CUDA build);
// the CUDA implementation only where CUDA_KERNEL is defined.
#include <torch/library.h>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <tuple>

#include "registration.h"
#include "argument_checks.h"
#include "torch_binding.h"

namespace {

using argument_checks::check_nhwc_like_value;
using argument_checks::checked_add;
using argument_checks::checked_mul;
using argument_checks::conv_out_size;
using argument_checks::supported_dtype;

constexpr const char* kOp = "dcnv3";
constexpr const char* kCastHint = "cast offset and mask to value's dtype";

const char* const kForwardSchema =
    "dcnv3_forward(Tensor value, Tensor offset, Tensor mask, int kernel_h, int kernel_w, int stride_h, "
    "int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, int group_channels, "
    "float offset_scale, bool remove_center) -> Tensor";

const char* const kSoftmaxForwardSchema =
    "dcnv3_softmax_forward(Tensor value, Tensor offset, Tensor mask_logits, int kernel_h, int kernel_w, "
    "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, "
    "int group_channels, float offset_scale, bool remove_center) -> Tensor";

const char* const kSoftmaxBackwardSchema =
    "dcnv3_softmax_backward(Tensor grad_output, Tensor value, Tensor offset, Tensor mask_logits, int kernel_h, "
    "int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, "
    "int group_channels, float offset_scale, bool remove_center) -> (Tensor, Tensor, Tensor)";

const char* const kBackwardSchema =
    "dcnv3_backward(Tensor grad_output, Tensor value, Tensor offset, Tensor mask, int kernel_h, int kernel_w, "
    "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, "
    "int group_channels, float offset_scale, bool remove_center) -> (Tensor, Tensor, Tensor)";

const char* const kDepthwiseNormActSchema =
    "depthwise_norm_act(Tensor input, Tensor conv_weight, Tensor conv_bias, Tensor norm_weight, Tensor norm_bias, "
    "float eps, str activation) -> Tensor";

const char* const kMsdaForwardSchema =
    "msda_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
    "Tensor attention_weights) -> Tensor";

const char* const kMsdaBackwardSchema =
    "msda_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
    "Tensor sampling_locations, Tensor attention_weights) -> (Tensor, Tensor, Tensor)";

const char* const kDcnv4ForwardSchema =
    "dcnv4_forward(Tensor value, Tensor offset_mask, int kernel_h, int kernel_w, int stride_h, int stride_w, "
    "int pad_h, int pad_w, int dilation_h, int dilation_w, int group, int group_channels, float offset_scale, "
    "bool remove_center) -> Tensor";

const char* const kDcnv4BackwardSchema =
    "dcnv4_backward(Tensor grad_output, Tensor value, Tensor offset_mask, int kernel_h, int kernel_w, int stride_h, "
    "int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, int group_channels, "
    "float offset_scale, bool remove_center) -> (Tensor, Tensor)";

// Validates every argument and returns the call's Params. Messages name the offending argument.
dcnv3::Params make_params(const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask, int64_t kernel_h,
                          int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                          int64_t dilation_h, int64_t dilation_w, int64_t group, int64_t group_channels,
                          double offset_scale, bool remove_center) {
  TORCH_CHECK(value.defined(), "dcnv3: `value` is undefined");
  TORCH_CHECK(value.dim() == 4, "dcnv3: `value` must be a 4-D (N, H, W, C) tensor, got ", value.dim(),
              "-D shape ", value.sizes());
  TORCH_CHECK(supported_dtype(value.scalar_type()),
              "dcnv3: `value` must be float32, float64, float16 or bfloat16, got ", value.scalar_type());
  check_nhwc_like_value(kOp, offset, "offset", value, kCastHint);
  check_nhwc_like_value(kOp, mask, "mask", value, kCastHint);
  TORCH_CHECK(kernel_h >= 1 && kernel_w >= 1, "dcnv3: kernel size must be positive, got (", kernel_h, ", ",
              kernel_w, ")");
  TORCH_CHECK(stride_h >= 1 && stride_w >= 1, "dcnv3: stride must be positive, got (", stride_h, ", ", stride_w,
              ")");
  TORCH_CHECK(dilation_h >= 1 && dilation_w >= 1, "dcnv3: dilation must be positive, got (", dilation_h, ", ",
              dilation_w, ")");
  TORCH_CHECK(pad_h >= 0 && pad_w >= 0, "dcnv3: padding must be non-negative, got (", pad_h, ", ", pad_w, ")");
  TORCH_CHECK(group >= 1 && group_channels >= 1, "dcnv3: group (", group, ") and group_channels (",
              group_channels, ") must be positive");
  TORCH_CHECK(!remove_center || (kernel_h % 2 == 1 && kernel_w % 2 == 1),
              "dcnv3: remove_center needs odd kernel_h and kernel_w, got (", kernel_h, ", ", kernel_w, ")");
  const int64_t channels = checked_mul(kOp, group, group_channels, "group * group_channels");
  TORCH_CHECK(value.size(3) == channels, "dcnv3: `value` has ", value.size(3),
              " channels but group * group_channels = ", group, " * ", group_channels, " = ", channels);
  const int64_t points = checked_mul(kOp, kernel_h, kernel_w, "kernel_h * kernel_w") - (remove_center ? 1 : 0);
  const int64_t mask_channels = checked_mul(kOp, group, points, "group * points");
  const int64_t offset_channels = checked_mul(kOp, mask_channels, 2, "group * points * 2");

  dcnv3::Params p{};
  p.batch = value.size(0);
  p.height = value.size(1);
  p.width = value.size(2);
  p.channels = value.size(3);
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

  TORCH_CHECK(offset.size(0) == p.batch && offset.size(1) == p.out_h && offset.size(2) == p.out_w,
              "dcnv3: `offset` has shape ", offset.sizes(), " but (N, H_out, W_out) must be (", p.batch, ", ", p.out_h,
              ", ", p.out_w, ") for a ", kernel_h, "x", kernel_w, " kernel with stride (", stride_h, ", ", stride_w,
              "), pad (", pad_h, ", ", pad_w, "), dilation (", dilation_h, ", ", dilation_w, ") on a ", p.height, "x",
              p.width, " input");
  TORCH_CHECK(offset.size(3) == offset_channels, "dcnv3: `offset` must have group * points * 2 = ", group, " * ",
              points, " * 2 = ", offset_channels, " channels, got ", offset.size(3));
  TORCH_CHECK(mask.size(0) == p.batch && mask.size(1) == p.out_h && mask.size(2) == p.out_w, "dcnv3: `mask` has shape ",
              mask.sizes(), " but (N, H_out, W_out) must be (", p.batch, ", ", p.out_h, ", ", p.out_w, ")");
  TORCH_CHECK(mask.size(3) == mask_channels, "dcnv3: `mask` must have group * points = ", group, " * ", points,
              " = ", mask_channels, " channels, got ", mask.size(3));
  return p;
}

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& value, const dcnv3::Params& p) {
  check_nhwc_like_value(kOp, grad_output, "grad_output", value, kCastHint);
  TORCH_CHECK(grad_output.size(0) == p.batch && grad_output.size(1) == p.out_h && grad_output.size(2) == p.out_w &&
                  grad_output.size(3) == p.channels,
              "dcnv3: `grad_output` has shape ", grad_output.sizes(), " but the output shape is (", p.batch, ", ",
              p.out_h, ", ", p.out_w, ", ", p.channels, ")");
}

// The forward of both ops once the arguments are validated: the kernels index NHWC memory directly, so
// channels-last-strided or sliced inputs are copied once here.
at::Tensor run_forward(const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask,
                       const dcnv3::Params& p, bool mask_logits) {
  const at::Tensor v = value.contiguous();
  const at::Tensor o = offset.contiguous();
  const at::Tensor m = mask.contiguous();
#if defined(CUDA_KERNEL)
  if (v.is_cuda()) return dcnv3::forward_cuda(v, o, m, p, mask_logits);
#endif
  TORCH_CHECK(v.is_cpu(), "dcnv3: no implementation for device ", v.device(), " in this build");
  return dcnv3::forward_cpu(v, o, m, p, mask_logits);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_backward(const at::Tensor& grad_output, const at::Tensor& value,
                                                            const at::Tensor& offset, const at::Tensor& mask,
                                                            const dcnv3::Params& p, bool mask_logits) {
  check_grad_output(grad_output, value, p);
  const at::Tensor g = grad_output.contiguous();
  const at::Tensor v = value.contiguous();
  const at::Tensor o = offset.contiguous();
  const at::Tensor m = mask.contiguous();
#if defined(CUDA_KERNEL)
  if (v.is_cuda()) return dcnv3::backward_cuda(g, v, o, m, p, mask_logits);
#endif
  TORCH_CHECK(v.is_cpu(), "dcnv3: no implementation for device ", v.device(), " in this build");
  return mask_logits ? dcnv3::softmax_backward_cpu(g, v, o, m, p) : dcnv3::backward_cpu(g, v, o, m, p);
}

void check_channel_vector(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK(t.defined(), "depthwise_norm_act: `", name, "` is undefined");
  TORCH_CHECK(t.dim() == 1 && t.size(0) == input.size(3), "depthwise_norm_act: `", name, "` must have shape (",
              input.size(3), ",) for an input with ", input.size(3), " channels, got ", t.sizes());
  TORCH_CHECK(t.device() == input.device() && t.scalar_type() == input.scalar_type(), "depthwise_norm_act: `", name,
              "` is ", t.scalar_type(), " on ", t.device(), " but `input` is ", input.scalar_type(), " on ",
              input.device());
}

dcnv3::Activation parse_activation(c10::string_view name) {
  if (name == "gelu") return dcnv3::Activation::kGelu;
  if (name == "relu") return dcnv3::Activation::kRelu;
  if (name == "silu") return dcnv3::Activation::kSilu;
  TORCH_CHECK(false, "depthwise_norm_act: `activation` must be 'gelu', 'relu' or 'silu', got '", name, "'");
}

}  // namespace

at::Tensor depthwise_norm_act(const at::Tensor& input, const at::Tensor& conv_weight, const at::Tensor& conv_bias,
                              const at::Tensor& norm_weight, const at::Tensor& norm_bias, double eps,
                              c10::string_view activation) {
  TORCH_CHECK(input.defined() && input.dim() == 4, "depthwise_norm_act: `input` must be a 4-D (N, H, W, C) tensor");
  TORCH_CHECK(input.is_cpu() && input.scalar_type() == at::kFloat,
              "depthwise_norm_act: `input` must be a float32 CPU tensor (the fused inference path), got ",
              input.scalar_type(), " on ", input.device());
  TORCH_CHECK(conv_weight.defined() && conv_weight.dim() == 4 && conv_weight.size(0) == input.size(3) &&
                  conv_weight.size(1) == 1 && conv_weight.size(2) == conv_weight.size(3) && conv_weight.size(2) % 2,
              "depthwise_norm_act: `conv_weight` must have shape (C, 1, k, k) with odd k and C = ", input.size(3),
              " (the input's channels), got ", conv_weight.defined() ? conv_weight.sizes() : at::IntArrayRef{});
  TORCH_CHECK(conv_weight.device() == input.device() && conv_weight.scalar_type() == input.scalar_type(),
              "depthwise_norm_act: `conv_weight` is ", conv_weight.scalar_type(), " on ", conv_weight.device(),
              " but `input` is ", input.scalar_type(), " on ", input.device());
  check_channel_vector(conv_bias, "conv_bias", input);
  check_channel_vector(norm_weight, "norm_weight", input);
  check_channel_vector(norm_bias, "norm_bias", input);
  TORCH_CHECK(eps >= 0.0, "depthwise_norm_act: `eps` must be non-negative, got ", eps);
  return dcnv3::depthwise_norm_act_cpu(input.contiguous(), conv_weight.contiguous(), conv_bias.contiguous(),
                                       norm_weight.contiguous(), norm_bias.contiguous(), eps,
                                       parse_activation(activation));
}

at::Tensor dcnv3_forward(const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask, int64_t kernel_h,
                         int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                         int64_t dilation_h, int64_t dilation_w, int64_t group, int64_t group_channels,
                         double offset_scale, bool remove_center) {
  const dcnv3::Params p = make_params(value, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                      dilation_h, dilation_w, group, group_channels, offset_scale, remove_center);
  return run_forward(value, offset, mask, p, /*mask_logits=*/false);
}

at::Tensor dcnv3_softmax_forward(const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask_logits,
                                 int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                                 int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t group,
                                 int64_t group_channels, double offset_scale, bool remove_center) {
  const dcnv3::Params p = make_params(value, offset, mask_logits, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                      dilation_h, dilation_w, group, group_channels, offset_scale, remove_center);
  return run_forward(value, offset, mask_logits, p, /*mask_logits=*/true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask,
    int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t group, int64_t group_channels, double offset_scale,
    bool remove_center) {
  const dcnv3::Params p = make_params(value, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                      dilation_h, dilation_w, group, group_channels, offset_scale, remove_center);
  return run_backward(grad_output, value, offset, mask, p, /*mask_logits=*/false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_softmax_backward(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask_logits,
    int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t group, int64_t group_channels, double offset_scale,
    bool remove_center) {
  const dcnv3::Params p = make_params(value, offset, mask_logits, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                      dilation_h, dilation_w, group, group_channels, offset_scale, remove_center);
  return run_backward(grad_output, value, offset, mask_logits, p, /*mask_logits=*/true);
}

TORCH_LIBRARY_EXPAND(TORCH_EXTENSION_NAME, ops) {
  ops.def(kForwardSchema);
  ops.def(kSoftmaxForwardSchema);
  ops.def(kBackwardSchema);
  ops.def(kSoftmaxBackwardSchema);
  ops.impl("dcnv3_forward", c10::DeviceType::CPU, &dcnv3_forward);
  ops.impl("dcnv3_softmax_forward", c10::DeviceType::CPU, &dcnv3_softmax_forward);
  ops.impl("dcnv3_backward", c10::DeviceType::CPU, &dcnv3_backward);
  ops.impl("dcnv3_softmax_backward", c10::DeviceType::CPU, &dcnv3_softmax_backward);
  ops.def(kDepthwiseNormActSchema);
  ops.impl("depthwise_norm_act", c10::DeviceType::CPU, &depthwise_norm_act);
  ops.def(kMsdaForwardSchema);
  ops.def(kMsdaBackwardSchema);
  ops.impl("msda_forward", c10::DeviceType::CPU, &msda_forward);
  ops.impl("msda_backward", c10::DeviceType::CPU, &msda_backward);
  ops.def(kDcnv4ForwardSchema);
  ops.def(kDcnv4BackwardSchema);
  ops.impl("dcnv4_forward", c10::DeviceType::CPU, &dcnv4_forward);
  ops.impl("dcnv4_backward", c10::DeviceType::CPU, &dcnv4_backward);
#if defined(CUDA_KERNEL)
  ops.impl("dcnv3_forward", c10::DeviceType::CUDA, &dcnv3_forward);
  ops.impl("dcnv3_softmax_forward", c10::DeviceType::CUDA, &dcnv3_softmax_forward);
  ops.impl("dcnv3_backward", c10::DeviceType::CUDA, &dcnv3_backward);
  ops.impl("dcnv3_softmax_backward", c10::DeviceType::CUDA, &dcnv3_softmax_backward);
  ops.impl("msda_forward", c10::DeviceType::CUDA, &msda_forward);
  ops.impl("msda_backward", c10::DeviceType::CUDA, &msda_backward);
  ops.impl("dcnv4_forward", c10::DeviceType::CUDA, &dcnv4_forward);
  ops.impl("dcnv4_backward", c10::DeviceType::CUDA, &dcnv4_backward);
#endif
}

REGISTER_EXTENSION(TORCH_EXTENSION_NAME)
