// max_pool2d on the CPU: the readable reference, a row-vectorized fast path for
// undilated windows (the common case), the dispatcher, and the backward scatter.
#include "convx/max_pool2d.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <type_traits>

#include "convx/cpu_info.h"
#define CONVX_POOL_AVX512 1
#else
#define CONVX_POOL_AVX512 0
#endif

#include "convx/simd.h"

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

// One output element by the sequential row-major scan that defines the semantics.
template <typename T, typename Index>
inline void pool_window(const Pool2dParams& p, const T* in, int64_t h0, int64_t h_end, int64_t ow, T* out,
                        Index* idx) {
  int64_t w0, w_end;
  window_taps(ow * p.stride_w - p.pad_w, p.kernel_w, p.dilation_w, p.W, w0, w_end);
  // Validation guarantees (h0, w0) is inside the plane, so an all -inf window
  // still reports a real position.
  int64_t best_index = h0 * p.W + w0;
  T best = -std::numeric_limits<T>::infinity();
  // Count the taps instead of stepping h past h_end: with a huge dilation the
  // step beyond the last tap would overflow.
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
  *out = best;
  *idx = Index(best_index);
}

// Undilated windows, output columns [ow_lo, ow_hi) whose windows lie wholly
// inside the row. The same row-major scan as pool_window, turned inside out:
// taps outermost, output columns innermost, so each step is one branch-free
// compare-and-select across the row of outputs, which the compiler vectorizes
// (a stride-2 window becomes an even/odd shuffle instead of a gather).
// SW > 0 fixes the stride at compile time; SW == 0 reads it from `stride`.
template <typename T, int SW, typename Index>
CONVX_SIMD_CLONES void pool_row_interior(const T* __restrict in, int64_t W, int64_t h0, int64_t rows,
                                         int64_t kw, int64_t stride, int64_t pad, int64_t ow_lo,
                                         int64_t ow_hi, T* __restrict out, Index* __restrict idx) {
  const int64_t sw = SW > 0 ? SW : stride;
  // The first tap seeds the maximum: the reference starts from -inf and takes
  // the first tap unless it is -inf, in which case it keeps its index anyway.
  const T* r0 = in + h0 * W;
  for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
    const int64_t w = ow * sw - pad;
    out[ow] = r0[w];
    idx[ow] = Index(h0 * W + w);
  }
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t base = (h0 + i) * W;
    const T* r = in + base;
    for (int64_t j = (i == 0 ? 1 : 0); j < kw; ++j)
      for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
        const int64_t w = ow * sw - pad + j;
        const T v = r[w];
        const bool take = (v > out[ow]) | (v != v);  // v != v: NaN always wins; | not ||: no branch
        out[ow] = take ? v : out[ow];
        idx[ow] = take ? Index(base + w) : idx[ow];
      }
  }
}

#if CONVX_POOL_AVX512
// Lane l of a vector of windows: the element at in + offset + l * sw, stride 1
// by one load, stride 2 as the even elements of two loads by one permute. With
// room false (a load would pass either end of the plane [in, in + plane_size))
// the elements outside the plane are not read and come back as zero: a masked
// load costs several plain ones here, so only there.
template <int SW>
__attribute__((target("avx512f"), always_inline)) inline __m512 load_lanes_avx512(
    const float* in, int64_t offset, int64_t plane_size, __m512i even, bool room) {
  static_assert(SW == 1 || SW == 2, "a vector of windows 1 or 2 columns apart");
  const float* at = in + offset;
  if (room) {
    if (SW == 1) return _mm512_loadu_ps(at);
    return _mm512_permutex2var_ps(_mm512_loadu_ps(at), even, _mm512_loadu_ps(at + 16));
  }
  // elements e in [lo, hi) of the 32 from `at` lie in the plane
  const int64_t lo = std::min<int64_t>(32, std::max<int64_t>(0, -offset));
  const int64_t hi = std::min<int64_t>(32, std::max<int64_t>(0, plane_size - offset));
  const uint64_t in_plane = ((uint64_t(1) << hi) - 1) & ~((uint64_t(1) << lo) - 1);
  const __m512 a = _mm512_maskz_loadu_ps(__mmask16(in_plane), at);
  if (SW == 1) return a;
  return _mm512_permutex2var_ps(a, even, _mm512_maskz_loadu_ps(__mmask16(in_plane >> 16), at + 16));
}

// Lane offsets of 16 windows whose corners are sw apart, lane * sw: as int32
// lanes for int32 indices, as two int64 halves for int64 ones.
struct LaneOffsets {
  __m512i i32, lo, hi;
};

__attribute__((target("avx512f"), always_inline)) inline LaneOffsets lane_offsets_avx512(int64_t sw) {
  LaneOffsets lane;
  lane.i32 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  lane.lo = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  lane.hi = _mm512_setr_epi64(8, 9, 10, 11, 12, 13, 14, 15);
  if (sw == 2) {
    lane.i32 = _mm512_add_epi32(lane.i32, lane.i32);
    lane.lo = _mm512_add_epi64(lane.lo, lane.lo);
    lane.hi = _mm512_add_epi64(lane.hi, lane.hi);
  }
  return lane;
}

// 16 int64 indices, as two halves of 8, to the lanes `lanes` of idx (all 16:
// plain stores, which cost less than masked ones here).
__attribute__((target("avx512f"), always_inline)) inline void store_int64_halves_avx512(int64_t* idx, __m512i lo,
                                                                                      __m512i hi, __mmask16 lanes) {
  if (lanes == 0xFFFF) {
    _mm512_storeu_si512(idx, lo);
    _mm512_storeu_si512(idx + 8, hi);
  } else {
    _mm512_mask_storeu_epi64(idx, __mmask8(lanes), lo);
    _mm512_mask_storeu_epi64(idx + 8, __mmask8(lanes >> 8), hi);
  }
}

// Flat indices held as int32 lanes, stored to the lanes `lanes` of idx.
template <typename Index>
__attribute__((target("avx512f"), always_inline)) inline void store_flat_indices_avx512(Index* idx, __m512i flat,
                                                                                      __mmask16 lanes) {
  if constexpr (std::is_same<Index, int32_t>::value) {
    if (lanes == 0xFFFF)
      _mm512_storeu_si512(idx, flat);
    else
      _mm512_mask_storeu_epi32(idx, lanes, flat);
  } else {
    store_int64_halves_avx512(idx, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(flat)),
                              _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(flat, 1)), lanes);
  }
}

// The flat indices corner + lane * sw + tap of 16 windows, tap = each winner's
// i*W + j from its window's corner. int64 indices are summed in int64: this
// serves planes past 2**31 elements too. int32 indices come only with planes
// under 2**31 elements (the binding checks), where every sum fits.
template <typename Index>
__attribute__((target("avx512f"), always_inline)) inline void store_window_indices_avx512(
    Index* idx, int64_t corner, const LaneOffsets& lane, __m512i tap, __mmask16 lanes) {
  if constexpr (std::is_same<Index, int32_t>::value) {
    const __m512i flat = _mm512_add_epi32(_mm512_add_epi32(_mm512_set1_epi32(int32_t(corner)), lane.i32), tap);
    store_flat_indices_avx512(idx, flat, lanes);
  } else {
    const __m512i base = _mm512_set1_epi64(corner);
    const __m512i lo =
        _mm512_add_epi64(_mm512_add_epi64(base, lane.lo), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(tap)));
    const __m512i hi =
        _mm512_add_epi64(_mm512_add_epi64(base, lane.hi), _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(tap, 1)));
    store_int64_halves_avx512(idx, lo, hi, lanes);
  }
}

// The maximum of 16 windows of rows x kw taps with corners at `corner`,
// corner + sw, ... (offsets in the plane) and each winner's tap, i*W + j from its
// corner (int32: the callers check kernel_h*W < 2**31). The first tap seeds the
// maximum, as in pool_row_interior. Loads are whole vectors unless one would
// pass the plane's end (see load_lanes_avx512).
// SW, the stride along the row, is a template argument so that each stride gets
// its own loop with no branch on it (a run-time stride cost ~5% here).
template <int SW>
__attribute__((target("avx512f"), always_inline)) inline __m512 windows_max_avx512(
    const float* in, int64_t plane_size, int64_t W, int64_t corner, int64_t rows, int64_t kw, __m512i even,
    __m512i& tap) {
  const bool room = corner + (rows - 1) * W + kw - 1 + 16 * SW <= plane_size;
  __m512 best = load_lanes_avx512<SW>(in, corner, plane_size, even, room);
  tap = _mm512_setzero_si512();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = (i == 0 ? 1 : 0); j < kw; ++j) {
      const __m512 v = load_lanes_avx512<SW>(in, corner + i * W + j, plane_size, even, room);
      const __mmask16 take =
          _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);  // NaN wins
      best = _mm512_mask_mov_ps(best, take, v);
      tap = _mm512_mask_mov_epi32(tap, take, _mm512_set1_epi32(int32_t(i * W + j)));
    }
  return best;
}

// float, stride 1 or 2, written with AVX-512 intrinsics: the auto-vectorized loop
// above only runs its vector body on rows longer than its strided over-read
// allows, so on a 56-wide row most outputs fell to its scalar remainder, which
// branches on every compare (and mispredicts half of them on random data).
// Lanes = 16 consecutive output columns; the last block overlaps the one before
// (recomputing an output is harmless). The running maximum and the winning tap
// stay in registers (windows_max_avx512). Returns the first column it did not
// handle.
template <typename Index>
__attribute__((target("avx512f"))) int64_t pool_row_avx512(const float* in, int64_t plane_size, int64_t W,
                                                           int64_t h0, int64_t rows, int64_t kw, int64_t sw,
                                                           int64_t pad, int64_t ow_lo, int64_t ow_hi, float* out,
                                                           Index* idx) {
  if ((sw != 1 && sw != 2) || ow_hi - ow_lo < 16) return ow_lo;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const LaneOffsets lane = lane_offsets_avx512(sw);
  for (int64_t block = ow_lo; block < ow_hi; block += 16) {
    const int64_t ow0 = std::min(block, ow_hi - 16);
    __m512i tap;
    const int64_t corner = h0 * W + ow0 * sw - pad;
    const __m512 best = sw == 2 ? windows_max_avx512<2>(in, plane_size, W, corner, rows, kw, even, tap)
                                : windows_max_avx512<1>(in, plane_size, W, corner, rows, kw, even, tap);
    _mm512_storeu_ps(out + ow0, best);
    store_window_indices_avx512(idx + ow0, corner, lane, tap, 0xFFFF);
  }
  return ow_hi;
}

// For tap column j of a block whose lanes start at columns `start`: the lanes
// whose tap lies inside the row.
__attribute__((target("avx512f"), always_inline)) inline __mmask16 clipped_lanes(__m512i start, int64_t j,
                                                                               int64_t W) {
  const __m512i cols = _mm512_add_epi32(start, _mm512_set1_epi32(int32_t(j)));
  return _mm512_cmpge_epi32_mask(cols, _mm512_setzero_si512()) &
         _mm512_cmplt_epi32_mask(cols, _mm512_set1_epi32(int32_t(W)));
}

// One block of 16 output columns from ow0, whose windows may reach past either
// end of the row (padding, ceil_mode overhang). pool_row_avx512 cannot take them:
// its loads would read outside the row, and its taps are offsets from the corner.
// Here each tap is masked to the lanes whose column lies inside the row, the loads
// touch only columns inside the row, and the winner is tracked as its flat index
// h*W + w (int32: the caller checks H*W < 2**31). The seed is pool_window's: -inf,
// at each window's first column inside the row. Without this block a stride-2 row
// with padding sent its first output to pool_window, which on 56-wide rows took a
// fifth of the whole pass.
template <typename Index>
__attribute__((target("avx512f"))) void pool_block_clipped_avx512(const float* in, int64_t plane_size, int64_t W,
                                                                  int64_t h0, int64_t rows, int64_t kw, int64_t sw,
                                                                  int64_t pad, int64_t ow0, float* out, Index* idx) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i even = _mm512_add_epi32(lane, lane);
  const __m512i zero = _mm512_setzero_si512();
  const int64_t first_col = ow0 * sw - pad;  // lane 0's first tap; lane l starts sw*l further
  const __m512i start = _mm512_add_epi32(_mm512_set1_epi32(int32_t(first_col)), sw == 2 ? even : lane);
  __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512i best_at = _mm512_add_epi32(_mm512_set1_epi32(int32_t(h0 * W)), _mm512_max_epi32(start, zero));
  // Only the taps that put some lane inside the row: a huge padded window costs
  // what it covers, not its width.
  const int64_t j_lo = std::max<int64_t>(0, -(first_col + 15 * sw)), j_hi = std::min(kw, W - first_col);
  // Per tap column, the lanes are the same for every window row, so for up to
  // eight columns they are worked out once, not once per row.
  __mmask16 saved[8];
  const bool use_saved = j_hi - j_lo <= 8;
  if (use_saved)
    for (int64_t j = j_lo; j < j_hi; ++j) saved[j - j_lo] = clipped_lanes(start, j, W);
  for (int64_t i = 0; i < rows; ++i) {
    const __m512i row_start = _mm512_add_epi32(_mm512_set1_epi32(int32_t((h0 + i) * W)), start);
    for (int64_t j = j_lo; j < j_hi; ++j) {
      const __mmask16 lanes = use_saved ? saved[j - j_lo] : clipped_lanes(start, j, W);
      // Whole-vector loads unless they would leave the plane (the first row's
      // left edge, the last row's right): the lane masks already drop the
      // columns that belong to the neighbouring rows.
      const int64_t offset = (h0 + i) * W + first_col + j;
      const bool whole = offset >= 0 && offset + 16 * sw <= plane_size;
      const __m512 v = sw == 2 ? load_lanes_avx512<2>(in, offset, plane_size, even, whole)
                               : load_lanes_avx512<1>(in, offset, plane_size, even, whole);
      const __mmask16 take =
          lanes & (_mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
      best = _mm512_mask_mov_ps(best, take, v);
      best_at = _mm512_mask_mov_epi32(best_at, take, _mm512_add_epi32(row_start, _mm512_set1_epi32(int32_t(j))));
    }
  }
  _mm512_storeu_ps(out + ow0, best);
  store_flat_indices_avx512(idx + ow0, best_at, 0xFFFF);
}
#endif

#if CONVX_POOL_AVX512
// Whole planes of narrow outputs (fewer than 16 columns, where a row holds no
// full vector): lanes = 16 consecutive outputs of the flattened plane, inputs
// fetched with gathers from each lane's window corner. Only for windows that all
// lie inside the plane (no padding, no ceil_mode overhang) and planes whose flat
// indices fit int32; the same compare-and-select sequence as pool_row_avx512.
// `corners` holds each output's window corner h*W + w (the same for every plane).
template <typename Index>
__attribute__((target("avx512f"))) void pool_plane_gather_avx512(const float* in, int64_t W, int64_t kh,
                                                                 int64_t kw, const int32_t* corners,
                                                                 int64_t outputs, float* out, Index* idx) {
  for (int64_t o0 = 0; o0 < outputs; o0 += 16) {
    const __mmask16 lanes = outputs - o0 >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (outputs - o0)) - 1);
    const __m512i corner =
        lanes == 0xFFFF ? _mm512_loadu_si512(corners + o0) : _mm512_maskz_loadu_epi32(lanes, corners + o0);
    __m512 best = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, corner, in, 4);
    __m512i tap = _mm512_setzero_si512();
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = (i == 0 ? 1 : 0); j < kw; ++j) {
        const __m512i offset = _mm512_set1_epi32(int32_t(i * W + j));
        const __m512 v =
            _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, _mm512_add_epi32(corner, offset), in, 4);
        const __mmask16 take =
            (_mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)) & lanes;
        best = _mm512_mask_mov_ps(best, take, v);
        tap = _mm512_mask_mov_epi32(tap, take, offset);
      }
    if (lanes == 0xFFFF)  // a plain store: a masked one costs several here
      _mm512_storeu_ps(out + o0, best);
    else
      _mm512_mask_storeu_ps(out + o0, lanes, best);
    store_flat_indices_avx512(idx + o0, _mm512_add_epi32(corner, tap), lanes);
  }
}

// The same planes (no padding, every window inside, fewer than 16 outputs a
// row) with stride 1 or 2 along the row: one output row per vector, its taps
// fetched by plain loads and, for stride 2, one permute (as pool_row_avx512),
// where the gather kernel spent a gather on every tap. Lanes past the row's
// OW outputs compute windows further along the plane and are stored over the
// next row's outputs, which that row then rewrites; only a row whose 16 lanes
// would pass the plane's last output stores with a mask. Loads that would pass
// the plane's end are masked to it.
template <typename Index>
__attribute__((target("avx512f"))) void pool_plane_narrow_rows_avx512(const float* in, int64_t plane_size,
                                                                      int64_t W, int64_t kh, int64_t kw,
                                                                      int64_t sh, int64_t sw, int64_t OH,
                                                                      int64_t OW, float* out, Index* idx) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const LaneOffsets lane = lane_offsets_avx512(sw);
  const int64_t outputs = OH * OW;
  for (int64_t oh = 0; oh < OH; ++oh) {
    __m512i tap;
    const int64_t corner = oh * sh * W;
    const __m512 best = sw == 2 ? windows_max_avx512<2>(in, plane_size, W, corner, kh, kw, even, tap)
                                : windows_max_avx512<1>(in, plane_size, W, corner, kh, kw, even, tap);
    const int64_t o = oh * OW;
    const __mmask16 lanes = o + 16 <= outputs ? __mmask16(0xFFFF) : __mmask16((1u << (outputs - o)) - 1);
    if (lanes == 0xFFFF)
      _mm512_storeu_ps(out + o, best);
    else
      _mm512_mask_storeu_ps(out + o, lanes, best);
    store_window_indices_avx512(idx + o, corner, lane, tap, lanes);
  }
}

// Planes whose rows hold fewer than 16 outputs, with no padding and every window
// inside: a row per vector (pool_plane_narrow_rows_avx512) for stride 1 or 2
// along the row and 5+ outputs a row, else 16 outputs of the flattened plane per
// vector by gathers (pool_plane_gather_avx512). A row per vector wastes the lanes
// past OW, but from 5 outputs a row it beats a gather per tap. One core, 2x2
// stride 2, ms, rows / gathers: 64x25x26x26 (13 outputs a row, the digits CNN's
// first pool) 0.131 / 0.344, 64x50x11x11 (5) 0.110 / 0.127, 8x64x9x9 (4) 0.015 /
// 0.011. False where neither applies.
template <typename T, typename Index>
bool max_pool2d_forward_narrow_cpu(const Pool2dParams& p, const T* input, T* output, Index* indices) {
  const int64_t OH = p.out_h(), OW = p.out_w();
  const bool applies = std::is_same<T, float>::value && OW < 16 && p.pad_h == 0 && p.pad_w == 0 &&
                       (OH - 1) * p.stride_h + p.kernel_h <= p.H && (OW - 1) * p.stride_w + p.kernel_w <= p.W &&
                       double(p.H) * double(p.W) < 2147483647.0 && simd_level() == "avx512";
  if (!applies) return false;
  if constexpr (std::is_same<T, float>::value) {
    const int64_t planes = p.N * p.C, outputs = OH * OW, plane_size = p.H * p.W;
    const double taps = double(planes) * double(outputs) * double(p.kernel_h) * double(p.kernel_w);
    if ((p.stride_w == 1 || p.stride_w == 2) && OW >= 5) {
#pragma omp parallel for schedule(static) if (taps > 65536.0)
      for (int64_t plane = 0; plane < planes; ++plane)
        pool_plane_narrow_rows_avx512(input + plane * plane_size, plane_size, p.W, p.kernel_h, p.kernel_w,
                                      p.stride_h, p.stride_w, OH, OW, output + plane * outputs,
                                      indices + plane * outputs);
      return true;
    }
    std::vector<int32_t> corners(OH * OW);
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) corners[oh * OW + ow] = int32_t(oh * p.stride_h * p.W + ow * p.stride_w);
#pragma omp parallel for schedule(static) if (taps > 65536.0)
    for (int64_t plane = 0; plane < planes; ++plane)
      pool_plane_gather_avx512(input + plane * plane_size, p.W, p.kernel_h, p.kernel_w, corners.data(), outputs,
                               output + plane * outputs, indices + plane * outputs);
  }
  return true;
}
#endif

template <typename T, typename Index>
void max_pool2d_forward_rows_cpu(const Pool2dParams& p, const T* input, T* output, Index* indices) {
  const int64_t OH = p.out_h(), OW = p.out_w();
  const int64_t planes = p.N * p.C;
  const int64_t kw = p.kernel_w, sw = p.stride_w, pw = p.pad_w;
  // Output columns whose window starts at or after column 0 and ends inside the row.
  const int64_t ow_lo = std::min(OW, (pw + sw - 1) / sw);
  const int64_t ow_hi = std::max(ow_lo, std::min(OW, p.W - kw + pw >= 0 ? (p.W - kw + pw) / sw + 1 : 0));
#if CONVX_POOL_AVX512
  const bool use_avx512 = std::is_same<T, float>::value && simd_level() == "avx512" &&
                          double(p.kernel_h) * double(p.W) < 2147483647.0;
  // The windows that reach past the row's ends go in masked vector blocks too;
  // their column arithmetic is int32, so every column a window spans must fit.
  const bool clipped_blocks = use_avx512 && (sw == 1 || sw == 2) && OW >= 16 &&
                              double(p.H) * double(p.W) < 2147483647.0 &&
                              double(pw) + double(kw) + double(p.W) + 64.0 < 2147483647.0;
#endif
  const double taps = double(planes) * double(OH) * double(OW) * double(p.kernel_h) * double(kw);
#pragma omp parallel for schedule(static) if (taps > 65536.0)
  for (int64_t plane = 0; plane < planes; ++plane) {
    const T* in = input + plane * p.H * p.W;
    T* out = output + plane * OH * OW;
    Index* idx = indices + plane * OH * OW;
    for (int64_t oh = 0; oh < OH; ++oh) {
      int64_t h0, h_end;
      window_taps(oh * p.stride_h - p.pad_h, p.kernel_h, 1, p.H, h0, h_end);
      T* out_row = out + oh * OW;
      Index* idx_row = idx + oh * OW;
#if CONVX_POOL_AVX512
      if constexpr (std::is_same<T, float>::value) {
        if (clipped_blocks) {
          // Blocks of 16 from each end over the windows pool_row_avx512 cannot
          // take (a last block that would pass OW moves back to end there:
          // recomputing an output gives the same result); the interior starts
          // at the next multiple of 16, where the left blocks end, as long as a
          // whole vector remains, else the blocks take the whole row.
          const int64_t rows = h_end - h0;
          const int64_t interior_lo = (ow_lo + 15) / 16 * 16;
          const bool vector_interior = ow_hi - interior_lo >= 16;
          const int64_t left_end = vector_interior ? ow_lo : ow_hi;
          for (int64_t b = 0; b < left_end; b += 16)
            pool_block_clipped_avx512(in, p.H * p.W, p.W, h0, rows, kw, sw, pw, std::min(b, OW - 16), out_row, idx_row);
          if (vector_interior)
            pool_row_avx512(in, p.H * p.W, p.W, h0, rows, kw, sw, pw, interior_lo, ow_hi, out_row, idx_row);
          for (int64_t b = ow_hi; b < OW; b += 16)
            pool_block_clipped_avx512(in, p.H * p.W, p.W, h0, rows, kw, sw, pw, std::min(b, OW - 16), out_row, idx_row);
          continue;
        }
      }
#endif
      for (int64_t ow = 0; ow < ow_lo; ++ow) pool_window(p, in, h0, h_end, ow, out_row + ow, idx_row + ow);
      int64_t done = ow_lo;
#if CONVX_POOL_AVX512
      if constexpr (std::is_same<T, float>::value)
        if (use_avx512)
          done = pool_row_avx512(in, p.H * p.W, p.W, h0, h_end - h0, kw, sw, pw, ow_lo, ow_hi, out_row, idx_row);
#endif
      if (sw == 1)
        pool_row_interior<T, 1>(in, p.W, h0, h_end - h0, kw, sw, pw, done, ow_hi, out_row, idx_row);
      else if (sw == 2)
        pool_row_interior<T, 2>(in, p.W, h0, h_end - h0, kw, sw, pw, done, ow_hi, out_row, idx_row);
      else
        pool_row_interior<T, 0>(in, p.W, h0, h_end - h0, kw, sw, pw, done, ow_hi, out_row, idx_row);
      for (int64_t ow = ow_hi; ow < OW; ++ow) pool_window(p, in, h0, h_end, ow, out_row + ow, idx_row + ow);
    }
  }
}

}  // namespace

template <typename T, typename Index>
void max_pool2d_forward_reference_cpu(const Pool2dParams& p, const T* input, T* output, Index* indices) {
  const int64_t OH = p.out_h(), OW = p.out_w();
  const int64_t planes = p.N * p.C;
  // Below this many window taps the thread team costs more than it saves.
  const double taps = double(planes) * double(OH) * double(OW) * double(p.kernel_h) * double(p.kernel_w);
#pragma omp parallel for schedule(static) if (taps > 65536.0)
  for (int64_t plane = 0; plane < planes; ++plane) {
    const T* in = input + plane * p.H * p.W;
    T* out = output + plane * OH * OW;
    Index* idx = indices + plane * OH * OW;
    for (int64_t oh = 0; oh < OH; ++oh) {
      // Window rows h0, h0+d, ... below h_end; skip the taps that land in padding.
      int64_t h0, h_end;
      window_taps(oh * p.stride_h - p.pad_h, p.kernel_h, p.dilation_h, p.H, h0, h_end);
      for (int64_t ow = 0; ow < OW; ++ow) pool_window(p, in, h0, h_end, ow, out + oh * OW + ow, idx + oh * OW + ow);
    }
  }
}

template <typename T, typename Index>
void max_pool2d_forward_cpu(const Pool2dParams& p, const T* input, T* output, Index* indices) {
#if CONVX_POOL_AVX512
  if (p.dilation_h == 1 && p.dilation_w == 1 && max_pool2d_forward_narrow_cpu(p, input, output, indices)) return;
#endif
  if (p.dilation_h == 1 && p.dilation_w == 1)
    max_pool2d_forward_rows_cpu(p, input, output, indices);
  else
    max_pool2d_forward_reference_cpu(p, input, output, indices);
}

namespace {

// gin[idx[o]] += gout[o] for o in [o0, out_plane), in order; false at the first
// index outside [0, in_plane).
template <typename T, typename Index>
bool scatter_add_scalar(const T* gout, const Index* idx, int64_t o0, int64_t out_plane, int64_t in_plane, T* gin) {
  for (int64_t o = o0; o < out_plane; ++o) {
    const int64_t i = idx[o];
    if (i < 0 || i >= in_plane) return false;
    gin[i] += gout[o];
  }
  return true;
}

#if CONVX_POOL_AVX512
// 16 indices from idx as int32 lanes (int64 ones narrowed: the callers' planes
// have fewer than 2**31 elements); false if any lies outside [0, in_plane).
template <typename Index>
__attribute__((target("avx512f"), always_inline)) inline bool load_indices_avx512(const Index* idx, int64_t in_plane,
                                                                                __m512i& i32) {
  if constexpr (std::is_same<Index, int32_t>::value) {
    i32 = _mm512_loadu_si512(idx);
    // unsigned: a negative index reads as 2**31 or more, past any plane here
    return _mm512_cmpge_epu32_mask(i32, _mm512_set1_epi32(int32_t(in_plane))) == 0;
  } else {
    const __m512i zero = _mm512_setzero_si512(), limit = _mm512_set1_epi64(in_plane);
    const __m512i lo = _mm512_loadu_si512(idx), hi = _mm512_loadu_si512(idx + 8);
    const __mmask8 outside = _mm512_cmplt_epi64_mask(lo, zero) | _mm512_cmpge_epi64_mask(lo, limit) |
                             _mm512_cmplt_epi64_mask(hi, zero) | _mm512_cmpge_epi64_mask(hi, limit);
    i32 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(lo)), _mm512_cvtepi64_epi32(hi), 1);
    return outside == 0;
  }
}

// The same scatter 16 outputs at a time: check the indices, gather the current
// sums, add, scatter back. Lanes that share an index (overlapping windows whose
// maxima coincide: on random data nearly every vector of a 3x3 stride-2 pool has
// such a pair) go in rounds, so each input element still gets its adds one at a
// time in output order, exactly as the scalar loop: vpconflictd gives each lane
// the earlier lanes with its index, and a round takes the lanes none of whose
// earlier duplicates is still pending (the lowest pending lane always is, so the
// rounds end). Handing such vectors to the scalar loop instead cost a third of
// the 3x3 backward. Needs in_plane < 2**31.
template <typename Index>
__attribute__((target("avx512f,avx512cd"))) bool scatter_add_avx512(const float* gout, const Index* idx,
                                                                     int64_t out_plane, int64_t in_plane,
                                                                     float* gin) {
  // lane k -> k - 1 (lane 0 -> 0, never used: lane 0 has no earlier lane)
  const __m512i lane_before = _mm512_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14);
  int64_t o = 0;
  for (; o + 16 <= out_plane; o += 16) {
    __m512i i32;
    if (!load_indices_avx512(idx + o, in_plane, i32)) return false;
    const __m512i earlier_same = _mm512_conflict_epi32(i32);
    const __m512 g = _mm512_loadu_ps(gout + o);
    const __mmask16 repeats = _mm512_test_epi32_mask(earlier_same, earlier_same);
    if (repeats == 0) {  // all indices distinct: one round
      _mm512_i32scatter_ps(gin, i32, _mm512_add_ps(_mm512_i32gather_ps(i32, gin, 4), g), 4);
      continue;
    }
    // The common repeat: each repeating lane shares its index with the lane just
    // before it and with no other (adjacent windows of a stride-2 3x3 pool that
    // both pick their shared column; a run of three would give the third lane two
    // earlier lanes). Then lane k's sum is lane k-1's sum plus g[k], the same two
    // adds in the same order, and lane k-1 need not scatter at all.
    const __mmask16 only_previous =
        _mm512_mask_cmpeq_epi32_mask(repeats, earlier_same, _mm512_sllv_epi32(_mm512_set1_epi32(1), lane_before));
    if (only_previous == repeats) {
      __m512 sum = _mm512_add_ps(_mm512_i32gather_ps(i32, gin, 4), g);
      sum = _mm512_mask_add_ps(sum, repeats, _mm512_permutexvar_ps(lane_before, sum), g);
      _mm512_mask_i32scatter_ps(gin, __mmask16(~(repeats >> 1)), i32, sum, 4);
      continue;
    }
    __mmask16 pending = 0xFFFF;
    while (pending) {
      const __mmask16 ready =
          _mm512_mask_testn_epi32_mask(pending, earlier_same, _mm512_set1_epi32(int32_t(pending)));
      const __m512 sum = _mm512_add_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), ready, i32, gin, 4), g);
      _mm512_mask_i32scatter_ps(gin, ready, i32, sum, 4);
      pending = __mmask16(pending & ~ready);
    }
  }
  return scatter_add_scalar(gout, idx, o, out_plane, in_plane, gin);
}

// Windows that tile the plane, 2 columns wide and stride 2 (kernel_h rows, stride
// kernel_h, no padding, every window inside the plane): each input element lies
// in one window at most, so grad_input can be written once, a window's rows at a
// time, with no zero fill and no gather or scatter. Lanes = 16 consecutive
// outputs of a row; for window row i and column j, lane l holds gy where the
// index is that tap (plus +0.0, which turns a -0.0 into the +0.0 the scatter's
// 0 + gy gives), and the two columns interleave into 32 input columns. A last
// block overlaps the one before (rewriting the same values). Rows and columns
// no window covers are zeroed. Returns false, having written part of the plane,
// if some index is not a tap of its own window: the caller then scatters the
// plane instead, which also reports indices outside the plane. Needs OW >= 16
// and in_plane < 2**31.
template <typename Index>
__attribute__((target("avx512f"))) bool tiled_2_wide_backward_avx512(const float* gout, const Index* idx,
                                                                       int64_t H, int64_t W, int64_t kh, int64_t OH,
                                                                       int64_t OW, float* gin) {
  const __m512i lane2 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i first_half = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second_half = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t oh = 0; oh < OH; ++oh) {
    for (int64_t block = 0; block < OW; block += 16) {
      const int64_t ow0 = std::min(block, OW - 16), o = oh * OW + ow0;
      __m512i flat;
      if (!load_indices_avx512(idx + o, H * W, flat)) return false;
      // each lane's index relative to its window's corner
      const __m512i tap = _mm512_sub_epi32(flat, _mm512_add_epi32(_mm512_set1_epi32(int32_t(oh * kh * W + 2 * ow0)),
                                                                  lane2));
      const __m512 g = _mm512_loadu_ps(gout + o);
      __mmask16 matched = 0;
      for (int64_t i = 0; i < kh; ++i) {
        const __mmask16 left = _mm512_cmpeq_epi32_mask(tap, _mm512_set1_epi32(int32_t(i * W)));
        const __mmask16 right = _mm512_cmpeq_epi32_mask(tap, _mm512_set1_epi32(int32_t(i * W + 1)));
        matched |= left | right;
        const __m512 l = _mm512_maskz_add_ps(left, g, zero), r = _mm512_maskz_add_ps(right, g, zero);
        float* row = gin + (oh * kh + i) * W + 2 * ow0;
        _mm512_storeu_ps(row, _mm512_permutex2var_ps(l, first_half, r));
        _mm512_storeu_ps(row + 16, _mm512_permutex2var_ps(l, second_half, r));
      }
      if (matched != 0xFFFF) return false;
    }
    if (W > 2 * OW)  // columns past the last window
      for (int64_t i = 0; i < kh; ++i) std::fill(gin + (oh * kh + i) * W + 2 * OW, gin + (oh * kh + i + 1) * W, 0.0f);
  }
  std::fill(gin + OH * kh * W, gin + H * W, 0.0f);  // rows past the last window
  return true;
}
#endif

}  // namespace

template <typename T, typename Index>
bool max_pool2d_backward_cpu(const Pool2dParams& p, const T* grad_output, const Index* indices,
                             T* grad_input) {
  const int64_t out_plane = p.out_h() * p.out_w();
  const int64_t in_plane = p.H * p.W;
  const int64_t planes = p.N * p.C;
#if CONVX_POOL_AVX512
  const bool use_avx512 = std::is_same<T, float>::value && in_plane < 2147483647 && simd_level() == "avx512";
  const bool tiled_2_wide = use_avx512 && p.kernel_w == 2 && p.stride_w == 2 && p.kernel_h == p.stride_h &&
                            p.pad_h == 0 && p.pad_w == 0 && p.dilation_h == 1 && p.dilation_w == 1 &&
                            p.out_w() >= 16 && p.out_h() * p.kernel_h <= p.H && 2 * p.out_w() <= p.W;
#endif
  // One thread per plane: overlapping windows add into the same input element in
  // a fixed order, so the result is bitwise repeatable without atomics. Indices
  // come from the caller and are checked as they are used, in the same pass (a
  // separate validation pass would read them twice); a plane with a bad index is
  // left partly written and the whole call reports failure.
  bool all_valid = true;
  const bool parallel = double(planes) * double(out_plane) > 65536.0;
#pragma omp parallel for schedule(static) reduction(&& : all_valid) if (parallel)
  for (int64_t plane = 0; plane < planes; ++plane) {
    T* gin = grad_input + plane * in_plane;
    const T* gout = grad_output + plane * out_plane;
    const Index* idx = indices + plane * out_plane;
#if CONVX_POOL_AVX512
    if constexpr (std::is_same<T, float>::value)
      if (tiled_2_wide && tiled_2_wide_backward_avx512(gout, idx, p.H, p.W, p.kernel_h, p.out_h(), p.out_w(), gin))
        continue;
#endif
    std::fill(gin, gin + in_plane, T(0));
    bool ok;
#if CONVX_POOL_AVX512
    if constexpr (std::is_same<T, float>::value) {
      ok = use_avx512 ? scatter_add_avx512(gout, idx, out_plane, in_plane, gin)
                      : scatter_add_scalar(gout, idx, 0, out_plane, in_plane, gin);
    } else {
      ok = scatter_add_scalar(gout, idx, 0, out_plane, in_plane, gin);
    }
#else
    ok = scatter_add_scalar(gout, idx, 0, out_plane, in_plane, gin);
#endif
    all_valid = all_valid && ok;
  }
  return all_valid;
}

#define CONVX_POOL_INSTANTIATE(T, Index)                                                                  \
  template void max_pool2d_forward_cpu<T, Index>(const Pool2dParams&, const T*, T*, Index*);                \
  template void max_pool2d_forward_reference_cpu<T, Index>(const Pool2dParams&, const T*, T*, Index*);      \
  template bool max_pool2d_backward_cpu<T, Index>(const Pool2dParams&, const T*, const Index*, T*);
CONVX_POOL_INSTANTIATE(float, int64_t)
CONVX_POOL_INSTANTIATE(double, int64_t)
CONVX_POOL_INSTANTIATE(float, int32_t)
CONVX_POOL_INSTANTIATE(double, int32_t)
#undef CONVX_POOL_INSTANTIATE

}  // namespace convx
