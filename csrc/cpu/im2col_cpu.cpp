#include "convx/im2col.h"

#include <omp.h>

#include "convx/simd.h"

#include <algorithm>
#include <cstring>

namespace convx {
namespace {

// Range [lo, hi) of output positions o whose input coordinate o*stride - pad + offset
// lies inside [0, size): the rest read padding. Lets the inner loops run branch-free.
inline void valid_range(int64_t size, int64_t out, int64_t stride, int64_t start_offset, int64_t& lo,
                        int64_t& hi) {
  // o*stride + start_offset >= 0  <=>  o >= ceil(-start_offset / stride), written
  // without the "+ stride - 1" that could overflow when padding and stride are huge.
  lo = 0;
  if (start_offset < 0) {
    const int64_t gap = -start_offset;  // <= padding, so no overflow
    lo = gap / stride + (gap % stride != 0);
  }
  // o*stride + start_offset <= size - 1  <=>  o <= floor((size - 1 - start_offset) / stride)
  int64_t last = size - 1 - start_offset;
  hi = last < 0 ? 0 : last / stride + 1;
  lo = std::min(lo, out);
  hi = std::max(lo, std::min(hi, out));
}

}  // namespace

// Columns l in [l0, l1) of one row of the column matrix (row = (c*kh + i)*kw + j)
// into dst_block[l - l0]: output positions (oh, ow) = (l / out_w, l % out_w),
// which cover whole output rows except possibly the first and the last.
// out_h and out_w come from the caller: computed once per call, not per row
// (with their overflow checks they were 7% of a small-image im2col).
template <typename T>
CONVX_SIMD_CLONES void im2col_row(const Im2colParams& p, int64_t out_h, int64_t out_w, const T* image, int64_t row,
                                  int64_t l0, int64_t l1, T* dst_block) {
  const int64_t oh_first = l0 / out_w, oh_last = (l1 - 1) / out_w;
  const int64_t j = row % p.kernel_w;
  const int64_t i = (row / p.kernel_w) % p.kernel_h;
  const int64_t c = row / (p.kernel_w * p.kernel_h);
  const T* plane = image + c * p.H * p.W;
  T* dst = dst_block - l0;  // dst[l] for l in [l0, l1)
  const int64_t h_offset = i * p.dilation_h - p.pad_top;
  const int64_t w_offset = j * p.dilation_w - p.pad_left;
  int64_t oh_lo, oh_hi, ow_lo, ow_hi;
  valid_range(p.H, out_h, p.stride_h, h_offset, oh_lo, oh_hi);
  valid_range(p.W, out_w, p.stride_w, w_offset, ow_lo, ow_hi);
  // Rows that are whole inside the block, read no padding and step by 1 are a
  // plain copy: with output rows of a few values (8 for LeNet's second layer) the
  // general path's clamps, fills and memcpy call cost more than the copy itself.
  const bool plain_rows = p.stride_w == 1 && ow_lo == 0 && ow_hi == out_w;
  for (int64_t oh = oh_first; oh <= oh_last; ++oh) {
    // This output row's part of the block: ow in [a, b).
    const int64_t a = oh == oh_first ? l0 - oh * out_w : 0;
    const int64_t b = oh == oh_last ? l1 - oh * out_w : out_w;
    T* d = dst + oh * out_w;
    if (oh < oh_lo || oh >= oh_hi) {  // the whole row reads padding
      std::fill(d + a, d + b, T(0));
      continue;
    }
    const T* src_row = plane + (oh * p.stride_h + h_offset) * p.W;
    if (plain_rows && a == 0 && b == out_w) {
      const T* __restrict from = src_row + w_offset;
      T* __restrict to = d;
      for (int64_t ow = 0; ow < out_w; ++ow) to[ow] = from[ow];
      continue;
    }
    const int64_t lo = std::clamp(ow_lo, a, b), hi = std::clamp(ow_hi, lo, b);
    std::fill(d + a, d + lo, T(0));
    if (p.stride_w == 1) {
      const T* __restrict from = src_row + w_offset;
      T* __restrict to = d;
      for (int64_t ow = lo; ow < hi; ++ow) to[ow] = from[ow];
    } else {
      for (int64_t ow = lo; ow < hi; ++ow) d[ow] = src_row[ow * p.stride_w + w_offset];
    }
    std::fill(d + hi, d + b, T(0));
  }
}

template <typename T>
void im2col_columns_cpu(const Im2colParams& p, const T* image, int64_t l0, int64_t l1, T* col, int64_t ld) {
  const int64_t rows = p.C * p.kernel_h * p.kernel_w;
  if (l1 <= l0) return;
  const int64_t out_h = p.out_h(), out_w = p.out_w();
#pragma omp parallel for schedule(static) if ((rows * (l1 - l0) > (1 << 18)) && !omp_in_parallel())
  for (int64_t row = 0; row < rows; ++row) im2col_row(p, out_h, out_w, image, row, l0, l1, col + row * ld);
}

template <typename T>
void im2col_cpu(const Im2colParams& p, const T* image, T* col) {
  const int64_t cols = p.out_h() * p.out_w();
  im2col_columns_cpu(p, image, 0, cols, col, cols);
}

// Adds the kh*kw rows of channel c, columns [l0, l1), onto its plane, in row order.
template <typename T>
CONVX_SIMD_CLONES void col2im_channel_add(const Im2colParams& p, const T* col, int64_t ld, int64_t l0, int64_t l1,
                                          int64_t c, T* plane) {
  const int64_t out_h = p.out_h(), out_w = p.out_w();
  const int64_t oh_first = l0 / out_w, oh_last = (l1 - 1) / out_w;
  for (int64_t i = 0; i < p.kernel_h; ++i)
    for (int64_t j = 0; j < p.kernel_w; ++j) {
      const T* src = col + ((c * p.kernel_h + i) * p.kernel_w + j) * ld - l0;  // src[l]
      const int64_t h_offset = i * p.dilation_h - p.pad_top;
      const int64_t w_offset = j * p.dilation_w - p.pad_left;
      int64_t oh_lo, oh_hi, ow_lo, ow_hi;
      valid_range(p.H, out_h, p.stride_h, h_offset, oh_lo, oh_hi);
      valid_range(p.W, out_w, p.stride_w, w_offset, ow_lo, ow_hi);
      for (int64_t oh = std::max(oh_first, oh_lo); oh <= oh_last && oh < oh_hi; ++oh) {
        const int64_t a = oh == oh_first ? l0 - oh * out_w : 0;
        const int64_t b = oh == oh_last ? l1 - oh * out_w : out_w;
        const int64_t lo = std::clamp(ow_lo, a, b), hi = std::clamp(ow_hi, lo, b);
        T* dst_row = plane + (oh * p.stride_h + h_offset) * p.W;
        const T* s = src + oh * out_w;
        if (p.stride_w == 1) {
          T* __restrict d = dst_row + w_offset;
          const T* __restrict from = s;
          for (int64_t ow = lo; ow < hi; ++ow) d[ow] += from[ow];
        } else {
          for (int64_t ow = lo; ow < hi; ++ow) dst_row[ow * p.stride_w + w_offset] += s[ow];
        }
      }
    }
}

template <typename T>
void col2im_columns_add_cpu(const Im2colParams& p, const T* col, int64_t ld, int64_t l0, int64_t l1, T* image) {
  if (l1 <= l0) return;
  // One thread owns a whole channel: its kh*kw rows are added in row order, so the
  // sum at each pixel has a fixed order and needs no atomics.
#pragma omp parallel for schedule(static) if ((p.C * p.kernel_h * p.kernel_w * (l1 - l0) > (1 << 18)) && !omp_in_parallel())
  for (int64_t c = 0; c < p.C; ++c) col2im_channel_add(p, col, ld, l0, l1, c, image + c * p.H * p.W);
}

template <typename T>
void col2im_cpu(const Im2colParams& p, const T* col, T* image) {
  const int64_t cols = p.out_h() * p.out_w();
  std::fill(image, image + p.C * p.H * p.W, T(0));
  col2im_columns_add_cpu(p, col, cols, 0, cols, image);
}

template void im2col_cpu<float>(const Im2colParams&, const float*, float*);
template void im2col_cpu<double>(const Im2colParams&, const double*, double*);
template void col2im_cpu<float>(const Im2colParams&, const float*, float*);
template void col2im_cpu<double>(const Im2colParams&, const double*, double*);
template void im2col_columns_cpu<float>(const Im2colParams&, const float*, int64_t, int64_t, float*, int64_t);
template void im2col_columns_cpu<double>(const Im2colParams&, const double*, int64_t, int64_t, double*, int64_t);
template void col2im_columns_add_cpu<float>(const Im2colParams&, const float*, int64_t, int64_t, int64_t, float*);
template void col2im_columns_add_cpu<double>(const Im2colParams&, const double*, int64_t, int64_t, int64_t,
                                             double*);

}  // namespace convx
