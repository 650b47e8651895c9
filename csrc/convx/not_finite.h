// A branch-free test for inf and NaN, shared by the kernels that must refuse
// non-finite operands (see conv2d_shifted_cpu.cpp and conv2d_depthwise_cpu.cpp).
#pragma once
#include <cstdint>
#include <cstring>

namespace convx {

// 1 if v is inf or NaN (its exponent bits all ones), else 0. An integer test, so
// that OR-ed over a row it vectorizes; a float sum of v - v, the obvious probe,
// is a serial chain of adds, 3 cycles per element (a tenth of a 3x3 weight
// gradient's time went to copying the planes).
template <typename T>
inline unsigned not_finite(T v) {
  if constexpr (sizeof(T) == 4) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return (bits & 0x7f800000u) == 0x7f800000u;
  } else {
    uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return (bits & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
  }
}

}  // namespace convx
