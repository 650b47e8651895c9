// Row-major single-precision / double-precision GEMM used by the im2col paths.
#pragma once
#include <cstdint>

namespace convx {

// C (M x N) = op(A) (M x K) * op(B) (K x N) + beta * C, with beta 0 or 1.
// op(A) = A or A^T (trans_a), likewise B. Leading dimensions are row strides.
// Deterministic: every element of C is reduced over K in the same order whatever
// the thread count (threads split M and N, never K).
template <typename T>
void gemm_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
              const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// The plain triple loop, kept as the reference the fast GEMM is tested against.
template <typename T>
void gemm_reference_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
                        int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace convx
