// conv2d on CUDA devices: forward, backward to input (data), backward to weight,
// bias gradient. The same contracts as conv2d.h (contiguous NCHW / KCRS buffers,
// validated params, outputs overwritten), but the pointers are device memory on
// `launch.device` and the work is queued on `launch.stream` (see cuda_launch.h).
//
// Algorithms:
//   direct         one thread per output element, sums in double in the loop order
//                  of the CPU reference: the GPU-side yardstick.
//   implicit_gemm  tiled GEMM that gathers the im2col matrix on the fly into
//                  shared memory (no column buffer), float accumulation for float.
// Every backward is deterministic: no atomics anywhere, so two runs on the same
// device give bitwise-equal results.
#pragma once
#include <cstdint>
#include <string>

#include "convx/conv2d.h"
#include "convx/cuda_launch.h"
#include "convx/params.h"

namespace convx {

enum class Conv2dCudaAlgo { Auto, Direct, ImplicitGemm };

Conv2dCudaAlgo conv2d_cuda_algo_from_name(const std::string& name);  // throws on unknown names
const char* conv2d_cuda_algo_name(Conv2dCudaAlgo algo);

// What a call will do: the algorithm (never Auto) and, for the implicit GEMM
// backward-weight pass, how the N*OH*OW reduction is split and how many bytes of
// workspace that needs (0 otherwise). Pure host arithmetic, no CUDA call: the
// Python layer asks for the plan, allocates the workspace with torch, and passes
// both to the entry point, which recomputes the plan and checks the workspace.
// `element_size` is sizeof(T); `sm_count` the device's multiprocessor count (it
// sets the split, so results are repeatable bitwise on one device type).
struct Conv2dCudaPlan {
  Conv2dCudaAlgo algo = Conv2dCudaAlgo::Direct;
  int64_t splits = 1;
  int64_t k_per_split = 0;
  int64_t workspace_bytes = 0;
};
Conv2dCudaPlan conv2d_cuda_plan(const Conv2dParams& p, Conv2dDirection direction, Conv2dCudaAlgo algo,
                                int64_t element_size, int64_t sm_count);

template <typename T>
Conv2dCudaAlgo conv2d_forward_cuda(const Conv2dParams& p, const T* input, const T* weight, const T* bias,
                                   T* output, Conv2dCudaAlgo algo, const CudaLaunch& launch);

template <typename T>
Conv2dCudaAlgo conv2d_backward_data_cuda(const Conv2dParams& p, const T* grad_output, const T* weight,
                                         T* grad_input, Conv2dCudaAlgo algo, const CudaLaunch& launch);

// workspace: device memory of at least conv2d_cuda_plan(...).workspace_bytes bytes
// (may be null when that is 0), used on `launch.stream` only.
template <typename T>
Conv2dCudaAlgo conv2d_backward_weight_cuda(const Conv2dParams& p, const T* grad_output, const T* input,
                                           T* grad_weight, Conv2dCudaAlgo algo, void* workspace,
                                           int64_t workspace_bytes, int64_t sm_count,
                                           const CudaLaunch& launch);

template <typename T>
void conv2d_backward_bias_cuda(const Conv2dParams& p, const T* grad_output, T* grad_bias,
                               const CudaLaunch& launch);

}  // namespace convx
