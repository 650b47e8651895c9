// conv2d by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, 2016), for
// 3x3 filters with stride 1, dilation 1 and one group: forward, and backward-data,
// which for such a layer is itself a 3x3 stride-1 convolution (of the output
// gradient, with the filters rotated by 180 degrees and in/out channels swapped).
//
// The output is cut into 4x4 tiles; each reads a 6x6 input patch d (tiles overlap
// by 2). With the 6x6 transforms below, one tile of one filter is
//     Y = A^T [ (G g G^T) .* (B^T d B) ] A,
// so the 36 element-wise products replace 16 * 9 = 144 multiply-adds: 4x fewer.
// Summing over input channels turns the element-wise product into 36 independent
// matrix products, one per position xi of the 6x6 transform domain:
//     M[xi] (K x tiles) = U[xi] (K x C) * V[xi] (C x tiles)
// which run on the packed GEMM. Tiles are processed in blocks of whole tile rows,
// so the workspace (V and M for one block) stays bounded, whatever the image size.
//
// The transforms (points 0, 1, -1, 2, -2 and infinity):
//   B^T = [ 4  0 -5  0  1  0 ]   G = [  1/4     0     0  ]   A^T = [ 1  1  1  1  1  0 ]
//         [ 0 -4 -4  1  1  0 ]       [ -1/6  -1/6  -1/6  ]         [ 0  1 -1  2 -2  0 ]
//         [ 0  4 -4 -1  1  0 ]       [ -1/6   1/6  -1/6  ]         [ 0  1  1  4  4  0 ]
//         [ 0 -2 -1  2  1  0 ]       [ 1/24  1/12   1/6  ]         [ 0  1 -1  8 -8  1 ]
//         [ 0  2 -1 -2  1  0 ]       [ 1/24 -1/12   1/6  ]
//         [ 0  4  0 -5  0  1 ]       [   0     0     1   ]
// Their error grows with the tile size; in float32 F(4x4, 3x3) stays near 1e-6
// relative on the test layers (the tests bound it by 1e-4 against a float64
// reference), which is why larger tiles such as F(6x6, 3x3) are not used.
#include <omp.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "convx/conv2d.h"
#include "convx/gemm.h"

namespace convx {
namespace {

constexpr int64_t kTile = 4;   // output tile edge
constexpr int64_t kPatch = 6;  // input patch edge = tile + 3 - 1
constexpr int64_t kXi = kPatch * kPatch;

// About this many bytes of V and M per block of tile rows: enough columns for the
// GEMMs to amortize packing U, little enough to stay near the caches.
constexpr double kBlockBytes = 8.0 * 1024 * 1024;

// U[xi][o][i] = (G g G^T)[xi] for the filter g from input channel i to output
// channel o. `rotate` reads the filter of the backward-data convolution from the
// forward weight: g[r][s] = weight[i][o][2 - r][2 - s]. Filters go in chunks laid
// out lane by lane (g[r][s][e]), so every step below is a vector operation across
// kChunk filters, and each of the 36 output rows is written in contiguous runs.
template <typename T>
void transform_filters(const T* weight, int64_t out_channels, int64_t in_channels, bool rotate, T* U) {
  const T G[6][3] = {{T(1.0 / 4), 0, 0},
                     {T(-1.0 / 6), T(-1.0 / 6), T(-1.0 / 6)},
                     {T(-1.0 / 6), T(1.0 / 6), T(-1.0 / 6)},
                     {T(1.0 / 24), T(1.0 / 12), T(1.0 / 6)},
                     {T(1.0 / 24), T(-1.0 / 12), T(1.0 / 6)},
                     {0, 0, 1}};
  const int64_t plane = out_channels * in_channels;
  constexpr int64_t kChunk = 64;
  const int64_t chunks = (plane + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (plane > 4096)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t first = chunk * kChunk, count = std::min(kChunk, plane - first);
    T g[3][3][kChunk] = {};
    for (int64_t e = 0; e < count; ++e) {
      const int64_t oi = first + e, o = oi / in_channels, i = oi % in_channels;
      for (int r = 0; r < 3; ++r)
        for (int s = 0; s < 3; ++s)
          g[r][s][e] = rotate ? weight[((i * out_channels + o) * 3 + 2 - r) * 3 + 2 - s]
                              : weight[((o * in_channels + i) * 3 + r) * 3 + s];
    }
    T Gg[6][3][kChunk];  // G g
    for (int a = 0; a < 6; ++a)
      for (int s = 0; s < 3; ++s)
        for (int64_t e = 0; e < kChunk; ++e)
          Gg[a][s][e] = G[a][0] * g[0][s][e] + G[a][1] * g[1][s][e] + G[a][2] * g[2][s][e];
    T u[kXi][kChunk];  // (G g) G^T
    for (int a = 0; a < 6; ++a)
      for (int b = 0; b < 6; ++b)
        for (int64_t e = 0; e < kChunk; ++e)
          u[a * 6 + b][e] = Gg[a][0][e] * G[b][0] + Gg[a][1][e] * G[b][1] + Gg[a][2][e] * G[b][2];
    for (int64_t xi = 0; xi < kXi; ++xi) std::copy(u[xi], u[xi] + count, U + xi * plane + first);
  }
}

// The 36 transformed filter matrices, each packed for the GEMM's A operand.
template <typename T>
std::unique_ptr<T[]> transformed_filters(const T* weight, int64_t out_channels, int64_t in_channels, bool rotate) {
  const int64_t plane = out_channels * in_channels, a_size = gemm_packed_a_size<T>(out_channels, in_channels);
  std::unique_ptr<T[]> U(new T[kXi * plane]), packed(new T[kXi * a_size]);
  transform_filters(weight, out_channels, in_channels, rotate, U.get());
  for (int64_t xi = 0; xi < kXi; ++xi)
    gemm_pack_a<T>(out_channels, in_channels, U.get() + xi * plane, in_channels, packed.get() + xi * a_size);
  return packed;
}

// y[0..5] = B^T x[0..5], with x and y strided (the same code serves rows and columns).
template <typename T>
inline void input_transform_1d(const T* x, int64_t xs, T* y, int64_t ys) {
  const T x0 = x[0], x1 = x[xs], x2 = x[2 * xs], x3 = x[3 * xs], x4 = x[4 * xs], x5 = x[5 * xs];
  y[0] = T(4) * x0 - T(5) * x2 + x4;
  y[ys] = -T(4) * (x1 + x2) + x3 + x4;
  y[2 * ys] = T(4) * (x1 - x2) - x3 + x4;
  y[3 * ys] = T(2) * (x3 - x1) - x2 + x4;
  y[4 * ys] = T(2) * (x1 - x3) - x2 + x4;
  y[5 * ys] = T(4) * x1 - T(5) * x3 + x5;
}

// y[0..3] = A^T x[0..5].
template <typename T>
inline void output_transform_1d(const T* x, int64_t xs, T* y, int64_t ys) {
  const T x0 = x[0], x1 = x[xs], x2 = x[2 * xs], x3 = x[3 * xs], x4 = x[4 * xs], x5 = x[5 * xs];
  const T p12 = x1 + x2, m12 = x1 - x2, p34 = x3 + x4, m34 = x3 - x4;
  y[0] = x0 + p12 + p34;
  y[ys] = m12 + T(2) * m34;
  y[2 * ys] = p12 + T(4) * p34;
  y[3 * ys] = m12 + T(8) * m34 + x5;
}

struct WinogradShape {
  int64_t N, C, H, W;   // input
  int64_t K, OH, OW;    // output
  int64_t pad_top, pad_left;  // output (oh, ow) reads input rows oh - pad_top + 0..2 (may be negative)
  int64_t tiles_h() const { return (OH + kTile - 1) / kTile; }
  int64_t tiles_w() const { return (OW + kTile - 1) / kTile; }
};

// out[n, k, oh, ow] = sum_{c, r, s} in[n, c, oh - pad_top + r, ow - pad_left + s] * g_kc[r][s]
// (+ bias[k]), zero outside the input, with U the transformed filters.
// U_packed: the 36 transformed filter matrices (K x C each), packed for the GEMM,
// gemm_packed_a_size(K, C) apart.
template <typename T>
void winograd_f4x3(const WinogradShape& sh, const T* input, const T* U_packed, const T* bias, T* output) {
  const int64_t th = sh.tiles_h(), tw = sh.tiles_w();
  const int64_t C = sh.C, K = sh.K;
  const int64_t tile_rows = sh.N * th;  // (n, tile row) pairs, processed in blocks
  // Tile columns are padded to a whole number of GEMM strips' worth of work only
  // through the block size; each block holds whole tile rows.
  const double bytes_per_tile = double(kXi) * double(C + K) * sizeof(T);
  const int64_t rows_per_block =
      std::max<int64_t>(1, std::min<int64_t>(tile_rows, int64_t(kBlockBytes / bytes_per_tile) / tw));
  const int64_t max_tiles = rows_per_block * tw;
  // V is written by the input transform straight into the GEMM's packed-B layout,
  // so the 36 products read it without another copy.
  const int64_t a_size = gemm_packed_a_size<T>(K, C);
  // Uninitialized (new T[], not std::vector): every element is written before it is read.
  std::unique_ptr<T[]> V(new T[kXi * gemm_packed_b_size<T>(C, max_tiles)]), M(new T[kXi * K * max_tiles]);
  // Padded width of one tile row's input span: tw tiles of 4 plus the 2-column overlap.
  const int64_t span = tw * kTile + 2;
  const bool parallel = double(C + K) * double(max_tiles) > 16384.0;

  for (int64_t row0 = 0; row0 < tile_rows; row0 += rows_per_block) {
    const int64_t rows = std::min(rows_per_block, tile_rows - row0);
    const int64_t tiles = rows * tw;
    const int64_t b_size = gemm_packed_b_size<T>(C, tiles);
    const int64_t padded_tiles = b_size / C;

    // Input transform: V[xi][c][t]. Columns first (B^T d, vectorized across the
    // row), then each tile's 6 columns (d' B).
#pragma omp parallel if (parallel)
    {
      std::vector<T> patch_rows(kPatch * span), colt(kPatch * span);
#pragma omp for collapse(2) schedule(static)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t rb = 0; rb < rows; ++rb) {
          const int64_t n = (row0 + rb) / th, tr = (row0 + rb) % th;
          const T* plane = input + (n * C + c) * sh.H * sh.W;
          for (int64_t j = 0; j < kPatch; ++j) {
            const int64_t h = tr * kTile - sh.pad_top + j;
            T* dst = patch_rows.data() + j * span;
            if (h < 0 || h >= sh.H) {
              std::fill(dst, dst + span, T(0));
              continue;
            }
            const T* src = plane + h * sh.W;
            for (int64_t x = 0; x < span; ++x) {
              const int64_t w = x - sh.pad_left;
              dst[x] = (w >= 0 && w < sh.W) ? src[w] : T(0);
            }
          }
          for (int64_t x = 0; x < span; ++x) input_transform_1d(patch_rows.data() + x, span, colt.data() + x, span);
          const PackedBRow row = gemm_packed_b_row<T>(C, tiles, c);
          T* v = V.get();
          for (int64_t i = 0; i < kPatch; ++i)
            for (int64_t t = 0; t < tw; ++t) {
              T out[kPatch];
              input_transform_1d(colt.data() + i * span + t * kTile, 1, out, 1);
              const int64_t at = row.at(rb * tw + t);
              for (int64_t j = 0; j < kPatch; ++j) v[(i * kPatch + j) * b_size + at] = out[j];
            }
          // The padding columns of the last strip must read as zero.
          if (rb == rows - 1)
            for (int64_t xi = 0; xi < kXi; ++xi)
              for (int64_t t = tiles; t < padded_tiles; ++t) v[xi * b_size + row.at(t)] = T(0);
        }
    }

    // 36 independent products, each threaded inside the GEMM.
    for (int64_t xi = 0; xi < kXi; ++xi)
      gemm_packed_cpu<T>(K, tiles, C, U_packed + xi * a_size, V.get() + xi * b_size, M.get() + xi * K * tiles,
                         tiles);

    // Output transform: each tile's 6x6 block of M through A^T (rows), then the
    // 6 rows through A^T (columns), crop to the image, add the bias.
#pragma omp parallel if (parallel)
    {
      std::vector<T> rowt(kPatch * tw * kTile), out_rows(kTile * tw * kTile);
#pragma omp for collapse(2) schedule(static)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t rb = 0; rb < rows; ++rb) {
          const int64_t n = (row0 + rb) / th, tr = (row0 + rb) % th;
          const T* m = M.get() + k * tiles + rb * tw;
          for (int64_t i = 0; i < kPatch; ++i)
            for (int64_t t = 0; t < tw; ++t) {
              T in6[kPatch];
              for (int64_t j = 0; j < kPatch; ++j) in6[j] = m[(i * kPatch + j) * K * tiles + t];
              output_transform_1d(in6, 1, rowt.data() + i * tw * kTile + t * kTile, 1);
            }
          const int64_t width = tw * kTile;
          for (int64_t x = 0; x < width; ++x) output_transform_1d(rowt.data() + x, width, out_rows.data() + x, width);
          const T b = bias ? bias[k] : T(0);
          T* plane = output + (n * K + k) * sh.OH * sh.OW;
          for (int64_t r = 0; r < kTile; ++r) {
            const int64_t oh = tr * kTile + r;
            if (oh >= sh.OH) break;
            const T* src = out_rows.data() + r * width;
            T* dst = plane + oh * sh.OW;
            for (int64_t ow = 0; ow < sh.OW; ++ow) dst[ow] = src[ow] + b;
          }
        }
    }
  }
}

}  // namespace

bool conv2d_winograd_applies(const Conv2dParams& p) {
  return p.R == 3 && p.S == 3 && p.stride_h == 1 && p.stride_w == 1 && p.dilation_h == 1 && p.dilation_w == 1 &&
         p.groups == 1;
}

template <typename T>
void conv2d_forward_winograd_cpu(const Conv2dParams& p, const T* input, const T* weight, const T* bias,
                                 T* output) {
  if (p.N == 0) return;
  const WinogradShape sh{p.N, p.C, p.H, p.W, p.K, p.out_h(), p.out_w(), p.pad_top, p.pad_left};
  winograd_f4x3(sh, input, transformed_filters(weight, p.K, p.C, false).get(), bias, output);
}

// grad_input[c, h, w] = sum_{k, r, s} grad_output[k, h + pad_top - r, w + pad_left - s] * weight[k, c, r, s]
// With r' = 2 - r this is a forward 3x3 convolution of grad_output whose rows are
// read from h - (2 - pad_top) + r': the same kernel with pad_top' = 2 - pad_top
// (negative when pad_top > 2, which the tile loader handles), output size H x W.
template <typename T>
void conv2d_backward_data_winograd_cpu(const Conv2dParams& p, const T* grad_output, const T* weight,
                                       T* grad_input) {
  if (p.N == 0) return;
  const WinogradShape sh{p.N, p.K, p.out_h(), p.out_w(), p.C, p.H, p.W, 2 - p.pad_top, 2 - p.pad_left};
  winograd_f4x3(sh, grad_output, transformed_filters(weight, p.C, p.K, true).get(), static_cast<const T*>(nullptr),
                grad_input);
}

template void conv2d_forward_winograd_cpu<float>(const Conv2dParams&, const float*, const float*, const float*,
                                                 float*);
template void conv2d_forward_winograd_cpu<double>(const Conv2dParams&, const double*, const double*,
                                                  const double*, double*);
template void conv2d_backward_data_winograd_cpu<float>(const Conv2dParams&, const float*, const float*, float*);
template void conv2d_backward_data_winograd_cpu<double>(const Conv2dParams&, const double*, const double*,
                                                        double*);

}  // namespace convx
