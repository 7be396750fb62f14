// Sampling-location and bilinear-weight helper shared by the CPU and CUDA implementations.
//
// For output pixel (ho, wo), group g and tap (i, j) (i along x / kernel_w, j along y / kernel_h):
//   x = wo * stride_w - pad_w + c_w + s * (i * dilation_w - c_w + dx)
//   y = ho * stride_h - pad_h + c_h + s * (j * dilation_h - c_h + dy)
// with c_w = dilation_w * (kernel_w - 1) / 2 (c_h likewise). Pixel centres are integers and samples
// outside [0, H-1] x [0, W-1] read zeros.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DCNV3_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always_inline: the CPU code calls these from a `#pragma GCC target("avx2")` block, into which GCC does not inline
// plain inline functions compiled for the baseline ISA (it emitted a call per sample).
#define DCNV3_HOST_DEVICE inline __attribute__((always_inline))
#else
#define DCNV3_HOST_DEVICE inline
#endif

namespace dcnv3 {

// Four bilinear corners of one sample: (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1).
template <typename acc_t>
struct Bilinear {
  int64_t index[4];  // pixel index y * W + x of each corner (0 when the corner is outside)
  acc_t weight[4];   // bilinear weight of each corner (0 when the corner is outside)
  acc_t dweight_dx[4];
  acc_t dweight_dy[4];
  bool valid[4];
};

// Returns false when the sample lies entirely outside the image (all four corners are zero padding).
// Written as a positive test so that NaN locations are skipped too.
template <typename acc_t>
DCNV3_HOST_DEVICE bool bilinear_at(acc_t y, acc_t x, int64_t height, int64_t width, Bilinear<acc_t>& b) {
  if (!(y > acc_t(-1) && x > acc_t(-1) && y < acc_t(height) && x < acc_t(width))) {
    return false;
  }
  const int64_t y0 = static_cast<int64_t>(floor(y));
  const int64_t x0 = static_cast<int64_t>(floor(x));
  const acc_t ly = y - acc_t(y0);
  const acc_t lx = x - acc_t(x0);
  const acc_t hy = acc_t(1) - ly;
  const acc_t hx = acc_t(1) - lx;
  const bool row0 = y0 >= 0;
  const bool row1 = y0 + 1 <= height - 1;
  const bool col0 = x0 >= 0;
  const bool col1 = x0 + 1 <= width - 1;
  b.valid[0] = row0 && col0;
  b.valid[1] = row0 && col1;
  b.valid[2] = row1 && col0;
  b.valid[3] = row1 && col1;
  b.index[0] = y0 * width + x0;
  b.index[1] = y0 * width + x0 + 1;
  b.index[2] = (y0 + 1) * width + x0;
  b.index[3] = (y0 + 1) * width + x0 + 1;
  b.weight[0] = hy * hx;
  b.weight[1] = hy * lx;
  b.weight[2] = ly * hx;
  b.weight[3] = ly * lx;
  b.dweight_dx[0] = -hy;
  b.dweight_dx[1] = hy;
  b.dweight_dx[2] = -ly;
  b.dweight_dx[3] = ly;
  b.dweight_dy[0] = -hx;
  b.dweight_dy[1] = -lx;
  b.dweight_dy[2] = hx;
  b.dweight_dy[3] = lx;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (!b.valid[k]) {
      b.index[k] = 0;
      b.weight[k] = acc_t(0);
      b.dweight_dx[k] = acc_t(0);
      b.dweight_dy[k] = acc_t(0);
    }
  }
  return true;
}

// Regular-grid part of the sampling location of output pixel (ho, wo) for tap (i, j), before the
// learned offset: base + s * tap. Split so that callers compute it once per tap.
template <typename acc_t>
struct TapGrid {
  acc_t base_x;
  acc_t base_y;
  acc_t scale;
  acc_t centre_x;
  acc_t centre_y;
  int64_t dilation_w;
  int64_t dilation_h;
};

// Sampling location of tap (i, j) (i along x, j along y) with its learned offset (dx, dy), in input pixels.
template <typename acc_t>
DCNV3_HOST_DEVICE acc_t sample_x(const TapGrid<acc_t>& grid, int64_t i, acc_t dx) {
  return grid.base_x + grid.scale * (acc_t(i * grid.dilation_w) - grid.centre_x + dx);
}

template <typename acc_t>
DCNV3_HOST_DEVICE acc_t sample_y(const TapGrid<acc_t>& grid, int64_t j, acc_t dy) {
  return grid.base_y + grid.scale * (acc_t(j * grid.dilation_h) - grid.centre_y + dy);
}

template <typename acc_t>
DCNV3_HOST_DEVICE TapGrid<acc_t> tap_grid(int64_t ho, int64_t wo, const int64_t kernel_h, const int64_t kernel_w,
                                          const int64_t stride_h, const int64_t stride_w, const int64_t pad_h,
                                          const int64_t pad_w, const int64_t dilation_h, const int64_t dilation_w,
                                          const double offset_scale) {
  TapGrid<acc_t> t;
  const int64_t cw = dilation_w * (kernel_w - 1) / 2;
  const int64_t ch = dilation_h * (kernel_h - 1) / 2;
  t.base_x = acc_t(wo * stride_w - pad_w + cw);
  t.base_y = acc_t(ho * stride_h - pad_h + ch);
  t.scale = acc_t(offset_scale);
  t.centre_x = acc_t(cw);
  t.centre_y = acc_t(ch);
  t.dilation_w = dilation_w;
  t.dilation_h = dilation_h;
  return t;
}

}  // namespace dcnv3
