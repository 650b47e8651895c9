// Run-time instruction-set selection for the CPU kernels.
#pragma once

// A function marked CONVX_SIMD_CLONES is compiled three times, for AVX-512
// (x86-64-v4), AVX2+FMA (x86-64-v3) and baseline x86-64, and the loader picks the
// clone for the running CPU: the vectorized loops get 16-float vectors where the
// CPU has them, and the binary still never executes an instruction it lacks.
// Everything else is compiled for baseline x86-64 (SSE2), so a hot loop outside
// such a function runs four floats at a time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CONVX_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CONVX_SIMD_CLONES
#endif
