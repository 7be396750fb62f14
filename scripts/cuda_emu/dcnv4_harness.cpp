// C entry points over the real launch code of dcnv4_kernels.cu, for the Python driver (emulator.py).
#include <cstdint>

#include "cuda_runtime.h"
#include "dcnv3_common/dcnv3_params.h"
#include "dcnv3_cuda/dcnv4_cuda_launch.h"

namespace {

// shape: batch, height, width, channels, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
// dilation_h, dilation_w, group, group_channels, points, offset_mask_dim (the order of harness.cpp, plus D).
dcnv3::Params make_params(const int64_t* shape, double offset_scale, int remove_center) {
  dcnv3::Params p{};
  p.batch = shape[0];
  p.height = shape[1];
  p.width = shape[2];
  p.channels = shape[3];
  p.out_h = shape[4];
  p.out_w = shape[5];
  p.kernel_h = shape[6];
  p.kernel_w = shape[7];
  p.stride_h = shape[8];
  p.stride_w = shape[9];
  p.pad_h = shape[10];
  p.pad_w = shape[11];
  p.dilation_h = shape[12];
  p.dilation_w = shape[13];
  p.group = shape[14];
  p.group_channels = shape[15];
  p.points = shape[16];
  p.offset_scale = offset_scale;
  p.remove_center = remove_center != 0;
  return p;
}

void write_shape(const dcnv4::cuda::LaunchShape& shape, int64_t* out) {
  out[0] = shape.vec;
  out[1] = shape.lanes;
  out[2] = shape.blocks;
  out[3] = shape.wide_index ? 1 : 0;
}

int device_attribute(cudaDeviceAttr attr) {
  int value = 0;
  cudaDeviceGetAttribute(&value, attr, 0);
  return value;
}

}  // namespace

extern "C" {

int emu_dcnv4_forward(int dtype, const void* value, const void* offset_mask, void* out, const int64_t* shape,
                      double offset_scale, int remove_center, int64_t* launch_shape) {
  const dcnv3::Params p = make_params(shape, offset_scale, remove_center);
  const auto type = static_cast<dcnv4::cuda::DType>(dtype);
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount);
  write_shape(dcnv4::cuda::choose_forward_shape(type, p, shape[17], value, out, sms), launch_shape);
  return int(dcnv4::cuda::launch_forward(type, value, offset_mask, out, p, shape[17], nullptr));
}

int emu_dcnv4_backward(int dtype, const void* grad_output, const void* value, const void* offset_mask,
                       void* grad_value_acc, void* grad_offset_mask, const int64_t* shape, double offset_scale,
                       int remove_center, int64_t* launch_shape) {
  const dcnv3::Params p = make_params(shape, offset_scale, remove_center);
  const auto type = static_cast<dcnv4::cuda::DType>(dtype);
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount);
  const int major = device_attribute(cudaDevAttrComputeCapabilityMajor);
  write_shape(dcnv4::cuda::choose_backward_shape(type, p, shape[17], grad_output, value, grad_value_acc, sms, major),
              launch_shape);
  return int(dcnv4::cuda::launch_backward(type, grad_output, value, offset_mask, grad_value_acc, grad_offset_mask, p,
                                          shape[17], nullptr));
}
}
