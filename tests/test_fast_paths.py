"""The fast kernels against the readable reference kernels they sit beside.

The case tables (test_conv2d, test_max_pool2d) already compare whatever the
dispatcher picks with torch; these tests pin each fast path to its reference on
inputs built to hit its special cases: ties, NaN and -inf for max-pool.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convx
from convx import _C
from convx.functional import _pool2d_params


def _pool_params(N, C, H, W, k, s, pad, dilation=(1, 1), ceil_mode=False):
    return _pool2d_params(N, C, H, W, k, s, pad, dilation, ceil_mode)


def _pool_both(p, x):
    """(fast, reference) results with int64 indices. Each kernel also runs with
    int32 indices (the ones autograd keeps for the backward), which must hold
    the same values."""
    shape = (p.N, p.C, p.out_h(), p.out_w())
    results = {}
    for reference in (False, True):
        for index_dtype in (np.int64, np.int32):
            y, i = np.empty(shape, x.dtype), np.full(shape, -1, index_dtype)
            _C.max_pool2d_forward(p, x, y, i, reference=reference)
            results[reference, index_dtype] = (y, i)
        (y64, i64), (y32, i32) = results[reference, np.int64], results[reference, np.int32]
        np.testing.assert_array_equal(y32, y64)
        np.testing.assert_array_equal(i32, i64)
    return results[False, np.int64], results[True, np.int64]


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


@pytest.mark.parametrize("W,k,s,pad,ceil_mode", [
    (112, (3, 3), (2, 2), (1, 1), False),   # the suite's pool: one clipped block, then the interior
    (35, (5, 5), (2, 2), (2, 2), True),     # ceil_mode: windows past the right end as well
    (203, (40, 40), (1, 1), (20, 20), False),  # 20 windows past the left end: two clipped blocks
    (40, (31, 31), (1, 1), (15, 15), False),   # interior under 16 columns: clipped blocks only
    (204, (2, 2), (2, 2), (0, 0), False),   # the last window ends the plane: its loads stop there
])
def test_max_pool2d_windows_past_the_row_ends_match_reference(W, k, s, pad, ceil_mode):
    # Rows of 16+ outputs whose windows reach into the padding take masked vector
    # blocks at the row's ends; the first and last rows put those loads at the
    # plane's edges.
    H = max(k[0], 9)
    p = _pool_params(2, 3, H, W, k, s, pad, ceil_mode=ceil_mode)
    x = _awkward_values(np.random.default_rng(W), (2, 3, H, W), np.float32)
    (y, i), (y_ref, i_ref) = _pool_both(p, x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(i, i_ref)


@pytest.mark.parametrize("H,W,k,s", [(26, 26, (2, 2), (2, 2)), (11, 11, (2, 2), (2, 2)), (7, 7, (3, 3), (2, 2)),
                                     (7, 5, (2, 2), (1, 1)), (6, 31, (3, 2), (1, 2)), (9, 9, (4, 4), (3, 3))])
def test_max_pool2d_narrow_planes_match_reference(H, W, k, s):
    # Rows narrower than a vector: 5 to 15 outputs a row with stride 1 or 2 take a
    # row per vector (spare lanes stored over the next row, masked on the last);
    # the others the gather kernel (whole planes, 16 outputs at a time, a masked
    # tail); planes of 4 to 45 outputs cover full and partial vectors.
    p = _pool_params(3, 5, H, W, k, s, (0, 0))
    x = _awkward_values(np.random.default_rng(1), (3, 5, H, W), np.float32)
    (y, i), (y_ref, i_ref) = _pool_both(p, x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(i, i_ref)


def _pair_indices(rng, shape, pool):
    # Within each run of 16 outputs (one vector of the scatter), the indices are
    # distinct except that an output may repeat the one just before it (never
    # three in a row): the repeats of adjacent overlapping windows. Drawn from
    # `pool` elements, so across vectors each element sums many terms, whose order
    # shows in the last bits.
    flat = np.empty((shape[0] * shape[1], shape[2] * shape[3]), np.int64)
    for plane in flat:
        for start in range(0, plane.size, 16):
            run = rng.choice(pool, size=min(16, plane.size - start), replace=False)
            for k in range(1, run.size):
                if rng.random() < 0.5 and (k < 2 or run[k - 1] != run[k - 2]):
                    run[k] = run[k - 1]
            plane[start:start + run.size] = run
    return flat.reshape(shape)


@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spread", [3, 40, 1000, "pairs"])
def test_max_pool2d_backward_matches_ordered_scatter(dtype, spread, index_dtype):
    # Any valid indices, repeats included (spread 3: nearly every vector of 16 has
    # lanes that collide, in chains, which the vectorized scatter takes in rounds;
    # "pairs": lanes that repeat only the lane before, which it folds into one
    # round): the result must equal adding grad_output into grad_input in output
    # order, as np.add.at does, bit for bit.
    p = _pool_params(2, 3, 40, 40, (2, 2), (2, 2), (0, 0))
    rng = np.random.default_rng(7 if spread == "pairs" else spread)
    shape = (p.N, p.C, p.out_h(), p.out_w())
    gy = rng.standard_normal(shape).astype(dtype)
    if spread == "pairs":
        idx = _pair_indices(rng, shape, 48)
    else:
        idx = rng.integers(0, min(spread, p.H * p.W), size=shape).astype(np.int64)
    gx = np.empty((p.N, p.C, p.H, p.W), dtype)
    _C.max_pool2d_backward(p, gy, idx.astype(index_dtype), gx)
    want = np.zeros((p.N * p.C, p.H * p.W), dtype)
    for plane in range(p.N * p.C):
        np.add.at(want[plane], idx.reshape(p.N * p.C, -1)[plane], gy.reshape(p.N * p.C, -1)[plane])
    np.testing.assert_array_equal(gx.reshape(p.N * p.C, -1), want)


@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("H,W,k", [(37, 37, (2, 2)), (32, 64, (2, 2)), (40, 35, (3, 2))])
def test_max_pool2d_backward_of_tiling_windows_matches_ordered_scatter(H, W, k, index_dtype):
    # Windows 2 wide, stride = kernel, 16+ outputs a row: grad_input is written
    # window by window, with no scatter. The indices are the forward's own (so
    # every one is a tap of its window), some gradients are -0.0 (the scatter's
    # 0 + gy makes them +0.0), and odd sizes leave rows and columns that no window
    # covers, which must come out zero.
    p = _pool_params(2, 3, H, W, k, k, (0, 0))
    rng = np.random.default_rng(H * W)
    x = _awkward_values(rng, (p.N, p.C, H, W), np.float32)
    (y, idx), _ = _pool_both(p, x)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gy[rng.random(gy.shape) < 0.1] = -0.0
    gx = np.full((p.N, p.C, H, W), np.nan, np.float32)
    _C.max_pool2d_backward(p, gy, idx.astype(index_dtype), gx)
    want = np.zeros((p.N * p.C, H * W), np.float32)
    for plane in range(p.N * p.C):
        np.add.at(want[plane], idx.reshape(p.N * p.C, -1)[plane], gy.reshape(p.N * p.C, -1)[plane])
    np.testing.assert_array_equal(gx.reshape(p.N * p.C, -1), want)
    np.testing.assert_array_equal(np.signbit(gx.reshape(p.N * p.C, -1)), np.signbit(want))


@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("k", [(2, 2), (3, 3)])  # (2, 2): the tiling kernel first, then the scatter
@pytest.mark.parametrize("where", ["vector", "tail"])
@pytest.mark.parametrize("bad", [-1, "plane"])
def test_max_pool2d_backward_rejects_indices_outside_their_plane(index_dtype, k, where, bad):
    # One bad index, negative or one past the plane, in a full vector of 16 or in
    # the scalar tail of the last plane (31 x 31 = 60 * 16 + 1 outputs for 2x2,
    # 30 x 30 = 56 * 16 + 4 for 3x3).
    p = _pool_params(1, 2, 62, 62, k, (2, 2), (0, 0))
    shape = (p.N, p.C, p.out_h(), p.out_w())
    x = np.random.default_rng(0).standard_normal((p.N, p.C, p.H, p.W)).astype(np.float32)
    (_, idx), _ = _pool_both(p, x)
    idx = idx.astype(index_dtype)
    idx.reshape(-1)[5 if where == "vector" else -1] = -1 if bad == -1 else p.H * p.W
    gy = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, H\*W\) = \[0, 3844\)"):
        _C.max_pool2d_backward(p, gy, idx, np.empty((p.N, p.C, p.H, p.W), np.float32))


def test_max_pool2d_int32_indices_refused_for_planes_past_their_range():
    # H*W = 2**31 + 4633: int32 cannot hold the flat offsets. Refused before any
    # array is touched (the small arrays here would fail the size checks after).
    p = _pool_params(1, 1, 46341, 46341, (2, 2), (2, 2), (0, 0))
    tiny = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=r"int32 indices need H\*W < 2\*\*31; H\*W = 2147488281"):
        _C.max_pool2d_forward(p, tiny, tiny.copy(), np.zeros(1, np.int32))
    with pytest.raises(ValueError, match=r"int32 indices need H\*W < 2\*\*31"):
        _C.max_pool2d_backward(p, tiny, np.zeros(1, np.int32), tiny.copy())


# ---- Winograd F(2x2, 3x3) and F(4x4, 3x3) --------------------------------------------

def _conv_params(N, C, H, W, K, pads, R=3, S=3, stride=1, dilation=(1, 1), groups=1):
    """Validated params; stride is an int or an (h, w) pair, pads (top, bottom, left, right)."""
    p = _C.Conv2dParams()
    p.N, p.C, p.H, p.W, p.K, p.R, p.S = N, C, H, W, K, R, S
    p.stride_h, p.stride_w = (stride, stride) if isinstance(stride, int) else stride
    p.pad_top, p.pad_bottom, p.pad_left, p.pad_right = pads
    p.dilation_h, p.dilation_w = dilation
    p.groups = groups
    p.validate()
    return p


def require_kept_workspace():
    # Called after the kernels ran, so a sanitizer build still checks them.
    if not _C.workspace_keeps_blocks():
        pytest.skip("sanitizer build: every scratch buffer is its own, nothing is kept to measure")


def kept_workspace_after(*runs):
    """Bytes of kept scratch memory the calls leave, made in turn on one thread
    from none kept; skips the test (after the calls) where nothing is kept."""
    threads = convx.get_num_threads()
    convx.set_num_threads(1)
    try:
        convx.release_workspace()
        before = convx.workspace_bytes()  # blocks of other threads, if any
        for run in runs:
            run()
        held = convx.workspace_bytes() - before
        convx.release_workspace()
    finally:
        convx.set_num_threads(threads)
    require_kept_workspace()
    return held


WINOGRAD_LAYERS = [
    # (N, C, H, W, K, (top, bottom, left, right)): odd sizes so edge tiles are partial
    (2, 16, 19, 19, 24, (1, 1, 1, 1)),   # an AlphaGo-body-like layer, scaled down
    (1, 32, 13, 11, 16, (0, 0, 0, 0)),
    (2, 16, 9, 14, 16, (2, 1, 0, 3)),    # asymmetric padding
    (1, 16, 5, 6, 32, (3, 3, 1, 1)),     # padding > 2: negative padding in backward-data
    (1, 192, 19, 19, 192, (1, 1, 1, 1)),  # the AlphaGo body at batch 1
    (1, 19, 11, 10, 13, (1, 1, 1, 1)),   # channels not a multiple of 8: partial filter chunks
    (2, 8, 40, 3, 8, (1, 1, 1, 1)),      # tall and narrow: an image's padded rows copied in several runs
]


WINOGRAD_ALGOS = ["winograd_4x4", "winograd_2x2"]


def _float64_and_float32_runs(p, algo, seed=1):
    N, C, H, W, K = p.N, p.C, p.H, p.W, p.K
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((K, C, 3, 3))
    b = rng.standard_normal(K)
    gy = rng.standard_normal((N, K, p.out_h(), p.out_w()))
    out = {}
    for dtype, a in ((np.float64, "direct"), (np.float64, algo), (np.float32, "direct"), (np.float32, algo)):
        y = np.empty((N, K, p.out_h(), p.out_w()), dtype)
        gx = np.empty((N, C, H, W), dtype)
        assert _C.conv2d_forward(p, x.astype(dtype), w.astype(dtype), b.astype(dtype), y, a) == a
        assert _C.conv2d_backward_data(p, gy.astype(dtype), w.astype(dtype), gx, a) == a
        out[(np.dtype(dtype).name, a)] = (y, gx)
    return out


def _rel_err(a, ref):
    return np.abs(a.astype(np.float64) - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("algo", WINOGRAD_ALGOS)
@pytest.mark.parametrize("layer", WINOGRAD_LAYERS, ids=[str(c[:5]) for c in WINOGRAD_LAYERS])
def test_winograd_error_against_float64_reference(layer, algo):
    N, C, H, W, K, pads = layer
    p = _conv_params(N, C, H, W, K, pads)
    runs = _float64_and_float32_runs(p, algo)
    for i in range(2):  # forward output, then backward-data
        ref = runs[("float64", "direct")][i]
        assert _rel_err(runs[("float64", algo)][i], ref) <= 1e-12
        assert _rel_err(runs[("float32", algo)][i], ref) <= 1e-4


def test_winograd_error_close_to_im2col():
    # Why the dispatcher may use either tile size: F(2x2)'s float32 error stays
    # within a small factor of a float32 GEMM's (im2col), and F(4x4)'s, with its
    # points 0, +-3/4, +-4/3, within a few times that (5-7x measured; the usual
    # 0, +-1, +-2 gave over 20x). (The direct reference sums in double, so it is
    # no float32 yardstick.)
    p = _conv_params(1, 192, 19, 19, 192, (1, 1, 1, 1))
    f2, f4, gemm = (_float64_and_float32_runs(p, a) for a in ("winograd_2x2", "winograd_4x4", "im2col"))
    for i in range(2):
        ref = gemm[("float64", "direct")][i]
        gemm_err = _rel_err(gemm[("float32", "im2col")][i], ref)
        assert _rel_err(f2[("float32", "winograd_2x2")][i], ref) <= 4 * gemm_err
        assert _rel_err(f4[("float32", "winograd_4x4")][i], ref) <= 10 * gemm_err


def test_allow_winograd_4x4_switches_the_dispatcher_between_tile_sizes():
    torch = pytest.importorskip("torch")
    import convx
    import convx.functional as F
    # 64 -> 64 on 28x28 at batch 2: 98 4x4 tiles, where 'auto' picks F(4x4); without
    # it, F(2x2), and for the weight gradient (4096 channel pairs) the shifted GEMM
    x = torch.randn(2, 64, 28, 28, requires_grad=True)
    w = torch.randn(64, 64, 3, 3, requires_grad=True)
    ops = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")
    assert convx.allow_winograd_4x4()
    try:
        for allowed, algos in ((True, ["winograd_4x4"] * 3), (False, ["winograd_2x2"] * 2 + ["shifted"])):
            convx.set_allow_winograd_4x4(allowed)
            assert convx.allow_winograd_4x4() is allowed
            with convx.record_algos() as log:
                F.conv2d(x, w, padding=1).sum().backward()
            assert log == [f"{op}:{algo}" for op, algo in zip(ops, algos)]
        with pytest.raises(TypeError, match="allowed must be a bool, got 1"):
            convx.set_allow_winograd_4x4(1)
    finally:
        convx.set_allow_winograd_4x4(True)


@pytest.mark.parametrize("algo, kernels", [("winograd_4x4", "3x3"), ("winograd_2x2", "3x3 or 5x5")])
@pytest.mark.parametrize("kwargs", [dict(R=7, S=7), dict(R=3, S=5), dict(R=5, S=3), dict(stride=2), dict(groups=2)])
def test_winograd_refuses_other_layers(kwargs, algo, kernels):
    p = _conv_params(1, 4, 9, 9, 4, (1, 1, 1, 1), **kwargs)
    x = np.zeros((1, 4, 9, 9), np.float32)
    w = np.zeros((4, 4 // p.groups, p.R, p.S), np.float32)
    y = np.empty((1, 4, p.out_h(), p.out_w()), np.float32)
    with pytest.raises(ValueError, match=f"algo='{algo}' needs a {kernels} kernel"):
        _C.conv2d_forward(p, x, w, None, y, algo)


def test_winograd_4x4_refuses_5x5_kernels():
    p = _conv_params(1, 4, 9, 9, 4, (1, 1, 1, 1), R=5, S=5)
    x, w = np.zeros((1, 4, 9, 9), np.float32), np.zeros((4, 4, 5, 5), np.float32)
    y = np.empty((1, 4, p.out_h(), p.out_w()), np.float32)
    with pytest.raises(ValueError, match="algo='winograd_4x4' needs a 3x3 kernel with stride 1"):
        _C.conv2d_forward(p, x, w, None, y, "winograd_4x4")


WINOGRAD_5X5_LAYERS = [
    # (N, C, H, W, K, (top, bottom, left, right)) for F(2x2, 5x5)
    (1, 48, 19, 19, 64, (2, 2, 2, 2)),   # AlphaGo's input layer, fewer filters
    (2, 3, 9, 14, 5, (4, 1, 0, 3)),      # asymmetric padding, odd sizes
    (1, 16, 7, 6, 8, (5, 5, 1, 1)),      # padding > 4: negative padding in backward-data
    (3, 20, 12, 12, 24, (0, 0, 0, 0)),   # a LeNet-like layer
    (1, 8, 60, 2, 8, (2, 2, 2, 2)),      # tall and narrow: an image's padded rows copied in several runs
]


@pytest.mark.parametrize("layer", WINOGRAD_5X5_LAYERS, ids=[str(c[:5]) for c in WINOGRAD_5X5_LAYERS])
def test_winograd_5x5_against_float64_reference(layer):
    # F(2x2, 5x5) in all three directions: exact up to rounding in float64, and in
    # float32 within 10x the float32 GEMM's error on the same layer (2-6x measured
    # on wide layers), or 1e-5 where few channels leave the GEMM's error tiny (the
    # transforms' own rounding: 1.7e-6 on 3 channels); the suite asks for 1e-4.
    N, C, H, W, K, pads = layer
    p = _conv_params(N, C, H, W, K, pads, R=5, S=5)
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((K, C, 5, 5))
    b, gy = rng.standard_normal(K), rng.standard_normal((N, K, p.out_h(), p.out_w()))

    def run(dtype, algo):
        y, gx, gw = (np.empty(s, dtype) for s in ((N, K, p.out_h(), p.out_w()), (N, C, H, W), (K, C, 5, 5)))
        xd, wd, bd, gyd = (a.astype(dtype) for a in (x, w, b, gy))
        assert _C.conv2d_forward(p, xd, wd, bd, y, algo) == algo
        assert _C.conv2d_backward_data(p, gyd, wd, gx, algo) == algo
        assert _C.conv2d_backward_weight(p, gyd, xd, gw, algo) == algo
        return y, gx, gw

    refs, gemm = run(np.float64, "direct"), run(np.float32, "im2col")
    for out, ref, g in zip(run(np.float64, "winograd_2x2"), refs, gemm):
        assert _rel_err(out, ref) <= 1e-12
    for out, ref, g in zip(run(np.float32, "winograd_2x2"), refs, gemm):
        assert _rel_err(out, ref) <= max(10 * _rel_err(g, ref), 1e-5)


@pytest.mark.parametrize("layer", WINOGRAD_LAYERS, ids=[str(c[:5]) for c in WINOGRAD_LAYERS])
def test_winograd_weight_gradient_against_float64_reference(layer):
    N, C, H, W, K, pads = layer
    p = _conv_params(N, C, H, W, K, pads)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, C, H, W))
    gy = rng.standard_normal((N, K, p.out_h(), p.out_w()))
    ref = np.empty((K, C, 3, 3))
    _C.conv2d_backward_weight(p, gy, x, ref, "direct")
    gemm = np.empty((K, C, 3, 3), np.float32)
    _C.conv2d_backward_weight(p, gy.astype(np.float32), x.astype(np.float32), gemm, "im2col")
    for dtype in (np.float64, np.float32):
        gw = np.empty((K, C, 3, 3), dtype)
        # F(3x3, 4x4) for winograd_4x4, F(3x3, 2x2) for winograd_2x2
        for algo, factor in (("winograd_2x2", 4), ("winograd_4x4", 6)):
            assert _C.conv2d_backward_weight(p, gy.astype(dtype), x.astype(dtype), gw, algo) == algo
            if dtype == np.float64:
                assert _rel_err(gw, ref) <= 1e-12
            else:  # within a small factor of a float32 GEMM's error (F(3x3, 4x4): 1.3-2.7x measured)
                assert _rel_err(gw, ref) <= max(factor * _rel_err(gemm, ref), 1e-6)


@pytest.mark.parametrize("algo", WINOGRAD_ALGOS)
def test_winograd_weight_gradient_over_several_blocks(algo):
    # 8 x 64 x 40 x 38 -> 64 is several blocks of tile rows for both tile sizes
    # (each block's products add onto the last; F(4x4)'s last tile of each row
    # half outside the image); float64, so a dropped or doubled block shows.
    p = _conv_params(8, 64, 40, 38, 64, (1, 1, 1, 1))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((p.N, p.C, p.H, p.W))
    gy = rng.standard_normal((p.N, p.K, p.out_h(), p.out_w()))
    ref, gw = np.empty((p.K, p.C, 3, 3)), np.empty((p.K, p.C, 3, 3))
    _C.conv2d_backward_weight(p, gy, x, ref, "im2col")
    assert _C.conv2d_backward_weight(p, gy, x, gw, algo) == algo
    assert _rel_err(gw, ref) <= 1e-12


def test_dispatcher_takes_winograd_5x5_for_wide_layers():
    def algos(N, C, H, K, pad):
        p = _conv_params(N, C, H, H, K, (pad,) * 4, R=5, S=5)
        return [_C.conv2d_choose_algo(p, d) for d in ("forward", "backward_data", "backward_weight")]

    # AlphaGo's input layer: at batch 16 the backward-data would transform 192
    # channels of 1600 tiles for 48 outputs; at batch 1 (100 tiles) it pays
    assert algos(1, 48, 19, 192, 2) == ["winograd_2x2"] * 3
    assert algos(16, 48, 19, 192, 2) == ["winograd_2x2", "shifted", "winograd_2x2"]
    assert algos(2, 64, 14, 128, 2)[1] == "winograd_2x2"  # 98 tiles
    assert algos(4, 64, 14, 128, 2)[1] == "shifted"       # 196 tiles
    assert algos(8, 32, 28, 64, 2) == ["winograd_2x2", "shifted", "shifted"]  # 2048 pairs: the forward only
    assert algos(4, 96, 28, 96, 2) == ["winograd_2x2"] * 3
    assert algos(2, 32, 19, 32, 2) == ["shifted"] * 3  # 1024 pairs
    assert algos(64, 20, 12, 50, 0) == ["shifted"] * 3  # LeNet's second layer: too few input channels
    assert algos(8, 64, 28, 32, 2)[0] == "shifted"   # fewer filters than input channels
    assert algos(1, 48, 5, 192, 2) == ["shifted"] * 3   # 9 tiles of 2x2: too few


def test_dispatcher_takes_the_scatter_backward_data_where_an_image_fits_the_cache():
    def backward_data(N, C, H, K, R, stride, pad):
        p = _conv_params(N, C, H, H, K, (pad,) * 4, R=R, S=R, stride=stride)
        return _C.conv2d_choose_algo(p, "backward_data")

    assert backward_data(64, 1, 28, 20, 5, 1, 0) == "shifted"   # LeNet's first layer: 124 KB an image
    assert backward_data(64, 25, 13, 50, 3, 1, 0) == "shifted"  # the digits CNN's second layer
    assert backward_data(8, 3, 32, 64, 3, 1, 1) == "shifted"    # 3 -> 64 on 32x32: 410 KB an image
    assert backward_data(8, 3, 224, 64, 7, 2, 3) == "im2col"    # the 7x7 stem: 10.9 MB an image
    assert backward_data(1, 3, 224, 64, 3, 1, 1) == "im2col"    # 3 -> 64 on 224x224
    assert backward_data(8, 3, 32, 65, 3, 1, 1) == "im2col"     # 65 filters: the scatter's GEMM too wide


@pytest.mark.parametrize("C,K,H,R,stride,algo", [
    (64, 128, 56, 3, 2, "im2col"),   # ResNet's 3x3 stride-2 downsampling
    (256, 512, 14, 3, 2, "im2col"),
    (32, 64, 56, 5, 2, "shifted"),   # 5x5 at stride 2 keeps the pixel-major GEMM
    (48, 64, 19, 5, 1, "shifted"),   # and so does stride 1
])
def test_dispatcher_leaves_strided_3x3_backward_data_to_im2col(C, K, H, R, stride, algo):
    p = _conv_params(8, C, H, H, K, (R // 2,) * 4, R=R, S=R, stride=stride)
    assert _C.conv2d_choose_algo(p, "backward_data") == algo


def test_dispatcher_takes_winograd_4x4_from_16_tiles_on_wide_layers():
    def algos(N, C, H, K):
        p = _conv_params(N, C, H, H, K, (1,) * 4)
        return [_C.conv2d_choose_algo(p, d) for d in ("forward", "backward_data", "backward_weight")]

    f2, f4 = "winograd_2x2", "winograd_4x4"
    assert algos(1, 192, 19, 192) == [f4, f4, f2]  # AlphaGo's body at batch 1: 25 tiles
    assert algos(8, 512, 7, 512) == [f4, f4, f4]   # 32 tiles at 56% of F(2x2)'s products
    assert algos(2, 256, 14, 256) == [f4, f4, f2]  # 32 tiles at 73%: F(2x2) for the weight gradient
    assert algos(1, 128, 14, 128) == [f4, f4, f2]  # 49 2x2 tiles are enough for 16384 channel pairs
    assert algos(4, 128, 10, 128) == [f2, f2, f2]  # 36 tiles at 81%: too few for F(4x4)
    assert algos(16, 128, 10, 128) == [f4, f4, f4]  # 144 tiles at 81%
    assert algos(2, 512, 7, 512) == ["shifted", "shifted", f2]  # 8 tiles, 7x7 images
    assert algos(1, 64, 14, 64)[0] == "shifted"     # 49 2x2 tiles, 4096 channel pairs: too few


@pytest.fixture
def winograd_budgets():
    """Sets the Winograd workspace budgets (forward, weight gradient) for one test."""
    before = _C._winograd_set_budgets(0, 0)
    yield lambda forward, weight: _C._winograd_set_budgets(forward, weight)
    _C._winograd_set_budgets(*before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("budget_kib", [16, 96, 400])
@pytest.mark.parametrize("algo, R", [("winograd_4x4", 3), ("winograd_2x2", 3), ("winograd_2x2", 5)])
def test_winograd_cut_into_channel_slices_and_tile_blocks(winograd_budgets, algo, R, budget_kib, dtype):
    # Small budgets cut 16 -> 40 channels on 18x18 (2 images) into slices of 8-40
    # output channels (some uneven: 24 + 16, 16 + 16 + 8) and blocks of 1-3 tile
    # rows, with the slices outside the blocks (the input transform repeated) for
    # some and inside (the filter transform repeated) for others, in all three
    # directions. Every cut must give the uncut result.
    p = _conv_params(2, 16, 18, 18, 40, (R // 2,) * 4, R=R, S=R)
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((p.N, p.C, p.H, p.W)), rng.standard_normal((p.K, p.C, R, R))
    b, gy = rng.standard_normal(p.K), rng.standard_normal((p.N, p.K, p.out_h(), p.out_w()))
    refs = [np.empty((p.N, p.K, p.out_h(), p.out_w())), np.empty((p.N, p.C, p.H, p.W)), np.empty((p.K, p.C, R, R))]
    _C.conv2d_forward(p, x, w, b, refs[0], "direct")
    _C.conv2d_backward_data(p, gy, w, refs[1], "direct")
    _C.conv2d_backward_weight(p, gy, x, refs[2], "direct")
    winograd_budgets(budget_kib * 1024, budget_kib * 1024)
    outs = [np.empty(r.shape, dtype) for r in refs]
    xd, wd, bd, gyd = (a.astype(dtype) for a in (x, w, b, gy))
    assert _C.conv2d_forward(p, xd, wd, bd, outs[0], algo) == algo
    assert _C.conv2d_backward_data(p, gyd, wd, outs[1], algo) == algo
    assert _C.conv2d_backward_weight(p, gyd, xd, outs[2], algo) == algo
    for out, ref in zip(outs, refs):
        assert _rel_err(out, ref) <= (1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("direction", ["forward", "backward_weight"])
def test_winograd_workspace_stays_within_its_budget(direction):
    # 256 -> 256 channels at 19x19, batch 8: uncut, F(4x4)'s 36 transformed filter
    # matrices alone are 9.4 MB, or its products 9.4 MB, beside 7.4 MB of tiles.
    # The default budgets are 8 MiB (forward) and 12 MiB (weight gradient); the
    # per-thread transform scratch adds well under 0.5 MiB.
    convx.release_workspace()
    held_before = convx.workspace_bytes()  # buffers of threads outside this one's team, if any
    p = _conv_params(8, 256, 19, 19, 256, (1, 1, 1, 1))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((p.N, p.C, p.H, p.W)).astype(np.float32)
    w = rng.standard_normal((p.K, p.C, 3, 3)).astype(np.float32)
    if direction == "forward":
        y = np.empty((p.N, p.K, p.out_h(), p.out_w()), np.float32)
        assert _C.conv2d_forward(p, x, w, None, y, "winograd_4x4") == "winograd_4x4"
        budget = 8 * 2**20
    else:
        gw = np.empty((p.K, p.C, 3, 3), np.float32)
        assert _C.conv2d_backward_weight(p, x, x, gw, "winograd_4x4") == "winograd_4x4"
        budget = 12 * 2**20
    held = convx.workspace_bytes() - held_before
    convx.release_workspace()
    require_kept_workspace()
    assert 0 < held <= budget + 2**19


@pytest.mark.parametrize("algo", WINOGRAD_ALGOS)
def test_winograd_model_trains(algo):
    torch = pytest.importorskip("torch")
    import convx
    import convx.functional as F
    x = torch.randn(2, 16, 10, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 16, 3, 3, dtype=torch.float64, requires_grad=True)
    with convx.record_algos() as log:
        F.conv2d(x, w, padding=1, algo=algo).square().sum().backward()
    assert log == [f"conv2d_forward:{algo}", f"conv2d_backward_data:{algo}", f"conv2d_backward_weight:{algo}"]
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    torch.nn.functional.conv2d(x2, w2, padding=1).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda a, b: F.conv2d(a, b, padding=1, algo=algo),
                                    (x[:1, :, :6, :6].detach().requires_grad_(), w.detach().requires_grad_()))
    assert torch.autograd.gradgradcheck(lambda a, b: F.conv2d(a, b, padding=1, algo=algo),
                                        (x[:1, :4, :5, :5].detach().requires_grad_(),
                                         w[:2, :4].detach().requires_grad_()))


# ---- im2col + GEMM in column blocks ----------------------------------------------------

@pytest.mark.parametrize("N,C,H,W,K,groups,stride", [
    (2, 256, 17, 17, 8, 1, 1),   # CRS = 2304: 289 columns split into two blocks per image
    (2, 256, 23, 23, 8, 2, 1),   # two groups, each image in two blocks
    (3, 256, 35, 33, 4, 1, 2),   # strided, blocks ending mid-row
    (5, 20, 12, 12, 50, 1, 1),   # small images batched: several images per block
    (7, 6, 9, 9, 4, 2, 1),       # batched with groups
])
def test_im2col_blocks_match_direct(N, C, H, W, K, groups, stride):
    p = _conv_params(N, C, H, W, K, (1, 1, 1, 1), stride=stride, groups=groups)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C // groups, 3, 3))
    b = rng.standard_normal(K)
    gy = rng.standard_normal((N, K, p.out_h(), p.out_w()))
    results = {}
    for algo in ("direct", "im2col"):
        y, gx, gw = np.empty(gy.shape), np.empty(x.shape), np.empty(w.shape)
        _C.conv2d_forward(p, x, w, b, y, algo)
        _C.conv2d_backward_data(p, gy, w, gx, algo)
        _C.conv2d_backward_weight(p, gy, x, gw, algo)
        results[algo] = (y, gx, gw)
    for got, want in zip(results["im2col"], results["direct"]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


@pytest.mark.parametrize("N,C,H,W,K,groups", [
    (2, 512, 32, 32, 8, 1),    # 1024 columns per image, blocks of 512: read in place, the packed GEMM
    (2, 512, 32, 32, 2, 1),    # 2 x 512 entries: the dot products, in place
    (3, 512, 40, 40, 16, 2),   # two groups of 256 channels, 1600 columns per image
    (5, 512, 10, 10, 8, 1),    # 100 columns per image: small images still batched into blocks
])
def test_pointwise_weight_gradient_reads_the_image_in_place(N, C, H, W, K, groups):
    # A 1x1 layer's weight gradient with images as wide as a column block reads
    # them in place, image after image; smaller ones are batched (and copied).
    p = _conv_params(N, C, H, W, K, (0, 0, 0, 0), R=1, S=1, groups=groups)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, C, H, W))
    gy = rng.standard_normal((N, K, H, W))
    got, want = np.empty((K, C // groups, 1, 1)), np.empty((K, C // groups, 1, 1))
    assert _C.conv2d_backward_weight(p, gy, x, got, "im2col") == "im2col"
    _C.conv2d_backward_weight(p, gy, x, want, "direct")
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11 * np.abs(want).max())


@pytest.mark.parametrize("N,C,H,W,K", [
    (2, 256, 56, 56, 64),   # the suite's 1x1 layer: 64 x 3136 x 256 forward, 256 x 3136 x 64 backward-data
    (2, 64, 28, 28, 100),   # 100 filters: a last tile of 4 rows (the C++ micro-kernel)
    (1, 300, 7, 9, 20),     # 63 columns: one whole strip, then 15 columns packed; 300 channels: two KC blocks
])
def test_pointwise_forward_and_backward_data_read_the_image_in_place(N, C, H, W, K):
    # A 1x1 layer's forward and backward-data are one GEMM per image whose B (the
    # image, or the output gradient) the GEMM reads in place when A (the filters,
    # or their transpose) has at most 256 rows: forced on here, against the direct
    # kernels in float64.
    p = _conv_params(N, C, H, W, K, (0, 0, 0, 0), R=1, S=1)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C, 1, 1))
    gy = rng.standard_normal((N, K, H, W))
    want_y, want_gx = np.empty(gy.shape), np.empty(x.shape)
    _C.conv2d_forward(p, x, w, None, want_y, "direct")
    _C.conv2d_backward_data(p, gy, w, want_gx, "direct")
    before = _C._gemm_set_in_place_b(1)
    try:
        assert _C._gemm_reads_b_in_place(K, H * W, C, 4) and _C._gemm_reads_b_in_place(C, H * W, K, 4) == (C <= 256)
        y, gx = np.empty(gy.shape, np.float32), np.empty(x.shape, np.float32)
        f32 = lambda a: a.astype(np.float32)  # noqa: E731
        _C.conv2d_forward(p, f32(x), f32(w), None, y, "im2col")
        _C.conv2d_backward_data(p, f32(gy), f32(w), gx, "im2col")
    finally:
        _C._gemm_set_in_place_b(before)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-5 * np.sqrt(C) * np.abs(want_y).max())
    np.testing.assert_allclose(gx, want_gx, rtol=1e-4, atol=1e-5 * np.sqrt(K) * np.abs(want_gx).max())


def test_pointwise_weight_gradient_keeps_no_column_buffer():
    # 256 -> 64 channels at 56x56: the copied columns were a 2 MiB block; in place,
    # only the GEMM's packing buffers (about 0.1 MiB) remain.
    p = _conv_params(2, 256, 56, 56, 64, (0, 0, 0, 0), R=1, S=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((p.N, p.C, p.H, p.W)).astype(np.float32)
    gy = rng.standard_normal((p.N, p.K, p.H, p.W)).astype(np.float32)
    gw = np.empty((p.K, p.C, 1, 1), np.float32)
    held = kept_workspace_after(lambda: _C.conv2d_backward_weight(p, gy, x, gw, "im2col"))
    assert 0 < held <= 2**19


# ---- the shifted-plane GEMM ------------------------------------------------------------

def _three_directions(p, algo, x, w, b, gy):
    """(forward, backward-data, backward-weight) by `algo`; a direction it refuses is None."""
    results = []
    for run, shape in ((lambda out: _C.conv2d_forward(p, x, w, b, out, algo), gy.shape),
                       (lambda out: _C.conv2d_backward_data(p, gy, w, out, algo), x.shape),
                       (lambda out: _C.conv2d_backward_weight(p, gy, x, out, algo), w.shape)):
        out = np.empty(shape, x.dtype)
        try:
            ran = run(out)
        except ValueError as e:
            assert f"algo='{algo}' needs" in str(e)
            results.append(None)
            continue
        assert ran == algo
        results.append(out)
    return results


def _shifted_matches_direct_or_refuses(N, Cg, Kg, groups, H, W, R, S, stride, pads, dilation, seed):
    """Wherever the shifted form runs it gives the reference's answer (float64, so
    any index slip shows); where it does not apply it says so, for all three
    directions alike."""
    try:
        p = _conv_params(N, Cg * groups, H, W, Kg * groups, pads, R=R, S=S, stride=stride, dilation=dilation,
                         groups=groups)
    except ValueError:
        return  # the kernel does not fit in the padded image
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p.N, p.C, p.H, p.W))
    w = rng.standard_normal((p.K, Cg, R, S))
    b = rng.standard_normal(p.K)
    gy = rng.standard_normal((p.N, p.K, p.out_h(), p.out_w()))
    want = _three_directions(p, "direct", x, w, b, gy)
    got = _three_directions(p, "shifted", x, w, b, gy)
    for g, ref in zip(got, want):
        if g is not None:
            np.testing.assert_allclose(g, ref, rtol=1e-11, atol=1e-11 * max(1.0, np.abs(ref).max()))
    assert (got[0] is None) == (got[1] is None) == (got[2] is None)


@settings(max_examples=120, deadline=None)
@given(N=st.integers(1, 3), Cg=st.integers(1, 5), Kg=st.integers(1, 9), groups=st.integers(1, 2),
       H=st.integers(1, 17), W=st.integers(1, 23), R=st.integers(1, 5), S=st.integers(1, 5),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), pads=st.tuples(*[st.integers(0, 4)] * 4),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), seed=st.integers(0, 2**16))
def test_shifted_matches_direct_or_refuses(N, Cg, Kg, groups, H, W, R, S, stride, pads, dilation, seed):
    # Every stride, dilation, asymmetric padding and group count, on layers small
    # enough for the dot-product weight gradient and the scatter backward-data.
    _shifted_matches_direct_or_refuses(N, Cg, Kg, groups, H, W, R, S, stride, pads, dilation, seed)


def _forward_by_register_tiles(p, x, w, b, mode):
    """The float32 shifted forward with its register-tile path set to `mode` (seam)."""
    y = np.empty((p.N, p.K, p.out_h(), p.out_w()), np.float32)
    before = _C._shifted_set_register_tiles(mode)
    try:
        uses = _C._shifted_uses_register_tiles(p, 4)
        _C.conv2d_forward(p, x.astype(np.float32), w.astype(np.float32),
                          None if b is None else b.astype(np.float32), y, "shifted")
    finally:
        _C._shifted_set_register_tiles(before)
    return y, uses


@pytest.mark.skipif(_C.simd_level() != "avx512", reason="the register tiles are AVX-512 code")
@settings(max_examples=80, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 4), K=st.integers(1, 21), H=st.integers(3, 20), W=st.integers(6, 40),
       R=st.integers(1, 5), S=st.integers(1, 5), stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pads=st.tuples(*[st.integers(0, 3)] * 4), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_shifted_forward_by_register_tiles_matches_direct(N, C, K, H, W, R, S, stride, pads, dilation, bias, seed):
    # Forced on, the AVX-512 register tiles compute every shape the shifted form
    # takes: 8-row and 4-row strips (K up to 21: 8 + 8 + 5, and a last strip of 4
    # or fewer), output rows that a 16-lane vector crosses, strides, dilations and
    # asymmetric pads; against the direct kernel in float64.
    try:
        p = _conv_params(N, C, H, W, K, pads, R=R, S=S, stride=stride, dilation=dilation)
    except ValueError:
        return  # the kernel does not fit in the padded image
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p.N, p.C, p.H, p.W))
    w = rng.standard_normal((p.K, p.C, R, S))
    b = rng.standard_normal(p.K) if bias else None
    want = np.empty((p.N, p.K, p.out_h(), p.out_w()))
    _C.conv2d_forward(p, x, w, b, want, "direct")
    try:
        got, uses = _forward_by_register_tiles(p, x, w, b, 1)
    except ValueError as e:
        assert "algo='shifted' needs" in str(e)
        return  # the shifted form does not apply to this layer
    wq = -(-(p.W + p.pad_left + p.pad_right) // p.stride_w)  # the planes' width
    assert uses == (wq >= 6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6 * np.sqrt(C * R * S) * np.abs(want).max())


@pytest.mark.skipif(_C.simd_level() != "avx512", reason="the register tiles are AVX-512 code")
def test_register_tiles_rule():
    # Short reductions run by register tiles: LeNet's first layer (25 taps) and
    # the digits CNN's (9). So do layers of at most 64 filters over at most 600
    # taps with few dropped columns on small images: the digits CNN's second
    # layer (25 -> 50 3x3 on 13x13: 225 taps, 13 wide columns per 11 kept).
    lenet1 = _conv_params(64, 1, 28, 28, 20, (0, 0, 0, 0), R=5, S=5)
    digits1 = _conv_params(64, 1, 28, 28, 25, (1, 1, 1, 1))
    digits2 = _conv_params(64, 25, 13, 13, 50, (0, 0, 0, 0))
    at_limits = [
        _conv_params(8, 64, 13, 13, 64, (0, 0, 0, 0)),  # 64 filters, 576 taps
        _conv_params(8, 24, 20, 20, 32, (0, 0, 0, 0), R=5, S=5),  # 600 taps, 20 wide columns per 16 kept
    ]
    for p in [lenet1, digits1, digits2] + at_limits:
        assert _C._shifted_uses_register_tiles(p, 4)
    # The GEMM keeps: 192 filters (AlphaGo's input layer, also 1200 taps); 65
    # filters; 640 taps; LeNet's second layer (12 wide columns per 8 kept); a
    # 56x56 image (3248 wide columns) and the 7x7 stem; float64; groups.
    gemm = [
        _conv_params(1, 48, 19, 19, 192, (2, 2, 2, 2), R=5, S=5),
        _conv_params(64, 25, 13, 13, 65, (0, 0, 0, 0)),
        _conv_params(8, 64, 13, 13, 50, (0, 0, 0, 0), R=10, S=1),
        _conv_params(64, 20, 12, 12, 50, (0, 0, 0, 0), R=5, S=5),
        _conv_params(8, 64, 56, 56, 64, (1, 1, 1, 1)),
        _conv_params(8, 3, 224, 224, 64, (3, 3, 3, 3), R=7, S=7, stride=(2, 2)),
        _conv_params(2, 2, 28, 28, 4, (1, 1, 1, 1), groups=2),
    ]
    for p in gemm:
        assert not _C._shifted_uses_register_tiles(p, 4)
    assert not _C._shifted_uses_register_tiles(lenet1, 8)
    assert not _C._shifted_uses_register_tiles(digits2, 8)
    # The seam's "never" turns the path off; the answer does not change.
    rng = np.random.default_rng(7)
    x, w, b = rng.standard_normal((4, 1, 28, 28)), rng.standard_normal((20, 1, 5, 5)), rng.standard_normal(20)
    p = _conv_params(4, 1, 28, 28, 20, (0, 0, 0, 0), R=5, S=5)
    on, uses_on = _forward_by_register_tiles(p, x, w, b, -1)
    off, uses_off = _forward_by_register_tiles(p, x, w, b, 0)
    assert uses_on and not uses_off
    np.testing.assert_allclose(on, off, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(_C.simd_level() != "avx512", reason="the register tiles are AVX-512 code")
@pytest.mark.parametrize("N,C,H,W,K,R,pad,bias", [
    (2, 25, 13, 13, 50, 3, 0, True),   # the digits CNN's second layer: 225 taps, 8 + 8 + ... + 2 filters
    (1, 24, 20, 20, 32, 5, 0, False),  # 600 taps, the longest reduction the rule gives the tiles
    (3, 64, 13, 11, 64, 3, 1, True),   # 576 taps, 64 filters, padding
])
def test_register_tiles_over_long_reductions_match_direct(N, C, H, W, K, R, pad, bias):
    p = _conv_params(N, C, H, W, K, (pad,) * 4, R=R, S=R)
    rng = np.random.default_rng(C * K)
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((K, C, R, R))
    b = rng.standard_normal(K) if bias else None
    want = np.empty((p.N, p.K, p.out_h(), p.out_w()))
    _C.conv2d_forward(p, x, w, b, want, "direct")
    got, uses = _forward_by_register_tiles(p, x, w, b, -1)
    assert uses  # by the rule, not forced
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6 * np.sqrt(C * R * R) * np.abs(want).max())


@pytest.mark.skipif(_C.simd_level() != "avx512", reason="the register tiles are AVX-512 code")
def test_flipped_backward_data_by_register_tiles_matches_direct():
    # Backward-data of a 64-channel stride-1 layer is the forward of the flipped
    # filters (reverse_taps); forced on, the register tiles run it.
    p = _conv_params(2, 64, 9, 11, 5, (1, 1, 1, 1))
    rng = np.random.default_rng(8)
    w = rng.standard_normal((p.K, p.C, 3, 3))
    gy = rng.standard_normal((p.N, p.K, p.out_h(), p.out_w()))
    want = np.empty((p.N, p.C, p.H, p.W))
    _C.conv2d_backward_data(p, gy, w, want, "direct")
    got = np.empty(want.shape, np.float32)
    before = _C._shifted_set_register_tiles(1)
    try:
        _C.conv2d_backward_data(p, gy.astype(np.float32), w.astype(np.float32), got, "shifted")
    finally:
        _C._shifted_set_register_tiles(before)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", [
    (3, 40, 90, 90, 8, 3, 1, 1),   # 2+ MB per image: one image per chunk, three chunks summed
    (3, 64, 30, 30, 16, 3, 1, 1),  # 64 channels: backward-data as the flipped forward, not the scatter
    (5, 8, 60, 60, 8, 3, 2, 1),    # scatter backward-data of a strided layer, several chunks
    (2, 64, 12, 12, 32, 3, 1, 1),  # 32 x 576 gradient entries: the GEMM over pixel-major planes
    (3, 64, 40, 40, 32, 3, 1, 1),  # the same, one image per chunk: three GEMMs summed
    (1, 48, 19, 19, 64, 5, 1, 2),  # AlphaGo's input layer: backward-data over pixel-major planes
    (3, 48, 40, 40, 32, 5, 1, 2),  # the same, one image per chunk
    (2, 32, 21, 21, 16, 5, 2, 2),  # the same from phase planes (stride 2)
    (1, 48, 19, 19, 192, 5, 1, 2),  # AlphaGo's input layer with its 192 filters: W' in blocks of taps
    (5, 48, 5, 5, 192, 5, 1, 2),   # 25 pixels per image: rows of dY^T and blocks of col^T straddle images
    (2, 20, 9, 9, 300, 5, 1, 2),   # 300 filters: dY^T packed in two panels of the GEMM's reduction (256 + 44)
    (2, 3, 40, 40, 16, 7, 2, 3),   # a stem: four phase planes per channel
    (1, 3, 64, 64, 64, 7, 2, 3),   # a stem's forward in two chunks of wide columns, split inside an output row
    (2, 8, 30, 30, 128, 3, 1, 1),  # the in-place forward in two chunks (504 + 456 wide columns of float64)
    (4, 20, 12, 12, 50, 5, 1, 0),  # LeNet's second layer, unpadded: B gathered (dropped columns 50%)
    (2, 64, 7, 7, 32, 3, 1, 1),    # small images side by side in one gathered GEMM, both forwards
    (3, 30, 9, 9, 20, 3, 2, 1),    # gathered from phase planes
    (12, 64, 20, 20, 4, 5, 1, 0),  # gathered in three chunks of images
    (6, 25, 13, 13, 50, 3, 1, 0),  # the digits CNN's second layer: its weight gradient over pixel-major planes
])
def test_shifted_matches_direct_on_suite_like_layers(N, C, H, W, K, R, stride, pad):
    p = _conv_params(N, C, H, W, K, (pad,) * 4, R=R, S=R, stride=stride)
    rng = np.random.default_rng(4)
    args = (rng.standard_normal((N, C, H, W)), rng.standard_normal((K, C, R, R)), rng.standard_normal(K),
            rng.standard_normal((N, K, p.out_h(), p.out_w())))
    for got, want in zip(_three_directions(p, "shifted", *args), _three_directions(p, "direct", *args)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


def test_shifted_in_place_forward_in_chunks_of_each_group():
    # Two groups of 128 filters: each group's forward runs in two chunks of wide
    # columns (504 of 960 for float64), the second starting inside an output row.
    _shifted_matches_direct_or_refuses(2, 4, 128, 2, 30, 30, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 7)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 3), Cg=st.integers(40, 72), Kg=st.integers(48, 64), groups=st.integers(1, 2),
       H=st.integers(2, 14), W=st.integers(2, 14), R=st.integers(3, 4), S=st.integers(3, 4),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), pads=st.tuples(*[st.integers(0, 3)] * 4),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), seed=st.integers(0, 2**16))
def test_shifted_pixel_major_forms_match_direct(N, Cg, Kg, groups, H, W, R, S, stride, pads, dilation, seed):
    # The GEMMs over pixel-major planes, with their own offsets for every stride,
    # dilation, padding and group: the weight gradient above 10000 entries per group
    # (here 48 x 40 x 9 at least), and backward-data with 16+ channels and 400+ taps
    # where the flipped forward does not apply (any stride but 1, or pads past the
    # filter's reach; with 64+ channels and stride 1 the flipped forward runs).
    _shifted_matches_direct_or_refuses(N, Cg, Kg, groups, H, W, R, S, stride, pads, dilation, seed)


@pytest.mark.parametrize("K,C,R,dot_products", [
    (64, 3, 7, True),    # the 7x7 stem, 64 x 147 entries: 0.95-0.97x torch as dot products, 0.68x as the GEMM
    (50, 25, 3, False),  # the digits CNN's second layer, 50 x 225: 0.84-0.91x as dot products, 1.09-1.15x as the GEMM
    (100, 100, 1, True),  # 10000 entries, the last count on dot products
    (10001, 1, 1, False),
])
def test_shifted_weight_gradient_form_follows_the_measured_cutoff(K, C, R, dot_products):
    # The weight gradient's two forms (dot products over whole chunks of images, or
    # the packed GEMM over pixel-major planes) swap at 10000 entries per group, where
    # the measurements in the comment of gemm_abt_uses_dot_products put the crossing.
    assert _C._gemm_abt_uses_dot_products(K, C * R * R) is dot_products


@pytest.mark.parametrize("direction", ["forward", "backward_data", "backward_weight"])
@pytest.mark.parametrize("N,C,H,K", [(64, 1, 28, 20), (64, 20, 12, 50)])  # LeNet's two layers
def test_shifted_workspace_stays_near_its_chunk(direction, N, C, H, K):
    # Images go through in chunks of about 1 MiB of buffers; with the filters'
    # packed copies and the GEMM's packing, a LeNet layer keeps at most 1.25 MiB
    # (with 4 MiB chunks, five of these six cases kept 1.5-4.1 MB).
    p = _conv_params(N, C, H, H, K, (0, 0, 0, 0), R=5, S=5)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((p.N, p.C, p.H, p.W)).astype(np.float32)
    w = rng.standard_normal((p.K, p.C, 5, 5)).astype(np.float32)
    gy = rng.standard_normal((p.N, p.K, p.out_h(), p.out_w())).astype(np.float32)
    run = {
        "forward": lambda: _C.conv2d_forward(p, x, w, None, np.empty(gy.shape, np.float32), "shifted"),
        "backward_data": lambda: _C.conv2d_backward_data(p, gy, w, np.empty(x.shape, np.float32), "shifted"),
        "backward_weight": lambda: _C.conv2d_backward_weight(p, gy, x, np.empty(w.shape, np.float32), "shifted"),
    }[direction]
    assert 0 < kept_workspace_after(run) <= 1.25 * 2**20


def test_shifted_pixel_major_weight_gradient_keeps_no_copy_of_the_gradient():
    # AlphaGo's 48 -> 192 5x5 input layer at batch 1: the gradient accumulates in
    # the output itself and dY is read in place; what is kept is the image's
    # pixel-major planes and a copy of a few filters (0.25 MiB; a whole copy of
    # the gradient and of dY made it 1.3 MiB).
    p = _conv_params(1, 48, 19, 19, 192, (2, 2, 2, 2), R=5, S=5)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((p.N, p.C, p.H, p.W)).astype(np.float32)
    gy = rng.standard_normal((p.N, p.K, p.out_h(), p.out_w())).astype(np.float32)
    gw = np.empty((p.K, p.C, 5, 5), np.float32)
    assert 0 < kept_workspace_after(lambda: _C.conv2d_backward_weight(p, gy, x, gw, "shifted")) <= 2**19


def test_shifted_pixel_major_backward_data_keeps_blocks_of_its_operands():
    # AlphaGo's input layer at batch 1: W' (the filters in tap-major order) and
    # col^T are made a block at a time, dY^T packed a block of rows at a time; what
    # is kept is about 1 MiB (whole, with the GEMM's own copy of W', 4.0 MiB).
    p = _conv_params(1, 48, 19, 19, 192, (2, 2, 2, 2), R=5, S=5)
    rng = np.random.default_rng(7)
    w = rng.standard_normal((p.K, p.C, 5, 5)).astype(np.float32)
    gy = rng.standard_normal((p.N, p.K, p.out_h(), p.out_w())).astype(np.float32)
    gx = np.empty((p.N, p.C, p.H, p.W), np.float32)
    assert 0 < kept_workspace_after(lambda: _C.conv2d_backward_data(p, gy, w, gx, "shifted")) <= 1.25 * 2**20


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_shifted_pixel_major_backward_data_keeps_non_finite_weight_to_its_pixels(value):
    # No fallback either: a bad weight spoils the input pixels it reaches, as in
    # the direct loops, and no others.
    p = _conv_params(2, 32, 9, 9, 8, (0, 0, 0, 0), R=5, S=5)
    rng = np.random.default_rng(8)
    w = rng.standard_normal((8, 32, 5, 5))
    w[3, 7, 0, 4] = value  # tap (0, 4): reaches columns 4.. of rows ..4 of channel 7
    gy = rng.standard_normal((2, 8, 5, 5))
    got, want = np.empty((2, 32, 9, 9)), np.empty((2, 32, 9, 9))
    assert _C.conv2d_backward_data(p, gy, w, got, "shifted") == "shifted"
    _C.conv2d_backward_data(p, gy, w, want, "direct")
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11 * np.abs(want[np.isfinite(want)]).max(),
                               equal_nan=True)
    assert np.isfinite(np.delete(got, 7, axis=1)).all() and np.isfinite(got[:, 7, :, :4]).all()
    assert not np.isfinite(got[:, 7, :5, 4:]).any()


@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", [
    (2, 3, 32, 32, 8, 7, 2, 3),       # a 7x7 stride-2 stem: 16 output columns, one vector (float)
    (64, 1, 16, 16, 6, 3, 1, 1),      # small images: 64 to a chunk, one segment per image row
    (5, 4, 128, 128, 5, 3, 1, 1),     # 128 columns; float: 3 images to a chunk, chunks of 3 and 2
    (2, 2, 20, 35, 3, 5, 1, 2),       # 35 columns: whole vectors in neither dtype, dY laid out wide
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shifted_weight_gradient_reads_output_rows_of_whole_vectors_in_place(N, C, H, W, K, R, stride, pad, dtype):
    # Output rows of whole vectors (16 floats, 8 doubles) let the dot-product
    # weight gradient read dY where it lies, segment by output row; other widths
    # lay dY out wide. Both against the direct kernel in float64.
    p = _conv_params(N, C, H, W, K, (pad,) * 4, R=R, S=R, stride=stride)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((N, C, H, W))
    gy = rng.standard_normal((N, K, p.out_h(), p.out_w()))
    want = np.empty((K, C, R, R))
    _C.conv2d_backward_weight(p, gy, x, want, "direct")
    got = np.empty((K, C, R, R), dtype)
    assert _C.conv2d_backward_weight(p, gy.astype(dtype), x.astype(dtype), got, "shifted") == "shifted"
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("C,K,W,channel", [
    (64, 32, 9, 5),  # 32 x 576 outputs: the pixel-major GEMM
    (3, 4, 18, 2),   # 16 output columns: the dot products with dY read in place
])
def test_shifted_weight_gradient_keeps_non_finite_input_to_its_taps(C, K, W, channel, value):
    # The pixel-major form and the dot products over dY in place compute only the
    # direct convolution's products, so they need no fallback: a bad pixel spoils
    # exactly the taps that see it.
    p = _conv_params(2, C, 8, W, K, (0, 0, 0, 0))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, C, 8, W))
    x[1, channel, 4, W - 1] = value  # the last column: seen by the right-hand taps only
    gy = rng.standard_normal((2, K, 6, W - 2))
    got, want = np.empty((K, C, 3, 3)), np.empty((K, C, 3, 3))
    assert _C.conv2d_backward_weight(p, gy, x, got, "shifted") == "shifted"
    _C.conv2d_backward_weight(p, gy, x, want, "direct")
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11 * np.abs(want[np.isfinite(want)]).max(),
                               equal_nan=True)
    assert np.isfinite(np.delete(got, channel, axis=1)).all() and np.isfinite(got[:, channel, :, :2]).all()
    assert not np.isfinite(got[:, channel, :, 2]).all()


@pytest.mark.parametrize("N,C,H,K,R", [
    (3, 64, 30, 16, 3),  # the filters packed once for in-place B
    (2, 96, 7, 40, 3),   # and per strip for a gathered B (small images)
    (2, 64, 12, 24, 2),  # 4 taps: several segments in one vector
    (2, 64, 12, 24, 5),  # 25 taps: longer than a vector
    (2, 48, 11, 40, 5),  # pixel-major backward-data: runs of 48 channels, three whole vectors
    (2, 23, 9, 40, 5),   # runs of 23: a 16-float vector, a 4-float one and three single adds
])
def test_shifted_gradients_in_float32(N, C, H, K, R):
    # Paths that depend on the vector width, which is 16 floats but 8 doubles, so
    # the float64 tests above do not reach them: the flipped forward reads the
    # weight as its transposed filters, segment by segment of R*S taps, loading
    # segments shorter than a vector as whole vectors; the pixel-major weight
    # gradient reads B in place when the channels fill whole vectors (64 and 96);
    # the pixel-major backward-data adds each run of channels by 16, 4 and 1.
    pad = (R - 1) // 2
    p = _conv_params(N, C, H, H, K, (pad, R - 1 - pad, pad, R - 1 - pad), R=R, S=R)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = rng.standard_normal((K, C, R, R)).astype(np.float32)
    gy = rng.standard_normal((N, K, p.out_h(), p.out_w())).astype(np.float32)
    for got, want in zip(_three_directions(p, "shifted", x, w, None, gy)[1:],
                         _three_directions(p, "direct", x, w, None, gy)[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_shifted_refuses_padding_that_dominates_the_image():
    p = _conv_params(1, 1, 2, 2, 1, (40, 40, 40, 40), R=1, S=1)
    with pytest.raises(ValueError, match=r"algo='shifted' needs padding .* got input 2x2, kernel 1x1"):
        _C.conv2d_forward(p, np.ones((1, 1, 2, 2)), np.ones((1, 1, 1, 1)), None, np.empty((1, 1, 82, 82)), "shifted")


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_shifted_scatter_backward_data_falls_back_on_non_finite_weight(value):
    # The scatter adds the dropped columns' products (W^T times zeros) into
    # neighbouring pixels: with an inf in W those would be NaN.
    p = _conv_params(2, 3, 8, 9, 4, (0, 0, 0, 0))
    rng = np.random.default_rng(6)
    w = rng.standard_normal((4, 3, 3, 3))
    w[2, 1, 0, 2] = value
    gy = rng.standard_normal((2, 4, 6, 7))
    got, want = np.empty((2, 3, 8, 9)), np.empty((2, 3, 8, 9))
    assert _C.conv2d_backward_data(p, gy, w, got, "shifted") == "im2col"
    _C.conv2d_backward_data(p, gy, w, want, "direct")
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)
    assert np.isfinite(got[:, 0]).all() and not np.isfinite(got[:, 1]).all()


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_shifted_weight_gradient_falls_back_on_non_finite_input(value):
    # The dot-product form of the shifted weight gradient multiplies the pixels of the dropped columns by
    # zeros; 0 * inf = NaN would spoil taps that never see the bad pixel. The last
    # column of an unpadded 3x3 layer is only seen by the right-hand taps.
    p = _conv_params(2, 3, 8, 9, 4, (0, 0, 0, 0))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 8, 9))
    x[1, 2, 4, 8] = value
    gy = rng.standard_normal((2, 4, 6, 7))
    got, want = np.empty((4, 3, 3, 3)), np.empty((4, 3, 3, 3))
    assert _C.conv2d_backward_weight(p, gy, x, got, "shifted") == "im2col"
    _C.conv2d_backward_weight(p, gy, x, want, "direct")
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)
    assert np.isfinite(got[:, :, :, :2]).all() and not np.isfinite(got[:, 2, :, 2]).all()


# ---- depthwise: each plane a sum of shifted copies of itself ---------------------------

def _depthwise_params(N, C, m, H, W, R, S, stride, pads, dilation):
    return _conv_params(N, C, H, W, C * m, pads, R=R, S=S, stride=stride, dilation=dilation, groups=C)


def _depthwise_operands(p, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p.N, p.C, p.H, p.W)).astype(dtype)
    w = rng.standard_normal((p.K, 1, p.R, p.S)).astype(dtype)
    b = rng.standard_normal(p.K).astype(dtype)
    gy = rng.standard_normal((p.N, p.K, p.out_h(), p.out_w())).astype(dtype)
    return x, w, b, gy


@settings(max_examples=150, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 5), m=st.integers(1, 4), H=st.integers(1, 19), W=st.integers(1, 37),
       R=st.integers(1, 5), S=st.integers(1, 5), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pads=st.tuples(*[st.integers(0, 4)] * 4), dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       seed=st.integers(0, 2**16))
def test_depthwise_matches_direct(N, C, m, H, W, R, S, stride, pads, dilation, seed):
    # Every stride (its phase planes), dilation, asymmetric padding and number of
    # filters per channel, in float64 so that any index slip shows; planes from
    # 1x1 to wider than a block of outputs (64 floats).
    try:
        p = _depthwise_params(N, C, m, H, W, R, S, stride, pads, dilation)
    except ValueError:
        return  # the kernel does not fit in the padded image
    x, w, b, gy = _depthwise_operands(p, np.float64, seed)
    want = _three_directions(p, "direct", x, w, b, gy)
    got = _three_directions(p, "depthwise", x, w, b, gy)
    for g, ref in zip(got, want):
        if g is not None:
            np.testing.assert_allclose(g, ref, rtol=1e-11, atol=1e-11 * max(1.0, np.abs(ref).max()))
    # where its planes would be mostly padding, or unread, it refuses all three
    assert (got[0] is None) == (got[1] is None) == (got[2] is None) == (not conv2d_depthwise_planes_apply(p))


@pytest.mark.parametrize("N,C,m,H,W,R,stride,pad", [
    (2, 8, 1, 56, 56, 3, 1, 1),    # MobileNet's 3x3: 56 columns, 3.5 vectors a row
    (2, 4, 1, 28, 28, 3, 2, 1),    # its stride-2 layers: four phase planes
    (1, 3, 2, 30, 17, 5, 1, 2),    # 5x5, two filters per channel
    (3, 2, 1, 112, 9, 7, 2, 3),    # planes taller than wide
])
def test_depthwise_float32_close_to_float64_reference(N, C, m, H, W, R, stride, pad):
    p = _depthwise_params(N, C, m, H, W, R, R, stride, (pad,) * 4, (1, 1))
    x, w, b, gy = _depthwise_operands(p, np.float64, 3)
    want = _three_directions(p, "direct", x, w, b, gy)
    got = _three_directions(p, "depthwise", *(a.astype(np.float32) for a in (x, w, b, gy)))
    for g, ref in zip(got, want):
        assert _rel_err(g, ref) <= 1e-5


def conv2d_depthwise_planes_apply(p):
    # the shifted form's condition on its padded planes (planes_are_sensible)
    padded = (p.H + p.pad_top + p.pad_bottom) * (p.W + p.pad_left + p.pad_right)
    return (padded <= 4 * p.H * p.W + 4096 and p.stride_h <= (p.R - 1) * p.dilation_h + 1
            and p.stride_w <= (p.S - 1) * p.dilation_w + 1)


def test_depthwise_refuses_planes_of_padding():
    # 2**40 of padding around a 2x2 image: planes of padding alone, never built
    p = _depthwise_params(1, 3, 1, 2, 2, 1, 1, 2**40, (2**40,) * 4, (1, 1))
    x, w, b, gy = _depthwise_operands(p, np.float32, 0)
    with pytest.raises(ValueError, match=r"algo='depthwise' needs padding .* got input 2x2, kernel 1x1"):
        _C.conv2d_forward(p, x, w, b, np.empty_like(gy), "depthwise")
    assert _C.conv2d_choose_algo(p, "forward") != "depthwise"


def test_depthwise_refuses_layers_with_several_channels_per_group():
    p = _conv_params(1, 4, 6, 6, 4, (1, 1, 1, 1), groups=2)
    x, w, gy = np.zeros((1, 4, 6, 6)), np.zeros((4, 2, 3, 3)), np.zeros((1, 4, 6, 6))
    message = r"algo='depthwise' needs one input channel per group \(groups == in_channels\), got 4 input " \
              r"channels in 2 group\(s\)"
    for call in (lambda: _C.conv2d_forward(p, x, w, None, np.empty_like(gy), "depthwise"),
                 lambda: _C.conv2d_backward_data(p, gy, w, np.empty_like(x), "depthwise"),
                 lambda: _C.conv2d_backward_weight(p, gy, x, np.empty_like(w), "depthwise")):
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_depthwise_hands_non_finite_operands_to_im2col(value):
    # Backward-data multiplies every weight by the zeros around dY, and the
    # weight gradient every pixel by the zeros of dY's dropped columns: with a
    # weight (or pixel) that is not finite, those products would be NaN where
    # the true gradient has none, so those passes give way to im2col. The
    # forward's extra products are those of the padding, as im2col's.
    p = _depthwise_params(2, 3, 1, 9, 10, 3, 3, 1, (1, 1, 1, 1), (1, 1))
    x, w, b, gy = _depthwise_operands(p, np.float64, 5)
    w[1, 0, 0, 2], x[0, 2, 4, 4] = value, value
    for run, shape in ((lambda out, a: _C.conv2d_backward_data(p, gy, w, out, a), x.shape),
                       (lambda out, a: _C.conv2d_backward_weight(p, gy, x, out, a), w.shape)):
        got, want = np.empty(shape), np.empty(shape)
        assert run(got, "depthwise") == "im2col"
        run(want, "im2col")
        np.testing.assert_array_equal(got, want)
    x[0, 2, 4, 4] = 1.0  # finite again: the weight gradient keeps its own form
    assert _C.conv2d_backward_weight(p, gy, x, np.empty(w.shape), "depthwise") == "depthwise"


@pytest.mark.parametrize("C,K,groups,H,directions", [
    (128, 128, 128, 56, ("forward", "backward_data", "backward_weight")),  # MobileNet's depthwise 3x3
    (16, 64, 16, 56, ("forward", "backward_data", "backward_weight")),     # four filters per channel
    (16, 128, 16, 56, ("forward", "backward_data")),                       # eight: not the weight gradient
    (1, 20, 1, 28, ()),                                                    # LeNet's first layer: 20 filters
    (4, 4, 2, 12, ()),                                                     # two channels per group
])
def test_dispatcher_takes_depthwise_for_one_channel_per_group(C, K, groups, H, directions):
    p = _conv_params(8, C, H, H, K, (1, 1, 1, 1), groups=groups)
    for direction in ("forward", "backward_data", "backward_weight"):
        assert (_C.conv2d_choose_algo(p, direction) == "depthwise") == (direction in directions), direction


@pytest.mark.parametrize("N,C,H,K", [
    (3, 40, 5, 30),    # 1200 entries on 5x5 images: the packed GEMM, image by image in place
    (2, 8, 6, 16),     # 128 entries: dot products over blocks of whole images
    (2, 64, 56, 12),   # images larger than a column block
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointwise_weight_gradient_matches_direct(N, C, H, K, dtype):
    p = _conv_params(N, C, H, H, K, (0, 0, 0, 0), R=1, S=1)
    rng = np.random.default_rng(C * K)
    x, gy = rng.standard_normal((N, C, H, H)), rng.standard_normal((N, K, H, H))
    want = np.empty((K, C, 1, 1))
    _C.conv2d_backward_weight(p, gy, x, want, "direct")
    got = np.empty((K, C, 1, 1), dtype)
    assert _C.conv2d_backward_weight(p, gy.astype(dtype), x.astype(dtype), got, "im2col") == "im2col"
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
