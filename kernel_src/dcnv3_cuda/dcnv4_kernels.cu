// DCNv4 sampling core (FlashInternImage): CUDA kernels (forward and backward), NHWC, fp32/fp64/fp16/bf16. C++17.
//
// DCNv4 samples as DCNv3 (dcnv3_kernels.cu) with its point offsets and weights in one fused tensor offset_mask
// (N, Ho, Wo, D): group g owns columns [g * 3P, (g + 1) * 3P), its P (dx, dy) pairs then its P weights, used as
// given (no softmax); columns from G * 3P on are padding and never read.
//
// Work split: `lanes` consecutive threads (a power of two <= 32, aligned inside a warp) own one (query, group).
// Each thread handles VEC consecutive channels per vector access and strides over the group's channels by
// lanes * VEC; it computes a point's location and bilinear weights once for all its channels, and reads the point's
// offsets and weight from the same addresses as the other lanes of its group (one broadcast load per warp).
//
// Backward: grad_value is scattered with atomicAdd (into a float32 buffer for half types). The launch shape keeps
// a warp's atomics contiguous: float4 / float2 atomics (VEC 4 / 2) from sm_90, one thread per channel (consecutive
// lanes on consecutive floats) below. The per-point offset and weight gradients are reductions over the group's
// channels: per-thread partial sums combined with warp shuffles, written by lane 0 (no atomics, no shared memory).
//
// Index arithmetic is 32-bit when every buffer has fewer than 2^31 elements; larger tensors take a 64-bit,
// scalar-width instantiation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "dcnv3_common/dcnv3_params.h"
#include "dcnv3_cuda/cuda_accumulate.cuh"
#include "dcnv3_cuda/dcnv4_cuda_launch.h"

namespace dcnv4 {
namespace cuda {
namespace {

using cuda_accumulate::AccOf;
using cuda_accumulate::from_acc;
using cuda_accumulate::to_acc;
using dcnv3::Params;

constexpr int kThreads = 256;
// Grid-stride launches use at most this many blocks per SM: a wave or two of resident warps, and every thread then
// handles several (query, group)s, which amortises its setup.
constexpr int kBlocksPerSm = 16;

// floor(x) as a float and, exactly, as a 32-bit integer; callers only pass x inside (-1, size).
__device__ __forceinline__ float floor_acc(float x) { return floorf(x); }
__device__ __forceinline__ double floor_acc(double x) { return floor(x); }
__device__ __forceinline__ int to_int(float integral) { return __float2int_rz(integral); }
__device__ __forceinline__ int to_int(double integral) { return __double2int_rz(integral); }

// VEC elements moved with one aligned memory instruction.
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

// grad[k] += in[k] for VEC consecutive accumulators, as one vector atomic where the architecture has one.
template <typename G, int VEC, typename A>
__device__ __forceinline__ void atomic_add_pack(G* ptr, const A (&in)[VEC]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kVector = std::is_same<G, float>::value && (VEC == 2 || VEC == 4);
#else
  constexpr bool kVector = false;
#endif
  if constexpr (kVector && VEC == 4) {
    atomicAdd(reinterpret_cast<float4*>(ptr), make_float4(in[0], in[1], in[2], in[3]));
  } else if constexpr (kVector && VEC == 2) {
    atomicAdd(reinterpret_cast<float2*>(ptr), make_float2(in[0], in[1]));
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) atomicAdd(ptr + k, static_cast<G>(in[k]));
  }
}

// The call's shape in the index type I and the constants of the sampling formula (dcnv3_sampling.h):
//   x = wo * stride_w - pad_w + c_w + s * (i * dilation_w - c_w + dx), likewise y,
// evaluated as (origin + s * tap) + s * dx, the first part once per tap column / row. Built on the host.
template <typename A, typename I>
struct Geometry {
  I height, width, group, group_channels, points, out_w, out_hw;
  I channels;       // G * Cg: element distance between neighbouring pixels
  I row;            // width * channels: element distance between image rows
  I mask_dim;       // D: element distance between the offset_mask rows of neighbouring queries
  I group_columns;  // 3P: offset_mask columns of one group
  I kernel_h, centre_tap;  // centre_tap: linear tap index skipped by remove_center, else -1
  I stride_w, stride_h;
  A last_y, last_x;  // height - 1, width - 1: a corner row / column past them is zero padding
  A height_f, width_f, scale, centre_x, centre_y, dilation_x, dilation_y, origin_x, origin_y;
  bool remove_center;

  __host__ __device__ Geometry(const Params& p, int64_t offset_mask_dim)
      : height(I(p.height)),
        width(I(p.width)),
        group(I(p.group)),
        group_channels(I(p.group_channels)),
        points(I(p.points)),
        out_w(I(p.out_w)),
        out_hw(I(p.out_h * p.out_w)),
        channels(I(p.channels)),
        row(I(p.width * p.channels)),
        mask_dim(I(offset_mask_dim)),
        group_columns(I(3 * p.points)),
        kernel_h(I(p.kernel_h)),
        centre_tap(p.remove_center ? I((p.kernel_w / 2) * p.kernel_h + p.kernel_h / 2) : I(-1)),
        stride_w(I(p.stride_w)),
        stride_h(I(p.stride_h)),
        last_y(A(p.height - 1)),
        last_x(A(p.width - 1)),
        height_f(A(p.height)),
        width_f(A(p.width)),
        scale(A(p.offset_scale)),
        centre_x(A(p.dilation_w * (p.kernel_w - 1) / 2)),
        centre_y(A(p.dilation_h * (p.kernel_h - 1) / 2)),
        dilation_x(A(p.dilation_w)),
        dilation_y(A(p.dilation_h)),
        origin_x(A(p.dilation_w * (p.kernel_w - 1) / 2 - p.pad_w)),
        origin_y(A(p.dilation_h * (p.kernel_h - 1) / 2 - p.pad_h)),
        remove_center(p.remove_center) {}
};

// Where one (query, group) sits and where its data lives.
template <typename A, typename I>
struct QueryGroup {
  A base_x;       // regular-grid centre of the kernel window, in input pixels
  A base_y;
  I value_base;   // element offset of value[n, 0, 0, g * Cg]
  I mask_base;    // element offset of offset_mask[query, g * 3P]
  I out_base;     // element offset of out[query, g * Cg]: (query * G + g) * Cg
  // The padding columns [G * 3P, D) of the query's row, as element offsets [padding, row_end); the range is empty
  // but for the last group, so that one thread per query clears them in the backward.
  I padding;
  I row_end;
};

template <typename A, typename I>
__device__ __forceinline__ QueryGroup<A, I> query_group(const Geometry<A, I>& geo, I qg) {
  const I query = qg / geo.group;
  const I g = qg - query * geo.group;
  const I n = query / geo.out_hw;
  const I rest = query - n * geo.out_hw;
  const I ho = rest / geo.out_w;
  const I wo = rest - ho * geo.out_w;
  QueryGroup<A, I> r;
  r.base_x = A(wo * geo.stride_w) + geo.origin_x;
  r.base_y = A(ho * geo.stride_h) + geo.origin_y;
  r.value_base = n * geo.height * geo.row + g * geo.group_channels;
  r.mask_base = query * geo.mask_dim + g * geo.group_columns;
  r.out_base = qg * geo.group_channels;
  r.row_end = (query + 1) * geo.mask_dim;
  r.padding = g == geo.group - 1 ? r.mask_base + geo.group_columns : r.row_end;
  return r;
}

// Calls fn(q, x, y) for every sampling point q in order (x-major: i over kernel_w outside, j over kernel_h inside;
// the centre skipped with remove_center), where (x, y) is the point's location before its learned offset:
// base + s * (i * dilation_w - c_w, j * dilation_h - c_h); the sample sits at (x + s * dx, y + s * dy).
// kKernel = 3 unrolls FlashInternImage's 3x3 kernel completely; 0 walks any size.
template <int kKernel, typename A, typename I, typename Fn>
__device__ __forceinline__ void for_each_point(const Geometry<A, I>& geo, const QueryGroup<A, I>& qg, Fn&& fn) {
  if constexpr (kKernel == 3) {
    const A xs[3] = {qg.base_x - geo.scale * geo.dilation_x, qg.base_x, qg.base_x + geo.scale * geo.dilation_x};
    const A ys[3] = {qg.base_y - geo.scale * geo.dilation_y, qg.base_y, qg.base_y + geo.scale * geo.dilation_y};
#pragma unroll
    for (int t = 0; t < 9; ++t) {
      if (t == 4 && geo.remove_center) continue;
      const I q = (t > 4 && geo.remove_center) ? I(t - 1) : I(t);
      fn(q, xs[t / 3], ys[t % 3]);
    }
  } else {
    I linear = 0;
    I j = 0;
    A tap_x = -geo.centre_x;
    A tap_y = -geo.centre_y;
    for (I q = 0; q < geo.points; ++q) {
      if (linear == geo.centre_tap) {  // skip the centre tap: one step along the kernel column
        ++linear;
        ++j;
        tap_y += geo.dilation_y;
      }
      if (j == geo.kernel_h) {
        j = 0;
        tap_y = -geo.centre_y;
        tap_x += geo.dilation_x;
      }
      fn(q, qg.base_x + geo.scale * tap_x, qg.base_y + geo.scale * tap_y);
      ++linear;
      ++j;
      tap_y += geo.dilation_y;
    }
  }
}

// Bilinear cell of one sample: its (y0, x0) corner offset, the fractional position and which of the four corners
// lie inside the image.
template <typename A, typename I>
struct Cell {
  I base;
  A lx;
  A ly;
  bool top, bottom, left, right;
};

// False when the sample lies entirely outside the image; a NaN location fails the (positive) test too.
template <typename A, typename I>
__device__ __forceinline__ bool locate(const Geometry<A, I>& geo, A x, A y, Cell<A, I>& cell) {
  if (!(y > A(-1) && x > A(-1) && y < geo.height_f && x < geo.width_f)) return false;
  const A fx = floor_acc(x);
  const A fy = floor_acc(y);
  cell.lx = x - fx;
  cell.ly = y - fy;
  // Tested on the location, not on (x0, y0): floor(y) >= 0 iff y >= 0, floor(y) < H - 1 iff y < H - 1.
  cell.top = y >= A(0);
  cell.bottom = y < geo.last_y;
  cell.left = x >= A(0);
  cell.right = x < geo.last_x;
  cell.base = I(to_int(fy)) * geo.row + I(to_int(fx)) * geo.channels;
  return true;
}

// Adds what a sample outside the image adds in the reference (weight * 0 after zero padding): NaN when its location
// or weight is not finite, else nothing; v * 0 is +-0 exactly for finite v.
template <typename A>
__device__ __forceinline__ void add_outside_sample(A& outside, A x, A y, A m) {
  outside = fma(x, A(0), outside);
  outside = fma(y, A(0), outside);
  outside = fma(m, A(0), outside);
}

template <typename T, int VEC, typename A>
__device__ __forceinline__ void add_corner(A (&acc)[VEC], const T* ptr, A weight) {
  A v[VEC];
  load_pack<T, VEC>(ptr, v);
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] += weight * v[k];
}

// The learned location and weight of point q of a (query, group) whose offset_mask columns start at `mask`.
template <typename T, typename A, typename I>
struct Sample {
  A x, y, m;
  __device__ __forceinline__ Sample(const Geometry<A, I>& geo, const T* mask, I q, A tap_x, A tap_y)
      : x(tap_x + geo.scale * to_acc(mask[2 * q])),
        y(tap_y + geo.scale * to_acc(mask[2 * q + 1])),
        m(to_acc(mask[2 * geo.points + q])) {}
};

template <typename T, int VEC, typename I, int kKernel>
__global__ void __launch_bounds__(kThreads, 1)
    forward_kernel(const T* __restrict__ value, const T* __restrict__ offset_mask, T* __restrict__ out,
                   const Geometry<typename AccOf<T>::type, I> geo, const int lane_bits, const I total) {
  using A = typename AccOf<T>::type;
  const I lanes = I(1) << lane_bits;
  for (I t = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); t < total; t += I(gridDim.x) * I(blockDim.x)) {
    const QueryGroup<A, I> qg = query_group(geo, t >> lane_bits);
    const T* mask = offset_mask + qg.mask_base;
    // Usually one iteration (a group's channels fit lanes * VEC); unrolling would only add code.
#pragma unroll 1
    for (I c0 = (t & (lanes - 1)) * VEC; c0 < geo.group_channels; c0 += lanes * VEC) {
      const T* value_group = value + qg.value_base + c0;
      A acc[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] = A(0);
      A outside = A(0);  // 0, or NaN when a sample outside the image is NaN in the reference
      for_each_point<kKernel>(geo, qg, [&](I q, A tap_x, A tap_y) {
        const Sample<T, A, I> s(geo, mask, q, tap_x, tap_y);
        Cell<A, I> cell;
        if (!locate(geo, s.x, s.y, cell)) {
          add_outside_sample(outside, s.x, s.y, s.m);
          return;
        }
        const A top = (A(1) - cell.ly) * s.m;
        const A bottom = cell.ly * s.m;
        const A left = A(1) - cell.lx;
        const T* p00 = value_group + cell.base;
        const T* p10 = p00 + geo.row;
        if (cell.top && cell.left) add_corner<T, VEC>(acc, p00, top * left);
        if (cell.top && cell.right) add_corner<T, VEC>(acc, p00 + geo.channels, top * cell.lx);
        if (cell.bottom && cell.left) add_corner<T, VEC>(acc, p10, bottom * left);
        if (cell.bottom && cell.right) add_corner<T, VEC>(acc, p10 + geo.channels, bottom * cell.lx);
      });
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += outside;
      store_pack<T, VEC>(out + qg.out_base + c0, acc);
    }
  }
}

template <typename A>
__device__ __forceinline__ A lanes_sum(A v, int lanes) {
  for (int o = lanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, lanes);
  return v;
}

// Partial derivatives of one sample w.r.t. its weight (`sampled`: the bilinear sample) and location, over this
// thread's channels.
template <typename A>
struct SampleGrads {
  A sampled = A(0);
  A dx = A(0);
  A dy = A(0);
};

// One corner of one sample: scatters its value gradient and accumulates the sample's partial derivatives.
template <typename T, typename G, int VEC, typename A>
__device__ __forceinline__ void corner_backward(const T* value, G* grad_value, const A (&gout)[VEC], A weight, A m,
                                                A dweight_dx, A dweight_dy, SampleGrads<A>& grads) {
  A v[VEC];
  load_pack<T, VEC>(value, v);
  A dot = A(0);
  A scattered[VEC];
  const A wm = weight * m;
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    dot += gout[k] * v[k];
    scattered[k] = wm * gout[k];
  }
  atomic_add_pack<G, VEC>(grad_value, scattered);
  grads.sampled += weight * dot;
  grads.dx += dweight_dx * dot;
  grads.dy += dweight_dy * dot;
}

// This thread's share of one sample's backward: its channels' value gradients and partial derivatives.
template <typename T, typename G, int VEC, typename A, typename I>
__device__ __forceinline__ SampleGrads<A> sample_backward(const Geometry<A, I>& geo, const Cell<A, I>& cell, A m,
                                                          const T* grad_out, const T* value_group,
                                                          G* grad_value_group, I first_channel, I channel_step) {
  SampleGrads<A> grads;
  const I right = geo.channels;
  const I down = geo.row;
  const A hy = A(1) - cell.ly;
  const A hx = A(1) - cell.lx;
#pragma unroll 1
  for (I c0 = first_channel; c0 < geo.group_channels; c0 += channel_step) {
    A gout[VEC];
    load_pack<T, VEC>(grad_out + c0, gout);
    const T* p00 = value_group + cell.base + c0;
    G* g00 = grad_value_group + cell.base + c0;
    if (cell.top && cell.left) corner_backward<T, G, VEC>(p00, g00, gout, hy * hx, m, -hy, -hx, grads);
    if (cell.top && cell.right) {
      corner_backward<T, G, VEC>(p00 + right, g00 + right, gout, hy * cell.lx, m, hy, -cell.lx, grads);
    }
    if (cell.bottom && cell.left) {
      corner_backward<T, G, VEC>(p00 + down, g00 + down, gout, cell.ly * hx, m, -cell.ly, hx, grads);
    }
    if (cell.bottom && cell.right) {
      corner_backward<T, G, VEC>(p00 + down + right, g00 + down + right, gout, cell.ly * cell.lx, m, cell.ly,
                                 cell.lx, grads);
    }
  }
  return grads;
}

// G is the grad_value accumulation type (float for half types).
template <typename T, typename G, int VEC, typename I, int kKernel>
__global__ void __launch_bounds__(kThreads, 1)
    backward_kernel(const T* __restrict__ grad_output, const T* __restrict__ value,
                    const T* __restrict__ offset_mask, G* __restrict__ grad_value, T* __restrict__ grad_offset_mask,
                    const Geometry<typename AccOf<T>::type, I> geo, const int lane_bits, const I total) {
  using A = typename AccOf<T>::type;
  const int lanes = 1 << lane_bits;
  // Whole blocks iterate together so that every lane of a warp reaches the shuffles.
  const I padded = (total + I(blockDim.x) - 1) / I(blockDim.x) * I(blockDim.x);
  for (I start = I(blockIdx.x) * I(blockDim.x); start < padded; start += I(gridDim.x) * I(blockDim.x)) {
    const I t = start + I(threadIdx.x);
    const bool active = t < total;
    const I lane = t & I(lanes - 1);
    const QueryGroup<A, I> qg = query_group(geo, active ? t >> lane_bits : I(0));
    const T* mask = offset_mask + qg.mask_base;
    T* grad_mask = grad_offset_mask + qg.mask_base;
    for_each_point<kKernel>(geo, qg, [&](I q, A tap_x, A tap_y) {
      const Sample<T, A, I> s(geo, mask, q, tap_x, tap_y);
      SampleGrads<A> grads;
      Cell<A, I> cell;
      if (active && locate(geo, s.x, s.y, cell)) {
        grads = sample_backward<T, G, VEC>(geo, cell, s.m, grad_output + qg.out_base, value + qg.value_base,
                                           grad_value + qg.value_base, lane * VEC, I(lanes) * VEC);
      }
      grads.sampled = lanes_sum(grads.sampled, lanes);
      grads.dx = lanes_sum(grads.dx, lanes);
      grads.dy = lanes_sum(grads.dy, lanes);
      if (active && lane == 0) {
        // d out / d weight is the bilinear sample; d location / d offset is offset_scale.
        grad_mask[2 * q] = from_acc<T>(s.m * geo.scale * grads.dx);
        grad_mask[2 * q + 1] = from_acc<T>(s.m * geo.scale * grads.dy);
        grad_mask[2 * geo.points + q] = from_acc<T>(grads.sampled);
      }
    });
    // The padding columns of the query's row take no part in the result: zero gradient (written once per query).
    if (active && lane == 0) {
      for (I k = qg.padding; k < qg.row_end; ++k) grad_offset_mask[k] = from_acc<T>(A(0));
    }
  }
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

// One buffer a vector access touches, with the size of its elements.
struct Buffer {
  const void* ptr;
  int element_size;
};

// Widest power-of-two width <= max_vec dividing group_channels with every buffer aligned to it.
int widest_vec(int max_vec, int64_t group_channels, const Buffer* buffers, int count) {
  int vec = max_vec;
  while (vec > 1) {
    bool ok = group_channels % vec == 0;
    for (int k = 0; ok && k < count; ++k) {
      ok = reinterpret_cast<uintptr_t>(buffers[k].ptr) % (uintptr_t(vec) * buffers[k].element_size) == 0;
    }
    if (ok) break;
    vec /= 2;
  }
  return vec;
}

int lanes_for(int64_t group_channels, int vec) {
  const int64_t chunks = (group_channels + vec - 1) / vec;
  int lanes = 1;
  while (lanes < chunks && lanes < 32) lanes *= 2;
  return lanes;
}

int log2_of(int power_of_two) {
  int bits = 0;
  while ((1 << bits) < power_of_two) ++bits;
  return bits;
}

struct DeviceInfo {
  int sm_count;
  int major;
};

cudaError_t current_device(DeviceInfo& info) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, device);
  return err;
}

constexpr int64_t kInt32Limit = std::numeric_limits<int32_t>::max();

int64_t total_threads(const Params& p, int lanes) { return p.batch * p.out_h * p.out_w * p.group * lanes; }

// Whether 32-bit indices cover every element offset and thread counter of the launch (including the grid-stride
// step past the end).
bool fits_int32(const Params& p, int64_t offset_mask_dim, int lanes, int64_t blocks) {
  const int64_t queries = p.batch * p.out_h * p.out_w;
  const int64_t value_elements = p.batch * p.height * p.width * p.channels;
  const int64_t threads = total_threads(p, lanes) + (blocks + 1) * kThreads;
  return value_elements < kInt32Limit && queries * offset_mask_dim < kInt32Limit &&
         queries * p.channels < kInt32Limit && threads < kInt32Limit;
}

int64_t blocks_for(int64_t threads, int sm_count) {
  const int64_t needed = (threads + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(needed, int64_t(std::max(sm_count, 1)) * kBlocksPerSm));
}

// Lanes and grid for a vector width; the scalar 64-bit-index shape when 32-bit indices would not reach.
LaunchShape finish_shape(const Params& p, int64_t offset_mask_dim, int vec, int sm_count) {
  LaunchShape shape{vec, lanes_for(p.group_channels, vec), 0, false};
  if (!fits_int32(p, offset_mask_dim, shape.lanes, blocks_for(total_threads(p, shape.lanes), sm_count))) {
    shape = {1, lanes_for(p.group_channels, 1), 0, true};
  }
  shape.blocks = blocks_for(total_threads(p, shape.lanes), sm_count);
  return shape;
}

// Calls fn.run<T, VEC, I, kKernel>() for the runtime (dtype, shape, kernel size). 64-bit indices exist only at
// VEC 1 with the generic tap loop; Fn::max_vec<T>() caps the widths that are instantiated.
template <typename T, int VEC, typename Fn>
cudaError_t with_kernel_size(bool kernel3, const Fn& fn) {
  return kernel3 ? fn.template run<T, VEC, int32_t, 3>() : fn.template run<T, VEC, int32_t, 0>();
}

template <typename T, typename Fn>
cudaError_t with_vec(const LaunchShape& shape, bool kernel3, const Fn& fn) {
  constexpr int kMax = Fn::template max_vec<T>();
  if (shape.wide_index) return shape.vec == 1 ? fn.template run<T, 1, int64_t, 0>() : cudaErrorInvalidValue;
  if constexpr (kMax >= 8) {
    if (shape.vec == 8) return with_kernel_size<T, 8>(kernel3, fn);
  }
  if constexpr (kMax >= 4) {
    if (shape.vec == 4) return with_kernel_size<T, 4>(kernel3, fn);
  }
  if constexpr (kMax >= 2) {
    if (shape.vec == 2) return with_kernel_size<T, 2>(kernel3, fn);
  }
  if (shape.vec == 1) return with_kernel_size<T, 1>(kernel3, fn);
  return cudaErrorInvalidValue;
}

template <typename Fn>
cudaError_t dispatch(DType dtype, const LaunchShape& shape, const Params& p, const Fn& fn) {
  const bool kernel3 = p.kernel_h == 3 && p.kernel_w == 3;
  switch (dtype) {
    case DType::kFloat32:
      return with_vec<float>(shape, kernel3, fn);
    case DType::kFloat64:
      return with_vec<double>(shape, kernel3, fn);
    case DType::kFloat16:
      return with_vec<__half>(shape, kernel3, fn);
    case DType::kBFloat16:
      return with_vec<__nv_bfloat16>(shape, kernel3, fn);
  }
  return cudaErrorInvalidValue;
}

struct ForwardLaunch {
  const void* value;
  const void* offset_mask;
  void* out;
  Params p;
  int64_t offset_mask_dim;
  LaunchShape shape;
  cudaStream_t stream;

  template <typename T>
  static constexpr int max_vec() {
    return int(16 / sizeof(T));
  }

  template <typename T, int VEC, typename I, int kKernel>
  cudaError_t run() const {
    const Geometry<typename AccOf<T>::type, I> geo(p, offset_mask_dim);
    forward_kernel<T, VEC, I, kKernel><<<unsigned(shape.blocks), kThreads, 0, stream>>>(
        static_cast<const T*>(value), static_cast<const T*>(offset_mask), static_cast<T*>(out), geo,
        log2_of(shape.lanes), I(total_threads(p, shape.lanes)));
    return cudaGetLastError();
  }
};

struct BackwardLaunch {
  const void* grad_output;
  const void* value;
  const void* offset_mask;
  void* grad_value;
  void* grad_offset_mask;
  Params p;
  int64_t offset_mask_dim;
  LaunchShape shape;
  cudaStream_t stream;

  // 16 bytes of float accumulators (one float4 atomic); double has no vector atomics.
  template <typename T>
  static constexpr int max_vec() {
    return std::is_same<T, double>::value ? 1 : 4;
  }

  template <typename T, int VEC, typename I, int kKernel>
  cudaError_t run() const {
    using G = typename AccOf<T>::type;
    const Geometry<G, I> geo(p, offset_mask_dim);
    backward_kernel<T, G, VEC, I, kKernel><<<unsigned(shape.blocks), kThreads, 0, stream>>>(
        static_cast<const T*>(grad_output), static_cast<const T*>(value), static_cast<const T*>(offset_mask),
        static_cast<G*>(grad_value), static_cast<T*>(grad_offset_mask), geo, log2_of(shape.lanes),
        I(total_threads(p, shape.lanes)));
    return cudaGetLastError();
  }
};

}  // namespace

LaunchShape choose_forward_shape(DType dtype, const Params& p, int64_t offset_mask_dim, const void* value,
                                 const void* out, int sm_count) {
  const int size = element_size(dtype);
  const Buffer buffers[] = {{value, size}, {out, size}};
  return finish_shape(p, offset_mask_dim, widest_vec(16 / size, p.group_channels, buffers, 2), sm_count);
}

LaunchShape choose_backward_shape(DType dtype, const Params& p, int64_t offset_mask_dim, const void* grad_output,
                                  const void* value, const void* grad_value_acc, int sm_count, int compute_major) {
  const int size = element_size(dtype);
  // One channel per thread keeps scalar atomics contiguous across a warp (8 floats per 32-byte sector); sm_90+ adds
  // float4 / float2 atomics, which keep that with 4 channels per thread.
  const bool vector_atomics = compute_major >= 9 && dtype != DType::kFloat64;
  const Buffer buffers[] = {{grad_output, size}, {value, size}, {grad_value_acc, dtype == DType::kFloat64 ? 8 : 4}};
  const int vec = vector_atomics ? widest_vec(4, p.group_channels, buffers, 3) : 1;
  return finish_shape(p, offset_mask_dim, vec, sm_count);
}

cudaError_t launch_forward(DType dtype, const void* value, const void* offset_mask, void* out, const Params& p,
                           int64_t offset_mask_dim, cudaStream_t stream) {
  DeviceInfo device{};
  cudaError_t err = current_device(device);
  if (err != cudaSuccess) return err;
  const LaunchShape shape = choose_forward_shape(dtype, p, offset_mask_dim, value, out, device.sm_count);
  if (total_threads(p, shape.lanes) == 0) return cudaSuccess;
  return dispatch(dtype, shape, p, ForwardLaunch{value, offset_mask, out, p, offset_mask_dim, shape, stream});
}

cudaError_t launch_backward(DType dtype, const void* grad_output, const void* value, const void* offset_mask,
                            void* grad_value_acc, void* grad_offset_mask, const Params& p, int64_t offset_mask_dim,
                            cudaStream_t stream) {
  DeviceInfo device{};
  cudaError_t err = current_device(device);
  if (err != cudaSuccess) return err;
  const LaunchShape shape = choose_backward_shape(dtype, p, offset_mask_dim, grad_output, value, grad_value_acc,
                                                  device.sm_count, device.major);
  if (total_threads(p, shape.lanes) == 0) return cudaSuccess;
  return dispatch(dtype, shape, p,
                  BackwardLaunch{grad_output, value, offset_mask, grad_value_acc, grad_offset_mask, p,
                                 offset_mask_dim, shape, stream});
}

}  // namespace cuda
}  // namespace dcnv4
