// A packed, cache-blocked GEMM in the GotoBLAS/BLIS layout:
//
//   for jc (NC columns of B)        B block stays in L3
//     for pc (KC of the reduction)  packed B: kc x nc, in NR-wide strips
//       for ic (MC rows of A)       packed A: mc x kc, in MR-tall strips (L2)
//         for jr, ir                MR x NR micro-tile, accumulators in registers
//
// The micro-kernel is written with GCC vector extensions (one 64-byte vector per
// row of the tile) and compiled three times by target_clones: AVX-512, AVX2+FMA and
// baseline x86-64; the loader picks the clone for the running CPU, so the same
// binary never executes an instruction the CPU lacks.
//
// Threads split the (jr, ir) tiles of each macro step; the pc loop is sequential,
// so every C element sums its K terms in one fixed order: results are bitwise
// identical for any thread count.
#include "convx/gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CONVX_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CONVX_SIMD_CLONES
#endif

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

// MR = 8 rows of accumulators: 8 of 32 zmm registers hold C, enough independent
// FMA chains to cover the FMA latency; NR = one vector.
constexpr int64_t kMR = 8;
template <typename T>
constexpr int64_t kNR = 64 / sizeof(T);
// KC * NR * sizeof(T) = 16 KiB of B strip lives in L1; MC * KC of packed A in L2.
constexpr int64_t kKC = 256;
constexpr int64_t kMC = 96;
constexpr int64_t kNC = 4096;

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
std::unique_ptr<T, AlignedFree> aligned_buffer(int64_t count) {
  size_t bytes = (static_cast<size_t>(count) * sizeof(T) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  if (!p) throw std::bad_alloc();
  return std::unique_ptr<T, AlignedFree>(static_cast<T*>(p));
}

// acc[MR] += A strip (kc x MR, packed row-major by k) times B strip (kc x NR).
// Then C tile (m x n valid part) = acc (+ C when accumulate).
template <typename T>
CONVX_SIMD_CLONES void micro_kernel(int64_t kc, const T* __restrict a_packed, const T* __restrict b_packed,
                                    T* __restrict C, int64_t ldc, int64_t m, int64_t n, bool accumulate) {
  typedef typename Vec<T>::type V;
  constexpr int64_t NR = kNR<T>;
  V acc[kMR];
  for (int64_t i = 0; i < kMR; ++i) acc[i] = V{} ;
  const V* b = reinterpret_cast<const V*>(b_packed);
  for (int64_t p = 0; p < kc; ++p) {
    V bv = b[p];
    const T* a = a_packed + p * kMR;
    for (int64_t i = 0; i < kMR; ++i) acc[i] += a[i] * bv;
  }
  if (m == kMR && n == NR) {
    for (int64_t i = 0; i < kMR; ++i) {
      V out = acc[i];
      if (accumulate) {
        V c;
        std::memcpy(&c, C + i * ldc, sizeof(V));
        out += c;
      }
      std::memcpy(C + i * ldc, &out, sizeof(V));
    }
    return;
  }
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) C[i * ldc + j] = (accumulate ? C[i * ldc + j] : T(0)) + acc[i][j];
}

// Packs op(A)[i0:i0+mc, p0:p0+kc] into MR-tall strips, each kc x MR row-major by k,
// zero-padding the last strip so the micro-kernel never branches on m.
template <typename T>
void pack_a_strip(bool trans_a, const T* A, int64_t lda, int64_t i0, int64_t mr, int64_t p0, int64_t kc,
                  T* dst) {
  for (int64_t p = 0; p < kc; ++p) {
    for (int64_t i = 0; i < mr; ++i) {
      int64_t row = i0 + i, col = p0 + p;
      dst[p * kMR + i] = trans_a ? A[col * lda + row] : A[row * lda + col];
    }
    for (int64_t i = mr; i < kMR; ++i) dst[p * kMR + i] = T(0);
  }
}

// Packs op(B)[p0:p0+kc, j0:j0+nr] into one kc x NR strip, zero-padded in n.
template <typename T>
void pack_b_strip(bool trans_b, const T* B, int64_t ldb, int64_t p0, int64_t kc, int64_t j0, int64_t nr,
                  T* dst) {
  constexpr int64_t NR = kNR<T>;
  for (int64_t p = 0; p < kc; ++p) {
    T* d = dst + p * NR;
    if (!trans_b && nr == NR) {
      std::memcpy(d, B + (p0 + p) * ldb + j0, NR * sizeof(T));
      continue;
    }
    for (int64_t j = 0; j < nr; ++j)
      d[j] = trans_b ? B[(j0 + j) * ldb + (p0 + p)] : B[(p0 + p) * ldb + (j0 + j)];
    for (int64_t j = nr; j < NR; ++j) d[j] = T(0);
  }
}

}  // namespace

template <typename T>
void gemm_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
              const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  constexpr int64_t NR = kNR<T>;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // empty sum: C = beta * C
    if (beta == T(0))
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    return;
  }
  const int64_t nc_max = std::min(kNC, (N + NR - 1) / NR * NR);
  const int64_t kc_max = std::min(kKC, K);
  const int64_t mc_max = std::min(kMC, (M + kMR - 1) / kMR * kMR);
  auto b_packed = aligned_buffer<T>(nc_max * kc_max);
  auto a_packed = aligned_buffer<T>(mc_max * kc_max);

  for (int64_t jc = 0; jc < N; jc += kNC) {
    const int64_t nc = std::min(kNC, N - jc);
    const int64_t n_strips = (nc + NR - 1) / NR;
    for (int64_t pc = 0; pc < K; pc += kKC) {
      const int64_t kc = std::min(kKC, K - pc);
      const bool accumulate = pc > 0 || beta != T(0);
      T* bp = b_packed.get();
      T* ap = a_packed.get();
      // Small products are not worth waking the thread team.
      const bool parallel = static_cast<double>(M) * nc * kc > 1048576.0;
#pragma omp parallel if (parallel)
      {
#pragma omp for schedule(static)
        for (int64_t js = 0; js < n_strips; ++js)
          pack_b_strip(trans_b, B, ldb, pc, kc, jc + js * NR, std::min(NR, nc - js * NR), bp + js * NR * kc);
        for (int64_t ic = 0; ic < M; ic += kMC) {
          const int64_t mc = std::min(kMC, M - ic);
          const int64_t m_strips = (mc + kMR - 1) / kMR;
#pragma omp for schedule(static)
          for (int64_t is = 0; is < m_strips; ++is)
            pack_a_strip(trans_a, A, lda, ic + is * kMR, std::min(kMR, mc - is * kMR), pc, kc,
                         ap + is * kMR * kc);
#pragma omp for collapse(2) schedule(static)
          for (int64_t js = 0; js < n_strips; ++js)
            for (int64_t is = 0; is < m_strips; ++is) {
              const int64_t i = ic + is * kMR, j = jc + js * NR;
              micro_kernel<T>(kc, ap + is * kMR * kc, bp + js * NR * kc, C + i * ldc + j, ldc,
                              std::min(kMR, M - i), std::min(NR, N - j), accumulate);
            }
        }
      }
    }
  }
}

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
