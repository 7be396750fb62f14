// C entry points over the real launch code of dcnv3_kernels.cu, for the Python driver (emulator.py).
#include <cstdint>

#include "cuda_runtime.h"
#include "dcnv3_common/dcnv3_params.h"
#include "dcnv3_cuda/dcnv3_cuda_launch.h"

namespace {

// shape: batch, height, width, channels, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
// dilation_h, dilation_w, group, group_channels, points.
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

void write_shape(const dcnv3::cuda::LaunchShape& shape, int64_t* out) {
  out[0] = shape.vec;
  out[1] = shape.lanes;
  out[2] = shape.blocks;
  out[3] = shape.wide_index ? 1 : 0;
}

int device_major() {
  int major = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  return major;
}

int device_sms() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  return sms;
}

}  // namespace

extern "C" {

int emu_forward(int dtype, const void* value, const void* offset, const void* mask, void* out, const int64_t* shape,
                double offset_scale, int remove_center, int mask_logits, int64_t* launch_shape) {
  const dcnv3::Params p = make_params(shape, offset_scale, remove_center);
  const auto type = static_cast<dcnv3::cuda::DType>(dtype);
  write_shape(dcnv3::cuda::choose_forward_shape(type, p, value, out, device_sms()), launch_shape);
  return int(dcnv3::cuda::launch_forward(type, value, offset, mask, out, p, mask_logits != 0, nullptr));
}

int emu_backward(int dtype, const void* grad_output, const void* value, const void* offset, const void* mask,
                 void* grad_value_acc, void* grad_offset, void* grad_mask, const int64_t* shape, double offset_scale,
                 int remove_center, int mask_logits, int64_t* launch_shape) {
  const dcnv3::Params p = make_params(shape, offset_scale, remove_center);
  const auto type = static_cast<dcnv3::cuda::DType>(dtype);
  write_shape(dcnv3::cuda::choose_backward_shape(type, p, grad_output, value, grad_value_acc, device_sms(),
                                                 device_major()),
              launch_shape);
  return int(dcnv3::cuda::launch_backward(type, grad_output, value, offset, mask, grad_value_acc, grad_offset,
                                          grad_mask, p, mask_logits != 0, nullptr));
}
}
