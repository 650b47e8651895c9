"""The fast kernels against the readable reference kernels they sit beside.

The case tables (test_conv2d, test_max_pool2d) already compare whatever the
dispatcher picks with torch; these tests pin each fast path to its reference on
inputs built to hit its special cases: ties, NaN and -inf for max-pool.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convx import _C


def _pool_params(N, C, H, W, k, s, pad, dilation=(1, 1), ceil_mode=False):
    p = _C.Pool2dParams()
    p.N, p.C, p.H, p.W = N, C, H, W
    p.kernel_h, p.kernel_w = k
    p.stride_h, p.stride_w = s
    p.pad_h, p.pad_w = pad
    p.dilation_h, p.dilation_w = dilation
    p.ceil_mode = ceil_mode
    p.validate()
    return p


def _pool_both(p, x):
    shape = (p.N, p.C, p.out_h(), p.out_w())
    fast = (np.empty(shape, x.dtype), np.empty(shape, np.int64))
    ref = (np.empty(shape, x.dtype), np.empty(shape, np.int64))
    _C.max_pool2d_forward(p, x, *fast)
    _C.max_pool2d_forward(p, x, *ref, reference=True)
    return fast, ref


def _awkward_values(rng, shape, dtype):
    # Few distinct values, so windows hold ties; a sprinkle of NaN and -inf.
    x = rng.integers(-3, 3, size=shape).astype(dtype)
    x[rng.random(shape) < 0.05] = np.nan
    x[rng.random(shape) < 0.05] = -np.inf
    return x


@settings(max_examples=150, deadline=None)
@given(H=st.integers(1, 40), W=st.integers(1, 70), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       ceil_mode=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31))
def test_max_pool2d_rows_matches_reference(H, W, kh, kw, sh, sw, ph, pw, ceil_mode, dtype, seed):
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)
    try:
        p = _pool_params(2, 3, H, W, (kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil_mode)
    except ValueError:
        return  # a shape with no output or an empty window: the error tests cover it
    x = _awkward_values(np.random.default_rng(seed), (2, 3, H, W), dtype)
    (y, i), (y_ref, i_ref) = _pool_both(p, x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(i, i_ref)


@pytest.mark.parametrize("k,s,pad", [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 3), (1, 1), (1, 1))])
def test_max_pool2d_rows_matches_reference_on_wide_rows(k, s, pad):
    # Rows far wider than a vector, so the vectorized body and its remainder both run.
    p = _pool_params(1, 4, 9, 203, k, s, pad)
    x = _awkward_values(np.random.default_rng(0), (1, 4, 9, 203), np.float32)
    (y, i), (y_ref, i_ref) = _pool_both(p, x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(i, i_ref)
