"""Gradient tests for convx.

Two independent checks:

* torch.autograd.gradcheck (float64) of convx.functional ops, which compares
  the analytic backward of the autograd Function with torch's own numerical
  Jacobian;
* a central finite-difference check written with numpy only: convx is called
  on numpy arrays (the numpy path, no autograd), each input element is
  perturbed by +-h and the directional derivative of the linear functional
  sum(g * out) is compared with the analytic gradient obtained by torch
  autograd through convx (and with torch's own native gradient).

Sizes are kept tiny because gradcheck is slow.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

import convx.functional as CF

ALGOS = [None, "direct", "im2col"]


def _rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _distinct(gen, *shape):
    """Values that are pairwise distinct by at least 0.05 (stable argmax)."""
    n = int(np.prod(shape))
    perm = torch.randperm(n, generator=gen).to(torch.float64)
    return (perm * 0.05 - n * 0.025).reshape(shape)


# ---------------------------------------------------------------------------
# gradcheck: conv2d
# ---------------------------------------------------------------------------

# (N, Cin, H, W, Cout, kh, kw, stride, padding, dilation, groups, bias)
CONV_CASES = [
    pytest.param((1, 1, 4, 4, 1, 3, 3, 1, 0, 1, 1, False), id="plain"),
    pytest.param((2, 2, 5, 4, 3, 3, 2, 1, 0, 1, 1, True), id="bias-batch2"),
    pytest.param((1, 2, 5, 5, 2, 3, 3, 2, 0, 1, 1, True), id="stride2"),
    pytest.param((1, 2, 5, 6, 2, 3, 3, (2, 1), (1, 2), 1, 1, True), id="stride-pad-pairs"),
    pytest.param((1, 2, 6, 6, 2, 2, 2, 1, 1, 2, 1, False), id="dilation2"),
    pytest.param((1, 4, 4, 5, 4, 2, 3, 1, 1, (2, 1), 2, True), id="groups2"),
    pytest.param((1, 3, 4, 4, 6, 3, 3, 1, 1, 1, 3, True), id="depthwise-mult2"),
    pytest.param((1, 2, 7, 6, 4, 2, 3, (2, 3), (1, 0), (2, 1), 2, True), id="all-mixed"),
    pytest.param((1, 2, 4, 5, 2, 2, 3, 1, "same", 1, 1, True), id="same-even-kernel"),
    pytest.param((1, 2, 5, 5, 2, 3, 2, 1, "same", (1, 2), 1, False), id="same-dilated"),
    pytest.param((1, 2, 4, 4, 3, 2, 2, 1, "valid", 1, 1, True), id="valid"),
]


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: str(a))
@pytest.mark.parametrize("case", CONV_CASES)
def test_gradcheck_conv2d(case, algo):
    n, cin, h, w, cout, kh, kw, stride, padding, dilation, groups, has_bias = case
    gen = torch.Generator().manual_seed(1234)
    x = _rand(gen, n, cin, h, w).requires_grad_()
    wt = _rand(gen, cout, cin // groups, kh, kw).requires_grad_()
    b = _rand(gen, cout).requires_grad_() if has_bias else None

    def f(x, wt, *maybe_b):
        bb = maybe_b[0] if maybe_b else None
        return CF.conv2d(x, wt, bb, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, algo=algo)

    inputs = (x, wt) + ((b,) if has_bias else ())
    # sanity: forward agrees with torch (so gradcheck is checking the right function)
    ref = F.conv2d(x, wt, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    torch.testing.assert_close(f(*inputs), ref, rtol=1e-12, atol=1e-12)
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: str(a))
def test_gradcheck_conv2d_unbatched(algo):
    gen = torch.Generator().manual_seed(7)
    x = _rand(gen, 2, 4, 5).requires_grad_()
    wt = _rand(gen, 2, 1, 2, 3).requires_grad_()
    b = _rand(gen, 2).requires_grad_()

    def f(x, wt, b):
        return CF.conv2d(x, wt, b, stride=(1, 2), padding=1, groups=2, algo=algo)

    assert gradcheck(f, (x, wt, b), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: str(a))
def test_gradcheck_conv2d_noncontiguous(algo):
    gen = torch.Generator().manual_seed(8)
    base = _rand(gen, 1, 2, 5, 7)
    x = base.transpose(-1, -2).detach().requires_grad_()  # (1, 2, 7, 5), non-contiguous
    assert not x.is_contiguous()
    wt = _rand(gen, 3, 2, 2, 2).requires_grad_()

    def f(x, wt):
        return CF.conv2d(x, wt, None, stride=2, padding=1, algo=algo)

    assert gradcheck(f, (x, wt), eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------
# gradcheck: max_pool2d, unfold, fold
# ---------------------------------------------------------------------------

# (shape, kernel, stride, padding, dilation, ceil_mode)
POOL_CASES = [
    pytest.param(((1, 1, 4, 4), 2, None, 0, 1, False), id="k2"),
    pytest.param(((2, 2, 5, 5), 3, 1, 1, 1, False), id="k3-s1-p1-overlap"),
    pytest.param(((1, 2, 5, 6), (2, 3), (2, 1), (1, 1), 1, False), id="pairs"),
    pytest.param(((1, 1, 6, 6), 2, 1, 1, 2, False), id="dilation2"),
    pytest.param(((1, 2, 5, 5), 2, 2, 0, 1, True), id="ceil"),
    pytest.param(((1, 1, 7, 6), 3, 2, 1, (1, 2), True), id="ceil-dil-pad"),
    pytest.param(((2, 5, 5), 2, 2, 1, 1, False), id="unbatched"),
]


@pytest.mark.parametrize("case", POOL_CASES)
def test_gradcheck_max_pool2d(case):
    shape, k, s, p, d, ceil = case
    gen = torch.Generator().manual_seed(99)
    x = _distinct(gen, *shape).requires_grad_()

    def f(x):
        return CF.max_pool2d(x, k, stride=s, padding=p, dilation=d, ceil_mode=ceil)

    ref = F.max_pool2d(x, k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    assert torch.equal(f(x), ref)
    assert gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_max_pool2d_return_indices_values():
    gen = torch.Generator().manual_seed(5)
    x = _distinct(gen, 1, 2, 5, 5).requires_grad_()

    def f(x):
        vals, idx = CF.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
        assert idx.dtype == torch.int64
        assert not idx.requires_grad
        return vals

    assert gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_max_pool2d_keeps_int32_indices_for_its_backward_only():
    # Indices no caller sees are kept as int32 (half the backward's index reads);
    # the ones return_indices hands out are torch's int64, and the same offsets.
    x = _distinct(torch.Generator().manual_seed(3), 2, 3, 8, 8).requires_grad_()
    hidden = CF.max_pool2d(x, 2)
    shown, shown_idx = CF.max_pool2d(x, 2, return_indices=True)
    (kept,) = hidden.grad_fn.saved_tensors
    assert kept.dtype == torch.int32 and shown_idx.dtype == torch.int64
    assert torch.equal(kept.long(), shown_idx)
    assert torch.equal(F.max_pool2d(x, 2, return_indices=True)[1], shown_idx)
    g = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(4))
    (gx,) = torch.autograd.grad(hidden, x, g)
    (gx_ref,) = torch.autograd.grad(F.max_pool2d(x, 2), x, g)
    assert torch.equal(gx, gx_ref)


# (shape, kernel, dilation, padding, stride)
UNFOLD_CASES = [
    pytest.param(((1, 2, 4, 4), 2, 1, 0, 1), id="basic"),
    pytest.param(((2, 1, 5, 4), (2, 3), (2, 1), (1, 0), (2, 1)), id="mixed"),
    pytest.param(((1, 2, 4, 5), 3, 1, 1, 2), id="pad-stride"),
    pytest.param(((2, 4, 4), 2, 1, 1, 2), id="unbatched"),
]


@pytest.mark.parametrize("case", UNFOLD_CASES)
def test_gradcheck_unfold(case):
    shape, k, d, p, s = case
    gen = torch.Generator().manual_seed(11)
    x = _rand(gen, *shape).requires_grad_()

    def f(x):
        return CF.unfold(x, k, dilation=d, padding=p, stride=s)

    torch.testing.assert_close(f(x), F.unfold(x, k, dilation=d, padding=p, stride=s),
                               rtol=0, atol=0)
    assert gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def _n_blocks(size, k, d, p, s):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# (N, C, output_size, kernel, dilation, padding, stride)  (ints are per-both-dims)
FOLD_CASES = [
    pytest.param((1, 1, (4, 4), 2, 1, 0, 1), id="overlap"),
    pytest.param((2, 2, (5, 4), (2, 3), (2, 1), (1, 0), (2, 1)), id="mixed"),
    pytest.param((1, 2, (4, 5), 3, 1, 1, 2), id="pad-stride"),
    pytest.param((None, 2, (4, 4), 2, 1, 1, 2), id="unbatched"),
]


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("case", FOLD_CASES)
def test_gradcheck_fold(case):
    n, c, out_size, k, d, p, s = case
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = map(_pair, (k, d, p, s))
    L = _n_blocks(out_size[0], kh, dh, ph, sh) * _n_blocks(out_size[1], kw, dw, pw, sw)
    gen = torch.Generator().manual_seed(13)
    shape = (c * kh * kw, L) if n is None else (n, c * kh * kw, L)
    x = _rand(gen, *shape).requires_grad_()

    def f(x):
        return CF.fold(x, out_size, k, dilation=d, padding=p, stride=s)

    torch.testing.assert_close(f(x), F.fold(x, out_size, k, dilation=d, padding=p, stride=s),
                               rtol=1e-12, atol=1e-12)
    assert gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: str(a))
@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(padding=(1, 0), dilation=(1, 2), groups=2)],
                         ids=["plain", "stride2_pad1", "groups_dilation"])
def test_gradgradcheck_conv2d(kw, algo):
    """Second derivatives: every backward is built from differentiable convx Functions."""
    gen = torch.Generator().manual_seed(3)
    x = _rand(gen, 2, 2, 5, 6).requires_grad_()
    w = _rand(gen, 4, 2 // kw.get("groups", 1), 2, 3).requires_grad_()
    b = _rand(gen, 4).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x, w, b: CF.conv2d(x, w, b, algo=algo, **kw), (x, w, b))


def test_gradgradcheck_max_pool2d_unfold_fold():
    gen = torch.Generator().manual_seed(4)
    x = _distinct(gen, 1, 2, 5, 5).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: CF.max_pool2d(x, 2, 1, padding=1), (x,))
    assert torch.autograd.gradgradcheck(lambda x: CF.unfold(x, 2, padding=1, stride=2), (x,))
    cols = _rand(gen, 1, 8, 9).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda c: CF.fold(c, (4, 4), 2, stride=1), (cols,))


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: str(a))
def test_gradient_penalty_matches_torch(algo):
    """A gradient penalty (loss on d out / d x, differentiated again w.r.t. the weight)
    must match torch, not silently drop the second-order term."""
    gen = torch.Generator().manual_seed(5)
    x0, w0 = _rand(gen, 2, 3, 6, 6), _rand(gen, 4, 3, 3, 3)

    def penalty_grad(conv):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = torch.relu(conv(x, w))
        gx, = torch.autograd.grad(y.sum(), x, create_graph=True)
        (y.mean() + gx.pow(2).sum()).backward()
        return w.grad

    ours = penalty_grad(lambda x, w: CF.conv2d(x, w, padding=1, algo=algo))
    ref = penalty_grad(lambda x, w: torch.nn.functional.conv2d(x, w, padding=1))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------
# Independent numpy central finite differences
# ---------------------------------------------------------------------------

def _fd_grad(fun, arrays, index, g, h):
    """Central differences of sum(g * fun(*arrays)) w.r.t. arrays[index] (numpy only)."""
    base = [a.copy() for a in arrays]
    target = base[index]
    grad = np.zeros_like(target)
    flat = target.reshape(-1)  # view
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + h
        fp = float(np.sum(g * fun(*base)))
        flat[i] = orig - h
        fm = float(np.sum(g * fun(*base)))
        flat[i] = orig
        gflat[i] = (fp - fm) / (2.0 * h)
    return grad


def _autograd_grads(fun_torch, arrays, g):
    ts = [torch.from_numpy(a.copy()).requires_grad_() for a in arrays]
    out = fun_torch(*ts)
    grads = torch.autograd.grad(out, ts, torch.from_numpy(g))
    return [gr.numpy() for gr in grads]


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: str(a))
@pytest.mark.parametrize("cfg", [
    dict(stride=1, padding=0, dilation=1, groups=1),
    dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2),
    dict(stride=1, padding="same", dilation=1, groups=1),
], ids=["plain", "mixed-groups", "same"])
def test_numpy_finite_difference_conv2d(algo, cfg):
    rng = np.random.default_rng(2024)
    groups = cfg["groups"]
    x = rng.standard_normal((1, 2, 4, 5))
    w = rng.standard_normal((2, 2 // groups, 2, 3))
    b = rng.standard_normal(2)

    def f_np(x, w, b):
        out = CF.conv2d(x, w, b, algo=algo, **cfg)
        assert isinstance(out, np.ndarray) and out.dtype == np.float64
        return out

    out = f_np(x, w, b)
    g = rng.standard_normal(out.shape)
    analytic = _autograd_grads(lambda x, w, b: CF.conv2d(x, w, b, algo=algo, **cfg), [x, w, b], g)
    native = _autograd_grads(lambda x, w, b: F.conv2d(x, w, b, **cfg), [x, w, b], g)
    for i, name in enumerate(["input", "weight", "bias"]):
        fd = _fd_grad(f_np, [x, w, b], i, g, h=1e-3)
        # conv2d is linear in each argument: central differences are exact up to rounding
        np.testing.assert_allclose(analytic[i], fd, rtol=1e-7, atol=1e-8, err_msg=name)
        np.testing.assert_allclose(analytic[i], native[i], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("cfg", [
    dict(kernel_size=2, stride=None, padding=0, dilation=1, ceil_mode=False),
    dict(kernel_size=3, stride=1, padding=1, dilation=1, ceil_mode=False),
    dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 1), dilation=(2, 1), ceil_mode=True),
], ids=["k2", "overlap-pad", "mixed-ceil"])
def test_numpy_finite_difference_max_pool2d(cfg):
    rng = np.random.default_rng(77)
    n = 2 * 5 * 6
    x = (rng.permutation(n).astype(np.float64) * 0.1 - 3.0).reshape(1, 2, 5, 6)

    def f_np(x):
        out = CF.max_pool2d(x, **cfg)
        assert isinstance(out, np.ndarray) and out.dtype == np.float64
        return out

    out = f_np(x)
    g = rng.standard_normal(out.shape)
    fd = _fd_grad(f_np, [x], 0, g, h=1e-4)  # h << gap between values: argmax is stable
    analytic = _autograd_grads(lambda x: CF.max_pool2d(x, **cfg), [x], g)[0]
    native = _autograd_grads(lambda x: F.max_pool2d(x, **cfg), [x], g)[0]
    np.testing.assert_allclose(analytic, fd, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(analytic, native, rtol=1e-12, atol=1e-12)


def _check_numpy_fd(convx_op, torch_op, x, rng):
    """Numpy central differences of a linear op vs autograd through convx and torch."""
    def f_np(x):
        out = convx_op(x)
        assert isinstance(out, np.ndarray)
        return out

    g = rng.standard_normal(f_np(x).shape)
    fd = _fd_grad(f_np, [x], 0, g, h=1e-3)
    analytic = _autograd_grads(convx_op, [x], g)[0]
    native = _autograd_grads(torch_op, [x], g)[0]
    np.testing.assert_allclose(analytic, fd, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(analytic, native, rtol=1e-12, atol=1e-12)


def test_numpy_finite_difference_unfold():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 4, 5))
    kw = dict(kernel_size=(2, 3), dilation=(1, 2), padding=1, stride=(2, 1))
    _check_numpy_fd(lambda x: CF.unfold(x, **kw), lambda x: F.unfold(x, **kw), x, rng)


def test_numpy_finite_difference_fold():
    rng = np.random.default_rng(6)
    kw = dict(output_size=(4, 5), kernel_size=(2, 2), dilation=1, padding=(1, 0), stride=1)
    L = _n_blocks(4, 2, 1, 1, 1) * _n_blocks(5, 2, 1, 0, 1)
    x = rng.standard_normal((1, 2 * 4, L))
    _check_numpy_fd(lambda x: CF.fold(x, **kw), lambda x: F.fold(x, **kw), x, rng)


# ---------------------------------------------------------------------------
# partial requires_grad, no_grad, non-contiguous upstream gradients (vs torch)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: str(a))
@pytest.mark.parametrize("mask", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1)],
                         ids=lambda m: "xwb" if m == (1, 1, 1) else "".join(c for c, f in zip("xwb", m) if f))
def test_conv2d_partial_requires_grad(mask, algo):
    gen = torch.Generator().manual_seed(21)
    base = [_rand(gen, 2, 4, 6, 5), _rand(gen, 6, 2, 3, 2), _rand(gen, 6)]
    kw = dict(stride=(2, 1), padding=1, groups=2)
    ours = [t.clone().requires_grad_(bool(m)) for t, m in zip(base, mask)]
    theirs = [t.clone().requires_grad_(bool(m)) for t, m in zip(base, mask)]
    out = CF.conv2d(*ours, algo=algo, **kw)
    ref = F.conv2d(*theirs, **kw)
    assert out.requires_grad
    g = _rand(gen, *ref.shape)
    out.backward(g)
    ref.backward(g)
    for a, b, m in zip(ours, theirs, mask):
        if m:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
        else:
            assert a.grad is None


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: str(a))
def test_conv2d_no_grad_mode(algo):
    gen = torch.Generator().manual_seed(22)
    x = _rand(gen, 1, 2, 5, 5).requires_grad_()
    w = _rand(gen, 3, 2, 3, 3).requires_grad_()
    with torch.no_grad():
        out = CF.conv2d(x, w, padding=1, algo=algo)
    assert not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(out, F.conv2d(x, w, padding=1), rtol=1e-12, atol=1e-12)
    with torch.inference_mode():
        out2 = CF.conv2d(x, w, padding=1, algo=algo)
    assert not out2.requires_grad
    torch.testing.assert_close(out2, out, rtol=0, atol=0)


def _count_function_applies(monkeypatch):
    """Counts, per autograd Function of convx, how often its apply runs."""
    import convx.autograd as cxa
    counts = {}
    for name in dir(cxa):
        cls = getattr(cxa, name)
        if isinstance(cls, type) and issubclass(cls, torch.autograd.Function) and cls.__module__ == cxa.__name__:
            def counted(*args, _cls=cls, _apply=cls.apply):
                counts[_cls.__name__] = counts.get(_cls.__name__, 0) + 1
                return _apply(*args)
            monkeypatch.setattr(cls, "apply", counted)
    return counts


def test_functions_recorded_only_when_autograd_records(monkeypatch):
    # The autograd Functions cost tens of microseconds of Python a call, so the
    # ops record one only when autograd would record anything; inference and
    # first-order backward passes run the kernels directly. Gradients must be
    # the same either way, and create_graph must still give a graph.
    counts = _count_function_applies(monkeypatch)
    gen = torch.Generator().manual_seed(24)
    x, w, b = _rand(gen, 2, 3, 7, 6), _rand(gen, 4, 3, 3, 3), _rand(gen, 4)

    def net(x, w, b):
        y = CF.max_pool2d(CF.conv2d(x, w, b, padding=1), 2, 1)
        return CF.fold(CF.unfold(y, 2), (y.shape[2], y.shape[3]), 2)

    def ref(x, w, b):
        y = F.max_pool2d(F.conv2d(x, w, b, padding=1), 2, 1)
        return F.fold(F.unfold(y, 2), (y.shape[2], y.shape[3]), 2)

    with torch.no_grad():
        torch.testing.assert_close(net(x, w, b), ref(x, w, b), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net(x, w, b), ref(x, w, b), rtol=1e-12, atol=1e-12)  # nothing requires grad
    assert counts == {}

    ours = [t.clone().requires_grad_() for t in (x, w, b)]
    theirs = [t.clone().requires_grad_() for t in (x, w, b)]
    g = _rand(gen, *ref(x, w, b).shape)
    net(*ours).backward(g)
    ref(*theirs).backward(g)
    forward_only = {"Conv2dFunction": 1, "MaxPool2dFunction": 1, "UnfoldFunction": 1, "FoldFunction": 1}
    assert counts == forward_only  # the backward passes ran the kernels directly
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-12, atol=1e-12)

    counts.clear()
    gx = torch.autograd.grad((net(*ours) * g).sum(), ours[0], create_graph=True)[0]
    assert counts.get("Conv2dBackwardDataFunction") == 1  # gx depends on w: create_graph records it
    gx_ref = torch.autograd.grad((ref(*theirs) * g).sum(), theirs[0], create_graph=True)[0]
    gw = torch.autograd.grad((gx * gx).sum(), ours[1])[0]
    gw_ref = torch.autograd.grad((gx_ref * gx_ref).sum(), theirs[1])[0]
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("op", ["conv_direct", "conv_im2col", "pool", "unfold", "fold"])
@pytest.mark.parametrize("grad_kind", ["sum", "transposed", "sliced"])
def test_noncontiguous_upstream_gradient(op, grad_kind):
    """The gradient that reaches backward may be an expanded/transposed/strided view."""
    gen = torch.Generator().manual_seed(23)
    if op.startswith("conv"):
        algo = op.split("_")[1]
        x = _rand(gen, 2, 3, 6, 7).requires_grad_()
        w = _rand(gen, 4, 3, 3, 2).requires_grad_()
        inputs = [x, w]
        ours = lambda x, w: CF.conv2d(x, w, padding=1, algo=algo)  # noqa: E731
        theirs = lambda x, w: F.conv2d(x, w, padding=1)  # noqa: E731
    elif op == "pool":
        inputs = [_distinct(gen, 2, 3, 7, 6).requires_grad_()]
        ours = lambda x: CF.max_pool2d(x, 3, 2, 1)  # noqa: E731
        theirs = lambda x: F.max_pool2d(x, 3, 2, 1)  # noqa: E731
    elif op == "unfold":
        inputs = [_rand(gen, 2, 3, 6, 5).requires_grad_()]
        ours = lambda x: CF.unfold(x, 2, padding=1).unsqueeze(-1)  # noqa: E731
        theirs = lambda x: F.unfold(x, 2, padding=1).unsqueeze(-1)  # noqa: E731
    else:
        inputs = [_rand(gen, 2, 3 * 4, 5 * 6).requires_grad_()]
        ours = lambda x: CF.fold(x, (6, 7), 2)  # noqa: E731
        theirs = lambda x: F.fold(x, (6, 7), 2)  # noqa: E731

    def loss(out):
        if grad_kind == "sum":
            return (out.sum() * 1.5)  # upstream grad is an expanded scalar
        if grad_kind == "transposed":
            gt = torch.randn(out.shape[:-2] + (out.shape[-1], out.shape[-2]),
                             generator=torch.Generator().manual_seed(1), dtype=out.dtype)
            return (out * gt.transpose(-1, -2)).sum()
        return out[..., ::2, :].pow(2).sum()  # strided, with zeros in between

    got = torch.autograd.grad(loss(ours(*inputs)), inputs)
    exp = torch.autograd.grad(loss(theirs(*inputs)), inputs)
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_max_pool2d_grad_accumulates_overlapping_windows():
    """Overlapping windows that share one argmax must add their gradients there."""
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    x[0, 0, 1, 1] = 5.0
    x.requires_grad_()
    out = CF.max_pool2d(x, 2, stride=1)  # 4 windows, all pick the centre
    g = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    gx, = torch.autograd.grad(out, x, g)
    expected = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    expected[0, 0, 1, 1] = 10.0
    assert torch.equal(gx, expected)
