"""Inputs at the edges of int64 and of memory, thread-count independence, and the
raw kernel module's own guards. Calls that once crashed or hung run in a child
process with a timeout, so a regression fails one test instead of the run.
"""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import convx
import convx.functional as CF


def run_child(code: str, timeout: float = 120, env=None) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, f"child exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_huge_padding_and_stride_give_torchs_zeros():
    # padding + stride > 2**63: the column bounds once overflowed into a negative
    # row and the process died. Every block lies in the padding: all zeros.
    out = run_child("""
        import numpy as np, torch, convx.functional as F
        p, s = 2**62 - 10, 2**62 + 20
        u = F.unfold(torch.ones(1, 1, 2, 2), 1, padding=p, stride=s)
        assert u.shape == (1, 1, 4) and torch.all(u == 0), u
        un = F.unfold(np.ones((1, 1, 2, 2), np.float32), 1, padding=p, stride=s)
        assert un.shape == (1, 1, 4) and not un.any(), un
        f = F.fold(torch.ones(1, 1, 4), (2, 2), 1, padding=p, stride=s)
        assert f.shape == (1, 1, 2, 2) and torch.all(f == 0), f
        b = torch.tensor([1.5, -2.0, 3.0])
        c = F.conv2d(torch.ones(1, 1, 2, 2), torch.ones(3, 1, 1, 1), b, padding=p, stride=s)
        assert c.shape == (1, 3, 2, 2) and torch.equal(c, b.view(1, 3, 1, 1).expand(1, 3, 2, 2)), c
        print("ok")
    """)
    assert out.strip() == "ok"


def test_huge_pooling_window_is_fast_and_exact():
    # A 2**62 kernel with 2**61 padding covers the whole 4x4 input in one window;
    # stepping over the padding tap by tap would never finish.
    out = run_child("""
        import torch, convx.functional as F
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        v, i = F.max_pool2d(x, 2**62, padding=2**61, return_indices=True)
        assert v.shape == (2, 3, 1, 1)
        assert torch.equal(v.flatten(2), x.flatten(2).amax(2, keepdim=True))
        assert torch.equal(i.flatten(2), x.flatten(2).argmax(2, keepdim=True))
        print("ok")
    """, timeout=60)
    assert out.strip() == "ok"


def test_empty_batch_with_huge_plane_is_instant():
    out = run_child("""
        import numpy as np, torch, convx.functional as F
        y = F.max_pool2d(np.empty((0, 1, 1, 2**40), np.float32), 1)
        assert y.shape == (0, 1, 1, 2**40)
        y = F.max_pool2d(np.empty((0, 1, 3, 2**40), np.float32), 3, stride=1, padding=1)
        assert y.shape == (0, 1, 3, 2**40)
        # An empty batch allocates no column buffer (it would be 2**32 * 576 floats).
        out = F.conv2d(torch.empty(0, 64, 2**16, 2**16), torch.randn(128, 64, 3, 3), padding=1)
        assert out.shape == (0, 128, 2**16, 2**16)
        print("ok")
    """, timeout=60)
    assert out.strip() == "ok"


def test_params_module_refuses_instead_of_dividing_by_zero():
    out = run_child("""
        from convx import _C
        for cls in (_C.Conv2dParams, _C.Pool2dParams, _C.Im2colParams):
            p = cls()
            p.stride_h = 0
            for size in (p.out_h, p.out_w):
                try:
                    size()
                except ValueError as e:
                    assert "stride" in str(e), e
                else:
                    raise AssertionError(cls.__name__ + " accepted stride 0")
        print("ok")
    """)
    assert out.strip() == "ok"


def test_empty_image_is_an_error_as_in_torch():
    with pytest.raises(ValueError, match=r"input spatial size.*\(0, 0\)"):
        CF.conv2d(torch.randn(1, 1, 0, 0), torch.randn(2, 1, 1, 1), padding=1)


def test_misaligned_numpy_arrays():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    raw = np.zeros(x.nbytes + 1, np.uint8)
    raw[1:] = np.frombuffer(x.tobytes(), np.uint8)
    misaligned = np.frombuffer(raw.data, np.float32, count=x.size, offset=1).reshape(x.shape)
    assert not misaligned.flags.aligned
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    np.testing.assert_allclose(CF.conv2d(misaligned, w, padding=1), expected, rtol=1e-5, atol=1e-5)
    # The raw module refuses such a buffer rather than reading it misaligned.
    p = convx._C.Conv2dParams()
    p.N, p.C, p.H, p.W, p.K, p.R, p.S = 1, 2, 5, 5, 3, 3, 3
    with pytest.raises(ValueError, match="aligned"):
        convx._C.conv2d_forward(p, misaligned, w, None, np.empty((1, 3, 3, 3), np.float32), "auto")


# ---- threads ---------------------------------------------------------------------

_HASH_SCRIPT = """
import hashlib, torch, convx.functional as F
g = torch.Generator().manual_seed(0)
h = hashlib.sha256()

def digest(x, w, b, algos, pool):
    for algo in algos:
        y = F.max_pool2d(F.conv2d(x, w, b, padding=1, algo=algo), *pool)
        grads = torch.autograd.grad(y, (x, w, b), torch.randn(y.shape, generator=g))
        for t in (y,) + grads:
            h.update(t.detach().numpy().tobytes())

def tensors(*shapes):
    return [torch.randn(*s, generator=g, requires_grad=True) for s in shapes]

# the reference loops on a small layer
digest(*tensors((4, 32, 20, 20), (64, 32, 3, 3), (64,)), ("direct",), (3, 2, 1))
# the fast paths on layers big enough that every OpenMP team is used: GEMMs and
# Winograd products split over threads, 16-wide pooling rows
digest(*tensors((4, 64, 40, 40), (128, 64, 3, 3), (128,)), ("im2col", "winograd_2x2", "winograd_4x4"), (3, 2, 1))
# one input channel: the dot-product weight gradient; 5-wide pooled planes (gather kernel)
digest(*tensors((64, 1, 12, 12), (25, 1, 3, 3), (25,)), ("auto",), (2, 2))
# LeNet's second layer: blocks of whole small images, shared between threads, and
# the weight gradient's fixed set of partial sums
digest(*tensors((64, 20, 12, 12), (50, 20, 5, 5), (50,)), ("im2col",), (2, 2))
# the shifted-plane GEMM: images shared between threads (forward), the threaded
# GEMM (one image), dot products and the packed form of its weight gradient
digest(*tensors((8, 3, 40, 40), (16, 3, 7, 7), (16,)), ("shifted",), (2, 2))
digest(*tensors((1, 64, 30, 30), (64, 64, 3, 3), (64,)), ("shifted",), (2, 2))
# the pixel-major backward-data (16 channels, 5x5): images shared by the threads'
# adds, in two chunks
digest(*tensors((6, 16, 21, 21), (32, 16, 5, 5), (32,)), ("shifted",), (2, 2))
# the same for AlphaGo's input layer, one image: channels shared by the adds, the
# filters in two blocks of taps; then blocks of pixels that straddle two images
digest(*tensors((1, 48, 19, 19), (192, 48, 5, 5), (192,)), ("shifted",), (2, 2))
digest(*tensors((3, 48, 9, 9), (192, 48, 5, 5), (192,)), ("shifted",), (2, 2))
# Winograd on one small image of a wide layer: few tiles, products split over
# threads because of their GEMMs' size
digest(*tensors((1, 96, 14, 14), (96, 96, 3, 3), (96,)), ("winograd_2x2", "winograd_4x4"), (2, 2))
print(h.hexdigest())
"""


def test_results_are_bitwise_identical_for_any_thread_count():
    # Threads split outputs, never a reduction: the sums keep one order.
    digests = set()
    for threads in ("1", "2", "3"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        digests.add(run_child(_HASH_SCRIPT, env=env).strip())
    assert len(digests) == 1, digests


def test_concurrent_calls_with_threaded_gemm():
    # Large enough that the GEMM and im2col use their OpenMP teams inside each call.
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(2, 32, 16, 16, generator=g) for _ in range(3)]
    w = torch.randn(64, 32, 3, 3, generator=g)

    def work(x):
        x = x.clone().requires_grad_()
        y = CF.conv2d(x, w, padding=1, algo="im2col")
        gx, = torch.autograd.grad(y, x, torch.ones_like(y))
        return y.detach(), gx

    sequential = [work(x) for x in inputs]
    results = [None] * len(inputs)

    def run(i):
        for _ in range(3):
            results[i] = work(inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (y, gx), (ys, gxs) in zip(results, sequential):
        assert torch.equal(y, ys) and torch.equal(gx, gxs)
    ref = torch.nn.functional.conv2d(inputs[0], w, padding=1)
    torch.testing.assert_close(sequential[0][0], ref, rtol=1e-4, atol=1e-4)


# ---- extreme integers, against exact Python-int references -------------------------


_EXTREME = st.sampled_from([2**31 - 1, 2**31, 2**32 + 1, 2**61, 2**62 - 1, 2**62, 2**63 - 2, 2**63 - 1])
_SIZE = st.one_of(st.integers(1, 4), _EXTREME)
_PAD = st.one_of(st.integers(0, 2), _EXTREME.map(lambda v: v // 2))


def _pool_out_size(n, k, s, p, d, ceil):
    """torch's pooling_output_shape, in exact Python ints."""
    span = d * (k - 1) + 1
    num = n + 2 * p - span + (s - 1 if ceil else 0)
    out = num // s + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


def _reference_max_pool2d(x, k, s, p, d, ceil):
    """Window by window in Python ints: taps inside the input, max with NaN winning."""
    H, W = x.shape
    oh, ow = _pool_out_size(H, k[0], s[0], p[0], d[0], ceil), _pool_out_size(W, k[1], s[1], p[1], d[1], ceil)

    def taps(o, n, k, s, p, d):
        start = o * s - p
        first = 0 if start >= 0 else (-start + d - 1) // d  # ceil(-start / d), exact in Python ints
        return [start + j * d for j in range(first, min(k, first + n + 1)) if 0 <= start + j * d < n]

    values, indices = np.empty((oh, ow), x.dtype), np.empty((oh, ow), np.int64)
    for i in range(oh):
        for j in range(ow):
            best, best_index = -np.inf, None
            for h in taps(i, H, k[0], s[0], p[0], d[0]):
                for w in taps(j, W, k[1], s[1], p[1], d[1]):
                    if best_index is None:
                        best_index = h * W + w
                    if x[h, w] > best or np.isnan(x[h, w]):
                        best, best_index = x[h, w], h * W + w
            assert best_index is not None, "convx accepted a window with no input element"
            values[i, j], indices[i, j] = best, best_index
    return values, indices


@settings(max_examples=150, deadline=None, derandomize=True)
@given(H=st.integers(1, 5), W=st.integers(1, 5), k=st.tuples(_SIZE, _SIZE), s=st.tuples(_SIZE, _SIZE),
       p=st.tuples(_PAD, _PAD), d=st.tuples(_SIZE, _SIZE), ceil=st.booleans(), seed=st.integers(0, 2**16))
def test_max_pool2d_extreme_arguments(H, W, k, s, p, d, ceil, seed):
    """Huge kernel/stride/padding/dilation: a clear ValueError, or exactly the
    reference's values and in-plane indices (never a crash or a wrapped size)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((H, W))
    x[rng.random((H, W)) < 0.1] = np.nan
    # Shapes whose output would be large but valid are real work, not a test of the
    # arithmetic at the edges: leave them out rather than allocate gigabytes.
    assume(_pool_out_size(H, k[0], s[0], p[0], d[0], ceil) * _pool_out_size(W, k[1], s[1], p[1], d[1], ceil)
           <= 64 or p[0] > k[0] // 2 or p[1] > k[1] // 2)
    try:
        values, indices = CF.max_pool2d(x[None, None], k, s, p, d, ceil, return_indices=True)
    except ValueError as e:
        assert str(e)
        return
    ref_values, ref_indices = _reference_max_pool2d(x, k, s, p, d, ceil)
    np.testing.assert_array_equal(values[0, 0], ref_values)
    np.testing.assert_array_equal(indices[0, 0], ref_indices)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(H=st.integers(1, 5), W=st.integers(1, 5), k=st.tuples(_SIZE, _SIZE), s=st.tuples(_SIZE, _SIZE),
       p=st.tuples(_PAD, _PAD), d=st.tuples(_SIZE, _SIZE))
def test_unfold_extreme_arguments(H, W, k, s, p, d):
    """Either a ValueError, or every block entry equals the pixel (or padding zero) it
    names in exact integer arithmetic."""
    x = np.arange(1, H * W + 1, dtype=np.float64).reshape(1, 1, H, W)
    bh = (H + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    bw = (W + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    assume(k[0] * k[1] * max(bh, 0) * max(bw, 0) <= 4096)  # as above: no gigabyte outputs
    try:
        cols = CF.unfold(x, k, d, p, s)
    except ValueError as e:
        assert str(e)
        return
    assert cols.shape == (1, k[0] * k[1], bh * bw)
    for row in range(k[0] * k[1]):
        i, j = divmod(row, k[1])
        for b in range(bh * bw):
            oh, ow = divmod(b, bw)
            h, w = oh * s[0] - p[0] + i * d[0], ow * s[1] - p[1] + j * d[1]
            expected = x[0, 0, h, w] if 0 <= h < H and 0 <= w < W else 0.0
            assert cols[0, row, b] == expected
