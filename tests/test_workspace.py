"""Scratch buffers kept between calls: held after a call, given back on request,
and results unchanged whether a call finds them cold, warm, or too small."""
import numpy as np
import pytest

import convx
from convx import _C

from test_extremes import run_child


def test_workspace_is_kept_and_released():
    out = run_child("""
        import numpy as np, convx
        from convx import functional as F
        assert convx.workspace_bytes() == 0
        x = np.random.default_rng(0).standard_normal((4, 32, 20, 20)).astype(np.float32)
        w = np.random.default_rng(1).standard_normal((32, 32, 3, 3)).astype(np.float32)
        F.conv2d(x, w, padding=1)                       # Winograd: tiles and filters kept
        held = convx.workspace_bytes()
        assert held > 100_000, held
        F.conv2d(x, w, padding=1)
        assert convx.workspace_bytes() == held          # reused, not grown
        convx.release_workspace()
        assert convx.workspace_bytes() == 0
        print("ok")
    """)
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
