// conv2d by Winograd's minimal filtering F(m x m, 3x3) (Lavin & Gray, 2016), for
// 3x3 filters with stride 1, dilation 1 and one group, and F(2x2, 5x5) for 5x5
// ones (see WinogradF2R5): forward; backward-data, which for such a layer is
// itself a stride-1 convolution (of the output gradient, with the filters rotated
// by 180 degrees and in/out channels swapped); and the weight gradient by the
// transposed algorithm (at the end of the file).
//
// The output is cut into m x m tiles; for an r x r filter each reads an
// (m+r-1) x (m+r-1) input patch d (tiles overlap by r - 1). With the transforms
// below, one tile of one filter is
//     Y = A^T [ (G g G^T) .* (B^T d B) ] A,
// so (m+r-1)^2 element-wise products replace r^2 m^2 multiply-adds. Summing over
// input channels turns the element-wise product into (m+r-1)^2 independent matrix
// products, one per position xi of the transform domain:
//     M[xi] (K x tiles) = U[xi] (K x C) * V[xi] (C x tiles)
// which run on the packed GEMM. Output channels are processed in slices and tiles
// in blocks of whole tile rows, so the workspace (U for one slice, V and M for one
// block) stays within a fixed budget, whatever the layer's size.
//
// Two tile sizes, because accuracy and speed pull apart:
// - F(4x4, 3x3): 36 products for 16 outputs, 4x fewer multiplies than direct.
//   Its transforms interpolate at 0, +-3/4, +-4/3 and infinity. The usual points
//   0, +-1, +-2 put entries up to 8 and 1/24 in the matrices, and float32 results
//   carried ~20x a GEMM's rounding error (1e-5 relative on a 192-channel layer).
//   A search over small fractions for the points with the least float32 error on
//   128-channel layers (after Barabasz et al., "Error analysis and improving the
//   accuracy of Winograd convolution", 2020) found these: 5-7x a GEMM's error
//   (2e-6 relative), with the same pairs of +-a points, so the same operation
//   count. Non-dyadic entries such as 16/9 are rounded to T, which the float32
//   error above includes.
// - F(2x2, 3x3): 16 products for 4 outputs, 2.25x fewer multiplies; transforms of
//   0, +-1 and 1/2 only, with an error close to a GEMM's. It is the faster of the
//   two on few tiles (the AlphaGo body at batch 1) and where 4x4 tiles pad the
//   image more (14x14); conv2d_choose_algo picks between them.
//
//   F(4x4, 3x3):
//   B^T = [ 1    0   -337/144    0        1  0 ]   G = [    1        0        0     ]
//         [ 0  -4/3   -16/9     3/4       1  0 ]       [ -128/175 -96/175  -72/175 ]
//         [ 0   4/3   -16/9    -3/4       1  0 ]       [ -128/175  96/175  -72/175 ]
//         [ 0  -3/4   -9/16     4/3       1  0 ]       [   81/350  54/175   72/175 ]
//         [ 0   3/4   -9/16    -4/3       1  0 ]       [   81/350 -54/175   72/175 ]
//         [ 0    1      0     -337/144    0  1 ]       [    0        0        1     ]
//   A^T = [ 1   1      1      1      1     0 ]
//         [ 0  3/4   -3/4    4/3   -4/3    0 ]
//         [ 0  9/16   9/16  16/9   16/9    0 ]
//         [ 0 27/64 -27/64 64/27 -64/27    1 ]
//
//   F(2x2, 3x3):
//   B^T = [ 1  0 -1  0 ]   G = [ 1    0    0  ]   A^T = [ 1  1  1  0 ]
//         [ 0  1  1  0 ]       [ 1/2  1/2  1/2 ]         [ 0  1 -1 -1 ]
//         [ 0 -1  1  0 ]       [ 1/2 -1/2  1/2 ]
//         [ 0  1  0 -1 ]       [ 0    0    1  ]
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "convx/conv2d.h"
#include "convx/gemm.h"
#include "convx/simd.h"
#include "convx/workspace.h"

namespace convx {
namespace {


// A run of output channels [begin, begin + count): the filters' transformed copy
// (U in the forward, the products P in the weight gradient) is made for one slice
// at a time, so it need not hold all K x C filters at once.
struct ChannelSlice {
  int64_t begin, count;
};

// How a layer is cut to bound its workspace: output channels in slices of
// `slice` (`slices` of them), tiles in blocks of up to `rows` tile rows (whose
// transformed tiles take at most max_tile_bytes of the budget). The
// workspace (the slice's kXi filter matrices, and the block's transformed tiles
// and products) stays within a fixed budget whatever the layer's size, past it
// only where a slice of 8 filters or a block of one tile row alone would be.
// Before, the filter matrices were made for all K x C filters at once (9.4 MB on
// 256 channels, 38 MB on 512), beside 8 MB of tiles.
struct WinogradBlocking {
  int64_t slice, slices, rows;
};

// The budgets, measured on one core (Zen 5) against a single unbounded block,
// times interleaved: budget / filter share.
// - Forward and backward-data, 8 MiB / 0.3: the same speed on 192 and 256
//   channels at 19x19 (0.98-1.04x), 1.26x faster on 64 channels at 56x56 and
//   1.31x on 64 -> 128 at 112x112, whose products then stay nearer the caches.
//   At 6 MiB the 19x19 layers lost 10%, at 4 MiB 25%; the AlphaGo body at batch
//   1 (F(2x2)) lost 20% below 3 MiB.
// - Weight gradient, 12 MiB / 0.5: P accumulates over the blocks, so every
//   extra slice repeats the input transform and X's packing over all tiles;
//   it wants fewer, larger slices. 8 MiB lost 13-20% on 256 channels at 19x19
//   and on 512 at 7x7; 12 MiB was within 3% or faster on all the suite's layers.
//   But the tiles want blocks nearer the caches: of what the slice leaves, at
//   most 5 MiB goes to them (the transformed tiles X and Y). Against no cap, ms:
//   64 channels at 56x56 4.40 -> 4.11, 64 -> 128 at 112x112 14.3 -> 14.0, and
//   their workspace 10.5 -> 4.6 MB; the same within 1% on 192 and 256 channels
//   at 19x19 and 512 at 7x7 (a 4 MiB cap cost those at 19x19 13-20%).
constexpr double kForwardFilterShare = 0.3, kWeightFilterShare = 0.5;
constexpr double kWeightTileBytes = 5.0 * 1048576;
std::atomic<double> forward_budget{8.0 * 1048576}, weight_budget{12.0 * 1048576};

WinogradBlocking winograd_blocking(int64_t xi, int64_t C, int64_t K, int64_t tile_rows, int64_t tw,
                                   double budget, double filter_share, int64_t elem_bytes,
                                   double max_tile_bytes = 1e300) {
  const double per_channel = double(xi) * double(C) * double(elem_bytes);
  // Slices are whole 8-row strips of the GEMM's packed A, and as equal as that allows.
  int64_t slice = std::max<int64_t>(8, int64_t(budget * filter_share / per_channel) / 8 * 8);
  int64_t slices = 1;
  if (slice >= K) {
    slice = K;
  } else {
    slice = (equal_part_size(K, slice) + 7) / 8 * 8;
    slices = (K + slice - 1) / slice;
  }
  // The rest goes to the tiles: at least a quarter of the budget, even where
  // the minimum slice of 8 filters takes more than its share (many input channels).
  const double left = std::min(std::max(budget - double(slice) * per_channel, budget / 4), max_tile_bytes);
  const double per_tile = double(xi) * double(C + slice) * double(elem_bytes);
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(tile_rows, int64_t(left / per_tile) / tw));
  return {slice, slices, rows};
}

// Whether a block of `tiles` tiles with C input channels and a slice of `slice`
// filters is worth splitting across threads: by its transforms ((C + slice) x
// tiles values, the test before the GEMM term was added) or by its GEMMs (kXi x
// slice x C x tiles multiply-adds; 512K of them take about 4 us on one core).
// The GEMM term takes small batches of wide layers to all cores; F(4x4) on two
// cores, ms without / with it: the AlphaGo body at batch 1 0.78 / 0.43, 256
// channels on 14x14 at batch 1 0.78 / 0.46, 512 on 7x7 at batch 4 3.4 / 2.1,
// 64 on 14x14 at batch 8 0.45 / 0.25, 24 on 19x19 at batch 2 0.067 / 0.041.
bool worth_threads(int64_t xi, int64_t C, int64_t slice, int64_t tiles) {
  return double(C + slice) * double(tiles) > 16384.0 ||
         double(xi) * double(slice) * double(C) * double(tiles) > double(1 << 19);
}

// Whether the input transform fetches the next channel's rows ahead: only for
// inputs larger than a core's L2 (1 MB on Zen 5), which the earlier channels'
// transforms do not leave cached. Measured on one core: 64 channels at 56x56 at
// batch 8 (6.4 MB) 10% faster, 192 -> 192 on 19x19 at batch 16 (4.4 MB) 2%
// faster, the same at batch 1 (277 KB) 1-2% slower with it.
bool prefetch_input(int64_t input_bytes) { return input_bytes > (int64_t(1) << 20); }

// Column j of the 8 x 8 block whose row k is the 8 values at src + k * stride
// goes to dst[j] (8 values): three rounds of two-source shuffles (unpack, pairs,
// halves), the usual register transpose.
template <typename T>
inline void transpose_8x8(const T* src, int64_t stride, T* const dst[8]) {
  typedef T V __attribute__((vector_size(8 * sizeof(T))));
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef I M __attribute__((vector_size(8 * sizeof(T))));
  V r[8];
  for (int k = 0; k < 8; ++k) std::memcpy(&r[k], src + k * stride, sizeof(V));
  const M lo1 = {0, 8, 1, 9, 4, 12, 5, 13}, hi1 = {2, 10, 3, 11, 6, 14, 7, 15};
  const M lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
  const M lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
  V t[8], u[8];
  for (int k = 0; k < 4; ++k) {
    t[2 * k] = __builtin_shuffle(r[2 * k], r[2 * k + 1], lo1);
    t[2 * k + 1] = __builtin_shuffle(r[2 * k], r[2 * k + 1], hi1);
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3, then 4-7
    V* tt = t + 4 * h;
    u[4 * h + 0] = __builtin_shuffle(tt[0], tt[2], lo2);
    u[4 * h + 1] = __builtin_shuffle(tt[0], tt[2], hi2);
    u[4 * h + 2] = __builtin_shuffle(tt[1], tt[3], lo2);
    u[4 * h + 3] = __builtin_shuffle(tt[1], tt[3], hi2);
  }
  for (int j = 0; j < 4; ++j) {
    const V a = __builtin_shuffle(u[j], u[4 + j], lo4), b = __builtin_shuffle(u[j], u[4 + j], hi4);
    std::memcpy(dst[j], &a, sizeof(V));
    std::memcpy(dst[j + 4], &b, sizeof(V));
  }
}

// One chunk of transform_filters: the filters from 8 input channels (from i0)
// into 8 output channels (from o0 of the slice: one 8-row strip of the packed
// layout), written as one contiguous run of 64 lanes per xi. Lane e holds the
// filter from input i0 + e / 8 to output slice.begin + o0 + e % 8, the packed
// layout's order within a strip; lanes past the slice's last output are zero.
// The filters are first moved into g[tap][e]: in `weight` a filter's taps are
// adjacent, so a whole chunk is a transpose, done in 8 x 8 register blocks. Then
// both passes of G g G^T run as vector operations across the lanes, unrolled so
// that each entry of G is an immediate (F(2x2)'s ones become copies), and each
// U[xi] is stored as one run. Against the loop before, which moved one value at
// a time and read G from an array (ns per filter on one core, forward / rotated):
// F(4x4) 512 -> 512 6.6 / 7.4 -> 4.0 / 3.5, F(2x2) 192 -> 192 3.6 / 3.8 -> 2.0 /
// 1.9, F(2x2, 5x5) 48 -> 192 10.9 / 11.0 -> 7.2 / 5.6.
template <typename F, typename T>
CONVX_SIMD_CLONES void transform_filter_chunk(const T* weight, int64_t out_channels, int64_t in_channels, bool rotate,
                                              const ChannelSlice& slice, int64_t o0, int64_t i0, T* U,
                                              int64_t a_size, int64_t at) {
  constexpr int64_t P = F::kPatch, R = F::kR, kTaps = R * R, kRows = 8, kChunk = kRows * kRows;
  constexpr int64_t kLanes = 64 / int64_t(sizeof(T)), kVecs = kChunk / kLanes;
  typedef T Vec __attribute__((vector_size(64)));
  const int64_t inputs = std::min(kRows, in_channels - i0), outputs = std::min(kRows, slice.count - o0);
  const int64_t count = inputs * kRows;  // lanes stored
  const T* outs = weight + (slice.begin + o0) * (rotate ? 1 : in_channels) * kTaps;  // output o0's first filter
  alignas(64) T g[kTaps][kChunk];
  if (outputs == kRows && inputs == kRows) {
    if (!rotate) {
      // weight[o][i][t]: row o of the block is the 8 x kTaps filters into output
      // o; its column c is tap c % kTaps of input c / kTaps.
      for (int64_t c0 = 0; c0 < kRows * kTaps; c0 += 8) {
        T* dst[8];
        for (int64_t j = 0; j < 8; ++j) dst[j] = &g[(c0 + j) % kTaps][(c0 + j) / kTaps * kRows];
        transpose_8x8(outs + i0 * kTaps + c0, in_channels * kTaps, dst);
      }
    } else {
      // weight[i][o][t]: for each input, row o is the filter from output o, its
      // taps read backwards (the rotation by 180 degrees).
      for (int64_t i = 0; i < kRows; ++i) {
        const T* src = outs + (i0 + i) * out_channels * kTaps;
        int64_t t0 = 0;
        for (; t0 + 8 <= kTaps; t0 += 8) {
          T* dst[8];
          for (int64_t j = 0; j < 8; ++j) dst[j] = &g[kTaps - 1 - (t0 + j)][i * kRows];
          transpose_8x8(src + t0, kTaps, dst);
        }
        for (int64_t t = t0; t < kTaps; ++t)
          for (int64_t o = 0; o < kRows; ++o) g[kTaps - 1 - t][i * kRows + o] = src[o * kTaps + t];
      }
    }
  } else {  // a chunk at the edge of the slice or of the inputs, one value at a time
    std::memset(g, 0, sizeof(g));
    for (int64_t o = 0; o < outputs; ++o)
      for (int64_t i = 0; i < inputs; ++i) {
        const T* filter = outs + (rotate ? (i0 + i) * out_channels + o : o * in_channels + i0 + i) * kTaps;
        for (int64_t t = 0; t < kTaps; ++t) g[t][i * kRows + o] = filter[rotate ? kTaps - 1 - t : t];
      }
  }
  // Row a of G g for all lanes (R * kVecs vectors), then U[a][b] for each b.
  const int64_t vecs = (count + kLanes - 1) / kLanes;
#pragma GCC unroll 6
  for (int64_t a = 0; a < P; ++a) {
    Vec Gg[R][kVecs];
#pragma GCC unroll 5
    for (int64_t s = 0; s < R; ++s)
#pragma GCC unroll 8
      for (int64_t v = 0; v < kVecs; ++v) {
        Vec acc, x;
        std::memcpy(&acc, &g[s][v * kLanes], sizeof(Vec));
        acc *= T(F::G[a][0]);
#pragma GCC unroll 5
        for (int64_t r = 1; r < R; ++r) {
          std::memcpy(&x, &g[r * R + s][v * kLanes], sizeof(Vec));
          acc += x * T(F::G[a][r]);
        }
        Gg[s][v] = acc;
      }
#pragma GCC unroll 6
    for (int64_t b = 0; b < P; ++b) {
      T* dst = U + (a * P + b) * a_size + at;
      // Whole vectors with a fixed-size copy (one store each); a variable size
      // would be a call per vector, which made the function 2.5x slower.
      if (vecs == kVecs) {
#pragma GCC unroll 8
        for (int64_t v = 0; v < kVecs; ++v) {
          Vec acc = Gg[0][v] * T(F::G[b][0]);
#pragma GCC unroll 5
          for (int64_t s = 1; s < R; ++s) acc += Gg[s][v] * T(F::G[b][s]);
          std::memcpy(dst + v * kLanes, &acc, sizeof(Vec));
        }
      } else {
        for (int64_t v = 0; v < vecs; ++v) {
          Vec acc = Gg[0][v] * T(F::G[b][0]);
          for (int64_t s = 1; s < R; ++s) acc += Gg[s][v] * T(F::G[b][s]);
          std::memcpy(dst + v * kLanes, &acc, std::min(kLanes, count - v * kLanes) * sizeof(T));
        }
      }
    }
  }
}

// U[xi] = the packed GEMM operand (slice.count x in_channels, a_size elements
// apart) holding (G g G^T)[xi] for the filter g from input channel i to output
// channel o of the slice, written straight into the packed layout. `rotate` reads
// the filter of the backward-data convolution from the forward weight: g[r][s] =
// weight[i][o][R - 1 - r][R - 1 - s]. Filters go in chunks of 8 output channels
// (one MR strip of the packed layout) x 8 input channels, laid out lane by lane
// (g[tap][e]), so every step is a vector operation across 64 filters and each
// chunk is one contiguous run per xi in the packed layout.
template <typename F, typename T>
void transform_filters(const T* weight, int64_t out_channels, int64_t in_channels, bool rotate,
                       const ChannelSlice& slice, T* U) {
  const PackedALayout layout = gemm_packed_a_layout(slice.count, in_channels);
  const int64_t a_size = gemm_packed_a_size<T>(slice.count, in_channels);
  constexpr int64_t kRows = 8;
  if (layout.mr != 8) throw std::logic_error("transform_filters: chunks assume 8-row packed strips");
  const int64_t strips = layout.padded_m / layout.mr, i_blocks = (in_channels + kRows - 1) / kRows;
  const int64_t chunks = strips * i_blocks;
#pragma omp parallel for schedule(static) if (slice.count * in_channels > 4096)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t o0 = (chunk / i_blocks) * layout.mr, i0 = (chunk % i_blocks) * kRows;
    transform_filter_chunk<F>(weight, out_channels, in_channels, rotate, slice, o0, i0, U, a_size, layout.at(o0, i0));
  }
}

// Each algorithm as a policy: the edge of a tile, of the filter (kR) and of the
// patch, G, and the three 1-D transforms applied to rows of n tiles at once.
// input_rows: y[0..P-1][t] = B^T x[0..P-1][t]; output_rows: y[0..m-1][t] =
// A^T x[0..P-1][t]; grad_rows (the weight gradient's): y[0..P-1][t] =
// A x[0..m-1][t]; for t in [0, n), rows `xs` / `ys` apart. The loops run across
// tiles, so each line is one vector operation. `ivdep`: the rows never overlap,
// which the compiler cannot prove from the strides; without it F(4x4)'s six-row
// transforms stayed scalar (8% of its forward, 15% of its weight gradient, on 192
// channels at batch 16) and the others ran behind run-time overlap tests.
struct WinogradF4 {
  static constexpr int64_t kTile = 4, kR = 3, kPatch = 6, kXi = 36;
  static constexpr double G[6][3] = {{1, 0, 0},
                                     {-128.0 / 175, -96.0 / 175, -72.0 / 175},
                                     {-128.0 / 175, 96.0 / 175, -72.0 / 175},
                                     {81.0 / 350, 54.0 / 175, 72.0 / 175},
                                     {81.0 / 350, -54.0 / 175, 72.0 / 175},
                                     {0, 0, 1}};
  template <typename T>
  static void input_rows(const T* __restrict x, int64_t xs, T* __restrict y, int64_t ys, int64_t n) {
#pragma GCC ivdep
    for (int64_t t = 0; t < n; ++t) {
      const T x0 = x[t], x1 = x[xs + t], x2 = x[2 * xs + t], x3 = x[3 * xs + t], x4 = x[4 * xs + t],
              x5 = x[5 * xs + t];
      const T e1 = x4 - T(16.0 / 9) * x2, o1 = T(3.0 / 4) * x3 - T(4.0 / 3) * x1;
      const T e3 = x4 - T(9.0 / 16) * x2, o3 = T(4.0 / 3) * x3 - T(3.0 / 4) * x1;
      y[t] = x0 - T(337.0 / 144) * x2 + x4;
      y[ys + t] = e1 + o1;
      y[2 * ys + t] = e1 - o1;
      y[3 * ys + t] = e3 + o3;
      y[4 * ys + t] = e3 - o3;
      y[5 * ys + t] = x1 - T(337.0 / 144) * x3 + x5;
    }
  }
  template <typename T>
  static void output_rows(const T* __restrict x, int64_t xs, T* __restrict y, int64_t ys, int64_t n) {
#pragma GCC ivdep
    for (int64_t t = 0; t < n; ++t) {
      const T x0 = x[t], x1 = x[xs + t], x2 = x[2 * xs + t], x3 = x[3 * xs + t], x4 = x[4 * xs + t],
              x5 = x[5 * xs + t];
      const T p12 = x1 + x2, m12 = x1 - x2, p34 = x3 + x4, m34 = x3 - x4;
      y[t] = x0 + p12 + p34;
      y[ys + t] = T(3.0 / 4) * m12 + T(4.0 / 3) * m34;
      y[2 * ys + t] = T(9.0 / 16) * p12 + T(16.0 / 9) * p34;
      y[3 * ys + t] = T(27.0 / 64) * m12 + T(64.0 / 27) * m34 + x5;
    }
  }
  // y[0..5][t] = A x[0..3][t], the weight gradient's transform of output-gradient
  // tiles: row u is the polynomial with coefficients x evaluated at point u.
  template <typename T>
  static void grad_rows(const T* __restrict x, int64_t xs, T* __restrict y, int64_t ys, int64_t n) {
#pragma GCC ivdep
    for (int64_t t = 0; t < n; ++t) {
      const T x0 = x[t], x1 = x[xs + t], x2 = x[2 * xs + t], x3 = x[3 * xs + t];
      const T e1 = x0 + T(9.0 / 16) * x2, o1 = T(3.0 / 4) * x1 + T(27.0 / 64) * x3;
      const T e3 = x0 + T(16.0 / 9) * x2, o3 = T(4.0 / 3) * x1 + T(64.0 / 27) * x3;
      y[t] = x0;
      y[ys + t] = e1 + o1;
      y[2 * ys + t] = e1 - o1;
      y[3 * ys + t] = e3 + o3;
      y[4 * ys + t] = e3 - o3;
      y[5 * ys + t] = x3;
    }
  }
};

struct WinogradF2 {
  static constexpr int64_t kTile = 2, kR = 3, kPatch = 4, kXi = 16;
  static constexpr double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  template <typename T>
  static void input_rows(const T* __restrict x, int64_t xs, T* __restrict y, int64_t ys, int64_t n) {
#pragma GCC ivdep
    for (int64_t t = 0; t < n; ++t) {
      const T x0 = x[t], x1 = x[xs + t], x2 = x[2 * xs + t], x3 = x[3 * xs + t];
      y[t] = x0 - x2;
      y[ys + t] = x1 + x2;
      y[2 * ys + t] = x2 - x1;
      y[3 * ys + t] = x1 - x3;
    }
  }
  template <typename T>
  static void output_rows(const T* __restrict x, int64_t xs, T* __restrict y, int64_t ys, int64_t n) {
#pragma GCC ivdep
    for (int64_t t = 0; t < n; ++t) {
      const T x0 = x[t], x1 = x[xs + t], x2 = x[2 * xs + t], x3 = x[3 * xs + t];
      y[t] = x0 + x1 + x2;
      y[ys + t] = x1 - x2 - x3;
    }
  }
  template <typename T>
  static void grad_rows(const T* __restrict x, int64_t xs, T* __restrict y, int64_t ys, int64_t n) {
#pragma GCC ivdep
    for (int64_t t = 0; t < n; ++t) {
      const T x0 = x[t], x1 = x[xs + t];
      y[t] = x0;
      y[ys + t] = x0 + x1;
      y[2 * ys + t] = x0 - x1;
      y[3 * ys + t] = -x1;
    }
  }
};

// F(2x2, 5x5): the same six points as F(4x4, 3x3), so the same B^T (input
// transform); 36 products for 4 outputs of a 5x5 filter, 2.8x fewer multiplies
// than direct. A^T is the first two rows of the points' Vandermonde matrix (the
// point at infinity in the last output), and G the unique 6 x 5 matrix that
// makes A^T [(G g) .* (B^T d)] the correlation of d with g, solved for these
// A^T and B^T; its entries stay within 1 in magnitude:
//   A^T = [ 1   1     1     1     1    0 ]
//         [ 0  3/4  -3/4   4/3  -4/3   1 ]
//   G   = [    1        0        0       0        0     ]
//         [ -128/175 -96/175  -72/175 -54/175  -81/350 ]
//         [ -128/175  96/175  -72/175  54/175  -81/350 ]
//         [   81/350  54/175   72/175  96/175  128/175 ]
//         [   81/350 -54/175   72/175 -96/175  128/175 ]
//         [    0        0        0       0        1     ]
struct WinogradF2R5 {
  static constexpr int64_t kTile = 2, kR = 5, kPatch = 6, kXi = 36;
  static constexpr double G[6][5] = {{1, 0, 0, 0, 0},
                                     {-128.0 / 175, -96.0 / 175, -72.0 / 175, -54.0 / 175, -81.0 / 350},
                                     {-128.0 / 175, 96.0 / 175, -72.0 / 175, 54.0 / 175, -81.0 / 350},
                                     {81.0 / 350, 54.0 / 175, 72.0 / 175, 96.0 / 175, 128.0 / 175},
                                     {81.0 / 350, -54.0 / 175, 72.0 / 175, -96.0 / 175, 128.0 / 175},
                                     {0, 0, 0, 0, 1}};
  template <typename T>
  static void input_rows(const T* __restrict x, int64_t xs, T* __restrict y, int64_t ys, int64_t n) {
    WinogradF4::input_rows(x, xs, y, ys, n);
  }
  template <typename T>
  static void output_rows(const T* __restrict x, int64_t xs, T* __restrict y, int64_t ys, int64_t n) {
#pragma GCC ivdep
    for (int64_t t = 0; t < n; ++t) {
      const T x0 = x[t], x1 = x[xs + t], x2 = x[2 * xs + t], x3 = x[3 * xs + t], x4 = x[4 * xs + t],
              x5 = x[5 * xs + t];
      y[t] = x0 + (x1 + x2) + (x3 + x4);
      y[ys + t] = T(3.0 / 4) * (x1 - x2) + T(4.0 / 3) * (x3 - x4) + x5;
    }
  }
  // y[0..5][t] = A x[0..1][t]: the two coefficients evaluated at each point.
  template <typename T>
  static void grad_rows(const T* __restrict x, int64_t xs, T* __restrict y, int64_t ys, int64_t n) {
#pragma GCC ivdep
    for (int64_t t = 0; t < n; ++t) {
      const T x0 = x[t], x1 = x[xs + t];
      y[t] = x0;
      y[ys + t] = x0 + T(3.0 / 4) * x1;
      y[2 * ys + t] = x0 - T(3.0 / 4) * x1;
      y[3 * ys + t] = x0 + T(4.0 / 3) * x1;
      y[4 * ys + t] = x0 - T(4.0 / 3) * x1;
      y[5 * ys + t] = x1;
    }
  }
};

// Calls run(F{}) with the policy for `tile` (4 or 2) and r x r filters (r = 3,
// or 5 with tile 2, as conv2d_winograd_applies checks): the one place where the
// three directions pick their algorithm.
template <typename Run>
void with_winograd_policy(int64_t tile, int64_t r, Run run) {
  if (tile == 4)
    run(WinogradF4{});
  else if (r == 5)
    run(WinogradF2R5{});
  else
    run(WinogradF2{});
}

// The patch gather of input_tiles with whole-vector shuffles. Column v of tiles
// j0 .. j0 + kChunk - 1 of a zero-padded patch row is padded[(j0 + l) * kTile + v]
// for lane l: every lane lies within the two vectors from padded + j0 * kTile, so
// one two-source permute (vpermt2ps on AVX-512) gathers kChunk tiles, where the
// scalar loop moved one value per load and store (a third of the input
// transform of F(4x4) on 192 channels at 19x19). masks[v][l] is the lane's
// index in the two vectors (0 for lanes past kChunk, whose values are stored
// and overwritten, or land in the pitch slack of the destination row).
template <typename F, typename T>
struct PatchGather {
  static constexpr int64_t kLanes = 64 / int64_t(sizeof(T));
  static constexpr int64_t kChunk = (2 * kLanes - F::kPatch) / F::kTile + 1;
  static_assert(kChunk >= 1 && kChunk <= kLanes, "a chunk's tiles must fit one vector of the destination");
  using Index = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef T Vec __attribute__((vector_size(64)));
  typedef Index Mask __attribute__((vector_size(64)));
  struct Masks {
    Index lanes[F::kPatch][kLanes];
    constexpr Masks() : lanes() {
      for (int64_t v = 0; v < F::kPatch; ++v)
        for (int64_t l = 0; l < kChunk && l < kLanes; ++l) lanes[v][l] = Index(l * F::kTile + v);
    }
  };
  static constexpr Masks kMasks{};
  // The row pitch of d, and the values d and e each need (see input_tiles).
  static int64_t pitch(int64_t tiles) { return tiles + kLanes; }
  static int64_t scratch_size(int64_t tiles) { return F::kXi * pitch(tiles) + 2 * kLanes; }
};

// Tiles rounded up to whole vectors (16 floats, 8 doubles): the row pitch of the
// transforms' scratch, so that they run with no scalar remainder loops.
template <typename T>
int64_t vector_tiles(int64_t tiles) {
  constexpr int64_t kLanes = 64 / int64_t(sizeof(T));
  return (tiles + kLanes - 1) / kLanes * kLanes;
}

// The input transform of one channel over the tiles of a block: gather the
// patches lane by lane (d[u][v][t]), then B^T d over u, then (.) B over v,
// as vector operations across tiles; the result for position xi and tile t goes
// to out[xi * out_stride + (t / strip_width) * strip_stride + t % strip_width]. `channel` is the channel's plane in image 0 and
// `image_stride` one image's size; tile t = rb * tw + j is tile column j of tile
// row tr of image n, with (n, tr) = divmod(row0 + rb, th). d and e hold
// PatchGather<F, T>::scratch_size(tiles) each; d's rows are pitch(tiles) apart.
template <typename F, typename T>
CONVX_SIMD_CLONES void input_tiles(const T* channel, int64_t image_stride, int64_t H, int64_t W, int64_t pad_top, int64_t pad_left,
                 int64_t row0, int64_t rows, int64_t th, int64_t tw, T* d, T* e, T* out, int64_t out_stride,
                 int64_t strip_width, int64_t strip_stride, bool prefetch_next_channel) {
  constexpr int64_t kTile = F::kTile, kPatch = F::kPatch;
  const int64_t tiles = rows * tw;
  // Each patch row is read from a zero-padded copy of the image row, so the
  // gather below has no bounds tests: span = the tw tiles' columns plus overlap.
  const int64_t span = tw * kTile + (kPatch - kTile);
  using Gather = PatchGather<F, T>;
  const int64_t pitch = Gather::pitch(tiles);
  typename Gather::Mask masks[kPatch];
  std::memcpy(masks, Gather::kMasks.lanes, sizeof(masks));
  // The padded rows go to e, free until the first transform. The rows of a
  // run of tile rows of one image are all copied, each once, before any is
  // gathered: the gather loads whole vectors over values just stored a few at
  // a time, and a load that spans stores still pending waits until they reach
  // the cache. Copied per tile row (kPatch rows, each image row again for every
  // tile row whose patch covers it) and then gathered, the stores were still
  // pending; on AlphaGo's 5x5 input layer's backward-data by F(2x2, 5x5),
  // whose rows were copied three times, the copies were an eighth of this
  // function's time, and the pass ran 5% slower (per call, alternated).
  const int64_t row_pitch = span + 2 * Gather::kLanes;
  // e holds kXi * (tiles + one vector) values, so at least kPatch rows of
  // row_pitch (tiles >= tw): the longest run of tile rows whose rows fit.
  const int64_t e_rows = Gather::scratch_size(tiles) / row_pitch;
  const int64_t run_limit = std::max<int64_t>(1, (e_rows - (kPatch - kTile)) / kTile);
  const int64_t x_lo = std::clamp<int64_t>(pad_left, 0, span), x_hi = std::clamp<int64_t>(W + pad_left, x_lo, span);
  for (int64_t rb0 = 0; rb0 < rows;) {
    const int64_t n = (row0 + rb0) / th, tr0 = (row0 + rb0) % th;
    const int64_t run = std::min({rows - rb0, th - tr0, run_limit});
    const T* plane = channel + n * image_stride;
    for (int64_t u = 0; u < run * kTile + (kPatch - kTile); ++u) {
      const int64_t h = tr0 * kTile - pad_top + u;
      T* padded = e + u * row_pitch;
      // columns x of the span read image column x - pad_left
      if (h < 0 || h >= H) {
        std::fill(padded, padded + span, T(0));
      } else {
        std::fill(padded, padded + x_lo, T(0));
        // Written as a loop, but GCC still compiles it (and the fills) into
        // memmove and memset calls: 175,000 per AlphaGo-body forward at batch
        // 16. Kept as loops by CONVX_INLINE_COPIES (simd.h) it ran no faster
        // (19.36-19.40 against 19.08-19.26 ms), so it is left to the library.
        const T* __restrict from = plane + h * W - pad_left;
        T* __restrict to = padded;
        for (int64_t x = x_lo; x < x_hi; ++x) to[x] = from[x];
        std::fill(padded + x_hi, padded + span, T(0));
      }
    }
    for (int64_t rb = rb0; rb < rb0 + run; ++rb) {
      // The next channel's rows for this tile row (kTile of them, so every row
      // once over the tile rows), fetched ahead: a plane is a few short rows, too
      // short a stream for the hardware prefetcher. Waiting on those loads was a
      // sixth of this function's time on 64 channels at 56x56.
      if (prefetch_next_channel)
        for (int64_t u = 0; u < kTile; ++u) {
          const int64_t h = (tr0 + rb - rb0) * kTile - pad_top + u;
          if (h >= 0 && h < H)
            for (int64_t x = 0; x < W; x += 64 / int64_t(sizeof(T))) __builtin_prefetch(plane + H * W + h * W + x);
        }
      for (int64_t u = 0; u < kPatch; ++u) {
        const T* padded = e + ((rb - rb0) * kTile + u) * row_pitch;
        // Whole vectors are stored: lanes past the row's tiles land on tiles of
        // the next tile row (written after this one) or in the row's pitch slack;
        // the loads may read past the span, into the row's slack (those lanes unused).
        for (int64_t j0 = 0; j0 < tw; j0 += Gather::kChunk) {
          typename Gather::Vec lo, hi;
          std::memcpy(&lo, padded + j0 * kTile, sizeof(lo));
          std::memcpy(&hi, padded + j0 * kTile + Gather::kLanes, sizeof(hi));
          for (int64_t v = 0; v < kPatch; ++v) {
            const typename Gather::Vec column = __builtin_shuffle(lo, hi, masks[v]);
            std::memcpy(d + (u * kPatch + v) * pitch + rb * tw + j0, &column, sizeof(column));
          }
        }
      }
    }
    rb0 += run;
  }
  // Both passes run over whole vectors of tiles: the tile count rounded up to a
  // vector, with the gathered columns past the last tile (values from beyond the
  // span, or from the slack) set to zero first. Their transforms are then zero
  // too, which is what the GEMM must read in a packed strip's padding columns.
  // With 100 tiles (the 19x19 board in 2x2 tiles), the 4-tile remainders ran as
  // scalar loops, and zeroing the padding with a fill per channel and position
  // took another 9% of a backward-data pass of AlphaGo's input layer.
  const int64_t vec_tiles = vector_tiles<T>(tiles);
  if (vec_tiles > tiles) {
    const typename Gather::Vec zero{};
    for (int64_t r = 0; r < F::kXi; ++r) std::memcpy(d + r * pitch + tiles, &zero, sizeof(zero));  // pitch slack
  }
  // Then, a vector of tiles at a time: ev[i][v] = sum_u B^T[i][u] d[u][v] (for
  // each v, the u-rows kPatch rows apart), and out[i][j] = sum_v ev[i][v] B[v][j]
  // (for each i, the v-rows adjacent), ev (kPatch^2 vectors) staying in L1.
  // Run as two passes over all the block's tiles, through e as whole rows of
  // tiles (6 + 6 x strips loops of a few vectors each, per channel), the
  // backward-data of AlphaGo's input layer by F(2x2, 5x5) ran 10% slower, and
  // the forwards of the AlphaGo body at batch 1 5% and of 64 channels at 56x56
  // 4% (one core, per call alternated).
  // Tiles are written in strips of strip_width, strip_stride apart (the GEMM's
  // packed layout), so no copy is needed afterwards. A vector is written whole
  // where its strip has room for it: in the GEMM's 48-wide strips (its lanes
  // past the last tile are the strip's zero padding), not where one strip is
  // the whole row (the weight gradient's layout, whose rows are other
  // channels' past it): there the last vector's lanes past the tiles are dropped.
  constexpr int64_t kLanes = Gather::kLanes;
  const bool whole_vectors = strip_width % kLanes == 0;
  alignas(64) T ev[kPatch * kPatch * kLanes], last[kPatch * kPatch * kLanes];
  for (int64_t t0 = 0; t0 < vec_tiles; t0 += kLanes) {
    for (int64_t v = 0; v < kPatch; ++v)
      F::input_rows(d + v * pitch + t0, kPatch * pitch, ev + v * kLanes, kPatch * kLanes, kLanes);
    if (whole_vectors || t0 + kLanes <= tiles) {
      T* strip = out + (t0 / strip_width) * strip_stride + t0 % strip_width;
      for (int64_t i = 0; i < kPatch; ++i)
        F::input_rows(ev + i * kPatch * kLanes, kLanes, strip + i * kPatch * out_stride, out_stride, kLanes);
    } else {
      for (int64_t i = 0; i < kPatch; ++i)
        F::input_rows(ev + i * kPatch * kLanes, kLanes, last + i * kPatch * kLanes, kLanes, kLanes);
      for (int64_t xi = 0; xi < F::kXi; ++xi)
        std::copy(last + xi * kLanes, last + xi * kLanes + (tiles - t0), out + xi * out_stride + t0);
    }
  }
}

// The output transform of one filter over the tiles of a block: m[xi * m_stride + t]
// through (.) A over the columns, then A^T over the rows, as vector operations
// across tiles, into y (scratch of kTile * kTile rows of vector_tiles(tiles)),
// then each m x m tile cropped into the image (plane = the filter's plane in
// image 0, image_stride one image's size) with the bias added.
// The transforms run over whole vectors: past the block's tiles they read the
// next row of m (its slack after the last row), and those lanes are never
// cropped into the image. With 100 tiles (AlphaGo's 19x19 board in 2x2 tiles) the
// 4-tile scalar remainders cost 3-4% of its input layer's forward (0.52 -> 0.50 ms).
// Both transforms run on one vector of tiles at a time, the first's kPatch *
// kTile vectors kept in L1 (as the input transform's, see input_tiles): as two
// passes over all the block's tiles through a scratch row per vector, the
// forward ran 4-5% slower on AlphaGo's input layer, its body at batch 1 and 16
// and 64 channels at 56x56 (one core, per call alternated).
template <typename F, typename T>
CONVX_SIMD_CLONES void output_tiles(const T* m, int64_t m_stride, T bias, T* plane, int64_t image_stride,
                                    int64_t OH, int64_t OW, int64_t row0, int64_t rows, int64_t th, int64_t tw,
                                    T* y) {
  constexpr int64_t kTile = F::kTile, kPatch = F::kPatch, kLanes = 64 / int64_t(sizeof(T));
  const int64_t tiles = vector_tiles<T>(rows * tw);  // y's row pitch
  alignas(64) T f[kPatch * kTile * kLanes];
  for (int64_t t0 = 0; t0 < tiles; t0 += kLanes) {
    // f[i][j'] = sum_j m[i][j] A[j][j']: the j-rows of one i are m_stride apart.
    for (int64_t i = 0; i < kPatch; ++i)
      F::output_rows(m + i * kPatch * m_stride + t0, m_stride, f + i * kTile * kLanes, kLanes, kLanes);
    // y[r][j'] = sum_i A^T[r][i] f[i][j']: for each j', the i-rows are kTile rows apart.
    for (int64_t jj = 0; jj < kTile; ++jj)
      F::output_rows(f + jj * kLanes, kTile * kLanes, y + jj * tiles + t0, kTile * tiles, kLanes);
  }
  for (int64_t rb = 0; rb < rows; ++rb) {
    const int64_t n = (row0 + rb) / th, tr = (row0 + rb) % th;
    T* image = plane + n * image_stride;
    for (int64_t r = 0; r < kTile; ++r) {
      const int64_t oh = tr * kTile + r;
      if (oh >= OH) break;
      T* __restrict dst = image + oh * OW;
      const T* __restrict src[kTile];
      for (int64_t jj = 0; jj < kTile; ++jj) src[jj] = y + (r * kTile + jj) * tiles + rb * tw;
      // Tiles lying wholly inside the row interleave their kTile columns with no
      // bounds test (a per-element test kept this loop scalar); the tile over the
      // right edge, if any, writes only its columns inside.
      const int64_t whole = std::min(tw, OW / kTile);
      for (int64_t j = 0; j < whole; ++j)
#pragma GCC unroll 4
        for (int64_t jj = 0; jj < kTile; ++jj) dst[j * kTile + jj] = src[jj][j] + bias;
      for (int64_t j = whole; j < tw; ++j)
        for (int64_t jj = 0; jj < kTile && j * kTile + jj < OW; ++jj) dst[j * kTile + jj] = src[jj][j] + bias;
    }
  }
}

struct WinogradShape {
  int64_t N, C, H, W;   // input
  int64_t K, OH, OW;    // output
  int64_t pad_top, pad_left;  // output (oh, ow) reads input rows oh - pad_top + 0..2 (may be negative)
  int64_t tiles_h(int64_t tile) const { return (OH + tile - 1) / tile; }
  int64_t tiles_w(int64_t tile) const { return (OW + tile - 1) / tile; }
};

// The tiles of a block are the N of its GEMMs, which run in strips of `strip`
// columns (48 floats); a last strip of 1 or 2 vectors still pays for 8
// broadcasts per step, so it costs about 32 or 40 columns' time against 48 for a
// full one. Among block heights from half the largest to the largest, pick the
// one whose blocks cost least in all: on the 19x19 board (10 tiles per row, 160
// tile rows at batch 16) 24 rows make 240 = 5 x 48 tiles, where 34 rows left a
// 4-tile strip per block, 3% of the layer's time.
int64_t rows_per_gemm_block(int64_t tile_rows, int64_t tw, int64_t largest, int64_t strip) {
  const auto block_cost = [&](int64_t tiles) {
    const int64_t full = tiles / strip, rest = tiles % strip, lanes = strip / 3;
    const int64_t tail = rest == 0 ? 0 : (rest <= lanes ? 32 : rest <= 2 * lanes ? 40 : 48);
    return full * 48 + tail;
  };
  int64_t best = largest, best_cost = -1;
  for (int64_t rows = largest; rows >= std::max<int64_t>(1, largest / 2); --rows) {
    const int64_t cost = (tile_rows / rows) * block_cost(rows * tw) + block_cost((tile_rows % rows) * tw);
    if (best_cost < 0 || cost < best_cost) best = rows, best_cost = cost;
  }
  return best;
}

// out[n, k, oh, ow] = sum_{c, r, s} in[n, c, oh - pad_top + r, ow - pad_left + s] * g_kc[r][s]
// (+ bias[k]), zero outside the input, with g_kc the filter from input channel c
// to output channel k in `weight` (read rotated for backward-data, see
// transform_filters). U, the kXi transformed filter matrices packed for the
// GEMM, is made for one slice of output channels at a time.
template <typename F, typename T>
void winograd_conv(const WinogradShape& sh, const T* input, const T* weight, bool rotate, const T* bias,
                   T* output) {
  constexpr int64_t kTile = F::kTile, kXi = F::kXi;
  const int64_t th = sh.tiles_h(kTile), tw = sh.tiles_w(kTile);
  const int64_t C = sh.C, K = sh.K;
  const int64_t tile_rows = sh.N * th;  // (n, tile row) pairs, processed in blocks
  const WinogradBlocking cut =
      winograd_blocking(kXi, C, K, tile_rows, tw, forward_budget.load(), kForwardFilterShare, sizeof(T));
  // Whole tile rows per block, but no more than make the GEMMs' last strips the
  // cheapest (see rows_per_gemm_block).
  const int64_t rows_per_block = rows_per_gemm_block(tile_rows, tw, cut.rows, gemm_micro_tile_cols<T>());
  const int64_t blocks = (tile_rows + rows_per_block - 1) / rows_per_block;
  const int64_t max_tiles = rows_per_block * tw;
  // V is written by the input transform straight into the GEMM's packed-B layout,
  // so the products read it without another copy; U likewise in the packed-A one.
  // Uninitialized: every element is written before it is read, but for M's slack
  // of one vector, which the output transform reads past the last row (zero).
  const int64_t m_size = kXi * cut.slice * max_tiles, m_slack = vector_tiles<T>(1);
  Scratch<T> U(kXi * gemm_packed_a_size<T>(cut.slice, C)), V(kXi * gemm_packed_b_size<T>(C, max_tiles)),
      M(m_size + m_slack);
  std::fill(M.data() + m_size, M.data() + m_size + m_slack, T(0));
  const bool parallel = worth_threads(kXi, C, cut.slice, max_tiles);
  const bool prefetch = prefetch_input(sh.N * C * sh.H * sh.W * int64_t(sizeof(T)));
  // With several slices and several blocks, one of U and V is made more than
  // once: slices outside repeat the input transform (C x tiles per extra
  // slice), blocks outside repeat the filter transform (K x C per extra block);
  // both cost about the same per transformed element.
  const bool slices_outside = double(cut.slices - 1) * double(C) * double(tile_rows * tw) <=
                              double(blocks - 1) * double(K) * double(C);
  const int64_t outer = slices_outside ? cut.slices : blocks, inner = slices_outside ? blocks : cut.slices;
  int64_t u_slice = -1, v_block = -1;  // what U and V hold now

  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      const int64_t s = slices_outside ? o : i, block = slices_outside ? i : o;
      const ChannelSlice slice{s * cut.slice, std::min(cut.slice, K - s * cut.slice)};
      const int64_t row0 = block * rows_per_block, rows = std::min(rows_per_block, tile_rows - row0);
      const int64_t tiles = rows * tw;
      const int64_t b_size = gemm_packed_b_size<T>(C, tiles);
      if (s != u_slice) {
        transform_filters<F>(weight, K, C, rotate, slice, U.data());
        u_slice = s;
      }
      if (block != v_block) {
        // Input transform, one channel at a time across all tiles of the block,
        // written straight into the GEMM's packed-B layout.
#pragma omp parallel if (parallel)
        {
          const int64_t scratch = PatchGather<F, T>::scratch_size(tiles);
          Scratch<T> d(scratch), e(scratch);
#pragma omp for schedule(static)
          for (int64_t c = 0; c < C; ++c) {
            const PackedBRow row = gemm_packed_b_row<T>(C, tiles, c);
            input_tiles<F>(input + c * sh.H * sh.W, C * sh.H * sh.W, sh.H, sh.W, sh.pad_top, sh.pad_left, row0,
                           rows, th, tw, d.data(), e.data(), V.data() + row.base, b_size, row.nr, row.strip_stride,
                           prefetch && c + 1 < C);
          }
        }
        v_block = block;
      }

      // kXi independent products: threads take whole products (the GEMM inside
      // then runs on the calling thread alone, as nested OpenMP regions do by
      // default), rather than meeting at the GEMM's barriers several times per
      // product; each product is computed as on one thread, so results do not
      // depend on the thread count.
      const int64_t ks = slice.count, a_stride = gemm_packed_a_size<T>(ks, C);  // as transform_filters wrote U
#pragma omp parallel for schedule(static) if (parallel)
      for (int64_t xi = 0; xi < kXi; ++xi)
        gemm_packed_cpu<T>(ks, tiles, C, U.data() + xi * a_stride, V.data() + xi * b_size, M.data() + xi * ks * tiles,
                           tiles);

      // Output transform, one filter at a time across all tiles of the block:
      // (.) A over the patch's columns, then A^T over its rows, as vector
      // operations across tiles; then crop each m x m tile into the image and
      // add the bias.
#pragma omp parallel if (parallel)
      {
        Scratch<T> y(kTile * kTile * vector_tiles<T>(tiles));
#pragma omp for schedule(static)
        for (int64_t k = 0; k < ks; ++k) {
          const int64_t kk = slice.begin + k;
          output_tiles<F>(M.data() + k * tiles, ks * tiles, bias ? bias[kk] : T(0), output + kk * sh.OH * sh.OW,
                          K * sh.OH * sh.OW, sh.OH, sh.OW, row0, rows, th, tw, y.data());
        }
      }
    }
}

}  // namespace

std::pair<double, double> conv2d_winograd_set_budgets(double forward_bytes, double weight_bytes) {
  const std::pair<double, double> before{forward_budget.load(), weight_budget.load()};
  if (forward_bytes > 0) forward_budget = forward_bytes;
  if (weight_bytes > 0) weight_budget = weight_bytes;
  return before;
}

bool conv2d_winograd_applies(const Conv2dParams& p, int64_t tile) {
  const bool kernel = p.R == p.S && (p.R == 3 || (tile == 2 && p.R == 5));
  return kernel && p.stride_h == 1 && p.stride_w == 1 && p.dilation_h == 1 && p.dilation_w == 1 && p.groups == 1;
}

template <typename T>
void conv2d_forward_winograd_cpu(const Conv2dParams& p, const T* input, const T* weight, const T* bias,
                                 T* output, int64_t tile) {
  if (p.N == 0) return;
  const WinogradShape sh{p.N, p.C, p.H, p.W, p.K, p.out_h(), p.out_w(), p.pad_top, p.pad_left};
  with_winograd_policy(tile, p.R, [&](auto policy) {
    winograd_conv<decltype(policy)>(sh, input, weight, false, bias, output);
  });
}

// grad_input[c, h, w] = sum_{k, r, s} grad_output[k, h + pad_top - r, w + pad_left - s] * weight[k, c, r, s]
// With r' = R - 1 - r this is a forward R x R convolution of grad_output whose rows
// are read from h - (R - 1 - pad_top) + r': the same kernel with pad_top' =
// R - 1 - pad_top (negative when pad_top > R - 1, which the tile loader handles),
// output size H x W.
template <typename T>
void conv2d_backward_data_winograd_cpu(const Conv2dParams& p, const T* grad_output, const T* weight,
                                       T* grad_input, int64_t tile) {
  if (p.N == 0) return;
  const WinogradShape sh{p.N, p.K, p.out_h(), p.out_w(), p.C,
                         p.H, p.W, p.R - 1 - p.pad_top, p.S - 1 - p.pad_left};
  const T* no_bias = nullptr;
  with_winograd_policy(tile, p.R, [&](auto policy) {
    winograd_conv<decltype(policy)>(sh, grad_output, weight, true, no_bias, grad_input);
  });
}

namespace {

// The weight gradient's transform of one filter's output gradient over the tiles
// of a block: gather the m x m tiles y (zero past the image edge), then
// (A y A^T)[xi] with F::grad_rows along each axis, as vector operations across
// tiles, into out[xi * out_stride + t]. y is scratch (kTile^2 rows of tiles).
template <typename F, typename T>
CONVX_SIMD_CLONES void grad_output_tiles(const T* plane0, int64_t image_stride, int64_t OH, int64_t OW, int64_t row0,
                                         int64_t rows, int64_t th, int64_t tw, T* y, T* out, int64_t out_stride) {
  constexpr int64_t kTile = F::kTile, kPatch = F::kPatch;
  const int64_t tiles = rows * tw;
  for (int64_t rb = 0; rb < rows; ++rb) {
    const int64_t n = (row0 + rb) / th, tr = (row0 + rb) % th;
    const T* plane = plane0 + n * image_stride;
    for (int64_t i = 0; i < kTile; ++i) {
      const int64_t oh = tr * kTile + i;
      T* __restrict cols[kTile];  // cols[jj][tc]: column kTile * tc + jj of the row
      for (int64_t jj = 0; jj < kTile; ++jj) cols[jj] = y + (i * kTile + jj) * tiles + rb * tw;
      if (oh >= OH) {
        for (int64_t jj = 0; jj < kTile; ++jj) std::fill(cols[jj], cols[jj] + tw, T(0));
        continue;
      }
      // Tiles whose columns all exist split the row into its kTile column phases
      // with no bounds tests (a loop the compiler vectorizes); the tile past the
      // right edge, if any, is zero-padded. A per-element bounds test here cost a
      // quarter of the weight gradient's time on 64 channels at 56x56.
      const T* __restrict row = plane + oh * OW;
      const int64_t whole = std::min(tw, OW / kTile);
      for (int64_t tc = 0; tc < whole; ++tc)
#pragma GCC unroll 4
        for (int64_t jj = 0; jj < kTile; ++jj) cols[jj][tc] = row[kTile * tc + jj];
      for (int64_t tc = whole; tc < tw; ++tc)
        for (int64_t jj = 0; jj < kTile; ++jj) cols[jj][tc] = kTile * tc + jj < OW ? row[kTile * tc + jj] : T(0);
    }
  }
  // One vector of tiles at a time, a kept in L1 (as in input_tiles): as two
  // passes over all the block's tiles the weight gradient ran 1-3% slower on
  // AlphaGo's input layer and its body (one core, per call alternated). y's rows
  // and out's are `tiles` long, not whole vectors: the last vector's count is
  // a variable, the others' a constant (no remainder loop).
  constexpr int64_t kLanes = 64 / int64_t(sizeof(T));
  alignas(64) T a[kPatch * kTile * kLanes];
  const auto transform = [&](int64_t t0, auto n) {
    // over i: a[u][j] = (A y[., j])_u, for each column j (the i-rows kTile rows apart)
    for (int64_t j = 0; j < kTile; ++j)
      F::grad_rows(y + j * tiles + t0, kTile * tiles, a + j * kLanes, kTile * kLanes, int64_t(n));
    // over j: out[u][v] = (A a[u, .])_v (the j-rows of one u adjacent)
    for (int64_t u = 0; u < kPatch; ++u)
      F::grad_rows(a + u * kTile * kLanes, kLanes, out + u * kPatch * out_stride + t0, out_stride, int64_t(n));
  };
  int64_t t0 = 0;
  for (; t0 + kLanes <= tiles; t0 += kLanes) transform(t0, std::integral_constant<int64_t, kLanes>{});
  if (t0 < tiles) transform(t0, tiles - t0);
}

constexpr int64_t kWeightChunk = 64;

// The weight gradient's last step for filters kc0 .. kc0 + n - 1 (n <= kWeightChunk):
// dW[kc] = G^T P[.][kc] G, with P[xi] the xi-th product (filters entries apart).
// Filters are vector lanes, so each step reads whole runs of one product: one
// filter at a time read its kXi values a product apart (a cache line each), which
// was a fifth of F(3x3, 4x4)'s time on 192 channels. The loops over G's entries
// are unrolled, so each is a constant and its zeros are skipped at compile time,
// and a full chunk is written through 8 x 8 register transposes (a filter's taps
// are adjacent in dW). Against the loop before, which tested G's entries at run
// time and stored one value at a time, whole weight gradients on one core (C++
// harness): 512 channels on 7x7 at batch 8 (F(3x3, 4x4)) 6.7 -> 5.4-5.8 ms, the
// AlphaGo body at batch 1 (F(3x3, 2x2)) 0.86 -> 0.76-0.79 ms, its 5x5 input layer
// (F(5x5, 2x2)) 0.68 -> 0.55-0.57 ms.
template <typename F, typename T>
CONVX_SIMD_CLONES void weights_from_products(const T* P, int64_t filters, int64_t kc0, int64_t n, T* grad_weight) {
  constexpr int64_t kPatch = F::kPatch, R = F::kR, kTaps = R * R;
  constexpr int64_t kLanes = 64 / int64_t(sizeof(T));
  typedef T Vec __attribute__((vector_size(64)));
  const int64_t vecs = (n + kLanes - 1) / kLanes;
  alignas(64) T q[kPatch][R][kWeightChunk];  // P G
#pragma GCC unroll 6
  for (int64_t u = 0; u < kPatch; ++u)
#pragma GCC unroll 5
    for (int64_t s = 0; s < R; ++s)
      for (int64_t v = 0; v < vecs; ++v) {
        Vec acc = {};
#pragma GCC unroll 6
        for (int64_t b = 0; b < kPatch; ++b) {
          if (F::G[b][s] == 0) continue;
          // whole vectors but the last of a short chunk, zero past filter n (P may end there)
          const T* from = P + (u * kPatch + b) * filters + kc0 + v * kLanes;
          Vec x = {};
          if ((v + 1) * kLanes <= n)
            std::memcpy(&x, from, sizeof(Vec));
          else
            std::memcpy(&x, from, (n - v * kLanes) * sizeof(T));
          acc += x * T(F::G[b][s]);
        }
        std::memcpy(&q[u][s][v * kLanes], &acc, sizeof(Vec));
      }
  alignas(64) T w[kTaps][kWeightChunk];  // G^T (P G)
#pragma GCC unroll 5
  for (int64_t r = 0; r < R; ++r)
#pragma GCC unroll 5
    for (int64_t s = 0; s < R; ++s)
      for (int64_t v = 0; v < vecs; ++v) {
        Vec acc = {};
#pragma GCC unroll 6
        for (int64_t u = 0; u < kPatch; ++u) {
          if (F::G[u][r] == 0) continue;
          Vec x;
          std::memcpy(&x, &q[u][s][v * kLanes], sizeof(Vec));
          acc += x * T(F::G[u][r]);
        }
        std::memcpy(&w[r * R + s][v * kLanes], &acc, sizeof(Vec));
      }
  T* out = grad_weight + kc0 * kTaps;
  int64_t e0 = 0;
  if (n == kWeightChunk)
    for (; e0 < kWeightChunk; e0 += 8) {
      int64_t j0 = 0;
      for (; j0 + 8 <= kTaps; j0 += 8) {
        T* dst[8];
        for (int64_t e = 0; e < 8; ++e) dst[e] = out + (e0 + e) * kTaps + j0;
        transpose_8x8(&w[j0][e0], kWeightChunk, dst);
      }
      for (int64_t j = j0; j < kTaps; ++j)
        for (int64_t e = e0; e < e0 + 8; ++e) out[e * kTaps + j] = w[j][e];
    }
  for (int64_t e = e0; e < n; ++e)
    for (int64_t j = 0; j < kTaps; ++j) out[e * kTaps + j] = w[j][e];
}

// The weight gradient's transforms run across the tiles of a block, 16 floats a
// vector; a block of 16k + 6 tiles finishes each row with 6 scalar steps, which
// on 192 channels at 19x19 (150-tile blocks) took 40% of the output-gradient
// transform. Among heights from half the largest to the largest, prefer blocks
// whose tile count is a multiple of 16 (then of 8), the tallest such.
int64_t rows_per_vector_block(int64_t tile_rows, int64_t tw, int64_t largest) {
  if (largest >= tile_rows) return tile_rows;
  for (const int64_t lanes : {16, 8})
    for (int64_t rows = largest; rows >= std::max<int64_t>(1, largest / 2); --rows)
      if ((rows * tw) % lanes == 0) return rows;
  return largest;
}

// ---- backward-weight: F(3x3, 2x2), F(3x3, 4x4) and F(5x5, 2x2) ---------------------
// grad_weight[k, c, r, s] = sum_{n, oh, ow} grad_output[n, k, oh, ow] * input[n, c, oh - pad_top + r, ow - pad_left + s].
// Cut grad_output into 2x2 tiles y; each meets a 4x4 input patch x (the same
// patches as the forward F(2x2) tiles), and its contribution to the 3x3 gradient
// is the correlation of x with y: F(3x3, 2x2), the transpose of F(2x2, 3x3)
// (transposition principle: z = G^T [(A y) .* (B^T x)] in 1-D). In 2-D
//     dW += G^T [ (A y A^T) .* (B^T x B) ] G,
// and the sum over tiles of the element-wise products is, per xi, one GEMM:
//     P[xi] (K x C) += Y[xi] (K x tiles) * X[xi]^T (tiles x C),
// with dW = G^T P G per filter at the end. 16 products per 2x2 tile instead of
// 36 multiply-adds per tile and filter tap pair: 2.25x fewer multiplies, with
// F(2x2)'s small transform entries (0, +-1, 1/2), so about a GEMM's accuracy.
// F(3x3, 4x4), the transpose of F(4x4, 3x3), is the same with 4x4 tiles and 6x6
// patches: 36 products per 16 outputs, 4x fewer multiplies; and F(5x5, 2x2), the
// transpose of F(2x2, 5x5), with 2x2 tiles, 6x6 patches and a 5x5 gradient.
template <typename F, typename T>
void winograd_backward_weight(const Conv2dParams& p, const T* grad_output, const T* input, T* grad_weight) {
  constexpr int64_t kTile = F::kTile, kXi = F::kXi;
  const int64_t C = p.C, K = p.K, OH = p.out_h(), OW = p.out_w();
  if (p.N == 0) {
    std::fill(grad_weight, grad_weight + K * C * F::kR * F::kR, T(0));
    return;
  }
  const int64_t th = (OH + kTile - 1) / kTile, tw = (OW + kTile - 1) / kTile;
  const int64_t tile_rows = p.N * th;
  const WinogradBlocking cut =
      winograd_blocking(kXi, C, K, tile_rows, tw, weight_budget.load(), kWeightFilterShare, sizeof(T),
                        kWeightTileBytes);
  const int64_t rows_per_block = rows_per_vector_block(tile_rows, tw, cut.rows);
  const int64_t max_tiles = rows_per_block * tw;
  Scratch<T> X(kXi * C * max_tiles), Y(kXi * cut.slice * max_tiles), P(kXi * cut.slice * C);
  const bool prefetch = prefetch_input(p.N * C * p.H * p.W * int64_t(sizeof(T)));
  const bool parallel = worth_threads(kXi, C, cut.slice, max_tiles);
  int64_t x_block = -1;  // the block X holds now (with one block, made once for all slices)

  // Slices outside: P accumulates a slice's products over every block.
  for (int64_t s = 0; s < cut.slices; ++s) {
    const ChannelSlice slice{s * cut.slice, std::min(cut.slice, K - s * cut.slice)};
    const int64_t ks = slice.count;
    for (int64_t row0 = 0; row0 < tile_rows; row0 += rows_per_block) {
      const int64_t rows = std::min(rows_per_block, tile_rows - row0);
      const int64_t tiles = rows * tw;
      const bool make_x = row0 != x_block;
      x_block = row0;
#pragma omp parallel if (parallel)
      {
        const int64_t scratch = PatchGather<F, T>::scratch_size(tiles);
        Scratch<T> d(scratch), e(scratch);
        // Input patches: X[xi][c][t] = (B^T x B)[xi], the forward's input transform.
        if (make_x) {
#pragma omp for schedule(static) nowait
          for (int64_t c = 0; c < C; ++c) {
            input_tiles<F>(input + c * p.H * p.W, C * p.H * p.W, p.H, p.W, p.pad_top, p.pad_left, row0, rows, th,
                           tw, d.data(), e.data(), X.data() + c * tiles, C * tiles, tiles, 0, prefetch && c + 1 < C);
          }
        }
        // Output-gradient tiles of the slice: Y[xi][k][t] = (A y A^T)[xi].
#pragma omp for schedule(static)
        for (int64_t k = 0; k < ks; ++k)
          grad_output_tiles<F>(grad_output + (slice.begin + k) * OH * OW, K * OH * OW, OH, OW, row0, rows, th, tw,
                               d.data(), Y.data() + k * tiles, ks * tiles);
      }
      // Blocks accumulate in a fixed order: bitwise repeatable for any thread count.
      // Threads take whole products, as in the forward.
#pragma omp parallel for schedule(static) if (parallel)
      for (int64_t xi = 0; xi < kXi; ++xi)
        gemm_cpu<T>(false, true, ks, C, tiles, Y.data() + xi * ks * tiles, tiles, X.data() + xi * C * tiles, tiles,
                    row0 == 0 ? T(0) : T(1), P.data() + xi * ks * C, C);
    }

    // dW[k][c] = G^T P[.][k][c] G, for chunks of the slice's filters at a time
    // (see weights_from_products)
    const int64_t filters = ks * C, chunks = (filters + kWeightChunk - 1) / kWeightChunk;
#pragma omp parallel for schedule(static) if (filters > 4096)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t kc0 = chunk * kWeightChunk;
      weights_from_products<F>(P.data(), filters, kc0, std::min(kWeightChunk, filters - kc0),
                               grad_weight + slice.begin * C * F::kR * F::kR);
    }
  }
}

}  // namespace

template <typename T>
void conv2d_backward_weight_winograd_cpu(const Conv2dParams& p, const T* grad_output, const T* input, T* grad_weight,
                                         int64_t tile) {
  with_winograd_policy(tile, p.R, [&](auto policy) {
    winograd_backward_weight<decltype(policy)>(p, grad_output, input, grad_weight);
  });
}

template void conv2d_backward_weight_winograd_cpu<float>(const Conv2dParams&, const float*, const float*, float*,
                                                         int64_t);
template void conv2d_backward_weight_winograd_cpu<double>(const Conv2dParams&, const double*, const double*,
                                                          double*, int64_t);
template void conv2d_forward_winograd_cpu<float>(const Conv2dParams&, const float*, const float*, const float*,
                                                 float*, int64_t);
template void conv2d_forward_winograd_cpu<double>(const Conv2dParams&, const double*, const double*,
                                                  const double*, double*, int64_t);
template void conv2d_backward_data_winograd_cpu<float>(const Conv2dParams&, const float*, const float*, float*,
                                                       int64_t);
template void conv2d_backward_data_winograd_cpu<double>(const Conv2dParams&, const double*, const double*,
                                                        double*, int64_t);

}  // namespace convx
