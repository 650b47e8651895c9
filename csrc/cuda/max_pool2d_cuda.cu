// max_pool2d on CUDA devices: the CPU kernel's rules (max_pool2d_cpu.cpp), one
// thread per output element forward and one per input element backward.
#include "convx/max_pool2d_cuda.h"

#include <cmath>
#include <limits>

#include "cuda_utils.cuh"

namespace convx {
namespace {

using cuda::IndexDivider;

// The taps of one window along one axis: start, start+d, ..., start+(k-1)*d. `first`
// is the first tap inside the input (validation guarantees one), `count` the number
// of taps inside it. Closed forms as on the CPU: kernel, padding and dilation may
// be near 2**62, so no stepping loops and no unchecked start + span.
__device__ __forceinline__ void window_taps(int64_t start, int64_t span, int64_t dilation, int64_t size,
                                            int64_t& first, int64_t& count) {
  const int64_t end = (start > size - span) ? size : start + span;  // one past the window, clipped
  first = start;
  if (start < 0) {
    const int64_t gap = -start;
    first = start + (gap / dilation + (gap % dilation != 0)) * dilation;
  }
  count = end > first ? (end - first - 1) / dilation + 1 : 0;
}

struct PoolGeometry {
  int64_t H, W, OH, OW;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t span_h, span_w;  // dilation * (kernel - 1) + 1
  IndexDivider div_ow, div_oh, div_w, div_h;
};

PoolGeometry geometry(const Pool2dParams& p) {
  PoolGeometry g;
  g.H = p.H; g.W = p.W; g.OH = p.out_h(); g.OW = p.out_w();
  g.kernel_h = p.kernel_h; g.kernel_w = p.kernel_w;
  g.stride_h = p.stride_h; g.stride_w = p.stride_w;
  g.pad_h = p.pad_h; g.pad_w = p.pad_w;
  g.dilation_h = p.dilation_h; g.dilation_w = p.dilation_w;
  g.span_h = (p.kernel_h - 1) * p.dilation_h + 1;  // validated to fit
  g.span_w = (p.kernel_w - 1) * p.dilation_w + 1;
  g.div_ow = IndexDivider(g.OW); g.div_oh = IndexDivider(g.OH);
  g.div_w = IndexDivider(std::max<int64_t>(g.W, 1)); g.div_h = IndexDivider(std::max<int64_t>(g.H, 1));
  return g;
}

// Thread mapping: flat output index o = (plane*OH + oh)*OW + ow, grid-stride in
// int64. Consecutive threads take consecutive ow, so a warp reads rows of its
// windows that are contiguous (stride 1) or evenly spaced: coalesced. Each thread
// writes only its own output and index: no races.
template <typename T>
__global__ void max_pool2d_forward_kernel(PoolGeometry g, int64_t total, const T* __restrict__ input,
                                          T* __restrict__ output, int64_t* __restrict__ indices) {
  const int64_t plane_size = g.H * g.W;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total;
       o += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest, ow, plane, oh;
    g.div_ow.divmod(o, rest, ow);
    g.div_oh.divmod(rest, plane, oh);
    int64_t h0, rows, w0, cols;
    window_taps(oh * g.stride_h - g.pad_h, g.span_h, g.dilation_h, g.H, h0, rows);
    window_taps(ow * g.stride_w - g.pad_w, g.span_w, g.dilation_w, g.W, w0, cols);
    const T* in = input + plane * plane_size;
    // (h0, w0) lies inside the plane (validation), so an all -inf window still
    // reports a real position; NaN wins and a later NaN replaces an earlier one.
    int64_t best_index = h0 * g.W + w0;
    T best = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t row = (h0 + i * g.dilation_h) * g.W;
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t at = row + w0 + j * g.dilation_w;
        const T v = in[at];
        if (v > best || isnan(v)) {
          best = v;
          best_index = at;
        }
      }
    }
    output[o] = best;
    indices[o] = best_index;
  }
}

// Range [lo, hi] of window positions o (along one axis) whose window
// o*stride - pad + [0, span) contains x, clipped to [0, out). Empty when lo > hi.
// x + pad >= 0 and x + pad <= in + pad fit (validated padded size).
__device__ __forceinline__ void windows_containing(int64_t x, int64_t pad, int64_t span, int64_t stride,
                                                   int64_t out, int64_t& lo, int64_t& hi) {
  const int64_t a = x + pad - span + 1;  // window start must be >= this (>= -span: no overflow)
  lo = a <= 0 ? 0 : a / stride + (a % stride != 0);
  hi = (x + pad) / stride;  // window start must be <= x
  if (hi > out - 1) hi = out - 1;
}

// Thread mapping: one thread per input element i = (plane*H + h)*W + w. It visits
// the windows containing (h, w) with oh, then ow, ascending (the order in which
// the CPU kernel scatters) and adds grad_output of those whose argmax is i's flat
// position. Only this thread writes grad_input[i]: no atomics, no races, and the
// sum is bitwise the CPU's. The visit count per axis is at most
// min(out, span/stride + 1) whatever kernel_size is.
template <typename T>
__global__ void max_pool2d_backward_kernel(PoolGeometry g, int64_t total, const T* __restrict__ grad_output,
                                           const int64_t* __restrict__ indices, T* __restrict__ grad_input) {
  const int64_t out_plane = g.OH * g.OW;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest, w, plane, h;
    g.div_w.divmod(i, rest, w);
    g.div_h.divmod(rest, plane, h);
    const int64_t target = h * g.W + w;
    int64_t oh_lo, oh_hi, ow_lo, ow_hi;
    windows_containing(h, g.pad_h, g.span_h, g.stride_h, g.OH, oh_lo, oh_hi);
    windows_containing(w, g.pad_w, g.span_w, g.stride_w, g.OW, ow_lo, ow_hi);
    const T* gout = grad_output + plane * out_plane;
    const int64_t* idx = indices + plane * out_plane;
    T acc = T(0);
    for (int64_t oh = oh_lo; oh <= oh_hi; ++oh) {
      if ((h + g.pad_h - oh * g.stride_h) % g.dilation_h != 0) continue;  // between two taps
      for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) {
        if ((w + g.pad_w - ow * g.stride_w) % g.dilation_w != 0) continue;
        const int64_t o = oh * g.OW + ow;
        if (idx[o] == target) acc += gout[o];
      }
    }
    grad_input[i] = acc;
  }
}

}  // namespace

template <typename T>
void max_pool2d_forward_cuda(const Pool2dParams& p, const T* input, T* output, int64_t* indices,
                             const CudaLaunch& launch) {
  const int64_t total = p.output_numel();
  if (total == 0) return;
  const PoolGeometry g = geometry(p);
  cuda::DeviceGuard guard(launch.device);
  max_pool2d_forward_kernel<T><<<cuda::blocks_for(total), cuda::kThreads, 0, cuda::stream_of(launch)>>>(
      g, total, input, output, indices);
  cuda::check_launch("max_pool2d_forward_cuda");
}

template <typename T>
void max_pool2d_backward_cuda(const Pool2dParams& p, const T* grad_output, const int64_t* indices,
                              T* grad_input, const CudaLaunch& launch) {
  const int64_t total = p.input_numel();
  if (total == 0) return;
  const PoolGeometry g = geometry(p);
  cuda::DeviceGuard guard(launch.device);
  max_pool2d_backward_kernel<T><<<cuda::blocks_for(total), cuda::kThreads, 0, cuda::stream_of(launch)>>>(
      g, total, grad_output, indices, grad_input);
  cuda::check_launch("max_pool2d_backward_cuda");
}

template void max_pool2d_forward_cuda<float>(const Pool2dParams&, const float*, float*, int64_t*, const CudaLaunch&);
template void max_pool2d_forward_cuda<double>(const Pool2dParams&, const double*, double*, int64_t*,
                                              const CudaLaunch&);
template void max_pool2d_backward_cuda<float>(const Pool2dParams&, const float*, const int64_t*, float*,
                                              const CudaLaunch&);
template void max_pool2d_backward_cuda<double>(const Pool2dParams&, const double*, const int64_t*, double*,
                                               const CudaLaunch&);

}  // namespace convx
