"""convx.functional.unfold / fold vs torch.nn.functional.unfold / fold, plus an independent numpy check."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convx import functional as cxF

from cases import FOLD_CASES, FoldCase, _pair
from helpers import (DTYPE_IDS, FLOAT_DTYPES, assert_bitwise_equal, assert_close, assert_close_f32,
                     assert_close_f64, check_against_torch, rand)

dtypes = pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
case_ids = lambda c: c.id  # noqa: E731


def cx_unfold(case):
    return lambda x: cxF.unfold(x, **case.kwargs())


def th_unfold(case):
    return lambda x: F.unfold(x, **case.kwargs())


def cx_fold(case):
    return lambda x: cxF.fold(x, case.output_size, **case.kwargs())


def th_fold(case):
    return lambda x: F.fold(x, case.output_size, **case.kwargs())


def np_coverage(case: FoldCase):
    """Independent numpy count of how many sliding blocks cover each (h, w) pixel."""
    (kh, kw), (dh, dw) = _pair(case.kernel_size), _pair(case.dilation)
    (ph, pw), (sh, sw) = _pair(case.padding), _pair(case.stride)
    lh = (case.H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    lw = (case.W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    count = np.zeros((case.H, case.W), dtype=np.float64)
    for bh in range(lh):
        for bw in range(lw):
            for i in range(kh):
                for j in range(kw):
                    h, w = bh * sh - ph + i * dh, bw * sw - pw + j * dw
                    if 0 <= h < case.H and 0 <= w < case.W:
                        count[h, w] += 1
    return count


def np_unfold(x, case: FoldCase):
    """Independent numpy im2col for a (N, C, H, W) array -> (N, C*kh*kw, L)."""
    (kh, kw), (dh, dw) = _pair(case.kernel_size), _pair(case.dilation)
    (ph, pw), (sh, sw) = _pair(case.padding), _pair(case.stride)
    N, C, H, W = x.shape
    lh = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    lw = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((N, C, kh, kw, lh, lw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            for bh in range(lh):
                for bw in range(lw):
                    h, w = bh * sh - ph + i * dh, bw * sw - pw + j * dw
                    if 0 <= h < H and 0 <= w < W:
                        out[:, :, i, j, bh, bw] = x[:, :, h, w]
    return out.reshape(N, C * kh * kw, lh * lw)


# --------------------------------------------------------------------------- vs torch
@pytest.mark.parametrize("case", FOLD_CASES, ids=case_ids)
@dtypes
def test_unfold(case, dtype):
    """unfold is a pure copy: values bitwise equal to torch's; gradient (a fold) close."""
    torch.manual_seed(0)
    x = rand(case.image_shape)
    out, _ = check_against_torch(cx_unfold(case), th_unfold(case), [x], dtype, exact_forward=True)
    assert tuple(out.shape) == case.columns_shape


@pytest.mark.parametrize("case", FOLD_CASES, ids=case_ids)
@dtypes
def test_fold(case, dtype):
    """fold sums overlapping blocks: values close to torch's; gradient (an unfold) close."""
    torch.manual_seed(1)
    cols = rand(case.columns_shape)
    out, _ = check_against_torch(cx_fold(case), th_fold(case), [cols], dtype)
    assert tuple(out.shape) == case.image_shape


@pytest.mark.parametrize("case", [c for c in FOLD_CASES if c.N], ids=case_ids)
@dtypes
def test_unfold_matches_numpy_im2col(case, dtype):
    torch.manual_seed(2)
    x = rand(case.image_shape, dtype)
    got = cxF.unfold(x, **case.kwargs())
    exp = np_unfold(x.numpy(), case)
    assert_bitwise_equal(got, torch.from_numpy(exp))


# --------------------------------------------------------------------------- fold(unfold(x)) relation
@pytest.mark.parametrize("case", FOLD_CASES, ids=case_ids)
@dtypes
def test_fold_of_unfold_is_x_times_coverage(case, dtype):
    """fold(unfold(x)) == x * (number of blocks covering each pixel), the count computed in numpy."""
    torch.manual_seed(3)
    x = rand(case.image_shape, dtype)
    got = cxF.fold(cxF.unfold(x, **case.kwargs()), case.output_size, **case.kwargs())
    cov = torch.from_numpy(np_coverage(case))
    exp64 = x.double() * cov
    if dtype == torch.float32:
        # torch-side float32 estimate of the same product sets the error scale
        assert_close_f32(got, exp64, (x * cov.to(dtype)))
    else:
        assert_close_f64(got, exp64)
    # ones -> coverage map itself (exact small integers)
    ones = torch.ones(case.image_shape, dtype=dtype)
    div = cxF.fold(cxF.unfold(ones, **case.kwargs()), case.output_size, **case.kwargs())
    assert_bitwise_equal(div, cov.to(dtype).expand(case.image_shape).contiguous(), "coverage")


@pytest.mark.parametrize("case", FOLD_CASES[:6], ids=case_ids)
@dtypes
def test_unfold_of_fold_adjoint(case, dtype):
    """<unfold(x), y> == <x, fold(y)>: fold is the adjoint of unfold (float64 dot products)."""
    torch.manual_seed(4)
    x = rand(case.image_shape, dtype)
    y = rand(case.columns_shape, dtype)
    lhs = float((cxF.unfold(x, **case.kwargs()).double() * y.double()).sum())
    rhs = float((x.double() * cxF.fold(y, case.output_size, **case.kwargs()).double()).sum())
    scale = float((F.unfold(x.double().abs(), **case.kwargs()) * y.double().abs()).sum())
    tol = 1e-6 * scale if dtype == torch.float32 else 1e-12 * scale
    assert abs(lhs - rhs) <= tol, (lhs, rhs)
    # and both equal the torch value of the same inner product
    ref = float((F.unfold(x.double(), **case.kwargs()) * y.double()).sum())
    assert abs(lhs - ref) <= tol, (lhs, ref)


# --------------------------------------------------------------------------- layouts
LAYOUT_CASE = FoldCase("layout", 2, 3, 6, 7, (2, 3), dilation=(1, 2), padding=1, stride=(1, 2))


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


UNFOLD_LAYOUTS = {
    "channels_last": (lambda c: c.image_shape, _cl),
    "transposed_hw": (lambda c: (c.N, c.C, c.W, c.H), lambda t: t.transpose(2, 3)),
    "sliced": (lambda c: (c.N, c.C, 2 * c.H, c.W + 1), lambda t: t[:, :, ::2, 1:]),
    "expanded_N": (lambda c: (1, c.C, c.H, c.W), lambda t: t.expand(2, -1, -1, -1)),
}


@pytest.mark.parametrize("layout", list(UNFOLD_LAYOUTS), ids=list(UNFOLD_LAYOUTS))
@dtypes
def test_unfold_layouts(layout, dtype):
    torch.manual_seed(5)
    c = LAYOUT_CASE
    shape_fn, tf = UNFOLD_LAYOUTS[layout]
    x = rand(shape_fn(c))
    v = tf(x)
    assert tuple(v.shape) == c.image_shape and not v.is_contiguous()
    check_against_torch(cx_unfold(c), th_unfold(c), [x], dtype, transforms=[tf], exact_forward=True)


FOLD_LAYOUTS = {
    "transposed": (lambda c: (c.N, c.num_blocks, c.columns_shape[1]), lambda t: t.transpose(1, 2)),
    "sliced": (lambda c: (c.N, 2 * c.columns_shape[1], c.num_blocks + 3), lambda t: t[:, ::2, 2:-1]),
    "expanded_N": (lambda c: (1,) + c.columns_shape[1:], lambda t: t.expand(2, -1, -1)),
}


@pytest.mark.parametrize("layout", list(FOLD_LAYOUTS), ids=list(FOLD_LAYOUTS))
@dtypes
def test_fold_layouts(layout, dtype):
    torch.manual_seed(6)
    c = LAYOUT_CASE
    shape_fn, tf = FOLD_LAYOUTS[layout]
    cols = rand(shape_fn(c))
    v = tf(cols)
    assert tuple(v.shape) == c.columns_shape and not v.is_contiguous()
    check_against_torch(cx_fold(c), th_fold(c), [cols], dtype, transforms=[tf])


@pytest.mark.parametrize("case", [LAYOUT_CASE, FOLD_CASES[1], [c for c in FOLD_CASES if c.N is None][-1]],
                         ids=case_ids)
@pytest.mark.parametrize("go_mode", ["noncontig", "sum"])
@pytest.mark.parametrize("op", ["unfold", "fold"])
@dtypes
def test_grad_output_layouts(case, go_mode, op, dtype):
    """Backward with a non-contiguous or expanded (out.sum()) grad_output."""
    torch.manual_seed(9)
    if op == "unfold":
        check_against_torch(cx_unfold(case), th_unfold(case), [rand(case.image_shape)], dtype,
                            exact_forward=True, go_mode=go_mode)
    else:
        check_against_torch(cx_fold(case), th_fold(case), [rand(case.columns_shape)], dtype, go_mode=go_mode)


# --------------------------------------------------------------------------- numpy path
NUMPY_CASES = [FOLD_CASES[3], FOLD_CASES[1], [c for c in FOLD_CASES if c.N is None][-1]]


@pytest.mark.parametrize("case", NUMPY_CASES, ids=case_ids)
@pytest.mark.parametrize("np_dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_numpy_in_numpy_out(case, np_dtype):
    torch.manual_seed(7)
    x = rand(case.image_shape).numpy().astype(np_dtype)
    u = cxF.unfold(x, **case.kwargs())
    assert isinstance(u, np.ndarray) and u.dtype == np_dtype
    assert_bitwise_equal(torch.from_numpy(u), F.unfold(torch.from_numpy(x), **case.kwargs()), "unfold")

    cols64 = rand(case.columns_shape)
    cols = cols64.numpy().astype(np_dtype)
    f = cxF.fold(cols, case.output_size, **case.kwargs())
    assert isinstance(f, np.ndarray) and f.dtype == np_dtype
    assert f.shape == case.image_shape
    ref64 = F.fold(cols64, case.output_size, **case.kwargs())
    same = F.fold(torch.from_numpy(cols), case.output_size, **case.kwargs())
    assert_close(torch.from_numpy(f), ref64, same, "fold")


def test_numpy_noncontiguous():
    torch.manual_seed(8)
    c = LAYOUT_CASE
    x = rand((c.N, c.C, c.W, c.H)).numpy().astype(np.float32).transpose(0, 1, 3, 2)
    assert not x.flags.c_contiguous
    u = cxF.unfold(x, **c.kwargs())
    assert isinstance(u, np.ndarray)
    assert_bitwise_equal(torch.from_numpy(u), F.unfold(torch.from_numpy(np.ascontiguousarray(x)), **c.kwargs()))
