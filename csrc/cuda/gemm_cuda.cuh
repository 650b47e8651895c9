// The tiled GEMM engine behind every implicit-GEMM convolution pass.
//
// For each group g (and each split of the reduction) it computes
//     C[g][m][j] = sum_{k in split} A[g][m][k] * B[g][k][j]      (m < M, j < Ncols)
// where the operands are never materialized: a Problem says where A's elements
// are (A is always a plain strided gather: a_m_off(g, m) + a_k_off(k)) and how to
// fetch one B element (an im2col-style gather with padding, load_b). The three
// convolution passes in conv2d_cuda.cu are Problems.
//
// Tiling: a block of 256 threads owns one BM x BN tile of C and walks the
// reduction in steps of BK = 8. Each step stages an A tile (BK x BM) and a B tile
// (BK x BN) in shared memory; each thread then accumulates a TM x TN = BM/16 x
// BN/16 sub-tile in registers. Its rows are sm*64 + ty*4 + {0..3} and its columns
// sn*64 + tx*4 + {0..3} (ty = tid/16, tx = tid%16): groups of four adjacent
// elements, so a warp's shared-memory reads are either broadcasts (A: 2 distinct
// ty per warp) or 16 distinct consecutive 4-element groups (B): no bank conflicts.
//
// Staging is double-buffered with one __syncthreads per step: the global loads of
// step s+1 go to registers before step s is computed from buffer s&1, and land in
// buffer (s+1)&1 after it. Race check: buffer (s+1)&1 was last read in step s-1,
// which every thread finished before the barrier that ended step s-1; buffer s&1
// was written before the barrier that ended step s-1 (or the prologue barrier).
// The barrier at the end of the last step also protects the next tile's prologue.
// All threads of a block walk the same tiles and steps, so every barrier is
// reached by the whole block.
//
// Loads: thread tid loads A elements (m = tid/8 + 32q, k = tid%8), q < BM/32 -- eight
// consecutive k per row, which is contiguous in memory for every pass. B
// elements are (k = tid/32, j = tid%32 + 32q) when consecutive j are contiguous
// (forward, backward data: j runs along output/input rows) or (k = tid%8,
// j = tid/8 + 32q) when consecutive k are (backward weight: k runs along output
// rows); Problem::kBKFast picks. Both cover the BK x BN tile exactly once, and
// give each thread one reduction index k per step, so the index decomposition of k
// happens once per thread per step, and the B column decompositions once per tile.
// Shared-memory rows are padded by 4 elements: the k-fast stores then hit 32
// distinct banks (row stride 4 banks mod 32, 8 rows x 4 columns per warp).
//
// Index math: all offsets are int64. The spatial coordinates tested against the
// padding (B index .h / .w) are int32: conv2d_cuda.cu sends only shapes whose
// padded extents are below 2**30 here. An out-of-range row or column carries the
// coordinate kInvalid = -2**30, so its sum with any valid coordinate (|.| < 2**30)
// is negative -- read as padding, i.e. zero -- and cannot overflow.
#pragma once

#include <cstdint>

#include "cuda_utils.cuh"

namespace convx {
namespace cuda {

constexpr int kGemmThreads = 256;
constexpr int kGemmBK = 8;
constexpr int kGemmPad = 4;
constexpr int32_t kInvalid = -(1 << 30);

// One B row or column: an offset into the B tensor and the two spatial
// coordinates whose sums with the other side's decide whether the element is
// inside the image.
struct GatherIndex {
  int64_t off;
  int32_t h, w;
};

// The tile grid: tiles are numbered with m fastest (so neighbouring blocks share
// the larger B operand in L2), then j, then the reduction split, then the group.
struct GemmGrid {
  int64_t M, Ncols, Kred, groups;
  int64_t mtiles, jtiles, splits, k_per_split, total_tiles;
};

template <typename T, class Problem, int BM, int BN>
__global__ void __launch_bounds__(kGemmThreads) implicit_gemm_kernel(const Problem prob, const GemmGrid grid) {
  constexpr int BK = kGemmBK;
  constexpr int TM = BM / 16, TN = BN / 16;
  constexpr int A_LOADS = BM * BK / kGemmThreads, B_LOADS = BN * BK / kGemmThreads;
  static_assert(BM % 64 == 0 && BN % 64 == 0, "tiles are made of 64-wide thread sub-tiles");
  static_assert(kGemmThreads / BK == 32 && kGemmThreads / 32 == BK, "load mappings assume 256 threads, BK = 8");

  __shared__ __align__(16) T As[2][BK][BM + kGemmPad];
  __shared__ __align__(16) T Bs[2][BK][BN + kGemmPad];

  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int a_kk = tid % BK, a_m0 = tid / BK;
  const int b_kk = Problem::kBKFast ? tid % BK : tid / 32;
  const int b_j0 = Problem::kBKFast ? tid / BK : tid % 32;

  for (int64_t tile = blockIdx.x; tile < grid.total_tiles; tile += gridDim.x) {
    int64_t rest = tile;
    const int64_t mt = rest % grid.mtiles;
    rest /= grid.mtiles;
    const int64_t jt = rest % grid.jtiles;
    rest /= grid.jtiles;
    const int64_t split = rest % grid.splits;
    const int64_t g = rest / grid.splits;
    const int64_t m_base = mt * BM, j_base = jt * BN;
    const int64_t k_begin = split * grid.k_per_split;
    const int64_t k_end = (grid.Kred - k_begin < grid.k_per_split) ? grid.Kred : k_begin + grid.k_per_split;

    // Per-tile gather state of this thread's A rows and B columns.
    int64_t a_moff[A_LOADS];
    bool a_mok[A_LOADS];
#pragma unroll
    for (int q = 0; q < A_LOADS; ++q) {
      const int64_t m = m_base + a_m0 + 32 * q;
      a_mok[q] = m < grid.M;
      a_moff[q] = a_mok[q] ? prob.a_m_off(g, m) : 0;
    }
    GatherIndex bcol[B_LOADS];
#pragma unroll
    for (int q = 0; q < B_LOADS; ++q) {
      const int64_t j = j_base + b_j0 + 32 * q;
      bcol[q] = prob.b_col(g, j, j < grid.Ncols);
    }

    T a_reg[A_LOADS], b_reg[B_LOADS];
    // Global -> registers for the step starting at reduction index k0.
    auto load = [&](int64_t k0) {
      const int64_t ka = k0 + a_kk;
      const bool ka_ok = ka < k_end;
      const int64_t a_koff = ka_ok ? prob.a_k_off(ka) : 0;
#pragma unroll
      for (int q = 0; q < A_LOADS; ++q) a_reg[q] = (ka_ok && a_mok[q]) ? prob.a[a_moff[q] + a_koff] : T(0);
      const int64_t kb = k0 + b_kk;
      const GatherIndex brow = prob.b_row(g, kb, kb < k_end);
#pragma unroll
      for (int q = 0; q < B_LOADS; ++q) b_reg[q] = prob.load_b(brow, bcol[q]);
    };
    // Registers -> shared buffer `buf`.
    auto stage = [&](int buf) {
#pragma unroll
      for (int q = 0; q < A_LOADS; ++q) As[buf][a_kk][a_m0 + 32 * q] = a_reg[q];
#pragma unroll
      for (int q = 0; q < B_LOADS; ++q) Bs[buf][b_kk][b_j0 + 32 * q] = b_reg[q];
    };

    T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

    const int64_t steps = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;
    if (steps > 0) {
      load(k_begin);
      stage(0);
      __syncthreads();
    }
    for (int64_t step = 0; step < steps; ++step) {
      const int buf = int(step & 1);
      const bool more = step + 1 < steps;
      if (more) load(k_begin + (step + 1) * BK);
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        T a_frag[TM], b_frag[TN];
#pragma unroll
        for (int s = 0; s < TM / 4; ++s)
#pragma unroll
          for (int i = 0; i < 4; ++i) a_frag[s * 4 + i] = As[buf][kk][s * 64 + ty * 4 + i];
#pragma unroll
        for (int s = 0; s < TN / 4; ++s)
#pragma unroll
          for (int i = 0; i < 4; ++i) b_frag[s * 4 + i] = Bs[buf][kk][s * 64 + tx * 4 + i];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] += a_frag[i] * b_frag[j];
      }
      if (more) stage(buf ^ 1);
      __syncthreads();
    }

    // Epilogue: each C element of the tile is written by exactly one thread.
    int64_t c_col[TN];
    bool c_ok[TN];
#pragma unroll
    for (int s = 0; s < TN / 4; ++s)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t j = j_base + s * 64 + tx * 4 + i;
        c_ok[s * 4 + i] = j < grid.Ncols;
        c_col[s * 4 + i] = c_ok[s * 4 + i] ? prob.c_col_off(j) : 0;
      }
#pragma unroll
    for (int s = 0; s < TM / 4; ++s)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t m = m_base + s * 64 + ty * 4 + i;
        if (m >= grid.M) continue;
        const int64_t c_row = prob.c_m_off(g, m, split);
#pragma unroll
        for (int j = 0; j < TN; ++j)
          if (c_ok[j]) prob.c[c_row + c_col[j]] = prob.epilogue(g, m, acc[s * 4 + i][j]);
      }
  }
}

}  // namespace cuda
}  // namespace convx
