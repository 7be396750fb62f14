// DCNv3 sampling core: CUDA kernels (forward and backward), NHWC, fp32/fp64/fp16/bf16.
//
// Work split: `lanes` consecutive threads (a power of two <= 32, aligned inside a warp) own one
// (output pixel, group). Each thread handles `VEC` consecutive channels per vector load and strides over
// the group's channels by lanes * VEC. Every thread computes the sampling location and bilinear weights
// of a point once and reuses them for all its channels.
//
// Backward: grad_value is scattered with atomicAdd (float32 buffer for half types). The per-point offset
// and mask gradients are sums over the group's channels: each thread reduces its own channels, then the
// `lanes` threads combine with warp shuffles and lane 0 writes the result (no atomics, no shared memory).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "dcnv3_common/dcnv3_params.h"
#include "dcnv3_common/dcnv3_sampling.h"
#include "dcnv3_cuda/dcnv3_cuda_launch.h"

namespace dcnv3 {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(typename AccOf<T>::type v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// VEC elements loaded / stored with one aligned memory instruction.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC, typename A>
__device__ __forceinline__ void load_pack(const T* ptr, A (&out)[VEC]) {
  const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(ptr);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = to_acc(pk.v[k]);
}

template <typename T, int VEC, typename A>
__device__ __forceinline__ void store_pack(T* ptr, const A (&in)[VEC]) {
  Pack<T, VEC> pk;
#pragma unroll
  for (int k = 0; k < VEC; ++k) pk.v[k] = from_acc<T>(in[k]);
  *reinterpret_cast<Pack<T, VEC>*>(ptr) = pk;
}

// Location of point (i, j) of group g at (ho, wo); returns false when the sample is fully outside.
template <typename T, typename A>
__device__ __forceinline__ bool locate(const Params& p, const TapGrid<A>& grid, const T* off, int64_t q, int64_t i,
                                       int64_t j, Bilinear<A>& b) {
  return bilinear_at<A>(sample_y(grid, j, to_acc(off[2 * q + 1])), sample_x(grid, i, to_acc(off[2 * q])), p.height,
                        p.width, b);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ value, const T* __restrict__ offset, const T* __restrict__ mask,
                   T* __restrict__ out, const Params p, const int lanes, const int64_t total_threads) {
  using A = typename AccOf<T>::type;
  const int64_t G = p.group;
  const int64_t P = p.points;
  const int64_t C = p.channels;
  const int64_t out_hw = p.out_h * p.out_w;
  const int64_t centre_i = p.kernel_w / 2;
  const int64_t centre_j = p.kernel_h / 2;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total_threads;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int lane = int(t % lanes);
    const int64_t pg = t / lanes;  // pixel * G + g
    const int64_t g = pg % G;
    const int64_t pix = pg / G;
    const int64_t n = pix / out_hw;
    const int64_t ho = (pix % out_hw) / p.out_w;
    const int64_t wo = pix % p.out_w;
    const TapGrid<A> grid = tap_grid<A>(ho, wo, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w,
                                        p.dilation_h, p.dilation_w, p.offset_scale);
    const T* off = offset + pix * G * P * 2;
    const T* msk = mask + pix * G * P;
    const T* value_group = value + n * p.height * p.width * C + g * p.group_channels;
    for (int64_t c0 = int64_t(lane) * VEC; c0 < p.group_channels; c0 += int64_t(lanes) * VEC) {
      A acc[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] = A(0);
      int64_t point = 0;
      for (int64_t i = 0; i < p.kernel_w; ++i) {
        for (int64_t j = 0; j < p.kernel_h; ++j) {
          if (p.remove_center && i == centre_i && j == centre_j) continue;
          const int64_t q = g * P + point;
          ++point;
          Bilinear<A> b;
          if (!locate<T, A>(p, grid, off, q, i, j, b)) continue;
          const A m = to_acc(msk[q]);
#pragma unroll
          for (int corner = 0; corner < 4; ++corner) {
            if (!b.valid[corner]) continue;
            A v[VEC];
            load_pack<T, VEC>(value_group + b.index[corner] * C + c0, v);
            const A w = b.weight[corner] * m;
#pragma unroll
            for (int k = 0; k < VEC; ++k) acc[k] += w * v[k];
          }
        }
      }
      store_pack<T, VEC>(out + pix * C + g * p.group_channels + c0, acc);
    }
  }
}

template <typename A>
__device__ __forceinline__ A lanes_sum(A v, int lanes) {
  for (int o = lanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, lanes);
  return v;
}

__device__ __forceinline__ void atomic_add(float* ptr, float v) { atomicAdd(ptr, v); }
__device__ __forceinline__ void atomic_add(double* ptr, double v) { atomicAdd(ptr, v); }

// G is the grad_value accumulation type (float for half types).
template <typename T, typename G, int VEC>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ grad_output, const T* __restrict__ value, const T* __restrict__ offset,
                    const T* __restrict__ mask, G* __restrict__ grad_value, T* __restrict__ grad_offset,
                    T* __restrict__ grad_mask, const Params p, const int lanes, const int64_t total_threads) {
  using A = typename AccOf<T>::type;
  const int64_t NG = p.group;
  const int64_t P = p.points;
  const int64_t C = p.channels;
  const int64_t out_hw = p.out_h * p.out_w;
  const int64_t centre_i = p.kernel_w / 2;
  const int64_t centre_j = p.kernel_h / 2;
  // Whole blocks iterate together so that every lane of a warp reaches the shuffles.
  const int64_t padded = (total_threads + blockDim.x - 1) / blockDim.x * blockDim.x;
  for (int64_t base = blockIdx.x * int64_t(blockDim.x); base < padded; base += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = base + threadIdx.x;
    const bool active = t < total_threads;
    const int lane = int(t % lanes);
    const int64_t pg = active ? t / lanes : 0;
    const int64_t g = pg % NG;
    const int64_t pix = pg / NG;
    const int64_t n = pix / out_hw;
    const int64_t ho = (pix % out_hw) / p.out_w;
    const int64_t wo = pix % p.out_w;
    const TapGrid<A> grid = tap_grid<A>(ho, wo, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w,
                                        p.dilation_h, p.dilation_w, p.offset_scale);
    const T* off = offset + pix * NG * P * 2;
    const T* msk = mask + pix * NG * P;
    const T* go = grad_output + pix * C + g * p.group_channels;
    const int64_t group_base = n * p.height * p.width * C + g * p.group_channels;
    int64_t point = 0;
    for (int64_t i = 0; i < p.kernel_w; ++i) {
      for (int64_t j = 0; j < p.kernel_h; ++j) {
        if (p.remove_center && i == centre_i && j == centre_j) continue;
        const int64_t q = g * P + point;
        ++point;
        A sampled = A(0);
        A dx = A(0);
        A dy = A(0);
        A m = A(0);
        Bilinear<A> b;
        if (active && locate<T, A>(p, grid, off, q, i, j, b)) {
          m = to_acc(msk[q]);
          for (int64_t c0 = int64_t(lane) * VEC; c0 < p.group_channels; c0 += int64_t(lanes) * VEC) {
            A gout[VEC];
            load_pack<T, VEC>(go + c0, gout);
#pragma unroll
            for (int corner = 0; corner < 4; ++corner) {
              if (!b.valid[corner]) continue;
              const int64_t row = group_base + b.index[corner] * C + c0;
              A v[VEC];
              load_pack<T, VEC>(value + row, v);
              A dot = A(0);
              const A w = b.weight[corner] * m;
#pragma unroll
              for (int k = 0; k < VEC; ++k) {
                dot += gout[k] * v[k];
                atomic_add(grad_value + row + k, static_cast<G>(w * gout[k]));
              }
              sampled += b.weight[corner] * dot;
              dx += b.dweight_dx[corner] * dot;
              dy += b.dweight_dy[corner] * dot;
            }
          }
        }
        sampled = lanes_sum(sampled, lanes);
        dx = lanes_sum(dx, lanes);
        dy = lanes_sum(dy, lanes);
        if (active && lane == 0) {
          // d out / d mask is the bilinear sample; d location / d offset is offset_scale.
          grad_mask[pix * NG * P + q] = from_acc<T>(sampled);
          grad_offset[(pix * NG * P + q) * 2] = from_acc<T>(m * grid.scale * dx);
          grad_offset[(pix * NG * P + q) * 2 + 1] = from_acc<T>(m * grid.scale * dy);
        }
      }
    }
  }
}

int64_t blocks_for(int64_t threads) {
  // Grid-stride loops cover the rest; cap keeps the grid size well inside the hardware limit.
  return std::max<int64_t>(1, std::min<int64_t>((threads + kThreads - 1) / kThreads, int64_t(1) << 20));
}

template <typename T, int VEC>
cudaError_t forward_typed(const void* value, const void* offset, const void* mask, void* out, const Params& p,
                          int lanes, cudaStream_t stream) {
  const int64_t total = p.batch * p.out_h * p.out_w * p.group * lanes;
  if (total == 0) return cudaSuccess;
  forward_kernel<T, VEC><<<blocks_for(total), kThreads, 0, stream>>>(
      static_cast<const T*>(value), static_cast<const T*>(offset), static_cast<const T*>(mask), static_cast<T*>(out),
      p, lanes, total);
  return cudaGetLastError();
}

template <typename T, int VEC>
cudaError_t backward_typed(const void* grad_output, const void* value, const void* offset, const void* mask,
                           void* grad_value, void* grad_offset, void* grad_mask, const Params& p, int lanes,
                           cudaStream_t stream) {
  using G = typename AccOf<T>::type;
  const int64_t total = p.batch * p.out_h * p.out_w * p.group * lanes;
  if (total == 0) return cudaSuccess;
  backward_kernel<T, G, VEC><<<blocks_for(total), kThreads, 0, stream>>>(
      static_cast<const T*>(grad_output), static_cast<const T*>(value), static_cast<const T*>(offset),
      static_cast<const T*>(mask), static_cast<G*>(grad_value), static_cast<T*>(grad_offset),
      static_cast<T*>(grad_mask), p, lanes, total);
  return cudaGetLastError();
}

// Calls fn.template operator()<T, VEC>() for the runtime (dtype, vec); widths are capped at 16 bytes.
template <typename Fn>
cudaError_t dispatch(DType dtype, int vec, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32:
      if (vec == 4) return fn.template operator()<float, 4>();
      if (vec == 2) return fn.template operator()<float, 2>();
      return fn.template operator()<float, 1>();
    case DType::kFloat64:
      if (vec == 2) return fn.template operator()<double, 2>();
      return fn.template operator()<double, 1>();
    case DType::kFloat16:
      if (vec == 8) return fn.template operator()<__half, 8>();
      if (vec == 4) return fn.template operator()<__half, 4>();
      if (vec == 2) return fn.template operator()<__half, 2>();
      return fn.template operator()<__half, 1>();
    case DType::kBFloat16:
      if (vec == 8) return fn.template operator()<__nv_bfloat16, 8>();
      if (vec == 4) return fn.template operator()<__nv_bfloat16, 4>();
      if (vec == 2) return fn.template operator()<__nv_bfloat16, 2>();
      return fn.template operator()<__nv_bfloat16, 1>();
  }
  return cudaErrorInvalidValue;
}

int element_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat64:
      return 8;
    case DType::kFloat32:
      return 4;
    default:
      return 2;
  }
}

}  // namespace

LaunchShape choose_launch_shape(DType dtype, int64_t group_channels, const void* const* ptrs, int num_ptrs) {
  const int size = element_size(dtype);
  int vec = 16 / size;
  while (vec > 1) {
    bool ok = group_channels % vec == 0;
    for (int k = 0; ok && k < num_ptrs; ++k) {
      ok = reinterpret_cast<uintptr_t>(ptrs[k]) % (uintptr_t(vec) * size) == 0;
    }
    if (ok) break;
    vec /= 2;
  }
  const int64_t chunks = (group_channels + vec - 1) / vec;
  int lanes = 1;
  while (lanes < chunks && lanes < 32) lanes *= 2;
  return {vec, lanes};
}

cudaError_t launch_forward(DType dtype, const void* value, const void* offset, const void* mask, void* out,
                           const Params& p, LaunchShape shape, cudaStream_t stream) {
  return dispatch(dtype, shape.vec, [&]<typename T, int VEC>() {
    return forward_typed<T, VEC>(value, offset, mask, out, p, shape.lanes, stream);
  });
}

cudaError_t launch_backward(DType dtype, const void* grad_output, const void* value, const void* offset,
                            const void* mask, void* grad_value_acc, void* grad_offset, void* grad_mask,
                            const Params& p, LaunchShape shape, cudaStream_t stream) {
  return dispatch(dtype, shape.vec, [&]<typename T, int VEC>() {
    return backward_typed<T, VEC>(grad_output, value, offset, mask, grad_value_acc, grad_offset, grad_mask, p,
                                  shape.lanes, stream);
  });
}

}  // namespace cuda
}  // namespace dcnv3
