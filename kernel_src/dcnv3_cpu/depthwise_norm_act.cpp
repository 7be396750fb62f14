// Depthwise convolution + LayerNorm over channels + activation in one pass over NHWC float32 (CPU, inference).
//
// In InternImage's DCNv3 operator this predicts the query that the offset and point-weight projections read.
// As separate operators it costs three dispatches and three passes through memory per block (the convolution's
// output, the normalised copy, the activated copy); here each output pixel is convolved, normalised and activated
// while it sits in cache. Parallel over output rows; each pixel reads its k x k input neighbours' channel rows.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "torch-ext/torch_binding.h"

namespace dcnv3 {

// One call's shapes and parameters; `taps` is the convolution weight laid out [kernel * kernel][channels].
struct DepthwiseNormAct {
  int64_t height;
  int64_t width;
  int64_t channels;
  int64_t kernel;
  const float* taps;
  const float* conv_bias;
  const float* norm_weight;
  const float* norm_bias;
  float eps;
  Activation activation;
};

}  // namespace dcnv3

// Baseline build of the loops (any CPU). no-trapping-math lets GCC if-convert the activations' selects so that
// their loops vectorise (nothing here reads the floating-point exception flags); the loops call no library
// function, which the differing optimisation options would keep from being inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif
#define DCNV3_CPU_ISA baseline
#include "dcnv3_cpu/depthwise_norm_act_impl.h"
#undef DCNV3_CPU_ISA
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// The same loops for AVX2 + FMA, chosen at run time.
#define DCNV3_CPU_IMPL "dcnv3_cpu/depthwise_norm_act_impl.h"
#include "dcnv3_cpu/avx2_variant.h"
#undef DCNV3_CPU_IMPL

namespace dcnv3 {

at::Tensor depthwise_norm_act_cpu(const at::Tensor& input, const at::Tensor& conv_weight, const at::Tensor& conv_bias,
                                  const at::Tensor& norm_weight, const at::Tensor& norm_bias, double eps,
                                  Activation activation) {
  const int64_t batch = input.size(0);
  const int64_t channels = input.size(3);
  const int64_t kernel = conv_weight.size(2);
  // (C, 1, k, k) -> [k * k][C], so that every tap's weights are contiguous like the channels they multiply.
  std::vector<float> taps(kernel * kernel * channels);
  const float* weight = conv_weight.const_data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t t = 0; t < kernel * kernel; ++t) taps[t * channels + c] = weight[c * kernel * kernel + t];
  }
  const DepthwiseNormAct s{input.size(1), input.size(2), channels, kernel, taps.data(),
                           conv_bias.const_data_ptr<float>(), norm_weight.const_data_ptr<float>(),
                           norm_bias.const_data_ptr<float>(), static_cast<float>(eps), activation};
  at::Tensor output = at::empty(input.sizes(), input.options());
  if (output.numel() == 0) return output;
  const float* in = input.const_data_ptr<float>();
  float* out = output.mutable_data_ptr<float>();
  const std::vector<float> zeros(channels, 0.0f);  // what taps in the zero padding read
  // Rows of about 16k outputs or more per task: smaller ones cost more in scheduling than they save.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, s.width * channels));
  at::parallel_for(0, batch * s.height, grain, [&](int64_t begin, int64_t end) {
#if defined(DCNV3_HAVE_AVX2_PATH)
    static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2) return avx2::depthwise_norm_act_rows(in, zeros.data(), s, out, begin, end);
#endif
    baseline::depthwise_norm_act_rows(in, zeros.data(), s, out, begin, end);
  });
  return output;
}

}  // namespace dcnv3
