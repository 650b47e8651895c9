// What the running CPU offers, as the kernels see it.
#pragma once
#include <string>

namespace convx {

// The instruction set the SIMD kernels dispatch to on this CPU: "avx512", "avx2"
// or "scalar". Chosen at run time (GCC target_clones / ifunc), so one build runs
// on any x86-64 and uses what the CPU has.
std::string simd_level();

// Whether the CPU runs AVX-512 Foundation instructions, all that the kernels
// written for it in intrinsics or assembly use (checked once; false off x86-64).
bool cpu_has_avx512f();

// Threads an OpenMP kernel launched from the calling thread will use.
int max_threads();

}  // namespace convx
