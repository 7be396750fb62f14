// DCNv4 sampling core on the CPU: forward and backward, NHWC, float32/float64/float16/bfloat16 (half types computed
// in float32).
//
// DCNv4 samples as DCNv3 but takes the offsets and point weights of a pixel fused in one row and applies the
// weights as given (no softmax). Forward parallelises over output pixels: the row is read once, the sampling
// location and four bilinear corner weights of every (group, point) are computed once in a vectorised pass, and
// each group's channels are then gathered with the sums held in registers across the group's points (see
// `sample_block`). Compared with the DCNv3 op it saves the softmax and the accumulator round trips through memory.
//
// Backward parallelises over (image, range of groups) pairs like the DCNv3 backward: each task owns the slice
// grad_value[n, :, :, channels of its groups], so the bilinear scatter needs no atomics and the result is
// deterministic (and the same for any thread count). Offset and weight gradients are reductions over each group's
// channels computed in the same pass and written back in the fused layout; the padding columns get zeros.
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
#include "torch_binding.h"

// Baseline build of the loops (any CPU).
#define DCNV3_CPU_ISA baseline
#include "dcnv3_cpu/dcnv4_cpu_impl.h"
#undef DCNV3_CPU_ISA

// The same loops for AVX2 + FMA and for AVX-512, chosen at run time (cpu_isa.h).
#define DCNV3_CPU_IMPL "dcnv3_cpu/dcnv4_cpu_impl.h"
#include "dcnv3_cpu/avx2_variant.h"
#include "dcnv3_cpu/avx512_variant.h"
#undef DCNV3_CPU_IMPL

namespace dcnv4 {
namespace {

template <typename scalar_t>
void forward_dispatch(const scalar_t* value, const scalar_t* offset_mask, scalar_t* out, const dcnv3::Params& p,
                      int64_t row_width) {
  [[maybe_unused]] const dcnv3::CpuIsa isa = dcnv3::cpu_isa();
#if defined(DCNV3_HAVE_AVX512_PATH)
  if (isa == dcnv3::CpuIsa::kAvx512) return avx512::forward_typed<scalar_t>(value, offset_mask, out, p, row_width);
#endif
#if defined(DCNV3_HAVE_AVX2_PATH)
  if (isa == dcnv3::CpuIsa::kAvx2) return avx2::forward_typed<scalar_t>(value, offset_mask, out, p, row_width);
#endif
  baseline::forward_typed<scalar_t>(value, offset_mask, out, p, row_width);
}

template <typename scalar_t, typename grad_t>
void backward_dispatch(const scalar_t* grad_output, const scalar_t* value, const scalar_t* offset_mask,
                       grad_t* grad_value, scalar_t* grad_offset_mask, const dcnv3::Params& p, int64_t row_width) {
  [[maybe_unused]] const dcnv3::CpuIsa isa = dcnv3::cpu_isa();
#if defined(DCNV3_HAVE_AVX512_PATH)
  if (isa == dcnv3::CpuIsa::kAvx512) {
    return avx512::backward_typed<scalar_t, grad_t>(grad_output, value, offset_mask, grad_value, grad_offset_mask, p,
                                                    row_width);
  }
#endif
#if defined(DCNV3_HAVE_AVX2_PATH)
  if (isa == dcnv3::CpuIsa::kAvx2) {
    return avx2::backward_typed<scalar_t, grad_t>(grad_output, value, offset_mask, grad_value, grad_offset_mask, p,
                                                  row_width);
  }
#endif
  baseline::backward_typed<scalar_t, grad_t>(grad_output, value, offset_mask, grad_value, grad_offset_mask, p,
                                             row_width);
}

// The loops keep per-image element offsets in int32 (they vectorise on AVX2; int64 products do not). The binding
// has checked that H * W * C does not overflow int64.
void check_image_size(const dcnv3::Params& p) {
  TORCH_CHECK(p.height * p.width * p.channels <= std::numeric_limits<int32_t>::max(), "dcnv4 (CPU): `value` images of ",
              p.height, "x", p.width, "x", p.channels, " values exceed 2^31 values");
}

}  // namespace

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& offset_mask, const dcnv3::Params& p) {
  check_image_size(p);
  at::Tensor output = at::empty({p.batch, p.out_h, p.out_w, p.channels}, value.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "dcnv4_forward_cpu", [&] {
    forward_dispatch<scalar_t>(value.const_data_ptr<scalar_t>(), offset_mask.const_data_ptr<scalar_t>(),
                               output.mutable_data_ptr<scalar_t>(), p, offset_mask.size(3));
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_output, const at::Tensor& value,
                                                const at::Tensor& offset_mask, const dcnv3::Params& p) {
  check_image_size(p);
  const bool reduced = value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
  // Half-precision gradients of value accumulate in float32, then are cast once at the end.
  at::Tensor grad_value_acc =
      at::zeros(value.sizes(), value.options().dtype(reduced ? at::kFloat : value.scalar_type()));
  at::Tensor grad_offset_mask = at::empty(offset_mask.sizes(), offset_mask.options());
  const int64_t used = p.group * p.points * 3;
  grad_offset_mask.narrow(3, used, offset_mask.size(3) - used).zero_();  // the padding columns are never read
  if (grad_output.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "dcnv4_backward_cpu", [&] {
      using grad_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      backward_dispatch<scalar_t, grad_t>(grad_output.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
                                          offset_mask.const_data_ptr<scalar_t>(),
                                          grad_value_acc.mutable_data_ptr<grad_t>(),
                                          grad_offset_mask.mutable_data_ptr<scalar_t>(), p, offset_mask.size(3));
    });
  } else {
    grad_offset_mask.zero_();
  }
  at::Tensor grad_value = reduced ? grad_value_acc.to(value.scalar_type()) : grad_value_acc;
  return {grad_value, grad_offset_mask};
}

}  // namespace dcnv4
