"""The packed GEMM behind the im2col paths, against numpy and the triple-loop reference.

Sizes straddle the blocking parameters (8-row micro-tiles, 16/8-column vectors,
KC = 256, or 512 for an A of more than MC rows, MC = 192, NC = 2064; 16 x 16
register transposes when packing an operand stored along the reduction; the
micro-kernel's B prefetch 8 steps ahead, so K blocks of 8 or fewer steps run its
tail loop alone) so every edge-tile path runs. An A of at most
MC rows packs B as it goes (a transposed B one strip at a time, a plain one eight
strips at a time, row by row), a taller one in panels of NC columns: all run with
several KC steps, past NC columns, with a partial last group of strips, and on
the thread team.
"""
import numpy as np
import pytest

from convx import _C

SHAPES = [(1, 1, 1), (7, 15, 3), (8, 16, 256), (9, 17, 257), (97, 33, 300), (5, 4100, 11), (150, 500, 300),
          (200, 50, 520), (193, 4100, 20)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("M,N,K", SHAPES, ids=lambda v: str(v))
def test_gemm_matches_numpy(M, N, K, trans_a, trans_b, dtype):
    rng = np.random.default_rng(M * 1000 + N + K)
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    expected = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    c = np.full((M, N), np.nan, dtype=dtype)  # beta = 0 must overwrite, NaN included
    _C.gemm(a, b, c, trans_a, trans_b, 0.0)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * np.sqrt(K) * 4)
    # beta = 1 accumulates onto what is there.
    _C.gemm(a, b, c, trans_a, trans_b, 1.0)
    np.testing.assert_allclose(c, 2 * expected, rtol=tol, atol=tol * np.sqrt(K) * 8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_reference_and_fast_agree(dtype):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((37, 70)).astype(dtype)
    b = rng.standard_normal((70, 45)).astype(dtype)
    fast, ref = np.empty((37, 45), dtype), np.empty((37, 45), dtype)
    _C.gemm(a, b, fast)
    _C.gemm(a, b, ref, reference=True)
    np.testing.assert_allclose(fast, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-4)


def test_gemm_is_bitwise_repeatable():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 600)).astype(np.float32)
    b = rng.standard_normal((600, 500)).astype(np.float32)
    first, second = np.empty((300, 500), np.float32), np.empty((300, 500), np.float32)
    _C.gemm(a, b, first)
    _C.gemm(a, b, second)
    assert np.array_equal(first, second)


def test_gemm_rejects_mismatched_shapes():
    a, b = np.zeros((3, 4)), np.zeros((5, 6))
    with pytest.raises(ValueError, match="shapes do not agree"):
        _C.gemm(a, b, np.zeros((3, 6)))
    with pytest.raises(TypeError):  # dtype mismatch is not silently converted
        _C.gemm(a.astype(np.float32), np.zeros((4, 6)), np.zeros((3, 6)))
