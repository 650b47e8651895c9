"""Inputs at the edges of int64 and of memory, thread-count independence, and the
raw kernel module's own guards. Calls that once crashed or hung run in a child
process with a timeout, so a regression fails one test instead of the run.
"""
import hashlib
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

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
x = torch.randn(4, 32, 20, 20, generator=g, requires_grad=True)
w = torch.randn(64, 32, 3, 3, generator=g, requires_grad=True)
b = torch.randn(64, generator=g, requires_grad=True)
h = hashlib.sha256()
for algo in ("direct", "im2col"):
    y = F.max_pool2d(F.conv2d(x, w, b, padding=1, algo=algo), 3, 2, 1)
    grads = torch.autograd.grad(y, (x, w, b), torch.randn(y.shape, generator=g))
    for t in (y,) + grads:
        h.update(t.detach().numpy().tobytes())
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
