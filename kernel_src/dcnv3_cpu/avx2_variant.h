// Compiles the loops of the header named by DCNV3_CPU_IMPL a second time, for AVX2 + FMA in namespace `avx2`
// (GCC on x86-64 only; defines DCNV3_HAVE_AVX2_PATH), for the including file to pick at run time: hub binaries must
// run on every x86-64 CPU, so the translation unit itself is compiled for the baseline ISA. no-trapping-math lets
// GCC if-convert selects of float values (it keeps branches where a float op might trap), so that those loops
// vectorise; nothing here reads the floating-point exception flags. DCNV3_CPU_AVX2 lets the loops use AVX2
// intrinsics where auto-vectorisation falls short. Included once per implementation header; no include guard.
#ifndef DCNV3_CPU_IMPL
#error "define DCNV3_CPU_IMPL (the loops' header) before including avx2_variant.h"
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DCNV3_HAVE_AVX2_PATH 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("no-trapping-math")
#define DCNV3_CPU_ISA avx2
#define DCNV3_CPU_AVX2 1
#include DCNV3_CPU_IMPL
#undef DCNV3_CPU_AVX2
#undef DCNV3_CPU_ISA
#pragma GCC pop_options
#endif
