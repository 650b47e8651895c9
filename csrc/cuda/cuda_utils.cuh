// Helpers shared by the CUDA kernels: device guard, error checks, launch sizes and
// cheap int64 division for index decomposition.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "convx/cuda_launch.h"

namespace convx {
namespace cuda {

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
}

// Launch-configuration errors (and errors left by earlier asynchronous work of
// this runtime) surface here; the kernel's own faults appear at the next
// synchronizing call, as for any CUDA op.
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

inline cudaStream_t stream_of(const CudaLaunch& launch) {
  return reinterpret_cast<cudaStream_t>(launch.stream);
}

// Makes `device` current for one call and restores the caller's device after it,
// so a launch for a tensor on cuda:1 never leaves cuda:1 current behind.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device_) check_cuda(cudaSetDevice(device_), "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (previous_ != device_) cudaSetDevice(previous_);  // best effort: destructors must not throw
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = 0;
};

// Elementwise kernels use 256 threads and a grid-stride loop over int64 indices;
// the grid is capped so that block counts stay far from the 2**31-1 limit and
// each thread does a few elements of a huge tensor.
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

inline unsigned blocks_for(int64_t work, int threads = kThreads) {
  const int64_t blocks = work / threads + (work % threads != 0);
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, kMaxBlocks)));
}

// Division of a non-negative int64 by a fixed positive divisor with one 64-bit
// multiply-high and a shift instead of the ~70-instruction int64 division, so that
// memory-bound kernels can afford to split flat indices into (n, c, h, w).
// Granlund & Montgomery (1994), Thm 4.2 with N = 63 bit dividends: with
// l = ceil(log2 d) and m = floor(2**(63+l) / d) + 1 (< 2**64 for d >= 2),
// floor(n / d) = floor(m * n / 2**(63+l)) for every 0 <= n < 2**63.
struct IndexDivider {
  int64_t divisor = 1;
  uint64_t multiplier = 0;
  int shift = 0;  // applied after taking the high 64 bits of m * n

  IndexDivider() = default;
  explicit IndexDivider(int64_t d) : divisor(d) {
    if (d < 1) throw std::invalid_argument("IndexDivider needs a positive divisor, got " + std::to_string(d));
    if (d == 1) return;
    int l = 0;
    while ((int64_t(1) << l) < d && l < 63) ++l;  // smallest l with 2**l >= d; l >= 1 here
    const unsigned __int128 numerator = static_cast<unsigned __int128>(1) << (63 + l);
    multiplier = static_cast<uint64_t>(numerator / static_cast<unsigned __int128>(d)) + 1;
    shift = l - 1;
  }

  __host__ __device__ __forceinline__ int64_t div(int64_t n) const {
    if (divisor == 1) return n;
#ifdef __CUDA_ARCH__
    const uint64_t high = __umul64hi(static_cast<uint64_t>(n), multiplier);
#else
    const uint64_t high = static_cast<uint64_t>(
        (static_cast<unsigned __int128>(static_cast<uint64_t>(n)) * multiplier) >> 64);
#endif
    return static_cast<int64_t>(high >> shift);
  }
  // q = n / d, r = n % d.
  __host__ __device__ __forceinline__ void divmod(int64_t n, int64_t& q, int64_t& r) const {
    q = div(n);
    r = n - q * divisor;
  }
};

}  // namespace cuda
}  // namespace convx
