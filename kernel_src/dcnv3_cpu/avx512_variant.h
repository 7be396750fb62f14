// Compiles the loops of the header named by DCNV3_CPU_IMPL a third time, for AVX-512 (F, BW, DQ, VL) with AVX2 +
// FMA, in namespace `avx512` (GCC on x86-64 only; defines DCNV3_HAVE_AVX512_PATH), for the including file to pick
// at run time like the AVX2 build (see avx2_variant.h, whose reasons for no-trapping-math hold here too). The loops
// see DCNV3_CPU_AVX2 as in the AVX2 build, so that its intrinsics serve where nothing wider is written, and
// DCNV3_CPU_AVX512 for the 512-bit ones; prefer-vector-width=512 lets GCC's own vectorisation use whole 512-bit
// registers too (its default for AVX-512 targets is 256). Included once per implementation header; no include
// guard.
#ifndef DCNV3_CPU_IMPL
#error "define DCNV3_CPU_IMPL (the loops' header) before including avx512_variant.h"
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DCNV3_HAVE_AVX512_PATH 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512")
#pragma GCC optimize("no-trapping-math")
// GCC 12's AVX-512 intrinsics (max, min, conversions, gathers) start from an _mm512_undefined_*() value, which
// -Wmaybe-uninitialized reports once they are inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define DCNV3_CPU_ISA avx512
#define DCNV3_CPU_AVX2 1
#define DCNV3_CPU_AVX512 1
#include DCNV3_CPU_IMPL
#undef DCNV3_CPU_AVX512
#undef DCNV3_CPU_AVX2
#undef DCNV3_CPU_ISA
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
