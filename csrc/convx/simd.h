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

// A function marked CONVX_INLINE_COPIES keeps its copy and fill loops as loops.
// GCC otherwise replaces a loop that copies or zeroes a run with a call to
// memmove or memset, which for runs of a few dozen elements costs more than the
// copy itself: LeNet's first layer laid out its weight gradient's dY rows of 24
// floats by 30,720 such calls per pass, and as loops the pass ran 9% faster.
// (std::copy and std::fill call the library by themselves; such functions
// write plain loops.)
#if defined(__GNUC__) && !defined(__clang__)
#define CONVX_INLINE_COPIES __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define CONVX_INLINE_COPIES
#endif
