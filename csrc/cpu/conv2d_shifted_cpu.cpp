// conv2d as a GEMM that reads its B operand in place from shifted views of the
// image, with no im2col: forward, backward-data and backward-weight.
//
// Pad the image and split it into stride_h x stride_w phase planes: plane (a, b)
// holds the padded pixels (i*sh + a, j*sw + b), as an Hq x Wq row-major array.
// Output pixel (oh, ow) under tap (r, s) reads padded pixel
// (oh*sh + r*dh, ow*sw + s*dw), which is plane ((r*dh) % sh, (s*dw) % sw) at flat
// index q + shift(r, s), where
//   q = oh*Wq + ow                          the output's "wide" column
//   shift(r, s) = (r*dh / sh)*Wq + s*dw / sw.
// So over the wide columns q in [0, OH*Wq), row (c, r, s) of the im2col matrix is
// a contiguous slice of one plane, starting at shift(r, s). The GEMM reads B
// through one pointer per row (gemm_packed_a_rows_b_cpu) and nothing of the size
// of the column matrix is ever written: the planes are one padded copy of the
// image. The price is the wide columns with ow >= OW (Wq - OW of every Wq: 2 of 58
// for a padded 3x3 layer on 56x56, 3 of 115 for a 7x7 stride-2 stem), computed
// and then dropped.
//
//   forward          Y_wide (Kg x OH*Wq) = W (Kg x CRS) * B, B row (c,r,s) = plane + shift;
//                    or, where the dropped columns cost more than a copy, B
//                    gathered column by output pixel into the GEMM's packed strips
//   backward data    the forward of dY padded by (R-1)*d - pad with the filters
//                    flipped and transposed (stride 1, 64+ input channels); or
//                    col^T = dY^T W' over the kept pixels, each pixel's row added
//                    tap by tap into pixel-major planes (16+ channels, 400+
//                    taps); or the adjoint of the forward: col = W^T dY_wide,
//                    each row of col added into its plane at shift(r, s)
//   backward weight  dW (Kg x CRS) = dY_wide * B^T: dot products along q, with dY
//                    laid out wide and zero in the dropped columns, so those
//                    columns add nothing; or, for larger gradients, the packed
//                    GEMM over the planes transposed to pixel-major, B gathered
//                    for the kept pixels only
#include <omp.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "convx/conv2d.h"
#include "convx/cpu_info.h"
#include "convx/not_finite.h"
#include "convx/gemm.h"
#include "convx/simd.h"
#include "convx/workspace.h"

namespace convx {
namespace {

struct ShiftedGeometry {
  int64_t sh, sw, phases;  // phases = sh * sw planes per channel
  int64_t Hq, Wq;          // one phase plane
  int64_t plane;           // Hq * Wq (rounded up to 16 for large planes): planes lie back to back
  int64_t slack;           // how far reads run past a plane's end (see below)
  int64_t OH, OW;
  int64_t wide;  // OH * Wq wide columns
};

ShiftedGeometry shifted_geometry(const Conv2dParams& p) {
  ShiftedGeometry g;
  g.sh = p.stride_h;
  g.sw = p.stride_w;
  g.phases = g.sh * g.sw;
  g.Hq = (p.H + p.pad_top + p.pad_bottom + g.sh - 1) / g.sh;
  g.Wq = (p.W + p.pad_left + p.pad_right + g.sw - 1) / g.sw;
  g.OH = p.out_h();
  g.OW = p.out_w();
  g.wide = g.OH * g.Wq;
  // Large planes are rounded up to 16 elements, keeping the weight gradient's dY
  // rows (laid out like them) on 64-byte boundaries: unaligned, their loads split
  // cache lines (7x7 stem: 9% slower). Small planes are not: there the rounding is
  // work of its own (25 -> 50 channels on 13x13, 169 -> 176: 5% slower).
  g.plane = g.Hq * g.Wq >= 1024 ? (g.Hq * g.Wq + 15) / 16 * 16 : g.Hq * g.Wq;
  // Reads for a kept column stay inside its plane; a dropped column's reads run
  // up to (S-1)*dw/sw past it (the bottom tap row still lies inside the plane),
  // and the micro-kernel reads whole 16-float vectors. Such reads land in the next
  // plane (values that are multiplied by zero or dropped) or, after the last plane
  // of a buffer, in `slack` zeroed elements. Planes carry no slack of their own:
  // the weight gradient multiplies through every plane element, and for small
  // images a per-plane slack was a tenth of its work.
  g.slack = (p.S - 1) * p.dilation_w / g.sw + 16;
  return g;
}

// Offset of row (c, r, s) of B from the start of channel 0's planes, when the
// planes of one channel and phase for `images` images lie one after another.
std::vector<int64_t> row_shifts(const Conv2dParams& p, const ShiftedGeometry& g, int64_t channels, int64_t images) {
  std::vector<int64_t> shift(channels * p.R * p.S);
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t r = 0; r < p.R; ++r)
      for (int64_t s = 0; s < p.S; ++s) {
        const int64_t a = (r * p.dilation_h) % g.sh, b = (s * p.dilation_w) % g.sw;
        shift[(c * p.R + r) * p.S + s] = ((c * g.phases + a * g.sw + b) * images) * g.plane +
                                         (r * p.dilation_h / g.sh) * g.Wq + (s * p.dilation_w) / g.sw;
      }
  return shift;
}

// One row of a phase plane: row[x] = src_row[x * SW + off] where that pixel lies in
// the image row (0 <= x * SW + off < W), zero elsewhere. SW as a constant for
// the strides that matter (1, 2), so that the loop vectorizes; 0 for any other.
// Returns 1 if a copied value is not finite.
template <int SW, typename T>
inline unsigned fill_plane_row(const T* src_row, int64_t W, int64_t Wq, int64_t sw, int64_t off, T* row) {
  const int64_t stride = SW > 0 ? SW : sw;
  // Columns [x0, x1) read the image; the rest are padding.
  const int64_t x0 = std::min(Wq, off >= 0 ? 0 : (-off + stride - 1) / stride);
  const int64_t x1 = W - 1 - off < 0 ? x0 : std::max(x0, std::min(Wq, (W - 1 - off) / stride + 1));
  std::fill(row, row + x0, T(0));
  unsigned any_not_finite = 0;
  const T* src = src_row + off;
  for (int64_t x = x0; x < x1; ++x) {
    const T v = src[x * stride];
    row[x] = v;
    any_not_finite |= not_finite(v);
  }
  std::fill(row + x1, row + Wq, T(0));
  return any_not_finite;
}

// Writes the phase planes of `channels` channels of one image (H x W each) as
// image j of `images`. Returns false if the image holds a value that
// is not finite (the weight gradient multiplies some pixels by zeros it would not
// otherwise touch, and 0 * inf is NaN; its caller then takes another path).
// Compiled per instruction set, and each row split into its padding and its
// image part: built for baseline x86-64 with a bounds test per element, the
// stride-2 rows of the 7x7 stem's planes took 6-7% of its forward in perf (3-4%
// now); its weight gradient, alternated call by call in one process, ran 7%
// faster.
template <typename T>
CONVX_SIMD_CLONES bool fill_planes(const Conv2dParams& p, const ShiftedGeometry& g, const T* image, int64_t channels,
                                   int64_t j, int64_t images, T* planes) {
  unsigned any_not_finite = 0;
  for (int64_t c = 0; c < channels; ++c) {
    const T* src = image + c * p.H * p.W;
    for (int64_t a = 0; a < g.sh; ++a)
      for (int64_t b = 0; b < g.sw; ++b) {
        T* dst = planes + ((c * g.phases + a * g.sw + b) * images + j) * g.plane;
        // The rounding gap after the image: the weight gradient multiplies it by
        // zeros of dY, so it must hold zeros, not a kept buffer's old values.
        std::fill(dst + g.Hq * g.Wq, dst + g.plane, T(0));
        const int64_t off = b - p.pad_left;
        for (int64_t i = 0; i < g.Hq; ++i) {
          T* row = dst + i * g.Wq;
          const int64_t ih = i * g.sh + a - p.pad_top;
          if (ih < 0 || ih >= p.H) {
            std::fill(row, row + g.Wq, T(0));
            continue;
          }
          const T* src_row = src + ih * p.W;
          if (g.sw == 1)
            any_not_finite |= fill_plane_row<1>(src_row, p.W, g.Wq, 1, off, row);
          else if (g.sw == 2)
            any_not_finite |= fill_plane_row<2>(src_row, p.W, g.Wq, 2, off, row);
          else
            any_not_finite |= fill_plane_row<0>(src_row, p.W, g.Wq, g.sw, off, row);
        }
      }
  }
  return any_not_finite == 0;
}

// One OH x OW plane of dY laid out wide, as the GEMMs read it: OH rows of Wq, zero
// in the dropped columns so that their products add nothing.
template <typename T>
CONVX_SIMD_CLONES CONVX_INLINE_COPIES void widen_plane(const ShiftedGeometry& g, const T* __restrict src,
                                                       T* __restrict dst) {
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const T* s = src + oh * g.OW;
    T* d = dst + oh * g.Wq;
    for (int64_t ow = 0; ow < g.OW; ++ow) d[ow] = s[ow];
    for (int64_t ow = g.OW; ow < g.Wq; ++ow) d[ow] = T(0);
  }
}

// Images processed together when each needs `elements_per_image` of buffers: about
// 1 MiB in all (near the caches, bounded whatever the batch), or as much as the
// filters take where they are larger, at least one image. Every chunk streams all
// the filters (or adds into all of the weight gradient), so a layer with large
// filters wants few chunks: 512 channels on 7x7 at batch 8 (9.4 MB of filters)
// ran at 0.89x torch in chunks of 3 images, 0.95x in one chunk of 8. The size
// depends on the shape alone, so every sum keeps one order.
// Measured on one core against 4 MiB, speed vs torch and the call's peak
// memory: LeNet's first layer backward-data 7.7x -> 8.5x (4.1 -> 1.1 MB), weight
// gradient 1.41x -> 1.63x (4.0 -> 1.0 MB); its second layer's forward 1.84x ->
// 1.87x (2.3 -> 1.8 MB), backward-data the same 1.64x (4.8 -> 1.9 MB), weight
// gradient 1.88x -> 1.87x (2.5 -> 1.2 MB). At two threads the backward-data of
// the first layer drops from 6.1x to 4.5x (threads share fewer images per
// chunk), the rest within 4%. 512 KiB was no faster on one core and lost up to
// 13% on two.
constexpr double kChunkBytes = 1.0 * 1024 * 1024;

template <typename T>
int64_t images_per_chunk(const Conv2dParams& p, int64_t elements_per_image) {
  const double filter_bytes = double(p.filters_per_group() * p.channels_per_group() * p.R * p.S) * sizeof(T);
  const double target = std::max(kChunkBytes, filter_bytes);
  return std::clamp<int64_t>(int64_t(target / (double(elements_per_image) * sizeof(T))), 1, p.N);
}

// Elements of one image's buffers in the scatter backward-data (backward_data_scatter):
// its col (C*R*S rows of wide columns), its wide dY, and its planes with their slack.
int64_t scatter_elements_per_image(const Conv2dParams& p, const ShiftedGeometry& g) {
  const int64_t Cg = p.channels_per_group(), CRS = Cg * p.R * p.S;
  return (CRS + p.filters_per_group()) * g.wide + Cg * g.phases * g.plane + g.slack;
}

// Threads take whole (image, group) jobs when there are enough of them: each GEMM
// then runs on its thread alone, and every output element is computed exactly as
// on one thread.
inline bool share_jobs_between_threads(int64_t jobs) {
  const int threads = omp_get_max_threads();
  return threads > 1 && jobs >= 2 * int64_t(threads) && !omp_in_parallel();
}

// The forward pass with B gathered into the GEMM's packed strips, column by output
// pixel: no dropped columns (their share is (Wq - OW) / Wq, 4 of 23 for a padded 5x5
// layer on 19x19), and images side by side in one GEMM (small images fill its
// strips), for one copy of the im2col matrix's size, made strip by strip in cache.
template <typename T>
void forward_gathered(const Conv2dParams& p, const ShiftedGeometry& g, const T* input, SegmentedRows<T> filters,
                      const std::vector<int64_t>& shift, const T* bias, T* output) {
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group(), CRS = Cg * p.R * p.S;
  const int64_t L = g.OH * g.OW, image_planes = Cg * g.phases * g.plane;
  const int64_t images = images_per_chunk<T>(p, image_planes + Kg * L);
  std::vector<int64_t> col_off(images * L);
  for (int64_t j = 0; j < images; ++j)
    for (int64_t oh = 0; oh < g.OH; ++oh)
      for (int64_t ow = 0; ow < g.OW; ++ow) col_off[(j * g.OH + oh) * g.OW + ow] = j * image_planes + oh * g.Wq + ow;
  const int64_t planes_size = images * image_planes + g.slack;
  Scratch<T> planes(planes_size), out(Kg * images * L);
  for (int64_t gr = 0; gr < p.groups; ++gr)
    for (int64_t n0 = 0; n0 < p.N; n0 += images) {
      const int64_t count = std::min(images, p.N - n0);
      for (int64_t j = 0; j < count; ++j)
        fill_planes(p, g, input + ((n0 + j) * p.C + gr * Cg) * p.H * p.W, Cg, 0, 1,
                    planes.data() + j * image_planes);
      std::fill(planes.data() + count * image_planes, planes.data() + count * image_planes + g.slack, T(0));
      SegmentedRows<T> group_filters = filters;
      group_filters.base += gr * Kg * CRS;
      gemm_gather_b_cpu<T>(Kg, count * L, CRS, group_filters, planes.data(), shift.data(), col_off.data(), T(0),
                           out.data(), count * L);
      for (int64_t j = 0; j < count; ++j)
        for (int64_t k = 0; k < Kg; ++k) {
          const T b = bias ? bias[gr * Kg + k] : T(0);
          const T* src = out.data() + k * count * L + j * L;
          T* dst = output + ((n0 + j) * p.K + gr * Kg + k) * L;
          for (int64_t i = 0; i < L; ++i) dst[i] = src[i] + b;
        }
    }
}

// ---- The forward pass by register tiles, with no GEMM -------------------------------
// For a short reduction (LeNet's first layer: one channel, 5x5 taps, 25 per output)
// the GEMM's fixed costs per call and per image (the B strips it packs, the wide
// output it writes and then compacts) outweigh its 25 multiply-adds per output;
// it ran at 20% of the peak. Here one AVX-512 register tile does the whole
// reduction: 8 filters x 48 wide columns (3 vectors), the 24 accumulators of the
// GEMM's micro-kernel, over all C*R*S taps. Tap e adds filter column e times the
// 48 pixels at planes + q0 + shift(e), read where they lie in the planes (3
// unaligned loads and 8 broadcasts per 24 FMAs). The tile goes straight
// to the output: each vector's kept columns with masked stores, one per output
// row it touches, so the dropped columns are never written anywhere.
// Threads take (image, 96-column tile) jobs, each running every filter strip, so
// a tile's pixels are read from L1 by all of them.
constexpr int64_t kTileFilters = 8;         // rows of the register tile: filters
constexpr int64_t kTileVectors = 3;         // columns of the register tile: 16-float vectors
constexpr int64_t kColumnsPerJob = 2 * kTileVectors * 16;  // two tiles of wide columns per job
constexpr int kMaxRowsPerVector = 4;        // output rows one vector's 16 columns may touch (Wq >= 6)

// Where one vector of 16 wide columns goes: for each output row it touches, the
// output offset of its lane 0 in that row's frame and the mask of its kept lanes.
struct VectorStores {
  int rows = 0;
  int64_t offset[kMaxRowsPerVector];
  uint16_t mask[kMaxRowsPerVector];
};

VectorStores vector_stores(const ShiftedGeometry& g, int64_t q0) {
  VectorStores st;
  for (int64_t q = q0; q < std::min(q0 + 16, g.wide);) {
    const int64_t oh = q / g.Wq, row_end = std::min({q0 + 16, (oh + 1) * g.Wq, g.wide});
    uint16_t mask = 0;
    for (int64_t c = q; c < row_end; ++c)
      if (c - oh * g.Wq < g.OW) mask |= uint16_t(1u << (c - q0));
    if (mask) {
      // Lane i lands at output (oh, q0 + i - oh*Wq) = oh*OW + q0 + i - oh*Wq.
      st.offset[st.rows] = oh * g.OW - oh * g.Wq + q0;
      st.mask[st.rows++] = mask;
    }
    q = row_end;
  }
  return st;
}

// The filters as 8-row strips, tap by tap: strip i, tap e, row r at
// ((i * taps) + e) * 8 + r, rows past the last filter zero. The tile broadcasts
// its 8 values of tap e from one 32-byte run.
template <typename T>
void pack_filter_strips(int64_t filters, int64_t taps, SegmentedRows<T> w, T* dst) {
  const int64_t strips = (filters + kTileFilters - 1) / kTileFilters;
  std::fill(dst, dst + strips * taps * kTileFilters, T(0));
  for (int64_t k = 0; k < filters; ++k) {
    const T* row = w.base + k * w.row_stride;
    T* out = dst + (k / kTileFilters) * taps * kTileFilters + k % kTileFilters;
    // Segment by segment: a division per tap cost more than the whole layer
    // (48 -> 192 channels, 5x5: 230,400 taps).
    for (int64_t e0 = 0, seg = 0; e0 < taps; e0 += w.seg_len, ++seg) {
      const T* src = row + seg * w.seg_stride;
      for (int64_t e = e0; e < std::min(taps, e0 + w.seg_len); ++e) out[e * kTileFilters] = src[e - e0];
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define CONVX_SHIFTED_TILES_AVX512 1
// acc[r][v] = bias[r] + sum over taps e of strip[e][r] * pixels[shift[e] + 16 v ..],
// stored for the first `rows` filters into out + r * out_plane through `stores`.
// ROWS x NV is 8 x 3, or 4 x 6 for a last strip of at most 4 filters (LeNet's 20
// filters: 8 + 8 + 4 rows, not 24).
template <int ROWS, int NV>
__attribute__((target("avx512f"))) void register_tile_avx512(int64_t taps, const float* strip, const float* pixels,
                                                             const int64_t* shift, const float* bias, int64_t rows,
                                                             float* out, int64_t out_plane,
                                                             const VectorStores* stores) {
  __m512 acc[ROWS][NV];
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_set1_ps(bias && r < rows ? bias[r] : 0.0f);
  for (int64_t e = 0; e < taps; ++e) {
    const float* x = pixels + shift[e];
    __m512 xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_ps(x + 16 * v);
    for (int r = 0; r < ROWS; ++r) {
      const __m512 w = _mm512_set1_ps(strip[e * kTileFilters + r]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(w, xv[v], acc[r][v]);
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int v = 0; v < NV; ++v)
      for (int i = 0; i < stores[v].rows; ++i)
        _mm512_mask_storeu_ps(out + r * out_plane + stores[v].offset[i], stores[v].mask[i], acc[r][v]);
}
#else
#define CONVX_SHIFTED_TILES_AVX512 0
#endif

std::atomic<int> register_tiles_mode{-1};

// The float forward by register tiles, for one group (groups == 1), any stride
// and dilation. reverse_taps as in forward_shifted.
void forward_register_tiles(const Conv2dParams& p, const ShiftedGeometry& g, const float* input,
                            SegmentedRows<float> filters, const std::vector<int64_t>& shift, const float* bias,
                            float* output) {
#if CONVX_SHIFTED_TILES_AVX512
  const int64_t C = p.C, K = p.K, taps = C * p.R * p.S, L = g.OH * g.OW;
  const int64_t strips = (K + kTileFilters - 1) / kTileFilters;
  Scratch<float> packed(strips * taps * kTileFilters);
  pack_filter_strips<float>(K, taps, filters, packed.data());
  const int64_t image_planes = C * g.phases * g.plane;
  const int64_t images = images_per_chunk<float>(p, image_planes);
  const int64_t tiles = (g.wide + kColumnsPerJob - 1) / kColumnsPerJob;
  // The last job's vectors read up to kColumnsPerJob - 1 columns past the wide
  // columns, and every read runs up to (S-1)*dw/sw + 16 past its column (g.slack).
  const int64_t slack = kColumnsPerJob + g.slack;
  Scratch<float> planes(images * image_planes + slack);
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  for (int64_t n0 = 0; n0 < p.N; n0 += images) {
    const int64_t count = std::min(images, p.N - n0);
#pragma omp parallel for schedule(static) num_threads(threads) if (count > 1)
    for (int64_t j = 0; j < count; ++j)
      fill_planes(p, g, input + (n0 + j) * C * p.H * p.W, C, 0, 1, planes.data() + j * image_planes);
    std::fill(planes.data() + count * image_planes, planes.data() + count * image_planes + slack, 0.0f);
    const int64_t jobs = count * tiles;
#pragma omp parallel for schedule(static) num_threads(threads) if (jobs > 1)
    for (int64_t job = 0; job < jobs; ++job) {
      const int64_t j = job / tiles, q0 = (job % tiles) * kColumnsPerJob;
      VectorStores stores[2 * kTileVectors];
      for (int64_t v = 0; v < 2 * kTileVectors; ++v) stores[v] = vector_stores(g, q0 + 16 * v);
      const float* pixels = planes.data() + j * image_planes + q0;
      float* out = output + (n0 + j) * K * L;
      for (int64_t i = 0; i < strips; ++i) {
        const int64_t rows = std::min(kTileFilters, K - i * kTileFilters);
        const float* strip = packed.data() + i * taps * kTileFilters;
        const float* strip_bias = bias ? bias + i * kTileFilters : nullptr;
        float* strip_out = out + i * kTileFilters * L;
        if (rows <= kTileFilters / 2) {
          register_tile_avx512<kTileFilters / 2, 2 * kTileVectors>(taps, strip, pixels, shift.data(), strip_bias, rows,
                                                                    strip_out, L, stores);
          continue;
        }
        register_tile_avx512<kTileFilters, kTileVectors>(taps, strip, pixels, shift.data(), strip_bias, rows, strip_out,
                                                         L, stores);
        // The second tile only where the job has wide columns left for it.
        if (q0 + kColumnsPerJob / 2 < g.wide)
          register_tile_avx512<kTileFilters, kTileVectors>(taps, strip, pixels + kColumnsPerJob / 2, shift.data(),
                                                           strip_bias, rows, strip_out, L, stores + kTileVectors);
      }
    }
  }
#else
  (void)p, (void)g, (void)input, (void)filters, (void)shift, (void)bias, (void)output;
#endif
}

// Whether the float forward runs by register tiles: on AVX-512, one group, output
// rows of at least 6 wide columns (a vector touches at most 4 rows), and either
// a reduction short enough that the GEMM's fixed costs dominate it (32 taps), or
// few filters over a moderate reduction with few dropped columns. The GEMM packs
// B once per image for all the filters, so the fewer the filters the more that
// costs per multiply-add; the tiles compute the dropped columns that the
// gathered GEMM skips; with 600+ taps (a strip of 19 KB and its pixels) the
// tiles no longer work from L1; and on large images they lost at two threads.
// Speed of the tiles against the GEMM, medians of 5 alternating rounds, one
// core (two):
//   taken:
//     8, 16, 25, 48, 64 -> 50 3x3 on 13x13, batch 64   1.63, 1.36, 1.2-1.3, 1.23, 1.25x
//     (25 -> 50: the digits CNN's second layer)        (1.60, -, 1.20, 1.19, 1.22x)
//     3 -> 32 5x5 on 32x32 (75 taps)                   1.21x (1.11x)
//     16 -> 32 5x5 on 32x32, 32 -> 64 3x3 on 28x28     1.12, 1.10x (1.01, 1.04x)
//     64 -> 48 3x3 on 28x28                            1.03x
//   left to the GEMM:
//     64 -> 64 3x3 on 56x56 (3248 wide columns)        1.03x (0.91x)
//     3 -> 64 7x7 stride 2 on 224x224 (the stem)       1.08x (0.84x)
//     20 -> 50 5x5 on 12x12 (LeNet's second layer: 96
//     wide columns per 64 kept)                        0.80x
//     32 -> 64 5x5 on 19x19 and 28x28 (800 taps)       0.94, 1.06x
//     48 -> 64 and 48 -> 192 5x5 on 19x19 (1200 taps)  0.97, 0.77x
//     48, 192 -> 192 3x3 on 19x19 (192 filters)        0.98, 0.79x
bool forward_uses_register_tiles(const Conv2dParams& p, const ShiftedGeometry& g, int64_t elem_bytes) {
  if (elem_bytes != 4 || !CONVX_SHIFTED_TILES_AVX512 || !cpu_has_avx512f() || p.groups != 1) return false;
  if (g.Wq < 6) return false;
  const int mode = register_tiles_mode.load();
  if (mode >= 0) return mode == 1;
  const int64_t taps = p.C * p.R * p.S;
  if (taps <= 32) return true;
  const bool few_dropped = 4 * g.wide <= 5 * g.OH * g.OW;  // at most 1.25 wide columns per kept one
  return p.K <= 64 && taps <= 600 && few_dropped && g.wide <= 2048;
}

// Wide columns per chunk of the in-place forward: whole micro-kernel strips whose
// Kg x chunk product takes about kWideChunkBytes, a quarter of a core's L2, so
// that its kept columns are copied out from L2. One image's whole wide product
// (64 x 12880 for the 7x7 stem, 3.3 MB per thread) went out to L3 and back.
// Measured on the stem's forward (calls of each variant alternated in one
// process, medians): level at one thread, 5-7% faster at two; 256 KiB and
// 1 MiB chunks ran the same as 512.
constexpr int64_t kWideChunkBytes = 512 * 1024;
template <typename T>
int64_t wide_chunk_columns(int64_t filters, int64_t wide) {
  constexpr int64_t strip = gemm_micro_tile_cols<T>();
  const int64_t strips = std::max<int64_t>(1, kWideChunkBytes / (filters * int64_t(sizeof(T)) * strip));
  return std::min(wide, strips * strip);
}

// The kept columns of wide columns [q0, q0 + cols) of a product of `filters` rows
// (row k at wide + k * cols), plus each filter's bias, into the filters' output
// planes (OH x OW each, back to back from out).
template <typename T>
void copy_out_kept_columns(const ShiftedGeometry& g, const T* wide, int64_t q0, int64_t cols, int64_t filters,
                           const T* bias, T* out) {
  for (int64_t k = 0; k < filters; ++k) {
    const T b = bias ? bias[k] : T(0);
    T* plane = out + k * g.OH * g.OW;
    // Output rows oh whose wide columns [oh*Wq, oh*Wq + OW) meet [q0, q0 + cols).
    for (int64_t oh = q0 / g.Wq; oh < g.OH && oh * g.Wq < q0 + cols; ++oh) {
      const int64_t ow0 = std::max<int64_t>(0, q0 - oh * g.Wq), ow1 = std::min(g.OW, q0 + cols - oh * g.Wq);
      const T* src = wide + k * cols + oh * g.Wq - q0;
      T* dst = plane + oh * g.OW;
      for (int64_t ow = ow0; ow < ow1; ++ow) dst[ow] = src[ow] + b;
    }
  }
}

// The forward pass with the filters of each group as a Kg x CRS operand, group gr
// at filters.base + gr * Kg * CRS. With reverse_taps, column (c, t) of the
// filters multiplies tap R*S - 1 - t: backward-data passes the original weight
// read as the transposed filters, and the flip lands on the taps' shifts.
template <typename T>
void forward_shifted(const Conv2dParams& p, const T* input, SegmentedRows<T> filters, bool reverse_taps, const T* bias,
                     T* output) {
  const ShiftedGeometry g = shifted_geometry(p);
  const int64_t RS = p.R * p.S;
  std::vector<int64_t> shift = row_shifts(p, g, p.channels_per_group(), 1);
  if (reverse_taps)
    for (int64_t c = 0; c < p.channels_per_group(); ++c)
      std::reverse(shift.begin() + c * RS, shift.begin() + (c + 1) * RS);
  if constexpr (std::is_same<T, float>::value) {
    if (forward_uses_register_tiles(p, g, sizeof(T))) {
      forward_register_tiles(p, g, input, filters, shift, bias, output);
      return;
    }
  }
  // Reading B in place costs the dropped columns and, per image, a last partial
  // strip; gathering B costs a copy of it. Measured on one core (speed vs torch,
  // in place / gathered): where the in-place columns exceed the kept ones by 20%+
  // and the reduction is long enough to pay for the copy (C*R*S >= 256), gathering
  // wins: 512 channels on 7x7 0.70x / 0.95x, 48 -> 192 5x5 on 19x19 0.80x / 0.87x,
  // LeNet's second layer 1.36x / 1.42x; elsewhere in place wins: 64 channels on
  // 56x56 1.00x / 0.87x, LeNet's first layer (C*R*S = 25) 1.32x / 1.10x.
  const int64_t in_place_cols = (g.wide + 15) / 16 * 16, kept_cols = g.OH * g.OW;
  if (double(in_place_cols) >= 1.2 * double(kept_cols) && p.channels_per_group() * p.R * p.S >= 256) {
    forward_gathered(p, g, input, filters, shift, bias, output);
    return;
  }
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group(), CRS = Cg * p.R * p.S;
  const int64_t a_size = gemm_packed_a_size<T>(Kg, CRS);
  Scratch<T> a_packed(p.groups * a_size);
  for (int64_t gr = 0; gr < p.groups; ++gr) {
    SegmentedRows<T> group_filters = filters;
    group_filters.base += gr * Kg * CRS;
    gemm_pack_a<T>(Kg, CRS, group_filters, a_packed.data() + gr * a_size);
  }
  const int64_t planes_size = Cg * g.phases * g.plane + g.slack;
  const int64_t chunk = wide_chunk_columns<T>(Kg, g.wide), wide_size = Kg * chunk;

  // The wide columns in chunks whose product stays in L2 (see wide_chunk_columns),
  // each chunk's kept columns copied out, with the bias, while it is there.
  const auto run = [&](int64_t job, T* planes, T* wide, const T** rows) {
    const int64_t n = job / p.groups, gr = job % p.groups;
    fill_planes(p, g, input + (n * p.C + gr * Cg) * p.H * p.W, Cg, 0, 1, planes);
    std::fill(planes + planes_size - g.slack, planes + planes_size, T(0));
    for (int64_t q0 = 0; q0 < g.wide; q0 += chunk) {
      const int64_t cols = std::min(chunk, g.wide - q0);
      for (int64_t e = 0; e < CRS; ++e) rows[e] = planes + shift[e] + q0;
      gemm_packed_a_rows_b_cpu<T>(Kg, cols, CRS, a_packed.data() + gr * a_size, rows, wide, cols);
      copy_out_kept_columns(g, wide, q0, cols, Kg, bias ? bias + gr * Kg : nullptr,
                            output + (n * p.K + gr * Kg) * g.OH * g.OW);
    }
  };
  const int64_t jobs = p.N * p.groups;
  if (share_jobs_between_threads(jobs)) {
#pragma omp parallel
    {
      Scratch<T> planes(planes_size), wide(wide_size);
      std::vector<const T*> rows(CRS);
#pragma omp for schedule(static)
      for (int64_t job = 0; job < jobs; ++job) run(job, planes.data(), wide.data(), rows.data());
    }
    return;
  }
  Scratch<T> planes(planes_size), wide(wide_size);
  std::vector<const T*> rows(CRS);
  for (int64_t job = 0; job < jobs; ++job) run(job, planes.data(), wide.data(), rows.data());
}

// The layer whose forward pass is this layer's backward-data pass (stride 1):
// input dY (K channels of OH x OW), filters (R-1)*d - pad, C outputs.
Conv2dParams backward_data_as_forward(const Conv2dParams& p) {
  Conv2dParams q = p;
  q.C = p.K;
  q.K = p.C;
  q.H = p.out_h();
  q.W = p.out_w();
  q.pad_top = (p.R - 1) * p.dilation_h - p.pad_top;
  q.pad_bottom = (p.R - 1) * p.dilation_h - p.pad_bottom;
  q.pad_left = (p.S - 1) * p.dilation_w - p.pad_left;
  q.pad_right = (p.S - 1) * p.dilation_w - p.pad_right;
  return q;
}

}  // namespace

namespace {
// The planes are one padded copy of the image: worth it only while the padding
// does not dominate them, and while the filter reads every phase (a stride wider
// than the filter's reach skips pixels: their planes would be built and unread).
bool planes_are_sensible(const Conv2dParams& p) {
  const double padded = (double(p.H) + p.pad_top + p.pad_bottom) * (double(p.W) + p.pad_left + p.pad_right);
  return padded <= 4.0 * double(p.H) * double(p.W) + 4096.0 && p.stride_h <= (p.R - 1) * p.dilation_h + 1 &&
         p.stride_w <= (p.S - 1) * p.dilation_w + 1;
}
}  // namespace

bool conv2d_shifted_applies(const Conv2dParams& p) { return planes_are_sensible(p); }

int conv2d_shifted_set_register_tiles(int mode) {
  return register_tiles_mode.exchange(mode < 0 ? -1 : mode > 0 ? 1 : 0);
}

bool conv2d_shifted_forward_uses_register_tiles(const Conv2dParams& p, int64_t elem_bytes) {
  return forward_uses_register_tiles(p, shifted_geometry(p), elem_bytes);
}

bool conv2d_shifted_backward_data_flips(const Conv2dParams& p) {
  if (p.channels_per_group() < 64) return false;
  const Conv2dParams q = backward_data_as_forward(p);
  return p.stride_h == 1 && p.stride_w == 1 && q.pad_top >= 0 && q.pad_bottom >= 0 && q.pad_left >= 0 &&
         q.pad_right >= 0 && planes_are_sensible(q);
}

// Measured on one core (ms, pixel-major / scatter / im2col): 48 -> 192 5x5 on
// 19x19 0.80 / 1.10 / 0.85, LeNet's second layer (20 channels, 5x5) 1.25 / 1.80 /
// 2.00; below 400 taps the scatter keeps up (the digits CNN's 25 -> 50 3x3 layer
// 1.37 / 1.33 / 1.73), and with few channels per pixel the runs added are too
// short (LeNet's first layer, one channel: 1.80 / 0.53 / 0.57).
bool conv2d_shifted_backward_data_pixel_major(const Conv2dParams& p) {
  return p.channels_per_group() >= 16 && p.channels_per_group() * p.R * p.S >= 400 && planes_are_sensible(p);
}

bool conv2d_shifted_backward_data_scatter_fits(const Conv2dParams& p) {
  // In float: the dispatcher's rules do not depend on the dtype.
  return double(scatter_elements_per_image(p, shifted_geometry(p))) * sizeof(float) <= kChunkBytes;
}

template <typename T>
void conv2d_forward_shifted_cpu(const Conv2dParams& p, const T* input, const T* weight, const T* bias, T* output) {
  if (p.N == 0) return;
  const int64_t CRS = p.channels_per_group() * p.R * p.S;
  forward_shifted(p, input, SegmentedRows<T>::plain(weight, CRS, CRS), false, bias, output);
}

namespace {

// Backward-data as the forward of the flipped filters: dX[c, h, w] = sum over k, r, s
// of W[k, c, r, s] * dY[k, h + pad - r*d, w + pad - s*d]; with r' = R-1-r this is a
// forward convolution of dY, padded by (R-1)*d - pad, by the filters
// W'[c, k, r', s'] = W[k, c, R-1-r', S-1-s'] (per group). Stride 1 only, and pads
// within the filter's reach (else the flipped pads would be negative).
template <typename T>
void backward_data_flipped_forward(const Conv2dParams& p, const T* grad_output, const T* weight, T* grad_input) {
  const Conv2dParams q = backward_data_as_forward(p);
  // q's filter (c, k) is the weight's (k, c) rotated: read as q's c x (k, t)
  // operand, rows c are R*S apart and filters k C*R*S apart, and the rotation is
  // taken by the taps' shifts. Writing the flipped copy instead read and wrote
  // all the weights once more (13% of the time for 512 channels on 7x7).
  const int64_t RS = p.R * p.S, CRS = p.channels_per_group() * RS;
  forward_shifted(q, grad_output, SegmentedRows<T>{weight, RS, CRS, RS, weight + p.weight_numel()}, true,
                  static_cast<const T*>(nullptr), grad_input);
}

// The inverse of fill_planes' layout: the H x W image interiors of `channels`
// channels of image j (of `images`) out of their phase planes, into `out`
// (channels x H x W).
template <typename T>
CONVX_SIMD_CLONES CONVX_INLINE_COPIES void read_plane_interiors(const Conv2dParams& p, const ShiftedGeometry& g,
                                                                const T* planes, int64_t images, int64_t j,
                                                                int64_t channels, T* out) {
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t h = 0; h < p.H; ++h) {
      const int64_t i = h + p.pad_top, a = i % g.sh;
      const T* row = planes + ((c * g.phases + a * g.sw) * images + j) * g.plane + (i / g.sh) * g.Wq;
      T* dst = out + (c * p.H + h) * p.W;
      if (g.sw == 1) {
        const T* src = row + p.pad_left;
        for (int64_t w = 0; w < p.W; ++w) dst[w] = src[w];
        continue;
      }
      // Phase b's plane holds the pixels w with (w + pad_left) % sw == b.
      for (int64_t b = 0; b < g.sw; ++b) {
        const int64_t w0 = ((b - p.pad_left) % g.sw + g.sw) % g.sw;
        const T* src = row + b * images * g.plane;
        for (int64_t w = w0; w < p.W; w += g.sw) dst[w] = src[(w + p.pad_left) / g.sw];
      }
    }
}

// Backward-data by scatter, any stride: the adjoint of the forward, column by
// column. With dY laid out wide (zero in the dropped columns),
//   col (CRS x OH*Wq per image) = W^T dY_wide      one GEMM per chunk of images
//   plane(c, r, s) [shift(r, s) + q] += col[(c, r, s)][q]    for every q
// (im2col's col2im, but each row added in one contiguous run: col2im adds rows of
// OW values, 11 for the digits CNN's second layer, where it was half the time),
// then dX is read out of the planes' interior. The dropped columns of col are
// zero, so their adds, which land in a neighbouring pixel or plane, add nothing.
// W^T is packed once; dY_wide is read in place by the GEMM.
template <typename T>
void backward_data_scatter(const Conv2dParams& p, const T* grad_output, const T* weight, T* grad_input) {
  const ShiftedGeometry g = shifted_geometry(p);
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group(), CRS = Cg * p.R * p.S;
  const std::vector<int64_t> shift = row_shifts(p, g, Cg, 1);
  // Each image's planes end in their own zeroed slack: the dropped columns' adds
  // that run past an image's last plane stay inside it, so threads that take
  // different images never touch each other's sums.
  const int64_t image_planes = Cg * g.phases * g.plane, image_stride = image_planes + g.slack;
  const int64_t images = images_per_chunk<T>(p, scatter_elements_per_image(p, g));
  const int64_t cols = images * g.wide;  // the chunk's wide columns, image after image

  const int64_t a_size = gemm_packed_a_size<T>(CRS, Kg);
  Scratch<T> a_packed(p.groups * a_size), transposed(CRS * Kg);
  for (int64_t gr = 0; gr < p.groups; ++gr) {
    transpose_cpu<T>(Kg, CRS, weight + gr * Kg * CRS, CRS, transposed.data(), Kg);
    gemm_pack_a<T>(CRS, Kg, SegmentedRows<T>::plain(transposed.data(), Kg, Kg), a_packed.data() + gr * a_size);
  }
  // dY rows are read in whole vectors: 16 elements of slack after the last.
  Scratch<T> dy_wide(Kg * cols + 16), col(CRS * cols), planes(images * image_stride);
  std::fill(dy_wide.data() + Kg * cols, dy_wide.data() + Kg * cols + 16, T(0));
  std::vector<const T*> dy_rows(Kg);
  for (int64_t k = 0; k < Kg; ++k) dy_rows[k] = dy_wide.data() + k * cols;
  const bool parallel = double(CRS) * double(cols) > 65536.0;

  for (int64_t gr = 0; gr < p.groups; ++gr)
    for (int64_t n0 = 0; n0 < p.N; n0 += images) {
      const int64_t count = std::min(images, p.N - n0);
      for (int64_t k = 0; k < Kg; ++k)
        for (int64_t j = 0; j < images; ++j) {
          T* dst = dy_wide.data() + k * cols + j * g.wide;
          if (j >= count) {  // past the batch: zero columns
            std::fill(dst, dst + g.wide, T(0));
            continue;
          }
          widen_plane(g, grad_output + ((n0 + j) * p.K + gr * Kg + k) * g.OH * g.OW, dst);
        }
      gemm_packed_a_rows_b_cpu<T>(CRS, count * g.wide, Kg, a_packed.data() + gr * a_size, dy_rows.data(),
                                  col.data(), cols);
      // Images are independent: threads take whole images, each summing its taps
      // in (c, r, s) order, so the result does not depend on the thread count.
#pragma omp parallel for schedule(static) if (parallel && count > 1 && !omp_in_parallel())
      for (int64_t j = 0; j < count; ++j) {
        T* image = planes.data() + j * image_stride;
        std::fill(image, image + image_stride, T(0));
        for (int64_t e = 0; e < CRS; ++e) {
          T* __restrict dst = image + shift[e];
          const T* __restrict src = col.data() + e * cols + j * g.wide;
          for (int64_t q = 0; q < g.wide; ++q) dst[q] += src[q];
        }
        read_plane_interiors(p, g, image, 1, 0, Cg, grad_input + ((n0 + j) * p.C + gr * Cg) * p.H * p.W);
      }
    }
}

// Zeros after the `count` images of a chunk's planes (laid out as row_shifts
// describes, `images` per chunk): the reads that run past the last image of each
// plane block, and past the buffer's end, find zeros, not what an earlier chunk or
// call left there (it could hold an inf, and 0 * inf = NaN).
template <typename T>
void zero_past_last_image(const ShiftedGeometry& g, int64_t blocks, int64_t count, int64_t images, T* planes) {
  const int64_t planes_size = blocks * images * g.plane;
  std::fill(planes + planes_size, planes + planes_size + g.slack, T(0));
  if (count < images)
    for (int64_t b = 0; b < blocks; ++b) {
      T* after = planes + (b * images + count) * g.plane;
      std::fill(after, after + std::min(g.slack, (images - count) * g.plane), T(0));
    }
}

// dY of group gr for images n0 .. n0 + count as a Kg x (count * L) matrix with
// row stride ld: filter k's plane of image n0 + j at dy[k * ld + j * L], as the
// pixel-major forms' GEMMs read it.
template <typename T>
void copy_grad_output_rows(const Conv2dParams& p, const T* grad_output, int64_t gr, int64_t n0, int64_t count,
                           int64_t ld, T* dy) {
  const int64_t Kg = p.filters_per_group(), L = p.out_h() * p.out_w();
  for (int64_t k = 0; k < Kg; ++k)
    for (int64_t j = 0; j < count; ++j) {
      const T* src = grad_output + ((n0 + j) * p.K + gr * Kg + k) * L;
      std::copy(src, src + L, dy + k * ld + j * L);
    }
}

// The weight gradient where the packed GEMM computes it (more outputs than dot
// products suit), with the image transposed once to pixel-major planes. Handed
// the R*S shifted views of every channel's plane, the GEMM's packing would
// transpose each plane R*S times (9 for a 3x3 layer: a sixth of the time of
// 64 -> 64 channels on 56x56). In pixel-major planes xT[pixel][c] the view of tap
// (r, s) is a row offset, and with the output's columns ordered (r, s, c) each
// row of a B strip is one or two contiguous copies. The rows of B are the kept
// output pixels only (o = oh*Wq + ow of each image's plane), so no dropped columns
// are computed and dY is read as it is:
//   dW' (Kg x RS*Cg) = dY (Kg x OH*OW) * B,   B[(oh, ow)][(r, s, c)] = xT[o + shift(r, s)][c]
//   dW[k][c][r][s] = dW'[k][(r, s, c)]
// Every product is one of the direct convolution's, so unlike the dot products
// this form needs no test for non-finite input.
template <typename T>
void backward_weight_pixel_major(const Conv2dParams& p, const ShiftedGeometry& g, const T* grad_output,
                                 const T* input, T* grad_weight) {
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group(), RS = p.R * p.S, CRS = Cg * RS;
  const int64_t L = g.OH * g.OW;
  const int64_t images = images_per_chunk<T>(p, 2 * Cg * g.phases * g.plane + Kg * L);
  const int64_t pixels = g.phases * images * g.plane;
  const std::vector<int64_t> tap_shift = row_shifts(p, g, 1, images);
  std::vector<int64_t> row_off(images * L), col_off(CRS);
  for (int64_t j = 0; j < images; ++j)
    for (int64_t oh = 0; oh < g.OH; ++oh)
      for (int64_t ow = 0; ow < g.OW; ++ow) row_off[(j * g.OH + oh) * g.OW + ow] = (j * g.plane + oh * g.Wq + ow) * Cg;
  for (int64_t t = 0; t < RS; ++t)
    for (int64_t c = 0; c < Cg; ++c) col_off[t * Cg + c] = tap_shift[t] * Cg + c;
  // planes: channel-major, as fill_planes writes them; xT: the same transposed,
  // with 16 readable elements after it for the gather's whole-vector copies. With
  // one image per chunk, dY is read in place (its rows are the image's planes);
  // with several, their rows are copied side by side.
  // The gradient accumulates in grad_weight itself, in [k][t][c] order, and is
  // put back in [k][c][t] order at the end, a few filters at a time through a
  // copy of about 64 KB: a whole [k][t][c] copy was 0.9 MB of the AlphaGo input
  // layer's 1.3 MB of workspace.
  const int64_t filters_per_copy = std::clamp<int64_t>(16384 / CRS, 1, Kg);
  Scratch<T> planes(Cg * pixels), xt(pixels * Cg + 16), dy(images > 1 ? Kg * images * L : 0),
      dw_copy(filters_per_copy * CRS);
  // With whole vectors of channels per tap, B is read in place: row q of B is
  // xT's row of pixel q, each 16-column vector at its tap's offset (64 -> 64
  // channels on 56x56: the gather was a tenth of the time). Otherwise gathered.
  const int64_t lanes = gemm_vector_lanes<T>();
  const bool read_in_place = Cg % lanes == 0;
  std::vector<const T*> b_rows(read_in_place ? images * L : 0);
  std::vector<int64_t> vec_off(read_in_place ? CRS / lanes : 0);
  for (size_t q = 0; q < b_rows.size(); ++q) b_rows[q] = xt.data() + row_off[q];
  for (size_t v = 0; v < vec_off.size(); ++v) vec_off[v] = col_off[v * lanes];
  std::fill(xt.data() + pixels * Cg, xt.data() + pixels * Cg + 16, T(0));
  for (int64_t gr = 0; gr < p.groups; ++gr) {
    T* dw = grad_weight + gr * Kg * CRS;
    for (int64_t n0 = 0; n0 < p.N; n0 += images) {
      const int64_t count = std::min(images, p.N - n0);
      for (int64_t j = 0; j < count; ++j)
        fill_planes(p, g, input + ((n0 + j) * p.C + gr * Cg) * p.H * p.W, Cg, j, images, planes.data());
      const T* a = grad_output + (n0 * p.K + gr * Kg) * L;
      int64_t lda = L;
      if (images > 1) {
        copy_grad_output_rows(p, grad_output, gr, n0, count, images * L, dy.data());
        a = dy.data();
        lda = images * L;
      }
      transpose_cpu<T>(Cg, pixels, planes.data(), pixels, xt.data(), Cg);
      const T beta = n0 > 0 ? T(1) : T(0);
      if (read_in_place) {
        gemm_split_rows_b_cpu<T>(Kg, CRS, count * L, a, lda, b_rows.data(), vec_off.data(), beta, dw, CRS);
      } else {
        gemm_gather_b_cpu<T>(Kg, CRS, count * L, SegmentedRows<T>::plain(a, lda, count * L), xt.data(),
                             row_off.data(), col_off.data(), beta, dw, CRS);
      }
    }
    // Back to [k][c][t]: per filter an RS x Cg transpose, through registers in
    // 16 x 16 blocks, from a copy of a few filters.
    for (int64_t k0 = 0; k0 < Kg; k0 += filters_per_copy) {
      const int64_t n = std::min(filters_per_copy, Kg - k0);
      std::copy(dw + k0 * CRS, dw + (k0 + n) * CRS, dw_copy.data());
      transpose_batch_cpu<T>(n, RS, Cg, dw_copy.data(), CRS, Cg, dw + k0 * CRS, CRS, RS, dw_copy.data() + n * CRS);
    }
  }
}

// dst[c ..) += src[c ..) in whole Vectors while they fit below n; returns where
// it stopped.
template <typename T, typename Vector>
__attribute__((always_inline)) inline int64_t add_vectors(T* __restrict dst, const T* __restrict src, int64_t c,
                                                          int64_t n) {
  constexpr int64_t kLanes = sizeof(Vector) / sizeof(T);
  for (; c + kLanes <= n; c += kLanes) {
    Vector a, b;
    std::memcpy(&a, dst + c, sizeof(Vector));
    std::memcpy(&b, src + c, sizeof(Vector));
    a += b;
    std::memcpy(dst + c, &a, sizeof(Vector));
  }
  return c;
}

// dst[0 .. n) += src[0 .. n) in 64-byte vectors, then 16-byte ones, then single
// elements: a run of 48 channels is three 64-byte adds, one of 20 a 64-byte and a
// 16-byte add (the loop as written became 64-byte adds and a scalar tail, and
// ran LeNet's 20-channel layer 3% slower than four floats at a time).
template <typename T>
__attribute__((always_inline)) inline void add_run(T* __restrict dst, const T* __restrict src, int64_t n) {
  typedef T Wide __attribute__((vector_size(64)));
  typedef T Narrow __attribute__((vector_size(16)));
  int64_t c = add_vectors<T, Wide>(dst, src, 0, n);
  c = add_vectors<T, Narrow>(dst, src, c, n);
  for (; c < n; ++c) dst[c] += src[c];
}

// Adds rows m0 .. m1 of col^T (row m: pixel m of the chunk's output pixels, image
// by image; its columns taps t0 .. t0 + taps, runs of Cg channels, row stride ld)
// into the pixel-major planes dx_t, channels c0 .. c1 of each run: tap t of output
// pixel o at pixel o + tap_shift[t]. Compiled per instruction set: in the
// baseline build the adds ran four floats at a time, 5% of the AlphaGo 5x5 input
// layer's pass.
template <typename T>
CONVX_SIMD_CLONES void add_pixel_rows(const ShiftedGeometry& g, const T* col, int64_t ld, int64_t m0, int64_t m1,
                                      const int64_t* tap_shift, int64_t t0, int64_t taps, int64_t Cg, int64_t c0,
                                      int64_t c1, T* dx_t) {
  const int64_t L = g.OH * g.OW;
  int64_t j = m0 / L, oh = m0 % L / g.OW, ow = m0 % g.OW;
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t o = j * g.plane + oh * g.Wq + ow;
    const T* src_row = col + (m - m0) * ld + c0;
    for (int64_t t = 0; t < taps; ++t)
      add_run(dx_t + (o + tap_shift[t0 + t]) * Cg + c0, src_row + t * Cg, c1 - c0);
    if (++ow == g.OW) {
      ow = 0;
      if (++oh == g.OH) oh = 0, ++j;
    }
  }
}

// Rows m0 .. m0 + M of dY^T for the images from n0 (group gr), written straight
// into the GEMM's packed A layout: A[i][k] = dY[n0 + m / L][gr*Kg + k][m % L] with
// m = m0 + i. An 8-pixel strip inside one image is a run of 8 values of each
// filter's plane, copied whole; one that crosses into the next image, or past the
// last row (zero padding rows), goes element by element.
template <typename T>
void pack_grad_output_transposed(const Conv2dParams& p, const T* grad_output, int64_t gr, int64_t n0, int64_t m0,
                                 int64_t M, T* dst) {
  const int64_t Kg = p.filters_per_group(), L = p.out_h() * p.out_w();
  const PackedALayout layout = gemm_packed_a_layout(M, Kg);
  const int64_t mr = layout.mr;
  const T* const first = grad_output + (n0 * p.K + gr * Kg) * L;  // image n0, the group's filter 0
#pragma omp parallel for schedule(static) if (layout.padded_m * Kg > 16384 && !omp_in_parallel())
  for (int64_t i0 = 0; i0 < layout.padded_m; i0 += mr) {
    const int64_t m = m0 + i0;
    const bool one_run = i0 + mr <= M && m % L + mr <= L;
    const T* const src = first + (m / L) * p.K * L + m % L;  // filter 0's run, if one_run
    for (int64_t k0 = 0; k0 < Kg; k0 += layout.kc) {
      T* d = dst + layout.at(i0, k0);  // then the strip's rows k0.. follow, mr apart
      const int64_t depth = std::min(layout.kc, Kg - k0);
      for (int64_t k = k0; k < k0 + depth; ++k, d += mr) {
        if (one_run && mr == 8) {  // a fixed-size copy, inlined (a call to memmove per run cost 3%)
          T run[8];
          std::memcpy(run, src + k * L, sizeof(run));
          std::memcpy(d, run, sizeof(run));
        } else if (one_run) {
          std::copy(src + k * L, src + k * L + mr, d);
        } else {
          for (int64_t i = 0; i < mr; ++i)
            d[i] = i0 + i < M ? first[((m + i) / L * p.K + k) * L + (m + i) % L] : T(0);
        }
      }
    }
  }
}

// Columns [t0 * Cg, (t0 + taps) * Cg) of W'[k][(t, c)] = W[k][c][t] (group gr),
// written into the GEMM's packed B layout (Kg x taps*Cg): the GEMM's columns in
// (tap, channel) order, so each pixel's row of col^T adds into the planes as runs
// of Cg channels. kFiltersPerCopy filters at a time, each one's Cg x taps block is
// transposed 16 x 16 at a time through registers (by whole-vector loads while they
// stay inside the weights) into a copy, then copied into the packed strips.
// Element by element, the packing took a sixth of the AlphaGo input layer's pass;
// with one transpose call per filter, the calls' OpenMP entry took a twentieth.
template <typename T>
void pack_filter_taps(const Conv2dParams& p, const T* weight, int64_t gr, int64_t t0, int64_t taps, T* dst) {
  constexpr int64_t kFiltersPerCopy = 16;
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group(), RS = p.R * p.S, cols = taps * Cg;
#pragma omp parallel if (Kg * cols > 16384 && !omp_in_parallel())
  {
    Scratch<T> rows(kFiltersPerCopy * cols);
#pragma omp for schedule(static)
    for (int64_t k0 = 0; k0 < Kg; k0 += kFiltersPerCopy) {
      const int64_t filters = std::min(kFiltersPerCopy, Kg - k0);
      transpose_batch_cpu<T>(filters, Cg, taps, weight + (gr * Kg + k0) * Cg * RS + t0, Cg * RS, RS, rows.data(),
                             cols, Cg, weight + p.weight_numel());
      for (int64_t k = k0; k < k0 + filters; ++k) {
        const T* row = rows.data() + (k - k0) * cols;
        const PackedBRow packed = gemm_packed_b_row<T>(Kg, cols, k);
        for (int64_t n0 = 0; n0 < cols; n0 += packed.nr) {
          T* d = dst + packed.at(n0);
          const int64_t len = std::min(packed.nr, cols - n0);
          std::fill(std::copy(row + n0, row + n0 + len, d), d + packed.nr, T(0));  // zero the padding columns
        }
      }
    }
  }
}

// How the pixel-major backward-data cuts col^T (pixels x RS*Cg): columns in blocks
// of `taps` whole taps, whose slice of W' (Kg x taps*Cg, packed) is made once and
// serves every row block; rows in blocks of `rows` pixels.
// - W' blocks of up to 512 KiB: each block reads the whole of W (a few taps of
//   every filter), so they are few, two on the AlphaGo input layer (13 and 12
//   taps of 25). In blocks of 3 taps W' was read nine times over, from beyond L2:
//   a tenth of the pass.
// - col^T blocks of about 256 KiB per thread, a quarter of a core's L2: the GEMM
//   writes them and the adds read them back from cache. Where whole images fit
//   in such a block, the rows are the chunk's images (sized with col^T whole, see
//   backward_data_pixel_major): LeNet's second layer in blocks of 2 of its 6
//   images ran its GEMMs and adds on one thread (too small for the team), 0.87x
//   torch at two threads against 1.46x.
// Where each element's adds fall does not depend on the row blocks (they go in
// order of tap block, pixel, tap), so neither does the result.
struct PixelMajorBlocks {
  int64_t taps, rows;
};
PixelMajorBlocks pixel_major_blocks(int64_t RS, int64_t Cg, int64_t Kg, int64_t L, int64_t images,
                                    int64_t elem_bytes) {
  const int64_t taps = equal_part_size(RS, std::clamp<int64_t>((int64_t(512) << 10) / (Kg * Cg * elem_bytes), 1, RS));
  const int64_t col_bytes = (int64_t(256) << 10) * omp_get_max_threads();
  const int64_t most_rows = std::max<int64_t>(8, col_bytes / (taps * Cg * elem_bytes));
  if (L <= most_rows) return {taps, images * L};
  return {taps, std::min(images * L, (equal_part_size(images * L, most_rows) + 7) / 8 * 8)};
}

// Backward-data with the gradient built in pixel-major planes, for layers with
// many filters (where the scatter's wide GEMM, W^T dY_wide, pays for dropped
// columns over a long reduction) and few channels (too few for the flipped
// forward). The kept output pixels are the GEMM's rows, so nothing is padded to
// 48-wide strips but the columns, R*S*Cg of them:
//   colT (pixels x RS*Cg) = dY^T (pixels x Kg) * W' (Kg x RS*Cg),  W'[k][(r, s, c)] = W[k][c][r][s]
//   dxT[o + shift(r, s)][c] += colT[o][(r, s, c)]    a run of Cg per pixel and tap
// then dX is the interior of dxT, transposed back to channel-major planes. Like
// col2im, but adding runs of Cg channels (48 for the AlphaGo input layer) where
// col2im adds output rows (19 values). Every product is one of the direct
// convolution's: no test for non-finite values is needed.
// colT, W' and dY^T are made a block at a time (pixel_major_blocks): whole, they
// and the GEMM's copy of W' took 3.6 MB on the AlphaGo input layer, where torch's
// pass takes 1.3 MB; in blocks 0.9 MB, for 2% more time (0.78 -> 0.79 ms on one
// core, 0.43 -> 0.44 on two). Images are still chunked as when colT was whole.
template <typename T>
void backward_data_pixel_major(const Conv2dParams& p, const T* grad_output, const T* weight, T* grad_input) {
  const ShiftedGeometry g = shifted_geometry(p);
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group(), RS = p.R * p.S, CRS = Cg * RS;
  const int64_t L = g.OH * g.OW;
  const int64_t images = images_per_chunk<T>(p, L * (CRS + Kg) + 2 * Cg * g.phases * g.plane);
  const int64_t pixels = g.phases * images * g.plane;
  const std::vector<int64_t> tap_shift = row_shifts(p, g, 1, images);
  const PixelMajorBlocks cut = pixel_major_blocks(RS, Cg, Kg, L, images, sizeof(T));
  Scratch<T> dy_t(gemm_packed_a_size<T>(cut.rows, Kg)), filters(gemm_packed_b_size<T>(Kg, cut.taps * Cg)),
      col(cut.rows * cut.taps * Cg), planes(pixels * Cg), planes_t(pixels * Cg);
  // Pixel-major, then transposed into planes_t. A kept pixel's taps all lie inside
  // its image's planes, so the adds need no slack past them.
  T* const dx_t = planes.data();
  int64_t packed_group = -1, packed_t0 = -1;  // what `filters` holds now
  for (int64_t gr = 0; gr < p.groups; ++gr)
    for (int64_t n0 = 0; n0 < p.N; n0 += images) {
      const int64_t count = std::min(images, p.N - n0);
      std::fill(dx_t, dx_t + pixels * Cg, T(0));
      for (int64_t t0 = 0; t0 < RS; t0 += cut.taps) {
        const int64_t taps = std::min(cut.taps, RS - t0), cols = taps * Cg;
        if (packed_group != gr || packed_t0 != t0) {  // one block of all taps serves every chunk
          pack_filter_taps(p, weight, gr, t0, taps, filters.data());
          packed_group = gr, packed_t0 = t0;
        }
        for (int64_t m0 = 0; m0 < count * L; m0 += cut.rows) {
          const int64_t rows = std::min(cut.rows, count * L - m0);
          pack_grad_output_transposed(p, grad_output, gr, n0, m0, rows, dy_t.data());
          gemm_packed_cpu<T>(rows, cols, Kg, dy_t.data(), filters.data(), col.data(), cols);
          // Threads take whole images where the block holds several, else ranges of
          // channels (whole vectors of them): either way each element of dx_t gets
          // its adds in the same order as on one thread.
          const int64_t images_here = m0 % L == 0 && rows % L == 0 ? rows / L : 1;
          const int64_t lanes = gemm_vector_lanes<T>(), vectors = (Cg + lanes - 1) / lanes;
          const int64_t jobs = images_here > 1 ? images_here : std::min<int64_t>(vectors, omp_get_max_threads());
#pragma omp parallel for schedule(static) if (jobs > 1 && double(rows) * double(cols) > 65536.0 && !omp_in_parallel())
          for (int64_t job = 0; job < jobs; ++job) {
            if (images_here > 1) {
              add_pixel_rows(g, col.data() + job * L * cols, cols, m0 + job * L, m0 + (job + 1) * L, tap_shift.data(),
                             t0, taps, Cg, 0, Cg, dx_t);
            } else {
              const int64_t c0 = std::min(Cg, vectors * job / jobs * lanes);
              const int64_t c1 = std::min(Cg, vectors * (job + 1) / jobs * lanes);
              add_pixel_rows(g, col.data(), cols, m0, m0 + rows, tap_shift.data(), t0, taps, Cg, c0, c1, dx_t);
            }
          }
        }
      }
      transpose_cpu<T>(pixels, Cg, dx_t, Cg, planes_t.data(), pixels);
      for (int64_t j = 0; j < count; ++j)
        read_plane_interiors(p, g, planes_t.data(), images, j, Cg,
                             grad_input + ((n0 + j) * p.C + gr * Cg) * p.H * p.W);
    }
}

template <typename T>
bool all_finite(const T* x, int64_t n) {
  unsigned any_not_finite = 0;
  for (int64_t i = 0; i < n; ++i) any_not_finite |= not_finite(x[i]);
  return any_not_finite == 0;
}

}  // namespace

template <typename T>
bool conv2d_backward_data_shifted_cpu(const Conv2dParams& p, const T* grad_output, const T* weight, T* grad_input) {
  if (p.N == 0) return true;
  if (conv2d_shifted_backward_data_flips(p)) {
    backward_data_flipped_forward(p, grad_output, weight, grad_input);
    return true;
  }
  if (conv2d_shifted_backward_data_pixel_major(p)) {
    backward_data_pixel_major(p, grad_output, weight, grad_input);
    return true;
  }
  // The scatter adds the dropped columns' products, zero unless a weight is not
  // finite (inf * 0 = NaN would land in a neighbouring pixel): then im2col.
  if (!all_finite(weight, p.weight_numel())) return false;
  backward_data_scatter(p, grad_output, weight, grad_input);
  return true;
}

// The dot-product weight gradient with dY read in place, for output rows of whole
// vectors (a 7x7 stem's 112): segment (j, oh) pairs dY row oh of image j with
// row oh of its planes, so only the kept columns are multiplied. Laying dY out
// wide instead copied all of it once per call (25.7 MB for the stem at batch 8,
// which the dot products then read back from L3): the stem's weight gradient ran
// at 0.80-1.06x torch that way, 0.92-1.17x reading dY in place (interleaved,
// alternating builds). Every product is one of the direct convolution's, so this
// form needs no test for non-finite input either.
template <typename T>
void backward_weight_dy_in_place(const Conv2dParams& p, const ShiftedGeometry& g, const T* grad_output,
                                 const T* input, T* grad_weight) {
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group(), CRS = Cg * p.R * p.S;
  const int64_t images = images_per_chunk<T>(p, Cg * g.phases * g.plane);
  const std::vector<int64_t> shift = row_shifts(p, g, Cg, images);
  Scratch<T> planes(Cg * g.phases * images * g.plane);
  std::vector<const T*> a_rows(Kg), b_rows(CRS);
  for (int64_t e = 0; e < CRS; ++e) b_rows[e] = planes.data() + shift[e];
  std::vector<int64_t> a_off(images * g.OH), b_off(images * g.OH);
  for (int64_t j = 0; j < images; ++j)
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      a_off[j * g.OH + oh] = (j * p.K * g.OH + oh) * g.OW;
      b_off[j * g.OH + oh] = j * g.plane + oh * g.Wq;
    }
  for (int64_t gr = 0; gr < p.groups; ++gr)
    for (int64_t n0 = 0; n0 < p.N; n0 += images) {
      const int64_t count = std::min(images, p.N - n0), jobs = count * Cg;
#pragma omp parallel for schedule(static) \
    if (jobs > 1 && double(count) * double(Cg * g.phases) * double(g.plane) > 65536.0 && !omp_in_parallel())
      for (int64_t job = 0; job < jobs; ++job) {
        const int64_t j = job / Cg, c = job % Cg;
        fill_planes(p, g, input + ((n0 + j) * p.C + gr * Cg + c) * p.H * p.W, 1, j, images,
                    planes.data() + c * g.phases * images * g.plane);
      }
      for (int64_t k = 0; k < Kg; ++k) a_rows[k] = grad_output + (n0 * p.K + gr * Kg + k) * g.OH * g.OW;
      gemm_abt_segments_cpu<T>(Kg, CRS, count * g.OH, g.OW, a_rows.data(), a_off.data(), b_rows.data(), b_off.data(),
                               n0 > 0 ? T(1) : T(0), grad_weight + gr * Kg * CRS, CRS);
    }
}

template <typename T>
bool conv2d_backward_weight_shifted_cpu(const Conv2dParams& p, const T* grad_output, const T* input,
                                        T* grad_weight) {
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group(), CRS = Cg * p.R * p.S;
  if (p.N == 0) {
    std::fill(grad_weight, grad_weight + p.K * CRS, T(0));
    return true;
  }
  const ShiftedGeometry g = shifted_geometry(p);
  if (!gemm_abt_uses_dot_products(Kg, CRS)) {
    backward_weight_pixel_major(p, g, grad_output, input, grad_weight);
    return true;
  }
  if (g.OW % (64 / int64_t(sizeof(T))) == 0) {
    backward_weight_dy_in_place(p, g, grad_output, input, grad_weight);
    return true;
  }
  // Images go through in chunks, their planes (and wide dY) laid end to end, so a
  // dot product runs over the whole chunk at once; the chunk is sized by the shape
  // alone (a fixed summation order; see images_per_chunk).
  const int64_t images = images_per_chunk<T>(p, (Cg * g.phases + Kg) * g.plane);
  const std::vector<int64_t> shift = row_shifts(p, g, Cg, images);
  const int64_t blocks = Cg * g.phases, planes_size = blocks * images * g.plane + g.slack;
  Scratch<T> planes(planes_size), dy_wide(Kg * images * g.plane);
  std::vector<const T*> a_rows(Kg), b_rows(CRS);
  for (int64_t k = 0; k < Kg; ++k) a_rows[k] = dy_wide.data() + k * images * g.plane;
  for (int64_t e = 0; e < CRS; ++e) b_rows[e] = planes.data() + shift[e];
  for (int64_t gr = 0; gr < p.groups; ++gr)
    for (int64_t n0 = 0; n0 < p.N; n0 += images) {
      const int64_t count = std::min(images, p.N - n0);
      bool finite = true;
      // Each image's channels into their planes and filters' dY rows widened, one
      // job per plane set or row (disjoint writes), spread over the threads: on
      // one copy loop this was nearly a third of the 7x7 stem's time at two threads
      // (1 image a chunk), and LeNet's first layer gained 1.16x from the second.
      const int64_t jobs = count * (Cg + Kg);
#pragma omp parallel for schedule(static) reduction(&& : finite) \
    if (jobs > 1 && double(count) * double(blocks + Kg) * double(g.plane) > 65536.0 && !omp_in_parallel())
      for (int64_t job = 0; job < jobs; ++job) {
        const int64_t j = job / (Cg + Kg), e = job % (Cg + Kg), n = n0 + j;
        if (e < Cg) {  // channel e: its phases' planes, each `images` planes apart
          finite = fill_planes(p, g, input + (n * p.C + gr * Cg + e) * p.H * p.W, 1, j, images,
                               planes.data() + e * g.phases * images * g.plane) &&
                   finite;
        } else {
          const int64_t k = e - Cg;
          T* dst = dy_wide.data() + (k * images + j) * g.plane;
          widen_plane(g, grad_output + (n * p.K + gr * Kg + k) * g.OH * g.OW, dst);
          std::fill(dst + g.wide, dst + g.plane, T(0));
        }
      }
      if (!finite) return false;
      zero_past_last_image(g, blocks, count, images, planes.data());
      // Past the last image's wide columns dY is zero: stop there.
      const int64_t length = (count - 1) * g.plane + g.wide;
      gemm_abt_rows_cpu<T>(Kg, CRS, length, a_rows.data(), b_rows.data(), n0 > 0 ? T(1) : T(0),
                           grad_weight + gr * Kg * CRS, CRS);
    }
  return true;
}

#define CONVX_INSTANTIATE(T)                                                                               \
  template void conv2d_forward_shifted_cpu<T>(const Conv2dParams&, const T*, const T*, const T*, T*);      \
  template bool conv2d_backward_data_shifted_cpu<T>(const Conv2dParams&, const T*, const T*, T*);          \
  template bool conv2d_backward_weight_shifted_cpu<T>(const Conv2dParams&, const T*, const T*, T*);
CONVX_INSTANTIATE(float)
CONVX_INSTANTIATE(double)
#undef CONVX_INSTANTIATE

}  // namespace convx
