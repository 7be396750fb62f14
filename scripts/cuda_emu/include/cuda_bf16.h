// __nv_bfloat16 for the host emulation: the upper half of a float32, conversions rounding to nearest even.
#pragma once

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t wide = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &wide, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  __nv_bfloat16 h;
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    h.bits = uint16_t((bits >> 16) | 0x0040u);  // NaN stays a (quiet) NaN
  } else {
    h.bits = uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
  return h;
}
