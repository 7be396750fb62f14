// DCNv4 CPU loops, included twice by dcnv4_cpu.cpp like dcnv3_cpu_impl.h (once per ISA, namespace DCNV3_CPU_ISA).
// DCNv4 samples exactly as DCNv3; only its inputs are laid out differently (fused offsets and weights) and its weights
// are used as given. So the backward reuses the DCNv3 backward's phases (dcnv3_cpu_impl.h, included here for the same
// ISA) on the split fused row, and the forward reuses the tap table and the locating arithmetic, with its own gather
// loop that keeps the sums in registers.
// No include guard on purpose.
#ifndef DCNV3_CPU_ISA
#error "define DCNV3_CPU_ISA before including dcnv4_cpu_impl.h"
#endif

#include "dcnv3_cpu/dcnv3_cpu_impl.h"

namespace dcnv4 {
namespace DCNV3_CPU_ISA {

using dcnv3::Params;
using dcnv3::TapGrid;
using dcnv3::tap_grid;
using dcnv3::DCNV3_CPU_ISA::SampleGrads;
using dcnv3::DCNV3_CPU_ISA::TapTable;

// Forward phase 1 output for the S = G * P samples of one output pixel: the four bilinear corners of each sample as
// element offsets into the image and weights with the point weight folded in, [4][S] each, corners (y0, x0),
// (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1).
template <typename acc_t>
struct Corners {
  std::vector<acc_t> weight;     // 0 for a corner in the zero padding
  std::vector<int32_t> element;  // (y * W + x) * C of the corner, clamped onto the image

  explicit Corners(int64_t samples) : weight(4 * samples), element(4 * samples) {}
};

// The pixel's S offsets and weights out of the fused row, as separate flat arrays (dx[q], dy[q], weight[q] for
// sample q = g * P + point) that the locating loop reads with plain vector loads.
template <typename scalar_t, typename acc_t>
inline void split_fused_pixel(const scalar_t* __restrict__ row, int64_t groups, int64_t points, acc_t* __restrict__ dx,
                              acc_t* __restrict__ dy, acc_t* __restrict__ weights) {
  for (int64_t g = 0; g < groups; ++g) {
    const scalar_t* __restrict__ group_row = row + g * 3 * points;
    for (int64_t k = 0; k < points; ++k) {
      dx[g * points + k] = acc_t(group_row[2 * k]);
      dy[g * points + k] = acc_t(group_row[2 * k + 1]);
      weights[g * points + k] = acc_t(group_row[2 * points + k]);
    }
  }
}

// Forward phase 1: the arithmetic of DCNv3's `locate_samples` (same locations, corner weights and NaN behaviour) with
// the corner rows as element offsets premultiplied by C, so that phase 2 addresses them without a multiply. A corner in
// the zero padding gets weight 0 and an offset clamped onto the image; a sample entirely outside (or at a NaN
// location) moves to (0, 0) with point weight 0, NaN when the location or weight is not finite (the reference adds
// weight * 0 there).
template <typename acc_t>
inline void locate_corners(const acc_t* __restrict__ dx, const acc_t* __restrict__ dy,
                           const acc_t* __restrict__ point_weight, const acc_t* __restrict__ tap_x,
                           const acc_t* __restrict__ tap_y, const TapGrid<acc_t>& grid, int64_t samples, int32_t height,
                           int32_t width, int32_t channels, Corners<acc_t>& corners) {
  const acc_t base_x = grid.base_x, base_y = grid.base_y, scale = grid.scale;
  const int32_t row_stride = width * channels;
  acc_t* w0 = corners.weight.data();
  acc_t* w1 = w0 + samples;
  acc_t* w2 = w1 + samples;
  acc_t* w3 = w2 + samples;
  int32_t* e0 = corners.element.data();
  int32_t* e1 = e0 + samples;
  int32_t* e2 = e1 + samples;
  int32_t* e3 = e2 + samples;
  // The rows are disjoint and the inputs are not written, but GCC cannot prove it (it ignores block-scope restrict).
#pragma GCC ivdep
  for (int64_t q = 0; q < samples; ++q) {
    const acc_t sx = base_x + scale * (tap_x[q] + dx[q]);
    const acc_t sy = base_y + scale * (tap_y[q] + dy[q]);
    // `&`, not `&&`, and `v - v == 0` as the finiteness test: both keep the loop branch-free, hence vectorised.
    const bool inside = (sy > acc_t(-1)) & (sx > acc_t(-1)) & (sy < acc_t(height)) & (sx < acc_t(width));
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
    const acc_t top = y0 >= 0 ? (acc_t(1) - ly) * m : acc_t(0);
    const acc_t bottom = y0 + 1 < height ? ly * m : acc_t(0);
    const acc_t left = x0 >= 0 ? acc_t(1) - lx : acc_t(0);
    const acc_t right = x0 + 1 < width ? lx : acc_t(0);
    const int32_t row_a = std::max(y0, 0) * row_stride, row_b = std::min(y0 + 1, height - 1) * row_stride;
    const int32_t col_a = std::max(x0, 0) * channels, col_b = std::min(x0 + 1, width - 1) * channels;
    w0[q] = top * left;
    w1[q] = top * right;
    w2[q] = bottom * left;
    w3[q] = bottom * right;
    e0[q] = row_a + col_a;
    e1[q] = row_a + col_b;
    e2[q] = row_b + col_a;
    e3[q] = row_b + col_b;
  }
}

// Channels per block of the forward's channel loop: two AVX2 registers of floats.
constexpr int kBlock = 16;

#if defined(DCNV3_CPU_AVX2)
// `sample_block` for float and kVecs whole AVX2 registers (8 or 16 channels).
template <int kVecs>
inline void sample_block_avx2(float* __restrict__ out, const float* __restrict__ value_block, const float* w,
                              const int32_t* element, int64_t first, int64_t points, int64_t samples) {
  __m256 sum[4][kVecs];
  for (int k = 0; k < 4; ++k) {
    for (int v = 0; v < kVecs; ++v) sum[k][v] = _mm256_setzero_ps();
  }
  for (int64_t q = first; q < first + points; ++q) {
    for (int k = 0; k < 4; ++k) {
      const float* corner = value_block + element[k * samples + q];
      const __m256 weight = _mm256_set1_ps(w[k * samples + q]);
      for (int v = 0; v < kVecs; ++v) sum[k][v] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(corner + 8 * v), sum[k][v]);
    }
  }
  for (int v = 0; v < kVecs; ++v) {
    const __m256 total = _mm256_add_ps(_mm256_add_ps(sum[0][v], sum[1][v]), _mm256_add_ps(sum[2][v], sum[3][v]));
    _mm256_storeu_ps(out + 8 * v, total);
  }
}
#endif

// Forward phase 2: out[c] = sum over the group's P samples and 4 corners of w * value[corner][c], for the channels
// [c0, c0 + width) of one group, width <= kBlock. The sums stay in registers across the P samples (one running sum
// per corner and lane, so that the four corners' products are independent chains) and are written once, where the
// DCNv3 loop adds every sample into an accumulator array in memory.
template <typename scalar_t, typename acc_t>
inline void sample_block(scalar_t* __restrict__ out, const scalar_t* __restrict__ value_block,
                         const Corners<acc_t>& corners, int64_t first, int64_t points, int64_t samples, int width) {
  const acc_t* w = corners.weight.data();
  const int32_t* element = corners.element.data();
#if defined(DCNV3_CPU_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (width == kBlock) return sample_block_avx2<2>(out, value_block, w, element, first, points, samples);
    if (width == kBlock / 2) return sample_block_avx2<1>(out, value_block, w, element, first, points, samples);
  }
#endif
  acc_t sum[4][kBlock] = {};
  for (int64_t q = first; q < first + points; ++q) {
    for (int k = 0; k < 4; ++k) {
      const scalar_t* __restrict__ v = value_block + element[k * samples + q];
      const acc_t weight = w[k * samples + q];
      if (width == kBlock) {  // the whole-block case as its own loop: a constant trip count vectorises
        for (int c = 0; c < kBlock; ++c) sum[k][c] += weight * acc_t(v[c]);
      } else {
        for (int c = 0; c < width; ++c) sum[k][c] += weight * acc_t(v[c]);
      }
    }
  }
  for (int c = 0; c < width; ++c) {
    out[c] = static_cast<scalar_t>((sum[0][c] + sum[1][c]) + (sum[2][c] + sum[3][c]));
  }
}

// Forward: parallel over output pixels. Per pixel, the fused row is split once, the G * P samples are located in
// one vectorised pass, then each group's channels are gathered block by block.
template <typename scalar_t>
void forward_typed(const scalar_t* value, const scalar_t* offset_mask, scalar_t* out, const Params& p,
                   int64_t row_width) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t out_hw = p.out_h * p.out_w;
  const int64_t pixels = p.batch * out_hw;
  const int64_t C = p.channels;
  const int64_t Cg = p.group_channels;
  const int64_t P = p.points;
  const int64_t samples = p.group * P;
  // ~32k multiply-adds per grain keeps the OpenMP overhead negligible even for 7x7 maps.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, 4 * C * P));
  const TapTable<acc_t> taps(p);
  const int32_t height = static_cast<int32_t>(p.height);
  const int32_t width = static_cast<int32_t>(p.width);
  const int32_t channels = static_cast<int32_t>(C);

  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dx(samples), dy(samples), weights(samples);
    Corners<acc_t> corners(samples);
    for (int64_t pix = begin; pix < end; ++pix) {
      const int64_t n = pix / out_hw;
      const int64_t local = pix % out_hw;
      const TapGrid<acc_t> grid = tap_grid<acc_t>(local / p.out_w, local % p.out_w, p.kernel_h, p.kernel_w,
                                                  p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h,
                                                  p.dilation_w, p.offset_scale);
      split_fused_pixel<scalar_t, acc_t>(offset_mask + pix * row_width, p.group, P, dx.data(), dy.data(),
                                         weights.data());
      locate_corners<acc_t>(dx.data(), dy.data(), weights.data(), taps.x.data(), taps.y.data(), grid, samples,
                            height, width, channels, corners);
      const scalar_t* value_n = value + n * p.height * p.width * C;
      scalar_t* o = out + pix * C;
      for (int64_t g = 0; g < p.group; ++g) {
        for (int64_t c0 = 0; c0 < Cg; c0 += kBlock) {
          const int block = static_cast<int>(std::min<int64_t>(kBlock, Cg - c0));
          sample_block<scalar_t, acc_t>(o + g * Cg + c0, value_n + g * Cg + c0, corners, g * P, P, samples, block);
        }
      }
    }
  });
}

// For the backward: the offsets and weights of G' consecutive groups of one output pixel out of the fused row (group
// g at columns [g * 3P, (g + 1) * 3P): 2P offsets, then P weights), in the flat layout of the DCNv3 backward phases:
// offsets[2 * q + {0, 1}] and weights[q] for sample q = g * P + point. The padding columns are never touched.
template <typename scalar_t, typename acc_t>
inline void split_fused_row(const scalar_t* __restrict__ row, int64_t groups, int64_t points,
                            acc_t* __restrict__ offsets, acc_t* __restrict__ weights) {
  for (int64_t g = 0; g < groups; ++g) {
    const scalar_t* __restrict__ group_row = row + g * 3 * points;
    for (int64_t k = 0; k < 2 * points; ++k) {
      offsets[g * 2 * points + k] = acc_t(group_row[k]);
    }
    for (int64_t k = 0; k < points; ++k) {
      weights[g * points + k] = acc_t(group_row[2 * points + k]);
    }
  }
}

// Backward: DCNv3's backward (`dcnv3_cpu_impl.h`) on the fused layout. One task per (image, range of groups) owns
// grad_value[n, :, :, channels of its groups] (no atomics, deterministic for any thread count); per output pixel
// the range's samples are located, the corner dot products and the grad_value scatter run over each group's
// channels, and the offset and weight gradients are written into the range's columns of grad_offset_mask (the
// padding columns are the caller's).
template <typename scalar_t, typename grad_t, int kCg>
void backward_loops(const scalar_t* grad_output, const scalar_t* value, const scalar_t* offset_mask,
                    grad_t* grad_value, scalar_t* grad_offset_mask, const Params& p, int64_t row_width) {
  using acc_t = at::opmath_type<scalar_t>;
  namespace impl = dcnv3::DCNV3_CPU_ISA;
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
    std::vector<acc_t> offsets(2 * range_size * P);
    std::vector<acc_t> weights(range_size * P);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / ranges;
      const int64_t g_begin = (task % ranges) * range_size;
      const int64_t g_end = std::min(G, g_begin + range_size);
      const int64_t samples = (g_end - g_begin) * P;
      const scalar_t* value_n = value + n * p.height * p.width * C;
      grad_t* grad_value_n = grad_value + n * p.height * p.width * C;
      for (int64_t local = 0; local < out_hw; ++local) {
        const int64_t pix = n * out_hw + local;
        const int64_t row = pix * row_width + g_begin * 3 * P;  // the range's first column in offset_mask
        const TapGrid<acc_t> grid = tap_grid<acc_t>(local / p.out_w, local % p.out_w, p.kernel_h, p.kernel_w,
                                                    p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h,
                                                    p.dilation_w, p.offset_scale);
        split_fused_row<scalar_t, acc_t>(offset_mask + row, g_end - g_begin, P, offsets.data(), weights.data());
        // The tap table repeats the same taps for every group, so its first `samples` entries serve any range.
        impl::locate_pixel_samples<acc_t, acc_t>(offsets.data(), weights.data(), taps.x.data(), taps.y.data(),
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
              impl::corners_backward_fixed<scalar_t, acc_t, grad_t, kCg>(grad_value_n + g * Cg, go, value_n + g * Cg,
                                                                         rows, valid, corner_weights, dots);
            } else {
              impl::corners_backward_runtime<scalar_t, acc_t, grad_t>(grad_value_n + g * Cg, go, value_n + g * Cg,
                                                                      rows, valid, corner_weights, Cg, dots);
            }
            for (int k = 0; k < 4; ++k) {
              s.dots[k * samples + q] = dots[k];
            }
          }
        }
        impl::sample_grads<acc_t>(samples, scale, s);
        for (int64_t g = 0; g < g_end - g_begin; ++g) {
          scalar_t* grad_row = grad_offset_mask + row + g * 3 * P;
          for (int64_t k = 0; k < P; ++k) {
            grad_row[2 * k] = static_cast<scalar_t>(s.grad_x[g * P + k]);
            grad_row[2 * k + 1] = static_cast<scalar_t>(s.grad_y[g * P + k]);
            grad_row[2 * P + k] = static_cast<scalar_t>(s.grad_weight[g * P + k]);
          }
        }
      }
    }
  });
}

template <typename scalar_t, typename grad_t>
void backward_typed(const scalar_t* grad_output, const scalar_t* value, const scalar_t* offset_mask,
                    grad_t* grad_value, scalar_t* grad_offset_mask, const Params& p, int64_t row_width) {
  switch (p.group_channels) {  // the official widths (16: FlashInternImage-T..L, 32: wider groups) take whole registers
    case 16:
      return backward_loops<scalar_t, grad_t, 16>(grad_output, value, offset_mask, grad_value, grad_offset_mask, p,
                                                   row_width);
    case 32:
      return backward_loops<scalar_t, grad_t, 32>(grad_output, value, offset_mask, grad_value, grad_offset_mask, p,
                                                   row_width);
    default:
      return backward_loops<scalar_t, grad_t, 0>(grad_output, value, offset_mask, grad_value, grad_offset_mask, p,
                                                  row_width);
  }
}

}  // namespace DCNV3_CPU_ISA
}  // namespace dcnv4
