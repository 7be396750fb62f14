// Which build of the DCNv3 / DCNv4 CPU loops a call runs: baseline (any CPU), AVX2 + FMA (avx2_variant.h) or
// AVX-512 (avx512_variant.h). Hub binaries must run on every x86-64 CPU, so the widest build the CPU supports is
// picked at run time. The environment variable INTERNIMAGE_KERNEL_CPU_ISA (`baseline`, `avx2`, `avx512`) caps the
// choice, read at every call (a few hundred nanoseconds against an op's tens of microseconds), so that the tests
// reach every build on one machine.
#pragma once

#include <cstdlib>
#include <cstring>

namespace dcnv3 {

enum class CpuIsa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

inline CpuIsa cpu_isa() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  static const CpuIsa supported = [] {
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return CpuIsa::kBaseline;
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    return avx512 ? CpuIsa::kAvx512 : CpuIsa::kAvx2;
  }();
  CpuIsa cap = CpuIsa::kAvx512;
  if (const char* forced = std::getenv("INTERNIMAGE_KERNEL_CPU_ISA")) {
    if (std::strcmp(forced, "baseline") == 0) cap = CpuIsa::kBaseline;
    if (std::strcmp(forced, "avx2") == 0) cap = CpuIsa::kAvx2;
  }
  return static_cast<int>(cap) < static_cast<int>(supported) ? cap : supported;
#else
  return CpuIsa::kBaseline;
#endif
}

}  // namespace dcnv3
