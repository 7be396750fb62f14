// Multi-scale deformable attention: CUDA kernels (forward and backward), fp32/fp64/fp16/bf16 (half types accumulate
// in float32). C++17.
//
// Work split: `lanes` consecutive threads (a power of two <= 32, aligned inside a warp) own one (image, query, head);
// each thread holds VEC consecutive channels of the head (channel lane * VEC + k; lanes * VEC >= D). A thread
// locates each of the head's L * P samples once for all its channels, and neighbouring lanes read neighbouring
// channels of a corner row, so the value reads of a head coalesce.
//
// Backward: grad_value is scattered with atomicAdd (into a float32 buffer for half types). The location and weight
// gradients of a sample are sums over the head's channels: per-thread partial sums combined with warp shuffles
// inside the head's lanes and written by its first lane (no atomics, no shared memory). Every lane of a warp runs
// the same number of shuffles: the grid-stride loop advances whole warps, samples outside their level contribute
// zeros instead of being skipped, and lanes past the end work on a copy of the last item without writing.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "dcnv3_common/msda_sampling.h"
#include "dcnv3_cuda/cuda_accumulate.cuh"
#include "dcnv3_cuda/msda_cuda_launch.h"

namespace msda {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
// Grid-stride launches use at most this many blocks per SM (a wave or two of resident warps).
constexpr int kBlocksPerSm = 16;

using cuda_accumulate::AccOf;
using cuda_accumulate::from_acc;
using cuda_accumulate::to_acc;

// Where a thread works: its (image, query, head) item and its first channel.
struct Slot {
  int64_t item;  // (n * Q + q) * M + m
  int64_t n;
  int64_t m;
  int channel;
};

__device__ __forceinline__ Slot slot_of(int64_t thread, int lanes_log2, int vec, const Params& p) {
  Slot s;
  s.item = thread >> lanes_log2;
  s.m = s.item % p.heads;
  s.n = s.item / p.heads / p.queries;
  s.channel = int(thread & ((int64_t(1) << lanes_log2) - 1)) * vec;
  return s;
}

// The four bilinear corners of a located sample: row offsets into the level (y * W + x) and weights, 0 for corners
// in the zero padding (their row is then never read).
template <typename A>
struct Corners {
  int64_t row[4];
  A weight[4];
};

template <typename A>
__device__ __forceinline__ Corners<A> corners_of(const Cell<A>& c, int64_t width) {
  Corners<A> k;
  const int64_t top = c.y0 * width, bottom = top + width;
  k.row[0] = top + c.x0;
  k.row[1] = top + c.x0 + 1;
  k.row[2] = bottom + c.x0;
  k.row[3] = bottom + c.x0 + 1;
  const A gy = A(1) - c.fy, gx = A(1) - c.fx;
  k.weight[0] = (c.top && c.left) ? gy * gx : A(0);
  k.weight[1] = (c.top && c.right) ? gy * c.fx : A(0);
  k.weight[2] = (c.bottom && c.left) ? c.fy * gx : A(0);
  k.weight[3] = (c.bottom && c.right) ? c.fy * c.fx : A(0);
  return k;
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    msda_forward_kernel(const T* __restrict__ value, const int64_t* __restrict__ shapes,
                        const int64_t* __restrict__ starts, const T* __restrict__ locations,
                        const T* __restrict__ weights, T* __restrict__ out, Params p, int lanes_log2, int64_t total) {
  using A = typename AccOf<T>::type;
  const int64_t row_stride = p.heads * p.channels;
  const int64_t samples = p.levels * p.points;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const Slot slot = slot_of(t, lanes_log2, VEC, p);
    const T* head = value + slot.n * p.spatial * row_stride + slot.m * p.channels + slot.channel;
    A acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = A(0);
    for (int64_t l = 0; l < p.levels; ++l) {
      const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
      const T* level = head + starts[l] * row_stride;
      for (int64_t s = slot.item * samples + l * p.points; s < slot.item * samples + (l + 1) * p.points; ++s) {
        Cell<A> cell;
        if (!locate_cell(to_acc(locations[2 * s]), to_acc(locations[2 * s + 1]), height, width, cell)) continue;
        const A a = to_acc(weights[s]);
        const Corners<A> corners = corners_of(cell, width);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          if (corners.weight[q] == A(0)) continue;
          const T* src = level + corners.row[q] * row_stride;
          const A w = a * corners.weight[q];
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            if (slot.channel + k < p.channels) acc[k] += w * to_acc(src[k]);
          }
        }
      }
    }
    T* dst = out + (slot.item / p.heads) * row_stride + slot.m * p.channels + slot.channel;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      if (slot.channel + k < p.channels) dst[k] = from_acc<T>(acc[k]);
    }
  }
}

// Sum of `v` over the `lanes` lanes of this thread's group (xor butterflies stay inside an aligned group).
template <typename A>
__device__ __forceinline__ A group_sum(A v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T, typename G, int VEC>
__global__ void __launch_bounds__(kThreads)
    msda_backward_kernel(const T* __restrict__ grad_output, const T* __restrict__ value,
                         const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                         const T* __restrict__ locations, const T* __restrict__ weights, G* __restrict__ grad_value,
                         T* __restrict__ grad_locations, T* __restrict__ grad_weights, Params p, int lanes_log2,
                         int64_t total) {
  using A = typename AccOf<T>::type;
  const int64_t row_stride = p.heads * p.channels;
  const int64_t samples = p.levels * p.points;
  const int lanes = 1 << lanes_log2;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  // The loop runs per warp (its first thread's index), so all 32 lanes take the same trips.
  for (int64_t warp_base = int64_t(blockIdx.x) * blockDim.x + (threadIdx.x & ~(kWarp - 1)); warp_base < total;
       warp_base += stride) {
    const int64_t t = warp_base + (threadIdx.x & (kWarp - 1));
    const bool active = t < total;
    const Slot slot = slot_of(active ? t : total - 1, lanes_log2, VEC, p);
    const bool writer = active && slot.channel == 0;
    const int64_t head_offset = slot.n * p.spatial * row_stride + slot.m * p.channels + slot.channel;
    const T* head = value + head_offset;
    G* grad_head = grad_value + head_offset;
    const T* go = grad_output + (slot.item / p.heads) * row_stride + slot.m * p.channels + slot.channel;
    A g[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) g[k] = slot.channel + k < p.channels ? to_acc(go[k]) : A(0);
    for (int64_t l = 0; l < p.levels; ++l) {
      const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
      const int64_t level_offset = starts[l] * row_stride;
      for (int64_t s = slot.item * samples + l * p.points; s < slot.item * samples + (l + 1) * p.points; ++s) {
        Cell<A> cell;
        const bool hit = locate_cell(to_acc(locations[2 * s]), to_acc(locations[2 * s + 1]), height, width, cell);
        const A a = to_acc(weights[s]);
        // Partial sums over this thread's channels of g * sample, g * d(sample)/dx and g * d(sample)/dy.
        A sum_w = A(0), sum_x = A(0), sum_y = A(0);
        if (hit) {
          const Corners<A> corners = corners_of(cell, width);
          // d(weight_k)/dx and d(weight_k)/dy of the four corners (0 in the padding: those corners read zeros).
          const A gy = A(1) - cell.fy, gx = A(1) - cell.fx;
          const A dx[4] = {-gy, gy, -cell.fy, cell.fy};
          const A dy[4] = {-gx, -cell.fx, gx, cell.fx};
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const bool on_level = q == 0   ? cell.top && cell.left
                                  : q == 1 ? cell.top && cell.right
                                  : q == 2 ? cell.bottom && cell.left
                                           : cell.bottom && cell.right;
            if (!on_level) continue;
            const T* src = head + level_offset + corners.row[q] * row_stride;
            G* dst = grad_head + level_offset + corners.row[q] * row_stride;
            const A scatter = a * corners.weight[q];
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
              if (slot.channel + k >= p.channels) continue;
              const A v = to_acc(src[k]);
              sum_w += g[k] * corners.weight[q] * v;
              sum_x += g[k] * dx[q] * v;
              sum_y += g[k] * dy[q] * v;
              if (active && scatter != A(0)) atomicAdd(dst + k, G(scatter * g[k]));
            }
          }
        }
        sum_w = group_sum(sum_w, lanes);
        sum_x = group_sum(sum_x, lanes);
        sum_y = group_sum(sum_y, lanes);
        if (writer) {
          // x = loc_x * W - 1/2 in pixels, so d/dloc_x = W * d/dx (y likewise).
          grad_locations[2 * s] = from_acc<T>(a * sum_x * A(width));
          grad_locations[2 * s + 1] = from_acc<T>(a * sum_y * A(height));
          grad_weights[s] = from_acc<T>(sum_w);
        }
      }
    }
  }
}

int log2_of(int lanes) {
  int bits = 0;
  while ((1 << bits) < lanes) ++bits;
  return bits;
}

int64_t total_threads(const Params& p, const LaunchShape& shape) {
  return p.batch * p.queries * p.heads * shape.lanes;
}

template <typename T, typename G>
cudaError_t launch_backward_typed(const LaunchShape& shape, const void* grad_output, const void* value,
                                  const int64_t* shapes, const int64_t* starts, const void* locations,
                                  const void* weights, void* grad_value, void* grad_locations, void* grad_weights,
                                  const Params& p, cudaStream_t stream) {
  const int64_t total = total_threads(p, shape);
  const auto go = static_cast<const T*>(grad_output);
  const auto v = static_cast<const T*>(value);
  const auto loc = static_cast<const T*>(locations);
  const auto w = static_cast<const T*>(weights);
  const auto gv = static_cast<G*>(grad_value);
  const auto gl = static_cast<T*>(grad_locations);
  const auto gw = static_cast<T*>(grad_weights);
  const int lanes_log2 = log2_of(shape.lanes);
  if (shape.vec == 4) {
    msda_backward_kernel<T, G, 4><<<unsigned(shape.blocks), kThreads, 0, stream>>>(go, v, shapes, starts, loc, w, gv,
                                                                                   gl, gw, p, lanes_log2, total);
  } else {
    msda_backward_kernel<T, G, 8><<<unsigned(shape.blocks), kThreads, 0, stream>>>(go, v, shapes, starts, loc, w, gv,
                                                                                   gl, gw, p, lanes_log2, total);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_forward_typed(const LaunchShape& shape, const void* value, const int64_t* shapes,
                                 const int64_t* starts, const void* locations, const void* weights, void* out,
                                 const Params& p, cudaStream_t stream) {
  const int64_t total = total_threads(p, shape);
  const auto v = static_cast<const T*>(value);
  const auto loc = static_cast<const T*>(locations);
  const auto w = static_cast<const T*>(weights);
  const auto o = static_cast<T*>(out);
  const int lanes_log2 = log2_of(shape.lanes);
  if (shape.vec == 4) {
    msda_forward_kernel<T, 4><<<unsigned(shape.blocks), kThreads, 0, stream>>>(v, shapes, starts, loc, w, o, p,
                                                                               lanes_log2, total);
  } else {
    msda_forward_kernel<T, 8><<<unsigned(shape.blocks), kThreads, 0, stream>>>(v, shapes, starts, loc, w, o, p,
                                                                               lanes_log2, total);
  }
  return cudaGetLastError();
}

int device_sm_count() {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return std::max(sms, 1);
}

}  // namespace

LaunchShape choose_shape(const Params& p, int sm_count) {
  LaunchShape shape{};
  // 4 channels per thread up to 128 channels per head (8 lanes for DETR's 32), else 8.
  shape.vec = p.channels <= 4 * kWarp ? 4 : 8;
  const int64_t needed = (p.channels + shape.vec - 1) / shape.vec;
  shape.lanes = 1;
  while (shape.lanes < needed) shape.lanes *= 2;
  const int64_t blocks = (total_threads(p, shape) + kThreads - 1) / kThreads;
  shape.blocks = std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(sm_count) * kBlocksPerSm));
  return shape;
}

cudaError_t launch_forward(DType dtype, const void* value, const int64_t* spatial_shapes, const int64_t* level_start,
                           const void* sampling_locations, const void* attention_weights, void* out, const Params& p,
                           cudaStream_t stream) {
  if (p.channels > kMaxChannels) return cudaErrorInvalidValue;
  const LaunchShape shape = choose_shape(p, device_sm_count());
  if (total_threads(p, shape) == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32:
      return launch_forward_typed<float>(shape, value, spatial_shapes, level_start, sampling_locations,
                                         attention_weights, out, p, stream);
    case DType::kFloat64:
      return launch_forward_typed<double>(shape, value, spatial_shapes, level_start, sampling_locations,
                                          attention_weights, out, p, stream);
    case DType::kFloat16:
      return launch_forward_typed<__half>(shape, value, spatial_shapes, level_start, sampling_locations,
                                          attention_weights, out, p, stream);
    case DType::kBFloat16:
      return launch_forward_typed<__nv_bfloat16>(shape, value, spatial_shapes, level_start, sampling_locations,
                                                 attention_weights, out, p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_backward(DType dtype, const void* grad_output, const void* value, const int64_t* spatial_shapes,
                            const int64_t* level_start, const void* sampling_locations,
                            const void* attention_weights, void* grad_value_acc, void* grad_locations,
                            void* grad_weights, const Params& p, cudaStream_t stream) {
  if (p.channels > kMaxChannels) return cudaErrorInvalidValue;
  const LaunchShape shape = choose_shape(p, device_sm_count());
  if (total_threads(p, shape) == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32:
      return launch_backward_typed<float, float>(shape, grad_output, value, spatial_shapes, level_start,
                                                 sampling_locations, attention_weights, grad_value_acc,
                                                 grad_locations, grad_weights, p, stream);
    case DType::kFloat64:
      return launch_backward_typed<double, double>(shape, grad_output, value, spatial_shapes, level_start,
                                                   sampling_locations, attention_weights, grad_value_acc,
                                                   grad_locations, grad_weights, p, stream);
    case DType::kFloat16:
      return launch_backward_typed<__half, float>(shape, grad_output, value, spatial_shapes, level_start,
                                                  sampling_locations, attention_weights, grad_value_acc,
                                                  grad_locations, grad_weights, p, stream);
    case DType::kBFloat16:
      return launch_backward_typed<__nv_bfloat16, float>(shape, grad_output, value, spatial_shapes, level_start,
                                                         sampling_locations, attention_weights, grad_value_acc,
                                                         grad_locations, grad_weights, p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace msda
