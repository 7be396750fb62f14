// What the official DCNv4 CUDA sources (OpenGVLab/DCNv4, DCNv4_op/src/cuda/*.cuh) need beyond the CUDA emulation of
// ../include, so that they compile unchanged with the host compiler (tools/dcnv4_official.py). Every header of this
// directory stands in for a torch / CUDA header those sources include and includes this one.
#pragma once

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda_fp16.h"
#include "cuda_runtime.h"

// ATen's opmath_type: the accumulation type (float for the half types, the type itself otherwise).
namespace at {
template <typename T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<__half> {
  using type = float;
};
template <typename T>
using opmath_type = typename OpMath<T>::type;
}  // namespace at

#define AT_ASSERTM(cond, ...) \
  do {                        \
    if (!(cond)) throw std::runtime_error("AT_ASSERTM failed: " #cond); \
  } while (0)

using std::max;  // the device max(float, float)

// CUDA's vector types used as transfer types of the copies. Aligned to their element only: the sources copy through
// them into plain local arrays, which the host stack aligns to the element, and host SSE moves would fault on the
// over-aligned types.
struct uint2 {
  unsigned x, y;
};
struct uint4 {
  unsigned x, y, z, w;
};
struct ulonglong4 {
  unsigned long long x, y, z, w;
};

namespace emu_official {

// blockDim's fields with the semantics of the PTX the sources are compiled to on a GPU: `1 << blockDim.x` is a
// shl.b32, which gives 0 for shift counts >= 32 (C++ leaves it undefined; x86 shifts by the count modulo 32, which
// would turn the official's full-warp lane mask ((1 << 32) - 1) into 0). Every other use is plain unsigned
// arithmetic.
struct PtxDim {
  unsigned v;
};
inline int operator<<(int lhs, PtxDim rhs) { return rhs.v >= 32 ? 0 : int(unsigned(lhs) << rhs.v); }
#define EMU_PTX_DIM_OPERATOR(op)                                                                   \
  template <typename T, typename = std::enable_if_t<std::is_arithmetic<T>::value>>                \
  auto operator op(T lhs, PtxDim rhs) {                                                            \
    return lhs op rhs.v;                                                                           \
  }                                                                                                \
  template <typename T, typename = std::enable_if_t<std::is_arithmetic<T>::value>>                \
  auto operator op(PtxDim lhs, T rhs) {                                                            \
    return lhs.v op rhs;                                                                           \
  }
EMU_PTX_DIM_OPERATOR(+)
EMU_PTX_DIM_OPERATOR(-)
EMU_PTX_DIM_OPERATOR(*)
EMU_PTX_DIM_OPERATOR(/)
EMU_PTX_DIM_OPERATOR(%)
EMU_PTX_DIM_OPERATOR(>>)
EMU_PTX_DIM_OPERATOR(<)
EMU_PTX_DIM_OPERATOR(>)
EMU_PTX_DIM_OPERATOR(<=)
EMU_PTX_DIM_OPERATOR(>=)
EMU_PTX_DIM_OPERATOR(==)
EMU_PTX_DIM_OPERATOR(!=)
#undef EMU_PTX_DIM_OPERATOR

struct PtxDim3 {
  PtxDim x, y, z;
};
inline PtxDim3 block_dim() {
  const dim3& d = ::emu::builtins.block_dim;
  return {{d.x}, {d.y}, {d.z}};
}

}  // namespace emu_official

#undef blockDim
#define blockDim (::emu_official::block_dim())
