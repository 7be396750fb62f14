// Declarations shared by the op registration (torch_binding.cpp) and the backend implementations.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "dcnv3_common/dcnv3_params.h"
#include "dcnv3_common/msda_sampling.h"

namespace dcnv3 {

// Backend implementations. Inputs are already validated, contiguous NHWC and of one dtype and device.
// mask_logits: `mask` holds logits; the softmax over each group's points is applied inside the loops.
at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask, const Params& p,
                       bool mask_logits);
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_output, const at::Tensor& value,
                                                            const at::Tensor& offset, const at::Tensor& mask,
                                                            const Params& p);
// backward_cpu for `mask_logits`: the third gradient is w.r.t. the logits (softmax Jacobian applied).
std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_backward_cpu(const at::Tensor& grad_output,
                                                                    const at::Tensor& value, const at::Tensor& offset,
                                                                    const at::Tensor& mask_logits, const Params& p);

// Activations of `depthwise_norm_act` (the ones InternImage configs use; GELU in its exact-erf form).
enum class Activation { kGelu, kRelu, kSilu };

// Depthwise k x k convolution (stride 1, zero padding k / 2, bias) + LayerNorm over channels + activation of a
// validated, contiguous float32 NHWC input. conv_weight (C, 1, k, k); conv_bias, norm_weight, norm_bias (C,).
at::Tensor depthwise_norm_act_cpu(const at::Tensor& input, const at::Tensor& conv_weight, const at::Tensor& conv_bias,
                                  const at::Tensor& norm_weight, const at::Tensor& norm_bias, double eps,
                                  Activation activation);

#if defined(CUDA_KERNEL)
// mask_logits: the softmax runs inside the kernels; the backward then returns the gradient w.r.t. the logits.
at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask, const Params& p,
                        bool mask_logits);
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_output, const at::Tensor& value,
                                                             const at::Tensor& offset, const at::Tensor& mask,
                                                             const Params& p, bool mask_logits);
#endif

}  // namespace dcnv3

// Op entry points (schema types: int -> int64_t, float -> double). They validate, make the inputs
// contiguous and dispatch to the backend matching the inputs' device.
at::Tensor dcnv3_forward(const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask, int64_t kernel_h,
                         int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                         int64_t dilation_h, int64_t dilation_w, int64_t group, int64_t group_channels,
                         double offset_scale, bool remove_center);

// dcnv3_forward with `mask_logits` normalised by a softmax over each group's points inside the op.
at::Tensor dcnv3_softmax_forward(const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask_logits,
                                 int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                                 int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t group,
                                 int64_t group_channels, double offset_scale, bool remove_center);

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask,
    int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t group, int64_t group_channels, double offset_scale,
    bool remove_center);

// dcnv3_backward of dcnv3_softmax_forward: (grad_value, grad_offset, grad_mask_logits).
std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_softmax_backward(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask_logits,
    int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t group, int64_t group_channels, double offset_scale,
    bool remove_center);

// depthwise_norm_act_cpu after validating every argument (CPU float32 only: it serves the inference path).
at::Tensor depthwise_norm_act(const at::Tensor& input, const at::Tensor& conv_weight, const at::Tensor& conv_bias,
                              const at::Tensor& norm_weight, const at::Tensor& norm_bias, double eps,
                              c10::string_view activation);

namespace msda {

// Multi-scale deformable attention backends. Inputs are validated and contiguous: value (N, S, M, D),
// spatial_shapes (L, 2) and level_start_index (L,) int64 on value's device, sampling_locations (N, Q, M, L, P, 2)
// and attention_weights (N, Q, M, L, P) in value's dtype. Output (N, Q, M * D).
at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                       const at::Tensor& sampling_locations, const at::Tensor& attention_weights, const Params& p);
// (grad_value, grad_sampling_locations, grad_attention_weights).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_output, const at::Tensor& value,
                                                            const at::Tensor& spatial_shapes,
                                                            const at::Tensor& level_start_index,
                                                            const at::Tensor& sampling_locations,
                                                            const at::Tensor& attention_weights, const Params& p);
#if defined(CUDA_KERNEL)
at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                        const at::Tensor& sampling_locations, const at::Tensor& attention_weights, const Params& p);
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_output, const at::Tensor& value,
                                                             const at::Tensor& spatial_shapes,
                                                             const at::Tensor& level_start_index,
                                                             const at::Tensor& sampling_locations,
                                                             const at::Tensor& attention_weights, const Params& p);
#endif

}  // namespace msda

// Multi-scale deformable attention (Deformable DETR's `MultiScaleDeformableAttention` without im2col_step) after
// validating every argument (msda_binding.cpp), on the inputs' device.
at::Tensor msda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                        const at::Tensor& sampling_locations, const at::Tensor& attention_weights);
std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_backward(const at::Tensor& grad_output, const at::Tensor& value,
                                                             const at::Tensor& spatial_shapes,
                                                             const at::Tensor& level_start_index,
                                                             const at::Tensor& sampling_locations,
                                                             const at::Tensor& attention_weights);

namespace dcnv4 {

// DCNv4 (FlashInternImage) backends. Inputs are validated and contiguous, of one dtype and device:
// value (N, H, W, G * Cg) and offset_mask (N, Ho, Wo, D) with D = offset_mask.size(3) >= G * P * 3, where group g
// owns columns [g * 3P, (g + 1) * 3P): first its P (dx, dy) pairs, then its P point weights, used as given (no
// softmax); columns from G * 3P on are padding and never read. Sampling as in DCNv3 (`p`). Output (N, Ho, Wo, G * Cg).
at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& offset_mask, const dcnv3::Params& p);
// (grad_value, grad_offset_mask); the padding columns of grad_offset_mask are zero.
std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_output, const at::Tensor& value,
                                                const at::Tensor& offset_mask, const dcnv3::Params& p);
#if defined(CUDA_KERNEL)
at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& offset_mask, const dcnv3::Params& p);
std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_output, const at::Tensor& value,
                                                 const at::Tensor& offset_mask, const dcnv3::Params& p);
#endif

}  // namespace dcnv4

// DCNv4 (FlashInternImage's sampling core) after validating every argument (dcnv4_binding.cpp), on the inputs'
// device: value (N, H, W, G * Cg), offset_mask (N, H_out, W_out, D >= G * P * 3) in the layout described above.
at::Tensor dcnv4_forward(const at::Tensor& value, const at::Tensor& offset_mask, int64_t kernel_h, int64_t kernel_w,
                         int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                         int64_t dilation_w, int64_t group, int64_t group_channels, double offset_scale,
                         bool remove_center);
// (grad_value, grad_offset_mask), the padding columns of grad_offset_mask zero.
std::tuple<at::Tensor, at::Tensor> dcnv4_backward(const at::Tensor& grad_output, const at::Tensor& value,
                                                  const at::Tensor& offset_mask, int64_t kernel_h, int64_t kernel_w,
                                                  int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                                  int64_t dilation_h, int64_t dilation_w, int64_t group,
                                                  int64_t group_channels, double offset_scale, bool remove_center);
