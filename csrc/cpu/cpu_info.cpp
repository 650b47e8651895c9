#include "convx/cpu_info.h"

#include <omp.h>

namespace convx {

std::string simd_level() {
#if defined(__x86_64__) && defined(__GNUC__)
  // The same tests the target_clones resolver applies to pick arch=x86-64-v4 / v3.
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "avx512";
  if (__builtin_cpu_supports("x86-64-v3")) return "avx2";
#endif
  return "scalar";
}

bool cpu_has_avx512f() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

int max_threads() { return omp_get_max_threads(); }

}  // namespace convx
