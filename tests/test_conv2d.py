"""convx.functional.conv2d vs torch.nn.functional.conv2d: values, gradients, layouts, algos."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convx
from convx import functional as cxF

from cases import CONV_CASES, ConvCase
from helpers import (DTYPE_IDS, FLOAT_DTYPES, assert_close, assert_close_f32, assert_close_f64,
                     check_against_torch, rand)

# torch warns about 'same' with even kernels (it pads a copy); irrelevant here
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

ALGOS = [None, "direct", "im2col"]
ALGO_IDS = ["algo_default", "direct", "im2col"]
FORCED_ALGOS = ["direct", "im2col"]

dtypes = pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
algos = pytest.mark.parametrize("algo", ALGOS, ids=ALGO_IDS)
case_ids = lambda c: c.id  # noqa: E731


def cx_conv(algo, **kw):
    extra = {} if algo is None else {"algo": algo}
    return lambda x, w, b: cxF.conv2d(x, w, b, **kw, **extra)


def th_conv(**kw):
    return lambda x, w, b: F.conv2d(x, w, b, **kw)


def make_inputs(case: ConvCase):
    x = rand(case.input_shape)
    w = rand(case.weight_shape)
    b = rand(case.bias_shape) if case.bias else None
    return x, w, b


SMALL = ConvCase("small", 2, 4, 6, 7, 6, 3, 3, stride=1, padding=1, groups=2)
SMALL_NOGROUP = ConvCase("small_nogroup", 2, 3, 6, 7, 4, 3, 2, stride=(1, 2), padding=(1, 0))
LAYOUT_CASES = [SMALL, SMALL_NOGROUP,
                ConvCase("depthwise_s2", 2, 4, 7, 6, 8, 3, 3, stride=2, padding=1, groups=4),
                ConvCase("same_even_dil", 2, 3, 6, 7, 2, 2, 4, padding="same", dilation=(3, 1)),
                ConvCase("1x1_s2", 2, 5, 5, 6, 3, 1, 1, stride=2)]


# --------------------------------------------------------------------------- main table
@pytest.mark.parametrize("case", CONV_CASES, ids=case_ids)
@dtypes
@algos
def test_conv2d_forward_and_grads(case, dtype, algo):
    torch.manual_seed(0)
    x, w, b = make_inputs(case)
    check_against_torch(cx_conv(algo, **case.kwargs()), th_conv(**case.kwargs()), [x, w, b], dtype)


@pytest.mark.parametrize("case", [c for c in CONV_CASES if c.N > 0][:12], ids=case_ids)
@dtypes
@algos
def test_conv2d_forward_no_grad(case, dtype, algo):
    """Plain forward (no autograd involved) gives torch's values and no grad_fn."""
    torch.manual_seed(1)
    x, w, b = make_inputs(case)
    out, _ = check_against_torch(cx_conv(algo, **case.kwargs()), th_conv(**case.kwargs()),
                                 [x, w, b], dtype, grad=False)
    assert not out.requires_grad


@algos
def test_conv2d_under_no_grad(algo):
    """Inside torch.no_grad() the result does not require grad even if the inputs do."""
    torch.manual_seed(16)
    c = SMALL
    x, w, b = (t.float().requires_grad_() for t in make_inputs(c))
    extra = {} if algo is None else {"algo": algo}
    with torch.no_grad():
        out = cxF.conv2d(x, w, b, **c.kwargs(), **extra)
        ref = F.conv2d(x, w, b, **c.kwargs())
    assert not out.requires_grad and out.grad_fn is None
    assert_close_f32(out, F.conv2d(x.detach().double(), w.detach().double(), b.detach().double(), **c.kwargs()), ref)


# --------------------------------------------------------------------------- layouts / strides
def _transpose_hw(t):
    return t.transpose(2, 3)


NONCONTIG = {
    # name: (input base shape fn, input transform, weight base shape fn, weight transform)
    "input_transposed_hw": (lambda c: (c.N, c.C, c.W, c.H), _transpose_hw, None, None),
    "input_sliced": (lambda c: (c.N, c.C, 2 * c.H, c.W + 2), lambda t: t[:, :, ::2, 1:-1], None, None),
    "input_batch_channel_permuted": (lambda c: (c.C, c.N, c.H, c.W), lambda t: t.transpose(0, 1), None, None),
    "weight_transposed_rs": (None, None, lambda c: (c.K, c.C // c.groups, c.S, c.R), _transpose_hw),
    "weight_sliced_K": (None, None, lambda c: (2 * c.K, c.C // c.groups, c.R, c.S), lambda t: t[::2]),
    "both_noncontig": (lambda c: (c.N, c.C, c.W, c.H), _transpose_hw,
                       lambda c: (c.K, c.C // c.groups, c.S, c.R), _transpose_hw),
}


NONTRIVIAL_KERNEL_CASES = [c for c in LAYOUT_CASES if c.R * c.S > 1]


@pytest.mark.parametrize("case", NONTRIVIAL_KERNEL_CASES, ids=case_ids)
@pytest.mark.parametrize("kind", list(NONCONTIG), ids=list(NONCONTIG))
@dtypes
@algos
def test_conv2d_noncontiguous(case, kind, dtype, algo):
    torch.manual_seed(2)
    xs, xf, ws, wf = NONCONTIG[kind]
    x = rand(xs(case)) if xs else rand(case.input_shape)
    w = rand(ws(case)) if ws else rand(case.weight_shape)
    b = rand(case.bias_shape) if case.bias else None
    # the views really are non-contiguous and of the right shape
    if xf:
        v = xf(x)
        assert not v.is_contiguous() and tuple(v.shape) == case.input_shape
    if wf:
        v = wf(w)
        assert not v.is_contiguous() and tuple(v.shape) == case.weight_shape
    check_against_torch(cx_conv(algo, **case.kwargs()), th_conv(**case.kwargs()), [x, w, b], dtype,
                        transforms=[xf, wf, None])


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=case_ids)
@pytest.mark.parametrize("which", ["input_and_weight", "input_only"])
@dtypes
@algos
def test_conv2d_channels_last(case, which, dtype, algo):
    """channels_last input (and weight): same values as torch, output channels_last like torch."""
    torch.manual_seed(3)
    x, w, b = make_inputs(case)
    tw = _cl if which == "input_and_weight" else None
    assert not _cl(x).is_contiguous()  # genuinely a different layout for this shape
    out, ref = check_against_torch(cx_conv(algo, **case.kwargs()), th_conv(**case.kwargs()),
                                   [x, w, b], dtype, transforms=[_cl, tw, None], check_layout=True)
    assert ref.is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last), f"output strides {out.stride()}"


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=case_ids)
@dtypes
@algos
def test_conv2d_channels_last_weight_only(case, dtype, algo):
    torch.manual_seed(4)
    x, w, b = make_inputs(case)
    check_against_torch(cx_conv(algo, **case.kwargs()), th_conv(**case.kwargs()),
                        [x, w, b], dtype, transforms=[None, _cl, None])


EXPANDED = {
    "weight_expand_K": (None, lambda c: (1, c.C // c.groups, c.R, c.S),
                        lambda c: (lambda t: t.expand(c.K, -1, -1, -1)), None),
    "input_expand_N": (lambda c: (1, c.C, c.H, c.W), None, None,
                       lambda c: (lambda t: t.expand(c.N, -1, -1, -1))),
    "input_expand_W": (lambda c: (c.N, c.C, c.H, 1), None, None,
                       lambda c: (lambda t: t.expand(-1, -1, -1, c.W))),
    "weight_expand_spatial": (None, lambda c: (c.K, c.C // c.groups, 1, 1),
                              lambda c: (lambda t: t.expand(-1, -1, c.R, c.S)), None),
}


@pytest.mark.parametrize("case", NONTRIVIAL_KERNEL_CASES, ids=case_ids)
@pytest.mark.parametrize("kind", list(EXPANDED), ids=list(EXPANDED))
@dtypes
@algos
def test_conv2d_expanded(case, kind, dtype, algo):
    """Stride-0 (expanded) tensors; gradients accumulate into the unexpanded leaf."""
    torch.manual_seed(5)
    xs, ws, wf, xf = EXPANDED[kind]
    x = rand(xs(case)) if xs else rand(case.input_shape)
    w = rand(ws(case)) if ws else rand(case.weight_shape)
    b = rand(case.bias_shape) if case.bias else None
    xf = xf(case) if xf else None
    wf = wf(case) if wf else None
    if xf:
        assert 0 in xf(x).stride()
    if wf:
        assert 0 in wf(w).stride()
    check_against_torch(cx_conv(algo, **case.kwargs()), th_conv(**case.kwargs()), [x, w, b], dtype,
                        transforms=[xf, wf, None])


@dtypes
@algos
def test_conv2d_expanded_bias(dtype, algo):
    torch.manual_seed(6)
    c = SMALL_NOGROUP
    x, w, _ = make_inputs(c)
    b = rand((1,))
    check_against_torch(cx_conv(algo, **c.kwargs()), th_conv(**c.kwargs()), [x, w, b], dtype,
                        transforms=[None, None, lambda t: t.expand(c.K)])


UNBATCHED = [
    ConvCase("unbatched", 1, 3, 6, 7, 4, 3, 3, padding=1),
    ConvCase("unbatched_groups_stride", 1, 4, 7, 6, 2, 2, 3, stride=(2, 1), groups=2, bias=False),
    ConvCase("unbatched_same_dil", 1, 2, 6, 6, 3, 2, 2, padding="same", dilation=2),
]


@pytest.mark.parametrize("case", UNBATCHED, ids=case_ids)
@dtypes
@algos
def test_conv2d_unbatched_3d(case, dtype, algo):
    torch.manual_seed(7)
    x = rand(case.input_shape[1:])
    w = rand(case.weight_shape)
    b = rand(case.bias_shape) if case.bias else None
    out, ref = check_against_torch(cx_conv(algo, **case.kwargs()), th_conv(**case.kwargs()), [x, w, b], dtype)
    assert out.dim() == 3 and out.shape == ref.shape


REQ_GRAD_MASKS = {
    "input_only": (True, False, False),
    "weight_only": (False, True, False),
    "bias_only": (False, False, True),
    "input_bias": (True, False, True),
    "weight_bias": (False, True, True),
    "input_weight": (True, True, False),
    "none": (False, False, False),
}


@pytest.mark.parametrize("mask", list(REQ_GRAD_MASKS), ids=list(REQ_GRAD_MASKS))
@dtypes
@algos
def test_conv2d_partial_requires_grad(mask, dtype, algo):
    """Only the args that require grad get a .grad; no backward kernel runs for the others."""
    torch.manual_seed(8)
    c = SMALL
    x, w, b = make_inputs(c)
    rg = REQ_GRAD_MASKS[mask]
    with convx.record_algos() as rec:
        out, _ = check_against_torch(cx_conv(algo, **c.kwargs()), th_conv(**c.kwargs()), [x, w, b], dtype,
                                     requires_grad=rg)
    assert out.requires_grad == any(rg)
    kinds = [r.split(":")[0] for r in rec]
    assert "conv2d_forward" in kinds, rec
    if not rg[0]:
        assert "conv2d_backward_data" not in kinds, f"input grad computed although not required: {rec}"
    else:
        assert "conv2d_backward_data" in kinds, rec
    if not rg[1]:
        assert "conv2d_backward_weight" not in kinds, f"weight grad computed although not required: {rec}"
    else:
        assert "conv2d_backward_weight" in kinds, rec


GO_MODES = ["noncontig", "channels_last", "sum"]


@pytest.mark.parametrize("case", LAYOUT_CASES[:3], ids=case_ids)
@pytest.mark.parametrize("go_mode", GO_MODES)
@dtypes
@algos
def test_conv2d_grad_output_layouts(case, go_mode, dtype, algo):
    """Backward with a non-contiguous / channels_last / expanded (out.sum()) grad_output."""
    torch.manual_seed(14)
    x, w, b = make_inputs(case)
    check_against_torch(cx_conv(algo, **case.kwargs()), th_conv(**case.kwargs()), [x, w, b], dtype,
                        go_mode=go_mode)


@dtypes
@algos
def test_conv2d_channels_last_with_grad_output_layouts(dtype, algo):
    torch.manual_seed(15)
    c = SMALL
    x, w, b = make_inputs(c)
    for go_mode in ["dense", "noncontig", "sum"]:
        check_against_torch(cx_conv(algo, **c.kwargs()), th_conv(**c.kwargs()), [x, w, b], dtype,
                            transforms=[_cl, _cl, None], go_mode=go_mode)


# --------------------------------------------------------------------------- algorithm recording
REC_CASES = [SMALL, SMALL_NOGROUP, ConvCase("rec_strided_dil", 2, 2, 9, 8, 3, 3, 2, stride=2, padding=(1, 2),
                                            dilation=(2, 1))]


@pytest.mark.parametrize("case", REC_CASES, ids=case_ids)
@pytest.mark.parametrize("algo", FORCED_ALGOS)
def test_record_algos_forced(case, algo):
    torch.manual_seed(9)
    x, w, b = (t.float() for t in make_inputs(case))
    x.requires_grad_()
    w.requires_grad_()
    with convx.record_algos() as rec:
        out = cxF.conv2d(x, w, b, **case.kwargs(), algo=algo)
        assert len(rec) >= 1 and set(rec) == {f"conv2d_forward:{algo}"}, rec
        out.backward(rand(out.shape, torch.float32))
    assert all(isinstance(r, str) for r in rec), rec
    kinds = {r.split(":")[0] for r in rec}
    assert kinds == {"conv2d_backward_data", "conv2d_backward_weight", "conv2d_forward"}, rec
    # the forced algorithm is used by every kernel call, backward included
    assert all(r.split(":")[1] == algo for r in rec), rec
    # and the forced algorithm actually computed torch's answer
    xd, wd = x.detach(), w.detach()
    assert_close_f32(out, F.conv2d(xd.double(), wd.double(), b.double(), **case.kwargs()),
                     F.conv2d(xd, wd, b, **case.kwargs()))


@pytest.mark.parametrize("algo", [None, "auto"], ids=["None", "auto"])
def test_record_algos_auto(algo):
    torch.manual_seed(10)
    c = SMALL
    x, w, b = make_inputs(c)
    x, w = x.float(), w.float()
    with convx.record_algos() as rec:
        out = cxF.conv2d(x, w, b.float(), **c.kwargs(), algo=algo)
    assert len(rec) >= 1, rec
    assert all(r.startswith("conv2d_forward:") and len(r.split(":")[1]) > 0 for r in rec), rec
    assert_close_f32(out, F.conv2d(x.double(), w.double(), b, **c.kwargs()),
                     F.conv2d(x, w, b.float(), **c.kwargs()))


def test_record_algos_scoped():
    """Calls outside the context are not recorded; nested contexts each see their calls."""
    torch.manual_seed(11)
    c = SMALL_NOGROUP
    x, w, b = (t.float() for t in make_inputs(c))
    with convx.record_algos() as outer:
        cxF.conv2d(x, w, b, **c.kwargs(), algo="direct")
        with convx.record_algos() as inner:
            cxF.conv2d(x, w, b, **c.kwargs(), algo="im2col")
        assert "conv2d_forward:im2col" in inner
        assert "conv2d_forward:direct" not in inner
    n = len(outer)
    assert "conv2d_forward:direct" in outer
    cxF.conv2d(x, w, b, **c.kwargs(), algo="im2col")
    assert len(outer) == n


# --------------------------------------------------------------------------- numpy path
@pytest.mark.parametrize("case", [SMALL, CONV_CASES[0]], ids=case_ids)
@pytest.mark.parametrize("np_dtype", [np.float32, np.float64], ids=["f32", "f64"])
@algos
def test_conv2d_numpy(case, np_dtype, algo):
    torch.manual_seed(12)
    x, w, b = make_inputs(case)
    nx, nw, nb = (t.numpy().astype(np_dtype) for t in (x, w, b))
    extra = {} if algo is None else {"algo": algo}
    out = cxF.conv2d(nx, nw, nb, **case.kwargs(), **extra)
    assert isinstance(out, np.ndarray), type(out)
    assert out.dtype == np_dtype
    ref64 = F.conv2d(x, w, b, **case.kwargs())
    if np_dtype == np.float32:
        assert_close_f32(out, ref64, F.conv2d(x.float(), w.float(), b.float(), **case.kwargs()))
    else:
        assert_close_f64(out, ref64)


# --------------------------------------------------------------------------- helper self-checks
def _torch_pair(case):
    torch.manual_seed(13)
    x, w, b = make_inputs(case)
    ref = F.conv2d(x, w, b, **case.kwargs())
    t32 = F.conv2d(x.float(), w.float(), b.float(), **case.kwargs())
    return ref, t32


def test_helper_accepts_torch_float32():
    ref, t32 = _torch_pair(CONV_CASES[0])
    assert_close_f32(t32, ref, t32)
    assert_close(ref.clone(), ref, None)


@pytest.mark.parametrize("rel", [1e-2, 1e-4, 1e-5])
def test_helper_rejects_single_wrong_element_f32(rel):
    ref, t32 = _torch_pair(CONV_CASES[0])
    bad = t32.clone()
    scale = float(ref.abs().max())
    bad[1, 2, 3, 4] += rel * scale
    with pytest.raises(AssertionError):
        assert_close_f32(bad, ref, t32)


@pytest.mark.parametrize("shift_dim", [2, 3])
def test_helper_rejects_off_by_one_shift(shift_dim):
    ref, t32 = _torch_pair(CONV_CASES[0])
    with pytest.raises(AssertionError):
        assert_close_f32(torch.roll(t32, 1, dims=shift_dim), ref, t32)
    with pytest.raises(AssertionError):
        assert_close_f64(torch.roll(ref, 1, dims=shift_dim), ref)


def test_helper_rejects_f64_and_meta_mismatch():
    ref, t32 = _torch_pair(CONV_CASES[0])
    bad = ref.clone()
    bad[0, 0, 0, 0] += 1e-8
    with pytest.raises(AssertionError):
        assert_close_f64(bad, ref)
    with pytest.raises(AssertionError):  # wrong shape
        assert_close_f64(ref[:, :, :-1], ref)
    with pytest.raises(AssertionError):  # wrong dtype
        assert_close_f32(ref, ref, t32)
    nan = t32.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(AssertionError):  # NaN where the reference has a number
        assert_close_f32(nan, ref, t32)


# ---- repeat calls: params validated once per shape and arguments -------------------

def test_repeat_call_reuses_validated_params_and_still_checks_what_changed(monkeypatch):
    gen = torch.Generator().manual_seed(31)
    x = torch.randn(2, 4, 9, 8, generator=gen)
    w = torch.nn.Parameter(torch.randn(6, 2, 3, 2, generator=gen))
    b = torch.randn(6, generator=gen)
    kw = dict(stride=(2, 1), padding=(1, 0), dilation=1, groups=2)
    want = F.conv2d(x, w, b, **kw)
    monkeypatch.setattr(cxF, "_validated_params", {})
    torch.testing.assert_close(cxF.conv2d(x, w, b, **kw), want)
    assert len(cxF._validated_params) == 1

    def no_full_path(*args):
        raise AssertionError("a repeat call took the full path")

    with monkeypatch.context() as m:  # a repeat call skips the full path's argument parsing
        m.setattr(cxF, "_conv2d_padding", no_full_path)
        torch.testing.assert_close(cxF.conv2d(x, w, b, **kw), want)
        torch.testing.assert_close(cxF.conv2d(x * 2, w, b, **kw), F.conv2d(x * 2, w, b, **kw))

    # What the key leaves out is checked again, or sends the call down the full path.
    with pytest.raises(TypeError, match="stride must be an int"):
        cxF.conv2d(x, w, b, stride=(2, True), padding=(1, 0), groups=2)
    with pytest.raises(TypeError, match="groups must be an int"):
        cxF.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), groups=2.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        cxF.conv2d(x.half(), w.half(), b.half(), **kw)
    with pytest.raises(TypeError, match="bias dtype float64 does not match input dtype float32"):
        cxF.conv2d(x, w, b.double(), **kw)
    with pytest.raises(ValueError, match="algo must be one of"):
        cxF.conv2d(x, w, b, **kw, algo="fastest")
    wide = torch.randn(2, 4, 9, 16, generator=gen)[..., ::2]  # not contiguous
    torch.testing.assert_close(cxF.conv2d(wide, w, b, **kw), F.conv2d(wide, w, b, **kw))
    nhwc = x.contiguous(memory_format=torch.channels_last)
    out = cxF.conv2d(nhwc, w, b, **kw)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(cxF.conv2d(x[0], w, b, **kw), want[0])  # unbatched
