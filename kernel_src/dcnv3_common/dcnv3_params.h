// Shape and hyper-parameters of one DCNv3 call, shared by the CPU and CUDA implementations.
// Plain C++ (no torch headers) so that the CUDA translation unit stays cheap to compile.
#pragma once

#include <cstdint>

namespace dcnv3 {

struct Params {
  // value (N, H, W, C) with C = group * group_channels, NHWC contiguous
  int64_t batch;
  int64_t height;
  int64_t width;
  int64_t channels;
  // output / offset / mask spatial size
  int64_t out_h;
  int64_t out_w;
  int64_t kernel_h;
  int64_t kernel_w;
  int64_t stride_h;
  int64_t stride_w;
  int64_t pad_h;
  int64_t pad_w;
  int64_t dilation_h;
  int64_t dilation_w;
  int64_t group;
  int64_t group_channels;
  // sampling points per group: kernel_h * kernel_w, minus one with remove_center
  int64_t points;
  double offset_scale;
  bool remove_center;
};

}  // namespace dcnv3
