// conv2d for depthwise layers (one input channel per group, as in MobileNet's
// 3x3 layers): forward, backward-data and backward-weight. The readable
// reference is the direct kernels in conv2d_cpu.cpp.
//
// A depthwise filter is a few taps over one channel, so the GEMM forms have
// nothing to reduce: their M is the one or two filters of a group, below the
// 8-row micro-tile, and their reduction is the R*S taps. Here each (image,
// channel) plane is a short sum of shifted copies of itself instead:
//
// Pad the channel and split it into stride_h x stride_w phase planes (as in
// conv2d_shifted_cpu.cpp): phase (a, b) holds the padded pixels (i*sh + a,
// j*sw + b) as an Hq x Wq row-major array. Output (oh, ow) under tap (r, s)
// reads phase ((r*dh) % sh, (s*dw) % sw) at flat index q + shift(r, s), with
//   q = oh*Wq + ow                              the output's "wide" column
//   shift(r, s) = (r*dh / sh)*Wq + s*dw / sw.
// So every tap is one contiguous run of a phase plane, whatever the stride and
// dilation, and
//   forward          Y_wide[q] = sum over taps t of w[t] * phase_t[q + shift_t]
//   backward data    G_ph[p] = sum over the taps t of phase ph of
//                              w[t] * dY_wide[p - shift_t]   (a gather: no two
//                    taps write one element), then each pixel of dX read back
//                    from its phase
//   backward weight  dW[t] = sum over q of dY_wide[q] * phase_t[q + shift_t]
// with dY_wide zero in the dropped columns (ow >= OW) and around the plane.
// The sums run on whole vectors held in registers (taps_sum, taps_dots); a
// dropped column costs a few lanes (Wq - OW of every Wq: 2 of 58 for a padded
// 3x3 layer on 56x56).
//
// Products with zeros the true sums never form (padding, dropped columns) turn
// an infinite weight (backward-data) or pixel (backward-weight) into NaN where
// the true gradient has none: those two passes then return false, and the
// caller takes another algorithm.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "convx/conv2d.h"
#include "convx/not_finite.h"
#include "convx/simd.h"
#include "convx/workspace.h"

namespace convx {
namespace {

// One 64-byte vector: 16 floats or 8 doubles, a zmm register on AVX-512.
template <typename T>
struct DepthwiseVec;
template <>
struct DepthwiseVec<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct DepthwiseVec<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);
// taps_sum keeps 4 vectors of outputs in registers while it walks the taps:
// with two FMA pipes of 4 cycles' latency, fewer chains would stall them, and
// each FMA has its own load (every tap reads another run), so more would only
// lengthen the blocks every buffer is rounded up to.
constexpr int64_t kSumVectors = 4;
template <typename T>
constexpr int64_t kBlock = kSumVectors * kLanes<T>;

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

struct DepthwiseGeometry {
  int64_t sh, sw, phases;  // phases = sh * sw planes per channel
  int64_t Hq, Wq;          // one phase plane
  int64_t plane;           // Hq * Wq rounded up to 64 (a block of floats, two of doubles): planes lie back to back
  int64_t OH, OW;
  int64_t wide;    // OH * Wq wide columns
  int64_t margin;  // the largest shift: zeros before and after a wide dY plane
  std::vector<int64_t> tap_offset;  // tap t = r*S + s: phase * plane + shift
  std::vector<int64_t> tap_phase, tap_shift;
};

DepthwiseGeometry depthwise_geometry(const Conv2dParams& p) {
  DepthwiseGeometry g;
  g.sh = p.stride_h;
  g.sw = p.stride_w;
  g.phases = g.sh * g.sw;
  g.Hq = (p.H + p.pad_top + p.pad_bottom + g.sh - 1) / g.sh;
  g.Wq = (p.W + p.pad_left + p.pad_right + g.sw - 1) / g.sw;
  g.plane = round_up(g.Hq * g.Wq, 64);
  g.OH = p.out_h();
  g.OW = p.out_w();
  g.wide = g.OH * g.Wq;
  g.margin = 0;
  for (int64_t r = 0; r < p.R; ++r)
    for (int64_t s = 0; s < p.S; ++s) {
      const int64_t phase = ((r * p.dilation_h) % g.sh) * g.sw + (s * p.dilation_w) % g.sw;
      const int64_t shift = (r * p.dilation_h / g.sh) * g.Wq + s * p.dilation_w / g.sw;
      g.tap_phase.push_back(phase);
      g.tap_shift.push_back(shift);
      g.tap_offset.push_back(phase * g.plane + shift);
      g.margin = std::max(g.margin, shift);
    }
  return g;
}

// Elements of the phase planes of one channel, with room for the whole blocks
// that taps_sum and taps_dots read past a plane's last wide column (plane is a
// multiple of a block; the margin covers the largest shift).
template <typename T>
int64_t planes_size(const DepthwiseGeometry& g) {
  return g.phases * g.plane + round_up(g.margin, kBlock<T>) + kBlock<T>;
}

// Columns [j0, j1) of a phase row: row[j] = src[j * SW] (SW a constant for the
// strides that matter, 1 and 2, so that the copy vectorizes; 0: `stride`).
// Returns false if a copied value is not finite (checked only with CheckFinite:
// the forward and backward-data passes do not need it).
template <int SW, bool CheckFinite, typename T>
inline bool copy_phase_row(const T* __restrict src, int64_t stride, int64_t j0, int64_t j1, T* __restrict row) {
  const int64_t sw = SW > 0 ? SW : stride;
  unsigned any_not_finite = 0;
  for (int64_t j = j0; j < j1; ++j) {
    const T v = src[j * sw];
    row[j] = v;
    if (CheckFinite) any_not_finite |= not_finite(v);
  }
  return any_not_finite == 0;
}

// The image pixels of one channel (H x W) into its phase planes. Only those: the
// padding, the planes' rounding gaps and the slack after them are zeroed once
// per buffer (a new Scratch holds old values) and never written again, which on
// 14x14 planes halved the copy. With CheckFinite, returns false if a pixel is
// not finite.
template <bool CheckFinite, typename T>
CONVX_SIMD_CLONES CONVX_INLINE_COPIES bool copy_into_phase_planes(const Conv2dParams& p, const DepthwiseGeometry& g,
                                                                  const T* channel, T* planes) {
  bool finite = true;
  for (int64_t a = 0; a < g.sh; ++a)
    for (int64_t b = 0; b < g.sw; ++b) {
      T* dst = planes + (a * g.sw + b) * g.plane;
      // Columns j whose pixel x = j*sw + b - pad_left lies in the row: [j0, j1).
      const int64_t off = b - p.pad_left;
      const int64_t j0 = std::min(g.Wq, off >= 0 ? 0 : (-off + g.sw - 1) / g.sw);
      const int64_t j1 = p.W - 1 - off < 0 ? j0 : std::max(j0, std::min(g.Wq, (p.W - 1 - off) / g.sw + 1));
      // Rows i whose pixel h = i*sh + a - pad_top lies in the image.
      const int64_t i0 = std::max<int64_t>(0, (p.pad_top - a + g.sh - 1) / g.sh);
      for (int64_t i = i0, h = i0 * g.sh + a - p.pad_top; i < g.Hq && h < p.H; ++i, h += g.sh) {
        const T* src = channel + h * p.W + off;
        T* row = dst + i * g.Wq;
        if (g.sw == 1)
          finite &= copy_phase_row<1, CheckFinite>(src, 1, j0, j1, row);
        else if (g.sw == 2)
          finite &= copy_phase_row<2, CheckFinite>(src, 2, j0, j1, row);
        else
          finite &= copy_phase_row<0, CheckFinite>(src, g.sw, j0, j1, row);
      }
    }
  return finite;
}

// One OH x OW plane of dY laid out wide, OH rows of Wq from `margin` elements
// into a buffer of wide_dy_size: the gather of backward-data reads up to
// `margin` before the plane and a plane's worth of blocks after it, and the dot
// products of backward-weight run over the dropped columns (ow >= OW); all of
// those hold zeros, written once per buffer, as in copy_into_phase_planes.
template <typename T>
int64_t wide_dy_size(const DepthwiseGeometry& g) {
  return g.margin + round_up(std::max(g.wide, g.Hq * g.Wq), kBlock<T>) + kBlock<T>;
}

template <typename T>
CONVX_SIMD_CLONES CONVX_INLINE_COPIES void copy_into_wide_dy(const DepthwiseGeometry& g, const T* __restrict src,
                                                             T* __restrict dst) {
  T* d = dst + g.margin;
  for (int64_t oh = 0; oh < g.OH; ++oh)
    for (int64_t ow = 0; ow < g.OW; ++ow) d[oh * g.Wq + ow] = src[oh * g.OW + ow];
}

// A buffer of scratch with every element zero (see copy_into_phase_planes).
template <typename T>
struct ZeroedScratch {
  Scratch<T> buffer;
  explicit ZeroedScratch(int64_t n) : buffer(n) { std::fill(buffer.data(), buffer.data() + n, T(0)); }
  T* data() const { return buffer.data(); }
};

// The kept columns of each wide row, plus the bias, into an OH x OW plane.
template <typename T>
CONVX_SIMD_CLONES CONVX_INLINE_COPIES void copy_out_kept_columns(const DepthwiseGeometry& g,
                                                                 const T* __restrict wide, T bias,
                                                                 T* __restrict out) {
  for (int64_t oh = 0; oh < g.OH; ++oh)
    for (int64_t ow = 0; ow < g.OW; ++ow) out[oh * g.OW + ow] = wide[oh * g.Wq + ow] + bias;
}

// Each pixel (h, x) of an H x W plane from the phase planes: padded pixel
// (y, xp) = (h + pad_top, x + pad_left) is element (y / sh, xp / sw) of phase
// (y % sh, xp % sw) (copy_into_phase_planes' inverse). Per row, the pixels of
// one phase are every sw-th: no division per pixel (on a stride-2 layer's 28x28
// planes the divisions took half of the pass).
template <typename T>
CONVX_SIMD_CLONES CONVX_INLINE_COPIES void read_back_pixels(const Conv2dParams& p, const DepthwiseGeometry& g,
                                                            const T* __restrict planes, T* __restrict out) {
  for (int64_t h = 0; h < p.H; ++h) {
    const int64_t y = h + p.pad_top;
    const T* rows = planes + ((y % g.sh) * g.sw) * g.plane + (y / g.sh) * g.Wq;
    T* dst = out + h * p.W;
    if (g.sw == 1) {  // one phase per row: a plain copy
      const T* src = rows + p.pad_left;
      for (int64_t x = 0; x < p.W; ++x) dst[x] = src[x];
      continue;
    }
    for (int64_t x0 = 0; x0 < std::min(g.sw, p.W); ++x0) {
      const int64_t xp = x0 + p.pad_left;
      const T* src = rows + (xp % g.sw) * g.plane + xp / g.sw;
      for (int64_t x = x0, j = 0; x < p.W; x += g.sw, ++j) dst[x] = src[j];
    }
  }
}

// out[q] (+)= sum over taps t of w[t] * base[t][q], for q in [0, n) rounded up
// to whole blocks (the callers' buffers have room for them): kSumVectors
// vectors of outputs stay in registers while the taps go by, so each output is
// loaded and stored once, not once per tap.
template <typename T>
CONVX_SIMD_CLONES void taps_sum(int64_t taps, const T* const* base, const T* w, T* __restrict out, int64_t n,
                                bool accumulate) {
  typedef typename DepthwiseVec<T>::type V;
  constexpr int64_t L = kLanes<T>;
  for (int64_t q = 0; q < n; q += kBlock<T>) {
    V acc[kSumVectors];
#pragma GCC unroll 4
    for (int64_t u = 0; u < kSumVectors; ++u) {
      if (accumulate)
        std::memcpy(&acc[u], out + q + u * L, sizeof(V));
      else
        acc[u] = V{};
    }
    for (int64_t t = 0; t < taps; ++t) {
      const T wt = w[t];
      const T* b = base[t] + q;
#pragma GCC unroll 4
      for (int64_t u = 0; u < kSumVectors; ++u) {
        V x;
        std::memcpy(&x, b + u * L, sizeof(V));  // an unaligned load
        acc[u] += wt * x;
      }
    }
#pragma GCC unroll 4
    for (int64_t u = 0; u < kSumVectors; ++u) std::memcpy(out + q + u * L, &acc[u], sizeof(V));
  }
}

// sums[t] += sum over q in [0, n) rounded up to whole vectors of g[q] * base[t][q],
// for K taps at a time (a compile-time count, so that the K accumulators stay in
// registers): each vector of g is loaded once for all K taps.
template <typename T, int K>
CONVX_SIMD_CLONES void taps_dots_chunk(const T* const* base, const T* g, int64_t n, T* sums) {
  typedef typename DepthwiseVec<T>::type V;
  constexpr int64_t L = kLanes<T>;
  V acc[K];
#pragma GCC unroll 12
  for (int t = 0; t < K; ++t) acc[t] = V{};
  for (int64_t q = 0; q < n; q += L) {
    V gv;
    std::memcpy(&gv, g + q, sizeof(V));
#pragma GCC unroll 12
    for (int t = 0; t < K; ++t) {
      V x;
      std::memcpy(&x, base[t] + q, sizeof(V));
      acc[t] += gv * x;
    }
  }
  for (int t = 0; t < K; ++t) {
    T s = 0;
    for (int64_t l = 0; l < L; ++l) s += acc[t][l];
    sums[t] += s;
  }
}

// All taps, in chunks of 12, 8, 4, 2 and 1 (12 accumulators, a vector of g and
// one of the phase plane fill 14 of the 32 registers).
template <typename T>
void taps_dots(int64_t taps, const T* const* base, const T* g, int64_t n, T* sums) {
  int64_t t = 0;
  for (; taps - t >= 12; t += 12) taps_dots_chunk<T, 12>(base + t, g, n, sums + t);
  if (taps - t >= 8) taps_dots_chunk<T, 8>(base + t, g, n, sums + t), t += 8;
  if (taps - t >= 4) taps_dots_chunk<T, 4>(base + t, g, n, sums + t), t += 4;
  if (taps - t >= 2) taps_dots_chunk<T, 2>(base + t, g, n, sums + t), t += 2;
  if (taps - t >= 1) taps_dots_chunk<T, 1>(base + t, g, n, sums + t);
}

// Threads take whole planes when there are enough of them for every thread; a
// plane's sums are then computed exactly as on one thread.
bool share_planes_between_threads(int64_t jobs) {
  return omp_get_max_threads() > 1 && jobs >= omp_get_max_threads() && !omp_in_parallel();
}

}  // namespace

// Its planes are the shifted form's (one padded copy of the channel), sensible
// under the same conditions: padding that does not dominate them, and a stride no
// wider than the filter's reach (else planes would be built and never read).
bool conv2d_depthwise_applies(const Conv2dParams& p) {
  return p.channels_per_group() == 1 && conv2d_shifted_applies(p);
}

template <typename T>
void conv2d_forward_depthwise_cpu(const Conv2dParams& p, const T* input, const T* weight, const T* bias,
                                  T* output) {
  const DepthwiseGeometry g = depthwise_geometry(p);
  const int64_t taps = p.R * p.S, m = p.filters_per_group();
  const int64_t jobs = p.N * p.C;
  const auto run = [&](int64_t job, T* planes, T* wide, const T** base) {
    const int64_t n = job / p.C, c = job % p.C;
    copy_into_phase_planes<false>(p, g, input + job * p.H * p.W, planes);
    for (int64_t t = 0; t < taps; ++t) base[t] = planes + g.tap_offset[t];
    for (int64_t k = c * m; k < (c + 1) * m; ++k) {
      taps_sum(taps, base, weight + k * taps, wide, g.wide, false);
      copy_out_kept_columns(g, wide, bias ? bias[k] : T(0), output + (n * p.K + k) * g.OH * g.OW);
    }
  };
  const int64_t wide_size = round_up(g.wide, kBlock<T>);
  if (share_planes_between_threads(jobs)) {
#pragma omp parallel
    {
      ZeroedScratch<T> planes(planes_size<T>(g));
      Scratch<T> wide(wide_size);
      std::vector<const T*> base(taps);
#pragma omp for schedule(static)
      for (int64_t job = 0; job < jobs; ++job) run(job, planes.data(), wide.data(), base.data());
    }
    return;
  }
  ZeroedScratch<T> planes(planes_size<T>(g));
  Scratch<T> wide(wide_size);
  std::vector<const T*> base(taps);
  for (int64_t job = 0; job < jobs; ++job) run(job, planes.data(), wide.data(), base.data());
}

template <typename T>
bool conv2d_backward_data_depthwise_cpu(const Conv2dParams& p, const T* grad_output, const T* weight,
                                        T* grad_input) {
  const int64_t taps = p.R * p.S, m = p.filters_per_group();
  for (int64_t e = 0; e < p.K * taps; ++e)
    if (!std::isfinite(weight[e])) return false;
  const DepthwiseGeometry g = depthwise_geometry(p);
  // Per phase, its taps: where in dY_wide each reads (p - shift, relative to the
  // wide plane's start at margin) and which weight.
  std::vector<std::vector<int64_t>> phase_taps(g.phases);
  for (int64_t t = 0; t < taps; ++t) phase_taps[g.tap_phase[t]].push_back(t);
  const int64_t jobs = p.N * p.C;
  const auto run = [&](int64_t job, T* dy_wide, T* grad_planes, const T** base, T* w) {
    const int64_t n = job / p.C, c = job % p.C;
    for (int64_t k = c * m; k < (c + 1) * m; ++k) {
      copy_into_wide_dy(g, grad_output + (n * p.K + k) * g.OH * g.OW, dy_wide);
      for (int64_t ph = 0; ph < g.phases; ++ph) {
        const std::vector<int64_t>& ts = phase_taps[ph];
        for (size_t i = 0; i < ts.size(); ++i) {
          base[i] = dy_wide + g.margin - g.tap_shift[ts[i]];
          w[i] = weight[k * taps + ts[i]];
        }
        taps_sum(int64_t(ts.size()), base, w, grad_planes + ph * g.plane, g.Hq * g.Wq, k > c * m);
      }
    }
    read_back_pixels(p, g, grad_planes, grad_input + job * p.H * p.W);
  };
  const int64_t planes_elements = g.phases * g.plane;
  if (share_planes_between_threads(jobs)) {
#pragma omp parallel
    {
      ZeroedScratch<T> dy_wide(wide_dy_size<T>(g));
      Scratch<T> grad_planes(planes_elements);
      std::vector<const T*> base(taps);
      std::vector<T> w(taps);
#pragma omp for schedule(static)
      for (int64_t job = 0; job < jobs; ++job) run(job, dy_wide.data(), grad_planes.data(), base.data(), w.data());
    }
    return true;
  }
  ZeroedScratch<T> dy_wide(wide_dy_size<T>(g));
  Scratch<T> grad_planes(planes_elements);
  std::vector<const T*> base(taps);
  std::vector<T> w(taps);
  for (int64_t job = 0; job < jobs; ++job) run(job, dy_wide.data(), grad_planes.data(), base.data(), w.data());
  return true;
}

template <typename T>
bool conv2d_backward_weight_depthwise_cpu(const Conv2dParams& p, const T* grad_output, const T* input,
                                          T* grad_weight) {
  const DepthwiseGeometry g = depthwise_geometry(p);
  const int64_t taps = p.R * p.S, m = p.filters_per_group();
  // One job per channel, its images in order: each weight's sum has one order,
  // whatever the thread count.
  const int64_t jobs = p.C;
  const int64_t dots = round_up(g.wide, kLanes<T>);
  const auto run = [&](int64_t c, T* planes, T* dy_wide, const T** base) {
    bool finite = true;
    std::fill(grad_weight + c * m * taps, grad_weight + (c + 1) * m * taps, T(0));
    for (int64_t n = 0; n < p.N; ++n) {
      finite &= copy_into_phase_planes<true>(p, g, input + (n * p.C + c) * p.H * p.W, planes);
      for (int64_t t = 0; t < taps; ++t) base[t] = planes + g.tap_offset[t];
      for (int64_t k = c * m; k < (c + 1) * m; ++k) {
        copy_into_wide_dy(g, grad_output + (n * p.K + k) * g.OH * g.OW, dy_wide);
        taps_dots(taps, base, dy_wide + g.margin, dots, grad_weight + k * taps);
      }
    }
    return finite;
  };
  bool all_finite = true;
  if (share_planes_between_threads(jobs)) {
#pragma omp parallel reduction(&& : all_finite)
    {
      ZeroedScratch<T> planes(planes_size<T>(g)), dy_wide(wide_dy_size<T>(g));
      std::vector<const T*> base(taps);
#pragma omp for schedule(static)
      for (int64_t c = 0; c < jobs; ++c) all_finite = run(c, planes.data(), dy_wide.data(), base.data()) && all_finite;
    }
    return all_finite;
  }
  ZeroedScratch<T> planes(planes_size<T>(g)), dy_wide(wide_dy_size<T>(g));
  std::vector<const T*> base(taps);
  for (int64_t c = 0; c < jobs; ++c) all_finite = run(c, planes.data(), dy_wide.data(), base.data()) && all_finite;
  return all_finite;
}

#define CONVX_INSTANTIATE(T)                                                                              \
  template void conv2d_forward_depthwise_cpu<T>(const Conv2dParams&, const T*, const T*, const T*, T*); \
  template bool conv2d_backward_data_depthwise_cpu<T>(const Conv2dParams&, const T*, const T*, T*);    \
  template bool conv2d_backward_weight_depthwise_cpu<T>(const Conv2dParams&, const T*, const T*, T*);
CONVX_INSTANTIATE(float)
CONVX_INSTANTIATE(double)
#undef CONVX_INSTANTIATE

}  // namespace convx
