// DCNv3 sampling core on the CPU: forward and backward, NHWC, float32/float64/float16/bfloat16.
//
// Forward parallelises over output pixels (N * Ho * Wo); it optionally applies the softmax over each
// group's points to the mask itself (`mask_logits`). For each (pixel, group, point) the sampling
// location and the four bilinear weights are computed once and then applied to the group's
// contiguous channels, so the inner loop is a plain (vectorisable) axpy over channels and nothing of
// size P * activation is ever materialised.
//
// Backward parallelises over (image, range of groups) pairs, the groups split only as far as needed to give every
// thread work: each task owns the slice grad_value[n, :, :, channels of its groups], so the bilinear scatter needs
// no atomics and the result is deterministic (and the same for any thread count). Offset and mask gradients are
// reductions over each group's channels computed in the same pass; for `mask_logits` the softmax weights are
// recomputed per pixel and its Jacobian applied in that pass too. For the official group widths (16 and 32
// channels) the dot products and the scatter run in whole vector registers.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "dcnv3_common/dcnv3_params.h"
#include "dcnv3_common/dcnv3_sampling.h"
#include "dcnv3_cpu/cpu_isa.h"

// Baseline build of the loops (any CPU).
#define DCNV3_CPU_ISA baseline
#include "dcnv3_cpu/dcnv3_cpu_impl.h"
#undef DCNV3_CPU_ISA

// The same loops for AVX2 + FMA and for AVX-512, chosen at run time (cpu_isa.h).
#define DCNV3_CPU_IMPL "dcnv3_cpu/dcnv3_cpu_impl.h"
#include "dcnv3_cpu/avx2_variant.h"
#include "dcnv3_cpu/avx512_variant.h"
#undef DCNV3_CPU_IMPL

namespace dcnv3 {
namespace {

template <typename scalar_t>
void forward_dispatch(const scalar_t* value, const scalar_t* offset, const scalar_t* mask, scalar_t* out,
                      const Params& p, bool mask_logits) {
  [[maybe_unused]] const CpuIsa isa = cpu_isa();
#if defined(DCNV3_HAVE_AVX512_PATH)
  if (isa == CpuIsa::kAvx512) return avx512::forward_typed<scalar_t>(value, offset, mask, out, p, mask_logits);
#endif
#if defined(DCNV3_HAVE_AVX2_PATH)
  if (isa == CpuIsa::kAvx2) return avx2::forward_typed<scalar_t>(value, offset, mask, out, p, mask_logits);
#endif
  baseline::forward_typed<scalar_t>(value, offset, mask, out, p, mask_logits);
}

template <typename scalar_t, typename grad_t>
void backward_dispatch(const scalar_t* grad_output, const scalar_t* value, const scalar_t* offset,
                       const scalar_t* mask, grad_t* grad_value, scalar_t* grad_offset, scalar_t* grad_mask,
                       const Params& p, bool mask_logits) {
  [[maybe_unused]] const CpuIsa isa = cpu_isa();
#if defined(DCNV3_HAVE_AVX512_PATH)
  if (isa == CpuIsa::kAvx512) {
    return avx512::backward_typed<scalar_t, grad_t>(grad_output, value, offset, mask, grad_value, grad_offset,
                                                    grad_mask, p, mask_logits);
  }
#endif
#if defined(DCNV3_HAVE_AVX2_PATH)
  if (isa == CpuIsa::kAvx2) {
    return avx2::backward_typed<scalar_t, grad_t>(grad_output, value, offset, mask, grad_value, grad_offset,
                                                  grad_mask, p, mask_logits);
  }
#endif
  baseline::backward_typed<scalar_t, grad_t>(grad_output, value, offset, mask, grad_value, grad_offset, grad_mask,
                                             p, mask_logits);
}

}  // namespace


at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& offset, const at::Tensor& mask, const Params& p,
                       bool mask_logits) {
  // The forward keeps per-image pixel indices in int32 (they vectorise on AVX2; int64 products do not).
  TORCH_CHECK(p.height * p.width <= std::numeric_limits<int32_t>::max(), "dcnv3 (CPU): `value` images of ", p.height,
              "x", p.width, " pixels exceed 2^31 pixels");
  at::Tensor output = at::empty({p.batch, p.out_h, p.out_w, p.channels}, value.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "dcnv3_forward_cpu", [&] {
    forward_dispatch<scalar_t>(value.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(),
                            mask.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), p, mask_logits);
  });
  return output;
}

namespace {

// Gradients w.r.t. value, offset and mask (or, with `mask_logits`, w.r.t. the logits the forward softmax-normalised).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad_output, const at::Tensor& value,
                                                             const at::Tensor& offset, const at::Tensor& mask,
                                                             const Params& p, bool mask_logits) {
  const bool reduced = value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
  // Half-precision gradients of value accumulate in float32, then are cast once at the end.
  at::Tensor grad_value_acc = at::zeros(value.sizes(), value.options().dtype(reduced ? at::kFloat : value.scalar_type()));
  at::Tensor grad_offset = at::empty(offset.sizes(), offset.options());
  at::Tensor grad_mask = at::empty(mask.sizes(), mask.options());
  if (grad_output.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "dcnv3_backward_cpu", [&] {
      using grad_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      backward_dispatch<scalar_t, grad_t>(grad_output.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
                                       offset.const_data_ptr<scalar_t>(), mask.const_data_ptr<scalar_t>(),
                                       grad_value_acc.mutable_data_ptr<grad_t>(), grad_offset.mutable_data_ptr<scalar_t>(),
                                       grad_mask.mutable_data_ptr<scalar_t>(), p, mask_logits);
    });
  } else {
    grad_offset.zero_();
    grad_mask.zero_();
  }
  at::Tensor grad_value = reduced ? grad_value_acc.to(value.scalar_type()) : grad_value_acc;
  return {grad_value, grad_offset, grad_mask};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_output, const at::Tensor& value,
                                                            const at::Tensor& offset, const at::Tensor& mask,
                                                            const Params& p) {
  return backward_impl(grad_output, value, offset, mask, p, /*mask_logits=*/false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_backward_cpu(const at::Tensor& grad_output,
                                                                    const at::Tensor& value, const at::Tensor& offset,
                                                                    const at::Tensor& mask_logits, const Params& p) {
  return backward_impl(grad_output, value, offset, mask_logits, p, /*mask_logits=*/p.points > 0);
}

}  // namespace dcnv3
