// Argument checks shared by the op entry points (torch_binding.cpp, dcnv4_binding.cpp, msda_binding.cpp). Every
// message starts with the op's name (`op`) and names the offending argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <cstdint>

namespace argument_checks {

inline bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// `t` is a defined 4-D (N, H, W, C) tensor on value's device and of value's dtype.
inline void check_nhwc_like_value(const char* op, const at::Tensor& t, const char* name, const at::Tensor& value,
                                  const char* cast_hint) {
  TORCH_CHECK(t.defined(), op, ": `", name, "` is undefined");
  TORCH_CHECK(t.dim() == 4, op, ": `", name, "` must be a 4-D (N, H, W, C) tensor, got ", t.dim(), "-D shape ",
              t.sizes());
  TORCH_CHECK(t.device() == value.device(), op, ": `", name, "` is on ", t.device(), " but `value` is on ",
              value.device());
  TORCH_CHECK(t.scalar_type() == value.scalar_type(), op, ": `", name, "` has dtype ", t.scalar_type(),
              " but `value` has dtype ", value.scalar_type(), "; ", cast_hint);
}

// a * b, or a clear error naming the product when it does not fit in int64 (a wrapped product could pass the
// shape checks and send the kernels outside their buffers).
inline int64_t checked_mul(const char* op, int64_t a, int64_t b, const char* what) {
  int64_t out = 0;
  TORCH_CHECK(!c10::mul_overflows(a, b, &out), op, ": ", what, " = ", a, " * ", b, " overflows int64");
  return out;
}

inline int64_t checked_add(const char* op, int64_t a, int64_t b, const char* what) {
  int64_t out = 0;
  TORCH_CHECK(!c10::add_overflows(a, b, &out), op, ": ", what, " = ", a, " + ", b, " overflows int64");
  return out;
}

// (size + 2 * pad - (dilation * (kernel - 1) + 1)) / stride + 1, clamped at 0, with every step checked.
inline int64_t conv_out_size(const char* op, int64_t size, int64_t kernel, int64_t stride, int64_t pad,
                             int64_t dilation) {
  const int64_t padded = checked_add(op, size, checked_mul(op, 2, pad, "2 * pad"), "size + 2 * pad");
  const int64_t span =
      checked_add(op, checked_mul(op, dilation, kernel - 1, "dilation * (kernel - 1)"), 1, "kernel span");
  const int64_t out = (padded - span) / stride + 1;
  return padded >= span ? out : 0;
}

}  // namespace argument_checks
