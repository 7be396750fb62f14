// DCNv3 CPU loops, included twice by dcnv3_cpu.cpp: once for baseline x86-64 / other architectures and
// once inside a `#pragma GCC target("avx2,fma")` region (namespace DCNV3_CPU_ISA), picked at run time.
// No include guard on purpose.
#ifndef DCNV3_CPU_ISA
#error "define DCNV3_CPU_ISA before including dcnv3_cpu_impl.h"
#endif

namespace dcnv3 {
namespace DCNV3_CPU_ISA {

// Forward bilinear sample of one tap at (y, x), mask folded into the weights: acc[c] += sum_k w_k * v_k[c].
// Branch-free: a corner in the zero padding gets weight 0 and its index is clamped onto the image, so border
// samples take the same vectorised pass over the channels as interior ones. (Only an inf/NaN in the image
// can tell the difference: the clamped read then turns an inf result into NaN.)
// kCg > 0 fixes the group width at compile time (the channel loop then unrolls into whole vector registers).
template <typename scalar_t, typename acc_t, int kCg>
inline void accumulate_sample(acc_t* __restrict__ acc, const scalar_t* __restrict__ value_group, acc_t y, acc_t x,
                              acc_t mask, int64_t height, int64_t width, int64_t channels, int64_t runtime_cg) {
  const int64_t group_channels = kCg > 0 ? kCg : runtime_cg;
  const acc_t yf = std::floor(y);
  const acc_t xf = std::floor(x);
  const int64_t y0 = static_cast<int64_t>(yf);
  const int64_t x0 = static_cast<int64_t>(xf);
  const acc_t ly = y - yf;
  const acc_t lx = x - xf;
  const acc_t row0 = y0 >= 0 ? (acc_t(1) - ly) * mask : acc_t(0);
  const acc_t row1 = y0 + 1 < height ? ly * mask : acc_t(0);
  const acc_t col0 = x0 >= 0 ? acc_t(1) - lx : acc_t(0);
  const acc_t col1 = x0 + 1 < width ? lx : acc_t(0);
  const int64_t ya = std::max<int64_t>(y0, 0), yb = std::min<int64_t>(y0 + 1, height - 1);
  const int64_t xa = std::max<int64_t>(x0, 0), xb = std::min<int64_t>(x0 + 1, width - 1);
  const scalar_t* __restrict__ v0 = value_group + (ya * width + xa) * channels;
  const scalar_t* __restrict__ v1 = value_group + (ya * width + xb) * channels;
  const scalar_t* __restrict__ v2 = value_group + (yb * width + xa) * channels;
  const scalar_t* __restrict__ v3 = value_group + (yb * width + xb) * channels;
  const acc_t w0 = row0 * col0, w1 = row0 * col1, w2 = row1 * col0, w3 = row1 * col1;
  for (int64_t c = 0; c < group_channels; ++c) {
    acc[c] += w0 * acc_t(v0[c]) + w1 * acc_t(v1[c]) + w2 * acc_t(v2[c]) + w3 * acc_t(v3[c]);
  }
}

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
      largest = std::max(largest, w[k]);
    }
    for (int64_t k = 0; k < points; ++k) {
      w[k] -= largest;
    }
  }
  for (int64_t k = 0; k < count; ++k) {
    weights[k] = std::exp(weights[k]);
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

  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(C);
    std::vector<acc_t> weights(G * P);
    for (int64_t pix = begin; pix < end; ++pix) {
      const int64_t n = pix / out_hw;
      const int64_t ho = (pix % out_hw) / p.out_w;
      const int64_t wo = pix % p.out_w;
      const TapGrid<acc_t> grid = tap_grid<acc_t>(ho, wo, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h,
                                                  p.pad_w, p.dilation_h, p.dilation_w, p.offset_scale);
      const scalar_t* off = offset + pix * G * P * 2;
      const scalar_t* msk = mask + pix * G * P;
      const scalar_t* value_n = value + n * p.height * p.width * C;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      pixel_point_weights<scalar_t, acc_t>(msk, G, P, mask_logits, weights.data());
      for (int64_t g = 0; g < G; ++g) {
        for_each_tap(p, [&](int64_t i, int64_t j, int64_t point) {
          const int64_t q = g * P + point;
          const acc_t x = sample_x(grid, i, acc_t(off[2 * q]));
          const acc_t y = sample_y(grid, j, acc_t(off[2 * q + 1]));
          // Entirely outside (written as a positive test so that NaN locations are skipped too).
          if (!(y > acc_t(-1) && x > acc_t(-1) && y < acc_t(p.height) && x < acc_t(p.width))) return;
          accumulate_sample<scalar_t, acc_t, kCg>(acc.data() + g * Cg, value_n + g * Cg, y, x, weights[q],
                                                  p.height, p.width, C, Cg);
        });
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

// Interior sample (all four corners inside): dot products and scatter in one pass over the channels.
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

// grad_t is the accumulation type of grad_value (float for half inputs, else scalar_t).
template <typename scalar_t, typename grad_t>
void backward_typed(const scalar_t* grad_output, const scalar_t* value, const scalar_t* offset, const scalar_t* mask,
                    grad_t* grad_value, scalar_t* grad_offset, scalar_t* grad_mask, const Params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t out_hw = p.out_h * p.out_w;
  const int64_t C = p.channels;
  const int64_t Cg = p.group_channels;
  const int64_t P = p.points;
  const int64_t G = p.group;

  // One task per (n, g): disjoint grad_value slices, hence race-free and deterministic.
  at::parallel_for(0, p.batch * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / G;
      const int64_t g = task % G;
      const scalar_t* value_group = value + n * p.height * p.width * C + g * Cg;
      grad_t* grad_value_group = grad_value + n * p.height * p.width * C + g * Cg;
      for (int64_t local = 0; local < out_hw; ++local) {
        const int64_t pix = n * out_hw + local;
        const int64_t ho = local / p.out_w;
        const int64_t wo = local % p.out_w;
        const TapGrid<acc_t> grid = tap_grid<acc_t>(ho, wo, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h,
                                                    p.pad_w, p.dilation_h, p.dilation_w, p.offset_scale);
        const scalar_t* go = grad_output + pix * C + g * Cg;
        const scalar_t* off = offset + pix * G * P * 2;
        const scalar_t* msk = mask + pix * G * P;
        scalar_t* goff = grad_offset + pix * G * P * 2;
        scalar_t* gmsk = grad_mask + pix * G * P;
        for_each_tap(p, [&](int64_t i, int64_t j, int64_t point) {
          const int64_t q = g * P + point;
          const acc_t x = sample_x(grid, i, acc_t(off[2 * q]));
          const acc_t y = sample_y(grid, j, acc_t(off[2 * q + 1]));
          Bilinear<acc_t> b;
          if (!bilinear_at<acc_t>(y, x, p.height, p.width, b)) {
            goff[2 * q] = scalar_t(0);
            goff[2 * q + 1] = scalar_t(0);
            gmsk[q] = scalar_t(0);
            return;
          }
          const acc_t m = acc_t(msk[q]);
          acc_t dots[4];
          const bool interior = b.valid[0] && b.valid[1] && b.valid[2] && b.valid[3];
          if (interior) {
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
          goff[2 * q] = static_cast<scalar_t>(m * grid.scale * dx);
          goff[2 * q + 1] = static_cast<scalar_t>(m * grid.scale * dy);
        });
      }
    }
  });
}

}  // namespace DCNV3_CPU_ISA
}  // namespace dcnv3
