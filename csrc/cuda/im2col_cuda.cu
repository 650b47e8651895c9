// im2col / col2im on CUDA devices, batched over N images.
#include "convx/im2col_cuda.h"

#include "cuda_utils.cuh"

namespace convx {
namespace {

using cuda::IndexDivider;

struct ColGeometry {
  int64_t C, H, W, OH, OW;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w;
  int64_t rows, L;  // column matrix: rows = C*kh*kw, L = OH*OW
  IndexDivider div_L, div_rows, div_ow, div_kw, div_kh, div_w, div_h, div_c;
};

ColGeometry geometry(const Im2colParams& p) {
  ColGeometry g;
  g.C = p.C; g.H = p.H; g.W = p.W; g.OH = p.out_h(); g.OW = p.out_w();
  g.kernel_h = p.kernel_h; g.kernel_w = p.kernel_w;
  g.stride_h = p.stride_h; g.stride_w = p.stride_w;
  g.pad_top = p.pad_top; g.pad_left = p.pad_left;
  g.dilation_h = p.dilation_h; g.dilation_w = p.dilation_w;
  g.rows = p.col_rows(); g.L = g.OH * g.OW;
  // C, H or W may be 0 for an empty image: divide by 1 then (nothing is launched).
  auto divider = [](int64_t d) { return IndexDivider(d < 1 ? 1 : d); };
  g.div_L = divider(g.L); g.div_rows = divider(g.rows); g.div_ow = divider(g.OW);
  g.div_kw = divider(g.kernel_w); g.div_kh = divider(g.kernel_h);
  g.div_w = divider(g.W); g.div_h = divider(g.H); g.div_c = divider(g.C);
  return g;
}

// Thread mapping: one thread per column entry e = (n*rows + row)*L + l, grid-stride
// in int64; consecutive threads take consecutive l (= consecutive ow), so reads
// along an input row and writes along a column row are coalesced. Each entry is
// written by exactly one thread.
template <typename T>
__global__ void im2col_kernel(ColGeometry g, int64_t total, const T* __restrict__ image, T* __restrict__ col) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest, l, n, row, oh, ow, c, i, j;
    g.div_L.divmod(e, rest, l);
    g.div_rows.divmod(rest, n, row);
    g.div_ow.divmod(l, oh, ow);
    g.div_kw.divmod(row, rest, j);
    g.div_kh.divmod(rest, c, i);
    const int64_t h = oh * g.stride_h - g.pad_top + i * g.dilation_h;
    const int64_t w = ow * g.stride_w - g.pad_left + j * g.dilation_w;
    T v = T(0);
    if (h >= 0 && h < g.H && w >= 0 && w < g.W) v = image[((n * g.C + c) * g.H + h) * g.W + w];
    col[e] = v;
  }
}

// Range [lo, hi] of block positions o along one axis whose tap i = (x + pad -
// o*stride) / dilation could land on x, clipped to [0, out): o*stride - pad <= x <=
// o*stride - pad + span - 1. Whether it really is a tap (divisible by the
// dilation) is checked by the caller.
__device__ __forceinline__ void blocks_containing(int64_t x, int64_t pad, int64_t span, int64_t stride,
                                                  int64_t out, int64_t& lo, int64_t& hi) {
  const int64_t a = x + pad - span + 1;
  lo = a <= 0 ? 0 : a / stride + (a % stride != 0);
  hi = (x + pad) / stride;
  if (hi > out - 1) hi = out - 1;
}

// Thread mapping: one thread per image element x = ((n*C + c)*H + h)*W + w,
// grid-stride in int64. It sums the column entries copied from (h, w): blocks
// oh from high to low (that is, kernel row i from low to high) and, inside, ow
// from high to low (kernel column j low to high) -- the (i, j) order in which
// col2im_cpu adds rows, so the sums agree with it bitwise. Each image element is
// written by one thread only: no atomics. The loops visit at most
// min(out, span/stride + 1) positions per axis, never kernel_size many.
template <typename T>
__global__ void col2im_kernel(ColGeometry g, int64_t total, const T* __restrict__ col, T* __restrict__ image) {
  const int64_t span_h = (g.kernel_h - 1) * g.dilation_h + 1, span_w = (g.kernel_w - 1) * g.dilation_w + 1;
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < total; x += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest, w, h, n, c;
    g.div_w.divmod(x, rest, w);
    g.div_h.divmod(rest, rest, h);
    g.div_c.divmod(rest, n, c);
    int64_t oh_lo, oh_hi, ow_lo, ow_hi;
    blocks_containing(h, g.pad_top, span_h, g.stride_h, g.OH, oh_lo, oh_hi);
    blocks_containing(w, g.pad_left, span_w, g.stride_w, g.OW, ow_lo, ow_hi);
    const T* col_c = col + (n * g.rows + c * g.kernel_h * g.kernel_w) * g.L;
    T acc = T(0);
    for (int64_t oh = oh_hi; oh >= oh_lo; --oh) {
      const int64_t th = h + g.pad_top - oh * g.stride_h;  // = i * dilation_h
      if (th % g.dilation_h != 0) continue;
      const int64_t i = th / g.dilation_h;
      for (int64_t ow = ow_hi; ow >= ow_lo; --ow) {
        const int64_t tw = w + g.pad_left - ow * g.stride_w;
        if (tw % g.dilation_w != 0) continue;
        const int64_t j = tw / g.dilation_w;
        acc += col_c[(i * g.kernel_w + j) * g.L + oh * g.OW + ow];
      }
    }
    image[x] = acc;
  }
}

}  // namespace

template <typename T>
void im2col_cuda(const Im2colParams& p, int64_t N, const T* image, T* col, const CudaLaunch& launch) {
  const int64_t total = checked_product({N, p.col_rows(), p.col_cols()}, "column matrix size");
  if (total == 0) return;
  const ColGeometry g = geometry(p);
  cuda::DeviceGuard guard(launch.device);
  im2col_kernel<T><<<cuda::blocks_for(total), cuda::kThreads, 0, cuda::stream_of(launch)>>>(g, total, image, col);
  cuda::check_launch("im2col_cuda");
}

template <typename T>
void col2im_cuda(const Im2colParams& p, int64_t N, const T* col, T* image, const CudaLaunch& launch) {
  const int64_t total = checked_product({N, p.C, p.H, p.W}, "image size");
  if (total == 0) return;
  const ColGeometry g = geometry(p);
  cuda::DeviceGuard guard(launch.device);
  col2im_kernel<T><<<cuda::blocks_for(total), cuda::kThreads, 0, cuda::stream_of(launch)>>>(g, total, col, image);
  cuda::check_launch("col2im_cuda");
}

template void im2col_cuda<float>(const Im2colParams&, int64_t, const float*, float*, const CudaLaunch&);
template void im2col_cuda<double>(const Im2colParams&, int64_t, const double*, double*, const CudaLaunch&);
template void col2im_cuda<float>(const Im2colParams&, int64_t, const float*, float*, const CudaLaunch&);
template void col2im_cuda<double>(const Im2colParams&, int64_t, const double*, double*, const CudaLaunch&);

}  // namespace convx
