// C entry points over the official DCNv4 launch functions (OpenGVLab/DCNv4 DCNv4_op/src/cuda/dcnv4_im2col_cuda.cuh and
// dcnv4_col2im_cuda.cuh, unchanged but for the launch syntax), float32, for tools/dcnv4_official.py. The official
// sources are never part of this repository: the tool copies them from a DCNv4 checkout into its build directory.
#include <cstdint>
#include <exception>
#include <string>

#include "dcnv4_col2im_cuda.cuh"
#include "dcnv4_im2col_cuda.cuh"

// The official kernels' dynamic shared memory (`extern __shared__ char _s[]`): one buffer of the 48 KiB the launch
// allows, shared by the blocks, which the emulation runs one at a time.
alignas(16) char _s[48 * 1024];

namespace {

std::string host_error;

// The official launch functions report errors with exceptions (AT_ASSERTM, invalid K / d_stride) or through
// cudaGetLastError: 0 on success, -1 with the message in host_error, else the CUDA error.
template <typename Fn>
int guarded(Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    host_error = e.what();
    return -1;
  }
  return int(cudaGetLastError());
}

}  // namespace

extern "C" {

const char* emu_official_host_error() { return host_error.c_str(); }

// One im2col_step chunk of dcnv4_cuda_forward: sizes as the official dcnv4_im2col_cuda takes them (ints[]: kernel_h,
// kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, G, D, B, height_in, width_in, height_out,
// width_out, remove_center, d_stride, block_thread, softmax, padded_offset_dim).
int emu_official_forward(const float* value, const float* offset_mask, float* output, const int* a,
                         float offset_scale) {
  return guarded([&] {
    dcnv4_im2col_cuda<float>(nullptr, value, offset_mask, output, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
                             a[8], a[9], a[10], a[11], a[12], a[13], a[14], offset_scale, a[15], a[16], a[17],
                             a[18] != 0, a[19]);
  });
}

// One im2col_step chunk of dcnv4_cuda_backward (the same ints[]); grad_value and grad_offset_mask are float32
// accumulators that must start zero.
int emu_official_backward(const float* value, const float* offset_mask, const float* grad_output, float* grad_value,
                          float* grad_offset_mask, const int* a, float offset_scale) {
  return guarded([&] {
    dcnv4_col2im_cuda<float>(nullptr, value, offset_mask, grad_output, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
                             a[8], a[9], a[10], a[11], a[12], a[13], a[14], offset_scale, a[15], grad_value,
                             grad_offset_mask, a[16], a[17], a[18] != 0, a[19]);
  });
}
}
