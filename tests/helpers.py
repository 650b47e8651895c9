"""Comparison helpers for the convx test-suite.

Accuracy rules
--------------
float64: convx must match torch float64 within atol = rtol = 1e-10 (elementwise).

float32: the reference is torch's op evaluated in float64 on *the same data*
(all test data is drawn in float32 and then widened, so both precisions see
identical inputs).  We measure torch's own float32 error against that reference,

    torch_err = max |torch_f32 - ref_f64|,     scale = max |ref_f64|

and require

    max |convx_f32 - ref_f64|  <=  max(F32_ERR_FACTOR * torch_err, F32_REL_FLOOR * scale)

(the floor keeps the rule sane when torch happens to be exact, e.g. for copies
or short sums).  Non-finite entries (NaN, +-inf) must appear in exactly the same
positions with the same values.  Shapes and dtypes must match exactly.

Both rules trip on a single wrong element: see test_conv2d.py::test_helper_*.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

F32_ERR_FACTOR = 4.0
F32_REL_FLOOR = 1e-6
F64_ATOL = 1e-10
F64_RTOL = 1e-10

FLOAT_DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]


# --------------------------------------------------------------------------- data
def rand(shape, dtype=torch.float64, generator=None) -> torch.Tensor:
    """Standard-normal data drawn in float32 (so it is exactly representable in both
    float32 and float64), returned in `dtype`."""
    return torch.randn(tuple(shape), dtype=torch.float32, generator=generator).to(dtype)


def distinct_rand(shape, dtype=torch.float64) -> torch.Tensor:
    """Pairwise distinct values (a random permutation of a grid), float32-representable.
    Useful for max-pooling where ties would make gradients ambiguous."""
    n = int(np.prod(shape)) if len(shape) else 1
    vals = (torch.randperm(n, dtype=torch.int64).to(torch.float32) - n / 2) / 8.0
    return vals.reshape(tuple(shape)).to(dtype)


# --------------------------------------------------------------------------- comparisons
def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return x


def _check_meta(actual, expected, name):
    assert isinstance(actual, torch.Tensor), f"{name}: expected a tensor, got {type(actual)}"
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")


def _split_nonfinite(actual64, ref64, name):
    """Assert NaN/inf positions and values agree; return mask of finite reference entries."""
    a_nan, r_nan = torch.isnan(actual64), torch.isnan(ref64)
    if not torch.equal(a_nan, r_nan):
        idx = torch.nonzero(a_nan != r_nan)[:5].tolist()
        raise AssertionError(f"{name}: NaN positions differ (first mismatches at {idx})")
    a_inf, r_inf = torch.isinf(actual64), torch.isinf(ref64)
    if not torch.equal(a_inf, r_inf) or not torch.equal(actual64[r_inf], ref64[r_inf]):
        idx = torch.nonzero((a_inf != r_inf) | (r_inf & (actual64 != ref64)))[:5].tolist()
        raise AssertionError(f"{name}: +-inf positions/values differ (first mismatches at {idx})")
    return torch.isfinite(ref64)


def _max_err(a64, r64, mask):
    if mask.sum() == 0:
        return 0.0, None
    diff = torch.where(mask, (a64 - r64).abs(), torch.zeros_like(a64))
    flat = int(torch.argmax(diff))
    idx = np.unravel_index(flat, tuple(diff.shape)) if diff.dim() else ()
    return float(diff.reshape(-1)[flat]), tuple(int(i) for i in idx)


def f32_tolerance(torch_f32, ref_f64) -> float:
    """Tolerance for a float32 result given torch's float32 result and the float64 reference."""
    t64 = torch_f32.detach().to(torch.float64)
    r64 = ref_f64.detach().to(torch.float64)
    mask = torch.isfinite(r64) & torch.isfinite(t64)
    if mask.sum() == 0:
        return 0.0
    torch_err = float((t64 - r64).abs()[mask].max())
    scale = float(r64.abs()[mask].max())
    return max(F32_ERR_FACTOR * torch_err, F32_REL_FLOOR * scale)


def assert_close_f32(actual, ref_f64, torch_f32, name="value"):
    """float32 rule: |actual - ref64| <= max(4 * torch_err, 1e-6 * max|ref64|)."""
    actual, ref_f64, torch_f32 = map(_as_tensor, (actual, ref_f64, torch_f32))
    _check_meta(actual, ref_f64, name)
    assert actual.dtype == torch.float32, f"{name}: dtype {actual.dtype} != float32"
    a64 = actual.detach().to(torch.float64)
    r64 = ref_f64.detach().to(torch.float64)
    mask = _split_nonfinite(a64, r64, name)
    tol = f32_tolerance(torch_f32, r64)
    err, where = _max_err(a64, r64, mask)
    if not err <= tol:
        raise AssertionError(
            f"{name}: float32 error {err:.3e} at {where} exceeds tolerance {tol:.3e} "
            f"(actual {float(a64[where]):.9g}, reference {float(r64[where]):.9g}; "
            f"torch f32 max error {float((torch_f32.detach().double() - r64).abs().max()) if r64.numel() else 0:.3e})")


def assert_close_f64(actual, expected, name="value"):
    """float64 rule: elementwise |a - e| <= 1e-10 + 1e-10 * |e|; non-finite must match exactly."""
    actual, expected = _as_tensor(actual), _as_tensor(expected)
    _check_meta(actual, expected, name)
    assert actual.dtype == torch.float64, f"{name}: dtype {actual.dtype} != float64"
    a64, e64 = actual.detach(), expected.detach().to(torch.float64)
    mask = _split_nonfinite(a64, e64, name)
    bound = F64_ATOL + F64_RTOL * e64.abs()
    bad = mask & ((a64 - e64).abs() > bound)
    if bool(bad.any()):
        where = tuple(torch.nonzero(bad)[0].tolist())
        raise AssertionError(
            f"{name}: float64 mismatch at {where}: actual {float(a64[where]):.17g} "
            f"expected {float(e64[where]):.17g} ({int(bad.sum())} bad of {a64.numel()})")


def assert_close(actual, ref_f64, torch_same=None, name="value"):
    """Dispatch on actual's dtype. ref_f64: torch's float64 result on the same data.
    torch_same: torch's result in actual's dtype (needed for float32)."""
    actual = _as_tensor(actual)
    if actual.dtype == torch.float32:
        assert torch_same is not None, "float32 comparison needs torch's float32 result"
        assert_close_f32(actual, ref_f64, torch_same, name)
    elif actual.dtype == torch.float64:
        assert_close_f64(actual, ref_f64, name)
    else:
        raise AssertionError(f"{name}: unexpected dtype {actual.dtype}")


def assert_bitwise_equal(actual, expected, name="value"):
    """Exact equality: same shape & dtype, same NaN positions, identical bits elsewhere
    (so -0.0 != 0.0). For integer tensors: plain equality."""
    actual, expected = _as_tensor(actual), _as_tensor(expected)
    _check_meta(actual, expected, name)
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.detach().contiguous(), expected.detach().contiguous()
    if a.is_floating_point():
        a_nan, e_nan = torch.isnan(a), torch.isnan(e)
        if not torch.equal(a_nan, e_nan):
            idx = torch.nonzero(a_nan != e_nan)[:5].tolist()
            raise AssertionError(f"{name}: NaN positions differ (first at {idx})")
        int_t = torch.int32 if a.dtype == torch.float32 else torch.int64
        bad = (~e_nan) & (a.view(int_t) != e.view(int_t))
    else:
        bad = a != e
    if bool(bad.any()):
        where = tuple(torch.nonzero(bad)[0].tolist())
        raise AssertionError(
            f"{name}: not bitwise equal at {where}: actual {a[where].item()!r} expected "
            f"{e[where].item()!r} ({int(bad.sum())} of {a.numel()} differ)")


# --------------------------------------------------------------------------- autograd driver
def _identity(t):
    return t


def check_against_torch(cx_fn: Callable, th_fn: Callable, inputs: Sequence[Optional[torch.Tensor]],
                        dtype: torch.dtype, requires_grad: Optional[Sequence[bool]] = None,
                        transforms: Optional[Sequence[Optional[Callable]]] = None,
                        grad: bool = True, seed: int = 1234, exact_forward: bool = False,
                        check_layout: bool = False, go_mode: str = "dense"):
    """Run cx_fn and th_fn on the same data and compare forward values and gradients.

    inputs:     float64 tensors (float32-representable, see `rand`) or None; passed positionally.
    dtype:      dtype convx runs in. For float32, torch is also run in float64 (reference)
                and float32 (to measure torch's own error).
    requires_grad: per input (default: all tensor inputs).
    transforms: per input, a differentiable view/copy op applied to the leaf before the call
                (e.g. transpose, channels_last, expand) -- grads are compared on the leaves.
    exact_forward: forward values must be bitwise equal to torch's (same dtype).
    check_layout: convx output must be channels_last-contiguous iff torch's output is.
    go_mode:    how the gradient reaches the op: "dense" (contiguous random grad_output),
                "noncontig" (same values, transposed strides), "channels_last" (4-D only),
                "sum" (loss = out.sum(): torch hands the op an expanded, stride-0 grad_output).
    Returns (cx_out, torch_out_same_dtype).
    """
    n = len(inputs)
    if requires_grad is None:
        requires_grad = [t is not None for t in inputs]
    if transforms is None:
        transforms = [None] * n
    transforms = [f or _identity for f in transforms]

    def prep(dt, want_grad):
        leaves, args = [], []
        for t, rg, f in zip(inputs, requires_grad, transforms):
            if t is None:
                leaves.append(None)
                args.append(None)
                continue
            leaf = t.detach().to(dt).clone().requires_grad_(bool(rg and want_grad))
            leaves.append(leaf)
            args.append(f(leaf))
        return leaves, args

    any_grad = grad and any(rg and t is not None for t, rg in zip(inputs, requires_grad))

    ref_leaves, ref_args = prep(torch.float64, any_grad)
    ref_out = th_fn(*ref_args)
    same_leaves, same_args = prep(dtype, any_grad)
    same_out = th_fn(*same_args)
    cx_leaves, cx_args = prep(dtype, any_grad)
    cx_out = cx_fn(*cx_args)

    assert isinstance(cx_out, torch.Tensor), f"convx returned {type(cx_out)}"
    assert cx_out.dtype == dtype, f"output dtype {cx_out.dtype} != {dtype}"
    if exact_forward:
        assert_bitwise_equal(cx_out, same_out, "forward")
    else:
        assert_close(cx_out, ref_out, same_out, "forward")
    if check_layout and cx_out.dim() == 4:
        cl = torch.channels_last
        assert cx_out.is_contiguous(memory_format=cl) == same_out.is_contiguous(memory_format=cl), (
            f"layout: convx output strides {cx_out.stride()} vs torch {same_out.stride()}")

    if not any_grad:
        return cx_out, same_out

    assert cx_out.requires_grad, "convx output does not require grad although an input does"
    torch.manual_seed(seed)
    go = rand(ref_out.shape, torch.float64)

    if go_mode not in ("dense", "noncontig", "channels_last", "sum"):
        raise ValueError(f"unknown go_mode {go_mode!r}")

    def run_backward(out, dt):
        if go_mode == "sum":
            out.sum().backward()  # grad_output reaches the op as an expanded (stride-0) tensor
            return
        g = go.to(dt)
        if go_mode == "noncontig" and g.dim() >= 2:
            g = g.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, transposed strides
        elif go_mode == "channels_last" and g.dim() == 4:
            g = g.contiguous(memory_format=torch.channels_last)
        out.backward(g)

    run_backward(ref_out, torch.float64)
    run_backward(same_out, dtype)
    run_backward(cx_out, dtype)

    for i, (rl, sl, cl_, rg) in enumerate(zip(ref_leaves, same_leaves, cx_leaves, requires_grad)):
        if rl is None:
            continue
        if not rg:
            assert cl_.grad is None, f"grad of input {i} computed although requires_grad=False"
            continue
        assert cl_.grad is not None, f"grad of input {i} missing"
        assert cl_.grad.dtype == dtype, f"grad {i} dtype {cl_.grad.dtype} != {dtype}"
        assert_close(cl_.grad, rl.grad, sl.grad, f"grad[{i}]")
    return cx_out, same_out
