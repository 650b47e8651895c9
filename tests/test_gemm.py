"""The packed GEMM behind the im2col paths, against numpy and the triple-loop reference.

Sizes straddle the blocking parameters (8-row micro-tiles, 16/8-column vectors,
KC = 256, or 512 for an A of more than MC rows, MC = 192, NC = 2064; 16 x 16
register transposes when packing an operand stored along the reduction; the
micro-kernel's B prefetch 8 steps ahead, so K blocks of 8 or fewer steps run its
tail loop alone) so every edge-tile path runs. An A of at most
MC rows packs B as it goes (a transposed B one strip at a time, a plain one eight
strips at a time, row by row), a taller one in panels of NC columns: all run with
several KC steps, past NC columns, with a partial last group of strips, and on
the thread team. A plain A of at most MC rows against a transposed B, with a
reduction past KC, is read in place in equal blocks of up to 768 steps (1700:
three blocks).

An A of at most 256 rows against a plain B of 48+ columns reads B in place
instead (float on AVX-512, by the assembly micro-kernel; the rule is
_C._gemm_reads_b_in_place): every product with a plain B runs both ways, the
in-place one forced on for double too (its C++ micro-kernel), with reductions
of fewer than 10 steps (no group of 8 with its prefetches), exactly 10 and 18
(one and two groups, then the rest), past one KC block (the kernel adds to C),
a last strip narrower than 48 columns (packed) and row counts off the 8-row
tile.
"""
import numpy as np
import pytest

from convx import _C

SHAPES = [(1, 1, 1), (7, 15, 3), (8, 16, 256), (9, 17, 257), (97, 33, 300), (5, 4100, 11), (150, 500, 300),
          (200, 50, 520), (193, 4100, 20), (16, 200, 7), (16, 96, 10), (24, 144, 18), (64, 3136, 256),
          (256, 200, 64), (257, 96, 40), (13, 100, 1700)]


@pytest.fixture(params=[0, 1], ids=["packed_b", "in_place_b"])
def in_place_b(request):
    """The GEMM with B packed (0), or read in place wherever A has at most 256 rows (1)."""
    before = _C._gemm_set_in_place_b(request.param)
    yield request.param
    _C._gemm_set_in_place_b(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("M,N,K", SHAPES, ids=lambda v: str(v))
def test_gemm_matches_numpy(M, N, K, trans_a, trans_b, dtype, in_place_b):
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


@pytest.mark.parametrize("M", [300, 64])
def test_gemm_is_bitwise_repeatable(M, in_place_b):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((M, 600)).astype(np.float32)
    b = rng.standard_normal((600, 500)).astype(np.float32)
    first, second = np.empty((M, 500), np.float32), np.empty((M, 500), np.float32)
    _C.gemm(a, b, first)
    _C.gemm(a, b, second)
    assert np.array_equal(first, second)


def test_gemm_reads_b_in_place_by_its_rule():
    """A 1x1 layer's forward (64 filters, 256 channels, 56x56) reads its image in
    place where the assembly kernel runs (float, AVX-512); double, an A of more
    than 256 rows or a B narrower than one 48-column strip never do."""
    before = _C._gemm_set_in_place_b(-1)
    try:
        assert _C._gemm_reads_b_in_place(64, 3136, 256, 4) is (_C.simd_level() == "avx512")
        assert _C._gemm_reads_b_in_place(256, 3136, 64, 4) is (_C.simd_level() == "avx512")
        assert not _C._gemm_reads_b_in_place(64, 3136, 256, 8)
        assert not _C._gemm_reads_b_in_place(257, 3136, 64, 4)
        assert not _C._gemm_reads_b_in_place(64, 47, 256, 4)
        _C._gemm_set_in_place_b(1)
        assert _C._gemm_reads_b_in_place(64, 3136, 256, 8)
        assert not _C._gemm_reads_b_in_place(257, 3136, 64, 4)
        _C._gemm_set_in_place_b(0)
        assert not _C._gemm_reads_b_in_place(64, 3136, 256, 4)
    finally:
        _C._gemm_set_in_place_b(before)


def test_gemm_rejects_mismatched_shapes():
    a, b = np.zeros((3, 4)), np.zeros((5, 6))
    with pytest.raises(ValueError, match="shapes do not agree"):
        _C.gemm(a, b, np.zeros((3, 6)))
    with pytest.raises(TypeError):  # dtype mismatch is not silently converted
        _C.gemm(a.astype(np.float32), np.zeros((4, 6)), np.zeros((3, 6)))
