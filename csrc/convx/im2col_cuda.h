// im2col / col2im on CUDA devices, batched over N images (see im2col.h for the
// layout). col2im is gather-style: each image element sums the column entries
// copied from it, in the CPU kernel's order, so it needs no atomics and is
// bitwise repeatable. Pointers are device memory on launch.device.
#pragma once
#include <cstdint>

#include "convx/cuda_launch.h"
#include "convx/params.h"

namespace convx {

// image: N x C x H x W, col: N x (C*kh*kw) x (out_h*out_w).
template <typename T>
void im2col_cuda(const Im2colParams& p, int64_t N, const T* image, T* col, const CudaLaunch& launch);

template <typename T>
void col2im_cuda(const Im2colParams& p, int64_t N, const T* col, T* image, const CudaLaunch& launch);

}  // namespace convx
