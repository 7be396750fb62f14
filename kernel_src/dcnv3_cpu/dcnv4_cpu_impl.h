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
using dcnv3::DCNV3_CPU_ISA::kQuadCorners;
using dcnv3::DCNV3_CPU_ISA::quad_corners_apply;

// S = G * P rounded up to whole vector registers of floats (16 lanes in the AVX-512 build, else 8): the length of
// the per-sample tables below, so that the vector loops read and write them with plain full-width loads and stores
// (phase 2 reads phase 1's stores back at once, and a load cannot be forwarded from a masked store).
#if defined(DCNV3_CPU_AVX512)
constexpr int64_t kSampleLanes = 16;
#else
constexpr int64_t kSampleLanes = 8;
#endif
inline int64_t padded_samples(int64_t samples) { return (samples + kSampleLanes - 1) / kSampleLanes * kSampleLanes; }

// Forward phase 1 output for the S = G * P samples of one output pixel: the bilinear corners of each sample and
// their weights with the point weight folded in, [4][stride] each, corners (y0, x0), (y0, x0 + 1), (y0 + 1, x0),
// (y0 + 1, x0 + 1). With `quad` (see `quad_corners_apply`) the corners are one 2x2 quad moved inside the image
// and only its top-left corner is stored (element[q]; the others are `step` away), so that phase 2 loads one offset
// per sample instead of four; otherwise every corner is clamped onto the image on its own (element[k * stride + q]).
template <typename acc_t>
struct Corners {
  int64_t stride;                // distance between the corner rows, padded_samples(S)
  bool quad;                     // one 2x2 quad per sample
  int32_t step[4];               // with `quad`: the corners' displacements from element[q], 0, C, W * C, W * C + C
  std::vector<acc_t> weight;     // 0 for a corner in the zero padding
  std::vector<int32_t> element;  // (y * W + x) * C of the corner(s), on the image

  Corners(int64_t samples, bool quad, int32_t width, int32_t channels)
      : stride(padded_samples(samples)), quad(quad), step{0, channels, width * channels, width * channels + channels},
        weight(4 * stride), element((quad ? 1 : 4) * stride) {}
};

// Per sample q = g * P + point, where it finds its inputs in a pixel's fused row (dx at column offset[q], dy right
// after it, the point weight at column weight[q]) and its regular-grid tap. Phase 1 reads the row through this
// table (gathered loads) instead of first copying the row apart, which cost a fifth of the forward. The padding
// entries point at column 0, so that reading them is harmless; their results are never used.
template <typename acc_t>
struct SampleTable {
  std::vector<int32_t> offset;
  std::vector<int32_t> weight;
  std::vector<acc_t> tap_x;
  std::vector<acc_t> tap_y;

  explicit SampleTable(const Params& p) {
    const int64_t samples = p.group * p.points;
    const TapTable<acc_t> taps(p);
    offset.resize(padded_samples(samples));
    weight.resize(padded_samples(samples));
    tap_x.assign(taps.x.begin(), taps.x.end());
    tap_y.assign(taps.y.begin(), taps.y.end());
    tap_x.resize(padded_samples(samples));
    tap_y.resize(padded_samples(samples));
    for (int64_t g = 0; g < p.group; ++g) {
      for (int64_t k = 0; k < p.points; ++k) {
        offset[g * p.points + k] = static_cast<int32_t>(g * 3 * p.points + 2 * k);
        weight[g * p.points + k] = static_cast<int32_t>(g * 3 * p.points + 2 * p.points + k);
      }
    }
  }
};

#if defined(DCNV3_CPU_AVX2)
// `locate_corners` for float, eight samples per step written out in AVX2: the row is read with gathers and each
// select becomes a mask (GCC's own vectorisation of the loop emulates the gathers with scalar loads and spills its
// masks).
inline void locate_corners_avx2(const float* row, const SampleTable<float>& table, const TapGrid<float>& grid,
                                int64_t samples, int32_t height, int32_t width, int32_t channels,
                                Corners<float>& corners) {
  const __m256 base_x = _mm256_set1_ps(grid.base_x), base_y = _mm256_set1_ps(grid.base_y);
  const __m256 scale = _mm256_set1_ps(grid.scale);
  const __m256 one = _mm256_set1_ps(1.0f), minus_one = _mm256_set1_ps(-1.0f);
  const __m256 height_f = _mm256_set1_ps(float(height)), width_f = _mm256_set1_ps(float(width));
  const __m256i one_i = _mm256_set1_epi32(1), minus_one_i = _mm256_set1_epi32(-1), zero_i = _mm256_setzero_si256();
  const __m256i last_row = _mm256_set1_epi32(height - 1), last_col = _mm256_set1_epi32(width - 1);
  const __m256i row_stride = _mm256_set1_epi32(width * channels), channels_i = _mm256_set1_epi32(channels);
  const int64_t stride = corners.stride;
  for (int64_t q = 0; q < samples; q += 8) {
    const __m256i offset_col = _mm256_loadu_si256((const __m256i*)(table.offset.data() + q));
    const __m256 dx = _mm256_i32gather_ps(row, offset_col, 4);
    const __m256 dy = _mm256_i32gather_ps(row + 1, offset_col, 4);
    const __m256 w = _mm256_i32gather_ps(row, _mm256_loadu_si256((const __m256i*)(table.weight.data() + q)), 4);
    const __m256 sx = _mm256_fmadd_ps(scale, _mm256_add_ps(_mm256_loadu_ps(table.tap_x.data() + q), dx), base_x);
    const __m256 sy = _mm256_fmadd_ps(scale, _mm256_add_ps(_mm256_loadu_ps(table.tap_y.data() + q), dy), base_y);
    // Ordered comparisons: a NaN location is not inside.
    const __m256 inside = _mm256_and_ps(
        _mm256_and_ps(_mm256_cmp_ps(sx, minus_one, _CMP_GT_OQ), _mm256_cmp_ps(sy, minus_one, _CMP_GT_OQ)),
        _mm256_and_ps(_mm256_cmp_ps(sx, width_f, _CMP_LT_OQ), _mm256_cmp_ps(sy, height_f, _CMP_LT_OQ)));
    // Outside, the point weight becomes 0, or NaN where the location or weight is not finite: v - v is 0 for a
    // finite v and NaN otherwise.
    const __m256 outside = _mm256_add_ps(_mm256_add_ps(_mm256_sub_ps(sx, sx), _mm256_sub_ps(sy, sy)),
                                         _mm256_sub_ps(w, w));
    const __m256 m = _mm256_blendv_ps(outside, w, inside);
    const __m256 x = _mm256_and_ps(inside, sx);
    const __m256 y = _mm256_and_ps(inside, sy);
    // x, y > -1: truncating x + 1 is floor(x) + 1.
    const __m256i x0 = _mm256_sub_epi32(_mm256_cvttps_epi32(_mm256_add_ps(x, one)), one_i);
    const __m256i y0 = _mm256_sub_epi32(_mm256_cvttps_epi32(_mm256_add_ps(y, one)), one_i);
    const __m256 lx = _mm256_sub_ps(x, _mm256_cvtepi32_ps(x0));
    const __m256 ly = _mm256_sub_ps(y, _mm256_cvtepi32_ps(y0));
    const __m256i top_in = _mm256_cmpgt_epi32(y0, minus_one_i), bottom_in = _mm256_cmpgt_epi32(last_row, y0);
    const __m256i left_in = _mm256_cmpgt_epi32(x0, minus_one_i), right_in = _mm256_cmpgt_epi32(last_col, x0);
    float* weight = corners.weight.data() + q;
    auto* element = reinterpret_cast<__m256i*>(corners.element.data() + q);
    const __m256 top = _mm256_and_ps(_mm256_castsi256_ps(top_in), _mm256_mul_ps(_mm256_sub_ps(one, ly), m));
    const __m256 bottom = _mm256_and_ps(_mm256_castsi256_ps(bottom_in), _mm256_mul_ps(ly, m));
    const __m256 left = _mm256_and_ps(_mm256_castsi256_ps(left_in), _mm256_sub_ps(one, lx));
    const __m256 right = _mm256_and_ps(_mm256_castsi256_ps(right_in), lx);
    // The corner offsets from the first in-image corner: one column (C) further right unless the right column or
    // the left column is outside (then both clamp to the same column), likewise one row further down.
    const __m256i first = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_max_epi32(y0, zero_i), row_stride),
                                           _mm256_mullo_epi32(_mm256_max_epi32(x0, zero_i), channels_i));
    const __m256i step_x = _mm256_and_si256(_mm256_and_si256(left_in, right_in), channels_i);
    const __m256i step_y = _mm256_and_si256(_mm256_and_si256(top_in, bottom_in), row_stride);
    _mm256_storeu_ps(weight, _mm256_mul_ps(top, left));
    _mm256_storeu_ps(weight + stride, _mm256_mul_ps(top, right));
    _mm256_storeu_ps(weight + 2 * stride, _mm256_mul_ps(bottom, left));
    _mm256_storeu_ps(weight + 3 * stride, _mm256_mul_ps(bottom, right));
    _mm256_storeu_si256(element, first);
    _mm256_storeu_si256(element + stride / 8, _mm256_add_epi32(first, step_x));
    _mm256_storeu_si256(element + 2 * stride / 8, _mm256_add_epi32(first, step_y));
    _mm256_storeu_si256(element + 3 * stride / 8, _mm256_add_epi32(_mm256_add_epi32(first, step_x), step_y));
  }
}
#endif

#if defined(DCNV3_CPU_AVX512)
// `locate_corners_avx2` sixteen samples per step, with mask registers for the comparisons and selects.
inline void locate_corners_avx512(const float* row, const SampleTable<float>& table, const TapGrid<float>& grid,
                                  int64_t samples, int32_t height, int32_t width, int32_t channels,
                                  Corners<float>& corners) {
  const __m512 base_x = _mm512_set1_ps(grid.base_x), base_y = _mm512_set1_ps(grid.base_y);
  const __m512 scale = _mm512_set1_ps(grid.scale);
  const __m512 one = _mm512_set1_ps(1.0f), minus_one = _mm512_set1_ps(-1.0f);
  const __m512 height_f = _mm512_set1_ps(float(height)), width_f = _mm512_set1_ps(float(width));
  const __m512i one_i = _mm512_set1_epi32(1), minus_one_i = _mm512_set1_epi32(-1), zero_i = _mm512_setzero_si512();
  const __m512i last_row = _mm512_set1_epi32(height - 1), last_col = _mm512_set1_epi32(width - 1);
  const __m512i row_stride = _mm512_set1_epi32(width * channels), channels_i = _mm512_set1_epi32(channels);
  const int64_t stride = corners.stride;
  for (int64_t q = 0; q < samples; q += 16) {
    const __m512i offset_col = _mm512_loadu_si512(table.offset.data() + q);
    const __m512 dx = _mm512_i32gather_ps(offset_col, row, 4);
    const __m512 dy = _mm512_i32gather_ps(offset_col, row + 1, 4);
    const __m512 w = _mm512_i32gather_ps(_mm512_loadu_si512(table.weight.data() + q), row, 4);
    const __m512 sx = _mm512_fmadd_ps(scale, _mm512_add_ps(_mm512_loadu_ps(table.tap_x.data() + q), dx), base_x);
    const __m512 sy = _mm512_fmadd_ps(scale, _mm512_add_ps(_mm512_loadu_ps(table.tap_y.data() + q), dy), base_y);
    // Ordered comparisons: a NaN location is not inside.
    const __mmask16 inside =
        _mm512_cmp_ps_mask(sx, minus_one, _CMP_GT_OQ) & _mm512_cmp_ps_mask(sy, minus_one, _CMP_GT_OQ) &
        _mm512_cmp_ps_mask(sx, width_f, _CMP_LT_OQ) & _mm512_cmp_ps_mask(sy, height_f, _CMP_LT_OQ);
    // Outside, the point weight becomes 0, or NaN where the location or weight is not finite (as in the AVX2 loop).
    const __m512 outside = _mm512_add_ps(_mm512_add_ps(_mm512_sub_ps(sx, sx), _mm512_sub_ps(sy, sy)),
                                         _mm512_sub_ps(w, w));
    const __m512 m = _mm512_mask_blend_ps(inside, outside, w);
    const __m512 x = _mm512_maskz_mov_ps(inside, sx);
    const __m512 y = _mm512_maskz_mov_ps(inside, sy);
    // x, y > -1: truncating x + 1 is floor(x) + 1.
    const __m512i x0 = _mm512_sub_epi32(_mm512_cvttps_epi32(_mm512_add_ps(x, one)), one_i);
    const __m512i y0 = _mm512_sub_epi32(_mm512_cvttps_epi32(_mm512_add_ps(y, one)), one_i);
    const __m512 lx = _mm512_sub_ps(x, _mm512_cvtepi32_ps(x0));
    const __m512 ly = _mm512_sub_ps(y, _mm512_cvtepi32_ps(y0));
    const __mmask16 top_in = _mm512_cmpgt_epi32_mask(y0, minus_one_i);
    const __mmask16 bottom_in = _mm512_cmpgt_epi32_mask(last_row, y0);
    const __mmask16 left_in = _mm512_cmpgt_epi32_mask(x0, minus_one_i);
    const __mmask16 right_in = _mm512_cmpgt_epi32_mask(last_col, x0);
    float* weight = corners.weight.data() + q;
    int32_t* element = corners.element.data() + q;
    if (corners.quad) {
      // The quad's top-left corner (ya, xa) = (clamp(y0, 0, H - 2), clamp(x0, 0, W - 2)). Where y0 was clamped
      // up, row y0 + 1 (weight `lower`) is the quad's first row; where y0 + 1 was clamped down, row y0 (weight
      // `upper`) is its second; the quad's other row gets weight 0. Likewise for the columns.
      const __m512 upper = _mm512_mul_ps(_mm512_sub_ps(one, ly), m), lower = _mm512_mul_ps(ly, m);
      const __m512 hx = _mm512_sub_ps(one, lx);
      const __m512 row_a = _mm512_mask_blend_ps(top_in, lower, _mm512_maskz_mov_ps(bottom_in, upper));
      const __m512 row_b = _mm512_maskz_mov_ps(top_in, _mm512_mask_blend_ps(bottom_in, upper, lower));
      const __m512 col_a = _mm512_mask_blend_ps(left_in, lx, _mm512_maskz_mov_ps(right_in, hx));
      const __m512 col_b = _mm512_maskz_mov_ps(left_in, _mm512_mask_blend_ps(right_in, hx, lx));
      const __m512i ya = _mm512_min_epi32(_mm512_max_epi32(y0, zero_i), _mm512_sub_epi32(last_row, one_i));
      const __m512i xa = _mm512_min_epi32(_mm512_max_epi32(x0, zero_i), _mm512_sub_epi32(last_col, one_i));
      _mm512_storeu_ps(weight, _mm512_mul_ps(row_a, col_a));
      _mm512_storeu_ps(weight + stride, _mm512_mul_ps(row_a, col_b));
      _mm512_storeu_ps(weight + 2 * stride, _mm512_mul_ps(row_b, col_a));
      _mm512_storeu_ps(weight + 3 * stride, _mm512_mul_ps(row_b, col_b));
      _mm512_storeu_si512(element,
                          _mm512_add_epi32(_mm512_mullo_epi32(ya, row_stride), _mm512_mullo_epi32(xa, channels_i)));
      continue;
    }
    const __m512 top = _mm512_maskz_mul_ps(top_in, _mm512_sub_ps(one, ly), m);
    const __m512 bottom = _mm512_maskz_mul_ps(bottom_in, ly, m);
    const __m512 left = _mm512_maskz_sub_ps(left_in, one, lx);
    const __m512 right = _mm512_maskz_mov_ps(right_in, lx);
    // The corner offsets from the first in-image corner, as in the AVX2 loop.
    const __m512i first = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_max_epi32(y0, zero_i), row_stride),
                                           _mm512_mullo_epi32(_mm512_max_epi32(x0, zero_i), channels_i));
    const __m512i step_x = _mm512_maskz_mov_epi32(left_in & right_in, channels_i);
    const __m512i step_y = _mm512_maskz_mov_epi32(top_in & bottom_in, row_stride);
    _mm512_storeu_ps(weight, _mm512_mul_ps(top, left));
    _mm512_storeu_ps(weight + stride, _mm512_mul_ps(top, right));
    _mm512_storeu_ps(weight + 2 * stride, _mm512_mul_ps(bottom, left));
    _mm512_storeu_ps(weight + 3 * stride, _mm512_mul_ps(bottom, right));
    _mm512_storeu_si512(element, first);
    _mm512_storeu_si512(element + stride, _mm512_add_epi32(first, step_x));
    _mm512_storeu_si512(element + 2 * stride, _mm512_add_epi32(first, step_y));
    _mm512_storeu_si512(element + 3 * stride, _mm512_add_epi32(_mm512_add_epi32(first, step_x), step_y));
  }
}
#endif

// Forward phase 1: the arithmetic of DCNv3's `locate_samples` (same locations, corner weights and NaN behaviour) with
// the corner rows as element offsets premultiplied by C, so that phase 2 addresses them without a multiply. A corner in
// the zero padding gets weight 0 and an offset clamped onto the image (or, with kQuad, is the quad's corner
// inside the image, see `Corners`); a sample entirely outside (or at a NaN location) moves to (0, 0) with point
// weight 0, NaN when the location or weight is not finite (the reference adds weight * 0 there).
template <typename scalar_t, typename acc_t, bool kQuad>
inline void locate_corners_generic(const scalar_t* __restrict__ row, const SampleTable<acc_t>& table,
                                   const TapGrid<acc_t>& grid, int64_t samples, int32_t height, int32_t width,
                                   int32_t channels, Corners<acc_t>& corners) {
  const acc_t base_x = grid.base_x, base_y = grid.base_y, scale = grid.scale;
  const int32_t row_stride = width * channels;
  const int64_t stride = corners.stride;
  acc_t* w0 = corners.weight.data();
  acc_t* w1 = w0 + stride;
  acc_t* w2 = w1 + stride;
  acc_t* w3 = w2 + stride;
  int32_t* element = corners.element.data();
  const int32_t* __restrict__ offset_col = table.offset.data();
  const int32_t* __restrict__ weight_col = table.weight.data();
  const acc_t* __restrict__ tap_x = table.tap_x.data();
  const acc_t* __restrict__ tap_y = table.tap_y.data();
  // The rows are disjoint and the inputs are not written, but GCC cannot prove it (it ignores block-scope restrict).
#pragma GCC ivdep
  for (int64_t q = 0; q < samples; ++q) {
    const acc_t sx = base_x + scale * (tap_x[q] + acc_t(row[offset_col[q]]));
    const acc_t sy = base_y + scale * (tap_y[q] + acc_t(row[offset_col[q] + 1]));
    // `&`, not `&&`, and `v - v == 0` as the finiteness test: both keep the loop branch-free, hence vectorised.
    const bool inside = (sy > acc_t(-1)) & (sx > acc_t(-1)) & (sy < acc_t(height)) & (sx < acc_t(width));
    const acc_t w = acc_t(row[weight_col[q]]);
    const bool finite = (sx - sx == acc_t(0)) & (sy - sy == acc_t(0)) & (w - w == acc_t(0));
    const acc_t x = inside ? sx : acc_t(0);
    const acc_t y = inside ? sy : acc_t(0);
    const acc_t m = inside ? w : (finite ? acc_t(0) : std::numeric_limits<acc_t>::quiet_NaN());
    // x, y > -1 here, so truncating x + 1 is floor(x) + 1 (std::floor would be a libm call that blocks vectorising).
    const int32_t x0 = static_cast<int32_t>(x + acc_t(1)) - 1;
    const int32_t y0 = static_cast<int32_t>(y + acc_t(1)) - 1;
    const acc_t lx = x - acc_t(x0);
    const acc_t ly = y - acc_t(y0);
    const acc_t upper = (acc_t(1) - ly) * m, lower = ly * m;
    const bool top_in = y0 >= 0, bottom_in = y0 + 1 < height, left_in = x0 >= 0, right_in = x0 + 1 < width;
    if constexpr (kQuad) {
      // As in `locate_corners_avx512`: a clamped quad row or column takes the in-image weight.
      const acc_t row_a = top_in ? (bottom_in ? upper : acc_t(0)) : lower;
      const acc_t row_b = top_in ? (bottom_in ? lower : upper) : acc_t(0);
      const acc_t col_a = left_in ? (right_in ? acc_t(1) - lx : acc_t(0)) : lx;
      const acc_t col_b = left_in ? (right_in ? lx : acc_t(1) - lx) : acc_t(0);
      const int32_t ya = std::min(std::max(y0, 0), height - 2), xa = std::min(std::max(x0, 0), width - 2);
      w0[q] = row_a * col_a;
      w1[q] = row_a * col_b;
      w2[q] = row_b * col_a;
      w3[q] = row_b * col_b;
      element[q] = ya * row_stride + xa * channels;
    } else {
      const acc_t top = top_in ? upper : acc_t(0);
      const acc_t bottom = bottom_in ? lower : acc_t(0);
      const acc_t left = left_in ? acc_t(1) - lx : acc_t(0);
      const acc_t right = right_in ? lx : acc_t(0);
      const int32_t row_a = std::max(y0, 0) * row_stride, row_b = std::min(y0 + 1, height - 1) * row_stride;
      const int32_t col_a = std::max(x0, 0) * channels, col_b = std::min(x0 + 1, width - 1) * channels;
      w0[q] = top * left;
      w1[q] = top * right;
      w2[q] = bottom * left;
      w3[q] = bottom * right;
      element[q] = row_a + col_a;
      element[stride + q] = row_a + col_b;
      element[2 * stride + q] = row_b + col_a;
      element[3 * stride + q] = row_b + col_b;
    }
  }
}

template <typename scalar_t, typename acc_t>
inline void locate_corners(const scalar_t* __restrict__ row, const SampleTable<acc_t>& table,
                           const TapGrid<acc_t>& grid, int64_t samples, int32_t height, int32_t width,
                           int32_t channels, Corners<acc_t>& corners) {
#if defined(DCNV3_CPU_AVX512)
  if constexpr (std::is_same_v<scalar_t, float>) {
    return locate_corners_avx512(row, table, grid, samples, height, width, channels, corners);
  }
#elif defined(DCNV3_CPU_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) {
    return locate_corners_avx2(row, table, grid, samples, height, width, channels, corners);
  }
#endif
  if constexpr (kQuadCorners) {
    if (corners.quad) {
      return locate_corners_generic<scalar_t, acc_t, true>(row, table, grid, samples, height, width, channels,
                                                           corners);
    }
  }
  locate_corners_generic<scalar_t, acc_t, false>(row, table, grid, samples, height, width, channels, corners);
}

// Channels per block of the forward's channel loop: two AVX2 registers of floats.
constexpr int kBlock = 16;

// Where phase 2 finds the value rows of a sample's four corners: element[k * stride + q], or with quad corners the
// quad's top-left corner element[q] and the constant steps. A copy by value, so that the steps stay in registers
// across the loop over samples (read through `Corners`, GCC reloaded them for every corner).
template <bool kQuad>
struct CornerRows {
  const int32_t* element;
  int64_t stride;
  int64_t step[4];

  template <typename acc_t>
  explicit CornerRows(const Corners<acc_t>& corners)
      : element(corners.element.data()), stride(corners.stride),
        step{corners.step[0], corners.step[1], corners.step[2], corners.step[3]} {}

  // rows[k] = the first value of corner k of sample q in `block`: one offset load and one address for a quad.
  template <typename T>
  void of(const T* block, int64_t q, const T* (&rows)[4]) const {
    if constexpr (kQuad) {
      const T* quad = block + element[q];
      for (int k = 0; k < 4; ++k) rows[k] = quad + step[k];
    } else {
      for (int k = 0; k < 4; ++k) rows[k] = block + element[k * stride + q];
    }
  }
};

#if defined(DCNV3_CPU_AVX2)
// `sample_block` for float and kVecs whole AVX2 registers (8 or 16 channels).
template <int kVecs, bool kQuad>
inline void sample_block_avx2(float* __restrict__ out, const float* __restrict__ value_block, const float* w,
                              const CornerRows<kQuad> corner_rows, int64_t first, int64_t points, int64_t stride) {
  __m256 sum[4][kVecs];
  for (int k = 0; k < 4; ++k) {
    for (int v = 0; v < kVecs; ++v) sum[k][v] = _mm256_setzero_ps();
  }
  for (int64_t q = first; q < first + points; ++q) {
    const float* rows[4];
    corner_rows.of(value_block, q, rows);
    for (int k = 0; k < 4; ++k) {
      const __m256 weight = _mm256_set1_ps(w[k * stride + q]);
      for (int v = 0; v < kVecs; ++v) sum[k][v] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(rows[k] + 8 * v), sum[k][v]);
    }
  }
  for (int v = 0; v < kVecs; ++v) {
    const __m256 total = _mm256_add_ps(_mm256_add_ps(sum[0][v], sum[1][v]), _mm256_add_ps(sum[2][v], sum[3][v]));
    _mm256_storeu_ps(out + 8 * v, total);
  }
}
#endif

#if defined(DCNV3_CPU_AVX512)
// `sample_block` for float and a whole block of 16 channels: one AVX-512 register per corner.
template <bool kQuad>
inline void sample_block_avx512(float* __restrict__ out, const float* __restrict__ value_block, const float* w,
                                const CornerRows<kQuad> corner_rows, int64_t first, int64_t points, int64_t stride) {
  __m512 sum[4];
  for (int k = 0; k < 4; ++k) sum[k] = _mm512_setzero_ps();
  for (int64_t q = first; q < first + points; ++q) {
    const float* rows[4];
    corner_rows.of(value_block, q, rows);
    for (int k = 0; k < 4; ++k) {
      sum[k] = _mm512_fmadd_ps(_mm512_set1_ps(w[k * stride + q]), _mm512_loadu_ps(rows[k]), sum[k]);
    }
  }
  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_add_ps(sum[0], sum[1]), _mm512_add_ps(sum[2], sum[3])));
}
#endif

// Forward phase 2: out[c] = sum over the group's P samples and 4 corners of w * value[corner][c], for the channels
// [c0, c0 + width) of one group, width <= kBlock. The sums stay in registers across the P samples (one running sum
// per corner and lane, so that the four corners' products are independent chains) and are written once, where the
// DCNv3 loop adds every sample into an accumulator array in memory.
template <typename scalar_t, typename acc_t, bool kQuad>
inline void sample_block(scalar_t* __restrict__ out, const scalar_t* __restrict__ value_block,
                         const Corners<acc_t>& corners, int64_t first, int64_t points, int width) {
  const int64_t stride = corners.stride;
  const acc_t* w = corners.weight.data();
  const CornerRows<kQuad> corner_rows(corners);
#if defined(DCNV3_CPU_AVX512)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (width == kBlock) {
      return sample_block_avx512<kQuad>(out, value_block, w, corner_rows, first, points, stride);
    }
  }
#endif
#if defined(DCNV3_CPU_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (width == kBlock) {
      return sample_block_avx2<2, kQuad>(out, value_block, w, corner_rows, first, points, stride);
    }
    if (width == kBlock / 2) {
      return sample_block_avx2<1, kQuad>(out, value_block, w, corner_rows, first, points, stride);
    }
  }
#endif
  acc_t sum[4][kBlock] = {};
  for (int64_t q = first; q < first + points; ++q) {
    const scalar_t* rows[4];
    corner_rows.of(value_block, q, rows);
    for (int k = 0; k < 4; ++k) {
      const scalar_t* __restrict__ v = rows[k];
      const acc_t weight = w[k * stride + q];
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

// Phase 2 for every group and channel block of one output pixel.
template <typename scalar_t, typename acc_t, bool kQuad>
inline void sample_pixel(scalar_t* __restrict__ out, const scalar_t* __restrict__ value_n,
                         const Corners<acc_t>& corners, int64_t groups, int64_t group_channels, int64_t points) {
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t c0 = 0; c0 < group_channels; c0 += kBlock) {
      const int block = static_cast<int>(std::min<int64_t>(kBlock, group_channels - c0));
      sample_block<scalar_t, acc_t, kQuad>(out + g * group_channels + c0, value_n + g * group_channels + c0, corners,
                                           g * points, points, block);
    }
  }
}

// Forward: parallel over output pixels. Per pixel, the G * P samples are located in one vectorised pass that reads
// the fused row in place, then each group's channels are gathered block by block.
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
  const SampleTable<acc_t> table(p);
  const int32_t height = static_cast<int32_t>(p.height);
  const int32_t width = static_cast<int32_t>(p.width);
  const int32_t channels = static_cast<int32_t>(C);

  const bool quad = kQuadCorners && quad_corners_apply(value, p.batch, p.height, p.width, C);

  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    Corners<acc_t> corners(samples, quad, width, channels);
    for (int64_t pix = begin; pix < end; ++pix) {
      const int64_t n = pix / out_hw;
      const int64_t local = pix % out_hw;
      const TapGrid<acc_t> grid = tap_grid<acc_t>(local / p.out_w, local % p.out_w, p.kernel_h, p.kernel_w,
                                                  p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h,
                                                  p.dilation_w, p.offset_scale);
      locate_corners<scalar_t, acc_t>(offset_mask + pix * row_width, table, grid, samples, height, width, channels,
                                      corners);
      const scalar_t* value_n = value + n * p.height * p.width * C;
      if constexpr (kQuadCorners) {
        if (quad) {
          sample_pixel<scalar_t, acc_t, true>(out + pix * C, value_n, corners, p.group, Cg, P);
          continue;
        }
      }
      sample_pixel<scalar_t, acc_t, false>(out + pix * C, value_n, corners, p.group, Cg, P);
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
