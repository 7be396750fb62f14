// Loops of the fused depthwise convolution + LayerNorm + activation (float32, NHWC), included twice by
// depthwise_norm_act.cpp: once for baseline x86-64 / other architectures and once for AVX2 + FMA through
// avx2_variant.h (namespace DCNV3_CPU_ISA), picked at run time. No include guard on purpose.
#ifndef DCNV3_CPU_ISA
#error "define DCNV3_CPU_ISA before including depthwise_norm_act_impl.h"
#endif

namespace dcnv3 {
namespace DCNV3_CPU_ISA {

// exp(v) for v <= 0 in plain float arithmetic, so that loops calling it vectorise (libm's expf is a call).
// 2^n * e^r with n = round(v / ln 2), r in [-ln2 / 2, ln2 / 2], e^r by its Taylor series to r^7 (relative error
// below 1e-8). Arguments below -87 give e^-87 (~1.6e-38; callers only add or multiply it); NaN stays NaN.
inline float exp_nonpositive(float v) {
  v = v < -87.0f ? -87.0f : v;
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds a float of magnitude < 2^22 to an integer
  const float n = (v * 1.44269504088896341f + round_magic) - round_magic;
  const float r = (v - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;  // ln 2 split in two for exactness
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t exponent = (static_cast<int32_t>(n) + 127) << 23;  // n in [-126, 0]: a normal power of two
  float scale;
  std::memcpy(&scale, &exponent, sizeof(scale));
  return p * scale;
}

// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), odd in x.
inline float erf_approx(float x) {
  const float a = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f +
                                                                                     t * 1.061405429f))));
  const float y = 1.0f - poly * exp_nonpositive(-a * a);
  return x < 0.0f ? -y : y;
}

// The activations of InternImage configs.
template <Activation act>
inline float activate(float x) {
  if constexpr (act == Activation::kGelu) {
    return 0.5f * x * (1.0f + erf_approx(x * 0.70710678118654752f));
  } else if constexpr (act == Activation::kRelu) {
    return x < 0.0f ? 0.0f : x;
  } else {
    const float e = exp_nonpositive(x < 0.0f ? x : -x);  // sigmoid from e^-|x|: no overflow on either side
    return x * (x < 0.0f ? e : 1.0f) / (1.0f + e);
  }
}

// out[c] = bias[c] + sum over taps t of weight[t][c] * src[t][c]: all taps of a channel in registers, one store.
// kTaps > 0 fixes the tap count at compile time (the loop over taps unrolls and the channel loop vectorises);
// 0 takes it from `taps`.
template <int kTaps>
inline void convolve_pixel(const float* const* src, const float* weight, const float* bias, int64_t channels,
                           int64_t taps, float* __restrict__ out) {
  const int64_t count = kTaps > 0 ? kTaps : taps;
  // The source rows are only read and never overlap `out`, which GCC cannot prove for pointers from an array.
#pragma GCC ivdep
  for (int64_t c = 0; c < channels; ++c) {
    float acc = bias[c];
    for (int64_t t = 0; t < count; ++t) acc += weight[t * channels + c] * src[t][c];
    out[c] = acc;
  }
}

// Sum of the 8 lanes as a tree (depth 3): a serial sum would put 8 dependent adds on every pixel's critical path.
inline float lane_sum(const float* __restrict__ lanes) {
  return ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
}

// Sum of term(x[c]) over c in [0, n), in 8 interleaved partial sums (a strict left-to-right float sum does not
// vectorise).
template <typename Term>
inline float sum_over(const float* __restrict__ x, int64_t n, Term term) {
  float partial[8] = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    for (int j = 0; j < 8; ++j) partial[j] += term(x[c + j]);
  }
  for (int j = 0; c < n; ++c, ++j) partial[j] += term(x[c]);
  return lane_sum(partial);
}

// LayerNorm over the channels of one pixel (two passes: the mean, then the variance around it) and the activation.
template <Activation act>
inline void normalize_activate(float* __restrict__ x, const DepthwiseNormAct& s) {
  const int64_t C = s.channels;
  const float mean = sum_over(x, C, [](float v) { return v; }) / static_cast<float>(C);
  const float variance = sum_over(x, C, [mean](float v) { return (v - mean) * (v - mean); }) / static_cast<float>(C);
  const float rstd = 1.0f / __builtin_sqrtf(variance + s.eps);
  const float* __restrict__ gamma = s.norm_weight;
  const float* __restrict__ beta = s.norm_bias;
  for (int64_t c = 0; c < C; ++c) x[c] = activate<act>((x[c] - mean) * rstd * gamma[c] + beta[c]);
}

// Rows [row_begin, row_end) of the N * H output rows. Taps outside the image read `zeros` (the zero padding), so
// every pixel has the same tap count.
template <int kTaps, Activation act>
void rows_for(const float* input, const float* zeros, const DepthwiseNormAct& s, float* output, int64_t row_begin,
              int64_t row_end) {
  const int64_t C = s.channels;
  const int64_t k = s.kernel;
  const int64_t radius = k / 2;
  std::vector<const float*> src(k * k);
  // Element offsets of the taps from the pixel's own position, for pixels whose taps are all inside the image.
  std::vector<int64_t> interior_offset(k * k);
  for (int64_t t = 0; t < k * k; ++t) interior_offset[t] = ((t / k - radius) * s.width + t % k - radius) * C;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / s.height;
    const int64_t h = row % s.height;
    const bool interior_row = h >= radius && h + radius < s.height;
    for (int64_t w = 0; w < s.width; ++w) {
      const float* pixel = input + (row * s.width + w) * C;
      if (interior_row && w >= radius && w + radius < s.width) {
        for (int64_t t = 0; t < k * k; ++t) src[t] = pixel + interior_offset[t];
      } else {
        for (int64_t dy = 0; dy < k; ++dy) {
          const int64_t y = h + dy - radius;
          for (int64_t dx = 0; dx < k; ++dx) {
            const int64_t x = w + dx - radius;
            const bool inside = y >= 0 && y < s.height && x >= 0 && x < s.width;
            src[dy * k + dx] = inside ? input + ((n * s.height + y) * s.width + x) * C : zeros;
          }
        }
      }
      float* out = output + (row * s.width + w) * C;
      convolve_pixel<kTaps>(src.data(), s.taps, s.conv_bias, C, k * k, out);
      normalize_activate<act>(out, s);
    }
  }
}

template <Activation act>
void rows_for_activation(const float* input, const float* zeros, const DepthwiseNormAct& s, float* output,
                         int64_t row_begin, int64_t row_end) {
  switch (s.kernel) {  // the official models' depthwise kernels get unrolled tap loops
    case 3:
      return rows_for<9, act>(input, zeros, s, output, row_begin, row_end);
    case 5:
      return rows_for<25, act>(input, zeros, s, output, row_begin, row_end);
    default:
      return rows_for<0, act>(input, zeros, s, output, row_begin, row_end);
  }
}

inline void depthwise_norm_act_rows(const float* input, const float* zeros, const DepthwiseNormAct& s, float* output,
                                    int64_t row_begin, int64_t row_end) {
  switch (s.activation) {
    case Activation::kGelu:
      return rows_for_activation<Activation::kGelu>(input, zeros, s, output, row_begin, row_end);
    case Activation::kRelu:
      return rows_for_activation<Activation::kRelu>(input, zeros, s, output, row_begin, row_end);
    case Activation::kSilu:
      return rows_for_activation<Activation::kSilu>(input, zeros, s, output, row_begin, row_end);
  }
}

}  // namespace DCNV3_CPU_ISA
}  // namespace dcnv3
