"""convx.functional.max_pool2d vs torch.nn.functional.max_pool2d: values (bitwise), indices, gradients."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convx import functional as cxF

from cases import POOL_CASES, PoolCase
from helpers import (DTYPE_IDS, FLOAT_DTYPES, assert_bitwise_equal, check_against_torch,
                     distinct_rand, rand)

dtypes = pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
case_ids = lambda c: c.id  # noqa: E731

NAN = float("nan")
INF = float("inf")


def cx_pool(case, **over):
    kw = dict(case.kwargs(), **over)
    return lambda x: cxF.max_pool2d(x, case.kernel_size, **kw)


def th_pool(case, **over):
    kw = dict(case.kwargs(), **over)
    return lambda x: F.max_pool2d(x, case.kernel_size, **kw)


def assert_pool_equal(x, case, **over):
    """convx(x) values bitwise equal and indices equal to torch(x); returns convx (values, indices).
    torch is evaluated on a contiguous copy of x (its canonical kernel)."""
    kw = dict(case.kwargs(), **over)
    got = cxF.max_pool2d(x, case.kernel_size, return_indices=True, **kw)
    exp_v, exp_i = F.max_pool2d(x.detach().contiguous(), case.kernel_size, return_indices=True, **kw)
    assert isinstance(got, tuple) and len(got) == 2, type(got)
    v, i = got
    assert i.dtype == torch.int64, i.dtype
    assert_bitwise_equal(v, exp_v, "values")
    assert_bitwise_equal(i, exp_i, "indices")
    return v, i


# --------------------------------------------------------------------------- main table
@pytest.mark.parametrize("case", POOL_CASES, ids=case_ids)
@dtypes
def test_max_pool2d_values_and_indices(case, dtype):
    torch.manual_seed(0)
    x = rand(case.input_shape, dtype)
    v, i = assert_pool_equal(x, case)
    # indices point at the reported values inside each (n, c) plane
    if v.numel():
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        gathered = torch.gather(flat, 2, i.reshape(i.shape[0], i.shape[1], -1)).reshape(v.shape)
        assert_bitwise_equal(gathered, v, "x[indices]")


@pytest.mark.parametrize("case", POOL_CASES, ids=case_ids)
@dtypes
def test_max_pool2d_grad(case, dtype):
    torch.manual_seed(1)
    x = distinct_rand(case.input_shape)  # no ties: the gradient routing is unambiguous
    check_against_torch(cx_pool(case), th_pool(case), [x], dtype, exact_forward=True)


@pytest.mark.parametrize("case", POOL_CASES[:8] + [c for c in POOL_CASES if c.ceil_mode][:3], ids=case_ids)
@dtypes
def test_max_pool2d_grad_through_return_indices(case, dtype):
    """Backward through the values output of return_indices=True."""
    torch.manual_seed(2)
    x = distinct_rand(case.input_shape)

    def first(fn):
        return lambda t: fn(t)[0]

    check_against_torch(first(cx_pool(case, return_indices=True)), first(th_pool(case, return_indices=True)),
                        [x], dtype, exact_forward=True)


# --------------------------------------------------------------------------- return_indices / stride default
@dtypes
def test_return_indices_false_returns_tensor(dtype):
    torch.manual_seed(3)
    c = POOL_CASES[2]
    x = rand(c.input_shape, dtype)
    out = cxF.max_pool2d(x, c.kernel_size, **c.kwargs())
    assert isinstance(out, torch.Tensor)
    assert_bitwise_equal(out, F.max_pool2d(x, c.kernel_size, **c.kwargs()))
    out2 = cxF.max_pool2d(x, c.kernel_size, **c.kwargs(), return_indices=False)
    assert isinstance(out2, torch.Tensor)
    assert_bitwise_equal(out2, out)


@pytest.mark.parametrize("kernel", [2, 3, (2, 3)], ids=str)
@dtypes
def test_stride_none_defaults_to_kernel(kernel, dtype):
    torch.manual_seed(4)
    x = rand((2, 2, 7, 8), dtype)
    exp_v, exp_i = F.max_pool2d(x, kernel, kernel, return_indices=True)
    # positional, keyword None, and omitted
    for got in (cxF.max_pool2d(x, kernel, return_indices=True),
                cxF.max_pool2d(x, kernel, None, return_indices=True),
                cxF.max_pool2d(x, kernel, stride=None, return_indices=True)):
        assert_bitwise_equal(got[0], exp_v)
        assert_bitwise_equal(got[1], exp_i)


# --------------------------------------------------------------------------- NaN / -inf / ties
NAN_CASES = [
    PoolCase("nan_k2_s1", 1, 1, 4, 4, 2, 1),
    PoolCase("nan_k3_s2_p1", 2, 2, 7, 6, 3, 2, 1),
    PoolCase("nan_dil2_ceil", 2, 2, 7, 8, 3, 2, 1, 2, ceil_mode=True),
]


@dtypes
def test_nan_last_nan_wins_handmade(dtype):
    """A window with several NaNs: value NaN, index of the last NaN (row-major), as torch."""
    x = torch.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0] = NAN  # first window (rows 0-1, cols 0-1): NaNs at 0 and 5
    x[0, 0, 1, 1] = NAN
    x[0, 0, 2, 3] = NAN  # second-row right window: NaN at 11 only, 15 is larger
    v, i = assert_pool_equal(x, PoolCase("h", 1, 1, 4, 4, 2, 2))
    assert torch.isnan(v[0, 0, 0, 0]) and int(i[0, 0, 0, 0]) == 5
    assert torch.isnan(v[0, 0, 1, 1]) and int(i[0, 0, 1, 1]) == 11
    assert float(v[0, 0, 0, 1]) == 7.0 and int(i[0, 0, 0, 1]) == 7


@pytest.mark.parametrize("case", NAN_CASES, ids=case_ids)
@pytest.mark.parametrize("frac", [0.1, 0.4])
@dtypes
def test_nan_random(case, frac, dtype):
    torch.manual_seed(5)
    x = rand(case.input_shape, dtype)
    x[torch.rand(x.shape) < frac] = NAN
    assert_pool_equal(x, case)


@pytest.mark.parametrize("case", NAN_CASES, ids=case_ids)
@dtypes
def test_nan_grad(case, dtype):
    """Gradient is routed to the winning NaN, as in torch."""
    torch.manual_seed(6)
    x = distinct_rand(case.input_shape)
    x[torch.rand(x.shape) < 0.2] = NAN
    check_against_torch(cx_pool(case), th_pool(case), [x], dtype, exact_forward=True)


NEG_INF_CASES = [
    PoolCase("ninf_k2_s2_p1", 2, 2, 6, 6, 2, 2, 1),
    PoolCase("ninf_k3_s1_p1", 2, 2, 6, 5, 3, 1, 1),
    PoolCase("ninf_k3_s2_p1_dil2_ceil", 2, 2, 7, 7, 3, 2, 1, 2, ceil_mode=True),
    PoolCase("ninf_k3_s2_p1_ceil", 2, 2, 6, 6, 3, 2, 1, ceil_mode=True),
]


@pytest.mark.parametrize("case", NEG_INF_CASES, ids=case_ids)
@pytest.mark.parametrize("fill", ["all", "block"])
@dtypes
def test_all_neg_inf_windows(case, fill, dtype):
    """Windows holding only -inf (plus padding): value -inf and a valid index equal to torch's."""
    torch.manual_seed(7)
    x = rand(case.input_shape, dtype)
    if fill == "all":
        x.fill_(-INF)
    else:
        x[..., : case.H // 2 + 1, : case.W // 2 + 1] = -INF
    v, i = assert_pool_equal(x, case)
    assert bool((i >= 0).all()) and bool((i < case.H * case.W).all()), i
    if fill == "all":
        assert bool((v == -INF).all())


@pytest.mark.parametrize("case", NEG_INF_CASES, ids=case_ids)
@dtypes
def test_neg_inf_grad(case, dtype):
    torch.manual_seed(8)
    x = distinct_rand(case.input_shape)
    x[..., : case.H // 2 + 1, : case.W // 2 + 1] = -INF
    check_against_torch(cx_pool(case), th_pool(case), [x], dtype, exact_forward=True)


@dtypes
def test_pos_inf(dtype):
    torch.manual_seed(9)
    c = NEG_INF_CASES[1]
    x = rand(c.input_shape, dtype)
    x[torch.rand(x.shape) < 0.2] = INF
    x[torch.rand(x.shape) < 0.2] = -INF
    assert_pool_equal(x, c)


TIE_CASES = [
    PoolCase("tie_k2_s1", 2, 2, 5, 6, 2, 1),
    PoolCase("tie_k3_s2_p1", 2, 2, 7, 7, 3, 2, 1),
    PoolCase("tie_k3_s1_p1_dil2", 2, 2, 7, 8, 3, 1, 1, 2),
    PoolCase("tie_k_2x3_ceil", 2, 2, 7, 8, (2, 3), (2, 2), (1, 1), ceil_mode=True),
]


@pytest.mark.parametrize("case", TIE_CASES, ids=case_ids)
@pytest.mark.parametrize("levels", [1, 3])
@dtypes
def test_ties_first_max(case, levels, dtype):
    """Many equal values: index equal to torch's (first maximum in row-major window order)."""
    torch.manual_seed(10)
    x = torch.randint(0, levels, case.input_shape).to(dtype)
    assert_pool_equal(x, case)


@dtypes
def test_ties_handmade(dtype):
    x = torch.tensor([[1., 5., 5.], [5., 2., 5.], [0., 5., 1.]], dtype=dtype).reshape(1, 1, 3, 3)
    v, i = assert_pool_equal(x, PoolCase("h", 1, 1, 3, 3, 2, 1))
    assert i.reshape(-1).tolist() == [1, 1, 3, 5]


@dtypes
def test_signed_zero_ties(dtype):
    """-0.0 and +0.0 compare equal: the first one wins and its bits are returned (as torch)."""
    x = torch.tensor([[-0.0, 0.0], [0.0, -0.0]], dtype=dtype).reshape(1, 1, 2, 2)
    assert_pool_equal(x, PoolCase("h", 1, 1, 2, 2, 2, 1))
    assert_pool_equal(-x, PoolCase("h", 1, 1, 2, 2, 2, 1))


@pytest.mark.parametrize("case", TIE_CASES[:2], ids=case_ids)
@dtypes
def test_ties_grad(case, dtype):
    torch.manual_seed(11)
    x = torch.randint(0, 3, case.input_shape).to(torch.float64)
    check_against_torch(cx_pool(case), th_pool(case), [x], dtype, exact_forward=True)


# --------------------------------------------------------------------------- layouts
LAYOUT_CASES = [POOL_CASES[2], PoolCase("layout_ceil_dil", 2, 3, 7, 8, 3, 2, 1, (1, 2), ceil_mode=True)]


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


LAYOUTS = {
    "channels_last": (lambda c: c.input_shape, _cl),
    "transposed_hw": (lambda c: (c.N, c.C, c.W, c.H), lambda t: t.transpose(2, 3)),
    "sliced": (lambda c: (c.N, c.C + 1, 2 * c.H, c.W + 1), lambda t: t[:, 1:, ::2, :-1]),
    "batch_channel_permuted": (lambda c: (c.C, c.N, c.H, c.W), lambda t: t.transpose(0, 1)),
    "expanded_N": (lambda c: (1, c.C, c.H, c.W), None),  # transform built per case below
}


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=case_ids)
@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
@dtypes
def test_layouts(case, layout, dtype):
    torch.manual_seed(12)
    shape_fn, tf = LAYOUTS[layout]
    if layout == "expanded_N":
        tf = lambda t: t.expand(case.N, -1, -1, -1)  # noqa: E731
    x = distinct_rand(shape_fn(case))
    view = tf(x.to(dtype))
    assert tuple(view.shape) == case.input_shape and not view.is_contiguous()
    assert_pool_equal(view, case)
    check_against_torch(cx_pool(case), th_pool(case), [x], dtype, transforms=[tf], exact_forward=True,
                        check_layout=(layout == "channels_last"))


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=case_ids)
@pytest.mark.parametrize("go_mode", ["noncontig", "channels_last", "sum"])
@pytest.mark.parametrize("channels_last_input", [False, True], ids=["contig_in", "cl_in"])
@dtypes
def test_grad_output_layouts(case, go_mode, channels_last_input, dtype):
    """Backward with a non-contiguous / channels_last / expanded (out.sum()) grad_output."""
    torch.manual_seed(17)
    x = distinct_rand(case.input_shape)
    check_against_torch(cx_pool(case), th_pool(case), [x], dtype, exact_forward=True,
                        transforms=[_cl if channels_last_input else None], go_mode=go_mode)


@dtypes
def test_channels_last_output_layout(dtype):
    torch.manual_seed(13)
    c = LAYOUT_CASES[0]
    x = _cl(rand(c.input_shape, dtype))
    v, i = cxF.max_pool2d(x, c.kernel_size, **c.kwargs(), return_indices=True)
    assert v.is_contiguous(memory_format=torch.channels_last), v.stride()
    ev, ei = F.max_pool2d(x, c.kernel_size, **c.kwargs(), return_indices=True)
    assert_bitwise_equal(v, ev)
    assert_bitwise_equal(i, ei)


@pytest.mark.parametrize("case", [c for c in LAYOUT_CASES + TIE_CASES[:2]], ids=case_ids)
@dtypes
def test_channels_last_ties_and_nan(case, dtype):
    torch.manual_seed(14)
    x = torch.randint(0, 3, case.input_shape).to(dtype)
    x[torch.rand(x.shape) < 0.15] = NAN
    assert_pool_equal(_cl(x), case)


# --------------------------------------------------------------------------- 3-D / N=0
UNBATCHED = [PoolCase("unbatched_k2", 1, 3, 6, 7, 2), PoolCase("unbatched_k3_s2_p1_ceil", 1, 2, 7, 6, 3, 2, 1,
                                                                ceil_mode=True)]


@pytest.mark.parametrize("case", UNBATCHED, ids=case_ids)
@dtypes
def test_unbatched_3d(case, dtype):
    torch.manual_seed(15)
    x = distinct_rand(case.input_shape[1:])
    v, i = assert_pool_equal(x.to(dtype), case)
    assert v.dim() == 3 and i.dim() == 3
    check_against_torch(cx_pool(case), th_pool(case), [x], dtype, exact_forward=True)


@pytest.mark.parametrize("shape", [(0, 3, 6, 6), (0, 1, 5, 6)], ids=["N0_C3", "N0_C1"])
@dtypes
def test_empty_batch(shape, dtype):
    c = PoolCase("empty", *shape, kernel_size=3, stride=2, padding=1)
    x = torch.empty(shape, dtype=dtype)
    v, i = assert_pool_equal(x, c)
    assert v.shape == F.max_pool2d(x, 3, 2, 1).shape
    check_against_torch(cx_pool(c), th_pool(c), [x.double()], dtype, exact_forward=True)


# --------------------------------------------------------------------------- numpy path
@pytest.mark.parametrize("case", [POOL_CASES[2], POOL_CASES[-3]], ids=case_ids)
@pytest.mark.parametrize("np_dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_numpy(case, np_dtype):
    torch.manual_seed(16)
    x = rand(case.input_shape).numpy().astype(np_dtype)
    x[0, 0, 0, :3] = np.nan
    out = cxF.max_pool2d(x, case.kernel_size, **case.kwargs())
    assert isinstance(out, np.ndarray) and out.dtype == np_dtype
    ev, ei = F.max_pool2d(torch.from_numpy(x), case.kernel_size, **case.kwargs(), return_indices=True)
    assert_bitwise_equal(torch.from_numpy(out), ev)
    v, i = cxF.max_pool2d(x, case.kernel_size, **case.kwargs(), return_indices=True)
    assert isinstance(v, np.ndarray) and isinstance(i, np.ndarray)
    assert i.dtype == np.int64 and v.dtype == np_dtype
    assert_bitwise_equal(torch.from_numpy(v), ev)
    assert np.array_equal(i, ei.numpy())


def test_repeat_call_reuses_validated_params_and_still_checks_what_changed(monkeypatch):
    gen = torch.Generator().manual_seed(32)
    x = torch.randn(2, 3, 9, 8, generator=gen)
    kw = dict(kernel_size=(3, 2), stride=2, padding=(1, 0), dilation=1, ceil_mode=True)
    want, want_idx = F.max_pool2d(x, return_indices=True, **kw)
    monkeypatch.setattr(cxF, "_validated_params", {})
    torch.testing.assert_close(cxF.max_pool2d(x, **kw), want)
    assert len(cxF._validated_params) == 1

    def no_full_path(*args, **kwargs):
        raise AssertionError("a repeat call took the full path")

    with monkeypatch.context() as m:  # a repeat call skips the full path's argument parsing
        m.setattr(cxF, "positive_pair", no_full_path)
        out, idx = cxF.max_pool2d(x, return_indices=True, **kw)
        torch.testing.assert_close(out, want)
        assert torch.equal(idx, want_idx)
        torch.testing.assert_close(cxF.max_pool2d(-x, **kw), F.max_pool2d(-x, **kw))

    # What the key leaves out is checked again, or sends the call down the full path.
    with pytest.raises(TypeError, match="kernel_size must be an int"):
        cxF.max_pool2d(x, (3, True), 2, (1, 0), 1, True)
    with pytest.raises(TypeError, match="float32 or float64"):
        cxF.max_pool2d(x.half(), **kw)
    torch.testing.assert_close(cxF.max_pool2d(x, (3, 2), 2, (1, 0), 1, 0), F.max_pool2d(x, (3, 2), 2, (1, 0), 1, False))
    wide = torch.randn(2, 3, 9, 16, generator=gen)[..., ::2]  # not contiguous
    torch.testing.assert_close(cxF.max_pool2d(wide, **kw), F.max_pool2d(wide, **kw))
    nhwc = x.contiguous(memory_format=torch.channels_last)
    out = cxF.max_pool2d(nhwc, **kw)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(cxF.max_pool2d(x[0], **kw), want[0])  # unbatched
