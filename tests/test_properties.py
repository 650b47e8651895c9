"""Hypothesis property tests: convx vs torch on random *valid* configurations.

Strategies only generate valid configurations (output size >= 1, channels divisible
by groups, pooling padding <= kernel//2 and every pooling window overlapping the
input).  Tensors are float64 and generated from a drawn seed; layouts vary
(contiguous, channels_last, non-contiguous views, unbatched 3-D).
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import convx.functional as CF

# derandomize: a fixed seed per test, so every run checks the same examples
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
RTOL = 1e-10
ATOL = 1e-12


def close(a, b, **kw):
    kw.setdefault("rtol", RTOL)
    kw.setdefault("atol", ATOL)
    torch.testing.assert_close(a, b, **kw)


def conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def pool_out(size, k, s, p, d, ceil_mode):
    """torch's pooling_output_shape."""
    num = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = num // s + 1  # floor division == div_rtn
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def windows_cover_input(size, k, s, p, d, out):
    for o in range(out):
        start = o * s - p
        if not any(0 <= start + j * d < size for j in range(k)):
            return False
    return True


def make_tensor(shape, layout, seed):
    """float64 tensor with the given logical shape in the requested memory layout."""
    gen = torch.Generator().manual_seed(seed)
    if layout == "channels_last" and len(shape) == 4:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).contiguous(
            memory_format=torch.channels_last)
    if layout == "transposed" and len(shape) >= 2:
        t = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=gen, dtype=torch.float64)
        return t.transpose(-1, -2)
    if layout == "expanded":  # stride 0 along the last dim (values repeat: ties for pooling)
        return torch.randn(*shape[:-1], 1, generator=gen, dtype=torch.float64).expand(shape)
    if layout == "strided":
        big = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen, dtype=torch.float64)
        return big[..., ::2]
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


LAYOUTS = st.sampled_from(["contiguous", "channels_last", "transposed", "strided", "expanded"])


def is_truly_channels_last(t):
    return (t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last))


# ---------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------

@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 3))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pad_kind = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if pad_kind == "same":
        stride = draw(st.sampled_from([1, (1, 1)]))
        ph = pw = 0
        padding = "same"
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        if pad_kind == "valid":
            ph = pw = 0
            padding = "valid"
        elif pad_kind == "int":
            ph = pw = draw(st.integers(0, 2))
            padding = ph
        else:
            ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
            padding = (ph, pw)
    if padding == "same":
        h_min = w_min = 1
    else:
        h_min = max(1, dh * (kh - 1) + 1 - 2 * ph)
        w_min = max(1, dw * (kw - 1) + 1 - 2 * pw)
    h = draw(st.integers(h_min, h_min + 4))
    w = draw(st.integers(w_min, w_min + 4))
    if padding != "same":
        sh, sw = stride
        assert conv_out(h, kh, sh, ph, dh) >= 1 and conv_out(w, kw, sw, pw, dw) >= 1
    batch = draw(st.sampled_from([None, 1, 2]))
    in_shape = (cin, h, w) if batch is None else (batch, cin, h, w)
    return dict(
        in_shape=in_shape,
        w_shape=(cout, cin // groups, kh, kw),
        bias=draw(st.booleans()),
        stride=stride,
        padding=padding,
        dilation=(dh, dw) if draw(st.booleans()) else (dh if dh == dw else (dh, dw)),
        groups=groups,
        algo=draw(st.sampled_from([None, "auto", "direct", "im2col"])),
        x_layout=draw(LAYOUTS),
        w_layout=draw(LAYOUTS),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@SETTINGS
@given(conv_configs())
def test_conv2d_matches_torch(cfg):
    seed = cfg["seed"]
    x = make_tensor(cfg["in_shape"], cfg["x_layout"], seed).requires_grad_()
    w = make_tensor(cfg["w_shape"], cfg["w_layout"], seed + 1).requires_grad_()
    b = None
    if cfg["bias"]:
        b = make_tensor((cfg["w_shape"][0],), "contiguous", seed + 2).requires_grad_()
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
              groups=cfg["groups"])

    ref = F.conv2d(x, w, b, **kw)
    out = CF.conv2d(x, w, b, algo=cfg["algo"], **kw)
    assert out.shape == ref.shape
    assert out.dtype == torch.float64
    close(out, ref)
    if is_truly_channels_last(x):  # contract: channels_last in -> channels_last out (as torch)
        assert out.is_contiguous(memory_format=torch.channels_last)

    g = make_tensor(tuple(ref.shape), "contiguous", seed + 3)
    params = [x, w] + ([b] if b is not None else [])
    got = torch.autograd.grad(out, params, g)
    exp = torch.autograd.grad(ref, params, g)
    for name, a, e in zip(["input", "weight", "bias"], got, exp):
        assert a.shape == e.shape, name
        close(a, e, msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------------------
# max_pool2d
# ---------------------------------------------------------------------------

@st.composite
def pool_configs(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    explicit_stride = draw(st.booleans())
    sh, sw = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if explicit_stride else (kh, kw)
    ceil_mode = draw(st.booleans())
    h_min = max(1, dh * (kh - 1) + 1 - 2 * ph)
    w_min = max(1, dw * (kw - 1) + 1 - 2 * pw)
    h = draw(st.integers(h_min, h_min + 4))
    w = draw(st.integers(w_min, w_min + 4))
    oh = pool_out(h, kh, sh, ph, dh, ceil_mode)
    ow = pool_out(w, kw, sw, pw, dw, ceil_mode)
    assume(oh >= 1 and ow >= 1)
    assume(windows_cover_input(h, kh, sh, ph, dh, oh))
    assume(windows_cover_input(w, kw, sw, pw, dw, ow))
    batch = draw(st.sampled_from([None, 1, 2]))
    c = draw(st.integers(1, 3))
    return dict(
        in_shape=(c, h, w) if batch is None else (batch, c, h, w),
        kernel_size=(kh, kw) if (kh != kw or draw(st.booleans())) else kh,
        stride=(sh, sw) if explicit_stride else None,
        padding=(ph, pw) if (ph != pw or draw(st.booleans())) else ph,
        dilation=(dh, dw) if (dh != dw or draw(st.booleans())) else dh,
        ceil_mode=ceil_mode,
        layout=draw(LAYOUTS),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _pool_kwargs(cfg):
    return dict(kernel_size=cfg["kernel_size"], stride=cfg["stride"], padding=cfg["padding"],
                dilation=cfg["dilation"], ceil_mode=cfg["ceil_mode"])


@SETTINGS
@given(pool_configs())
def test_max_pool2d_matches_torch(cfg):
    x = make_tensor(cfg["in_shape"], cfg["layout"], cfg["seed"]).requires_grad_()
    kw = _pool_kwargs(cfg)
    ref, ref_idx = F.max_pool2d(x, return_indices=True, **kw)
    out, idx = CF.max_pool2d(x, return_indices=True, **kw)
    assert out.shape == ref.shape
    assert idx.dtype == torch.int64
    assert torch.equal(out.detach(), ref.detach())
    assert torch.equal(idx, ref_idx)
    if is_truly_channels_last(x):
        assert out.is_contiguous(memory_format=torch.channels_last)

    # return_indices=False gives the same values
    out2 = CF.max_pool2d(x, **kw)
    assert torch.equal(out2.detach(), ref.detach())

    g = make_tensor(tuple(ref.shape), "contiguous", cfg["seed"] + 1)
    got, = torch.autograd.grad(out2, x, g)
    exp, = torch.autograd.grad(ref, x, g)
    close(got, exp)


@SETTINGS
@given(pool_configs(), st.data())
def test_max_pool2d_ties_nan_inf_match_torch(cfg, data):
    """Low-entropy values (many ties), NaN and -inf: values and indices identical to torch."""
    shape = cfg["in_shape"]
    n = 1
    for s in shape:
        n *= s
    vals = data.draw(st.lists(
        st.sampled_from([0.0, 1.0, 2.0, float("-inf"), float("nan")]), min_size=n, max_size=n))
    x = torch.tensor(vals, dtype=torch.float64).reshape(shape)
    kw = _pool_kwargs(cfg)
    ref, ref_idx = F.max_pool2d(x, return_indices=True, **kw)
    out, idx = CF.max_pool2d(x, return_indices=True, **kw)
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(idx, ref_idx), (x, idx, ref_idx)


# ---------------------------------------------------------------------------
# unfold / fold
# ---------------------------------------------------------------------------

@st.composite
def unfold_configs(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h_min = max(1, dh * (kh - 1) + 1 - 2 * ph)
    w_min = max(1, dw * (kw - 1) + 1 - 2 * pw)
    h = draw(st.integers(h_min, h_min + 4))
    w = draw(st.integers(w_min, w_min + 4))
    lh, lw = conv_out(h, kh, sh, ph, dh), conv_out(w, kw, sw, pw, dw)
    assert lh >= 1 and lw >= 1
    c = draw(st.integers(1, 3))
    batch = draw(st.sampled_from([None, 1, 2]))

    def maybe_pair(a, b):
        return (a, b) if (a != b or draw(st.booleans())) else a

    return dict(
        c=c, batch=batch, h=h, w=w, L=lh * lw, kh=kh, kw=kw,
        kernel_size=maybe_pair(kh, kw),
        dilation=maybe_pair(dh, dw),
        padding=maybe_pair(ph, pw),
        stride=maybe_pair(sh, sw),
        layout=draw(LAYOUTS),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _uf_kwargs(cfg):
    return dict(kernel_size=cfg["kernel_size"], dilation=cfg["dilation"],
                padding=cfg["padding"], stride=cfg["stride"])


@SETTINGS
@given(unfold_configs())
def test_unfold_matches_torch(cfg):
    shape = (cfg["c"], cfg["h"], cfg["w"])
    if cfg["batch"] is not None:
        shape = (cfg["batch"],) + shape
    x = make_tensor(shape, cfg["layout"], cfg["seed"]).requires_grad_()
    kw = _uf_kwargs(cfg)
    ref = F.unfold(x, **kw)
    out = CF.unfold(x, **kw)
    assert out.shape == ref.shape
    assert torch.equal(out.detach(), ref.detach())
    g = make_tensor(tuple(ref.shape), "contiguous", cfg["seed"] + 1)
    got, = torch.autograd.grad(out, x, g)
    exp, = torch.autograd.grad(ref, x, g)
    close(got, exp)


@SETTINGS
@given(unfold_configs())
def test_fold_matches_torch(cfg):
    ckk = cfg["c"] * cfg["kh"] * cfg["kw"]
    shape = (ckk, cfg["L"]) if cfg["batch"] is None else (cfg["batch"], ckk, cfg["L"])
    layout = cfg["layout"] if cfg["layout"] != "channels_last" else "contiguous"
    x = make_tensor(shape, layout, cfg["seed"]).requires_grad_()
    kw = _uf_kwargs(cfg)
    out_size = (cfg["h"], cfg["w"])
    ref = F.fold(x, out_size, **kw)
    out = CF.fold(x, out_size, **kw)
    assert out.shape == ref.shape
    close(out, ref)
    g = make_tensor(tuple(ref.shape), "contiguous", cfg["seed"] + 1)
    got, = torch.autograd.grad(out, x, g)
    exp, = torch.autograd.grad(ref, x, g)
    assert torch.equal(got, exp)  # fold's backward is an unfold: pure gather, exact


@SETTINGS
@given(unfold_configs())
def test_fold_is_adjoint_of_unfold(cfg):
    """<unfold(x), y> == <x, fold(y)> computed with convx only against each other,
    but the identity is independent math (not a self-comparison of one op)."""
    xs = (1, cfg["c"], cfg["h"], cfg["w"])
    x = make_tensor(xs, "contiguous", cfg["seed"])
    y = make_tensor((1, cfg["c"] * cfg["kh"] * cfg["kw"], cfg["L"]), "contiguous", cfg["seed"] + 7)
    kw = _uf_kwargs(cfg)
    lhs = (CF.unfold(x, **kw) * y).sum()
    rhs = (x * CF.fold(y, (cfg["h"], cfg["w"]), **kw)).sum()
    close(lhs, rhs, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------
# Sizes around the im2col GEMM blocking (MR=8, NR=3 vectors of 64 bytes, KC=256,
# MC=192) and the OpenMP thresholds: a few medium-sized examples.
# ---------------------------------------------------------------------------

@st.composite
def gemm_block_configs(draw):
    groups = draw(st.sampled_from([1, 2]))
    k = draw(st.sampled_from([1, 3]))
    if k == 3:
        cg = draw(st.sampled_from([1, 3, 8, 28, 29]))        # CRS = 9 .. 252, 261
    else:
        cg = draw(st.sampled_from([1, 8, 255, 256, 257]))    # pointwise: CRS = Cg
    kg = draw(st.sampled_from([1, 3, 7, 8, 9, 16, 17, 95, 96, 97]))
    pad = draw(st.sampled_from([0, 1]))
    stride = draw(st.sampled_from([1, 1, 2]))
    lo = max(1, k - 2 * pad)
    h = draw(st.integers(lo, 19))
    w = draw(st.integers(lo, 19))
    return dict(
        in_shape=(draw(st.integers(1, 2)), groups * cg, h, w),
        w_shape=(groups * kg, cg, k, k),
        bias=draw(st.booleans()),
        stride=stride, padding=pad, groups=groups,
        algo=draw(st.sampled_from([None, "direct", "im2col"])),
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(gemm_block_configs())
def test_conv2d_gemm_block_sizes_match_torch(cfg):
    dtype = cfg["dtype"]
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-3)
    x = make_tensor(cfg["in_shape"], "contiguous", cfg["seed"]).to(dtype).requires_grad_()
    w = make_tensor(cfg["w_shape"], "contiguous", cfg["seed"] + 1).to(dtype).requires_grad_()
    b = (make_tensor((cfg["w_shape"][0],), "contiguous", cfg["seed"] + 2).to(dtype).requires_grad_()
         if cfg["bias"] else None)
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], groups=cfg["groups"])
    ref = F.conv2d(x, w, b, **kw)
    out = CF.conv2d(x, w, b, algo=cfg["algo"], **kw)
    close(out, ref, **tol)
    g = make_tensor(tuple(ref.shape), "contiguous", cfg["seed"] + 3).to(dtype)
    params = [x, w] + ([b] if b is not None else [])
    for name, a, e in zip(["input", "weight", "bias"], torch.autograd.grad(out, params, g),
                          torch.autograd.grad(ref, params, g)):
        close(a, e, **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("algo", [None, "direct", "im2col"], ids=str)
@pytest.mark.parametrize("shape,k,pad", [
    ((1, 8, 66, 66), 3, 1),      # L = 4356 > NC, parallel im2col / GEMM
    ((1, 24, 66, 64), 1, 0),     # pointwise, L = 4224 > NC
])
def test_conv2d_large_spatial_match_torch(shape, k, pad, algo, dtype):
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()
    w = torch.randn(64, shape[1], k, k, generator=gen, dtype=dtype).requires_grad_()
    b = torch.randn(64, generator=gen, dtype=dtype).requires_grad_()
    tol = dict(rtol=1e-10, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-3)
    ref = F.conv2d(x, w, b, padding=pad)
    out = CF.conv2d(x, w, b, padding=pad, algo=algo)
    close(out, ref, **tol)
    g = torch.randn(ref.shape, generator=gen, dtype=dtype)
    for a, e in zip(torch.autograd.grad(out, [x, w, b], g), torch.autograd.grad(ref, [x, w, b], g)):
        close(a, e, **tol)


def test_max_pool2d_parallel_path_match_torch():
    gen = torch.Generator().manual_seed(18)
    # integer values: plenty of ties, so the tie-break must follow torch
    x = torch.randint(0, 4, (2, 9, 66, 67), generator=gen).to(torch.float64).requires_grad_()
    kw = dict(kernel_size=3, stride=1, padding=1, return_indices=True)
    (v, i), (rv, ri) = CF.max_pool2d(x, **kw), F.max_pool2d(x, **kw)
    assert torch.equal(v.detach(), rv.detach())
    assert torch.equal(i, ri)
    g = torch.randn(rv.shape, generator=gen, dtype=torch.float64)
    close(torch.autograd.grad(v, x, g)[0], torch.autograd.grad(rv, x, g)[0])


def test_unfold_fold_parallel_path_match_torch():
    gen = torch.Generator().manual_seed(19)
    x = torch.randn(2, 8, 70, 66, generator=gen, dtype=torch.float64)
    kw = dict(kernel_size=3, padding=1, stride=1, dilation=1)
    u = CF.unfold(x, **kw)
    assert torch.equal(u, F.unfold(x, **kw))
    y = torch.randn(u.shape, generator=gen, dtype=torch.float64)
    close(CF.fold(y, (70, 66), **kw), F.fold(y, (70, 66), **kw))
