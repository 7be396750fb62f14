// DCNv3 CPU loops, included twice by dcnv3_cpu.cpp: once for baseline x86-64 / other architectures and
// once for AVX2 + FMA through avx2_variant.h (namespace DCNV3_CPU_ISA), picked at run time.
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
// each group's contiguous channels. With quad corners (`quad_corners_apply`) the four corners of a sample are one
// 2x2 quad of the image moved inside it, and only the quad's top-left corner is stored: phase 2 loads one index per
// sample instead of four.
template <typename acc_t>
struct SampleCorners {
  std::vector<acc_t> weight;   // [4][G * P]: corners (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)
  std::vector<int32_t> index;  // [4][G * P]: y * W + x of each corner, clamped onto the image; [G * P] for quads

  SampleCorners(int64_t samples, bool quad) : weight(4 * samples), index((quad ? 1 : 4) * samples) {}
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

// Whether the forward may address a sample's four corners as one 2x2 quad of the image at fixed displacements
// (0, C, W * C, W * C + C) from its top-left corner, the quad moved inside the image at the border, instead of
// four separately clamped corners. At the border, the quad's corner outside the sampled square reads the
// inside neighbour (weight 0) where the clamped corner read the border pixel again; 0 * v is 0 for a finite v
// either way, but NaN for an inf or NaN v. So the quad needs H, W >= 2 and finite values in the two outermost
// rows and columns of every image, the only pixels the two can read differently; otherwise the forward keeps the
// four clamped corners and its outputs stay exactly as they were.
//
// Only the AVX-512 build uses quads (kQuadCorners): there they made the forward 3-8% faster; in the AVX2 build the
// extra selects of phase 1 cost more than phase 2 saved (the forward was 5-15% slower), and the baseline build
// keeps the AVX2 build's choice.
#if defined(DCNV3_CPU_AVX512)
constexpr bool kQuadCorners = true;
#else
constexpr bool kQuadCorners = false;
#endif

template <typename scalar_t>
bool quad_corners_apply(const scalar_t* value, int64_t batch, int64_t height, int64_t width, int64_t channels) {
  if (height < 2 || width < 2) return false;
  const auto all_finite = [](const scalar_t* v, int64_t count) {
    int finite = 1;
    for (int64_t i = 0; i < count; ++i) {
      const auto x = static_cast<at::opmath_type<scalar_t>>(v[i]);
      finite &= (x - x == 0) ? 1 : 0;  // branch-free, so that the loop vectorises
    }
    return finite != 0;
  };
  bool finite = true;
  for (int64_t row = 0; row < batch * height && finite; ++row) {
    const scalar_t* v = value + row * width * channels;
    const int64_t y = row % height;
    if (y < 2 || y >= height - 2) {
      finite = all_finite(v, width * channels);
    } else {
      finite = all_finite(v, 2 * channels) && all_finite(v + (width - 2) * channels, 2 * channels);
    }
  }
  return finite;
}

// Phase 1 for one output pixel whose regular-grid centre is (base_x, base_y). A corner in the zero padding gets
// weight 0 and an index clamped onto the image (kQuad: is the quad's corner inside the image), so phase 2 needs no
// branches. A sample entirely outside the image (or at a NaN location; the test is written positively) is moved to
// (0, 0) with point weight 0 (NaN when the reference gives NaN) first, which also keeps the float -> int conversions
// in range.
template <typename scalar_t, typename acc_t, bool kQuad>
inline void locate_samples(const scalar_t* __restrict__ offset, const acc_t* __restrict__ point_weight,
                           const TapTable<acc_t>& taps, acc_t base_x, acc_t base_y, acc_t scale, int64_t samples,
                           int32_t height, int32_t width, SampleCorners<acc_t>& corners) {
  const acc_t* __restrict__ tap_x = taps.x.data();
  const acc_t* __restrict__ tap_y = taps.y.data();
  acc_t* w0 = corners.weight.data();
  acc_t* w1 = w0 + samples;
  acc_t* w2 = w1 + samples;
  acc_t* w3 = w2 + samples;
  int32_t* index = corners.index.data();
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
    const bool top_in = y0 >= 0, bottom_in = y0 + 1 < height, left_in = x0 >= 0, right_in = x0 + 1 < width;
    if constexpr (kQuad) {
      // The quad's top-left corner is (clamp(y0, 0, H - 2), clamp(x0, 0, W - 2)); where y0 or x0 was clamped, the
      // sample's row or column inside the image is the quad's other one and takes its weight.
      const acc_t row0 = top_in ? (bottom_in ? top : acc_t(0)) : bottom;
      const acc_t row1 = top_in ? (bottom_in ? bottom : top) : acc_t(0);
      const acc_t col0 = left_in ? (right_in ? left : acc_t(0)) : lx;
      const acc_t col1 = left_in ? (right_in ? lx : left) : acc_t(0);
      w0[q] = row0 * col0;
      w1[q] = row0 * col1;
      w2[q] = row1 * col0;
      w3[q] = row1 * col1;
      index[q] = std::min(std::max(y0, 0), height - 2) * width + std::min(std::max(x0, 0), width - 2);
    } else {
      const acc_t row0 = top_in ? top : acc_t(0);
      const acc_t row1 = bottom_in ? bottom : acc_t(0);
      const acc_t col0 = left_in ? left : acc_t(0);
      const acc_t col1 = right_in ? lx : acc_t(0);
      const int32_t ya = std::max(y0, 0), yb = std::min(y0 + 1, height - 1);
      const int32_t xa = std::max(x0, 0), xb = std::min(x0 + 1, width - 1);
      w0[q] = row0 * col0;
      w1[q] = row0 * col1;
      w2[q] = row1 * col0;
      w3[q] = row1 * col1;
      index[q] = ya * width + xa;
      index[samples + q] = ya * width + xb;
      index[2 * samples + q] = yb * width + xa;
      index[3 * samples + q] = yb * width + xb;
    }
  }
}

// Phase 2 for one sample q of a group: acc[c] += sum_k w_k * value[corner k][c]. kCg > 0 fixes the group width at
// compile time (the channel loop then unrolls into whole vector registers). Only an inf/NaN in the image can tell
// a clamped zero-weight corner from padding: it turns an inf result into NaN. With kQuad, corner 0 is the quad's
// top-left one and the others are one column (C values), one row (W * C) and both further.
template <typename scalar_t, typename acc_t, int kCg, bool kQuad>
inline void accumulate_corners(acc_t* __restrict__ acc, const scalar_t* __restrict__ value_group,
                               const SampleCorners<acc_t>& corners, int64_t q, int64_t samples, int64_t channels,
                               int64_t row_elements, int64_t runtime_cg) {
  const int64_t group_channels = kCg > 0 ? kCg : runtime_cg;
  const acc_t* w = corners.weight.data();
  const int32_t* idx = corners.index.data();
  const scalar_t* __restrict__ v0 = value_group + int64_t(idx[q]) * channels;
  const scalar_t* __restrict__ v1 = kQuad ? v0 + channels : value_group + int64_t(idx[samples + q]) * channels;
  const scalar_t* __restrict__ v2 = kQuad ? v0 + row_elements : value_group + int64_t(idx[2 * samples + q]) * channels;
  const scalar_t* __restrict__ v3 = kQuad ? v2 + channels : value_group + int64_t(idx[3 * samples + q]) * channels;
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

template <typename scalar_t, int kCg, bool kQuad>
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
    SampleCorners<acc_t> corners(samples, kQuad);
    for (int64_t pix = begin; pix < end; ++pix) {
      const int64_t n = pix / out_hw;
      const int64_t ho = (pix % out_hw) / p.out_w;
      const int64_t wo = pix % p.out_w;
      const TapGrid<acc_t> grid = tap_grid<acc_t>(ho, wo, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h,
                                                  p.pad_w, p.dilation_h, p.dilation_w, p.offset_scale);
      const scalar_t* value_n = value + n * p.height * p.width * C;
      pixel_point_weights<scalar_t, acc_t>(mask + pix * samples, G, P, mask_logits, weights.data());
      locate_samples<scalar_t, acc_t, kQuad>(offset + pix * samples * 2, weights.data(), taps, grid.base_x, grid.base_y,
                                      grid.scale, samples, height, width, corners);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t point = 0; point < P; ++point) {
          accumulate_corners<scalar_t, acc_t, kCg, kQuad>(acc.data() + g * Cg, value_n + g * Cg, corners,
                                                          g * P + point, samples, C, p.width * C, Cg);
        }
      }
      scalar_t* o = out + pix * C;
      for (int64_t c = 0; c < C; ++c) {
        o[c] = static_cast<scalar_t>(acc[c]);
      }
    }
  });
}

template <typename scalar_t, bool kQuad>
void forward_for_width(const scalar_t* value, const scalar_t* offset, const scalar_t* mask, scalar_t* out,
                       const Params& p, bool mask_logits) {
  // Every official model uses 16 (T..XL) or 32 (H/G) channels per group.
  switch (p.group_channels) {
    case 16:
      return forward_loops<scalar_t, 16, kQuad>(value, offset, mask, out, p, mask_logits);
    case 32:
      return forward_loops<scalar_t, 32, kQuad>(value, offset, mask, out, p, mask_logits);
    default:
      return forward_loops<scalar_t, 0, kQuad>(value, offset, mask, out, p, mask_logits);
  }
}

template <typename scalar_t>
void forward_typed(const scalar_t* value, const scalar_t* offset, const scalar_t* mask, scalar_t* out,
                   const Params& p, bool mask_logits) {
  if constexpr (kQuadCorners) {
    if (quad_corners_apply(value, p.batch, p.height, p.width, p.channels)) {
      return forward_for_width<scalar_t, true>(value, offset, mask, out, p, mask_logits);
    }
  }
  forward_for_width<scalar_t, false>(value, offset, mask, out, p, mask_logits);
}

// Backward pass, per output pixel and range of groups, in three phases like the forward: phase 1
// (`locate_pixel_samples`) turns the offsets and point weights of the pixel's samples into corners, corner weights
// and fractional positions in one branch-free loop the compiler vectorises; phase 2 (`corners_backward_*`) takes
// the dot products of grad_out with the four corner rows and scatters grad_out into grad_value, the only work per
// channel; phase 3 (`sample_grads`) turns the dot products into the gradients of the location and of the point
// weight, vectorised again.
template <typename acc_t>
struct SampleGrads {
  std::vector<int32_t> index;       // [4][S]: y * W + x of each corner, clamped onto the image
  std::vector<acc_t> weight;        // [4][S]: point weight x bilinear weight, 0 for a corner in the padding
  std::vector<int32_t> valid;       // [4][S]: 1 if the corner lies in the image (no corner of a sample outside does)
  std::vector<acc_t> frac_x;        // [S]: x - floor(x)
  std::vector<acc_t> frac_y;        // [S]: y - floor(y)
  std::vector<acc_t> point_weight;  // [S]: the point weight, 0 for a sample outside the image
  std::vector<acc_t> dots;          // [4][S]: grad_out . value[corner], 0 for a corner in the padding
  std::vector<acc_t> grad_x;        // [S]: d loss / d offset along x
  std::vector<acc_t> grad_y;        // [S]: d loss / d offset along y
  std::vector<acc_t> grad_weight;   // [S]: d loss / d point weight

  explicit SampleGrads(int64_t samples)
      : index(4 * samples), weight(4 * samples), valid(4 * samples), frac_x(samples), frac_y(samples),
        point_weight(samples), dots(4 * samples), grad_x(samples), grad_y(samples), grad_weight(samples) {}
};

// Phase 1 for the S samples of one output pixel, located as `locate_samples` locates them (bit for bit).
template <typename scalar_t, typename acc_t>
inline void locate_pixel_samples(const scalar_t* __restrict__ offset, const acc_t* __restrict__ weights,
                                 const acc_t* __restrict__ tap_x, const acc_t* __restrict__ tap_y, acc_t base_x,
                                 acc_t base_y, acc_t scale, int64_t samples, int32_t height, int32_t width,
                                 SampleGrads<acc_t>& s) {
  acc_t* __restrict__ point_weight = s.point_weight.data();
  acc_t* __restrict__ frac_x = s.frac_x.data();
  acc_t* __restrict__ frac_y = s.frac_y.data();
  acc_t* w = s.weight.data();
  int32_t* idx = s.index.data();
  int32_t* valid = s.valid.data();
#pragma GCC ivdep
  for (int64_t q = 0; q < samples; ++q) {
    const acc_t sx = base_x + scale * (tap_x[q] + acc_t(offset[2 * q]));
    const acc_t sy = base_y + scale * (tap_y[q] + acc_t(offset[2 * q + 1]));
    const bool inside = (sy > acc_t(-1)) & (sx > acc_t(-1)) & (sy < acc_t(height)) & (sx < acc_t(width));
    // A sample outside (or at a NaN location) moves to (0, 0) with no valid corner: all its gradients are 0.
    const acc_t x = inside ? sx : acc_t(0);
    const acc_t y = inside ? sy : acc_t(0);
    const acc_t weight = weights[q];  // read unconditionally: a load under a select does not vectorise
    const acc_t m = inside ? weight : acc_t(0);
    const int32_t x0 = static_cast<int32_t>(x + acc_t(1)) - 1;  // floor, as x > -1 (see locate_samples)
    const int32_t y0 = static_cast<int32_t>(y + acc_t(1)) - 1;
    const acc_t lx = x - acc_t(x0);
    const acc_t ly = y - acc_t(y0);
    // Selects of one type each, as in locate_samples: with bool arithmetic or byte flags GCC keeps branches.
    const acc_t top = y0 >= 0 ? (acc_t(1) - ly) * m : acc_t(0);
    const acc_t bottom = y0 + 1 < height ? ly * m : acc_t(0);
    const acc_t left = x0 >= 0 ? acc_t(1) - lx : acc_t(0);
    const acc_t right = x0 + 1 < width ? lx : acc_t(0);
    const int32_t in = inside ? 1 : 0;
    const int32_t row0 = y0 >= 0 ? in : 0, row1 = y0 + 1 < height ? in : 0;
    const int32_t col0 = x0 >= 0 ? 1 : 0, col1 = x0 + 1 < width ? 1 : 0;
    const int32_t ya = std::max(y0, 0), yb = std::min(y0 + 1, height - 1);
    const int32_t xa = std::max(x0, 0), xb = std::min(x0 + 1, width - 1);
    point_weight[q] = m;
    frac_x[q] = lx;
    frac_y[q] = ly;
    w[q] = top * left;
    w[samples + q] = top * right;
    w[2 * samples + q] = bottom * left;
    w[3 * samples + q] = bottom * right;
    idx[q] = ya * width + xa;
    idx[samples + q] = ya * width + xb;
    idx[2 * samples + q] = yb * width + xa;
    idx[3 * samples + q] = yb * width + xb;
    valid[q] = row0 & col0;
    valid[samples + q] = row0 & col1;
    valid[2 * samples + q] = row1 & col0;
    valid[3 * samples + q] = row1 & col1;
  }
}

// Phase 3 for S samples: with the dots of corners in the padding at 0, the bilinear sample is sum_k w_k * dot_k
// and its derivatives along x and y are weighted differences of the dots.
template <typename acc_t>
inline void sample_grads(int64_t samples, acc_t scale, SampleGrads<acc_t>& s) {
  const acc_t* __restrict__ d0 = s.dots.data();
  const acc_t* __restrict__ d1 = d0 + samples;
  const acc_t* __restrict__ d2 = d1 + samples;
  const acc_t* __restrict__ d3 = d2 + samples;
  const acc_t* __restrict__ frac_x = s.frac_x.data();
  const acc_t* __restrict__ frac_y = s.frac_y.data();
  const acc_t* __restrict__ point_weight = s.point_weight.data();
  acc_t* __restrict__ grad_x = s.grad_x.data();
  acc_t* __restrict__ grad_y = s.grad_y.data();
  acc_t* __restrict__ grad_weight = s.grad_weight.data();
  // The arrays are disjoint, but GCC does not vectorise without being told so (it gives up on proving it).
#pragma GCC ivdep
  for (int64_t q = 0; q < samples; ++q) {
    const acc_t lx = frac_x[q], ly = frac_y[q];
    const acc_t hx = acc_t(1) - lx, hy = acc_t(1) - ly;
    const acc_t top = hx * d0[q] + lx * d1[q];
    const acc_t bottom = hx * d2[q] + lx * d3[q];
    // d location / d offset = offset_scale; d out / d point weight = the bilinear sample itself.
    grad_weight[q] = hy * top + ly * bottom;
    grad_x[q] = point_weight[q] * scale * (hy * (d1[q] - d0[q]) + ly * (d3[q] - d2[q]));
    grad_y[q] = point_weight[q] * scale * (bottom - top);
  }
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

// `corners_backward_fixed` for a group width known only at run time.
template <typename scalar_t, typename acc_t, typename grad_t>
inline void corners_backward_runtime(grad_t* __restrict__ grad_value_group, const scalar_t* __restrict__ grad_out,
                                     const scalar_t* __restrict__ value_group, const int64_t (&rows)[4],
                                     const bool (&valid)[4], const acc_t (&weights)[4], int64_t group_channels,
                                     acc_t (&dots)[4]) {
  for (int k = 0; k < 4; ++k) {
    dots[k] = acc_t(0);
    if (!valid[k]) continue;
    const scalar_t* __restrict__ v = value_group + rows[k];
    grad_t* __restrict__ gv = grad_value_group + rows[k];
    acc_t sum = acc_t(0);
    for (int64_t c = 0; c < group_channels; ++c) {
      const acc_t go = acc_t(grad_out[c]);
      sum += go * acc_t(v[c]);
      gv[c] = static_cast<grad_t>(acc_t(gv[c]) + weights[k] * go);
    }
    dots[k] = sum;
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
// holds logits: the softmax weights are recomputed per pixel (as the forward does) and the gradient is w.r.t. the
// logits, so the training path never materialises the weights or their gradient. kCg > 0 fixes the group width at
// compile time (whole vector registers per corner row); 0 takes the runtime-width loop.
//
// One task per (image, range of groups) walks the image's output pixels in order: disjoint grad_value slices, hence
// race-free and deterministic, and each pixel reads and writes the range's channels of a corner as one contiguous
// run. With one task per (image, single group), the corner rows were 64-byte pieces 256 bytes apart that the
// hardware prefetchers did not follow, and the loads stalled (the backward took 5.5x the forward at
// InternImage-T's stage 1). Groups are split only as far as needed to give every thread work.
template <typename scalar_t, typename grad_t, int kCg>
void backward_loops(const scalar_t* grad_output, const scalar_t* value, const scalar_t* offset, const scalar_t* mask,
                    grad_t* grad_value, scalar_t* grad_offset, scalar_t* grad_mask, const Params& p,
                    bool mask_logits) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t out_hw = p.out_h * p.out_w;
  const int64_t C = p.channels;
  const int64_t Cg = kCg > 0 ? kCg : p.group_channels;
  const int64_t P = p.points;
  const int64_t G = p.group;
  const int64_t ranges = std::min(G, (at::get_num_threads() + p.batch - 1) / p.batch);
  const int64_t range_size = (G + ranges - 1) / ranges;
  const acc_t scale = acc_t(p.offset_scale);
  const TapTable<acc_t> taps(p);
  const int32_t height = static_cast<int32_t>(p.height);
  const int32_t width = static_cast<int32_t>(p.width);

  at::parallel_for(0, p.batch * ranges, 1, [&](int64_t begin, int64_t end) {
    SampleGrads<acc_t> s(range_size * P);
    std::vector<acc_t> weights(range_size * P);  // the point weights of the pixel's samples
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / ranges;
      const int64_t g_begin = (task % ranges) * range_size;
      const int64_t g_end = std::min(G, g_begin + range_size);
      const int64_t samples = (g_end - g_begin) * P;
      const scalar_t* value_n = value + n * p.height * p.width * C;
      grad_t* grad_value_n = grad_value + n * p.height * p.width * C;
      for (int64_t local = 0; local < out_hw; ++local) {
        const int64_t pix = n * out_hw + local;
        const int64_t first = pix * G * P + g_begin * P;  // the range's first sample in offset / mask
        const TapGrid<acc_t> grid = tap_grid<acc_t>(local / p.out_w, local % p.out_w, p.kernel_h, p.kernel_w,
                                                    p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h,
                                                    p.dilation_w, p.offset_scale);
        pixel_point_weights<scalar_t, acc_t>(mask + first, g_end - g_begin, P, mask_logits, weights.data());
        locate_pixel_samples<scalar_t, acc_t>(offset + 2 * first, weights.data(), taps.x.data(), taps.y.data(),
                                              grid.base_x, grid.base_y, scale, samples, height, width, s);
        for (int64_t g = g_begin; g < g_end; ++g) {
          const scalar_t* go = grad_output + pix * C + g * Cg;
          for (int64_t q = (g - g_begin) * P; q < (g - g_begin + 1) * P; ++q) {
            int64_t rows[4];
            bool valid[4];
            acc_t corner_weights[4];
            acc_t dots[4];
            for (int k = 0; k < 4; ++k) {
              rows[k] = int64_t(s.index[k * samples + q]) * C;
              valid[k] = s.valid[k * samples + q] != 0;
              corner_weights[k] = s.weight[k * samples + q];
            }
            if constexpr (kCg > 0) {
              corners_backward_fixed<scalar_t, acc_t, grad_t, kCg>(grad_value_n + g * Cg, go, value_n + g * Cg, rows,
                                                                   valid, corner_weights, dots);
            } else {
              corners_backward_runtime<scalar_t, acc_t, grad_t>(grad_value_n + g * Cg, go, value_n + g * Cg, rows,
                                                                valid, corner_weights, Cg, dots);
            }
            for (int k = 0; k < 4; ++k) {
              s.dots[k * samples + q] = dots[k];
            }
          }
        }
        sample_grads<acc_t>(samples, scale, s);
        if (mask_logits) {
          for (int64_t q = 0; q < samples; q += P) {
            softmax_jacobian<acc_t>(weights.data() + q, s.grad_weight.data() + q, P);
          }
        }
        for (int64_t q = 0; q < samples; ++q) {
          grad_offset[2 * (first + q)] = static_cast<scalar_t>(s.grad_x[q]);
          grad_offset[2 * (first + q) + 1] = static_cast<scalar_t>(s.grad_y[q]);
          grad_mask[first + q] = static_cast<scalar_t>(s.grad_weight[q]);
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
