// Multi-scale deformable attention on the CPU: forward and backward, float32/float64/float16/bfloat16 (half types
// accumulate in float32).
//
// Forward parallelises over (image, query) pairs. For each head, the L * P samples of a query are located once and
// their four bilinear corners added to a D-wide accumulator; a head's D channels are contiguous in `value`, so the
// inner loop is a plain axpy over channels that the compiler vectorises. Corners in the zero padding get weight 0
// and an index clamped onto the level, so that loop has no branches.
//
// Backward parallelises over (image, head) pairs: each task owns grad_value[n, :, m, :], so the bilinear scatter
// needs no atomics and the result is deterministic (and independent of the thread count). The location and weight
// gradients of a sample are reductions over the head's channels computed in the same pass. Batch 1 with 8 heads
// gives 8 tasks: enough for the few threads a CPU detector runs with.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "dcnv3_common/msda_sampling.h"
#include "torch_binding.h"

namespace msda {
namespace {

// Level geometry read once per call: height, width and first row of every level.
struct Levels {
  const int64_t* shapes;  // (L, 2): H, W
  const int64_t* starts;  // (L,)
};

// The four corners of a located sample: rows of the level (clamped onto it) and bilinear weights (0 for padding).
template <typename acc_t>
struct Corners {
  int64_t row[4];  // (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)
  acc_t weight[4];
  acc_t on_level[4];  // 1 or 0: whether the corner reads the level or the zero padding
};

template <typename acc_t>
Corners<acc_t> corners_of(const Cell<acc_t>& c, int64_t height, int64_t width) {
  Corners<acc_t> k;
  const int64_t ya = std::max<int64_t>(c.y0, 0), yb = std::min<int64_t>(c.y0 + 1, height - 1);
  const int64_t xa = std::max<int64_t>(c.x0, 0), xb = std::min<int64_t>(c.x0 + 1, width - 1);
  k.row[0] = ya * width + xa;
  k.row[1] = ya * width + xb;
  k.row[2] = yb * width + xa;
  k.row[3] = yb * width + xb;
  k.on_level[0] = acc_t(c.top && c.left);
  k.on_level[1] = acc_t(c.top && c.right);
  k.on_level[2] = acc_t(c.bottom && c.left);
  k.on_level[3] = acc_t(c.bottom && c.right);
  const acc_t gy = acc_t(1) - c.fy, gx = acc_t(1) - c.fx;
  k.weight[0] = gy * gx * k.on_level[0];
  k.weight[1] = gy * c.fx * k.on_level[1];
  k.weight[2] = c.fy * gx * k.on_level[2];
  k.weight[3] = c.fy * c.fx * k.on_level[3];
  return k;
}

// acc[c] += scale * bilinear sample, over the `channels` channels of one head; `level` points at the head's first
// channel in row 0 of the level and rows are `row_stride` elements apart.
template <typename scalar_t, typename acc_t>
void add_sample(acc_t* __restrict__ acc, const scalar_t* level, int64_t row_stride, const Corners<acc_t>& k,
                acc_t scale, int64_t channels) {
  const scalar_t* __restrict__ v0 = level + k.row[0] * row_stride;
  const scalar_t* __restrict__ v1 = level + k.row[1] * row_stride;
  const scalar_t* __restrict__ v2 = level + k.row[2] * row_stride;
  const scalar_t* __restrict__ v3 = level + k.row[3] * row_stride;
  const acc_t w0 = scale * k.weight[0], w1 = scale * k.weight[1], w2 = scale * k.weight[2], w3 = scale * k.weight[3];
  for (int64_t c = 0; c < channels; ++c) {
    acc[c] += w0 * acc_t(v0[c]) + w1 * acc_t(v1[c]) + w2 * acc_t(v2[c]) + w3 * acc_t(v3[c]);
  }
}

template <typename scalar_t>
void forward_typed(const scalar_t* value, Levels levels, const scalar_t* locations, const scalar_t* weights,
                   scalar_t* out, const Params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row_stride = p.heads * p.channels;
  const int64_t samples = p.levels * p.points;  // per (query, head)
  // A query costs about heads * samples * 4 * channels multiply-adds (16k for DETR): a few per task suffice.
  at::parallel_for(0, p.batch * p.queries, 8, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(p.channels);
    for (int64_t nq = begin; nq < end; ++nq) {
      const scalar_t* value_n = value + (nq / p.queries) * p.spatial * row_stride;
      for (int64_t m = 0; m < p.heads; ++m) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        const int64_t first = (nq * p.heads + m) * samples;
        for (int64_t l = 0; l < p.levels; ++l) {
          const int64_t height = levels.shapes[2 * l], width = levels.shapes[2 * l + 1];
          const scalar_t* level = value_n + levels.starts[l] * row_stride + m * p.channels;
          for (int64_t s = first + l * p.points; s < first + (l + 1) * p.points; ++s) {
            Cell<acc_t> cell;
            if (!locate_cell(acc_t(locations[2 * s]), acc_t(locations[2 * s + 1]), height, width, cell)) continue;
            add_sample(acc.data(), level, row_stride, corners_of(cell, height, width), acc_t(weights[s]), p.channels);
          }
        }
        scalar_t* o = out + nq * row_stride + m * p.channels;
        for (int64_t c = 0; c < p.channels; ++c) o[c] = scalar_t(acc[c]);
      }
    }
  });
}

// Gradients of one sample: scatters into the head's grad_value rows and returns (d/dx, d/dy in pixels, d/dweight).
template <typename scalar_t, typename acc_t, typename grad_t>
void sample_backward(const acc_t* __restrict__ g, const scalar_t* level, grad_t* grad_level, int64_t row_stride,
                     const Cell<acc_t>& cell, const Corners<acc_t>& k, acc_t weight, int64_t channels,
                     acc_t& grad_x, acc_t& grad_y, acc_t& grad_weight) {
  const scalar_t* __restrict__ v0 = level + k.row[0] * row_stride;
  const scalar_t* __restrict__ v1 = level + k.row[1] * row_stride;
  const scalar_t* __restrict__ v2 = level + k.row[2] * row_stride;
  const scalar_t* __restrict__ v3 = level + k.row[3] * row_stride;
  const acc_t gy = acc_t(1) - cell.fy, gx = acc_t(1) - cell.fx;
  acc_t sum_x = 0, sum_y = 0, sum_w = 0;
  for (int64_t c = 0; c < channels; ++c) {
    // Corners in the padding read 0 (grid_sample's zero padding), whatever the clamped row holds.
    const acc_t a = k.on_level[0] * acc_t(v0[c]), b = k.on_level[1] * acc_t(v1[c]);
    const acc_t d = k.on_level[2] * acc_t(v2[c]), e = k.on_level[3] * acc_t(v3[c]);
    sum_w += g[c] * (k.weight[0] * a + k.weight[1] * b + k.weight[2] * d + k.weight[3] * e);
    sum_x += g[c] * (gy * (b - a) + cell.fy * (e - d));
    sum_y += g[c] * (gx * (d - a) + cell.fx * (e - b));
  }
  for (int q = 0; q < 4; ++q) {
    const acc_t w = weight * k.weight[q];
    if (w == acc_t(0)) continue;  // corners in the padding (clamped rows) must not be scattered into
    grad_t* __restrict__ dst = grad_level + k.row[q] * row_stride;
    for (int64_t c = 0; c < channels; ++c) dst[c] += grad_t(w * g[c]);
  }
  grad_x = weight * sum_x;
  grad_y = weight * sum_y;
  grad_weight = sum_w;
}

template <typename scalar_t, typename grad_t>
void backward_typed(const scalar_t* grad_output, const scalar_t* value, Levels levels, const scalar_t* locations,
                    const scalar_t* weights, grad_t* grad_value, scalar_t* grad_locations, scalar_t* grad_weights,
                    const Params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row_stride = p.heads * p.channels;
  const int64_t samples = p.levels * p.points;
  at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(p.channels);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / p.heads, m = task % p.heads;
      const scalar_t* value_n = value + n * p.spatial * row_stride + m * p.channels;
      grad_t* grad_value_n = grad_value + n * p.spatial * row_stride + m * p.channels;
      for (int64_t q = 0; q < p.queries; ++q) {
        const int64_t nq = n * p.queries + q;
        const scalar_t* go = grad_output + nq * row_stride + m * p.channels;
        for (int64_t c = 0; c < p.channels; ++c) g[c] = acc_t(go[c]);
        const int64_t first = (nq * p.heads + m) * samples;
        for (int64_t l = 0; l < p.levels; ++l) {
          const int64_t height = levels.shapes[2 * l], width = levels.shapes[2 * l + 1];
          const int64_t offset = levels.starts[l] * row_stride;
          for (int64_t s = first + l * p.points; s < first + (l + 1) * p.points; ++s) {
            Cell<acc_t> cell;
            acc_t grad_x = 0, grad_y = 0, grad_weight = 0;
            if (locate_cell(acc_t(locations[2 * s]), acc_t(locations[2 * s + 1]), height, width, cell)) {
              sample_backward(g.data(), value_n + offset, grad_value_n + offset, row_stride, cell,
                              corners_of(cell, height, width), acc_t(weights[s]), p.channels, grad_x, grad_y,
                              grad_weight);
            }
            // x = loc_x * W - 1/2 in pixels, so d/dloc_x = W * d/dx (y likewise).
            grad_locations[2 * s] = scalar_t(grad_x * acc_t(width));
            grad_locations[2 * s + 1] = scalar_t(grad_y * acc_t(height));
            grad_weights[s] = scalar_t(grad_weight);
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                       const at::Tensor& sampling_locations, const at::Tensor& attention_weights, const Params& p) {
  at::Tensor output = at::empty({p.batch, p.queries, p.heads * p.channels}, value.options());
  if (output.numel() == 0) return output;
  const Levels levels{spatial_shapes.const_data_ptr<int64_t>(), level_start_index.const_data_ptr<int64_t>()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "msda_forward_cpu", [&] {
    forward_typed<scalar_t>(value.const_data_ptr<scalar_t>(), levels, sampling_locations.const_data_ptr<scalar_t>(),
                            attention_weights.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), p);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_output, const at::Tensor& value,
                                                            const at::Tensor& spatial_shapes,
                                                            const at::Tensor& level_start_index,
                                                            const at::Tensor& sampling_locations,
                                                            const at::Tensor& attention_weights, const Params& p) {
  const bool reduced = value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
  // Half-precision value gradients accumulate in float32 and are cast once at the end.
  at::Tensor grad_value_acc =
      at::zeros(value.sizes(), value.options().dtype(reduced ? at::kFloat : value.scalar_type()));
  at::Tensor grad_locations = at::zeros(sampling_locations.sizes(), sampling_locations.options());
  at::Tensor grad_weights = at::zeros(attention_weights.sizes(), attention_weights.options());
  if (grad_output.numel() > 0 && value.numel() > 0) {
    const Levels levels{spatial_shapes.const_data_ptr<int64_t>(), level_start_index.const_data_ptr<int64_t>()};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "msda_backward_cpu", [&] {
      using grad_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      backward_typed<scalar_t, grad_t>(
          grad_output.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(), levels,
          sampling_locations.const_data_ptr<scalar_t>(), attention_weights.const_data_ptr<scalar_t>(),
          grad_value_acc.mutable_data_ptr<grad_t>(), grad_locations.mutable_data_ptr<scalar_t>(),
          grad_weights.mutable_data_ptr<scalar_t>(), p);
    });
  }
  at::Tensor grad_value = reduced ? grad_value_acc.to(value.scalar_type()) : grad_value_acc;
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace msda
