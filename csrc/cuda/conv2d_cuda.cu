// conv2d on CUDA devices: the direct kernels (the GPU-side reference), the
// implicit-GEMM passes built on gemm_cuda.cuh, the bias gradient, and the
// dispatcher. Layouts as on the CPU (conv2d_cpu.cpp): input N x C x H x W, weight
// K x Cg x R x S (Cg = C / groups), output N x K x OH x OW; filter k belongs to group
// k / Kg (Kg = K / groups) and reads input channels g*Cg .. g*Cg + Cg - 1.
#include "convx/conv2d_cuda.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "cuda_utils.cuh"
#include "gemm_cuda.cuh"

namespace convx {
namespace {

using cuda::GatherIndex;
using cuda::IndexDivider;
using cuda::kInvalid;

// The direct kernels sum in double, float32 included, like the CPU reference.
using ReferenceAccumulator = double;

// ---- shape summary passed to every kernel ---------------------------------------
struct ConvShape {
  int64_t N, C, H, W, K, R, S, OH, OW;
  int64_t Cg, Kg, groups;
  int64_t stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w;
  int64_t HW, OHOW, RS;
};

ConvShape shape_of(const Conv2dParams& p) {
  ConvShape s;
  s.N = p.N; s.C = p.C; s.H = p.H; s.W = p.W; s.K = p.K; s.R = p.R; s.S = p.S;
  s.OH = p.out_h(); s.OW = p.out_w();
  s.Cg = p.channels_per_group(); s.Kg = p.filters_per_group(); s.groups = p.groups;
  s.stride_h = p.stride_h; s.stride_w = p.stride_w; s.pad_top = p.pad_top; s.pad_left = p.pad_left;
  s.dilation_h = p.dilation_h; s.dilation_w = p.dilation_w;
  s.HW = p.H * p.W; s.OHOW = s.OH * s.OW; s.RS = p.R * p.S;
  return s;
}

IndexDivider divider(int64_t d) { return IndexDivider(d < 1 ? 1 : d); }

// ---- direct kernels ----------------------------------------------------------------
// Straight translations of the CPU reference loops (same loop order, double sums);
// each thread owns one element of the result, grid-stride over int64 indices.

// Thread per output element o = ((n*K + k)*OH + oh)*OW + ow; consecutive threads
// take consecutive ow (coalesced input reads, weight reads broadcast in a warp).
template <typename T>
__global__ void conv2d_forward_direct_kernel(ConvShape p, IndexDivider div_ow, IndexDivider div_oh,
                                             IndexDivider div_k, int64_t total, const T* __restrict__ input,
                                             const T* __restrict__ weight, const T* __restrict__ bias,
                                             T* __restrict__ output) {
  using Acc = ReferenceAccumulator;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total; o += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest, ow, oh, n, k;
    div_ow.divmod(o, rest, ow);
    div_oh.divmod(rest, rest, oh);
    div_k.divmod(rest, n, k);
    const int64_t g = k / p.Kg;
    Acc acc = bias ? Acc(bias[k]) : Acc(0);
    for (int64_t c = 0; c < p.Cg; ++c) {
      const T* in_plane = input + (n * p.C + g * p.Cg + c) * p.HW;
      const T* w = weight + (k * p.Cg + c) * p.RS;
      for (int64_t r = 0; r < p.R; ++r) {
        const int64_t h = oh * p.stride_h - p.pad_top + r * p.dilation_h;
        if (h < 0 || h >= p.H) continue;
        for (int64_t s = 0; s < p.S; ++s) {
          const int64_t x = ow * p.stride_w - p.pad_left + s * p.dilation_w;
          if (x < 0 || x >= p.W) continue;
          acc += Acc(in_plane[h * p.W + x]) * Acc(w[r * p.S + s]);
        }
      }
    }
    output[o] = T(acc);
  }
}

// Gather form: thread per input element i = ((n*C + ci)*H + h)*W + x collects every
// (output, tap) pair that read it.
template <typename T>
__global__ void conv2d_backward_data_direct_kernel(ConvShape p, IndexDivider div_w, IndexDivider div_h,
                                                   IndexDivider div_c, int64_t total,
                                                   const T* __restrict__ grad_output, const T* __restrict__ weight,
                                                   T* __restrict__ grad_input) {
  using Acc = ReferenceAccumulator;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest, x, h, n, ci;
    div_w.divmod(i, rest, x);
    div_h.divmod(rest, rest, h);
    div_c.divmod(rest, n, ci);
    const int64_t g = ci / p.Cg, c = ci % p.Cg;
    Acc acc = 0;
    for (int64_t k = g * p.Kg; k < (g + 1) * p.Kg; ++k) {
      const T* gout_plane = grad_output + (n * p.K + k) * p.OHOW;
      const T* w = weight + (k * p.Cg + c) * p.RS;
      for (int64_t r = 0; r < p.R; ++r) {
        const int64_t th = h + p.pad_top - r * p.dilation_h;
        if (th < 0 || th % p.stride_h != 0) continue;
        const int64_t oh = th / p.stride_h;
        if (oh >= p.OH) continue;
        for (int64_t s = 0; s < p.S; ++s) {
          const int64_t tw = x + p.pad_left - s * p.dilation_w;
          if (tw < 0 || tw % p.stride_w != 0) continue;
          const int64_t ow = tw / p.stride_w;
          if (ow >= p.OW) continue;
          acc += Acc(gout_plane[oh * p.OW + ow]) * Acc(w[r * p.S + s]);
        }
      }
    }
    grad_input[i] = T(acc);
  }
}

// Thread per weight element e = ((k*Cg + c)*R + r)*S + s, reducing over n, oh, ow.
template <typename T>
__global__ void conv2d_backward_weight_direct_kernel(ConvShape p, IndexDivider div_s, IndexDivider div_r,
                                                     IndexDivider div_c, int64_t total,
                                                     const T* __restrict__ grad_output, const T* __restrict__ input,
                                                     T* __restrict__ grad_weight) {
  using Acc = ReferenceAccumulator;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest, s, r, k, c;
    div_s.divmod(e, rest, s);
    div_r.divmod(rest, rest, r);
    div_c.divmod(rest, k, c);
    const int64_t ci = (k / p.Kg) * p.Cg + c;
    Acc acc = 0;
    for (int64_t n = 0; n < p.N; ++n) {
      const T* gout_plane = grad_output + (n * p.K + k) * p.OHOW;
      const T* in_plane = input + (n * p.C + ci) * p.HW;
      for (int64_t oh = 0; oh < p.OH; ++oh) {
        const int64_t h = oh * p.stride_h - p.pad_top + r * p.dilation_h;
        if (h < 0 || h >= p.H) continue;
        for (int64_t ow = 0; ow < p.OW; ++ow) {
          const int64_t x = ow * p.stride_w - p.pad_left + s * p.dilation_w;
          if (x < 0 || x >= p.W) continue;
          acc += Acc(gout_plane[oh * p.OW + ow]) * Acc(in_plane[h * p.W + x]);
        }
      }
    }
    grad_weight[e] = T(acc);
  }
}

// ---- bias gradient -------------------------------------------------------------------
// One block per filter k (grid-stride over k). Thread t sums the flat positions
// t, t + 256, ... of the N x OHOW slab of filter k, stepping (n, pix) without a
// division per element, then the block adds the 256 partial sums in a fixed tree.
// Every order is fixed: deterministic, no atomics.
constexpr int kBiasThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kBiasThreads)
conv2d_backward_bias_kernel(int64_t N, int64_t K, int64_t plane, const T* __restrict__ grad_output,
                            T* __restrict__ grad_bias) {
  using Acc = ReferenceAccumulator;
  __shared__ Acc partial[kBiasThreads];
  const int t = threadIdx.x;
  const int64_t step_n = kBiasThreads / plane, step_pix = kBiasThreads % plane;
  for (int64_t k = blockIdx.x; k < K; k += gridDim.x) {
    Acc acc = 0;
    int64_t n = t / plane, pix = t % plane;
    while (n < N) {
      acc += Acc(grad_output[(n * K + k) * plane + pix]);
      pix += step_pix;
      n += step_n;
      if (pix >= plane) {
        pix -= plane;
        ++n;
      }
    }
    partial[t] = acc;
    __syncthreads();
    for (int half = kBiasThreads / 2; half > 0; half /= 2) {
      if (t < half) partial[t] += partial[t + half];
      __syncthreads();
    }
    // Thread 0 reads partial[0] before it writes it again in the next k; the others
    // write only partial[t != 0] before the next barrier: no race.
    if (t == 0) grad_bias[k] = T(partial[0]);
  }
}

// ---- split-K reduction ----------------------------------------------------------------
// grad_weight[i] = sum over splits s (in order 0, 1, ...) of workspace[s][i]: the
// fixed-order second pass that keeps the split backward-weight pass deterministic.
template <typename T>
__global__ void sum_splits_kernel(int64_t count, int64_t splits, const T* __restrict__ workspace,
                                  T* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    T acc = workspace[i];
    for (int64_t s = 1; s < splits; ++s) acc += workspace[s * count + i];
    out[i] = acc;
  }
}

// ---- implicit-GEMM problems (see gemm_cuda.cuh for the interface) --------------------
// The forward and backward-weight B operands are the same gather from the input
// image: input[n, ci, oh*sh - pt + r*dh, ow*sw - pl + s*dw], split into a "pixel"
// part (n, oh, ow) and a "tap" part (ci, r, s) whose offsets and coordinates add.
struct ImageGather {
  int64_t C, W, HW;
  int32_t H32, W32;
  int64_t stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w;

  __device__ __forceinline__ GatherIndex pixel(int64_t n, int64_t oh, int64_t ow, bool valid) const {
    if (!valid) return {0, kInvalid, kInvalid};
    const int64_t h0 = oh * stride_h - pad_top, w0 = ow * stride_w - pad_left;
    return {n * C * HW + h0 * W + w0, int32_t(h0), int32_t(w0)};
  }
  __device__ __forceinline__ GatherIndex tap(int64_t ci, int64_t r, int64_t s, bool valid) const {
    if (!valid) return {0, kInvalid, kInvalid};
    const int64_t dh = r * dilation_h, dw = s * dilation_w;
    return {ci * HW + dh * W + dw, int32_t(dh), int32_t(dw)};
  }
  template <typename T>
  __device__ __forceinline__ T load(const T* __restrict__ image, const GatherIndex& a, const GatherIndex& b) const {
    const int32_t h = a.h + b.h, w = a.w + b.w;  // both in (-2**31, 2**30): no overflow
    return (uint32_t(h) < uint32_t(H32) && uint32_t(w) < uint32_t(W32)) ? image[a.off + b.off] : T(0);
  }
};

ImageGather image_gather(const ConvShape& s) {
  return {s.C, s.W, s.HW, int32_t(s.H), int32_t(s.W), s.stride_h, s.stride_w, s.pad_top, s.pad_left,
          s.dilation_h, s.dilation_w};
}

// Forward, per group: M = Kg filters, columns j = (n, oh, ow), reduction k = (c, r, s).
//   A[m][k] = weight[g*Kg + m][k]     B[k][j] = input gather     C = output[n][g*Kg + m][oh, ow]
template <typename T>
struct ForwardProblem {
  static constexpr bool kBKFast = false;  // consecutive j = consecutive ow: contiguous
  const T* a;
  const T* b;
  T* c;
  const T* bias;
  int64_t K, Kg, Cg, Kred, OHOW;
  ImageGather img;
  IndexDivider div_RS, div_S, div_OHOW, div_OW;

  __device__ __forceinline__ int64_t a_m_off(int64_t g, int64_t m) const { return (g * Kg + m) * Kred; }
  __device__ __forceinline__ int64_t a_k_off(int64_t k) const { return k; }
  __device__ __forceinline__ GatherIndex b_row(int64_t g, int64_t k, bool valid) const {
    int64_t c, rs, r, s;
    div_RS.divmod(valid ? k : 0, c, rs);
    div_S.divmod(rs, r, s);
    return img.tap(g * Cg + c, r, s, valid);
  }
  __device__ __forceinline__ GatherIndex b_col(int64_t, int64_t j, bool valid) const {
    int64_t n, pix, oh, ow;
    div_OHOW.divmod(valid ? j : 0, n, pix);
    div_OW.divmod(pix, oh, ow);
    return img.pixel(n, oh, ow, valid);
  }
  __device__ __forceinline__ T load_b(const GatherIndex& row, const GatherIndex& col) const {
    return img.load(b, row, col);
  }
  __device__ __forceinline__ int64_t c_m_off(int64_t g, int64_t m, int64_t) const { return (g * Kg + m) * OHOW; }
  __device__ __forceinline__ int64_t c_col_off(int64_t j) const {
    int64_t n, pix;
    div_OHOW.divmod(j, n, pix);
    return n * K * OHOW + pix;
  }
  __device__ __forceinline__ T epilogue(int64_t g, int64_t m, T acc) const {
    return bias ? acc + bias[g * Kg + m] : acc;
  }
};

// Backward data, per group: M = Cg input channels, columns j = (n, h, w) of the
// input, reduction k = (filter kf in the group, r, s). The transposed problem
// in gather form: input pixel (h, w) receives grad_output[n, g*Kg + kf, oh, ow]
// * weight[g*Kg + kf, c, r, s] for h = oh*sh - pt + r*dh, i.e.
// oh = (h + pt - r*dh) / sh when that divides evenly and lands in [0, OH).
template <typename T>
struct BackwardDataProblem {
  static constexpr bool kBKFast = false;  // consecutive j = consecutive w
  const T* a;  // weight
  const T* b;  // grad_output
  T* c;        // grad_input
  int64_t C, K, Kg, Cg, RS, HW, OHOW, OW;
  int32_t OH32, OW32, stride_h, stride_w;
  int64_t pad_top, pad_left, dilation_h, dilation_w;
  IndexDivider div_RS, div_S, div_HW, div_W;

  __device__ __forceinline__ int64_t a_m_off(int64_t g, int64_t m) const { return (g * Kg * Cg + m) * RS; }
  __device__ __forceinline__ int64_t a_k_off(int64_t k) const {
    int64_t kf, rs;
    div_RS.divmod(k, kf, rs);
    return kf * Cg * RS + rs;
  }
  __device__ __forceinline__ GatherIndex b_row(int64_t g, int64_t k, bool valid) const {
    if (!valid) return {0, kInvalid, kInvalid};
    int64_t kf, rs, r, s;
    div_RS.divmod(k, kf, rs);
    div_S.divmod(rs, r, s);
    return {(g * Kg + kf) * OHOW, int32_t(pad_top - r * dilation_h), int32_t(pad_left - s * dilation_w)};
  }
  __device__ __forceinline__ GatherIndex b_col(int64_t, int64_t j, bool valid) const {
    if (!valid) return {0, kInvalid, kInvalid};
    int64_t n, hw, h, w;
    div_HW.divmod(j, n, hw);
    div_W.divmod(hw, h, w);
    return {n * K * OHOW, int32_t(h), int32_t(w)};
  }
  __device__ __forceinline__ T load_b(const GatherIndex& row, const GatherIndex& col) const {
    int32_t oh = row.h + col.h, ow = row.w + col.w;  // = oh*sh, ow*sw if a tap; in (-2**31, 2**30)
    if (oh < 0 || ow < 0) return T(0);
    if (stride_h != 1) {
      if (oh % stride_h != 0) return T(0);
      oh /= stride_h;
    }
    if (stride_w != 1) {
      if (ow % stride_w != 0) return T(0);
      ow /= stride_w;
    }
    if (oh >= OH32 || ow >= OW32) return T(0);
    return b[row.off + col.off + int64_t(oh) * OW + ow];
  }
  __device__ __forceinline__ int64_t c_m_off(int64_t g, int64_t m, int64_t) const { return (g * Cg + m) * HW; }
  __device__ __forceinline__ int64_t c_col_off(int64_t j) const {
    int64_t n, hw;
    div_HW.divmod(j, n, hw);
    return n * C * HW + hw;
  }
  __device__ __forceinline__ T epilogue(int64_t, int64_t, T acc) const { return acc; }
};

// Backward weight, per group: M = Kg filters, columns j = (c, r, s), reduction
// k = (n, oh, ow) over N*OH*OW, split into `splits` fixed chunks.
//   A[m][k] = grad_output[n][g*Kg + m][oh, ow]     B[k][j] = input gather
//   C = grad_weight (one split) or workspace[split] (several, summed afterwards).
template <typename T>
struct BackwardWeightProblem {
  static constexpr bool kBKFast = true;  // consecutive k = consecutive ow: contiguous
  const T* a;  // grad_output
  const T* b;  // input
  T* c;        // grad_weight or workspace
  int64_t K, Kg, Cg, Ncols, OHOW, groups;
  ImageGather img;
  IndexDivider div_OHOW, div_OW, div_RS, div_S;

  __device__ __forceinline__ int64_t a_m_off(int64_t g, int64_t m) const { return (g * Kg + m) * OHOW; }
  __device__ __forceinline__ int64_t a_k_off(int64_t k) const {
    int64_t n, pix;
    div_OHOW.divmod(k, n, pix);
    return n * K * OHOW + pix;
  }
  __device__ __forceinline__ GatherIndex b_row(int64_t, int64_t k, bool valid) const {
    int64_t n, pix, oh, ow;
    div_OHOW.divmod(valid ? k : 0, n, pix);
    div_OW.divmod(pix, oh, ow);
    return img.pixel(n, oh, ow, valid);
  }
  __device__ __forceinline__ GatherIndex b_col(int64_t g, int64_t j, bool valid) const {
    int64_t c, rs, r, s;
    div_RS.divmod(valid ? j : 0, c, rs);
    div_S.divmod(rs, r, s);
    return img.tap(g * Cg + c, r, s, valid);
  }
  __device__ __forceinline__ T load_b(const GatherIndex& row, const GatherIndex& col) const {
    return img.load(b, row, col);
  }
  __device__ __forceinline__ int64_t c_m_off(int64_t g, int64_t m, int64_t split) const {
    return ((split * groups + g) * Kg + m) * Ncols;
  }
  __device__ __forceinline__ int64_t c_col_off(int64_t j) const { return j; }
  __device__ __forceinline__ T epilogue(int64_t, int64_t, T acc) const { return acc; }
};

// ---- tile shapes, support and planning ---------------------------------------------------
enum class TileShape { Small64, Large128 };

// 128 x 128 tiles (float only: 64 double accumulators per thread would spill)
// when both GEMM sides fill them and there are enough tiles to occupy every SM;
// otherwise 64 x 64 tiles, four times as many blocks.
TileShape tile_shape(int64_t element_size, int64_t M, int64_t Ncols, int64_t groups, int64_t splits,
                     int64_t sm_count) {
  if (element_size != 4 || M <= 64 || Ncols <= 64) return TileShape::Small64;
  const double tiles = double(groups) * double(splits) * double((M + 127) / 128) * double((Ncols + 127) / 128);
  return tiles >= double(std::max<int64_t>(sm_count, 1)) ? TileShape::Large128 : TileShape::Small64;
}
int tile_size(TileShape t) { return t == TileShape::Large128 ? 128 : 64; }

// The implicit GEMM keeps spatial coordinates in int32 (gemm_cuda.cuh): padded
// extents and strides must stay below 2**30. Larger shapes run the direct kernels.
constexpr int64_t kSpatialLimit = int64_t(1) << 30;
bool implicit_gemm_supported(const Conv2dParams& p) {
  return p.H + p.pad_top + p.pad_bottom < kSpatialLimit && p.W + p.pad_left + p.pad_right < kSpatialLimit &&
         p.stride_h < kSpatialLimit && p.stride_w < kSpatialLimit;
}

struct GemmDims {
  int64_t M, Ncols, Kred;
};
GemmDims gemm_dims(const Conv2dParams& p, Conv2dDirection direction) {
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group(), RS = p.R * p.S;
  switch (direction) {
    case Conv2dDirection::Forward: return {Kg, p.N * p.out_h() * p.out_w(), Cg * RS};
    case Conv2dDirection::BackwardData: return {Cg, p.N * p.H * p.W, Kg * RS};
    case Conv2dDirection::BackwardWeight: break;
  }
  return {Kg, Cg * RS, p.N * p.out_h() * p.out_w()};
}

// Backward weight reduces over N*OH*OW but has few output tiles: split the
// reduction until about two blocks per SM exist, keeping chunks of at least
// kMinKPerSplit so that the partial sums stay worth their workspace traffic.
constexpr int64_t kMinKPerSplit = 512;
constexpr int64_t kMaxSplits = 64;

}  // namespace

Conv2dCudaAlgo conv2d_cuda_algo_from_name(const std::string& name) {
  if (name == "auto") return Conv2dCudaAlgo::Auto;
  if (name == "direct") return Conv2dCudaAlgo::Direct;
  if (name == "implicit_gemm") return Conv2dCudaAlgo::ImplicitGemm;
  throw std::invalid_argument("algo for CUDA tensors must be one of 'auto', 'direct', 'implicit_gemm', got '" +
                              name + "'");
}

const char* conv2d_cuda_algo_name(Conv2dCudaAlgo algo) {
  switch (algo) {
    case Conv2dCudaAlgo::Auto: return "auto";
    case Conv2dCudaAlgo::Direct: return "direct";
    case Conv2dCudaAlgo::ImplicitGemm: return "implicit_gemm";
  }
  return "unknown";
}

Conv2dCudaPlan conv2d_cuda_plan(const Conv2dParams& p, Conv2dDirection direction, Conv2dCudaAlgo algo,
                                int64_t element_size, int64_t sm_count) {
  p.validate();
  if (element_size != 4 && element_size != 8)
    throw std::invalid_argument("element_size must be 4 or 8, got " + std::to_string(element_size));
  Conv2dCudaPlan plan;
  const bool supported = implicit_gemm_supported(p);
  if (algo == Conv2dCudaAlgo::Auto) {
    // Depthwise-like layers (one or two rows on the GEMM's M side) would leave a
    // 64-row tile nearly empty; the direct kernels do the same work without it.
    // Backward weight keeps the GEMM: its split reduction is what gives it
    // parallelism (the direct kernel has one thread per weight element).
    algo = Conv2dCudaAlgo::ImplicitGemm;
    if (!supported) algo = Conv2dCudaAlgo::Direct;
    else if (direction == Conv2dDirection::Forward && p.filters_per_group() <= 2) algo = Conv2dCudaAlgo::Direct;
    else if (direction == Conv2dDirection::BackwardData && p.channels_per_group() <= 2) algo = Conv2dCudaAlgo::Direct;
  } else if (algo == Conv2dCudaAlgo::ImplicitGemm && !supported) {
    throw std::invalid_argument(
        "algo='implicit_gemm' needs padded spatial sizes and strides below 2**30, got input " +
        pair_str(p.H, p.W) + " padded by " + pair_str(p.pad_top + p.pad_bottom, p.pad_left + p.pad_right) +
        " with stride " + pair_str(p.stride_h, p.stride_w) + "; use algo='direct'");
  }
  plan.algo = algo;
  if (algo == Conv2dCudaAlgo::ImplicitGemm && direction == Conv2dDirection::BackwardWeight) {
    const GemmDims d = gemm_dims(p, direction);
    const int t = tile_size(tile_shape(element_size, d.M, d.Ncols, p.groups, 1, sm_count));
    const double tiles = double(p.groups) * double((d.M + t - 1) / t) * double((d.Ncols + t - 1) / t);
    const double target = 2.0 * double(std::max<int64_t>(sm_count, 1));
    int64_t splits = tiles >= target ? 1 : int64_t(std::ceil(target / tiles));
    splits = std::min({splits, std::max<int64_t>(1, d.Kred / kMinKPerSplit), kMaxSplits});
    int64_t per_split = d.Kred / splits + (d.Kred % splits != 0);
    per_split = std::max<int64_t>(cuda::kGemmBK, (per_split + cuda::kGemmBK - 1) / cuda::kGemmBK * cuda::kGemmBK);
    plan.k_per_split = per_split;
    plan.splits = d.Kred > 0 ? d.Kred / per_split + (d.Kred % per_split != 0) : 1;  // no empty split
    if (plan.splits > 1)
      plan.workspace_bytes = checked_product({plan.splits, p.weight_numel(), element_size}, "workspace size");
  }
  return plan;
}

namespace {

template <typename T, class Problem, int BM, int BN>
void run_gemm(const Problem& prob, const GemmDims& d, int64_t groups, int64_t splits, int64_t k_per_split,
              cudaStream_t stream, const char* name) {
  cuda::GemmGrid grid;
  grid.M = d.M; grid.Ncols = d.Ncols; grid.Kred = d.Kred; grid.groups = groups;
  grid.mtiles = (d.M + BM - 1) / BM;
  grid.jtiles = (d.Ncols + BN - 1) / BN;
  grid.splits = splits;
  grid.k_per_split = k_per_split;
  grid.total_tiles = checked_product({groups, grid.mtiles, grid.jtiles, splits}, "number of GEMM tiles");
  if (grid.total_tiles == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>(grid.total_tiles, (int64_t(1) << 31) - 1));
  cuda::implicit_gemm_kernel<T, Problem, BM, BN><<<blocks, cuda::kGemmThreads, 0, stream>>>(prob, grid);
  cuda::check_launch(name);
}

template <typename T, class Problem>
void launch_gemm(const Problem& prob, const GemmDims& d, int64_t groups, int64_t splits, int64_t k_per_split,
                 int64_t sm_count, cudaStream_t stream, const char* name) {
  if constexpr (sizeof(T) == 4) {
    if (tile_shape(sizeof(T), d.M, d.Ncols, groups, splits, sm_count) == TileShape::Large128) {
      run_gemm<T, Problem, 128, 128>(prob, d, groups, splits, k_per_split, stream, name);
      return;
    }
  }
  run_gemm<T, Problem, 64, 64>(prob, d, groups, splits, k_per_split, stream, name);
}

// The forward and backward-data entry points size their tiles by the SM count
// too; they get it from the current device (cheap, cached by the runtime).
int64_t current_sm_count(int device) {
  int count = 0;
  cuda::check_cuda(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device),
                   "cudaDeviceGetAttribute(multiProcessorCount)");
  return count;
}

}  // namespace

template <typename T>
Conv2dCudaAlgo conv2d_forward_cuda(const Conv2dParams& p, const T* input, const T* weight, const T* bias,
                                   T* output, Conv2dCudaAlgo algo, const CudaLaunch& launch) {
  const Conv2dCudaPlan plan = conv2d_cuda_plan(p, Conv2dDirection::Forward, algo, sizeof(T), 1);
  const int64_t total = p.output_numel();
  if (total == 0) return plan.algo;
  const ConvShape s = shape_of(p);
  cuda::DeviceGuard guard(launch.device);
  const cudaStream_t stream = cuda::stream_of(launch);
  if (plan.algo == Conv2dCudaAlgo::Direct) {
    conv2d_forward_direct_kernel<T><<<cuda::blocks_for(total), cuda::kThreads, 0, stream>>>(
        s, divider(s.OW), divider(s.OH), divider(s.K), total, input, weight, bias, output);
    cuda::check_launch("conv2d_forward_cuda (direct)");
    return plan.algo;
  }
  ForwardProblem<T> prob{weight, input, output, bias, s.K, s.Kg, s.Cg, s.Cg * s.RS, s.OHOW, image_gather(s),
                         divider(s.RS), divider(s.S), divider(s.OHOW), divider(s.OW)};
  launch_gemm<T>(prob, gemm_dims(p, Conv2dDirection::Forward), s.groups, 1, std::max<int64_t>(s.Cg * s.RS, 1),
                 current_sm_count(launch.device), stream, "conv2d_forward_cuda (implicit_gemm)");
  return plan.algo;
}

template <typename T>
Conv2dCudaAlgo conv2d_backward_data_cuda(const Conv2dParams& p, const T* grad_output, const T* weight,
                                         T* grad_input, Conv2dCudaAlgo algo, const CudaLaunch& launch) {
  const Conv2dCudaPlan plan = conv2d_cuda_plan(p, Conv2dDirection::BackwardData, algo, sizeof(T), 1);
  const int64_t total = p.input_numel();
  if (total == 0) return plan.algo;
  const ConvShape s = shape_of(p);
  cuda::DeviceGuard guard(launch.device);
  const cudaStream_t stream = cuda::stream_of(launch);
  if (plan.algo == Conv2dCudaAlgo::Direct) {
    conv2d_backward_data_direct_kernel<T><<<cuda::blocks_for(total), cuda::kThreads, 0, stream>>>(
        s, divider(s.W), divider(s.H), divider(s.C), total, grad_output, weight, grad_input);
    cuda::check_launch("conv2d_backward_data_cuda (direct)");
    return plan.algo;
  }
  // K = 0 leaves an empty reduction: the GEMM then writes zeros, as it should.
  BackwardDataProblem<T> prob{weight, grad_output, grad_input, s.C, s.K, s.Kg, s.Cg, s.RS, s.HW, s.OHOW, s.OW,
                              int32_t(s.OH), int32_t(s.OW), int32_t(s.stride_h), int32_t(s.stride_w),
                              s.pad_top, s.pad_left, s.dilation_h, s.dilation_w,
                              divider(s.RS), divider(s.S), divider(s.HW), divider(s.W)};
  launch_gemm<T>(prob, gemm_dims(p, Conv2dDirection::BackwardData), s.groups, 1,
                 std::max<int64_t>(s.Kg * s.RS, 1), current_sm_count(launch.device), stream,
                 "conv2d_backward_data_cuda (implicit_gemm)");
  return plan.algo;
}

template <typename T>
Conv2dCudaAlgo conv2d_backward_weight_cuda(const Conv2dParams& p, const T* grad_output, const T* input,
                                           T* grad_weight, Conv2dCudaAlgo algo, void* workspace,
                                           int64_t workspace_bytes, int64_t sm_count, const CudaLaunch& launch) {
  const Conv2dCudaPlan plan = conv2d_cuda_plan(p, Conv2dDirection::BackwardWeight, algo, sizeof(T), sm_count);
  if (workspace_bytes < plan.workspace_bytes || (plan.workspace_bytes > 0 && workspace == nullptr))
    throw std::invalid_argument("workspace of " + std::to_string(workspace_bytes) + " bytes is smaller than the " +
                                std::to_string(plan.workspace_bytes) + " bytes this call needs");
  const int64_t total = p.weight_numel();
  if (total == 0) return plan.algo;
  const ConvShape s = shape_of(p);
  cuda::DeviceGuard guard(launch.device);
  const cudaStream_t stream = cuda::stream_of(launch);
  if (plan.algo == Conv2dCudaAlgo::Direct) {
    conv2d_backward_weight_direct_kernel<T><<<cuda::blocks_for(total), cuda::kThreads, 0, stream>>>(
        s, divider(s.S), divider(s.R), divider(s.Cg), total, grad_output, input, grad_weight);
    cuda::check_launch("conv2d_backward_weight_cuda (direct)");
    return plan.algo;
  }
  const GemmDims d = gemm_dims(p, Conv2dDirection::BackwardWeight);
  T* target = plan.splits > 1 ? static_cast<T*>(workspace) : grad_weight;
  BackwardWeightProblem<T> prob{grad_output, input, target, s.K, s.Kg, s.Cg, d.Ncols, s.OHOW, s.groups,
                                image_gather(s), divider(s.OHOW), divider(s.OW), divider(s.RS), divider(s.S)};
  launch_gemm<T>(prob, d, s.groups, plan.splits, plan.k_per_split, sm_count, stream,
                 "conv2d_backward_weight_cuda (implicit_gemm)");
  if (plan.splits > 1) {
    sum_splits_kernel<T><<<cuda::blocks_for(total), cuda::kThreads, 0, stream>>>(total, plan.splits, target,
                                                                                  grad_weight);
    cuda::check_launch("conv2d_backward_weight_cuda (sum of splits)");
  }
  return plan.algo;
}

template <typename T>
void conv2d_backward_bias_cuda(const Conv2dParams& p, const T* grad_output, T* grad_bias,
                               const CudaLaunch& launch) {
  p.validate();
  if (p.K == 0) return;
  cuda::DeviceGuard guard(launch.device);
  const int64_t plane = p.out_h() * p.out_w();
  const unsigned blocks = unsigned(std::min<int64_t>(p.K, cuda::kMaxBlocks));
  conv2d_backward_bias_kernel<T><<<blocks, kBiasThreads, 0, cuda::stream_of(launch)>>>(p.N, p.K, plane,
                                                                                       grad_output, grad_bias);
  cuda::check_launch("conv2d_backward_bias_cuda");
}

#define CONVX_INSTANTIATE(T)                                                                                   \
  template Conv2dCudaAlgo conv2d_forward_cuda<T>(const Conv2dParams&, const T*, const T*, const T*, T*,        \
                                                 Conv2dCudaAlgo, const CudaLaunch&);                           \
  template Conv2dCudaAlgo conv2d_backward_data_cuda<T>(const Conv2dParams&, const T*, const T*, T*,            \
                                                       Conv2dCudaAlgo, const CudaLaunch&);                     \
  template Conv2dCudaAlgo conv2d_backward_weight_cuda<T>(const Conv2dParams&, const T*, const T*, T*,          \
                                                         Conv2dCudaAlgo, void*, int64_t, int64_t,              \
                                                         const CudaLaunch&);                                   \
  template void conv2d_backward_bias_cuda<T>(const Conv2dParams&, const T*, T*, const CudaLaunch&);
CONVX_INSTANTIATE(float)
CONVX_INSTANTIATE(double)
#undef CONVX_INSTANTIATE

}  // namespace convx
