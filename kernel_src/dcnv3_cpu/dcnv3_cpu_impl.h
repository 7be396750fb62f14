// DCNv3 CPU loops, included twice by dcnv3_cpu.cpp: once for baseline x86-64 / other architectures and
// once inside a `#pragma GCC target("avx2,fma")` region (namespace DCNV3_CPU_ISA), picked at run time.
// No include guard on purpose.
#ifndef DCNV3_CPU_ISA
#error "define DCNV3_CPU_ISA before including dcnv3_cpu_impl.h"
#endif

namespace dcnv3 {
namespace DCNV3_CPU_ISA {

// Forward pass in two phases per output pixel. Phase 1 (`locate_samples`) turns the G * P offsets of the pixel
// into four bilinear corners per sample: pixel indices and weights with the point weight folded in. It is one
// branch-free loop over G * P samples that the compiler vectorises, where a per-sample scalar computation used to
// cost more than the channel arithmetic itself. Phase 2 (`accumulate_corners`) adds the weighted corner rows over
// each group's contiguous channels.
template <typename acc_t>
struct SampleCorners {
  std::vector<acc_t> weight;   // [4][G * P]: corners (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)
  std::vector<int32_t> index;  // [4][G * P]: y * W + x of each corner, clamped onto the image

  explicit SampleCorners(int64_t samples) : weight(4 * samples), index(4 * samples) {}
};

// Regular-grid tap offsets (i * dilation_w - c_w, j * dilation_h - c_h) of sample q = g * P + point, repeated for
// every group so that phase 1 is a single flat loop.
template <typename acc_t>
struct TapTable {
  std::vector<acc_t> x;
  std::vector<acc_t> y;

  explicit TapTable(const Params& p);
};

// Calls fn(i, j, point) for every sampling tap in point order: x-major (i over kernel_w, j over kernel_h), the
// centre tap skipped with remove_center.
template <typename Fn>
inline void for_each_tap(const Params& p, Fn&& fn) {
  int64_t point = 0;
  for (int64_t i = 0; i < p.kernel_w; ++i) {
    for (int64_t j = 0; j < p.kernel_h; ++j) {
      if (p.remove_center && i == p.kernel_w / 2 && j == p.kernel_h / 2) continue;
      fn(i, j, point++);
    }
  }
}

template <typename acc_t>
TapTable<acc_t>::TapTable(const Params& p) : x(p.group * p.points), y(p.group * p.points) {
  const int64_t centre_x = p.dilation_w * (p.kernel_w - 1) / 2;
  const int64_t centre_y = p.dilation_h * (p.kernel_h - 1) / 2;
  for_each_tap(p, [&](int64_t i, int64_t j, int64_t point) {
    for (int64_t g = 0; g < p.group; ++g) {
      x[g * p.points + point] = acc_t(i * p.dilation_w - centre_x);
      y[g * p.points + point] = acc_t(j * p.dilation_h - centre_y);
    }
  });
}

// Phase 1 for one output pixel whose regular-grid centre is (base_x, base_y). A corner in the zero padding gets
// weight 0 and an index clamped onto the image, so phase 2 needs no branches. A sample entirely outside the image
// (or at a NaN location; the test is written positively) is moved to (0, 0) with point weight 0 (NaN when the
// reference gives NaN) first, which also keeps the float -> int conversions in range.
template <typename scalar_t, typename acc_t>
inline void locate_samples(const scalar_t* __restrict__ offset, const acc_t* __restrict__ point_weight,
                           const TapTable<acc_t>& taps, acc_t base_x, acc_t base_y, acc_t scale, int64_t samples,
                           int32_t height, int32_t width, SampleCorners<acc_t>& corners) {
  const acc_t* __restrict__ tap_x = taps.x.data();
  const acc_t* __restrict__ tap_y = taps.y.data();
  acc_t* w0 = corners.weight.data();
  acc_t* w1 = w0 + samples;
  acc_t* w2 = w1 + samples;
  acc_t* w3 = w2 + samples;
  int32_t* i0 = corners.index.data();
  int32_t* i1 = i0 + samples;
  int32_t* i2 = i1 + samples;
  int32_t* i3 = i2 + samples;
  // The rows are disjoint and the inputs are not written, but GCC cannot prove it (it ignores block-scope restrict).
#pragma GCC ivdep
  for (int64_t q = 0; q < samples; ++q) {
    const acc_t sx = base_x + scale * (tap_x[q] + acc_t(offset[2 * q]));
    const acc_t sy = base_y + scale * (tap_y[q] + acc_t(offset[2 * q + 1]));
    // `&`, not `&&`: short-circuit branches would stop the loop from vectorising.
    const bool inside = (sy > acc_t(-1)) & (sx > acc_t(-1)) & (sy < acc_t(height)) & (sx < acc_t(width));
    // Outside the image the reference adds weight * 0 (grid_sample's zero padding): NaN when the location or the
    // weight is not finite. `v - v == 0` is the finiteness test that vectorises.
    const acc_t w = point_weight[q];
    const bool finite = (sx - sx == acc_t(0)) & (sy - sy == acc_t(0)) & (w - w == acc_t(0));
    const acc_t x = inside ? sx : acc_t(0);
    const acc_t y = inside ? sy : acc_t(0);
    const acc_t m = inside ? w : (finite ? acc_t(0) : std::numeric_limits<acc_t>::quiet_NaN());
    // x, y > -1 here, so truncating x + 1 is floor(x) + 1 (std::floor would be a libm call that blocks vectorising).
    const int32_t x0 = static_cast<int32_t>(x + acc_t(1)) - 1;
    const int32_t y0 = static_cast<int32_t>(y + acc_t(1)) - 1;
    const acc_t lx = x - acc_t(x0);
    const acc_t ly = y - acc_t(y0);
    const acc_t top = (acc_t(1) - ly) * m;
    const acc_t bottom = ly * m;
    const acc_t left = acc_t(1) - lx;
    const acc_t row0 = y0 >= 0 ? top : acc_t(0);
    const acc_t row1 = y0 + 1 < height ? bottom : acc_t(0);
    const acc_t col0 = x0 >= 0 ? left : acc_t(0);
    const acc_t col1 = x0 + 1 < width ? lx : acc_t(0);
    const int32_t ya = std::max(y0, 0), yb = std::min(y0 + 1, height - 1);
    const int32_t xa = std::max(x0, 0), xb = std::min(x0 + 1, width - 1);
    w0[q] = row0 * col0;
    w1[q] = row0 * col1;
    w2[q] = row1 * col0;
    w3[q] = row1 * col1;
    i0[q] = ya * width + xa;
    i1[q] = ya * width + xb;
    i2[q] = yb * width + xa;
    i3[q] = yb * width + xb;
  }
}

// Phase 2 for one sample q of a group: acc[c] += sum_k w_k * value[corner k][c]. kCg > 0 fixes the group width at
// compile time (the channel loop then unrolls into whole vector registers). Only an inf/NaN in the image can tell
// a clamped zero-weight corner from padding: it turns an inf result into NaN.
template <typename scalar_t, typename acc_t, int kCg>
inline void accumulate_corners(acc_t* __restrict__ acc, const scalar_t* __restrict__ value_group,
                               const SampleCorners<acc_t>& corners, int64_t q, int64_t samples, int64_t channels,
                               int64_t runtime_cg) {
  const int64_t group_channels = kCg > 0 ? kCg : runtime_cg;
  const acc_t* w = corners.weight.data();
  const int32_t* idx = corners.index.data();
  const scalar_t* __restrict__ v0 = value_group + int64_t(idx[q]) * channels;
  const scalar_t* __restrict__ v1 = value_group + int64_t(idx[samples + q]) * channels;
  const scalar_t* __restrict__ v2 = value_group + int64_t(idx[2 * samples + q]) * channels;
  const scalar_t* __restrict__ v3 = value_group + int64_t(idx[3 * samples + q]) * channels;
  const acc_t w0 = w[q], w1 = w[samples + q], w2 = w[2 * samples + q], w3 = w[3 * samples + q];
  for (int64_t c = 0; c < group_channels; ++c) {
    acc[c] += w0 * acc_t(v0[c]) + w1 * acc_t(v1[c]) + w2 * acc_t(v2[c]) + w3 * acc_t(v3[c]);
  }
}

// exp(x) for x <= 0 in plain arithmetic, so that the softmax loop vectorises (with std::exp, a libm call per
// element, the fused softmax cost 2.5x as much at InternImage-T's stage 1). Cody-Waite reduction x = n ln2 + r with n = round(x / ln2) (the
// 1.5 * 2^23 trick rounds to nearest), then a degree-6 polynomial for exp(r) with the classic Cephes expf
// coefficients: about 1 ulp. Inputs below -87 give exp(-87) ~ 1.6e-38 rather than a denormal; no softmax weight
// can tell the difference.
inline float exp_nonpositive(float x) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  x = x < -87.0f ? -87.0f : x;
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  // 2^n for n in [-126, 0]; the select keeps a NaN n (NaN input) out of the int conversion, poly stays NaN.
  const int32_t exponent_bits = (static_cast<int32_t>(n >= -126.0f ? n : -126.0f) + 127) << 23;
  float scale;
  std::memcpy(&scale, &exponent_bits, sizeof(scale));
  return poly * scale;
}

inline double exp_nonpositive(double x) { return std::exp(x); }

// The G * P point weights of one output pixel in acc_t: the mask as given, or, with `mask_logits`, its softmax over
// each group's P points (InternImage's normalisation, fused here because a separate softmax over 9-wide rows is
// slow on CPU).
template <typename scalar_t, typename acc_t>
inline void pixel_point_weights(const scalar_t* __restrict__ mask, int64_t groups, int64_t points, bool mask_logits,
                                acc_t* __restrict__ weights) {
  const int64_t count = groups * points;
  for (int64_t k = 0; k < count; ++k) {
    weights[k] = acc_t(mask[k]);
  }
  if (!mask_logits) return;
  for (int64_t g = 0; g < groups; ++g) {
    acc_t* w = weights + g * points;
    acc_t largest = w[0];
    for (int64_t k = 1; k < points; ++k) {
      largest = w[k] > largest ? w[k] : largest;  // not std::max: compiled outside this ISA, it is not inlined
    }
    for (int64_t k = 0; k < points; ++k) {
      w[k] -= largest;
    }
  }
  for (int64_t k = 0; k < count; ++k) {
    weights[k] = exp_nonpositive(weights[k]);
  }
  for (int64_t g = 0; g < groups; ++g) {
    acc_t* w = weights + g * points;
    acc_t total = acc_t(0);
    for (int64_t k = 0; k < points; ++k) {
      total += w[k];
    }
    const acc_t inverse = acc_t(1) / total;
    for (int64_t k = 0; k < points; ++k) {
      w[k] *= inverse;
    }
  }
}

template <typename scalar_t, int kCg>
void forward_loops(const scalar_t* value, const scalar_t* offset, const scalar_t* mask, scalar_t* out,
                   const Params& p, bool mask_logits) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t out_hw = p.out_h * p.out_w;
  const int64_t pixels = p.batch * out_hw;
  const int64_t C = p.channels;
  const int64_t Cg = kCg > 0 ? kCg : p.group_channels;
  const int64_t P = p.points;
  const int64_t G = p.group;
  // ~32k multiply-adds per grain keeps the OpenMP overhead negligible even for 7x7 maps.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, 4 * C * P));

  const int64_t samples = G * P;
  const TapTable<acc_t> taps(p);
  const int32_t height = static_cast<int32_t>(p.height);
  const int32_t width = static_cast<int32_t>(p.width);

  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(C);
    std::vector<acc_t> weights(samples);
    SampleCorners<acc_t> corners(samples);
    for (int64_t pix = begin; pix < end; ++pix) {
      const int64_t n = pix / out_hw;
      const int64_t ho = (pix % out_hw) / p.out_w;
      const int64_t wo = pix % p.out_w;
      const TapGrid<acc_t> grid = tap_grid<acc_t>(ho, wo, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h,
                                                  p.pad_w, p.dilation_h, p.dilation_w, p.offset_scale);
      const scalar_t* value_n = value + n * p.height * p.width * C;
      pixel_point_weights<scalar_t, acc_t>(mask + pix * samples, G, P, mask_logits, weights.data());
      locate_samples<scalar_t, acc_t>(offset + pix * samples * 2, weights.data(), taps, grid.base_x, grid.base_y,
                                      grid.scale, samples, height, width, corners);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t point = 0; point < P; ++point) {
          accumulate_corners<scalar_t, acc_t, kCg>(acc.data() + g * Cg, value_n + g * Cg, corners, g * P + point,
                                                   samples, C, Cg);
        }
      }
      scalar_t* o = out + pix * C;
      for (int64_t c = 0; c < C; ++c) {
        o[c] = static_cast<scalar_t>(acc[c]);
      }
    }
  });
}

template <typename scalar_t>
void forward_typed(const scalar_t* value, const scalar_t* offset, const scalar_t* mask, scalar_t* out,
                   const Params& p, bool mask_logits) {
  // Every official model uses 16 (T..XL) or 32 (H/G) channels per group.
  switch (p.group_channels) {
    case 16:
      return forward_loops<scalar_t, 16>(value, offset, mask, out, p, mask_logits);
    case 32:
      return forward_loops<scalar_t, 32>(value, offset, mask, out, p, mask_logits);
    default:
      return forward_loops<scalar_t, 0>(value, offset, mask, out, p, mask_logits);
  }
}

// Dot products of grad_out with the four corner rows of one sample, over the group's channels.
template <typename scalar_t, typename acc_t>
inline void corner_dots(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ value_group,
                        const Bilinear<acc_t>& b, int64_t channels, int64_t group_channels, acc_t (&dots)[4]) {
  for (int k = 0; k < 4; ++k) {
    dots[k] = acc_t(0);
    if (!b.valid[k]) continue;
    const scalar_t* __restrict__ v = value_group + b.index[k] * channels;
    acc_t s = acc_t(0);
    for (int64_t c = 0; c < group_channels; ++c) {
      s += acc_t(grad_out[c]) * acc_t(v[c]);
    }
    dots[k] = s;
  }
}

// grad_value[corner k][c] += mask * w_k * grad_out[c] for the valid corners.
template <typename scalar_t, typename acc_t, typename grad_t>
inline void scatter_sample(grad_t* __restrict__ grad_value_group, const scalar_t* __restrict__ grad_out,
                           const Bilinear<acc_t>& b, acc_t mask, int64_t channels, int64_t group_channels) {
  for (int k = 0; k < 4; ++k) {
    if (!b.valid[k]) continue;
    grad_t* __restrict__ gv = grad_value_group + b.index[k] * channels;
    const acc_t wk = b.weight[k] * mask;
    for (int64_t c = 0; c < group_channels; ++c) {
      gv[c] = static_cast<grad_t>(acc_t(gv[c]) + wk * acc_t(grad_out[c]));
    }
  }
}

// Interior sample (all four corners inside) with a runtime group width: dot products and scatter in one pass.
template <typename scalar_t, typename acc_t, typename grad_t>
inline void interior_backward(grad_t* __restrict__ grad_value_group, const scalar_t* __restrict__ grad_out,
                              const scalar_t* __restrict__ value_group, const Bilinear<acc_t>& b, acc_t mask,
                              int64_t channels, int64_t group_channels, acc_t (&dots)[4]) {
  const scalar_t* __restrict__ v0 = value_group + b.index[0] * channels;
  const scalar_t* __restrict__ v1 = value_group + b.index[1] * channels;
  const scalar_t* __restrict__ v2 = value_group + b.index[2] * channels;
  const scalar_t* __restrict__ v3 = value_group + b.index[3] * channels;
  grad_t* __restrict__ g0 = grad_value_group + b.index[0] * channels;
  grad_t* __restrict__ g1 = grad_value_group + b.index[1] * channels;
  grad_t* __restrict__ g2 = grad_value_group + b.index[2] * channels;
  grad_t* __restrict__ g3 = grad_value_group + b.index[3] * channels;
  const acc_t w0 = b.weight[0] * mask;
  const acc_t w1 = b.weight[1] * mask;
  const acc_t w2 = b.weight[2] * mask;
  const acc_t w3 = b.weight[3] * mask;
  acc_t d0 = acc_t(0), d1 = acc_t(0), d2 = acc_t(0), d3 = acc_t(0);
  for (int64_t c = 0; c < group_channels; ++c) {
    const acc_t go = acc_t(grad_out[c]);
    d0 += go * acc_t(v0[c]);
    d1 += go * acc_t(v1[c]);
    d2 += go * acc_t(v2[c]);
    d3 += go * acc_t(v3[c]);
    g0[c] = static_cast<grad_t>(acc_t(g0[c]) + w0 * go);
    g1[c] = static_cast<grad_t>(acc_t(g1[c]) + w1 * go);
    g2[c] = static_cast<grad_t>(acc_t(g2[c]) + w2 * go);
    g3[c] = static_cast<grad_t>(acc_t(g3[c]) + w3 * go);
  }
  dots[0] = d0;
  dots[1] = d1;
  dots[2] = d2;
  dots[3] = d3;
}

// Lanes of the partial dot products in `corners_backward_fixed`: one AVX2 register of floats.
constexpr int kDotLanes = 8;

// For a compile-time group width kCg (a multiple of kDotLanes): dots[k] = grad_out . value[row k] and, for the valid
// corners only, grad_value[row k] += weights[k] * grad_out. The rows of invalid corners point at a readable pixel
// and their dots are dropped. The dot products keep kDotLanes partial sums and add them at the end: one
// running sum is a serial chain the compiler may not reorder, and left the whole channel loop scalar (the backward
// then cost 5-10x the forward).
template <typename scalar_t, typename acc_t, typename grad_t, int kCg>
inline void corners_backward_fixed(grad_t* __restrict__ grad_value_group, const scalar_t* __restrict__ grad_out,
                                   const scalar_t* __restrict__ value_group, const int64_t (&rows)[4],
                                   const bool (&valid)[4], const acc_t (&weights)[4], acc_t (&dots)[4]) {
  static_assert(kCg % kDotLanes == 0, "the group width must be a multiple of the dot-product lanes");
  const scalar_t* __restrict__ v0 = value_group + rows[0];
  const scalar_t* __restrict__ v1 = value_group + rows[1];
  const scalar_t* __restrict__ v2 = value_group + rows[2];
  const scalar_t* __restrict__ v3 = value_group + rows[3];
#if defined(DCNV3_CPU_AVX2)
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<grad_t, float>) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    for (int c = 0; c < kCg; c += 8) {
      const __m256 go = _mm256_loadu_ps(grad_out + c);
      s0 = _mm256_fmadd_ps(go, _mm256_loadu_ps(v0 + c), s0);
      s1 = _mm256_fmadd_ps(go, _mm256_loadu_ps(v1 + c), s1);
      s2 = _mm256_fmadd_ps(go, _mm256_loadu_ps(v2 + c), s2);
      s3 = _mm256_fmadd_ps(go, _mm256_loadu_ps(v3 + c), s3);
    }
    // GCC reduces four 8-lane sums one lane at a time; three horizontal adds reduce all four at once.
    const __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
    _mm_storeu_ps(dots, _mm_add_ps(_mm256_castps256_ps128(s0123), _mm256_extractf128_ps(s0123, 1)));
    for (int k = 0; k < 4; ++k) {
      if (!valid[k]) continue;
      float* __restrict__ gv = grad_value_group + rows[k];
      const __m256 w = _mm256_set1_ps(weights[k]);
      for (int c = 0; c < kCg; c += 8) {
        _mm256_storeu_ps(gv + c, _mm256_fmadd_ps(w, _mm256_loadu_ps(grad_out + c), _mm256_loadu_ps(gv + c)));
      }
    }
  } else
#endif
  {
    acc_t p0[kDotLanes] = {}, p1[kDotLanes] = {}, p2[kDotLanes] = {}, p3[kDotLanes] = {};
    for (int c0 = 0; c0 < kCg; c0 += kDotLanes) {
      for (int l = 0; l < kDotLanes; ++l) {
        const acc_t go = acc_t(grad_out[c0 + l]);
        p0[l] += go * acc_t(v0[c0 + l]);
        p1[l] += go * acc_t(v1[c0 + l]);
        p2[l] += go * acc_t(v2[c0 + l]);
        p3[l] += go * acc_t(v3[c0 + l]);
      }
    }
    dots[0] = dots[1] = dots[2] = dots[3] = acc_t(0);
    for (int l = 0; l < kDotLanes; ++l) {
      dots[0] += p0[l];
      dots[1] += p1[l];
      dots[2] += p2[l];
      dots[3] += p3[l];
    }
    for (int k = 0; k < 4; ++k) {
      if (!valid[k]) continue;
      grad_t* __restrict__ gv = grad_value_group + rows[k];
      for (int c = 0; c < kCg; ++c) {
        gv[c] = static_cast<grad_t>(acc_t(gv[c]) + weights[k] * acc_t(grad_out[c]));
      }
    }
  }
  for (int k = 0; k < 4; ++k) {
    dots[k] = valid[k] ? dots[k] : acc_t(0);  // a select, not a product: an inf in a clamped row stays out
  }
}

// The softmax Jacobian of one group's P points, in place: d logit_k = w_k * (d w_k - sum_j w_j * d w_j).
template <typename acc_t>
inline void softmax_jacobian(const acc_t* __restrict__ weights, acc_t* __restrict__ grad, int64_t points) {
  acc_t dot = acc_t(0);
  for (int64_t k = 0; k < points; ++k) {
    dot += weights[k] * grad[k];
  }
  for (int64_t k = 0; k < points; ++k) {
    grad[k] = weights[k] * (grad[k] - dot);
  }
}

// grad_t is the accumulation type of grad_value (float for half inputs, else scalar_t). With `mask_logits` the mask
// holds logits: each task recomputes its group's softmax weights per pixel (as the forward does) and returns the
// gradient w.r.t. the logits, so the training path never materialises the weights or their gradient. kCg > 0 fixes
// the group width at compile time (whole vector registers per corner row); 0 takes the runtime-width loops.
template <typename scalar_t, typename grad_t, int kCg>
void backward_loops(const scalar_t* grad_output, const scalar_t* value, const scalar_t* offset, const scalar_t* mask,
                    grad_t* grad_value, scalar_t* grad_offset, scalar_t* grad_mask, const Params& p,
                    bool mask_logits) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t out_hw = p.out_h * p.out_w;
  const int64_t C = p.channels;
  const int64_t Cg = p.group_channels;
  const int64_t P = p.points;
  const int64_t G = p.group;
  const acc_t scale = acc_t(p.offset_scale);
  const TapTable<acc_t> taps(p);
  const int64_t centre_x = p.dilation_w * (p.kernel_w - 1) / 2;
  const int64_t centre_y = p.dilation_h * (p.kernel_h - 1) / 2;

  // One task per (n, g): disjoint grad_value slices, hence race-free and deterministic.
  at::parallel_for(0, p.batch * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> weights(P);     // the group's point weights at the current pixel
    std::vector<acc_t> grad_weights(P);  // d loss / d weight, before the softmax Jacobian
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / G;
      const int64_t g = task % G;
      const scalar_t* value_group = value + n * p.height * p.width * C + g * Cg;
      grad_t* grad_value_group = grad_value + n * p.height * p.width * C + g * Cg;
      const acc_t* tap_x = taps.x.data() + g * P;
      const acc_t* tap_y = taps.y.data() + g * P;
      for (int64_t local = 0; local < out_hw; ++local) {
        const int64_t pix = n * out_hw + local;
        const int64_t ho = local / p.out_w;
        const int64_t wo = local % p.out_w;
        // The forward's tap table: one multiply-add per coordinate and sample.
        const acc_t base_x = acc_t(wo * p.stride_w - p.pad_w + centre_x);
        const acc_t base_y = acc_t(ho * p.stride_h - p.pad_h + centre_y);
        const scalar_t* go = grad_output + pix * C + g * Cg;
        const scalar_t* off = offset + pix * G * P * 2;
        const scalar_t* msk = mask + pix * G * P;
        scalar_t* goff = grad_offset + pix * G * P * 2;
        scalar_t* gmsk = grad_mask + pix * G * P;
        if (mask_logits) {
          pixel_point_weights<scalar_t, acc_t>(msk + g * P, 1, P, true, weights.data());
        }
        for (int64_t point = 0; point < P; ++point) {
          const int64_t q = g * P + point;
          const acc_t x = base_x + scale * (tap_x[point] + acc_t(off[2 * q]));
          const acc_t y = base_y + scale * (tap_y[point] + acc_t(off[2 * q + 1]));
          const acc_t m = mask_logits ? weights[point] : acc_t(msk[q]);
          Bilinear<acc_t> b;
          if (!bilinear_at<acc_t>(y, x, p.height, p.width, b)) {
            goff[2 * q] = scalar_t(0);
            goff[2 * q + 1] = scalar_t(0);
            gmsk[q] = scalar_t(0);
            grad_weights[point] = acc_t(0);
            continue;
          }
          acc_t dots[4];
          if constexpr (kCg > 0) {
            // Invalid corners have index 0 (a readable row) and weight 0; their dots are dropped.
            const int64_t rows[4] = {b.index[0] * C, b.index[1] * C, b.index[2] * C, b.index[3] * C};
            const acc_t corner_weights[4] = {b.weight[0] * m, b.weight[1] * m, b.weight[2] * m, b.weight[3] * m};
            corners_backward_fixed<scalar_t, acc_t, grad_t, kCg>(grad_value_group, go, value_group, rows, b.valid,
                                                                 corner_weights, dots);
          } else if (b.valid[0] && b.valid[1] && b.valid[2] && b.valid[3]) {
            interior_backward<scalar_t, acc_t, grad_t>(grad_value_group, go, value_group, b, m, C, Cg, dots);
          } else {
            corner_dots<scalar_t, acc_t>(go, value_group, b, C, Cg, dots);
            scatter_sample<scalar_t, acc_t, grad_t>(grad_value_group, go, b, m, C, Cg);
          }
          acc_t sampled = acc_t(0);
          acc_t dx = acc_t(0);
          acc_t dy = acc_t(0);
          for (int k = 0; k < 4; ++k) {
            sampled += b.weight[k] * dots[k];
            dx += b.dweight_dx[k] * dots[k];
            dy += b.dweight_dy[k] * dots[k];
          }
          // d location / d offset = offset_scale; d out / d mask = the bilinear sample itself.
          gmsk[q] = static_cast<scalar_t>(sampled);
          grad_weights[point] = sampled;
          goff[2 * q] = static_cast<scalar_t>(m * scale * dx);
          goff[2 * q + 1] = static_cast<scalar_t>(m * scale * dy);
        }
        if (mask_logits) {
          softmax_jacobian<acc_t>(weights.data(), grad_weights.data(), P);
          for (int64_t k = 0; k < P; ++k) {
            gmsk[g * P + k] = static_cast<scalar_t>(grad_weights[k]);
          }
        }
      }
    }
  });
}

template <typename scalar_t, typename grad_t>
void backward_typed(const scalar_t* grad_output, const scalar_t* value, const scalar_t* offset, const scalar_t* mask,
                    grad_t* grad_value, scalar_t* grad_offset, scalar_t* grad_mask, const Params& p,
                    bool mask_logits) {
  switch (p.group_channels) {  // the official widths, as in forward_typed
    case 16:
      return backward_loops<scalar_t, grad_t, 16>(grad_output, value, offset, mask, grad_value, grad_offset, grad_mask,
                                                   p, mask_logits);
    case 32:
      return backward_loops<scalar_t, grad_t, 32>(grad_output, value, offset, mask, grad_value, grad_offset, grad_mask,
                                                   p, mask_logits);
    default:
      return backward_loops<scalar_t, grad_t, 0>(grad_output, value, offset, mask, grad_value, grad_offset, grad_mask,
                                                  p, mask_logits);
  }
}

}  // namespace DCNV3_CPU_ISA
}  // namespace dcnv3
