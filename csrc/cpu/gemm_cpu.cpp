// A packed, cache-blocked GEMM in the GotoBLAS/BLIS layout:
//
//   for jc (NC columns of B)        B block stays in L3
//     for pc (KC of the reduction)  packed B: kc x nc, in NR-wide strips
//       for ic (MC rows of A)       packed A: mc x kc, in MR-tall strips (L2)
//         for jr, ir                MR x NR micro-tile, accumulators in registers
//
// The micro-kernel is written with GCC vector extensions (three 64-byte vectors
// per row of the tile) and compiled three times by target_clones: AVX-512, AVX2+FMA and
// baseline x86-64; the loader picks the clone for the running CPU, so the same
// binary never executes an instruction the CPU lacks.
//
// Called from inside a parallel region (a caller that hands whole products to
// threads), the GEMM runs on the calling thread alone (!omp_in_parallel() in
// every `if`): nested teams would oversubscribe the cores whatever the OpenMP
// nesting settings are.
//
// Threads split the (jr, ir) tiles of each macro step; the pc loop is sequential,
// so every C element sums its K terms in one fixed order: results are bitwise
// identical for any thread count.
#include "convx/gemm.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#include "convx/cpu_info.h"
#include "convx/params.h"
#include "convx/simd.h"
#include "convx/workspace.h"

namespace convx {
namespace {

// One 64-byte vector: 16 floats or 8 doubles, a zmm register on AVX-512.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(64)));
};

// The register tile is MR x NR = 8 rows x 3 vectors: 24 accumulators + 3 B
// vectors + 1 broadcast fill 28 of the 32 zmm registers. Two FMA pipes with a
// 4-cycle latency need at least 8 independent chains; 24 leave slack, and each k
// step issues 24 FMAs against 3 vector loads + 8 broadcasts, so loads never limit.
constexpr int64_t kMR = 8;
constexpr int64_t kNV = 3;  // vectors per row of the tile
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);
template <typename T>
constexpr int64_t kNR = kNV * kLanes<T>;
static_assert(kNR<float> == gemm_micro_tile_cols<float>() && kNR<double> == gemm_micro_tile_cols<double>(),
              "gemm.h tells callers the micro-tile width");
// KC trades the C traffic (every C tile is read and written once per KC step of
// the reduction) against cache fit: a kc x NR strip of packed B (256 x 48 floats
// = 48 KiB) fills the 48 KiB L1 while the MR-tall strips of the MC x KC block of
// A (192 KiB) stream from L2. Measured on one Zen 5 core, 256 beat 128 and 192:
// ~88% of peak on 1024^3, ~78% on 2048^3 (before C tiles were prefetched, see
// prefetch_c_tiles), and Winograd's 16 products 3-4% faster.
constexpr int64_t kKC = 256;
// The KC of gemm_blocked, the loops for more than one MC block of A (M > 192:
// the large products, not the K <= 192 filters of most convolutions). There C
// is large (4 MiB at 1024^2) and lives in L3, so halving its passes matters more
// than the B strip's fit in L1, which the micro-kernel's prefetch (see
// kBPrefetchSteps) makes up for from L2. Measured on a Xeon core, 512 against
// 256, convx's time over torch.mm's in alternating processes (4 rounds):
// 1024^3 2.8%, 2048^3 3.6%, 2048 x 2048 x 512 5.8% faster.
constexpr int64_t kKCLarge = 512;
constexpr int64_t kMC = 192;
// The KC where A is read where it lies and B is packed one strip at a time
// (gemm_one_a_block: the shifted-plane forward's gathered B, the pixel-major
// weight gradient's gathered one, gemm_cpu's weight-gradient products with a
// long reduction) or read in place too (gemm_split_rows_b_cpu).
// There a longer block costs at most the one strip's buffer (kc x NR per
// thread, 144 KiB for float at 768 against 48 KiB at 256), and it cuts the
// micro-kernel calls and C's passes (5 to 2 for a reduction of 1200). The
// blocks are made equal, so none is a short remainder. Calls alternated in one
// process, one Xeon core: AlphaGo's 5x5 input layer's forward (C*R*S = 1200, 2
// blocks of 600) 5% faster, in three runs (the same at 400 and 1200 as at 600,
// 4% slower at 128); its weight gradient (split rows, 361 pixels in one block
// instead of 256 + 105) 2.5%; LeNet's second layer's weight gradient 3%; the
// other rows that take these paths level.
constexpr int64_t kKCInPlaceA = 768;
// A multiple of NR for float (48) and double (24). The packed B panel is
// kKCLarge x kNC: 4.2 MiB for float, as when it was 256 x 4080, and 2048
// columns still take one panel.
constexpr int64_t kNC = 2064;

// Where the micro-kernel finds vector v of row p of a B strip: vec(p, v).
// Packed: rows kNV vectors apart in one contiguous strip. Rows: B read in place
// through one pointer per row (the shifted-plane convolution's B is a slice of the
// image itself, so it needs no packed copy), starting at column j of the row.
// Split rows: each vector of the strip at its own offset from the row pointer
// (pixel-major planes, where a strip's 16-column vectors may belong to
// different filter taps).
//
// fetch_ahead<NV>(p): the micro-kernel's software prefetch of the first NV
// vectors of row p of the strip, those it will read (see kBPrefetchSteps).
// Only the packed strip does it: on the in-place rows (the shifted-plane
// convolutions) the same prefetch moved the suite's rows both ways within the
// noise, so they are left to the hardware prefetchers.
template <typename T>
struct PackedStrip {
  const T* strip;
  const T* vec(int64_t p, int v) const { return strip + (p * kNV + v) * kLanes<T>; }
  template <int NV>
  void fetch_ahead(int64_t p) const {
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) __builtin_prefetch(vec(p, v), 0, 3);
  }
};
template <typename T>
struct RowStrip {
  const T* const* rows;
  int64_t j;
  const T* vec(int64_t p, int v) const { return rows[p] + j + v * kLanes<T>; }
  template <int NV>
  void fetch_ahead(int64_t) const {}
};
// B read in place, its rows a fixed stride apart (a 1x1 layer's image): the
// readable form of the assembly kernel below, for the tiles it does not take.
template <typename T>
struct StridedStrip {
  const T* row0;
  int64_t ldb;
  const T* vec(int64_t p, int v) const { return row0 + p * ldb + v * kLanes<T>; }
  template <int NV>
  void fetch_ahead(int64_t) const {}
};
template <typename T>
struct SplitRowStrip {
  const T* const* rows;
  int64_t off[kNV];
  const T* vec(int64_t p, int v) const { return rows[p] + off[v]; }
  template <int NV>
  void fetch_ahead(int64_t) const {}
};

// How many k steps ahead the micro-kernel prefetches its packed B strip. A
// 256 x 48 strip is 48 KiB, the whole L1 (512 x 48 in gemm_blocked, twice
// that; up to 768 x 48 where A is read in place, see kKCInPlaceA), so with the
// A strip streaming beside it the strip does not survive from
// one micro-kernel to the next and is read back from L2 at every k step; the
// L1 prefetchers fetch only the next line, too late. Eight steps (~100 cycles
// at peak) cover an L2 hit. Measured on a Xeon core (micro-kernels over an A
// block and B strips that fit L2, medians of 25 interleaved passes, in the
// machine's fast stretches): 78-83% of the FMA peak without, 100% with; with
// A, B and C in L3 it changed nothing (81-83%).
constexpr int64_t kBPrefetchSteps = 8;

// Where the micro-kernel finds A[i][p] of its MR-row strip: packed (kc x MR by k,
// a `const T*`), or read in place through one pointer per row (a row-major A
// whose rows are contiguous along the reduction: the filters of a forward pass),
// which saves packing it; rows past the last are pointed at it, and their sums
// are never stored.
template <typename T>
struct RowsA {
  const T* rows[kMR];
};
template <typename T>
__attribute__((always_inline)) inline T a_at(const T* a_packed, int64_t p, int64_t i) {
  return a_packed[p * kMR + i];
}
template <typename T>
__attribute__((always_inline)) inline T a_at(const RowsA<T>& a, int64_t p, int64_t i) {
  return a.rows[i][p];
}
// In place too, for an A stored in segments along the reduction (the filters of
// the flipped-forward backward-data pass: 9 taps per filter, C * 9 apart):
// element p of every row at the same offset off[p] from the row's start. One
// offset load per step, shared by the 8 rows, replaces packing the operand
// (segment by segment, 11% of 512 channels on 7x7's backward-data).
template <typename T>
struct OffsetRowsA {
  const T* rows[kMR];
  const int64_t* off;
};
template <typename T>
__attribute__((always_inline)) inline T a_at(const OffsetRowsA<T>& a, int64_t p, int64_t i) {
  return a.rows[i][a.off[p]];
}

// Whether the micro-kernels fetch their C tile ahead (prefetch_c below): when C
// is larger than 2 MiB (twice a core's L2), the tile a kernel adds to has most
// likely left L2 since the previous K block, and loading it after the k loop
// stalls on L3 or memory. Prefetched as the kernel starts, those loads overlap
// its k loop: on one core 1024^3 went from 85-86% to 86-87% of peak, 2048^3
// from 80-82% to 88-90%, 4096^3 from 76-78% to 87-89%. With C in L2 the
// prefetches only take issue slots (3-4% of 512 channels on 7x7, whose C is
// about 1 MiB, when they ran at every size).
template <typename T>
bool prefetch_c_tiles(int64_t M, int64_t N) {
  return double(M) * double(N) * sizeof(T) > 2.0 * 1024 * 1024;
}

// acc[MR][NV] += A strip (kc x MR) times the first NV vectors of the B strip's
// rows. Then C tile (m x n valid part) = acc (+ C when accumulate). NV < 3 serves
// the last, narrower strip of a row without paying for the zero padding.
// prefetch_c: fetch the C tile before the k loop (see prefetch_c_tiles).
template <typename T, int NV, typename BStrip, typename AStrip>
CONVX_SIMD_CLONES void micro_kernel(int64_t kc, AStrip a, BStrip b, T* __restrict C, int64_t ldc, int64_t m,
                                    int64_t n, bool accumulate, bool prefetch_c) {
  typedef typename Vec<T>::type V;
  constexpr int64_t L = kLanes<T>;
  V acc[kMR][NV];
#pragma GCC unroll 8
  for (int64_t i = 0; i < kMR; ++i)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) acc[i][v] = V{};
  if (accumulate && prefetch_c)
    for (int64_t i = 0; i < m; ++i) {  // every line of the row's n values, aligned or not
      for (int64_t j = 0; j < n; j += L) __builtin_prefetch(C + i * ldc + j, 1);
      __builtin_prefetch(C + i * ldc + n - 1, 1);
    }
  const auto k_step = [&](int64_t p) __attribute__((always_inline)) {
    // memcpy: an unaligned load, so B needs no 64-byte alignment.
    V bv[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) std::memcpy(&bv[v], b.vec(p, v), sizeof(V));
#pragma GCC unroll 8
    for (int64_t i = 0; i < kMR; ++i) {
      const T a_ip = a_at<T>(a, p, i);
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) acc[i][v] += a_ip * bv[v];
    }
  };
  // Two loops, so the prefetch never addresses past the strip's last row.
  int64_t p = 0;
  for (; p + kBPrefetchSteps < kc; ++p) {
    b.template fetch_ahead<NV>(p + kBPrefetchSteps);
    k_step(p);
  }
  for (; p < kc; ++p) k_step(p);
  if (m == kMR && n == NV * L) {
    for (int64_t i = 0; i < kMR; ++i)
      for (int v = 0; v < NV; ++v) {
        V out = acc[i][v];
        if (accumulate) {
          V c;
          std::memcpy(&c, C + i * ldc + v * L, sizeof(V));
          out += c;
        }
        std::memcpy(C + i * ldc + v * L, &out, sizeof(V));
      }
    return;
  }
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      C[i * ldc + j] = (accumulate ? C[i * ldc + j] : T(0)) + acc[i][j / L][j % L];
}

// The widest kernel that covers n columns of a strip.
template <typename T, typename BStrip, typename AStrip>
void run_micro_kernel(int64_t kc, AStrip a, BStrip b, T* C, int64_t ldc, int64_t m, int64_t n, bool accumulate,
                      bool prefetch_c) {
  constexpr int64_t L = kLanes<T>;
  if (n > 2 * L)
    micro_kernel<T, 3>(kc, a, b, C, ldc, m, n, accumulate, prefetch_c);
  else if (n > L)
    micro_kernel<T, 2>(kc, a, b, C, ldc, m, n, accumulate, prefetch_c);
  else
    micro_kernel<T, 1>(kc, a, b, C, ldc, m, n, accumulate, prefetch_c);
}

// ---- B read in place: the micro-kernel in assembly ---------------------------
// A product with few rows of A and many columns of B (a 1x1 layer's forward: 64
// filters x 256 channels against 256 x 3136 pixels per image) spends a quarter
// of its time packing B: reading the image from L3 and writing the packed panel
// into L2 cost as much as the micro-kernels that then read it (see
// benchmarks/RESULTS.md). MKL, which torch calls there, packs nothing: its kernel
// reads each 48-column strip of B where it lies, row after row, with two
// software prefetches. This kernel does the same:
// - the 8 x 48 tile of micro_kernel (same registers: 24 accumulators, 3 B
//   vectors, 1 broadcast), A packed, B read as 3 vectors per row, rows ldb apart;
// - each step fetches the row 2 steps ahead into L1: the strip (kc rows x 192
//   bytes) does not survive in L1 from one micro-kernel to the next (its rows,
//   12 KiB apart on a 56x56 image, fall into few cache sets), so every
//   micro-kernel but the first reads it back from L2;
// - every 8 steps it fetches one row of the next strip (`next`), so that the
//   micro-kernels of one strip together bring the next strip from memory before
//   it is needed.
// Written in C++, the loop lost to packing. C++ harness, 64 x 3136 x 256 over
// eight images in turn, one Xeon core, medians of interleaved runs in % of the
// FMA peak:
// - micro_kernel over a StridedStrip with both prefetches (__builtin_prefetch
//   in fetch_ahead): GCC emitted neither, 29-35, against this kernel's 51-59
//   and packing's 53-60;
// - with the row prefetch alone, which GCC kept: 36-44 against 49-62 and
//   42-51;
// - an 8-step unrolled loop with asm prefetches: GCC moved accumulators
//   through the stack, 48-60 against 83-87, packing 69-70 and MKL 76-92.

// The kernel's steps run in groups of 8 whose prefetches (2 rows ahead) stay
// inside the kc rows, then the rest one at a time; it fetches one row of the
// next strip per group, and one more before the rest.
inline int64_t in_place_b_groups(int64_t kc) { return kc >= 2 ? (kc - 2) / 8 : 0; }
inline int64_t in_place_b_rows_fetched(int64_t kc) {
  return in_place_b_groups(kc) + (kc > 8 * in_place_b_groups(kc) ? 1 : 0);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define CONVX_GEMM_ASM_AVX512 1
// One row of the tile: broadcast A[p][i] (the packed strip's element i of step
// \q), multiply-add it into accumulators c0, c1, c2 with the 3 B vectors.
#define CONVX_TILE_ROW(i, c0, c1, c2)                            \
  "vbroadcastss 4*" #i "+32*\\q(%[a]), %%zmm27\n\t"              \
  "vfmadd231ps %%zmm24, %%zmm27, %%zmm" #c0 "\n\t"               \
  "vfmadd231ps %%zmm25, %%zmm27, %%zmm" #c1 "\n\t"               \
  "vfmadd231ps %%zmm26, %%zmm27, %%zmm" #c2 "\n\t"
// All 8 rows of step \q (row p of B already in zmm24-26).
#define CONVX_TILE_STEP                                                                             \
  CONVX_TILE_ROW(0, 0, 1, 2) CONVX_TILE_ROW(1, 3, 4, 5) CONVX_TILE_ROW(2, 6, 7, 8)                 \
  CONVX_TILE_ROW(3, 9, 10, 11) CONVX_TILE_ROW(4, 12, 13, 14) CONVX_TILE_ROW(5, 15, 16, 17)        \
  CONVX_TILE_ROW(6, 18, 19, 20) CONVX_TILE_ROW(7, 21, 22, 23)
// Load row p of B (the strip's 48 columns) into zmm24-26.
#define CONVX_LOAD_B_ROW                 \
  "vmovups (%[b]), %%zmm24\n\t"          \
  "vmovups 64(%[b]), %%zmm25\n\t"        \
  "vmovups 128(%[b]), %%zmm26\n\t"
// Row i of C = (C +) accumulators c0, c1, c2.
#define CONVX_STORE_ROW(c0, c1, c2)                   \
  "vmovups %%zmm" #c0 ", (%[c])\n\t"                  \
  "vmovups %%zmm" #c1 ", 64(%[c])\n\t"                \
  "vmovups %%zmm" #c2 ", 128(%[c])\n\t"               \
  "add %[ldc], %[c]\n\t"
#define CONVX_ADD_STORE_ROW(c0, c1, c2)                           \
  "vaddps (%[c]), %%zmm" #c0 ", %%zmm" #c0 "\n\t"                 \
  "vaddps 64(%[c]), %%zmm" #c1 ", %%zmm" #c1 "\n\t"               \
  "vaddps 128(%[c]), %%zmm" #c2 ", %%zmm" #c2 "\n\t" CONVX_STORE_ROW(c0, c1, c2)

// C (8 x 48, row stride ldc) = (C +) A strip (packed, kc x 8) * B[0:kc, 0:48],
// row p of B at b + p * ldb. `next` is the first of the next strip's rows this
// kernel fetches, one every 8 steps and one more before the last steps (ldb
// apart, in_place_b_rows_fetched(kc) of them); they must be readable, as b is.
__attribute__((target("avx512f"))) void micro_kernel_in_place_b_avx512(int64_t kc, const float* a, const float* b,
                                                                      int64_t ldb, const float* next, float* c,
                                                                      int64_t ldc, bool accumulate) {
  int64_t groups = in_place_b_groups(kc), rest = kc - 8 * groups;
  const int64_t ldb_bytes = ldb * 4, ahead_bytes = 2 * ldb * 4, ldc_bytes = ldc * 4;
  int64_t add = accumulate ? 1 : 0;
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      ".irp r,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23\n\t"
      "vmovaps %%zmm0, %%zmm\\r\n\t"
      ".endr\n\t"
      "test %[groups], %[groups]\n\t"
      "jz 2f\n\t"
      "1:\n\t"
      "prefetcht0 (%[next])\n\t"
      "prefetcht0 64(%[next])\n\t"
      "prefetcht0 128(%[next])\n\t"
      "add %[ldb], %[next]\n\t"
      ".irp q,0,1,2,3,4,5,6,7\n\t"
      CONVX_LOAD_B_ROW
      "prefetcht0 (%[b],%[ahead])\n\t"
      "prefetcht0 64(%[b],%[ahead])\n\t"
      "prefetcht0 128(%[b],%[ahead])\n\t"
      "add %[ldb], %[b]\n\t"
      CONVX_TILE_STEP
      ".endr\n\t"
      "add $256, %[a]\n\t"
      "dec %[groups]\n\t"
      "jnz 1b\n\t"
      "2:\n\t"
      "test %[rest], %[rest]\n\t"
      "jz 4f\n\t"
      "prefetcht0 (%[next])\n\t"
      "prefetcht0 64(%[next])\n\t"
      "prefetcht0 128(%[next])\n\t"
      "3:\n\t"
      ".irp q,0\n\t"
      CONVX_LOAD_B_ROW
      "add %[ldb], %[b]\n\t"
      CONVX_TILE_STEP
      ".endr\n\t"
      "add $32, %[a]\n\t"
      "dec %[rest]\n\t"
      "jnz 3b\n\t"
      "4:\n\t"
      "test %[add], %[add]\n\t"
      "jnz 5f\n\t"
      CONVX_STORE_ROW(0, 1, 2) CONVX_STORE_ROW(3, 4, 5) CONVX_STORE_ROW(6, 7, 8) CONVX_STORE_ROW(9, 10, 11)
      CONVX_STORE_ROW(12, 13, 14) CONVX_STORE_ROW(15, 16, 17) CONVX_STORE_ROW(18, 19, 20)
      CONVX_STORE_ROW(21, 22, 23)
      "jmp 6f\n\t"
      "5:\n\t"
      CONVX_ADD_STORE_ROW(0, 1, 2) CONVX_ADD_STORE_ROW(3, 4, 5) CONVX_ADD_STORE_ROW(6, 7, 8)
      CONVX_ADD_STORE_ROW(9, 10, 11) CONVX_ADD_STORE_ROW(12, 13, 14) CONVX_ADD_STORE_ROW(15, 16, 17)
      CONVX_ADD_STORE_ROW(18, 19, 20) CONVX_ADD_STORE_ROW(21, 22, 23)
      "6:\n\t"
      : [a] "+r"(a), [b] "+r"(b), [next] "+r"(next), [c] "+r"(c), [groups] "+r"(groups), [rest] "+r"(rest)
      : [ldb] "r"(ldb_bytes), [ahead] "r"(ahead_bytes), [ldc] "r"(ldc_bytes), [add] "r"(add)
      : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
        "xmm23", "xmm24", "xmm25", "xmm26", "xmm27");
}
#undef CONVX_TILE_ROW
#undef CONVX_TILE_STEP
#undef CONVX_LOAD_B_ROW
#undef CONVX_STORE_ROW
#undef CONVX_ADD_STORE_ROW
#else
#define CONVX_GEMM_ASM_AVX512 0
// Never called: in_place_b_kernel_available() is false.
inline void micro_kernel_in_place_b_avx512(int64_t, const float*, const float*, int64_t, const float*, float*, int64_t,
                                           bool) {}
#endif

// Whether micro_kernel_in_place_b_avx512 can run here.
bool in_place_b_kernel_available() { return CONVX_GEMM_ASM_AVX512 && cpu_has_avx512f(); }

// Row i of an operand stored with rows contiguous along the reduction: at rows[i]
// (RowTable) or at base + i * ld (StridedRows).
template <typename T>
struct RowTable {
  const T* const* rows;
  const T* operator()(int64_t i) const { return rows[i]; }
};
template <typename T>
struct StridedRows {
  const T* base;
  int64_t ld;
  const T* operator()(int64_t i) const { return base + i * ld; }
};

// Integer vectors of the same shape as Vec<T>, for shuffle masks.
template <typename T>
struct IntVec;
template <>
struct IntVec<float> {
  typedef int32_t type __attribute__((vector_size(64)));
};
template <>
struct IntVec<double> {
  typedef int64_t type __attribute__((vector_size(64)));
};

// Transposes the L x L block held in v (row r in v[r], L = lanes) in registers.
// Stage h swaps bit h of the row index with bit h of the column index, by
// exchanging the off-diagonal h-blocks of rows i and i + h: every new row is one
// two-source permute of two old rows (vpermt2ps on AVX-512), L/2 * 2 per stage,
// log2(L) stages. Packing an operand stored along the reduction is a transpose;
// done by scalar strided stores it cost the shifted-plane weight gradient as much
// as its GEMM.
// always_inline here and below: the callers are compiled once per instruction set
// (CONVX_SIMD_CLONES), and a helper left out of line would be compiled for the
// baseline only, emulating 64-byte shuffles with 16-byte ones.
//
// With ROWS < L rows (an 8-row A strip of floats), only the log2(ROWS) low bits
// are swapped: row j then holds L / ROWS rows of the transpose, row j + m * ROWS
// of it in lanes [m * ROWS, (m + 1) * ROWS). Padding the 8 rows to 16 with zeros
// instead cost the full 16 x 16 shuffles for half the data (A's packing was 7% of
// a 5x5 layer's forward).
// The shuffle masks of stage h, as constants: built lane by lane in the
// function they were rebuilt on every call (a broadcast and a masked insert per
// lane, a third of a 16 x 16 transpose's instructions).
template <typename T, int H>
struct TransposeMasks {
  typedef typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type Lane;
  static constexpr int L = int(kLanes<T>);
  static constexpr std::array<Lane, L> make(bool high) {
    std::array<Lane, L> m{};
    for (int c = 0; c < L; ++c) m[c] = high ? ((c & H) ? L + c : c + H) : ((c & H) ? L + c - H : c);
    return m;
  }
  static constexpr std::array<Lane, L> low = make(false), high = make(true);
};

template <typename T, int ROWS, int H>
__attribute__((always_inline)) inline void transpose_stage(typename Vec<T>::type* v) {
  if constexpr (H >= 1) {
    typedef typename Vec<T>::type V;
    typedef typename IntVec<T>::type M;
    M low, high;
    std::memcpy(&low, TransposeMasks<T, H>::low.data(), sizeof(M));
    std::memcpy(&high, TransposeMasks<T, H>::high.data(), sizeof(M));
#pragma GCC unroll 16
    for (int i = 0; i < ROWS; ++i)
      if (!(i & H)) {
        const V a = v[i], b = v[i + H];
        v[i] = __builtin_shuffle(a, b, low);
        v[i + H] = __builtin_shuffle(a, b, high);
      }
    transpose_stage<T, ROWS, H / 2>(v);
  }
}

template <typename T, int ROWS>
__attribute__((always_inline)) inline void transpose_in_registers(typename Vec<T>::type* v) {
  constexpr int L = int(kLanes<T>);
  static_assert(ROWS <= L && L % ROWS == 0 && (ROWS & (ROWS - 1)) == 0, "a power-of-two share of the lanes");
  transpose_stage<T, ROWS, ROWS / 2>(v);
}

// dst[p * dst_stride + r] = row(r0 + r)[p0 + p] for r < ROWS, p < kc: kc x ROWS of
// a transposed, ROWS = L (a B block) or MR (an A strip). ROWS x L blocks go
// through registers; the tail of kc is scalar. ROWS is a template argument so
// every store has a constant size (a variable-size memcpy became `rep movsq`,
// slower than the scalar loop).
template <typename T, int64_t ROWS, typename Rows>
__attribute__((always_inline)) inline void transpose_rows(Rows row, int64_t r0, int64_t p0, int64_t kc, T* dst,
                                                          int64_t dst_stride) {
  typedef typename Vec<T>::type V;
  constexpr int64_t L = kLanes<T>;
  const T* src[ROWS];
  for (int64_t r = 0; r < ROWS; ++r) src[r] = row(r0 + r) + p0;
  int64_t p = 0;
  for (; p + L <= kc; p += L) {
    V v[ROWS];
#pragma GCC unroll 16
    for (int64_t r = 0; r < ROWS; ++r) std::memcpy(&v[r], src[r] + p, sizeof(V));
    transpose_in_registers<T, int(ROWS)>(v);
#pragma GCC unroll 16
    for (int64_t j = 0; j < ROWS; ++j)
#pragma GCC unroll 2
      for (int64_t m = 0; m < L / ROWS; ++m)
        std::memcpy(dst + (p + j + m * ROWS) * dst_stride, reinterpret_cast<const T*>(&v[j]) + m * ROWS,
                    ROWS * sizeof(T));
  }
  for (int64_t r = 0; r < ROWS; ++r)
    for (int64_t q = p; q < kc; ++q) dst[q * dst_stride + r] = src[r][q];
}

// The same for any rows count, scalar: the edges of the operands.
template <typename T, typename Rows>
inline void transpose_rows_scalar(Rows row, int64_t r0, int64_t rows, int64_t p0, int64_t kc, T* dst,
                                  int64_t dst_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* src = row(r0 + r) + p0;
    for (int64_t q = 0; q < kc; ++q) dst[q * dst_stride + r] = src[q];
  }
}

// Packs op(A)[i0:i0+mr, p0:p0+kc] into one MR-tall strip, kc x MR row-major by k,
// zero-padding the missing rows so the micro-kernel never branches on m.
template <typename T, typename Rows>
CONVX_SIMD_CLONES void pack_a_strip_rows(Rows row, int64_t i0, int64_t mr, int64_t p0, int64_t kc, T* dst) {
  if (mr == kMR)
    transpose_rows<T, kMR>(row, i0, p0, kc, dst, kMR);
  else
    transpose_rows_scalar<T>(row, i0, mr, p0, kc, dst, kMR);
  for (int64_t i = mr; i < kMR; ++i)
    for (int64_t p = 0; p < kc; ++p) dst[p * kMR + i] = T(0);
}

template <typename T>
CONVX_SIMD_CLONES void pack_a_strip(bool trans_a, const T* A, int64_t lda, int64_t i0, int64_t mr, int64_t p0, int64_t kc,
                  T* dst) {
  if (trans_a) {  // op(A)[i][p] = A[p][i]: rows of A are contiguous in i
    for (int64_t p = 0; p < kc; ++p) {
      const T* src = A + (p0 + p) * lda + i0;
      for (int64_t i = 0; i < mr; ++i) dst[p * kMR + i] = src[i];
      for (int64_t i = mr; i < kMR; ++i) dst[p * kMR + i] = T(0);
    }
    return;
  }
  pack_a_strip_rows<T>(StridedRows<T>{A, lda}, i0, mr, p0, kc, dst);
}

// Packs op(B)[p0:p0+kc, j0:j0+nr] into one kc x NR strip, zero-padded in n; again
// reading B along its contiguous axis. The _rows form is for op(B) = B^T with the
// rows of B (contiguous along the reduction) given by an accessor.
template <typename T, typename Rows>
CONVX_SIMD_CLONES void pack_bt_strip_rows(Rows row, int64_t p0, int64_t kc, int64_t j0, int64_t nr, T* dst) {
  constexpr int64_t NR = kNR<T>, L = kLanes<T>;
  for (int64_t j = 0; j < nr; j += L) {
    if (nr - j >= L)
      transpose_rows<T, L>(row, j0 + j, p0, kc, dst + j, NR);
    else
      transpose_rows_scalar<T>(row, j0 + j, nr - j, p0, kc, dst + j, NR);
  }
  for (int64_t p = 0; p < kc; ++p)
    for (int64_t j = nr; j < NR; ++j) dst[p * NR + j] = T(0);
}

// Packs B[p0:p0+kc, j0:j0+ncols] (row-major, not transposed) into consecutive
// kc x NR strips, the last zero-padded in n: row by row, each row's ncols values
// read in one pass. With ncols <= NR, one strip.
template <typename T>
CONVX_SIMD_CLONES void pack_b_panel(const T* B, int64_t ldb, int64_t p0, int64_t kc, int64_t j0, int64_t ncols,
                                    T* dst) {
  constexpr int64_t NR = kNR<T>;
  const int64_t full = ncols / NR, tail = ncols - full * NR;
  for (int64_t p = 0; p < kc; ++p) {
    const T* src = B + (p0 + p) * ldb + j0;
    T* d = dst + p * NR;
    for (int64_t s = 0; s < full; ++s) std::memcpy(d + s * NR * kc, src + s * NR, NR * sizeof(T));
    if (tail) {
      T* dt = d + full * NR * kc;
      for (int64_t j = 0; j < tail; ++j) dt[j] = src[full * NR + j];
      for (int64_t j = tail; j < NR; ++j) dt[j] = T(0);
    }
  }
}

// A row-major B (K x N, row stride ldb), packed several strips at a time: the
// blocked loops call panel() for kPanelStrips strips side by side. Strip by
// strip, the packing reads NR values (192 bytes) from each of kc rows ldb apart,
// and when those rows are far apart (a 1x1 layer's image: 256 channels of 3136
// pixels, 12 KiB apart) every read waits on memory with few others in flight.
// Row by row across the panel, each read is kPanelStrips * NR values long, which
// the hardware prefetchers can stream.
template <typename T>
struct RowMajorB {
  const T* B;
  int64_t ldb;
  void panel(int64_t j0, int64_t ncols, int64_t p0, int64_t kc, T* dst) const {
    pack_b_panel<T>(B, ldb, p0, kc, j0, ncols, dst);
  }
};

}  // namespace

namespace {
// A row-major A (M x K, row stride lda) that gemm_blocked reads in place instead
// of packing.
template <typename T>
struct InPlaceA {
  const T* base;
  int64_t lda;
  RowsA<T> strip(int64_t M, int64_t i0, int64_t p0) const {
    RowsA<T> a;
    for (int64_t i = 0; i < kMR; ++i) a.rows[i] = base + std::min(i0 + i, M - 1) * lda + p0;
    return a;
  }
};
// A segmented A read in place: A[m][p] = base[m * row_stride + off[p]].
template <typename T>
struct InPlaceSegmentedA {
  const T* base;
  int64_t row_stride;
  const int64_t* off;
  OffsetRowsA<T> strip(int64_t M, int64_t i0, int64_t p0) const {
    OffsetRowsA<T> a;
    for (int64_t i = 0; i < kMR; ++i) a.rows[i] = base + std::min(i0 + i, M - 1) * row_stride;
    a.off = off + p0;
    return a;
  }
};
template <typename T>
struct IsInPlaceA {
  static constexpr bool value = false;
};
template <typename T>
struct IsInPlaceA<InPlaceA<T>> {
  static constexpr bool value = true;
};
template <typename T>
struct IsInPlaceA<InPlaceSegmentedA<T>> {
  static constexpr bool value = true;
};

// How many strips of B the blocked loops pack at once (at most, in
// gemm_one_a_block): kPanelStrips for a packer with panel() (8 strips of
// 256 x 48 floats: 384 KiB, well inside L2), else one.
constexpr int64_t kPanelStrips = 8;
template <typename PackB, typename = void>
struct StripsPerPack {
  static constexpr int64_t value = 1;
};
template <typename PackB>
struct StripsPerPack<PackB, std::void_t<decltype(&PackB::panel)>> {
  static constexpr int64_t value = kPanelStrips;
};

// Packs `strips` strips of op(B) (at most StripsPerPack<PackB>) from column j0,
// ncols of them left in B, to dst, one after another.
template <typename T, typename PackB>
inline void pack_b_strips(const PackB& pack_b, int64_t j0, int64_t ncols, int64_t strips, int64_t p0, int64_t kc,
                          T* dst) {
  if constexpr (StripsPerPack<PackB>::value > 1)
    pack_b.panel(j0, std::min(strips * kNR<T>, ncols), p0, kc, dst);
  else
    pack_b(j0, std::min(kNR<T>, ncols), p0, kc, dst);
}

// One micro-kernel of the blocked loops: the C tile at row i, column j from
// A's strip (at a_packed, or where A lies when PackA is an InPlaceA) and the
// packed B strip b, over the K block from pc.
template <typename T, typename PackA>
inline void run_tile(const PackA& pack_a, const T* a_packed, PackedStrip<T> b, int64_t M, int64_t N, int64_t i,
                     int64_t j, int64_t pc, int64_t kc, T* C, int64_t ldc, bool accumulate, bool prefetch_c) {
  const int64_t m = std::min(kMR, M - i), n = std::min(kNR<T>, N - j);
  if constexpr (IsInPlaceA<PackA>::value)
    run_micro_kernel<T>(kc, pack_a.strip(M, i, pc), b, C + i * ldc + j, ldc, m, n, accumulate, prefetch_c);
  else
    run_micro_kernel<T>(kc, a_packed, b, C + i * ldc + j, ldc, m, n, accumulate, prefetch_c);
}

// gemm_blocked for an A of one MC block (M <= kMC, the K filters of most
// convolutions): each packed strip of B then serves that block alone, so it is
// packed just before its micro-kernels run, into a per-thread buffer of one strip
// (kc x NR: 48 KiB for float at kKC, in L1 or prefetched from L2; longer with A
// in place, see kKCInPlaceA) or of the StripsPerPack
// strips packed together (384 KiB: L2), instead of a panel of NC strips (4 MiB,
// most of a small layer's workspace) packed ahead and read back from L2/L3.
// Measured on one core: LeNet's second layer forward 8-15% faster, its
// workspace 4 MiB smaller.
template <typename T, typename PackA, typename PackB>
void gemm_one_a_block(int64_t M, int64_t N, int64_t K, PackA pack_a, PackB pack_b, T beta, T* C, int64_t ldc) {
  constexpr bool kInPlaceA = IsInPlaceA<PackA>::value;
  constexpr int64_t NR = kNR<T>;
  constexpr int64_t G = StripsPerPack<PackB>::value;
  int64_t kc_max = std::min(kKC, K);
  if (kInPlaceA && G == 1) kc_max = equal_part_size(K, kKCInPlaceA);  // see kKCInPlaceA
  const int64_t m_strips = (M + kMR - 1) / kMR, n_strips = (N + NR - 1) / NR;
  const bool prefetch_c = prefetch_c_tiles<T>(M, N);
  Scratch<T> a_packed(kInPlaceA ? 0 : m_strips * kMR * kc_max);
  for (int64_t pc = 0; pc < K; pc += kc_max) {
    const int64_t kc = std::min(kc_max, K - pc);
    const bool accumulate = pc > 0 || beta != T(0);
    T* ap = a_packed.data();
    // Small products are not worth waking the thread team; threads take whole
    // groups of strips of B, so there must be a few strips per thread.
    const bool parallel = static_cast<double>(M) * N * kc > 1048576.0 && n_strips >= 4;
    // Strips packed together: up to G, in a number of groups the threads share
    // evenly. In groups of 8, 9 strips (64 x 400 x 576) left one of two threads
    // idle, 1.4x slower than strip by strip; 66 strips (a 1x1 layer's image)
    // split 40 / 26. With 2 groups of 5 and 10 of 7 the threads are even.
    const int64_t threads = parallel && !omp_in_parallel() ? omp_get_max_threads() : 1;
    const int64_t groups = ((n_strips + G - 1) / G + threads - 1) / threads * threads;
    const int64_t group = (n_strips + groups - 1) / groups, n_groups = (n_strips + group - 1) / group;
#pragma omp parallel if ((parallel) && !omp_in_parallel())
    {
      if constexpr (!kInPlaceA) {
#pragma omp for schedule(static)
        for (int64_t is = 0; is < m_strips; ++is)
          pack_a(is * kMR, std::min(kMR, M - is * kMR), pc, kc, ap + is * kMR * kc);
      }
      Scratch<T> b_strips(G * NR * kc_max);
#pragma omp for schedule(static)
      for (int64_t jg = 0; jg < n_groups; ++jg) {
        const int64_t j0 = jg * group * NR, strips = std::min(group, n_strips - jg * group);
        pack_b_strips<T>(pack_b, j0, N - j0, strips, pc, kc, b_strips.data());
        for (int64_t s = 0; s < strips; ++s) {
          const int64_t j = j0 + s * NR;
          const PackedStrip<T> b{b_strips.data() + s * NR * kc};
          for (int64_t is = 0; is < m_strips; ++is) {
            const int64_t i = is * kMR;
            run_tile<T>(pack_a, ap + is * kMR * kc, b, M, N, i, j, pc, kc, C, ldc, accumulate, prefetch_c);
          }
        }
      }
    }
  }
}

// gemm_one_a_block with a row-major B read in place (rows ldb apart) instead of
// packed, and all of A (at most kInPlaceBMaxRows rows) packed at once: whole
// strips by the assembly kernel (see micro_kernel_in_place_b_avx512), the rest by
// micro_kernel over a StridedStrip, the last strip, if narrower than 48 columns,
// packed first (a row's last vector would read past B's end). The same order of
// work, micro-kernel by micro-kernel, as gemm_one_a_block.
template <typename T, typename PackA>
void gemm_in_place_b(int64_t M, int64_t N, int64_t K, PackA pack_a, const T* B, int64_t ldb, T beta, T* C,
                     int64_t ldc) {
  constexpr int64_t NR = kNR<T>;
  const int64_t kc_max = std::min(kKC, K);
  const int64_t m_strips = (M + kMR - 1) / kMR, n_strips = (N + NR - 1) / NR;
  const bool prefetch_c = prefetch_c_tiles<T>(M, N);
  const bool assembly = std::is_same<T, float>::value && in_place_b_kernel_available();
  Scratch<T> a_packed(m_strips * kMR * kc_max);
  for (int64_t pc = 0; pc < K; pc += kKC) {
    const int64_t kc = std::min(kKC, K - pc);
    const bool accumulate = pc > 0 || beta != T(0);
    T* ap = a_packed.data();
    // As in gemm_one_a_block: threads take runs of whole strips of B.
    const bool parallel = static_cast<double>(M) * N * kc > 1048576.0 && n_strips >= 4;
    // The kernels of one strip each fetch `ahead` rows of the next strip (see
    // the kernel), kernel `is` from row is * ahead: with 8 or more row strips of
    // A they cover it (kc = 256: 8 x 32 rows).
    const int64_t ahead = in_place_b_rows_fetched(kc);
#pragma omp parallel if ((parallel) && !omp_in_parallel())
    {
#pragma omp for schedule(static)
      for (int64_t is = 0; is < m_strips; ++is)
        pack_a(is * kMR, std::min(kMR, M - is * kMR), pc, kc, ap + is * kMR * kc);
      Scratch<T> last_strip(N % NR != 0 ? NR * kc : 0);
#pragma omp for schedule(static)
      for (int64_t js = 0; js < n_strips; ++js) {
        const int64_t j = js * NR, n = std::min(NR, N - j);
        const T* strip = B + pc * ldb + j;
        if (n < NR) {
          pack_b_panel<T>(B, ldb, pc, kc, j, n, last_strip.data());
          for (int64_t is = 0; is < m_strips; ++is)
            run_micro_kernel<T>(kc, ap + is * kMR * kc, PackedStrip<T>{last_strip.data()}, C + is * kMR * ldc + j,
                                ldc, std::min(kMR, M - is * kMR), n, accumulate, prefetch_c);
          continue;
        }
        const bool next_whole = j + 2 * NR <= N;
        for (int64_t is = 0; is < m_strips; ++is) {
          const int64_t i = is * kMR, m = std::min(kMR, M - i);
          const T* a = ap + is * kMR * kc;
          if constexpr (std::is_same<T, float>::value) {
            if (assembly && m == kMR) {
              const int64_t first = is * ahead;
              const T* next = next_whole && first + ahead <= kc ? strip + NR + first * ldb : strip;
              micro_kernel_in_place_b_avx512(kc, a, strip, ldb, next, C + i * ldc + j, ldc, accumulate);
              continue;
            }
          }
          run_micro_kernel<T>(kc, a, StridedStrip<T>{strip, ldb}, C + i * ldc + j, ldc, m, n, accumulate,
                              prefetch_c);
        }
      }
    }
  }
}

// The blocked loops of gemm_cpu, with the packing of A and B left to the caller:
// pack_a(i0, mr, p0, kc, dst) writes the MR-tall strip of rows i0.. of op(A),
// pack_b(j0, nr, p0, kc, dst) the NR-wide strip of columns j0.. of op(B), both
// over the reduction range [p0, p0 + kc). C = op(A) op(B) + beta C. pack_a may
// instead be an InPlaceA: then A is not packed but read where it lies.
template <typename T, typename PackA, typename PackB>
void gemm_blocked(int64_t M, int64_t N, int64_t K, PackA pack_a, PackB pack_b, T beta, T* C, int64_t ldc) {
  constexpr bool kInPlaceA = IsInPlaceA<PackA>::value;
  constexpr int64_t NR = kNR<T>;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // empty sum: C = beta * C
    if (beta == T(0))
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    return;
  }
  if (M <= kMC) {
    gemm_one_a_block<T>(M, N, K, pack_a, pack_b, beta, C, ldc);
    return;
  }
  const int64_t nc_max = std::min(kNC, (N + NR - 1) / NR * NR);
  const int64_t kc_max = std::min(kKCLarge, K);
  const int64_t mc_max = std::min(kMC, (M + kMR - 1) / kMR * kMR);
  Scratch<T> b_packed(nc_max * kc_max), a_packed(kInPlaceA ? 0 : mc_max * kc_max);
  const bool prefetch_c = prefetch_c_tiles<T>(M, N);

  for (int64_t jc = 0; jc < N; jc += kNC) {
    const int64_t nc = std::min(kNC, N - jc);
    const int64_t n_strips = (nc + NR - 1) / NR;
    for (int64_t pc = 0; pc < K; pc += kKCLarge) {
      const int64_t kc = std::min(kKCLarge, K - pc);
      const bool accumulate = pc > 0 || beta != T(0);
      T* bp = b_packed.data();
      T* ap = a_packed.data();
      // Small products are not worth waking the thread team.
      const bool parallel = static_cast<double>(M) * nc * kc > 1048576.0;
#pragma omp parallel if ((parallel) && !omp_in_parallel())
      {
        constexpr int64_t G = StripsPerPack<PackB>::value;
#pragma omp for schedule(static)
        for (int64_t js = 0; js < n_strips; js += G)
          pack_b_strips<T>(pack_b, jc + js * NR, nc - js * NR, G, pc, kc, bp + js * NR * kc);
        for (int64_t ic = 0; ic < M; ic += kMC) {
          const int64_t mc = std::min(kMC, M - ic);
          const int64_t m_strips = (mc + kMR - 1) / kMR;
          if constexpr (!kInPlaceA) {
#pragma omp for schedule(static)
            for (int64_t is = 0; is < m_strips; ++is)
              pack_a(ic + is * kMR, std::min(kMR, mc - is * kMR), pc, kc, ap + is * kMR * kc);
          }
#pragma omp for collapse(2) schedule(static)
          for (int64_t js = 0; js < n_strips; ++js)
            for (int64_t is = 0; is < m_strips; ++is) {
              const int64_t i = ic + is * kMR, j = jc + js * NR;
              const PackedStrip<T> b{bp + js * NR * kc};
              run_tile<T>(pack_a, ap + is * kMR * kc, b, M, N, i, j, pc, kc, C, ldc, accumulate, prefetch_c);
            }
        }
      }
    }
  }
}
}  // namespace

namespace {
// gemm_set_in_place_b's setting: -1 the rule, 0 never, 1 always.
std::atomic<int> in_place_b_mode{-1};

// The most rows of A for which B is read in place. Measured on one Xeon core
// (C++ harness, % of the FMA peak, median / best, packed -> in place): 64 x 3136
// x 256 51-55 / 67-71 -> 47-55 / 78-83 (and 0.73-0.84x -> 0.91-0.95x torch on
// the suite's 1x1 forward), 32 x 3136 x 256 48-50 / 53-60 -> 59-60 / 72-80,
// 128 x 784 x 512 59-60 / 72-78 -> 68 / 73-89, 256 x 196 x 1024 56-57 / 65-70 ->
// 57-59 / 73-75, the 1x1 backward-data's 256 x 3136 x 64 1.31-1.39x -> 1.48-1.73x
// torch; 64 x 4096 x 256 (rows 16 KiB apart) and 64 x 12544 x 64 level. Larger
// products want the blocked loops, where each packed B panel serves many
// blocks of A: 1024^3 80-81 / 83-84 -> 70-76 / 79-81, 2048^3 75-76 / 83-84 ->
// 54-56 / 57.
constexpr int64_t kInPlaceBMaxRows = 256;
}  // namespace

int gemm_set_in_place_b(int mode) { return in_place_b_mode.exchange(mode < 0 ? -1 : mode > 0 ? 1 : 0); }

bool gemm_reads_b_in_place(int64_t M, int64_t N, int64_t K, int64_t elem_bytes) {
  if (M <= 0 || K <= 0 || M > kInPlaceBMaxRows || N < gemm_micro_tile_cols<float>()) return false;
  const int mode = in_place_b_mode.load();
  if (mode >= 0) return mode == 1;
  // Only with the assembly kernel: the same loop in C++ (StridedStrip) ran
  // slower than packing (see micro_kernel_in_place_b_avx512).
  return elem_bytes == 4 && in_place_b_kernel_available();
}

template <typename T>
void gemm_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
              const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const auto pack_a = [=](int64_t i0, int64_t mr, int64_t p0, int64_t kc, T* dst) {
    pack_a_strip(trans_a, A, lda, i0, mr, p0, kc, dst);
  };
  if (!trans_b) {
    if (gemm_reads_b_in_place(M, N, K, sizeof(T)))
      gemm_in_place_b<T>(M, N, K, pack_a, B, ldb, beta, C, ldc);
    else
      gemm_blocked<T>(M, N, K, pack_a, RowMajorB<T>{B, ldb}, beta, C, ldc);
    return;
  }
  // op(B) = B^T: rows contiguous in p.
  const auto pack_bt = [=](int64_t j0, int64_t nr, int64_t p0, int64_t kc, T* dst) {
    pack_bt_strip_rows<T>(StridedRows<T>{B, ldb}, p0, kc, j0, nr, dst);
  };
  // A plain A of one MC block whose reduction is longer than a packed block (a
  // weight gradient's dY: a 1x1 layer's image, Winograd's transformed tiles):
  // read in place, in the longer blocks of kKCInPlaceA, with B packed strip by
  // strip. Fewer passes over C and no copy of A: calls alternated in one
  // process, one Xeon core, the 1x1 layer's weight gradient (K = 3136 per
  // image) 4-6% faster, Winograd's on 64 channels at 56x56 (1568 tiles) and at
  // 112x112 (3136) 4%, the AlphaGo body's at batch 16 (400) 1%. Where the
  // reduction fits one packed block the blocks are the same and packed A ran
  // faster: 512 channels on 7x7 (32 tiles) 11% slower in place, 256 at 19x19
  // (200) 2%.
  if (!trans_a && M <= kMC && K > kKC) {
    gemm_blocked<T>(M, N, K, InPlaceA<T>{A, lda}, pack_bt, beta, C, ldc);
    return;
  }
  gemm_blocked<T>(M, N, K, pack_a, pack_bt, beta, C, ldc);
}

// ---- pre-packed operands ------------------------------------------------------
// Packed A: for each KC block of the reduction (starting at p0), the MR-tall strips
// of all M rows (padded to Mp = M rounded up to MR), each kc x MR by k. Packed B
// likewise: for each KC block, the NR-wide strips of all N columns (padded to Np),
// each kc x NR by k. A block starts at p0 * Mp (p0 * Np), since all earlier blocks
// are KC deep.

template <typename T>
int64_t gemm_packed_a_size(int64_t M, int64_t K) {
  return (M + kMR - 1) / kMR * kMR * K;
}

template <typename T>
int64_t gemm_packed_b_size(int64_t K, int64_t N) {
  return (N + kNR<T> - 1) / kNR<T> * kNR<T> * K;
}

template <typename T>
PackedBRow gemm_packed_b_row(int64_t K, int64_t N, int64_t k) {
  constexpr int64_t NR = kNR<T>;
  const int64_t Np = (N + NR - 1) / NR * NR;
  const int64_t p0 = k / kKC * kKC, kc = std::min(kKC, K - p0);
  return PackedBRow{p0 * Np + (k - p0) * NR, kc * NR, NR};
}

PackedALayout gemm_packed_a_layout(int64_t M, int64_t K) {
  return PackedALayout{(M + kMR - 1) / kMR * kMR, K, kMR, kKC};
}

namespace {
// Packs rows i0.. (mr of them) of a segmented A over [p0, p0 + kc): segment by
// segment, each a run of the rows' elements transposed through registers. A
// segment shorter than a vector (the 9 taps of a 3x3 filter) is loaded as whole
// vectors, transposed, and its first len rows kept: element by element, such
// segments took a fifth of a flipped-forward backward-data pass.
template <typename T>
CONVX_SIMD_CLONES void pack_a_segmented_strip(SegmentedRows<T> A, int64_t i0, int64_t mr, int64_t p0, int64_t kc,
                                              T* dst) {
  typedef typename Vec<T>::type V;
  constexpr int64_t L = kLanes<T>;
  const T* rows[kMR];
  for (int64_t e = p0; e < p0 + kc;) {
    const int64_t seg = e / A.seg_len, within = e % A.seg_len, len = std::min(A.seg_len - within, p0 + kc - e);
    for (int64_t i = 0; i < mr; ++i) rows[i] = A.base + (i0 + i) * A.row_stride + seg * A.seg_stride + within;
    T* d = dst + (e - p0) * kMR;
    if (mr == kMR && len < L && A.end != nullptr && rows[kMR - 1] + L <= A.end) {
      V v[kMR];
#pragma GCC unroll 8
      for (int64_t i = 0; i < kMR; ++i) std::memcpy(&v[i], rows[i], sizeof(V));
      transpose_in_registers<T, int(kMR)>(v);
      // v[j] holds rows j + m * MR of the transpose in lanes [m * MR, (m + 1) * MR)
      for (int64_t q = 0; q < len; ++q)
        std::memcpy(d + q * kMR, reinterpret_cast<const T*>(&v[q % kMR]) + (q / kMR) * kMR, kMR * sizeof(T));
    } else if (mr == kMR) {
      transpose_rows<T, kMR>(RowTable<T>{rows}, 0, 0, len, d, kMR);
    } else {
      transpose_rows_scalar<T>(RowTable<T>{rows}, 0, mr, 0, len, d, kMR);
      for (int64_t q = 0; q < len; ++q)
        for (int64_t i = mr; i < kMR; ++i) d[q * kMR + i] = T(0);
    }
    e += len;
  }
}
}  // namespace

template <typename T>
void gemm_pack_a(int64_t M, int64_t K, SegmentedRows<T> A, T* dst) {
  const int64_t Mp = (M + kMR - 1) / kMR * kMR;
  for (int64_t p0 = 0; p0 < K; p0 += kKC) {
    const int64_t kc = std::min(kKC, K - p0);
    const int64_t strips = Mp / kMR;
#pragma omp parallel for schedule(static) if ((double(Mp) * double(kc) > 262144.0) && !omp_in_parallel())
    for (int64_t is = 0; is < strips; ++is)
      pack_a_segmented_strip<T>(A, is * kMR, std::min(kMR, M - is * kMR), p0, kc, dst + p0 * Mp + is * kc * kMR);
  }
}

namespace {
// C = A * B with A's strip for (row strip is, K block from p0) given by
// a_strip(is, p0, kc) (packed or in place) and B's strip for (column strip js, K
// block from p0) made by strip(js, p0). The same order of work as gemm_cpu: each thread keeps one B strip
// in L1 and streams the A strips of an MC block past it; K blocks run in sequence,
// so every C element sums in a fixed order for any thread count.
template <typename T, typename AStripAt, typename MakeStrip>
void gemm_strips_driver(int64_t M, int64_t N, int64_t K, AStripAt a_strip, MakeStrip strip, T* C, int64_t ldc,
                        T beta, int64_t kc_block = kKC) {
  constexpr int64_t NR = kNR<T>;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (beta == T(0))
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    return;
  }
  const int64_t Mp = (M + kMR - 1) / kMR * kMR;
  const int64_t m_strips = Mp / kMR, n_strips = (N + NR - 1) / NR;
  const bool parallel = double(M) * double(N) * double(K) > 4194304.0;
  const bool prefetch_c = prefetch_c_tiles<T>(M, N);
  for (int64_t p0 = 0; p0 < K; p0 += kc_block) {
    const int64_t kc = std::min(kc_block, K - p0);
    for (int64_t ic = 0; ic < m_strips; ic += kMC / kMR) {
      const int64_t ic_end = std::min(m_strips, ic + kMC / kMR);
#pragma omp parallel for collapse(2) schedule(static) if ((parallel) && !omp_in_parallel())
      for (int64_t js = 0; js < n_strips; ++js)
        for (int64_t is = ic; is < ic_end; ++is) {
          const int64_t i = is * kMR, j = js * NR;
          run_micro_kernel<T>(kc, a_strip(is, p0, kc), strip(js, p0), C + i * ldc + j, ldc, std::min(kMR, M - i),
                              std::min(NR, N - j), p0 > 0 || beta != T(0), prefetch_c);
        }
    }
  }
}

// The driver with A pre-packed (gemm_pack_a's layout), C overwritten.
template <typename T, typename MakeStrip>
void gemm_packed_a_driver(int64_t M, int64_t N, int64_t K, const T* a_packed, MakeStrip strip, T* C, int64_t ldc) {
  const int64_t Mp = (M + kMR - 1) / kMR * kMR;
  gemm_strips_driver<T>(
      M, N, K, [=](int64_t is, int64_t p0, int64_t kc) { return a_packed + p0 * Mp + is * kc * kMR; }, strip, C, ldc,
      T(0));
}
}  // namespace

template <typename T>
void gemm_packed_cpu(int64_t M, int64_t N, int64_t K, const T* a_packed, const T* b_packed, T* C, int64_t ldc) {
  constexpr int64_t NR = kNR<T>;
  const int64_t Np = (N + NR - 1) / NR * NR;
  gemm_packed_a_driver<T>(
      M, N, K, a_packed,
      [=](int64_t js, int64_t p0) {
        return PackedStrip<T>{b_packed + p0 * Np + js * std::min(kKC, K - p0) * NR};
      },
      C, ldc);
}

template <typename T>
void gemm_packed_a_rows_b_cpu(int64_t M, int64_t N, int64_t K, const T* a_packed, const T* const* b_rows, T* C,
                              int64_t ldc) {
  gemm_packed_a_driver<T>(
      M, N, K, a_packed, [=](int64_t js, int64_t p0) { return RowStrip<T>{b_rows + p0, js * kNR<T>}; }, C, ldc);
}

namespace {
// Strip js of the split-rows B from row p0: each 16-column vector at its own offset.
template <typename T>
SplitRowStrip<T> split_rows_strip(int64_t N, const T* const* b_rows, const int64_t* vec_off, int64_t js, int64_t p0) {
  SplitRowStrip<T> strip{b_rows + p0, {}};
  const int64_t vectors = (N + kLanes<T> - 1) / kLanes<T>;
  for (int64_t v = 0; v < kNV; ++v) strip.off[v] = vec_off[std::min(js * kNV + v, vectors - 1)];
  return strip;
}
}  // namespace

template <typename T>
void gemm_split_rows_b_cpu(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* const* b_rows,
                           const int64_t* vec_off, T beta, T* C, int64_t ldc) {
  const InPlaceA<T> a{A, lda};
  gemm_strips_driver<T>(
      M, N, K, [=](int64_t is, int64_t p0, int64_t) { return a.strip(M, is * kMR, p0); },
      [=](int64_t js, int64_t p0) { return split_rows_strip<T>(N, b_rows, vec_off, js, p0); }, C, ldc, beta,
      equal_part_size(K, kKCInPlaceA));
}

// Packs B[p0:p0+kc, j0:j0+nr] for B[k][n] = base[row_off[k] + col_off[n]]: the
// columns fall into runs of consecutive source addresses (an output row of the
// shifted-plane convolution). Source rows must be readable 16 elements past every
// run's start.
template <typename T>
CONVX_SIMD_CLONES void pack_b_gather_strip(const T* base, const int64_t* row_off, const int64_t* col_off, int64_t p0,
                                           int64_t kc, int64_t j0, int64_t nr, T* dst) {
  typedef typename Vec<T>::type V;
  typedef typename IntVec<T>::type M;
  constexpr int64_t NR = kNR<T>, L = kLanes<T>;
  // Each vector of the strip, if its columns come from at most two runs: lanes
  // below split from source offset a (the first run, lane l at a + l), the rest
  // from b (b + l for the second run), lanes from `valid` on zero. Then a row of
  // the strip is two loads and a blend per vector, where copying run by run took
  // two overlapping copies per run (runs of 19 on the 19x19 board: 8% of the
  // AlphaGo input layer's forward). Loads stay inside the guarantee above: a
  // starts the first run, and b = (start of the second) - split >= a.
  int64_t a[kNV], b[kNV];
  M first[kNV], live[kNV];
  bool blended = true;
  M lane;
  for (int64_t l = 0; l < L; ++l) lane[l] = l;
  for (int64_t v = 0; v < kNV; ++v) {
    const int64_t j = v * L, valid = std::clamp<int64_t>(nr - j, 0, L);
    int64_t split = valid;
    a[v] = b[v] = 0;
    if (valid > 0) {
      a[v] = col_off[j0 + j];
      split = 1;
      while (split < valid && col_off[j0 + j + split] == a[v] + split) ++split;
      b[v] = split < valid ? col_off[j0 + j + split] - split : a[v];
      for (int64_t l = split; l < valid; ++l) blended &= col_off[j0 + j + l] == b[v] + l;
    }
    typedef typename std::remove_reference<decltype(lane[0])>::type Lane;
    first[v] = lane < Lane(split);
    live[v] = lane < Lane(valid);
  }
  if (blended) {
    for (int64_t p = 0; p < kc; ++p) {
      const T* src = base + row_off[p0 + p];
      T* d = dst + p * NR;
#pragma GCC unroll 3
      for (int64_t v = 0; v < kNV; ++v) {
        V x, y;
        std::memcpy(&x, src + a[v], sizeof(V));
        std::memcpy(&y, src + b[v], sizeof(V));
        V out = first[v] ? x : y;
        out = live[v] ? out : V{};
        std::memcpy(d + v * L, &out, sizeof(V));
      }
    }
    return;
  }
  // More runs to a vector (outputs under 8 pixels wide): copied run by run, 16
  // elements at a time. A vector store may run past its run into the next one,
  // which is written after it; the strip's last columns are copied one by one so
  // nothing spills out of the strip.
  int64_t run_start[NR], run_len[NR], runs = 0;
  for (int64_t j = 0; j < nr;) {
    int64_t k = j + 1;
    while (k < nr && col_off[j0 + k] == col_off[j0 + j] + (k - j)) ++k;
    run_start[runs] = j;
    run_len[runs++] = k - j;
    j = k;
  }
  for (int64_t p = 0; p < kc; ++p) {
    const T* src = base + row_off[p0 + p];
    T* d = dst + p * NR;
    for (int64_t r = 0; r < runs; ++r) {
      const int64_t start = run_start[r], len = run_len[r];
      const T* s = src + col_off[j0 + start];
      int64_t t = 0;
      for (; t < len && start + t + L <= NR; t += L) std::memcpy(d + start + t, s + t, L * sizeof(T));
      for (; t < len; ++t) d[start + t] = s[t];
    }
    for (int64_t j = nr; j < NR; ++j) d[j] = T(0);
  }
}

template <typename T>
void gemm_gather_b_cpu(int64_t M, int64_t N, int64_t K, SegmentedRows<T> A, const T* b_base,
                       const int64_t* row_off, const int64_t* col_off, T beta, T* C, int64_t ldc) {
  const auto pack_b = [=](int64_t j0, int64_t nr, int64_t p0, int64_t kc, T* dst) {
    pack_b_gather_strip<T>(b_base, row_off, col_off, p0, kc, j0, nr, dst);
  };
  if (A.seg_len >= K) {  // a plain row-major A: read in place
    gemm_blocked<T>(M, N, K, InPlaceA<T>{A.base, A.row_stride}, pack_b, beta, C, ldc);
    return;
  }
  std::vector<int64_t> off(std::max<int64_t>(K, 0));
  for (int64_t p = 0; p < K; ++p) off[p] = (p / A.seg_len) * A.seg_stride + p % A.seg_len;
  gemm_blocked<T>(M, N, K, InPlaceSegmentedA<T>{A.base, A.row_stride, off.data()}, pack_b, beta, C, ldc);
}

namespace {
// Rows i0 .. i0 + rows of the transpose. A last partial block of columns is
// loaded as whole vectors where `end` allows (a filter's 25 taps are 16 + 9: the
// scalar tail was a third of the elements), and only its valid rows stored.
template <typename T>
CONVX_SIMD_CLONES void transpose_block_rows(int64_t i0, int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst,
                                            int64_t ldd, const T* end) {
  typedef typename Vec<T>::type V;
  constexpr int64_t L = kLanes<T>;
  if (rows != L) {
    transpose_rows_scalar<T>(StridedRows<T>{src, lds}, i0, rows, 0, cols, dst + i0, ldd);
    return;
  }
  const int64_t whole = cols / L * L;
  transpose_rows<T, L>(StridedRows<T>{src, lds}, i0, 0, whole, dst + i0, ldd);
  if (whole == cols) return;
  if (end != nullptr && src + (i0 + L - 1) * lds + whole + L <= end) {
    V v[L];
#pragma GCC unroll 16
    for (int64_t r = 0; r < L; ++r) std::memcpy(&v[r], src + (i0 + r) * lds + whole, sizeof(V));
    transpose_in_registers<T, int(L)>(v);
    for (int64_t q = 0; q < cols - whole; ++q) std::memcpy(dst + (whole + q) * ldd + i0, &v[q], sizeof(V));
  } else {
    transpose_rows_scalar<T>(StridedRows<T>{src, lds}, i0, L, whole, cols - whole, dst + whole * ldd + i0, ldd);
  }
}
}  // namespace

template <typename T>
void transpose_batch_cpu(int64_t count, int64_t rows, int64_t cols, const T* src, int64_t src_stride, int64_t lds,
                         T* dst, int64_t dst_stride, int64_t ldd, const T* end) {
  constexpr int64_t L = kLanes<T>;
  const int64_t blocks = (rows + L - 1) / L;
  // One parallel region for the whole batch: libgomp sets up a team for every
  // region, which cost more than a filter's 48 x 25 transpose.
#pragma omp parallel for schedule(static) \
    if (double(count) * double(rows) * double(cols) > 262144.0 && !omp_in_parallel())
  for (int64_t task = 0; task < count * blocks; ++task) {
    const int64_t i = task / blocks, b = task % blocks;
    transpose_block_rows<T>(b * L, std::min(L, rows - b * L), cols, src + i * src_stride, lds, dst + i * dst_stride,
                            ldd, end);
  }
}

template <typename T>
void transpose_cpu(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd) {
  transpose_batch_cpu<T>(1, rows, cols, src, 0, lds, dst, 0, ldd, nullptr);
}

#define CONVX_INSTANTIATE_PACKED(T)                                                                    \
  template int64_t gemm_packed_a_size<T>(int64_t, int64_t);                                           \
  template int64_t gemm_packed_b_size<T>(int64_t, int64_t);                                           \
  template PackedBRow gemm_packed_b_row<T>(int64_t, int64_t, int64_t);                               \
  template void gemm_pack_a<T>(int64_t, int64_t, SegmentedRows<T>, T*);                               \
  template void gemm_packed_cpu<T>(int64_t, int64_t, int64_t, const T*, const T*, T*, int64_t);           \
  template void gemm_packed_a_rows_b_cpu<T>(int64_t, int64_t, int64_t, const T*, const T* const*, T*, int64_t);  \
  template void gemm_split_rows_b_cpu<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T* const*,          \
                                         const int64_t*, T, T*, int64_t);                                        \
  template void gemm_gather_b_cpu<T>(int64_t, int64_t, int64_t, SegmentedRows<T>, const T*, const int64_t*,      \
                                     const int64_t*, T, T*, int64_t);                                            \
  template void transpose_cpu<T>(int64_t, int64_t, const T*, int64_t, T*, int64_t);                   \
  template void transpose_batch_cpu<T>(int64_t, int64_t, int64_t, const T*, int64_t, int64_t, T*, int64_t, int64_t, \
                                       const T*);
CONVX_INSTANTIATE_PACKED(float)
CONVX_INSTANTIATE_PACKED(double)
#undef CONVX_INSTANTIATE_PACKED

// ---- C = A B^T with a long K ------------------------------------------------------
// A weight gradient is a matrix of dot products tens of thousands of terms long
// (25 x 9 of them for the digits CNN's first layer, 64 x 147 for a 7x7 stem).
// Both operands are contiguous along K, so instead of packing them (the packed
// GEMM pads a 9-wide N to a 48-wide strip, and transposes both), each (m, n) pair
// keeps a vector of partial sums along k: 4 x 5 pairs in registers, 9 row loads
// per 20 FMAs, 29 of the 32 vector registers. (4 x 6 needed 34: the compiler then
// reloaded two B rows from memory for every A row, and was 13-15% slower on the
// stem's and the digits CNN's weight gradients; 3 x 6 and 3 x 7 were slower
// still.) K is walked in chunks small enough that the chunk of every row stays in
// L2 while all blocks pass over it; the partial sums live in `acc` between
// chunks. 1024-term chunks (4 KB per float row: 256 KB for 64 rows) beat 512 by 7%
// on a 7x7 stem's weight gradient and shorter ones lose more: every block reloads
// and stores its partial-sum vectors once per chunk. Lanes are summed in a fixed
// order at the end: bitwise repeatable for any thread count.
// The terms come in segments: segment s covers a_rows[m][a_off[s] + t] and
// b_rows[n][b_off[s] + t] for t < seg_len (a whole number of vectors). A plain
// run of K is one segment per chunk, at offsets equal to the chunk's start.
template <typename T, int BM, int BN>
CONVX_SIMD_CLONES void dot_block(int64_t s0, int64_t s1, const int64_t* a_off, const int64_t* b_off, int64_t seg_len,
                                 const T* const* a_rows, const T* const* b_rows, T* acc /* BM*BN vectors */) {
  typedef typename Vec<T>::type V;
  constexpr int64_t L = kLanes<T>;
  V sum[BM][BN];
  for (int m = 0; m < BM; ++m)
    for (int n = 0; n < BN; ++n) std::memcpy(&sum[m][n], acc + (m * BN + n) * L, sizeof(V));
  for (int64_t seg = s0; seg < s1; ++seg) {
    const T* a_seg[BM];
    const T* b_seg[BN];
    for (int m = 0; m < BM; ++m) a_seg[m] = a_rows[m] + a_off[seg];
    for (int n = 0; n < BN; ++n) b_seg[n] = b_rows[n] + b_off[seg];
    for (int64_t k = 0; k < seg_len; k += L) {
      V a[BM], b[BN];
      for (int m = 0; m < BM; ++m) std::memcpy(&a[m], a_seg[m] + k, sizeof(V));
      for (int n = 0; n < BN; ++n) std::memcpy(&b[n], b_seg[n] + k, sizeof(V));
      for (int m = 0; m < BM; ++m)
        for (int n = 0; n < BN; ++n) sum[m][n] += a[m] * b[n];
    }
  }
  for (int m = 0; m < BM; ++m)
    for (int n = 0; n < BN; ++n) std::memcpy(acc + (m * BN + n) * L, &sum[m][n], sizeof(V));
}

// The dot products keep BM x BN vectors of partial sums per block, written back
// every kDotChunk terms: beyond some 10^4 outputs that traffic and the 10 loads
// per 24 FMAs lose to the packed GEMM, transposing packs and all. Measured on one
// core for the shifted-plane weight gradient: a 7x7 stem's 64 x 147 outputs run
// 10% faster as dot products (Zen 5; on the Xeon 0.95-0.97x torch, against 0.68x
// as the GEMM), 64 x 576 (3x3, 64 channels) 15% slower, and the digits CNN's
// 25 -> 50 3x3 layer's 50 x 225 at 0.84-0.91x torch, against 1.09-1.15x as the
// GEMM (Xeon, interleaved runs).
bool gemm_abt_uses_dot_products(int64_t M, int64_t N) {
  constexpr int64_t kDotProductMaxOutputs = 10000;
  return M * N <= kDotProductMaxOutputs;
}

namespace {
constexpr int64_t kDotBM = 4, kDotBN = 5, kDotChunk = 1024;

// Segments [s0, s1) of one chunk, each seg_len terms long.
struct DotChunk {
  int64_t s0, s1, seg_len;
};

// The dot products' driver: blocks of kDotBM x kDotBN outputs, each keeping its
// partial-sum vectors in `acc` between chunks (chunk c is chunk_at(c)); then
// each output's lanes summed in a fixed order, plus tail(m, n) (terms past the
// vectors, or 0), into C.
template <typename T, typename ChunkAt, typename Tail>
void dot_products(int64_t M, int64_t N, int64_t chunks, ChunkAt chunk_at, const int64_t* a_off, const int64_t* b_off,
                  const T* const* A_rows, const T* const* B_rows, bool parallel, Tail tail, T beta, T* C,
                  int64_t ldc) {
  constexpr int64_t L = kLanes<T>, BM = kDotBM, BN = kDotBN;
  const int64_t mb = (M + BM - 1) / BM, nb = (N + BN - 1) / BN, blocks = mb * nb;
  Scratch<T> acc_buffer(blocks * BM * BN * L);
  T* const acc = acc_buffer.data();
  std::fill(acc, acc + blocks * BM * BN * L, T(0));
#pragma omp parallel if ((parallel) && !omp_in_parallel())
  for (int64_t c = 0; c < chunks; ++c) {
    const DotChunk chunk = chunk_at(c);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t m0 = blk / nb * BM, n0 = blk % nb * BN;
      // Edge blocks repeat the last row instead of branching; those sums are dropped.
      const T* a_rows[BM];
      const T* b_rows[BN];
      for (int64_t m = 0; m < BM; ++m) a_rows[m] = A_rows[std::min(m0 + m, M - 1)];
      for (int64_t n = 0; n < BN; ++n) b_rows[n] = B_rows[std::min(n0 + n, N - 1)];
      dot_block<T, BM, BN>(chunk.s0, chunk.s1, a_off, b_off, chunk.seg_len, a_rows, b_rows,
                           acc + blk * BM * BN * L);
    }
  }
#pragma omp parallel for schedule(static) if ((parallel) && !omp_in_parallel())
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t m0 = blk / nb * BM, n0 = blk % nb * BN;
    for (int64_t m = 0; m < std::min(BM, M - m0); ++m)
      for (int64_t n = 0; n < std::min(BN, N - n0); ++n) {
        const T* lanes = acc + (blk * BM * BN + m * BN + n) * L;
        T sum = 0;
        for (int64_t l = 0; l < L; ++l) sum += lanes[l];
        sum += tail(m0 + m, n0 + n);
        T* c = C + (m0 + m) * ldc + (n0 + n);
        *c = (beta != T(0) ? *c : T(0)) + sum;
      }
  }
}
}  // namespace

template <typename T>
void gemm_abt_rows_cpu(int64_t M, int64_t N, int64_t K, const T* const* A_rows, const T* const* B_rows, T beta, T* C,
                       int64_t ldc) {
  constexpr int64_t L = kLanes<T>;
  if (M <= 0 || N <= 0) return;
  if (!gemm_abt_uses_dot_products(M, N)) {
    gemm_blocked<T>(
        M, N, K,
        [=](int64_t i0, int64_t mr, int64_t p0, int64_t kc, T* dst) {
          pack_a_strip_rows<T>(RowTable<T>{A_rows}, i0, mr, p0, kc, dst);
        },
        [=](int64_t j0, int64_t nr, int64_t p0, int64_t kc, T* dst) {
          pack_bt_strip_rows<T>(RowTable<T>{B_rows}, p0, kc, j0, nr, dst);
        },
        beta, C, ldc);
    return;
  }
  const int64_t K_vec = K / L * L;  // the tail (K % L terms) is added in scalar, in order
  // Chunk c is segment c: terms [c * kDotChunk, ...), the last one shorter.
  const int64_t chunks = (K_vec + kDotChunk - 1) / kDotChunk;
  std::vector<int64_t> starts(std::max<int64_t>(chunks, 1));
  for (int64_t c = 0; c < chunks; ++c) starts[c] = c * kDotChunk;
  const bool parallel = double(M) * double(N) * double(K) > 4194304.0;
  dot_products<T>(
      M, N, chunks, [=](int64_t c) { return DotChunk{c, c + 1, std::min(kDotChunk, K_vec - c * kDotChunk)}; },
      starts.data(), starts.data(), A_rows, B_rows, parallel,
      [=](int64_t m, int64_t n) {
        T sum = 0;
        for (int64_t k = K_vec; k < K; ++k) sum += A_rows[m][k] * B_rows[n][k];
        return sum;
      },
      beta, C, ldc);
}

template <typename T>
void gemm_abt_segments_cpu(int64_t M, int64_t N, int64_t segments, int64_t seg_len, const T* const* A_rows,
                           const int64_t* a_off, const T* const* B_rows, const int64_t* b_off, T beta, T* C,
                           int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  // Chunks of whole segments, about kDotChunk terms each (see dot_block).
  const int64_t per_chunk = std::max<int64_t>(1, kDotChunk / std::max<int64_t>(seg_len, 1));
  const int64_t chunks = (segments + per_chunk - 1) / per_chunk;
  const bool parallel = double(M) * double(N) * double(segments) * double(seg_len) > 4194304.0;
  dot_products<T>(
      M, N, chunks,
      [=](int64_t c) { return DotChunk{c * per_chunk, std::min(segments, (c + 1) * per_chunk), seg_len}; }, a_off,
      b_off, A_rows, B_rows, parallel, [](int64_t, int64_t) { return T(0); }, beta, C, ldc);
}

template <typename T>
void gemm_abt_small_cpu(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T beta,
                        T* C, int64_t ldc) {
  std::vector<const T*> a_rows(std::max<int64_t>(M, 0)), b_rows(std::max<int64_t>(N, 0));
  for (int64_t m = 0; m < M; ++m) a_rows[m] = A + m * lda;
  for (int64_t n = 0; n < N; ++n) b_rows[n] = B + n * ldb;
  gemm_abt_rows_cpu<T>(M, N, K, a_rows.data(), b_rows.data(), beta, C, ldc);
}

template void gemm_abt_rows_cpu<float>(int64_t, int64_t, int64_t, const float* const*, const float* const*, float,
                                       float*, int64_t);
template void gemm_abt_rows_cpu<double>(int64_t, int64_t, int64_t, const double* const*, const double* const*,
                                        double, double*, int64_t);
template void gemm_abt_segments_cpu<float>(int64_t, int64_t, int64_t, int64_t, const float* const*, const int64_t*,
                                          const float* const*, const int64_t*, float, float*, int64_t);
template void gemm_abt_segments_cpu<double>(int64_t, int64_t, int64_t, int64_t, const double* const*, const int64_t*,
                                           const double* const*, const int64_t*, double, double*, int64_t);
template void gemm_abt_small_cpu<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t,
                                        float, float*, int64_t);
template void gemm_abt_small_cpu<double>(int64_t, int64_t, int64_t, const double*, int64_t, const double*, int64_t,
                                         double, double*, int64_t);

template <typename T>
void gemm_reference_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
                        int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      T sum = 0;
      for (int64_t p = 0; p < K; ++p)
        sum += (trans_a ? A[p * lda + i] : A[i * lda + p]) * (trans_b ? B[j * ldb + p] : B[p * ldb + j]);
      C[i * ldc + j] = (beta != T(0) ? C[i * ldc + j] : T(0)) + sum;
    }
}

template void gemm_cpu<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                              int64_t, float, float*, int64_t);
template void gemm_cpu<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t, const double*,
                               int64_t, double, double*, int64_t);
template void gemm_reference_cpu<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t,
                                        const float*, int64_t, float, float*, int64_t);
template void gemm_reference_cpu<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                                         const double*, int64_t, double, double*, int64_t);

}  // namespace convx
