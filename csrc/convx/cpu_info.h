// What the running CPU offers, as the kernels see it.
#pragma once
#include <string>

namespace convx {

// The instruction set the SIMD kernels dispatch to on this CPU: "avx512", "avx2"
// or "scalar". Chosen at run time (GCC target_clones / ifunc), so one build runs
// on any x86-64 and uses what the CPU has.
std::string simd_level();

// Threads an OpenMP kernel launched from the calling thread will use.
int max_threads();

}  // namespace convx
