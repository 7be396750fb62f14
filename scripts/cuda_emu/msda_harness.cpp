// C entry points over the real launch code of msda_kernels.cu, for the Python driver (emulator.py).
#include <cstdint>

#include "cuda_runtime.h"
#include "dcnv3_common/msda_sampling.h"
#include "dcnv3_cuda/msda_cuda_launch.h"

namespace {

// shape: batch, spatial, heads, channels, queries, levels, points.
msda::Params make_params(const int64_t* shape) {
  msda::Params p{};
  p.batch = shape[0];
  p.spatial = shape[1];
  p.heads = shape[2];
  p.channels = shape[3];
  p.queries = shape[4];
  p.levels = shape[5];
  p.points = shape[6];
  return p;
}

void write_shape(const msda::Params& p, int64_t* out) {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const msda::cuda::LaunchShape shape = msda::cuda::choose_shape(p, sms);
  out[0] = shape.vec;
  out[1] = shape.lanes;
  out[2] = shape.blocks;
}

}  // namespace

extern "C" {

int emu_msda_forward(int dtype, const void* value, const int64_t* shapes, const int64_t* starts,
                     const void* locations, const void* weights, void* out, const int64_t* shape,
                     int64_t* launch_shape) {
  const msda::Params p = make_params(shape);
  write_shape(p, launch_shape);
  return int(msda::cuda::launch_forward(static_cast<msda::cuda::DType>(dtype), value, shapes, starts, locations,
                                        weights, out, p, nullptr));
}

int emu_msda_backward(int dtype, const void* grad_output, const void* value, const int64_t* shapes,
                      const int64_t* starts, const void* locations, const void* weights, void* grad_value_acc,
                      void* grad_locations, void* grad_weights, const int64_t* shape, int64_t* launch_shape) {
  const msda::Params p = make_params(shape);
  write_shape(p, launch_shape);
  return int(msda::cuda::launch_backward(static_cast<msda::cuda::DType>(dtype), grad_output, value, shapes, starts,
                                         locations, weights, grad_value_acc, grad_locations, grad_weights, p,
                                         nullptr));
}
}
