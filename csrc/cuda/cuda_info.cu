// What the CUDA part of this build was compiled with, and the installed driver.
#include <cuda_runtime.h>

#include <string>

#include "convx/cuda_launch.h"

#ifndef CONVX_CUDA_ARCHITECTURES
#define CONVX_CUDA_ARCHITECTURES "unknown"
#endif

namespace convx {

std::string cuda_build_info() {
  return "CUDA " + std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10) +
         ", architectures " + CONVX_CUDA_ARCHITECTURES;
}

int cuda_driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) return 0;  // no driver: report 0, do not throw
  return version;
}

}  // namespace convx
