"""Bad-input tests for convx.

Contract (spec/API.md, "Errors"): every argument is validated before anything is
allocated or launched.  Bad values / shapes / sizes raise ValueError, bad types and
dtypes raise TypeError, the message names the argument and (where reasonable) the bad
value, and nothing crashes.

Each case checks the exact exception class (a TypeError where a ValueError is due
fails the test, and vice versa) and a message pattern.  Patterns built by ``allof``
require every listed piece to appear somewhere in the message, in any order.
"""

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import convx.functional as CF
import convx.nn as cnn

I64_MAX = 2**63 - 1
BACKENDS = ["torch", "numpy"]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def allof(*pieces):
    """Regex that matches when every piece (itself a regex) occurs in the message."""
    return "(?is)^" + "".join(f"(?=.*(?:{p}))" for p in pieces)


def num(v):
    """Regex for the integer v as a standalone number (not part of a longer number)."""
    return rf"(?<![\d.]){re.escape(str(v))}(?!\d)"


def typ(v):
    """Regex for how a message might show a value of the wrong type."""
    if isinstance(v, bool):
        return rf"bool|{v}"
    if isinstance(v, float):
        return rf"float|{re.escape(repr(float(v)))}"
    if isinstance(v, str):
        return rf"str|{re.escape(v)}"
    if v is None:
        return "None"
    return re.escape(type(v).__name__)


def _rid(v):
    return "object()" if type(v) is object else repr(v)


def make(shape, dtype="float32", backend="torch", seed=0):
    """A random array of the given shape/dtype as a torch tensor or numpy array."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    if dtype == "bool":
        t = t > 0
    else:
        t = t.to(getattr(torch, dtype))
    if backend == "torch":
        return t
    assert backend == "numpy"
    return np.ascontiguousarray(t.numpy())


# Valid base calls.  Every bad-argument case below changes exactly one thing.
def conv_call(backend="torch", x=(1, 4, 6, 6), w=(4, 4, 3, 3), b=None,
              xdt="float32", wdt=None, bdt=None, **kw):
    X = make(x, xdt, backend, 1)
    W = make(w, wdt or xdt, backend, 2)
    B = None if b is None else make(b, bdt or xdt, backend, 3)
    return CF.conv2d(X, W, B, **kw)


def pool_call(backend="torch", x=(1, 2, 6, 6), dt="float32", kernel_size=2, **kw):
    return CF.max_pool2d(make(x, dt, backend), kernel_size, **kw)


def unfold_call(backend="torch", x=(1, 2, 6, 6), dt="float32", kernel_size=2, **kw):
    return CF.unfold(make(x, dt, backend), kernel_size, **kw)


# C=2, kernel 2x2 -> channel dim 8; output 4x4, stride 1 -> 3*3 = 9 blocks.
def fold_call(backend="torch", x=(1, 8, 9), dt="float32", output_size=(4, 4),
              kernel_size=2, **kw):
    return CF.fold(make(x, dt, backend), output_size, kernel_size, **kw)


CALLS = {"conv2d": conv_call, "max_pool2d": pool_call, "unfold": unfold_call,
         "fold": fold_call}


def test_base_calls_are_valid():
    """The base calls used by every case below must themselves succeed, so that each
    error case isolates exactly one bad argument."""
    for backend in BACKENDS:
        assert tuple(conv_call(backend).shape) == (1, 4, 4, 4)
        assert tuple(conv_call(backend, b=(4,)).shape) == (1, 4, 4, 4)
        assert tuple(pool_call(backend).shape) == (1, 2, 3, 3)
        assert tuple(unfold_call(backend).shape) == (1, 8, 25)
        assert tuple(fold_call(backend).shape) == (1, 2, 4, 4)


# --------------------------------------------------------------------------------------
# integer-like arguments: bad values, out-of-int64 values, bad types, bad lengths
# --------------------------------------------------------------------------------------
# (op, argument name, must be positive (else non-negative), accepts pairs, None ok,
#  str is a valid kind of value (conv2d padding strings))
INT_ARGS = [
    ("conv2d", "stride", True, True, False, False),
    ("conv2d", "padding", False, True, False, True),
    ("conv2d", "dilation", True, True, False, False),
    ("conv2d", "groups", True, False, False, False),
    ("max_pool2d", "kernel_size", True, True, False, False),
    ("max_pool2d", "stride", True, True, True, False),
    ("max_pool2d", "padding", False, True, False, False),
    ("max_pool2d", "dilation", True, True, False, False),
    ("unfold", "kernel_size", True, True, False, False),
    ("unfold", "dilation", True, True, False, False),
    ("unfold", "padding", False, True, False, False),
    ("unfold", "stride", True, True, False, False),
    ("fold", "output_size", True, True, False, False),
    ("fold", "kernel_size", True, True, False, False),
    ("fold", "dilation", True, True, False, False),
    ("fold", "padding", False, True, False, False),
    ("fold", "stride", True, True, False, False),
]


def _value_cases():
    for op, name, positive, pairs, _none_ok, _str_ok in INT_ARGS:
        if positive:
            bad = [(0, 0), (-1, -1), (-7, -7)]
            if pairs:
                bad += [((0, 1), 0), ((1, 0), 0), ((2, -3), -3), ([-1, 2], -1)]
        else:
            bad = [(-1, -1), (-5, -5)]
            if pairs:
                bad += [((0, -2), -2), ((-1, 0), -1), ([-3, 1], -3)]
        for v, shown in bad:
            yield pytest.param(op, name, v, shown, id=f"{op}-{name}={v!r}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,name,value,shown", list(_value_cases()))
def test_nonpositive_or_negative_int_args(backend, op, name, value, shown):
    with pytest.raises(ValueError, match=allof(name, num(shown))):
        CALLS[op](backend, **{name: value})


def _range_cases():
    for op, name, _positive, pairs, _n, _s in INT_ARGS:
        vals = [(2**63, 2**63), (-(2**63) - 1, -(2**63) - 1), (2**100, 2**100),
                (2**64 + 1, 2**64 + 1)]
        if pairs:
            vals += [((1, 2**63), 2**63), ((2**100, 1), 2**100)]
        for v, shown in vals:
            yield pytest.param(op, name, v, shown, id=f"{op}-{name}={v!r}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,name,value,shown", list(_range_cases()))
def test_python_ints_outside_int64(backend, op, name, value, shown):
    """Python ints outside int64 -> ValueError (not OverflowError, not a pybind11
    TypeError about incompatible arguments) naming the argument and the value."""
    with pytest.raises(ValueError, match=allof(name, num(shown))):
        CALLS[op](backend, **{name: value})


def _type_cases():
    for op, name, _positive, pairs, none_ok, str_ok in INT_ARGS:
        vals = [True, False, 2.0, 1.5, np.float64(2.0), object()]
        if not str_ok:
            vals += ["2"]
        if not none_ok:
            vals += [None]
        if pairs:
            vals += [(1, 2.0), (True, 1), (1, "1"), [2, None], (1.0, 1.0)]
        else:
            vals += [(1, 1), [2]]
        for v in vals:
            yield pytest.param(op, name, v, id=f"{op}-{name}={_rid(v)}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,name,value", list(_type_cases()))
def test_wrong_type_for_int_args(backend, op, name, value):
    """bool/float/str/None (alone or inside a pair) where an int is required -> TypeError."""
    if isinstance(value, (tuple, list)) or type(value) is object:
        pat = allof(name)
    else:
        pat = allof(name, typ(value))
    with pytest.raises(TypeError, match=pat):
        CALLS[op](backend, **{name: value})


def _length_cases():
    for op, name, _positive, pairs, _none_ok, _s in INT_ARGS:
        if not pairs:
            continue
        vals = [(1, 1, 1), [1, 1, 1, 1]]
        if not (op == "max_pool2d" and name == "stride"):  # torch: stride=() means default
            vals += [()]
        for v in vals:
            yield pytest.param(op, name, v, id=f"{op}-{name}={v!r}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,name,value", list(_length_cases()))
def test_wrong_tuple_length(backend, op, name, value):
    with pytest.raises(ValueError, match=allof(name)):
        CALLS[op](backend, **{name: value})


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_integer_values_are_still_range_checked(backend):
    with pytest.raises(ValueError, match=allof("stride", num(0))):
        conv_call(backend, stride=np.int64(0))
    with pytest.raises(ValueError, match=allof("padding", num(-1))):
        pool_call(backend, padding=np.int32(-1))


# --------------------------------------------------------------------------------------
# conv2d shape errors
# --------------------------------------------------------------------------------------
CONV_SHAPE_CASES = [
    # channels not divisible by groups
    ("c3_groups2", dict(x=(1, 3, 6, 6), w=(2, 1, 3, 3), groups=2),
     allof("groups|channels|weight", num(3))),
    ("c5_groups2", dict(x=(1, 5, 6, 6), w=(4, 2, 3, 3), groups=2),
     allof("groups|channels|weight", num(5))),
    ("groups_gt_channels", dict(x=(1, 2, 6, 6), w=(4, 1, 3, 3), groups=4),
     allof("groups|channels|weight")),
    # weight in_channels * groups != input channels
    ("weight_cin_mismatch", dict(x=(1, 4, 6, 6), w=(4, 3, 3, 3)),
     allof("weight|channels", f"{num(3)}|{num(4)}")),
    ("weight_cin_mismatch_groups", dict(x=(1, 4, 6, 6), w=(4, 1, 3, 3), groups=2),
     allof("weight|channels", f"{num(1)}|{num(2)}|{num(4)}")),
    ("weight_cin_too_big_groups", dict(x=(1, 4, 6, 6), w=(4, 4, 3, 3), groups=2),
     allof("weight|channels")),
    ("unbatched_weight_cin_mismatch", dict(x=(4, 6, 6), w=(4, 3, 3, 3)),
     allof("weight|channels")),
    # out_channels not divisible by groups
    ("out_channels_not_div", dict(x=(1, 4, 6, 6), w=(3, 2, 3, 3), groups=2),
     allof("out_channels|weight|groups", num(3))),
    ("out_channels_not_div_dw", dict(x=(1, 4, 6, 6), w=(6, 1, 3, 3), groups=4),
     allof("out_channels|weight|groups", num(6))),
    # bias
    ("bias_len", dict(b=(5,)), allof("bias", num(5))),
    ("bias_len_short", dict(b=(3,)), allof("bias", num(3))),
    ("bias_rank2", dict(b=(1, 4)), allof("bias")),
    ("bias_rank2_col", dict(b=(4, 1)), allof("bias")),
    ("bias_rank0", dict(b=()), allof("bias")),
    # input ranks (shape contains the rank so "got 2-D" or "got shape (2, 9)" both match)
    ("input_1d", dict(x=(1,)), allof("input", num(1))),
    ("input_2d", dict(x=(2, 9)), allof("input", num(2))),
    ("input_5d", dict(x=(1, 4, 5, 6, 6)), allof("input", num(5))),
    ("input_0d", dict(x=()), allof("input")),
    # weight ranks
    ("weight_2d", dict(w=(4, 2)), allof("weight", num(2))),
    ("weight_3d", dict(w=(4, 3, 3)), allof("weight", num(3))),
    ("weight_5d", dict(w=(4, 4, 5, 3, 3)), allof("weight", num(5))),
    ("weight_1d", dict(w=(1,)), allof("weight", num(1))),
    ("weight_3d_unbatched", dict(x=(4, 6, 6), w=(4, 3, 3)), allof("weight", num(3))),
    # empty kernel
    ("weight_kernel_h0", dict(w=(4, 4, 0, 3)), allof("weight|kernel", num(0))),
    ("weight_kernel_w0", dict(w=(4, 4, 3, 0)), allof("weight|kernel", num(0))),
    # output size < 1
    ("kernel_gt_input", dict(x=(1, 1, 2, 2), w=(1, 1, 3, 3)),
     r"(?i)output.*size|too small"),
    ("kernel_gt_input_w_only", dict(x=(1, 1, 6, 2), w=(1, 1, 3, 3)),
     r"(?i)output.*size|too small"),
    ("kernel_gt_padded_input", dict(x=(1, 1, 1, 1), w=(1, 1, 4, 4), padding=1),
     r"(?i)output.*size|too small"),
    ("dilated_kernel_gt_input", dict(x=(1, 1, 5, 5), w=(1, 1, 3, 3), dilation=3),
     r"(?i)output.*size|too small"),
    ("unbatched_too_small", dict(x=(1, 2, 2), w=(1, 1, 3, 3)),
     r"(?i)output.*size|too small"),
    ("zero_height_input", dict(x=(1, 4, 0, 6)), r"(?i)size|input"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw,pat", [pytest.param(k, p, id=i) for i, k, p in CONV_SHAPE_CASES])
def test_conv2d_shape_errors(backend, kw, pat):
    with pytest.raises(ValueError, match=pat):
        conv_call(backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride", [2, (2, 1), (1, 2), (3, 3)])
def test_conv2d_same_with_stride(backend, stride):
    with pytest.raises(ValueError, match=allof("same", "stride")):
        conv_call(backend, padding="same", stride=stride)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pad", ["full", "SAME", "Valid", "", "2", "same "])
def test_conv2d_unknown_padding_string(backend, pad):
    pat = allof("padding", re.escape(repr(pad))) if pad else allof("padding")
    with pytest.raises(ValueError, match=pat):
        conv_call(backend, padding=pad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algo", ["winograd_fast", "fft", "Direct", "IM2COL", ""])
def test_conv2d_unknown_algo(backend, algo):
    pat = allof("algo", re.escape(algo)) if algo else allof("algo")
    with pytest.raises(ValueError, match=pat):
        conv_call(backend, algo=algo)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algo", [3, True, ["direct"], b"direct"])
def test_conv2d_algo_wrong_type(backend, algo):
    with pytest.raises(TypeError, match=allof("algo")):
        conv_call(backend, algo=algo)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_int64_overflow(backend):
    # effective kernel = dilation*(3-1)+1 overflows int64
    with pytest.raises(ValueError, match=allof("overflow", "dilation")):
        conv_call(backend, dilation=2**62)
    with pytest.raises(ValueError, match=allof("overflow", "dilation")):
        conv_call(backend, dilation=(1, I64_MAX))
    # H + 2*padding overflows int64 (and so does the output size)
    with pytest.raises(ValueError, match=allof("overflow", "pad")):
        conv_call(backend, padding=2**62)
    with pytest.raises(ValueError, match=allof("overflow", "pad")):
        conv_call(backend, padding=(0, I64_MAX))


# --------------------------------------------------------------------------------------
# dtype / type errors (TypeError)
# --------------------------------------------------------------------------------------
TORCH_BAD_DTYPES = ["int64", "int32", "float16", "bfloat16", "bool", "complex64", "uint8"]
NUMPY_BAD_DTYPES = ["int64", "int32", "float16", "bool", "complex64", "uint8"]


def _bad_dtype_params():
    for backend, dts in (("torch", TORCH_BAD_DTYPES), ("numpy", NUMPY_BAD_DTYPES)):
        for dt in dts:
            yield pytest.param(backend, dt, id=f"{backend}-{dt}")


@pytest.mark.parametrize("backend,dt", list(_bad_dtype_params()))
def test_conv2d_bad_dtype(backend, dt):
    with pytest.raises(TypeError, match=allof("input", dt)):
        conv_call(backend, xdt=dt, wdt="float32")
    with pytest.raises(TypeError, match=allof("weight", dt)):
        conv_call(backend, xdt="float32", wdt=dt)
    with pytest.raises(TypeError, match=allof("bias", dt)):
        conv_call(backend, xdt="float32", b=(4,), bdt=dt)
    with pytest.raises(TypeError, match=allof("input|weight", dt)):
        conv_call(backend, xdt=dt, wdt=dt, b=(4,), bdt=dt)


@pytest.mark.parametrize("backend,dt", list(_bad_dtype_params()))
def test_pool_unfold_fold_bad_dtype(backend, dt):
    with pytest.raises(TypeError, match=allof("input", dt)):
        pool_call(backend, dt=dt)
    with pytest.raises(TypeError, match=allof("input", dt)):
        pool_call(backend, dt=dt, return_indices=True)
    with pytest.raises(TypeError, match=allof("input", dt)):
        unfold_call(backend, dt=dt)
    with pytest.raises(TypeError, match=allof("input", dt)):
        fold_call(backend, dt=dt)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("xdt,wdt,bdt,who", [
    ("float32", "float64", None, "weight"),
    ("float64", "float32", None, "weight"),
    ("float32", "float32", "float64", "bias"),
    ("float64", "float64", "float32", "bias"),
])
def test_conv2d_dtype_mismatch(backend, xdt, wdt, bdt, who):
    b = (4,) if bdt else None
    with pytest.raises(TypeError, match=allof(who, "float32|float64")):
        conv_call(backend, xdt=xdt, wdt=wdt, b=b, bdt=bdt)


MIX_CASES = [
    ("numpy", "torch", None, "weight"),
    ("torch", "numpy", None, "weight"),
    ("numpy", "numpy", "torch", "bias"),
    ("torch", "torch", "numpy", "bias"),
]


@pytest.mark.parametrize("xb,wb,bb,who", MIX_CASES)
def test_conv2d_numpy_mixed_with_torch(xb, wb, bb, who):
    x = make((1, 4, 6, 6), "float32", xb)
    w = make((4, 4, 3, 3), "float32", wb)
    b = None if bb is None else make((4,), "float32", bb)
    with pytest.raises(TypeError, match=allof(who)):
        CF.conv2d(x, w, b)


NON_ARRAYS = [
    pytest.param(lambda: [[[[1.0, 2.0], [3.0, 4.0]]]], id="list"),
    pytest.param(lambda: None, id="None"),
    pytest.param(lambda: 3.0, id="float"),
    pytest.param(lambda: "abc", id="str"),
    pytest.param(lambda: ((1.0,),), id="tuple"),
    pytest.param(lambda: np.float32(1.0), id="numpy-scalar"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", NON_ARRAYS)
def test_conv2d_non_array_arguments(backend, bad):
    x = make((1, 4, 6, 6), "float32", backend)
    w = make((4, 4, 3, 3), "float32", backend)
    with pytest.raises(TypeError, match=allof("input")):
        CF.conv2d(bad(), w)
    with pytest.raises(TypeError, match=allof("weight")):
        CF.conv2d(x, bad())
    if bad() is not None:  # bias=None is legal
        with pytest.raises(TypeError, match=allof("bias")):
            CF.conv2d(x, w, bad())


@pytest.mark.parametrize("bad", NON_ARRAYS)
def test_pool_unfold_fold_non_array_input(bad):
    with pytest.raises(TypeError, match=allof("input")):
        CF.max_pool2d(bad(), 2)
    with pytest.raises(TypeError, match=allof("input")):
        CF.unfold(bad(), 2)
    with pytest.raises(TypeError, match=allof("input")):
        CF.fold(bad(), (4, 4), 2)


@pytest.mark.parametrize("dt", ["object", ">f4", ">f8", "U3"])
def test_numpy_exotic_dtypes(dt):
    x = make((1, 4, 6, 6), "float64", "numpy")
    w = make((4, 4, 3, 3), "float64", "numpy")
    if dt.startswith(">"):
        # big-endian floats: either a correct answer or a TypeError, never garbage
        xb, wb = x.astype(dt), w.astype(dt)
        try:
            out = CF.conv2d(xb, wb)
        except TypeError as e:
            assert re.search(allof("input"), str(e)), str(e)
        else:
            np.testing.assert_allclose(out, TF.conv2d(torch.from_numpy(x), torch.from_numpy(w)).numpy(),
                                       rtol=1e-5, atol=1e-5)
        return
    with pytest.raises(TypeError, match=allof("input", re.escape(dt) if dt != "U3" else "U3|str")):
        CF.conv2d(x.astype(dt), w)
    with pytest.raises(TypeError, match=allof("input")):
        CF.max_pool2d(x.astype(dt), 2)


@pytest.mark.parametrize("op", ["conv2d", "max_pool2d", "unfold"])
def test_sparse_tensor_input(op):
    """A sparse-layout tensor is not a supported input: a clear exception naming the
    input (not a RuntimeError from deep inside)."""
    x = make((1, 4, 6, 6)).to_sparse()
    with pytest.raises((TypeError, ValueError), match=allof("input")):
        if op == "conv2d":
            CF.conv2d(x, make((4, 4, 3, 3)))
        else:
            getattr(CF, op)(x, 2)


def test_device_mismatch_meta():
    x = make((1, 4, 6, 6))
    w = make((4, 4, 3, 3))
    b = make((4,))
    with pytest.raises((ValueError, TypeError), match=allof("weight", "meta|device")):
        CF.conv2d(x, w.to("meta"))
    with pytest.raises((ValueError, TypeError), match=allof("bias", "meta|device")):
        CF.conv2d(x, w, b.to("meta"))
    with pytest.raises((ValueError, TypeError), match=allof("input|weight", "meta|device")):
        CF.conv2d(x.to("meta"), w)


# --------------------------------------------------------------------------------------
# max_pool2d specific
# --------------------------------------------------------------------------------------
POOL_PAD_CASES = [
    (dict(kernel_size=3, padding=2), 2),
    (dict(kernel_size=2, padding=2), 2),
    (dict(kernel_size=1, padding=1), 1),
    (dict(kernel_size=(3, 3), padding=(1, 2)), 2),
    (dict(kernel_size=(2, 4), padding=(2, 1)), 2),
    (dict(kernel_size=3, padding=2, dilation=2), 2),  # > kernel_size//2 (torch's rule)
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw,shown", POOL_PAD_CASES)
def test_pool_padding_more_than_half_kernel(backend, kw, shown):
    with pytest.raises(ValueError, match=allof("padding", num(shown))):
        pool_call(backend, **kw)


EMPTY_WINDOW_CASES = [
    # torch returns value -inf and out-of-range index 6 for this one
    pytest.param((1, 1, 2, 2), dict(kernel_size=2, stride=1, padding=1, dilation=3), id="2x2-k2-p1-d3"),
    # torch returns -inf, index 2 (input has 1 element)
    pytest.param((1, 1, 1, 1), dict(kernel_size=2, stride=1, padding=1, dilation=2), id="1x1-k2-p1-d2"),
    # only the H windows are empty; W is fine
    pytest.param((1, 1, 2, 5), dict(kernel_size=(2, 1), stride=1, padding=(1, 0), dilation=(3, 1)),
                 id="2x5-H-only"),
    pytest.param((2, 3, 5, 2), dict(kernel_size=(1, 2), stride=1, padding=(0, 1), dilation=(1, 3)),
                 id="5x2-W-only"),
    pytest.param((3, 2, 2), dict(kernel_size=2, stride=1, padding=1, dilation=3), id="unbatched"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("return_indices", [False, True])
@pytest.mark.parametrize("shape,kw", EMPTY_WINDOW_CASES)
def test_pool_window_covering_no_input(backend, return_indices, shape, kw):
    with pytest.raises(ValueError, match=r"(?i)window|padding|dilation"):
        pool_call(backend, x=shape, return_indices=return_indices, **kw)


POOL_SHAPE_CASES = [
    ("input_1d", dict(x=(1,)), allof("input", num(1))),
    ("input_2d", dict(x=(2, 9)), allof("input", num(2))),
    ("input_5d", dict(x=(1, 2, 5, 6, 6)), allof("input", num(5))),
    ("input_0d", dict(x=()), allof("input")),
    ("kernel_gt_input", dict(x=(1, 1, 2, 2), kernel_size=3), r"(?i)output.*size|too small"),
    ("kernel_gt_input_w", dict(x=(1, 1, 6, 2), kernel_size=3), r"(?i)output.*size|too small"),
    ("dilated_kernel_gt_input", dict(x=(1, 1, 3, 3), kernel_size=2, dilation=3),
     r"(?i)output.*size|too small"),
    ("unbatched_too_small", dict(x=(1, 2, 2), kernel_size=3), r"(?i)output.*size|too small"),
    ("zero_height_input", dict(x=(1, 2, 0, 6)), r"(?i)size|input"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw,pat", [pytest.param(k, p, id=i) for i, k, p in POOL_SHAPE_CASES])
def test_pool_shape_errors(backend, kw, pat):
    with pytest.raises(ValueError, match=pat):
        pool_call(backend, **kw)
    with pytest.raises(ValueError, match=pat):
        pool_call(backend, return_indices=True, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_int64_overflow(backend):
    # effective kernel = dilation*(3-1)+1 overflows
    with pytest.raises(ValueError, match=allof("overflow", "dilation")):
        pool_call(backend, kernel_size=3, dilation=2**62)
    # padding <= kernel//2 holds, but H + 2*padding overflows
    with pytest.raises(ValueError, match=allof("overflow", "pad")):
        pool_call(backend, kernel_size=I64_MAX, padding=2**62 - 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pad", ["same", "valid"])
def test_pool_padding_string_is_a_type_error(backend, pad):
    # torch: "max_pool2d(): argument 'padding' must be tuple of ints, not str"
    with pytest.raises(TypeError, match=allof("padding")):
        pool_call(backend, padding=pad)


# --------------------------------------------------------------------------------------
# unfold specific
# --------------------------------------------------------------------------------------
UNFOLD_SHAPE_CASES = [
    ("input_1d", dict(x=(1,)), allof("input", num(1))),
    ("input_2d", dict(x=(2, 9)), allof("input", num(2))),
    ("input_5d", dict(x=(1, 2, 5, 6, 6)), allof("input", num(5))),
    ("kernel_gt_input", dict(x=(1, 1, 2, 2), kernel_size=3), r"(?i)output.*size|too small|block"),
    ("dilated_kernel_gt_input", dict(x=(1, 1, 4, 4), kernel_size=2, dilation=4),
     r"(?i)output.*size|too small|block"),
    ("kernel_gt_padded_input", dict(x=(1, 1, 1, 1), kernel_size=4, padding=1),
     r"(?i)output.*size|too small|block"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw,pat", [pytest.param(k, p, id=i) for i, k, p in UNFOLD_SHAPE_CASES])
def test_unfold_shape_errors(backend, kw, pat):
    with pytest.raises(ValueError, match=pat):
        unfold_call(backend, **kw)


UNFOLD_OVERFLOW = [
    pytest.param(dict(padding=2**62), id="padding-2**62"),
    pytest.param(dict(padding=(0, 2**62)), id="padding-(0,2**62)"),
    # L = (2**32+1)**2 > 2**63
    pytest.param(dict(x=(1, 1, 1, 1), kernel_size=1, padding=2**31), id="L-overflow"),
    pytest.param(dict(kernel_size=3, dilation=2**62), id="dilation-2**62"),
    # C * kh * kw overflows: 2 * 2**31 * 2**31 = 2**63 (blocks are fine: 1)
    pytest.param(dict(x=(1, 2, 1, 1), kernel_size=2**31, padding=2**30), id="C*kh*kw-overflow"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", UNFOLD_OVERFLOW)
def test_unfold_int64_overflow(backend, kw):
    with pytest.raises(ValueError, match=r"(?i)overflow"):
        unfold_call(backend, **kw)


# --------------------------------------------------------------------------------------
# fold specific
# --------------------------------------------------------------------------------------
FOLD_SHAPE_CASES = [
    # number of blocks must be 9
    ("L_too_big", dict(x=(1, 8, 10)), allof("block|L|input|output_size", num(10))),
    ("L_too_small", dict(x=(1, 8, 4)), allof("block|L|input|output_size", num(4))),
    ("L_stride2", dict(x=(1, 8, 9), stride=2), allof("block|L|input|output_size", num(9))),
    ("L_unbatched", dict(x=(8, 5)), allof("block|L|input|output_size", num(5))),
    # C*kh*kw must divide the channel dim
    ("chan_not_div", dict(x=(1, 5, 9)), allof("kernel|input|channel", num(5))),
    ("chan_not_div_rect", dict(x=(1, 8, 6), kernel_size=(2, 3)),
     allof("kernel|input|channel", num(8))),
    ("chan_zero_blocks_ok_but_chan_bad", dict(x=(6, 9)), allof("kernel|input|channel", num(6))),
    # ranks
    ("input_1d", dict(x=(1,)), allof("input", num(1))),
    ("input_4d", dict(x=(1, 8, 9, 4)), allof("input", num(4))),
    ("input_0d", dict(x=()), allof("input")),
    # no block fits into output_size (+padding)
    ("kernel_gt_output", dict(x=(1, 25, 1), kernel_size=5), r"(?i)output|too small|block"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw,pat", [pytest.param(k, p, id=i) for i, k, p in FOLD_SHAPE_CASES])
def test_fold_shape_errors(backend, kw, pat):
    with pytest.raises(ValueError, match=pat):
        fold_call(backend, **kw)


OVF = r"(?i)overflow"
FOLD_OVERFLOW = [
    # torch's CPU fold silently accepts this one (with L=4): H + 2*padding - kernel
    # = 2**64 - 4 does not fit in int64
    pytest.param(dict(x=(1, 4, 4), output_size=(2, 2), kernel_size=2, stride=I64_MAX,
                      padding=I64_MAX - 1), OVF, id="stride-2**63-1-padding-2**63-2-L4"),
    # same sizes, L=1: either the overflow or the block-count mismatch may be reported
    pytest.param(dict(x=(1, 4, 1), output_size=(2, 2), kernel_size=2, stride=I64_MAX,
                      padding=I64_MAX - 1), r"(?i)overflow|block", id="stride-2**63-1-padding-2**63-2-L1"),
    # output numel = 2**80 (one block)
    pytest.param(dict(x=(1, 1, 1), output_size=(2**40, 2**40), kernel_size=1, stride=2**40),
                 OVF, id="output-2**40-squared"),
    # kh*kw = 2**80 with a matching output size (one block); a channel dim of 1 cannot
    # be a multiple of 2**80 either, so a "kernel ... divisible" message is acceptable
    pytest.param(dict(x=(1, 1, 1), output_size=(2**40, 2**40), kernel_size=(2**40, 2**40)),
                 r"(?i)overflow|kernel", id="kernel-2**40-squared"),
    # C * H * W = 4 * 2**62 = 2**64
    pytest.param(dict(x=(1, 4, 1), output_size=(2**31, 2**31), kernel_size=1, stride=2**31),
                 OVF, id="C*H*W-2**64"),
    # number of blocks along H = 2**63 + 1
    pytest.param(dict(x=(1, 4, 9), output_size=(4, 4), kernel_size=2, padding=2**62),
                 OVF, id="padding-2**62"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw,pat", FOLD_OVERFLOW)
def test_fold_int64_overflow(backend, kw, pat):
    with pytest.raises(ValueError, match=pat):
        fold_call(backend, **kw)


# --------------------------------------------------------------------------------------
# convx.nn modules
# --------------------------------------------------------------------------------------
def test_nn_conv2d_forward_errors():
    m = cnn.Conv2d(4, 6, 3)
    with pytest.raises(ValueError, match=allof("weight|channels", f"{num(3)}|{num(4)}")):
        m(make((1, 3, 6, 6)))
    with pytest.raises(ValueError, match=allof("input", num(5))):
        m(make((1, 4, 5, 6, 6)))
    with pytest.raises(ValueError, match=allof("input", num(2))):
        m(make((2, 9)))
    with pytest.raises(ValueError, match=r"(?i)output.*size|too small"):
        m(make((1, 4, 2, 2)))
    with pytest.raises(TypeError, match=allof("input", "int64")):
        m(make((1, 4, 6, 6), "int64"))
    with pytest.raises(TypeError, match=allof("input|weight", "float64|float32")):
        m(make((1, 4, 6, 6), "float64"))  # module is float32
    with pytest.raises(TypeError):
        m(make((1, 4, 6, 6), "float32", "numpy"))  # numpy input, torch parameters
    with pytest.raises(TypeError, match=allof("input")):
        m([[1.0]])


@pytest.mark.parametrize("kw,exc,pat", [
    (dict(stride=0), ValueError, allof("stride", num(0))),
    (dict(stride=(1, -1)), ValueError, allof("stride", num(-1))),
    (dict(dilation=0), ValueError, allof("dilation", num(0))),
    (dict(padding=-1), ValueError, allof("padding", num(-1))),
    (dict(padding="same", stride=2), ValueError, allof("same", "stride")),
    (dict(padding="full"), ValueError, allof("padding", "full")),
    (dict(groups=4), ValueError, allof("groups|channels")),
    (dict(stride=2**63), ValueError, allof("stride", num(2**63))),
])
def test_nn_conv2d_bad_config(kw, exc, pat):
    # torch.nn.Conv2d rejects some of these in the constructor, the rest must be
    # rejected by convx at forward time; either way the right exception type.
    with pytest.raises(exc, match=pat):
        m = cnn.Conv2d(6, 6, 3, **kw)
        m(make((1, 6, 8, 8)))


@pytest.mark.parametrize("kw,shape,exc,pat", [
    (dict(kernel_size=0), (1, 2, 6, 6), ValueError, allof("kernel_size", num(0))),
    (dict(kernel_size=2, stride=0), (1, 2, 6, 6), ValueError, allof("stride", num(0))),
    (dict(kernel_size=2, padding=2), (1, 2, 6, 6), ValueError, allof("padding", num(2))),
    (dict(kernel_size=3, padding=-1), (1, 2, 6, 6), ValueError, allof("padding", num(-1))),
    (dict(kernel_size=2, dilation=0), (1, 2, 6, 6), ValueError, allof("dilation", num(0))),
    (dict(kernel_size=3), (1, 2, 2, 2), ValueError, r"(?i)output.*size|too small"),
    (dict(kernel_size=2, stride=1, padding=1, dilation=3), (1, 1, 2, 2), ValueError,
     r"(?i)window|padding|dilation"),
    (dict(kernel_size=2, stride=1, padding=1, dilation=3, return_indices=True), (1, 1, 2, 2),
     ValueError, r"(?i)window|padding|dilation"),
    (dict(kernel_size=2), (1, 2, 5, 6, 6), ValueError, allof("input", num(5))),
    (dict(kernel_size=2.0), (1, 2, 6, 6), TypeError, allof("kernel_size", "float|2\\.0")),
    (dict(kernel_size=2**100), (1, 2, 6, 6), ValueError, allof("kernel_size", num(2**100))),
])
def test_nn_maxpool2d_bad_config(kw, shape, exc, pat):
    with pytest.raises(exc, match=pat):
        m = cnn.MaxPool2d(**kw)
        m(make(shape))


def test_nn_maxpool2d_bad_dtype():
    m = cnn.MaxPool2d(2)
    with pytest.raises(TypeError, match=allof("input", "int64")):
        m(make((1, 2, 6, 6), "int64"))
    with pytest.raises(TypeError, match=allof("input", "float16")):
        m(make((1, 2, 6, 6), "float16"))


# --------------------------------------------------------------------------------------
# the process stays healthy after bad calls
# --------------------------------------------------------------------------------------
def _bad_calls():
    """A batch of bad calls covering every op and every class of error."""
    return [
        lambda: conv_call(stride=0),
        lambda: conv_call("numpy", padding=-1),
        lambda: conv_call(groups=2**100),
        lambda: conv_call(x=(1, 3, 6, 6), w=(2, 1, 3, 3), groups=2),
        lambda: conv_call(b=(5,)),
        lambda: conv_call(xdt="int64", wdt="int64"),
        lambda: conv_call(xdt="float32", wdt="float64"),
        lambda: conv_call(x=(1, 1, 2, 2), w=(1, 1, 3, 3)),
        lambda: conv_call(dilation=2**62),
        lambda: conv_call(padding="same", stride=2),
        lambda: conv_call(algo="nope"),
        lambda: CF.conv2d(make((1, 4, 6, 6), backend="numpy"), make((4, 4, 3, 3))),
        lambda: pool_call(x=(1, 1, 2, 2), kernel_size=2, stride=1, padding=1, dilation=3,
                          return_indices=True),
        lambda: pool_call("numpy", x=(1, 1, 1, 1), kernel_size=2, stride=1, padding=1,
                          dilation=2),
        lambda: pool_call(kernel_size=2, padding=2),
        lambda: pool_call(kernel_size=I64_MAX, padding=2**62 - 1),
        lambda: unfold_call(padding=2**62),
        lambda: unfold_call("numpy", x=(1, 1, 1, 1), kernel_size=1, padding=2**31),
        lambda: fold_call(x=(1, 4, 4), output_size=(2, 2), kernel_size=2, stride=I64_MAX,
                          padding=I64_MAX - 1),
        lambda: fold_call(x=(1, 1, 1), output_size=(2**40, 2**40), kernel_size=1, stride=2**40),
        lambda: fold_call("numpy", x=(1, 4, 1), output_size=(2**31, 2**31), kernel_size=1,
                          stride=2**31),
        lambda: fold_call(x=(1, 8, 10)),
        lambda: CF.max_pool2d(None, 2),
    ]


def _outcome(call):
    try:
        call()
    except Exception as e:  # the exact types are checked by the tests above
        return type(e)
    return None


def test_process_healthy_after_bad_calls():
    first = [_outcome(c) for c in _bad_calls()]
    assert None not in first, "a bad call returned a result"

    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 9, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)

    out = CF.conv2d(x, w, b, **kw)
    ref = TF.conv2d(x, w, b, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    gout = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, (x, w, b), gout)
    exp = torch.autograd.grad(ref, (x, w, b), gout)
    for a, e in zip(got, exp):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)

    xn, wn, bn = (t.detach().numpy() for t in (x, w, b))
    on = CF.conv2d(xn, wn, bn, **kw)
    assert isinstance(on, np.ndarray)
    np.testing.assert_allclose(on, ref.detach().numpy(), rtol=1e-10, atol=1e-10)

    xp = torch.randn(1, 1, 5, 5, generator=g, dtype=torch.float32)
    v, i = CF.max_pool2d(xp, 2, stride=1, padding=1, dilation=2, return_indices=True)
    rv, ri = TF.max_pool2d(xp, 2, stride=1, padding=1, dilation=2, return_indices=True)
    torch.testing.assert_close(v, rv, rtol=0, atol=0)
    assert torch.equal(i, ri)

    xu = torch.randn(1, 2, 6, 5, generator=g, dtype=torch.float64)
    u = CF.unfold(xu, 2, dilation=1, padding=1, stride=2)
    torch.testing.assert_close(u, TF.unfold(xu, 2, dilation=1, padding=1, stride=2),
                               rtol=0, atol=0)
    f = CF.fold(u, (6, 5), 2, dilation=1, padding=1, stride=2)
    torch.testing.assert_close(f, TF.fold(u, (6, 5), 2, dilation=1, padding=1, stride=2),
                               rtol=1e-12, atol=1e-12)

    # and the bad calls still fail the same way afterwards (no state was corrupted)
    assert [_outcome(c) for c in _bad_calls()] == first


# --------------------------------------------------------------------------------------
# the nastiest calls in a child process: a segfault there fails this test instead of
# killing pytest
# --------------------------------------------------------------------------------------
CHILD = textwrap.dedent(r"""
    import numpy as np, torch
    import convx.functional as F
    M = 2**63 - 1
    f32 = lambda *s: torch.randn(*s)
    n32 = lambda *s: np.random.default_rng(0).standard_normal(s).astype(np.float32)
    calls = [
        ("fold-stride-overflow", lambda: F.fold(f32(1, 4, 4), (2, 2), 2, stride=M, padding=M - 1)),
        ("fold-stride-overflow-np", lambda: F.fold(n32(1, 4, 4), (2, 2), 2, stride=M, padding=M - 1)),
        ("fold-huge-output", lambda: F.fold(f32(1, 1, 1), (2**40, 2**40), 1, stride=2**40)),
        ("fold-huge-kernel", lambda: F.fold(f32(1, 1, 1), (2**40, 2**40), (2**40, 2**40))),
        ("fold-CHW-2**64", lambda: F.fold(n32(1, 4, 1), (2**31, 2**31), 1, stride=2**31)),
        ("unfold-padding-2**62", lambda: F.unfold(f32(1, 1, 2, 2), 2, padding=2**62)),
        ("unfold-L-overflow", lambda: F.unfold(n32(1, 1, 1, 1), 1, padding=2**31)),
        ("unfold-CKK-overflow", lambda: F.unfold(f32(1, 2, 1, 1), 2**31, padding=2**30)),
        ("pool-empty-window", lambda: F.max_pool2d(f32(1, 1, 2, 2), 2, 1, 1, 3, return_indices=True)),
        ("pool-empty-window-np", lambda: F.max_pool2d(n32(1, 1, 1, 1), 2, 1, 1, 2, return_indices=True)),
        ("pool-overflow", lambda: F.max_pool2d(f32(1, 1, 4, 4), M, padding=2**62 - 1)),
        ("pool-dilation-overflow", lambda: F.max_pool2d(f32(1, 1, 4, 4), 3, dilation=2**62)),
        ("conv-dilation-overflow", lambda: F.conv2d(f32(1, 1, 4, 4), f32(1, 1, 3, 3), dilation=2**62)),
        ("conv-padding-overflow", lambda: F.conv2d(n32(1, 1, 4, 4), n32(1, 1, 3, 3), padding=2**62)),
        ("conv-stride-2**63", lambda: F.conv2d(f32(1, 1, 4, 4), f32(1, 1, 3, 3), stride=2**63)),
        ("conv-groups-2**100", lambda: F.conv2d(f32(1, 1, 4, 4), f32(1, 1, 3, 3), groups=2**100)),
    ]
    for name, call in calls:
        try:
            call()
            print(name, "RETURNED", flush=True)
        except BaseException as e:
            print(name, type(e).__name__, flush=True)
    print("DONE", flush=True)
""")


def test_nasty_calls_do_not_crash_the_process():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=600)
    report = f"returncode={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1] == "DONE", report
    # every one of them must have been rejected with ValueError
    results = dict(line.split(" ", 1) for line in lines[:-1])
    assert len(results) == 16, report
    wrong = {k: v for k, v in results.items() if v != "ValueError"}
    assert not wrong, report


# ---- the one-call params constructors (convx.functional's per-call path) ----------

def test_params_constructors_set_every_field_and_validate():
    from convx import _C
    conv = _C.Conv2dParams(2, 6, 9, 8, 4, 3, 2, (2, 1), (1, 0, 2, 1), (1, 2), 2)
    fields = dict(N=2, C=6, H=9, W=8, K=4, R=3, S=2, stride_h=2, stride_w=1, pad_top=1, pad_bottom=0, pad_left=2,
                  pad_right=1, dilation_h=1, dilation_w=2, groups=2)
    assert {name: getattr(conv, name) for name in fields} == fields
    assert (conv.out_h(), conv.out_w()) == (4, 9)  # (9 + 1 - 3) // 2 + 1, 8 + 3 - 2 * (2 - 1)
    with pytest.raises(ValueError, match=re.escape("stride must be positive, got (0, 1)")):
        _C.Conv2dParams(1, 1, 4, 4, 1, 1, 1, (0, 1), (0, 0, 0, 0), (1, 1), 1)
    with pytest.raises(ValueError, match="groups"):
        _C.Conv2dParams(1, 6, 4, 4, 4, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 4)

    pool = _C.Pool2dParams(1, 3, 7, 5, (3, 2), (2, 1), (1, 0), (1, 2), True)
    fields = dict(N=1, C=3, H=7, W=5, kernel_h=3, kernel_w=2, stride_h=2, stride_w=1, pad_h=1, pad_w=0,
                  dilation_h=1, dilation_w=2, ceil_mode=True)
    assert {name: getattr(pool, name) for name in fields} == fields
    assert (pool.out_h(), pool.out_w()) == (4, 3)  # ceil((7 + 2 - 3) / 2) + 1, 5 - 2 * (2 - 1)
    with pytest.raises(ValueError, match="padding must be at most half of kernel_size"):
        _C.Pool2dParams(1, 1, 4, 4, (2, 2), (1, 1), (2, 0), (1, 1), False)
