"""Scratch buffers kept between calls: held after a call, given back on request,
and results unchanged whether a call finds them cold, warm, or too small."""
import numpy as np
import pytest

import convx
from convx import _C

from test_extremes import run_child
from test_fast_paths import kept_workspace_after


def test_workspace_is_kept_and_released():
    out = run_child("""
        import numpy as np, convx
        from convx import _C, functional as F
        assert convx.workspace_bytes() == 0
        x = np.random.default_rng(0).standard_normal((4, 32, 20, 20)).astype(np.float32)
        w = np.random.default_rng(1).standard_normal((32, 32, 3, 3)).astype(np.float32)
        F.conv2d(x, w, padding=1)                       # Winograd: tiles and filters kept
        if not _C.workspace_keeps_blocks():
            print("not kept")
            raise SystemExit
        held = convx.workspace_bytes()
        assert held > 100_000, held
        F.conv2d(x, w, padding=1)
        assert convx.workspace_bytes() == held          # reused, not grown
        convx.release_workspace()
        assert convx.workspace_bytes() == 0
        print("ok")
    """)
    if out.strip() == "not kept":
        pytest.skip("sanitizer build: every scratch buffer is its own, nothing is kept to measure")
    assert out.strip() == "ok"


@pytest.mark.parametrize("algo", ["im2col", "shifted", "winograd_2x2"])
def test_results_do_not_depend_on_what_the_workspace_held(algo):
    # Small, then large (the kept buffers grow), then small again (they are reused
    # larger than needed, holding the large call's values): always the reference.
    rng = np.random.default_rng(3)
    for N, H in ((1, 6), (3, 23), (1, 6)):
        p = _C.Conv2dParams()
        p.N, p.C, p.H, p.W, p.K, p.R, p.S = N, 16, H, H, 16, 3, 3
        p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1
        p.validate()
        x, w = rng.standard_normal((N, 16, H, H)), rng.standard_normal((16, 16, 3, 3))
        gy = rng.standard_normal((N, 16, H, H))
        calls = ((_C.conv2d_forward, (p, x, w, None), gy.shape),
                 (_C.conv2d_backward_data, (p, gy, w), x.shape),
                 (_C.conv2d_backward_weight, (p, gy, x), w.shape))
        for kernel, args, shape in calls:
            got, want = np.full(shape, np.nan), np.empty(shape)
            kernel(*args, got, algo)
            kernel(*args, want, "direct")
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    convx.release_workspace()


def _conv_params(N, C, H, K):
    """A 3x3, padding-1 layer on H x H images."""
    return _C.Conv2dParams(N, C, H, H, K, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)


def _fill_workspace_with_nan():
    # All-NaN calls of a larger layer, every algorithm and direction: NaN in every
    # kept buffer they use.
    big = _conv_params(2, 32, 56, 32)
    nan_x, nan_w, nan_gy = (np.full(s, np.nan, np.float32)
                            for s in ((2, 32, 56, 56), (32, 32, 3, 3), (2, 32, 56, 56)))
    for algo in ("im2col", "shifted", "winograd_2x2"):
        _C.conv2d_forward(big, nan_x, nan_w, None, np.empty_like(nan_gy), algo)
        _C.conv2d_backward_data(big, nan_gy, nan_w, np.empty_like(nan_x), algo)
        _C.conv2d_backward_weight(big, nan_gy, nan_x, np.empty_like(nan_w), algo)


@pytest.mark.parametrize("algo", ["im2col", "shifted", "winograd_2x2"])
@pytest.mark.parametrize("direction", ["forward", "backward_data", "backward_weight"])
def test_nan_left_in_the_workspace_does_not_reach_results(algo, direction):
    # A finite call after the NaN ones must not read any of it, not even where it
    # multiplies by zero (0 * NaN is NaN). 32x32 padded to 34x34 makes shifted
    # planes of 1156 elements, rounded up to 1168: the 12 between are never part
    # of the image.
    rng = np.random.default_rng(4)
    p = _conv_params(2, 16, 32, 16)
    x = rng.standard_normal((2, 16, 32, 32)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 16, 32, 32)).astype(np.float32)
    kernel, args, shape = {
        "forward": (_C.conv2d_forward, (p, x, w, None), gy.shape),
        "backward_data": (_C.conv2d_backward_data, (p, gy, w), x.shape),
        "backward_weight": (_C.conv2d_backward_weight, (p, gy, x), w.shape),
    }[direction]
    want = np.empty(shape, np.float32)
    kernel(*args, want, "direct")
    _fill_workspace_with_nan()
    got = np.empty(shape, np.float32)
    kernel(*args, got, algo)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    convx.release_workspace()


def test_layers_in_turn_keep_the_largest_calls_workspace():
    # Two layers whose buffers differ in kind: Winograd's transformed filters (128
    # channels in and out, few tiles) and im2col's column block (8 channels at
    # 128x128). The thread keeps one block, as large as the most either call
    # needed at once (3.4 MB), not one buffer per kind sized for the larger user
    # of each (which kept 4.6 MB here).
    rng = np.random.default_rng(5)
    a = _conv_params(1, 128, 12, 128)
    b = _conv_params(1, 8, 128, 8)
    calls = []
    for p, algo in ((a, "winograd_4x4"), (b, "im2col")):
        x = rng.standard_normal((p.N, p.C, p.H, p.W)).astype(np.float32)
        w = rng.standard_normal((p.K, p.C, 3, 3)).astype(np.float32)
        y = np.empty((p.N, p.K, p.out_h(), p.out_w()), np.float32)
        calls.append(lambda p=p, x=x, w=w, y=y, algo=algo: _C.conv2d_forward(p, x, w, None, y, algo))
    each = [kept_workspace_after(run) for run in calls]
    both = kept_workspace_after(*calls)
    assert min(each) > 1_500_000, each  # both layers need a sizeable workspace
    assert both <= max(each), (both, each)
