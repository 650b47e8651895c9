// max_pool2d on CUDA devices, with the CPU kernel's semantics (max_pool2d.h): int64
// flat h*W + w argmax per (n, c) plane, the last NaN wins, ties keep the first
// maximum, an all -inf window gives -inf and the index of its first element.
// Pointers are device memory on launch.device.
#pragma once
#include <cstdint>

#include "convx/cuda_launch.h"
#include "convx/params.h"

namespace convx {

template <typename T>
void max_pool2d_forward_cuda(const Pool2dParams& p, const T* input, T* output, int64_t* indices,
                             const CudaLaunch& launch);

// Gather-style: each input element scans the windows that contain it and adds the
// gradient of those whose argmax it is, in output order (the CPU's order, so the
// sums agree bitwise). No atomics. An index that does not point into its own
// window (impossible for indices from the forward pass) routes nothing; unlike
// the CPU kernel, this is not reported, as that would need a host synchronization.
template <typename T>
void max_pool2d_backward_cuda(const Pool2dParams& p, const T* grad_output, const int64_t* indices,
                              T* grad_input, const CudaLaunch& launch);

}  // namespace convx
