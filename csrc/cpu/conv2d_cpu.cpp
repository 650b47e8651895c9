// conv2d on the CPU: the readable direct reference and the im2col + GEMM path,
// forward beside both backwards, and the dispatcher that picks between them.
//
// Layout: input N x C x H x W, weight K x Cg x R x S (Cg = C / groups),
// output N x K x OH x OW. Filter k belongs to group g = k / Kg (Kg = K / groups)
// and sees input channels g*Cg .. g*Cg + Cg - 1.
#include "convx/conv2d.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include "convx/gemm.h"
#include "convx/im2col.h"
#include "convx/workspace.h"

namespace convx {
namespace {

// The reference kernels sum in double, float32 included: they are the yardstick,
// so they should be at least as accurate as anything they are compared with.
using ReferenceAccumulator = double;

// Waking the thread team costs microseconds on an idle machine and up to a
// scheduler time slice on a loaded one: only worth it for real work.
constexpr double kParallelMinFlops = 65536.0;
double direct_flops(const Conv2dParams& p) {
  return double(p.N) * double(p.K) * double(p.out_h()) * double(p.out_w()) * double(p.channels_per_group()) *
         double(p.R) * double(p.S);
}

// A 1x1 kernel with unit stride and no padding reads the image exactly as the
// GEMM wants it: the column matrix is the image itself, no copy needed.
bool is_pointwise(const Conv2dParams& p) {
  return p.R == 1 && p.S == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_top == 0 &&
         p.pad_bottom == 0 && p.pad_left == 0 && p.pad_right == 0;
}

}  // namespace

Conv2dAlgo conv2d_algo_from_name(const std::string& name) {
  if (name == "auto") return Conv2dAlgo::Auto;
  if (name == "direct") return Conv2dAlgo::Direct;
  if (name == "im2col") return Conv2dAlgo::Im2col;
  if (name == "winograd_4x4") return Conv2dAlgo::Winograd4x4;
  if (name == "winograd_2x2") return Conv2dAlgo::Winograd2x2;
  if (name == "shifted") return Conv2dAlgo::Shifted;
  if (name == "depthwise") return Conv2dAlgo::Depthwise;
  throw std::invalid_argument(
      "algo must be one of 'auto', 'direct', 'im2col', 'winograd_4x4', 'winograd_2x2', 'shifted', 'depthwise', "
      "got '" +
      name + "'");
}

const char* conv2d_algo_name(Conv2dAlgo algo) {
  switch (algo) {
    case Conv2dAlgo::Auto: return "auto";
    case Conv2dAlgo::Direct: return "direct";
    case Conv2dAlgo::Im2col: return "im2col";
    case Conv2dAlgo::Winograd4x4: return "winograd_4x4";
    case Conv2dAlgo::Winograd2x2: return "winograd_2x2";
    case Conv2dAlgo::Shifted: return "shifted";
    case Conv2dAlgo::Depthwise: return "depthwise";
  }
  return "unknown";
}

namespace {
std::atomic<bool> allow_winograd_4x4{true};
}  // namespace

void conv2d_set_allow_winograd_4x4(bool allow) { allow_winograd_4x4.store(allow, std::memory_order_relaxed); }
bool conv2d_allow_winograd_4x4() { return allow_winograd_4x4.load(std::memory_order_relaxed); }

Conv2dAlgo conv2d_choose_algo(const Conv2dParams& p, Conv2dDirection direction) {
  // Layers with one input channel per group (depthwise, as in MobileNet): a
  // group's GEMM has fewer rows than the 8-row micro-tile and reduces over the
  // R*S taps alone, so each plane is summed from shifted copies of itself
  // instead (conv2d_depthwise_cpu.cpp). Ms on one core, depthwise / shifted
  // (forward, backward-data, weight gradient):
  //   128 channels on 56x56, 3x3, batch 8          3.2 / 62 (direct, the rule before)
  //   16 -> 64 on 56x56 (4 filters per group)      1.08 / 4.3   1.15 / 3.7   1.11 / 1.08
  //   16 -> 128 (8 per group)                      2.2 / 3.2    2.2 / 4.3    2.3 / 2.0
  //   1 -> 8 3x3 on 28x28, batch 32                0.14 / 0.17  0.19 / 0.35  0.18 / 0.18
  //   1 -> 20 5x5 on 28x28, batch 64 (LeNet's first layer)
  //                                                1.05 / 0.74  1.34 / 1.33  1.14 / 0.88
  if (conv2d_depthwise_applies(p) &&
      (p.filters_per_group() <= 4 || (p.filters_per_group() <= 8 && direction != Conv2dDirection::BackwardWeight)))
    return Conv2dAlgo::Depthwise;
  // Other layers of one or two filters per group, each a few taps: the GEMM's M
  // dimension is smaller than its 8-row micro-tile and its reduction is a
  // handful of terms, so lowering to a GEMM only adds the im2col copy; the
  // direct loops do the same arithmetic without it. (One filter over
  // many channels, like the AlphaGo net's 192 -> 1 output layer, is still a
  // long reduction: there the GEMM is 6x faster than the direct loops.)
  if (p.filters_per_group() <= 2 && p.channels_per_group() * p.R * p.S <= 16) return Conv2dAlgo::Direct;
  // Winograd F(2x2, 3x3) does 2.25x fewer multiplies than a GEMM over the taps,
  // F(4x4, 3x3) 4x fewer (see conv2d_winograd_cpu.cpp for their float32 error:
  // F(2x2) about a GEMM's, F(4x4) a few times that, 2e-6 relative on the suite's
  // layers). Both pay a transform per tile and channel, so they need wide layers
  // to amortize them, and one per filter, so they need enough tiles in the batch.
  // Measured on one core: 64 -> 64 on 56x56 and the AlphaGo body (192 -> 192) at
  // batch 1 (100 2x2 tiles) win; the seed's 25 -> 50 digits layer loses by up to
  // 1.6x (its GEMMs are too thin for the transforms to pay off), and so does
  // 32 -> 32 on 28x28.
  const int64_t tiles2 = p.N * ((p.out_h() + 1) / 2) * ((p.out_w() + 1) / 2);
  const int64_t tiles4 = p.N * ((p.out_h() + 3) / 4) * ((p.out_w() + 3) / 4);
  // F(4x4)'s 36 products per 4x4 tile against F(2x2)'s 16 per 2x2 tile: 56% on
  // 7x7, 19x19, 28x28 and 56x56, 73% on 13x13 and 14x14, 81% on 10x10.
  const double products_4x4 = 36.0 * double(tiles4) / (16.0 * double(tiles2));
  // F(4x4) from 16 4x4 tiles in the batch where it does at most 75% of F(2x2)'s
  // products, from 96 where it does up to 85%; for the weight gradient, whose
  // F(3x3, 4x4) transforms cost more per filter, from 32 at up to 60% and 48 at
  // up to 85%. Ms on one core, F(4x4) / F(2x2) (/ shifted), forward, backward-data,
  // weight gradient:
  //   192 -> 192 on 19x19 at batch 2 (50 tiles)   1.30 / 1.48   1.28 / 1.47   1.24 / 1.56
  //                       at batch 1 (25)          0.82 / 0.83   0.81 / 0.83   0.91 / 0.86
  //   256 -> 256 on 19x19 at batch 1 (25)          1.33 / 1.40   1.29 / 1.45   1.55 / 1.59
  //   512 -> 512 on 7x7 at batch 8 (32)            6.3 / 7.0 / 8.3   5.4 / 7.2 / 8.3   7.0 / 7.6
  //                     at batch 4 (16)            4.3 / 4.1 / 4.4   4.0 / 4.2 / 4.4   5.1 / 4.9
  //   256 -> 256 on 14x14 at batch 2 (32)          1.33 / 1.55   1.23 / 1.50   1.73 / 1.60
  //                       at batch 1 (16)          0.85 / 0.88 / 1.10   0.83 / 0.87 / 1.13   1.22 / 0.95
  //   64 -> 64 on 14x14 at batch 8 (128)           0.45 / 0.55   0.47 / 0.57   0.51 / 0.61
  //   128 -> 128 on 10x10 at batch 8 (72)          0.92 / 0.89   0.90 / 0.88   0.96 / 0.94
  //                       at batch 4 (36)          0.59 / 0.49   0.59 / 0.49   0.58 / 0.51
  // (Before the filter transform was vectorized, F(4x4) needed 48 tiles: it
  // transforms 36 values per filter on every call, which few tiles do not repay.)
  bool four_by_four = conv2d_allow_winograd_4x4() && products_4x4 <= 0.85 &&
                      (tiles4 >= 96 || (tiles4 >= 16 && products_4x4 <= 0.75));
  if (direction == Conv2dDirection::BackwardWeight)
    four_by_four = four_by_four && (tiles4 >= 48 || (tiles4 >= 32 && products_4x4 <= 0.6));
  // Below 8x8 outputs per image, with too few tiles for F(4x4), the forward goes
  // to the shifted GEMM instead, and so does the backward-data pass where the
  // shifted form runs it as a forward: 512 channels on 7x7 at batch 2, shifted
  // 2.4 / 2.5 ms against F(2x2)'s 2.4 / 2.6 (at batch 1 1.4 / 1.5 against 1.7 / 1.9).
  const bool small_images = p.out_h() * p.out_w() < 64;
  bool winograd_wins = true;
  switch (direction) {
    case Conv2dDirection::Forward: winograd_wins = four_by_four || !small_images; break;
    case Conv2dDirection::BackwardData:
      winograd_wins = four_by_four || !(small_images && conv2d_shifted_backward_data_flips(p));
      break;
    case Conv2dDirection::BackwardWeight:
      // The weight gradient's F(3x3, 2x2) / F(3x3, 4x4) pay their transforms per
      // tile and per input and output channel. Against the shifted GEMM's
      // pixel-major form (ms on one core, Winograd / shifted): F(4x4) wins from
      // 4096 channel pairs (64 -> 64 on 56x56 7.1 / 8.0, on 14x14 at batch 32
      // 1.92 / 2.09; 64 -> 128 on 112x112 20.8 / 31.5), but for 64 -> 64 on 13x13
      // at batch 32 (1.88 / 1.80); F(2x2) from 16384 (AlphaGo body at batch 1
      // 0.81 / 1.12, 512 channels on 7x7 at batch 8 8.2 / 10.1), and loses on
      // 64 -> 64 on 14x14 at batch 32 (2.42 / 2.09).
      winograd_wins = four_by_four || p.C * p.K >= 16384;
      break;
  }
  // Winograd needs 64 2x2 tiles, or 32 on layers of 16384+ channel pairs, whose
  // GEMMs repay the transforms sooner (ms on one core, F(4x4) / shifted, 49
  // tiles, forward: 128 -> 128 on 14x14 0.26 / 0.29, 64 -> 64 0.11 / 0.08).
  const bool enough_tiles = tiles2 >= 64 || (tiles2 >= 32 && p.C * p.K >= 16384);
  if (conv2d_winograd_applies(p, 4) && p.C >= 16 && p.K >= 16 && p.C * p.K >= 4096 && enough_tiles && winograd_wins)
    return four_by_four ? Conv2dAlgo::Winograd4x4 : Conv2dAlgo::Winograd2x2;
  // F(2x2, 5x5): 36 products for 4 outputs of a 5x5 filter, 2.8x fewer multiplies
  // than the GEMM over the taps, but an input transform per 2x2 tile and input
  // channel (four times F(4x4, 3x3)'s per output) and a 25-tap filter transform
  // per call, so it needs wide layers. Ms on one core (the model-207 Xeon),
  // F(2x2, 5x5) / shifted, each direction timed in turn per call:
  //                                    forward        backward-data   weight gradient
  //   48 -> 192 on 19x19 at batch 1    1.28 / 1.43    1.75 / 1.70     1.60 / 1.73
  //                      at batch 16   17.3 / 20.1    28.0 / 28.7     18.2 / 23.0
  //   32 -> 64 on 28x28 at batch 8     4.9 / 5.7      8.3 / 7.1       5.1 / 5.0
  //                     at batch 1     0.60 / 0.65    0.82 / 0.83     0.82 / 0.67
  //   64 -> 128 on 14x14 at batch 8    3.6 / 4.7      6.9 / 6.2       3.7 / 5.4
  //                      at batch 1    0.72 / 0.77    0.81 / 0.89     0.84 / 1.02
  //   96 -> 96 on 28x28 at batch 4     9.4 / 13.5     12.1 / 14.6     11.0 / 16.4
  //   128 -> 128 on 19x19 at batch 1   1.80 / 2.18    2.60 / 2.76     2.70 / 3.21
  //   32 -> 32 on 19x19 at batch 2     0.39 / 0.34    0.48 / 0.49     0.64 / 0.39
  //   20 -> 50 on 12x12 at batch 64    2.80 / 2.25    10.6 / 3.0      3.6 / 2.7
  // The forward wins from 32 input channels and 2048 channel pairs, with at
  // least as many filters as inputs. The backward-data transforms the K side's
  // channels, so on large batches it wins only where they are no more than the
  // inputs; on small ones, up to 128 tiles, it wins with more filters too. Timed
  // again after the transforms ran a vector of tiles at a time, F(2x2, 5x5) /
  // shifted, backward-data (torch):
  //   48 -> 192 on 19x19 at batch 1 (100 tiles)   1.21-1.25 / 1.32-1.33 (1.16-1.19)
  //                      at batch 2 (200)          2.42-2.73 / 2.66-2.69
  //                      at batch 4 (400)          7.1-7.3 / 6.6-6.7
  //   64 -> 128 on 14x14 at batch 1 (49)           0.80-0.82 / 0.93-0.96
  //                      at batch 2 (98)           1.36-1.38 / 1.76
  // The weight gradient transforms both sides per tile and wins from 8192 pairs.
  // All need 32 tiles or more (the smallest above has 49). The workspace grows
  // with them: AlphaGo's input layer at batch 1 takes about 5 MB in each
  // direction, against 0.4-1.0 MB with the shifted GEMM and 1.3-2.1 MB in torch
  // (where it ran 0.85-0.97x torch with the shifted GEMM, the suite's slowest
  // rows).
  if (p.R == 5 && conv2d_winograd_applies(p, 2) && p.C >= 32 && tiles2 >= 32) {
    const int64_t pairs = p.C * p.K;
    const bool wins = direction == Conv2dDirection::Forward        ? p.K >= p.C && pairs >= 2048
                      : direction == Conv2dDirection::BackwardData ? (p.K <= p.C || tiles2 <= 128) && pairs >= 8192
                                                                   : pairs >= 8192;
    if (wins) return Conv2dAlgo::Winograd2x2;
  }
  // A 1x1 layer's GEMM reads the image itself (no im2col): nothing to save.
  if (is_pointwise(p)) return Conv2dAlgo::Im2col;
  // The shifted-plane GEMM skips im2col's copy of the image R*S times over, at the
  // price of computing the Wq - OW dropped columns of every output row. Measured on
  // one core against im2col (speed vs torch, shifted / im2col):
  //  - forward: ahead on every layer of the suite, most where the copy dominates
  //    (few channels, big filters: LeNet 1.2-1.4x / 0.8x, 7x7 stem 1.9x / 1.3x);
  //  - backward data: as the forward of the flipped filters, ahead when they have
  //    64+ outputs (64 channels at 56x56: 1.01x / 0.76x); as a scatter of W^T dY,
  //    ahead with up to 64 filters (digits layers 4.6x / 3.3x and 1.17x / 0.90x,
  //    LeNet 6.8x / 6.3x and 1.11x / 1.00x), behind with more, where its wider
  //    GEMM costs more than col2im saves (48 -> 192 5x5 on 19x19: 0.59x / 0.85x),
  //    and where an image's col, dY and planes overflow the cache (the 7x7 stem's
  //    10.9 MB: 3.5x / 3.1x on the Zen 5, but 1.7-1.8x / 3.0-3.1x on the Xeon,
  //    whose memory is slow, and 1.7-1.9x / 2.6-2.7x at two threads; made in
  //    bands that stay in L2 it was level with im2col at one thread, but its adds
  //    run on one thread); as the GEMM over pixel-major planes, ahead on layers of 16+
  //    channels and 400+ taps (the same layer: 0.80 / 0.85 ms);
  //  - weight gradient: ahead on every layer measured. Up to 10000 entries as dot
  //    products (stem 1.08x / 0.66x, the digits CNN's first layer 1.6x / 1.3x),
  //    beyond as the GEMM over pixel-major planes (the digits CNN's second layer,
  //    50 x 225 entries: 1.09-1.15x torch on the Xeon, 0.84-0.91x as dot
  //    products; ms, shifted / im2col: LeNet's second layer 1.24 / 2.17,
  //    48 -> 192 5x5 on 19x19 0.74 / 0.84, 64 -> 64 on 56x56 9.1 / 12.4,
  //    512 channels on 7x7 8.5 / 9.2, 3 -> 256 7x7 stride 2 3.7 / 3.7).
  //  Where the dropped columns are more than the kept ones (a dilated filter on a
  //  small image), or the padding dominates the image, im2col stays.
  if (!conv2d_shifted_applies(p) ||
      p.W + p.pad_left + p.pad_right > 2 * p.stride_w * p.out_w())  // Wq > 2 * OW
    return Conv2dAlgo::Im2col;
  switch (direction) {
    case Conv2dDirection::Forward: return Conv2dAlgo::Shifted;
    case Conv2dDirection::BackwardData: {
      // Strided layers of at most 9 taps (ResNet's 3x3 stride-2 downsampling)
      // leave the pixel-major GEMM to im2col, which beat it on every such layer
      // timed (not profiled; at stride 2 an input pixel gathers from 2.25 of a
      // 3x3 filter's taps on average, against 9 at stride 1). Ms on one core at
      // stride 2, pixel-major / im2col (torch): 64 -> 128 on 56x56 batch 8
      // 17.1 / 11.8 (13.8), 128 -> 256 on 28x28 16.9 / 11.8 (11.9), 256 -> 512
      // on 14x14 15.5 / 9.3 (9.1), 64 -> 64 on 112x112 batch 4 26.2 / 17.5
      // (27.9), 64 -> 128 on 56x56 batch 1 1.79 / 1.17 (1.56); a 5x5 layer
      // keeps it: 32 -> 64 on 56x56 12.1 / 14.0 (10.9).
      const bool pixel_major = conv2d_shifted_backward_data_pixel_major(p) &&
                               !(p.stride_h * p.stride_w > 1 && p.R * p.S <= 9);
      return conv2d_shifted_backward_data_flips(p) || pixel_major ||
                     (p.filters_per_group() <= 64 && conv2d_shifted_backward_data_scatter_fits(p))
                 ? Conv2dAlgo::Shifted
                 : Conv2dAlgo::Im2col;
    }
    case Conv2dDirection::BackwardWeight: return Conv2dAlgo::Shifted;
  }
  return Conv2dAlgo::Im2col;
}

namespace {
bool is_winograd(Conv2dAlgo algo) { return algo == Conv2dAlgo::Winograd4x4 || algo == Conv2dAlgo::Winograd2x2; }
int64_t winograd_tile(Conv2dAlgo algo) { return algo == Conv2dAlgo::Winograd4x4 ? 4 : 2; }

void require_winograd(const Conv2dParams& p, Conv2dAlgo algo) {
  if (!conv2d_winograd_applies(p, winograd_tile(algo)))
    throw std::invalid_argument(
        std::string("algo='") + conv2d_algo_name(algo) +
        (algo == Conv2dAlgo::Winograd2x2 ? "' needs a 3x3 or 5x5 kernel" : "' needs a 3x3 kernel") +
        " with stride 1, dilation 1 and groups=1, got kernel " +
        std::to_string(p.R) + "x" + std::to_string(p.S) + ", stride (" + std::to_string(p.stride_h) + ", " +
        std::to_string(p.stride_w) + "), dilation (" + std::to_string(p.dilation_h) + ", " +
        std::to_string(p.dilation_w) + "), groups=" + std::to_string(p.groups));
}

// "input HxW, kernel RxS, stride (h, w), padding (t, b, l, r), dilation (h, w)":
// what decides whether the padded planes of the shifted and depthwise forms apply.
std::string plane_geometry(const Conv2dParams& p) {
  return "input " + std::to_string(p.H) + "x" + std::to_string(p.W) + ", kernel " + std::to_string(p.R) + "x" +
         std::to_string(p.S) + ", stride (" + std::to_string(p.stride_h) + ", " + std::to_string(p.stride_w) +
         "), padding (" + std::to_string(p.pad_top) + ", " + std::to_string(p.pad_bottom) + ", " +
         std::to_string(p.pad_left) + ", " + std::to_string(p.pad_right) + "), dilation (" +
         std::to_string(p.dilation_h) + ", " + std::to_string(p.dilation_w) + ")";
}

constexpr const char* kPlanesNeed =
    "padding that does not dominate the image and a stride no wider than the kernel's reach, got ";

void require_depthwise(const Conv2dParams& p) {
  if (p.channels_per_group() != 1)
    throw std::invalid_argument("algo='depthwise' needs one input channel per group (groups == in_channels), got " +
                                std::to_string(p.C) + " input channels in " + std::to_string(p.groups) +
                                " group(s)");
  if (!conv2d_depthwise_applies(p))
    throw std::invalid_argument(std::string("algo='depthwise' needs ") + kPlanesNeed + plane_geometry(p));
}

void require_shifted(const Conv2dParams& p) {
  if (!conv2d_shifted_applies(p))
    throw std::invalid_argument(std::string("algo='shifted' needs ") + kPlanesNeed + plane_geometry(p));
}
}  // namespace

// ---- direct reference ---------------------------------------------------------

template <typename T>
void conv2d_forward_direct_cpu(const Conv2dParams& p, const T* input, const T* weight, const T* bias,
                               T* output) {
  using Acc = ReferenceAccumulator;
  const int64_t OH = p.out_h(), OW = p.out_w();
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group();
#pragma omp parallel for collapse(2) schedule(static) if (direct_flops(p) > kParallelMinFlops)
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t k = 0; k < p.K; ++k) {
      const int64_t g = k / Kg;
      T* out_plane = output + (n * p.K + k) * OH * OW;
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          Acc acc = bias ? Acc(bias[k]) : Acc(0);
          for (int64_t c = 0; c < Cg; ++c) {
            const T* in_plane = input + (n * p.C + g * Cg + c) * p.H * p.W;
            const T* w = weight + (k * Cg + c) * p.R * p.S;
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
          out_plane[oh * OW + ow] = T(acc);
        }
    }
}

// Gather form: each input pixel collects every (output, tap) pair that read it,
// so no two threads write the same element and no atomics are needed.
template <typename T>
void conv2d_backward_data_direct_cpu(const Conv2dParams& p, const T* grad_output, const T* weight,
                                     T* grad_input) {
  using Acc = ReferenceAccumulator;
  const int64_t OH = p.out_h(), OW = p.out_w();
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group();
#pragma omp parallel for collapse(2) schedule(static) if (direct_flops(p) > kParallelMinFlops)
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t ci = 0; ci < p.C; ++ci) {
      const int64_t g = ci / Cg, c = ci % Cg;
      T* gin_plane = grad_input + (n * p.C + ci) * p.H * p.W;
      for (int64_t h = 0; h < p.H; ++h)
        for (int64_t x = 0; x < p.W; ++x) {
          Acc acc = 0;
          for (int64_t k = g * Kg; k < (g + 1) * Kg; ++k) {
            const T* gout_plane = grad_output + (n * p.K + k) * OH * OW;
            const T* w = weight + (k * Cg + c) * p.R * p.S;
            for (int64_t r = 0; r < p.R; ++r) {
              // h = oh*stride - pad + r*dilation  =>  oh = (h + pad - r*dilation) / stride
              const int64_t th = h + p.pad_top - r * p.dilation_h;
              if (th < 0 || th % p.stride_h != 0) continue;
              const int64_t oh = th / p.stride_h;
              if (oh >= OH) continue;
              for (int64_t s = 0; s < p.S; ++s) {
                const int64_t tw = x + p.pad_left - s * p.dilation_w;
                if (tw < 0 || tw % p.stride_w != 0) continue;
                const int64_t ow = tw / p.stride_w;
                if (ow >= OW) continue;
                acc += Acc(gout_plane[oh * OW + ow]) * Acc(w[r * p.S + s]);
              }
            }
          }
          gin_plane[h * p.W + x] = T(acc);
        }
    }
}

template <typename T>
void conv2d_backward_weight_direct_cpu(const Conv2dParams& p, const T* grad_output, const T* input,
                                       T* grad_weight) {
  using Acc = ReferenceAccumulator;
  const int64_t OH = p.out_h(), OW = p.out_w();
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group();
#pragma omp parallel for collapse(2) schedule(static) if (direct_flops(p) > kParallelMinFlops)
  for (int64_t k = 0; k < p.K; ++k)
    for (int64_t c = 0; c < Cg; ++c) {
      const int64_t ci = (k / Kg) * Cg + c;
      for (int64_t r = 0; r < p.R; ++r)
        for (int64_t s = 0; s < p.S; ++s) {
          Acc acc = 0;
          for (int64_t n = 0; n < p.N; ++n) {
            const T* gout_plane = grad_output + (n * p.K + k) * OH * OW;
            const T* in_plane = input + (n * p.C + ci) * p.H * p.W;
            for (int64_t oh = 0; oh < OH; ++oh) {
              const int64_t h = oh * p.stride_h - p.pad_top + r * p.dilation_h;
              if (h < 0 || h >= p.H) continue;
              for (int64_t ow = 0; ow < OW; ++ow) {
                const int64_t x = ow * p.stride_w - p.pad_left + s * p.dilation_w;
                if (x < 0 || x >= p.W) continue;
                acc += Acc(gout_plane[oh * OW + ow]) * Acc(in_plane[h * p.W + x]);
              }
            }
          }
          grad_weight[((k * Cg + c) * p.R + r) * p.S + s] = T(acc);
        }
    }
}

template <typename T>
void conv2d_backward_bias_cpu(const Conv2dParams& p, const T* grad_output, T* grad_bias) {
  using Acc = ReferenceAccumulator;
  const int64_t plane = p.out_h() * p.out_w();
#pragma omp parallel for schedule(static) if (double(p.N) * double(p.K) * double(plane) > kParallelMinFlops)
  for (int64_t k = 0; k < p.K; ++k) {
    // Each plane is summed in kLanes independent partial sums of T (one running
    // sum would wait on the add latency for every element; these vectorize at the
    // full width of T), and the planes' sums are added in double: a plane holds a
    // few thousand terms, the batch many times more. The order is fixed, so the
    // result is the same for any thread count.
    constexpr int64_t kLanes = 16;
    Acc acc = 0;
    for (int64_t n = 0; n < p.N; ++n) {
      const T* g = grad_output + (n * p.K + k) * plane;
      T part[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= plane; i += kLanes)
        for (int64_t l = 0; l < kLanes; ++l) part[l] += g[i + l];
      Acc plane_sum = 0;
      for (int64_t l = 0; l < kLanes; ++l) plane_sum += Acc(part[l]);
      for (; i < plane; ++i) plane_sum += Acc(g[i]);
      acc += plane_sum;
    }
    grad_bias[k] = T(acc);
  }
}

// ---- im2col + GEMM --------------------------------------------------------------
// Per group g, with CRS = Cg*R*S, over the columns q = n*L + l of all images
// (L = OH*OW):
//   forward          Y[:, q] (Kg)      = W[g] (Kg x CRS)   * col[:, q] (CRS)
//   backward data    col[:, q] (CRS)   = W[g]^T            * dY[:, q] (Kg), then col2im
//   backward weight  dW[g] (Kg x CRS) += dY[:, q]          * col[:, q]^T
// The columns are lowered and multiplied a block at a time, so the column buffer
// stays near kColumnBlockBytes whatever the image size (convx needs no more
// memory than torch), and small images are batched into one block (a 7x7 or 8x8
// layer would otherwise run GEMMs 49 or 64 columns wide, repacking the weights
// for every image).

namespace {

constexpr double kColumnBlockBytes = 2.0 * 1024 * 1024;

// Weight gradients with at most this many entries (filters x taps) run as dot
// products (gemm_abt_small_cpu) instead of the packed GEMM. Measured on one core:
// 25 x 9 and 20 x 25 win; 50 x 225 and a 7x7 stem's 64 x 147 lose by 10-20%.
constexpr int64_t kDotProductMaxOutputs = 1024;

// A block of columns [q0, q0 + count): either part of one image or whole images.
struct ColumnBlock {
  int64_t n0, l0, count;
  bool within_image;
};

// All the blocks of a layer: either all inside images (large images) or all of
// whole images (small ones); `widest` sizes the column buffer.
struct ColumnBlocks {
  std::vector<ColumnBlock> list;
  int64_t widest = 0;
  bool whole_images = false;
};

template <typename T>
ColumnBlocks column_blocks(const Conv2dParams& p, int64_t CRS) {
  const int64_t L = p.out_h() * p.out_w();
  const int64_t target = std::max<int64_t>(256, int64_t(kColumnBlockBytes / (double(CRS) * sizeof(T))));
  ColumnBlocks blocks;
  if (L >= target) {
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t l0 = 0; l0 < L; l0 += target) blocks.list.push_back({n, l0, std::min(target, L - l0), true});
  } else {
    blocks.whole_images = true;
    const int64_t images = std::max<int64_t>(1, target / L);
    for (int64_t n0 = 0; n0 < p.N; n0 += images)
      blocks.list.push_back({n0, 0, std::min(images, p.N - n0) * L, false});
  }
  for (const ColumnBlock& b : blocks.list) blocks.widest = std::max(blocks.widest, b.count);
  return blocks;
}

// Visits the (image, first column, last column) pieces of a block.
template <typename F>
void for_each_image_piece(const ColumnBlock& b, int64_t L, F&& f) {
  if (b.within_image) {
    f(b.n0, b.l0, b.l0 + b.count, int64_t(0));
    return;
  }
  for (int64_t i = 0; i < b.count / L; ++i) f(b.n0 + i, int64_t(0), L, i * L);
}

// rows x count block of a per-image row-major (rows x L) tensor slice, copied
// out (gather) or in (scatter); offset(n) gives the slice of image n.
template <typename T, typename Offset>
void gather_rows(const ColumnBlock& b, int64_t L, int64_t rows, const T* base, Offset offset, T* dst) {
  for_each_image_piece(b, L, [&](int64_t n, int64_t l0, int64_t l1, int64_t at) {
    for (int64_t r = 0; r < rows; ++r)
      std::copy(base + offset(n) + r * L + l0, base + offset(n) + r * L + l1, dst + r * b.count + at);
  });
}
template <typename T, typename Offset>
void scatter_rows(const ColumnBlock& b, int64_t L, int64_t rows, const T* src, T* base, Offset offset) {
  for_each_image_piece(b, L, [&](int64_t n, int64_t l0, int64_t l1, int64_t at) {
    for (int64_t r = 0; r < rows; ++r)
      std::copy(src + r * b.count + at, src + r * b.count + at + (l1 - l0), base + offset(n) + r * L + l0);
  });
}

// Blocks of whole small images (several per block) are independent, and their
// GEMMs are small: with enough of them, threads take whole blocks (the im2col and
// GEMM inside then run on their thread alone, see gemm_cpu) instead of splitting
// every small GEMM and meeting at its barriers. Each block is computed exactly as
// on one thread, and blocks write disjoint images, so results do not depend on
// the thread count. Blocks inside one large image keep the threaded GEMM (their
// col2im would overlap at the block edges, and their GEMMs are big enough).
inline bool share_blocks_between_threads(int64_t jobs, bool whole_images) {
  const int threads = omp_get_max_threads();
  return whole_images && threads > 1 && jobs >= 2 * int64_t(threads) && !omp_in_parallel();
}

// run(g, block, col, aux) for every group g and block, with col and aux buffers
// of col_size and aux_size elements: each thread its own when threads share the
// blocks, else one pair used in turn.
template <typename T, typename Run>
void run_blocks(const ColumnBlocks& blocks, int64_t groups, int64_t col_size, int64_t aux_size, Run&& run) {
  const int64_t nb = int64_t(blocks.list.size()), jobs = groups * nb;
  if (share_blocks_between_threads(jobs, blocks.whole_images)) {
#pragma omp parallel
    {
      Scratch<T> col(col_size), aux(aux_size);
#pragma omp for schedule(static)
      for (int64_t job = 0; job < jobs; ++job) run(job / nb, blocks.list[job % nb], col.data(), aux.data());
    }
    return;
  }
  Scratch<T> col(col_size), aux(aux_size);
  for (int64_t job = 0; job < jobs; ++job) run(job / nb, blocks.list[job % nb], col.data(), aux.data());
}

}  // namespace

template <typename T>
void conv2d_forward_im2col_cpu(const Conv2dParams& p, const T* input, const T* weight, const T* bias,
                               T* output) {
  if (p.N == 0) return;  // nothing to compute: do not allocate the column buffer
  const Im2colParams ip = p.im2col();
  const int64_t L = p.out_h() * p.out_w();
  const int64_t CRS = ip.col_rows();
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group();
  const auto image = [&](int64_t n, int64_t g) { return input + (n * p.C + g * Cg) * p.H * p.W; };
  const auto out_slice = [&](int64_t g) { return [&p, g, Kg, L](int64_t n) { return (n * p.K + g * Kg) * L; }; };
  if (is_pointwise(p)) {
    // The column matrix of a 1x1 layer is the image itself: no lowering, no buffer.
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t g = 0; g < p.groups; ++g)
        gemm_cpu<T>(false, false, Kg, L, CRS, weight + g * Kg * CRS, CRS, image(n, g), L, T(0),
                    output + out_slice(g)(n), L);
  } else {
    const ColumnBlocks blocks = column_blocks<T>(p, CRS);
    const auto run_block = [&](int64_t g, const ColumnBlock& b, T* col, T* out_block) {
      for_each_image_piece(b, L, [&](int64_t n, int64_t l0, int64_t l1, int64_t at) {
        im2col_columns_cpu(ip, image(n, g), l0, l1, col + at, b.count);
      });
      if (b.within_image) {
        gemm_cpu<T>(false, false, Kg, b.count, CRS, weight + g * Kg * CRS, CRS, col, b.count, T(0),
                    output + out_slice(g)(b.n0) + b.l0, L);
      } else {
        gemm_cpu<T>(false, false, Kg, b.count, CRS, weight + g * Kg * CRS, CRS, col, b.count, T(0), out_block,
                    b.count);
        scatter_rows(b, L, Kg, out_block, output, out_slice(g));
      }
    };
    run_blocks<T>(blocks, p.groups, CRS * blocks.widest, blocks.whole_images ? Kg * blocks.widest : 0, run_block);
  }
  if (bias) {
#pragma omp parallel for collapse(2) schedule(static) if (p.N * p.K * L > (1 << 18))
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t k = 0; k < p.K; ++k) {
        const T b = bias[k];
        T* row = output + (n * p.K + k) * L;
        for (int64_t i = 0; i < L; ++i) row[i] += b;
      }
  }
}

template <typename T>
void conv2d_backward_data_im2col_cpu(const Conv2dParams& p, const T* grad_output, const T* weight,
                                     T* grad_input) {
  if (p.N == 0) return;  // nothing to compute: do not allocate the column buffer
  const Im2colParams ip = p.im2col();
  const int64_t L = p.out_h() * p.out_w();
  const int64_t CRS = ip.col_rows();
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group();
  const auto image = [&](int64_t n, int64_t g) { return grad_input + (n * p.C + g * Cg) * p.H * p.W; };
  const auto gy_slice = [&](int64_t g) { return [&p, g, Kg, L](int64_t n) { return (n * p.K + g * Kg) * L; }; };
  if (is_pointwise(p)) {
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t g = 0; g < p.groups; ++g)
        gemm_cpu<T>(true, false, CRS, L, Kg, weight + g * Kg * CRS, CRS, grad_output + gy_slice(g)(n), L, T(0),
                    image(n, g), L);
    return;
  }
  std::fill(grad_input, grad_input + p.N * p.C * p.H * p.W, T(0));
  const ColumnBlocks blocks = column_blocks<T>(p, CRS);
  const auto run_block = [&](int64_t g, const ColumnBlock& b, T* col, T* gy_block) {
    if (b.within_image) {
      gemm_cpu<T>(true, false, CRS, b.count, Kg, weight + g * Kg * CRS, CRS, grad_output + gy_slice(g)(b.n0) + b.l0,
                  L, T(0), col, b.count);
    } else {
      gather_rows(b, L, Kg, grad_output, gy_slice(g), gy_block);
      gemm_cpu<T>(true, false, CRS, b.count, Kg, weight + g * Kg * CRS, CRS, gy_block, b.count, T(0), col, b.count);
    }
    // Blocks are added in a fixed order: bitwise repeatable for any thread count.
    for_each_image_piece(b, L, [&](int64_t n, int64_t l0, int64_t l1, int64_t at) {
      col2im_columns_add_cpu(ip, col + at, b.count, l0, l1, image(n, g));
    });
  };
  run_blocks<T>(blocks, p.groups, CRS * blocks.widest, blocks.whole_images ? Kg * blocks.widest : 0, run_block);
}

template <typename T>
void conv2d_backward_weight_im2col_cpu(const Conv2dParams& p, const T* grad_output, const T* input,
                                       T* grad_weight) {
  const Im2colParams ip = p.im2col();
  const int64_t L = p.out_h() * p.out_w();
  const int64_t CRS = ip.col_rows();
  const int64_t Cg = p.channels_per_group(), Kg = p.filters_per_group();
  if (p.N == 0) {
    std::fill(grad_weight, grad_weight + p.K * CRS, T(0));
    return;
  }
  const auto image = [&](int64_t n, int64_t g) { return input + (n * p.C + g * Cg) * p.H * p.W; };
  const auto gy_slice = [&](int64_t g) { return [&p, g, Kg, L](int64_t n) { return (n * p.K + g * Kg) * L; }; };
  const ColumnBlocks blocks = column_blocks<T>(p, CRS);
  const int64_t widest = blocks.widest;
  // dst (Kg x CRS) = dY * cols^T + beta * dst over `count` columns, dY's rows
  // ld_gy apart and those of cols ld_cols apart. A handful of filter taps (one
  // input channel) is a small matrix of long dot products, which the packed
  // GEMM would pad to 48-wide strips.
  const auto add_product = [&](const T* gy, int64_t ld_gy, const T* cols, int64_t ld_cols, int64_t count, T beta,
                               T* dst) {
    if (Kg * CRS <= kDotProductMaxOutputs)
      gemm_abt_small_cpu<T>(Kg, CRS, count, gy, ld_gy, cols, ld_cols, beta, dst, CRS);
    else
      gemm_cpu<T>(false, true, Kg, CRS, count, gy, ld_gy, cols, ld_cols, beta, dst, CRS);
  };
  // A 1x1 layer's columns are the image itself: dW (+)= dY_n X_n^T reads them in
  // place, image after image, with no column buffer (the copy was 2 MB of
  // workspace on 256 channels at 56x56). Only small products of small images
  // (the dot products, at most kDotProductMaxOutputs entries) stay batched into
  // blocks below, where one long reduction beats a short product per image; a
  // packed GEMM gains nothing from the blocks' copies. Ms on one core, batch 8,
  // blocked / in place (torch): 64 -> 256 on 56x56 10.5 / 7.7 (6.1-6.5), 128 ->
  // 512 on 28x28 8.0 / 6.2 (5.3-5.6), 256 -> 1024 on 14x14 7.0 / 5.7 (5.4-5.8),
  // 512 -> 2048 on 7x7 6.8 / 6.4 (6.8-7.3); 64 -> 128 on 16x16 at batch 32 2.7 /
  // 1.3 (1.5-2.6).
  if (is_pointwise(p) && (!blocks.whole_images || Kg * CRS > kDotProductMaxOutputs)) {
    for (int64_t g = 0; g < p.groups; ++g)
      for (int64_t n = 0; n < p.N; ++n)
        add_product(grad_output + gy_slice(g)(n), L, image(n, g), L, L, n == 0 ? T(0) : T(1),
                    grad_weight + g * Kg * CRS);
    return;
  }
  // dst (+)= this block's dY * col^T; `first` overwrites.
  const auto add_block = [&](int64_t g, const ColumnBlock& b, bool first, T* dst, T* col, T* gy_block) {
    for_each_image_piece(b, L, [&](int64_t n, int64_t l0, int64_t l1, int64_t at) {
      im2col_columns_cpu(ip, image(n, g), l0, l1, col + at, b.count);
    });
    const T* gy = grad_output + gy_slice(g)(b.n0) + b.l0;
    int64_t ld = L;
    if (!b.within_image) {
      gather_rows(b, L, Kg, grad_output, gy_slice(g), gy_block);
      gy = gy_block;
      ld = b.count;
    }
    add_product(gy, ld, col, b.count, b.count, first ? T(0) : T(1), dst);
  };
  // Blocks of whole small images go into a fixed number of partial sums (each a
  // run of consecutive blocks, summed in order), which threads can fill in
  // parallel; the partial sums are then added in a fixed order. The grouping
  // depends on the shape only, so results are the same for any thread count.
  // Large layers (whose partial sums would be big) and blocks inside one image
  // accumulate in one pass instead, with the GEMM threaded.
  constexpr int64_t kPartialSums = 8;
  const int64_t nb = int64_t(blocks.list.size());
  const int64_t partials = std::min<int64_t>(kPartialSums, nb);
  const bool grouped = blocks.whole_images && partials >= 2 &&
                       double(partials) * double(Kg * CRS) * sizeof(T) <= 4.0 * 1024 * 1024;
  if (!grouped) {
    Scratch<T> col(CRS * widest), gy_block(blocks.whole_images ? Kg * widest : 0);
    for (int64_t g = 0; g < p.groups; ++g)
      for (int64_t i = 0; i < nb; ++i)
        add_block(g, blocks.list[i], i == 0, grad_weight + g * Kg * CRS, col.data(), gy_block.data());
    return;
  }
  Scratch<T> partial(partials * Kg * CRS);
  for (int64_t g = 0; g < p.groups; ++g) {
#pragma omp parallel if (omp_get_max_threads() > 1 && !omp_in_parallel())
    {
      Scratch<T> col(CRS * widest), gy_block(Kg * widest);
#pragma omp for schedule(static)
      for (int64_t part = 0; part < partials; ++part)
        for (int64_t i = part * nb / partials; i < (part + 1) * nb / partials; ++i)
          add_block(g, blocks.list[i], i == part * nb / partials, partial.data() + part * Kg * CRS, col.data(),
                    gy_block.data());
    }
    T* dst = grad_weight + g * Kg * CRS;
    std::copy(partial.data(), partial.data() + Kg * CRS, dst);
    for (int64_t part = 1; part < partials; ++part) {
      const T* src = partial.data() + part * Kg * CRS;
      for (int64_t e = 0; e < Kg * CRS; ++e) dst[e] += src[e];
    }
  }
}

// ---- dispatch -------------------------------------------------------------------

template <typename T>
Conv2dAlgo conv2d_forward_cpu(const Conv2dParams& p, const T* input, const T* weight, const T* bias,
                              T* output, Conv2dAlgo algo) {
  if (algo == Conv2dAlgo::Auto) algo = conv2d_choose_algo(p, Conv2dDirection::Forward);
  if (is_winograd(algo)) require_winograd(p, algo);
  if (algo == Conv2dAlgo::Shifted) require_shifted(p);
  if (algo == Conv2dAlgo::Depthwise) require_depthwise(p);
  if (algo == Conv2dAlgo::Direct)
    conv2d_forward_direct_cpu(p, input, weight, bias, output);
  else if (algo == Conv2dAlgo::Depthwise)
    conv2d_forward_depthwise_cpu(p, input, weight, bias, output);
  else if (algo == Conv2dAlgo::Shifted)
    conv2d_forward_shifted_cpu(p, input, weight, bias, output);
  else if (is_winograd(algo))
    conv2d_forward_winograd_cpu(p, input, weight, bias, output, winograd_tile(algo));
  else
    conv2d_forward_im2col_cpu(p, input, weight, bias, output);
  return algo;
}

template <typename T>
Conv2dAlgo conv2d_backward_data_cpu(const Conv2dParams& p, const T* grad_output, const T* weight,
                                    T* grad_input, Conv2dAlgo algo) {
  if (algo == Conv2dAlgo::Auto) algo = conv2d_choose_algo(p, Conv2dDirection::BackwardData);
  if (is_winograd(algo)) require_winograd(p, algo);
  if (algo == Conv2dAlgo::Shifted) require_shifted(p);
  if (algo == Conv2dAlgo::Depthwise) require_depthwise(p);
  if (algo == Conv2dAlgo::Direct)
    conv2d_backward_data_direct_cpu(p, grad_output, weight, grad_input);
  else if (algo == Conv2dAlgo::Depthwise && conv2d_backward_data_depthwise_cpu(p, grad_output, weight, grad_input))
    return algo;
  else if (algo == Conv2dAlgo::Depthwise) {  // a weight is not finite: see the depthwise form
    conv2d_backward_data_im2col_cpu(p, grad_output, weight, grad_input);
    return Conv2dAlgo::Im2col;
  }
  else if (algo == Conv2dAlgo::Shifted && conv2d_backward_data_shifted_cpu(p, grad_output, weight, grad_input))
    return algo;
  else if (algo == Conv2dAlgo::Shifted) {  // a weight is not finite: see the shifted form
    conv2d_backward_data_im2col_cpu(p, grad_output, weight, grad_input);
    return Conv2dAlgo::Im2col;
  } else if (is_winograd(algo))
    conv2d_backward_data_winograd_cpu(p, grad_output, weight, grad_input, winograd_tile(algo));
  else
    conv2d_backward_data_im2col_cpu(p, grad_output, weight, grad_input);
  return algo;
}

template <typename T>
Conv2dAlgo conv2d_backward_weight_cpu(const Conv2dParams& p, const T* grad_output, const T* input,
                                      T* grad_weight, Conv2dAlgo algo) {
  if (algo == Conv2dAlgo::Auto) algo = conv2d_choose_algo(p, Conv2dDirection::BackwardWeight);
  if (is_winograd(algo)) require_winograd(p, algo);
  if (algo == Conv2dAlgo::Shifted) require_shifted(p);
  if (algo == Conv2dAlgo::Depthwise) require_depthwise(p);
  if (algo == Conv2dAlgo::Depthwise && conv2d_backward_weight_depthwise_cpu(p, grad_output, input, grad_weight))
    return algo;
  if (is_winograd(algo))
    conv2d_backward_weight_winograd_cpu(p, grad_output, input, grad_weight, winograd_tile(algo));
  else if (algo == Conv2dAlgo::Direct)
    conv2d_backward_weight_direct_cpu(p, grad_output, input, grad_weight);
  else if (algo == Conv2dAlgo::Shifted && conv2d_backward_weight_shifted_cpu(p, grad_output, input, grad_weight))
    return algo;
  else {
    // im2col, asked for or taken because the input is not finite (see the shifted
    // and depthwise forms)
    conv2d_backward_weight_im2col_cpu(p, grad_output, input, grad_weight);
    return Conv2dAlgo::Im2col;
  }
  return algo;
}

#define CONVX_INSTANTIATE(T)                                                                        \
  template Conv2dAlgo conv2d_forward_cpu<T>(const Conv2dParams&, const T*, const T*, const T*, T*,  \
                                            Conv2dAlgo);                                           \
  template Conv2dAlgo conv2d_backward_data_cpu<T>(const Conv2dParams&, const T*, const T*, T*,      \
                                                  Conv2dAlgo);                                     \
  template Conv2dAlgo conv2d_backward_weight_cpu<T>(const Conv2dParams&, const T*, const T*, T*,    \
                                                    Conv2dAlgo);                                   \
  template void conv2d_backward_bias_cpu<T>(const Conv2dParams&, const T*, T*);                     \
  template void conv2d_forward_direct_cpu<T>(const Conv2dParams&, const T*, const T*, const T*, T*); \
  template void conv2d_backward_data_direct_cpu<T>(const Conv2dParams&, const T*, const T*, T*);    \
  template void conv2d_backward_weight_direct_cpu<T>(const Conv2dParams&, const T*, const T*, T*);  \
  template void conv2d_forward_im2col_cpu<T>(const Conv2dParams&, const T*, const T*, const T*, T*); \
  template void conv2d_backward_data_im2col_cpu<T>(const Conv2dParams&, const T*, const T*, T*);    \
  template void conv2d_backward_weight_im2col_cpu<T>(const Conv2dParams&, const T*, const T*, T*);
CONVX_INSTANTIATE(float)
CONVX_INSTANTIATE(double)
#undef CONVX_INSTANTIATE

}  // namespace convx
