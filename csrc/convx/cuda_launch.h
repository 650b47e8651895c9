// Where a CUDA kernel runs: the device index and the stream to launch on.
//
// Plain C++ on purpose: bindings.cpp (built by the host compiler, without the CUDA
// headers) fills it from torch's tensor.device.index and
// torch.cuda.current_stream(device).cuda_stream, and the kernels in csrc/cuda/
// cast `stream` back to cudaStream_t. Every CUDA entry point makes `device`
// current for the duration of the call (restoring the caller's device), launches
// on `stream` only, never synchronizes the host, and throws std::runtime_error
// naming the kernel if a CUDA call or launch fails.
#pragma once
#include <cstdint>
#include <string>

namespace convx {

struct CudaLaunch {
  int device = 0;
  std::uintptr_t stream = 0;  // a cudaStream_t; 0 is the legacy default stream
};

// What this build was compiled with, e.g. "CUDA 13.0, architectures 75-real;...".
// Makes no CUDA call.
std::string cuda_build_info();

// The CUDA driver version (e.g. 13000), or 0 when no driver is installed. The only
// call here that talks to the CUDA runtime without a launch; never made at import.
int cuda_driver_version();

}  // namespace convx
