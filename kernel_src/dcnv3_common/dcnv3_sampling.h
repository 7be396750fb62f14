// The DCNv3 sampling formula and the regular-grid part of it (used by the CPU loops; the CUDA kernel follows it).
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
// always_inline: the CPU code calls this from a `#pragma GCC target("avx2")` block, into which GCC does not inline
// plain inline functions compiled for the baseline ISA (it emitted a call per sample).
#define DCNV3_HOST_DEVICE inline __attribute__((always_inline))
#else
#define DCNV3_HOST_DEVICE inline
#endif

namespace dcnv3 {

// Regular-grid part of the sampling location of output pixel (ho, wo) for tap (i, j), before the
// learned offset: base + s * tap. Split so that callers compute it once per tap.
template <typename acc_t>
struct TapGrid {
  acc_t base_x;
  acc_t base_y;
  acc_t scale;
};

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
  return t;
}

}  // namespace dcnv3
