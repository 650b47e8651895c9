#include "convx/max_pool2d.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace convx {
namespace {

// The taps of one window along one axis are start, start+d, ..., start+(k-1)*d.
// first = the first tap inside the input (validation guarantees one exists), end =
// one past the last position the window reaches, clipped to the input. Closed
// forms: kernel, padding and dilation may be near 2**62, so no stepping loops and
// no unchecked start + span.
inline void window_taps(int64_t start, int64_t kernel, int64_t dilation, int64_t size, int64_t& first,
                        int64_t& end) {
  const int64_t span = (kernel - 1) * dilation + 1;  // validated to fit
  end = (start > size - span) ? size : start + span;
  first = start;
  if (start < 0) {
    const int64_t gap = -start;
    first = start + (gap / dilation + (gap % dilation != 0)) * dilation;
  }
}

}  // namespace

template <typename T>
void max_pool2d_forward_cpu(const Pool2dParams& p, const T* input, T* output, int64_t* indices) {
  const int64_t OH = p.out_h(), OW = p.out_w();
  const int64_t planes = p.N * p.C;
  // Below this many window taps the thread team costs more than it saves.
  const double taps = double(planes) * double(OH) * double(OW) * double(p.kernel_h) * double(p.kernel_w);
#pragma omp parallel for schedule(static) if (taps > 65536.0)
  for (int64_t plane = 0; plane < planes; ++plane) {
    const T* in = input + plane * p.H * p.W;
    T* out = output + plane * OH * OW;
    int64_t* idx = indices + plane * OH * OW;
    for (int64_t oh = 0; oh < OH; ++oh) {
      // Window rows h0, h0+d, ... below h_end; skip the taps that land in padding.
      int64_t h0, h_end;
      window_taps(oh * p.stride_h - p.pad_h, p.kernel_h, p.dilation_h, p.H, h0, h_end);
      for (int64_t ow = 0; ow < OW; ++ow) {
        int64_t w0, w_end;
        window_taps(ow * p.stride_w - p.pad_w, p.kernel_w, p.dilation_w, p.W, w0, w_end);
        // Validation guarantees (h0, w0) is inside the plane, so an all -inf
        // window still reports a real position.
        int64_t best_index = h0 * p.W + w0;
        T best = -std::numeric_limits<T>::infinity();
        // Count the taps instead of stepping h past h_end: with a huge dilation
        // the step beyond the last tap would overflow.
        const int64_t rows = h_end > h0 ? (h_end - h0 - 1) / p.dilation_h + 1 : 0;
        const int64_t cols = w_end > w0 ? (w_end - w0 - 1) / p.dilation_w + 1 : 0;
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = 0; j < cols; ++j) {
            const int64_t h = h0 + i * p.dilation_h, w = w0 + j * p.dilation_w;
            const T v = in[h * p.W + w];
            if (v > best || std::isnan(v)) {
              best = v;
              best_index = h * p.W + w;
            }
          }
        out[oh * OW + ow] = best;
        idx[oh * OW + ow] = best_index;
      }
    }
  }
}

template <typename T>
bool max_pool2d_backward_cpu(const Pool2dParams& p, const T* grad_output, const int64_t* indices,
                             T* grad_input) {
  const int64_t out_plane = p.out_h() * p.out_w();
  const int64_t in_plane = p.H * p.W;
  const int64_t planes = p.N * p.C;
  // Indices come from the caller: check them all before writing anything.
  bool all_valid = true;
  const bool parallel = double(planes) * double(out_plane) > 65536.0;
#pragma omp parallel for schedule(static) reduction(&& : all_valid) if (parallel)
  for (int64_t i = 0; i < planes * out_plane; ++i) all_valid = all_valid && indices[i] >= 0 && indices[i] < in_plane;
  if (!all_valid) return false;
  // One thread per plane: overlapping windows add into the same input element in
  // a fixed order, so the result is bitwise repeatable without atomics.
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t plane = 0; plane < planes; ++plane) {
    T* gin = grad_input + plane * in_plane;
    const T* gout = grad_output + plane * out_plane;
    const int64_t* idx = indices + plane * out_plane;
    std::fill(gin, gin + in_plane, T(0));
    for (int64_t o = 0; o < out_plane; ++o) gin[idx[o]] += gout[o];
  }
  return true;
}

template void max_pool2d_forward_cpu<float>(const Pool2dParams&, const float*, float*, int64_t*);
template void max_pool2d_forward_cpu<double>(const Pool2dParams&, const double*, double*, int64_t*);
template bool max_pool2d_backward_cpu<float>(const Pool2dParams&, const float*, const int64_t*, float*);
template bool max_pool2d_backward_cpu<double>(const Pool2dParams&, const double*, const int64_t*, double*);

}  // namespace convx
