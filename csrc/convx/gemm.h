// Row-major single-precision / double-precision GEMM used by the im2col paths.
#pragma once
#include <algorithm>
#include <cstdint>

namespace convx {

// C (M x N) = op(A) (M x K) * op(B) (K x N) + beta * C, with beta 0 or 1.
// op(A) = A or A^T (trans_a), likewise B. Leading dimensions are row strides.
// Deterministic: every element of C is reduced over K in the same order whatever
// the thread count (threads split M and N, never K).
template <typename T>
void gemm_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
              const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// Whether gemm_cpu reads a plain (not transposed) B where it lies instead of
// packing it: an A of at most 256 rows against a B of at least one 48-column
// strip, in float where the AVX-512 assembly kernel runs. See gemm_in_place_b
// in gemm_cpu.cpp.
bool gemm_reads_b_in_place(int64_t M, int64_t N, int64_t K, int64_t elem_bytes);
// Test seam: -1 the rule above, 0 never, 1 always where the shape allows it
// (double too, by the C++ micro-kernel); returns the previous setting.
int gemm_set_in_place_b(int mode);

// C (M x N) = sum over segments s and t < seg_len of A_rows[m][a_off[s] + t] *
// B_rows[n][b_off[s] + t], + beta * C: the dot products of gemm_abt_rows_cpu over
// a reduction that comes in pieces (the rows of an output gradient read in place,
// one segment per output row). seg_len must be a whole number of 64-byte vectors
// (16 floats, 8 doubles), and M * N at most the dot products' limit
// (gemm_abt_uses_dot_products).
template <typename T>
void gemm_abt_segments_cpu(int64_t M, int64_t N, int64_t segments, int64_t seg_len, const T* const* A_rows,
                           const int64_t* a_off, const T* const* B_rows, const int64_t* b_off, T beta, T* C,
                           int64_t ldc);

// C (M x N) = A (M x K) * B (N x K)^T + beta * C for small M x N and long K (dot
// products vectorized along K), e.g. the weight gradient of a few-tap layer.
template <typename T>
void gemm_abt_small_cpu(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T beta,
                        T* C, int64_t ldc);

// The same with rows given by pointers: A[m][k] = A_rows[m][k], B[n][k] = B_rows[n][k].
// Rows may overlap (the shifted-plane weight gradient points many B rows into one
// image at different offsets). Up to 10000 outputs it runs as dot products, beyond
// as the packed GEMM.
template <typename T>
void gemm_abt_rows_cpu(int64_t M, int64_t N, int64_t K, const T* const* A_rows, const T* const* B_rows, T beta, T* C,
                       int64_t ldc);
// The plain triple loop, kept as the reference the fast GEMM is tested against.
template <typename T>
void gemm_reference_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
                        int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// Columns of C per micro-tile (48 floats, 24 doubles): callers that choose their
// N can avoid narrow last strips.
template <typename T>
constexpr int64_t gemm_micro_tile_cols() {
  return 3 * 64 / int64_t(sizeof(T));
}

// Pre-packed operands, for callers that write A and B straight into the layouts
// the micro-kernel reads (Winograd's transforms do both, and reuse A across all
// tile blocks), skipping gemm_cpu's packing copies. Sizes are in elements. In a
// packed B, the micro-kernel reads the last strip only up to its last whole
// vector: those padding columns (from N up to N rounded up to a vector) must be
// written as zero; the ones past them are never read.
template <typename T>
int64_t gemm_packed_a_size(int64_t M, int64_t K);
template <typename T>
int64_t gemm_packed_b_size(int64_t K, int64_t N);
// Where row k of a packed K x N matrix B lives: B[k][n] is at row.at(n).
struct PackedBRow {
  int64_t base, strip_stride, nr;
  int64_t at(int64_t n) const { return base + (n / nr) * strip_stride + n % nr; }
};
template <typename T>
PackedBRow gemm_packed_b_row(int64_t K, int64_t N, int64_t k);
// Where A[m][k] (M x K) lives in its packed buffer, for callers that write A
// packed directly: padding rows (m >= M, up to padded_m) must be written as zero.
struct PackedALayout {
  int64_t padded_m, K, mr, kc;
  int64_t at(int64_t m, int64_t k) const {
    const int64_t p0 = k / kc * kc, depth = std::min(kc, K - p0);
    return p0 * padded_m + (m / mr) * depth * mr + (k - p0) * mr + m % mr;
  }
};
PackedALayout gemm_packed_a_layout(int64_t M, int64_t K);
// An A operand stored along the reduction in segments of seg_len elements:
// A[m][e] = base[m * row_stride + (e / seg_len) * seg_stride + e % seg_len]. A
// row-major matrix is one segment (plain); the filters of the flipped-forward
// backward-data pass, W'[c][(k, t)] = W[k][c][t], are segments of the R*S taps
// of one filter, C*R*S apart, read without writing the flipped copy.
// `end`, if set, bounds the memory that may be read (one past the last readable
// element): segments shorter than a vector are then packed by whole-vector loads
// where those stay below it.
template <typename T>
struct SegmentedRows {
  const T* base;
  int64_t row_stride, seg_stride, seg_len;
  const T* end = nullptr;
  static SegmentedRows plain(const T* A, int64_t lda, int64_t K) {
    return SegmentedRows{A, lda, 0, std::max<int64_t>(K, 1)};
  }
};
// Packs the M x K operand A.
template <typename T>
void gemm_pack_a(int64_t M, int64_t K, SegmentedRows<T> A, T* dst);
// C (M x N, row stride ldc) = A * B from packed operands.
template <typename T>
void gemm_packed_cpu(int64_t M, int64_t N, int64_t K, const T* a_packed, const T* b_packed, T* C, int64_t ldc);

// C (M x N, row stride ldc) = A * B with A packed and row k of B read in place at
// b_rows[k] (B[k][n] = b_rows[k][n]), for a B that is a set of shifted views of
// one buffer (the shifted-plane convolution). Each row is read in whole 64-byte
// vectors: up to column N rounded up to 64 bytes, which must be readable.
template <typename T>
void gemm_packed_a_rows_b_cpu(int64_t M, int64_t N, int64_t K, const T* a_packed, const T* const* b_rows, T* C,
                              int64_t ldc);
// C (M x N, row stride ldc) = A * B + beta * C (beta 0 or 1), both read in place:
// A (M x K) row-major with row stride lda, and B one 16-column vector at a time
// (8 for double): vector v of row k is b_rows[k][vec_off[v] .. + lanes), for B
// whose vectors lie in different places (the pixel-major weight gradient's
// columns, a run of channels per filter tap). N must be a whole number of vectors.
template <typename T>
void gemm_split_rows_b_cpu(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* const* b_rows,
                           const int64_t* vec_off, T beta, T* C, int64_t ldc);
// Elements per vector of the micro-kernel: 16 floats, 8 doubles.
template <typename T>
constexpr int64_t gemm_vector_lanes() {
  return gemm_micro_tile_cols<T>() / 3;
}
// C (M x N, row stride ldc) = A (M x K) * B + beta * C (beta 0 or 1), where
// B[k][n] = b_base[row_off[k] + col_off[n]] is gathered straight into the GEMM's
// packed strips (the shifted-plane convolution's im2col matrix, never written
// out). A is read in place, never packed: a segmented one (the flipped filters of
// backward-data) through a table of each element's offset in its row. Each run
// of consecutive col_off values is read 16 elements at a time:
// b_base must be readable 16 elements past b_base[row_off[k] + col_off[n]] for
// every k and n.
template <typename T>
void gemm_gather_b_cpu(int64_t M, int64_t N, int64_t K, SegmentedRows<T> A, const T* b_base,
                       const int64_t* row_off, const int64_t* col_off, T beta, T* C, int64_t ldc);
// Whether gemm_abt_rows_cpu computes an M x N product as dot products (else as
// the packed GEMM, transposing both operands into its strips).
bool gemm_abt_uses_dot_products(int64_t M, int64_t N);
// dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols, 16 x 16 blocks at a
// time through registers.
template <typename T>
void transpose_cpu(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd);
// The same for `count` matrices, matrix m at src + m * src_stride and dst + m *
// dst_stride. `end`, if set, bounds the memory that may be read (one past the last
// readable element): a last block narrower than 16 columns is then loaded as whole
// vectors where those stay below it.
template <typename T>
void transpose_batch_cpu(int64_t count, int64_t rows, int64_t cols, const T* src, int64_t src_stride, int64_t lds,
                         T* dst, int64_t dst_stride, int64_t ldd, const T* end);
}  // namespace convx
