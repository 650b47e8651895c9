"""convx on CUDA tensors: the CPU case tables against torch on the GPU, gradients,
determinism, streams, CUDA graphs, a tensor over 2**31 elements, device errors.

GPU tests skip (saying why) when convx was built without CUDA or torch sees no
GPU. The tests at the end run everywhere: argument checks of the CUDA bindings,
the host-side plan, and device-mix errors that need no GPU.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import convx
from convx import _args
from convx import _C
from convx import functional as cxF

from cases import CONV_CASES, FOLD_CASES, POOL_CASES, ConvCase
from helpers import (DTYPE_IDS, FLOAT_DTYPES, assert_bitwise_equal, assert_close, check_against_torch,
                     distinct_rand, rand)

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

GPU = torch.cuda.is_available()
if not convx.has_cuda:
    _SKIP_REASON = "convx was built without CUDA (convx.has_cuda is False)"
elif not GPU:
    _SKIP_REASON = "no CUDA GPU visible (torch.cuda.is_available() is False)"
else:
    _SKIP_REASON = ""
needs_gpu = pytest.mark.skipif(bool(_SKIP_REASON), reason=_SKIP_REASON or "unused")
needs_cuda_build = pytest.mark.skipif(not convx.has_cuda, reason="convx was built without CUDA")

dtypes = pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
case_ids = lambda c: c.id  # noqa: E731
CUDA_ALGOS = [None, "direct", "implicit_gemm"]
cuda_algos = pytest.mark.parametrize("algo", CUDA_ALGOS, ids=["algo_default", "direct", "implicit_gemm"])


@pytest.fixture(autouse=True)
def _no_tf32():
    """torch's GPU reference in full float32: TF32 off for cuDNN and matmul."""
    if not GPU:
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def on_gpu(fn, check_device=True):
    """Run fn on CUDA copies of its (CPU) arguments and bring the result back.

    The copies are differentiable, so check_against_torch's CPU leaves receive the
    gradients the CUDA kernels computed."""
    def run(*args):
        out = fn(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))
        if check_device:
            assert out.is_cuda, f"result on {out.device}, expected a CUDA device"
        return out.cpu()
    return run


# =============================================================================== conv2d
def conv_inputs(case: ConvCase):
    return [rand(case.input_shape), rand(case.weight_shape), rand(case.bias_shape) if case.bias else None]


def cx_conv(case, algo):
    extra = {} if algo is None else {"algo": algo}
    return lambda x, w, b: cxF.conv2d(x, w, b, **case.kwargs(), **extra)


def th_conv(case):
    return lambda x, w, b: F.conv2d(x, w, b, **case.kwargs())


@needs_gpu
@pytest.mark.parametrize("case", CONV_CASES, ids=case_ids)
@dtypes
@cuda_algos
def test_conv2d_cases(case, dtype, algo):
    torch.manual_seed(0)
    check_against_torch(on_gpu(cx_conv(case, algo)), on_gpu(th_conv(case)), conv_inputs(case), dtype)


# Larger layers: several GEMM tiles in both directions, 128-wide float tiles, the
# split backward-weight reduction, partial tiles at every edge.
LARGER_CONV_CASES = [
    ConvCase("resnet_3x3_C64_K96", 4, 64, 19, 21, 96, 3, 3, padding=1),
    ConvCase("strided_7x7_C3_K64", 3, 3, 37, 35, 64, 7, 7, stride=2, padding=3),
    ConvCase("pointwise_C130_K140", 2, 130, 15, 17, 140, 1, 1),
    ConvCase("groups4_dil2_asym", 2, 32, 23, 18, 72, 3, 2, stride=(1, 2), padding=(2, 1), dilation=(2, 3),
             groups=4),
    ConvCase("same_even_k4", 2, 24, 17, 19, 40, 4, 4, padding="same"),
    ConvCase("depthwise_C96", 2, 96, 20, 20, 96, 3, 3, padding=1, groups=96),
    ConvCase("long_reduction_N16", 16, 16, 32, 32, 16, 3, 3, padding=1),
]


@needs_gpu
@pytest.mark.parametrize("case", LARGER_CONV_CASES, ids=case_ids)
@dtypes
@cuda_algos
def test_conv2d_larger_layers(case, dtype, algo):
    torch.manual_seed(3)
    check_against_torch(on_gpu(cx_conv(case, algo)), on_gpu(th_conv(case)), conv_inputs(case), dtype)


@needs_gpu
@dtypes
def test_conv2d_implicit_gemm_matches_direct(dtype):
    """The two CUDA algorithms agree with each other as closely as with torch."""
    torch.manual_seed(4)
    case = LARGER_CONV_CASES[3]
    x, w, b = (t.to(dtype).cuda() for t in conv_inputs(case))
    direct = cxF.conv2d(x, w, b, **case.kwargs(), algo="direct")
    gemm = cxF.conv2d(x, w, b, **case.kwargs(), algo="implicit_gemm")
    ref = F.conv2d(x.double(), w.double(), b.double(), **case.kwargs())
    assert_close(gemm.cpu(), ref.cpu(), F.conv2d(x, w, b, **case.kwargs()).cpu(), "implicit_gemm")
    assert_close(direct.cpu(), ref.cpu(), F.conv2d(x, w, b, **case.kwargs()).cpu(), "direct")


@needs_gpu
def test_record_algos_names_cuda_kernels():
    x = torch.randn(2, 8, 9, 9, device="cuda", requires_grad=True)
    w = torch.randn(16, 8, 3, 3, device="cuda", requires_grad=True)
    with convx.record_algos() as log:
        cxF.conv2d(x, w, padding=1).sum().backward()
    assert log == ["conv2d_forward_cuda:implicit_gemm", "conv2d_backward_data_cuda:implicit_gemm",
                   "conv2d_backward_weight_cuda:implicit_gemm"], log
    with convx.record_algos() as log:
        cxF.conv2d(x, w, padding=1, algo="direct").sum().backward()
    assert log == ["conv2d_forward_cuda:direct", "conv2d_backward_data_cuda:direct",
                   "conv2d_backward_weight_cuda:direct"], log


@needs_gpu
def test_conv2d_cuda_rejects_cpu_only_algo():
    x = torch.randn(1, 2, 5, 5, device="cuda")
    w = torch.randn(2, 2, 3, 3, device="cuda")
    with pytest.raises(ValueError, match="algo.*implicit_gemm.*'im2col'"):
        cxF.conv2d(x, w, algo="im2col")


@needs_gpu
@dtypes
def test_conv2d_noncontiguous_and_channels_last(dtype):
    torch.manual_seed(5)
    case = ConvCase("cl", 2, 6, 9, 8, 8, 3, 3, padding=1, groups=2)
    x, w, b = conv_inputs(case)

    def cx(x, w, b):
        return cxF.conv2d(x.contiguous(memory_format=torch.channels_last), w.transpose(2, 3).contiguous()
                          .transpose(2, 3), b, **case.kwargs())

    check_against_torch(on_gpu(cx), on_gpu(th_conv(case)), [x, w, b], dtype, check_layout=False)


# ============================================================================ max_pool2d
@needs_gpu
@pytest.mark.parametrize("case", POOL_CASES, ids=case_ids)
@dtypes
def test_max_pool2d_values_and_indices(case, dtype):
    torch.manual_seed(0)
    x = rand(case.input_shape, dtype).cuda()
    v, i = cxF.max_pool2d(x, case.kernel_size, return_indices=True, **case.kwargs())
    assert v.is_cuda and i.is_cuda and i.dtype == torch.int64
    ev, ei = F.max_pool2d(x, case.kernel_size, return_indices=True, **case.kwargs())
    assert_bitwise_equal(v.cpu(), ev.cpu(), "values")
    assert_bitwise_equal(i.cpu(), ei.cpu(), "indices")
    # and exactly what the CPU kernel says
    cv, ci = cxF.max_pool2d(x.cpu(), case.kernel_size, return_indices=True, **case.kwargs())
    assert_bitwise_equal(v.cpu(), cv, "values vs CPU")
    assert_bitwise_equal(i.cpu(), ci, "indices vs CPU")


@needs_gpu
@pytest.mark.parametrize("case", POOL_CASES, ids=case_ids)
@dtypes
def test_max_pool2d_grad(case, dtype):
    torch.manual_seed(1)
    x = distinct_rand(case.input_shape)
    check_against_torch(on_gpu(lambda t: cxF.max_pool2d(t, case.kernel_size, **case.kwargs())),
                        on_gpu(lambda t: F.max_pool2d(t, case.kernel_size, **case.kwargs())),
                        [x], dtype, exact_forward=True)


NAN, INF = float("nan"), float("inf")


@needs_gpu
@dtypes
def test_max_pool2d_nan_and_inf_rules(dtype):
    """NaN wins (the last NaN), ties keep the first maximum, an all -inf window gives
    -inf with a valid index: exactly the CPU kernel's answers."""
    x = torch.tensor([[[[NAN, 1.0, -INF, -INF, 2.0, 2.0],
                        [3.0, NAN, -INF, -INF, 2.0, 1.0],
                        [0.0, 0.0, 5.0, NAN, -INF, 7.0],
                        [0.0, 0.0, NAN, 5.0, INF, -INF]]]], dtype=dtype)
    for kwargs in (dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=2, stride=1)):
        gv, gi = cxF.max_pool2d(x.cuda(), return_indices=True, **kwargs)
        cv, ci = cxF.max_pool2d(x, return_indices=True, **kwargs)
        assert_bitwise_equal(gv.cpu(), cv, f"values {kwargs}")
        assert_bitwise_equal(gi.cpu(), ci, f"indices {kwargs}")


@needs_gpu
@dtypes
def test_max_pool2d_backward_sums_like_the_cpu(dtype):
    """Overlapping windows add into one input element; the gather-style GPU backward
    adds in the CPU's order, so the two agree bitwise."""
    torch.manual_seed(6)
    x = torch.randint(0, 3, (3, 4, 17, 19)).to(dtype)  # many ties: one element wins many windows
    gy_shape = F.max_pool2d(x, 3, stride=1, padding=1).shape
    gy = rand(gy_shape, dtype)
    grads = []
    for device in ("cpu", "cuda"):
        xd = x.to(device).requires_grad_()
        cxF.max_pool2d(xd, 3, stride=1, padding=1).backward(gy.to(device))
        grads.append(xd.grad.cpu())
    assert_bitwise_equal(grads[1], grads[0], "grad_input GPU vs CPU")


# ============================================================================ unfold / fold
@needs_gpu
@pytest.mark.parametrize("case", FOLD_CASES, ids=case_ids)
@dtypes
def test_unfold_cases(case, dtype):
    torch.manual_seed(0)
    check_against_torch(on_gpu(lambda t: cxF.unfold(t, **case.kwargs())),
                        on_gpu(lambda t: F.unfold(t, **case.kwargs())), [rand(case.image_shape)], dtype,
                        exact_forward=True)


@needs_gpu
@pytest.mark.parametrize("case", FOLD_CASES, ids=case_ids)
@dtypes
def test_fold_cases(case, dtype):
    torch.manual_seed(0)
    check_against_torch(on_gpu(lambda t: cxF.fold(t, case.output_size, **case.kwargs())),
                        on_gpu(lambda t: F.fold(t, case.output_size, **case.kwargs())),
                        [rand(case.columns_shape)], dtype)


# ============================================================================ gradcheck
GRADCHECK_CONV = [
    ConvCase("gc_groups_dil_stride", 2, 4, 7, 8, 6, 3, 2, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2),
    ConvCase("gc_same_even", 1, 3, 6, 5, 4, 2, 4, padding="same"),
    ConvCase("gc_depthwise", 2, 3, 6, 6, 6, 3, 3, padding=1, groups=3),
]


@needs_gpu
@pytest.mark.parametrize("case", GRADCHECK_CONV, ids=case_ids)
@pytest.mark.parametrize("algo", ["direct", "implicit_gemm"])
def test_conv2d_gradcheck_and_gradgradcheck(case, algo):
    torch.manual_seed(7)
    args = [t.cuda().requires_grad_() for t in conv_inputs(case)]
    fn = lambda x, w, b: cxF.conv2d(x, w, b, **case.kwargs(), algo=algo)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@needs_gpu
def test_max_pool2d_and_fold_gradcheck():
    torch.manual_seed(8)
    x = distinct_rand((2, 3, 7, 8)).cuda().requires_grad_()
    pool = lambda t: cxF.max_pool2d(t, 3, stride=2, padding=1, dilation=1, ceil_mode=True)  # noqa: E731
    assert torch.autograd.gradcheck(pool, [x])
    assert torch.autograd.gradgradcheck(pool, [x])
    cols = rand((2, 3 * 6, 15)).cuda().requires_grad_()
    fold = lambda t: cxF.fold(t, (5, 6), (2, 3), dilation=(2, 1), padding=1, stride=(1, 2))  # noqa: E731
    assert torch.autograd.gradcheck(fold, [cols])
    assert torch.autograd.gradgradcheck(fold, [cols])


# ============================================================================ determinism
SPLIT_CASE = ConvCase("split_k", 8, 64, 32, 32, 64, 3, 3, padding=1)


def _conv_grads(case, dtype, algo=None):
    torch.manual_seed(9)
    x, w, b = (t.to(dtype).cuda().requires_grad_() for t in conv_inputs(case))
    y = cxF.conv2d(x, w, b, **case.kwargs(), algo=algo)
    y.backward(torch.ones_like(y).normal_(generator=torch.Generator("cuda").manual_seed(1)))
    return [t.detach().clone() for t in (y, x.grad, w.grad, b.grad)]


@needs_gpu
@dtypes
@pytest.mark.parametrize("algo", ["direct", "implicit_gemm"])
def test_conv2d_bitwise_repeatable(dtype, algo):
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count
    _, workspace = _C.conv2d_cuda_plan(_params(SPLIT_CASE), "backward_weight", "implicit_gemm",
                                       str(dtype).replace("torch.", ""), sm_count)
    assert workspace > 0, "this case is meant to exercise the split backward-weight reduction"
    first, second = _conv_grads(SPLIT_CASE, dtype, algo), _conv_grads(SPLIT_CASE, dtype, algo)
    for name, a, b in zip(("output", "grad_input", "grad_weight", "grad_bias"), first, second):
        assert_bitwise_equal(a.cpu(), b.cpu(), name)


@needs_gpu
@dtypes
def test_split_backward_weight_is_accurate(dtype):
    """The split reduction (partials in a workspace, summed in a second pass) against torch."""
    torch.manual_seed(10)
    check_against_torch(on_gpu(cx_conv(SPLIT_CASE, "implicit_gemm")), on_gpu(th_conv(SPLIT_CASE)),
                        conv_inputs(SPLIT_CASE), dtype)


@needs_gpu
def test_pool_and_fold_bitwise_repeatable():
    torch.manual_seed(11)
    x = torch.randint(0, 4, (4, 8, 33, 31)).float().cuda().requires_grad_()
    cols = torch.randn(4, 8 * 9, 16 * 15, device="cuda")
    runs = []
    for _ in range(2):
        x.grad = None
        cxF.max_pool2d(x, 3, stride=2).sum().backward()
        runs.append((x.grad.clone(), cxF.fold(cols, (33, 31), 3, stride=2)))
    assert_bitwise_equal(runs[0][0].cpu(), runs[1][0].cpu(), "max_pool2d grad")
    assert_bitwise_equal(runs[0][1].cpu(), runs[1][1].cpu(), "fold")


# ============================================================================ streams, graphs
@needs_gpu
def test_non_default_stream():
    """Work queued on a side stream (torch's current stream there) gives the same
    results as on the default stream, with inputs produced on that side stream."""
    torch.manual_seed(12)
    case = LARGER_CONV_CASES[0]
    x0, w0, b0 = (t.float().cuda() for t in conv_inputs(case))
    expected_y = cxF.conv2d(x0, w0, b0, **case.kwargs())
    expected_p = cxF.max_pool2d(expected_y, 2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(10_000_000)  # keep the side stream busy so a wrong stream would race
        x = x0 * 1.0
        y = cxF.conv2d(x, w0, b0, **case.kwargs())
        p = cxF.max_pool2d(y, 2)
    side.synchronize()
    assert_bitwise_equal(y.cpu(), expected_y.cpu(), "conv2d on a side stream")
    assert_bitwise_equal(p.cpu(), expected_p.cpu(), "max_pool2d on a side stream")


@needs_gpu
def test_cuda_graph_capture():
    """Capture forward and backward in a CUDA graph: any launch on another stream or
    any host synchronization inside the ops would make the capture fail."""
    torch.manual_seed(13)
    x = torch.randn(4, 8, 16, 16, device="cuda", requires_grad=True)
    w = torch.randn(12, 8, 3, 3, device="cuda", requires_grad=True)

    def step():
        y = cxF.max_pool2d(cxF.conv2d(x, w, padding=1), 2)
        y.sum().backward()
        return y

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm up (lazy module loading, allocator) outside the capture
            x.grad = w.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    x.grad = w.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = step()
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
        w.copy_(torch.randn_like(w))
        x.grad.zero_()
        w.grad.zero_()
    graph.replay()
    torch.cuda.synchronize()
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.max_pool2d(F.conv2d(xr, wr, padding=1), 2)
    ref.sum().backward()
    assert torch.allclose(y_static, ref, rtol=1e-4, atol=1e-4)
    assert torch.allclose(w.grad, wr.grad, rtol=1e-4, atol=1e-3)
    assert torch.allclose(x.grad, xr.grad, rtol=1e-4, atol=1e-4)


# ============================================================================ > 2**31 elements
@needs_gpu
def test_max_pool2d_over_2_pow_31_elements():
    """One 46342 x 46342 plane: 2**31 + 8.6e4 elements, so flat offsets and h*W + w
    indices of the last rows exceed int32. Checked against torch on row slices."""
    side = 46342
    need = side * side * (4 + 4) + (side // 2) ** 2 * (4 + 8)  # x, grad_input, y, indices
    free, _ = torch.cuda.mem_get_info()
    if free < need * 1.3:
        pytest.skip(f"needs about {need * 1.3 / 2**30:.0f} GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    assert side * side > 2**31
    gen = torch.Generator("cuda").manual_seed(14)
    x = torch.rand((1, 1, side, side), device="cuda", generator=gen).requires_grad_()
    y, idx = cxF.max_pool2d(x, 2, return_indices=True)
    assert int(idx.max()) > 2**31, "the largest index must need more than 32 bits"
    for rows in (slice(0, 16), slice(23162, 23178), slice(side - 16, side)):  # even starts: whole windows
        ref_y, ref_i = F.max_pool2d(x.detach()[:, :, rows], 2, return_indices=True)
        out_rows = slice(rows.start // 2, rows.stop // 2)
        assert_bitwise_equal(y.detach()[:, :, out_rows].cpu(), ref_y.cpu(), f"values rows {rows}")
        assert_bitwise_equal(idx[:, :, out_rows].cpu(), (ref_i + rows.start * side).cpu(), f"indices rows {rows}")
    del ref_y, ref_i
    y.backward(torch.ones_like(y))
    grad = x.grad
    # every window routes its single 1 to its argmax, and to nothing else
    total = sum(float(chunk.sum(dtype=torch.float64)) for chunk in grad.view(-1).split(2**28))
    assert total == float(y.numel())
    last = grad[:, :, side - 16:]
    assert float(last.sum(dtype=torch.float64)) == 8 * (side // 2)
    flat_last = idx[:, :, -8:].reshape(-1) - (side - 16) * side
    assert bool((last.reshape(-1)[flat_last] == 1).all())


# ============================================================================ devices
@needs_gpu
def test_device_mix_is_a_clear_error():
    x = torch.randn(1, 2, 5, 5)
    w = torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match="weight is on device cpu but input is on device cuda"):
        cxF.conv2d(x.cuda(), w)
    with pytest.raises(ValueError, match="bias is on device cuda.*input is on device cpu"):
        cxF.conv2d(x, w, torch.randn(3).cuda())
    with pytest.raises(TypeError, match="mix numpy arrays and torch tensors"):
        cxF.conv2d(x.cuda(), w.numpy())


@needs_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_second_device():
    torch.manual_seed(15)
    x = torch.randn(2, 3, 9, 9)
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="on device cuda"):
        cxF.conv2d(x.to("cuda:0"), w.to("cuda:1"))
    torch.cuda.set_device(0)
    y = cxF.conv2d(x.to("cuda:1"), w.to("cuda:1"), padding=1)
    assert y.device == torch.device("cuda:1") and torch.cuda.current_device() == 0
    assert torch.allclose(y.cpu(), F.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-5)


@needs_gpu
def test_nn_layers_on_cuda():
    torch.manual_seed(16)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Conv2d(8, 4, 3, groups=2)).cuda()
    converted = convx.nn.convert(torch.nn.Sequential(*[m for m in model]))
    x = torch.randn(2, 3, 12, 12, device="cuda")
    with convx.record_algos() as log:
        out = converted(x)
    assert any(entry.startswith("conv2d_forward_cuda:") for entry in log), log
    assert torch.allclose(out, model(x), rtol=1e-4, atol=1e-5)


# ============================================================ runs without a GPU
def _params(case: ConvCase):
    p = _C.Conv2dParams()
    p.N, p.C, p.H, p.W, p.K, p.R, p.S = case.N, case.C, case.H, case.W, case.K, case.R, case.S
    p.stride_h, p.stride_w = (case.stride,) * 2 if isinstance(case.stride, int) else case.stride
    pad = (case.padding,) * 2 if isinstance(case.padding, int) else case.padding
    p.pad_top = p.pad_bottom = pad[0]
    p.pad_left = p.pad_right = pad[1]
    p.groups = case.groups
    return p


def test_device_mix_error_without_gpu():
    """check_same_device names both arguments and devices (meta stands in for a GPU)."""
    with pytest.raises(ValueError, match="weight is on device meta but input is on device cpu"):
        _args.check_same_device({"input": torch.zeros(1), "weight": torch.zeros(1, device="meta")})
    _args.check_same_device({"input": torch.zeros(1), "weight": torch.zeros(1), "bias": None})


def test_unsupported_device_error_names_the_build():
    x = torch.zeros(1, 1, 4, 4, device="meta")
    expected = "CPU and on CUDA devices" if convx.has_cuda else "built without CUDA"
    with pytest.raises(ValueError, match=f"input is on device meta.*{expected}"):
        cxF.max_pool2d(x, 2)


@needs_cuda_build
def test_cuda_plan_choices():
    """The host-side plan: algorithm choice, forced-algo errors, split workspace sizes."""
    plan = _C.conv2d_cuda_plan
    normal = _params(ConvCase("n", 8, 64, 32, 32, 64, 3, 3, padding=1))
    depthwise = _params(ConvCase("dw", 2, 8, 9, 9, 8, 3, 3, padding=1, groups=8))
    assert plan(normal, "forward", "auto", "float32", 132) == ("implicit_gemm", 0)
    assert plan(depthwise, "forward", "auto", "float32", 132) == ("direct", 0)
    assert plan(depthwise, "backward_data", "auto", "float32", 132) == ("direct", 0)
    assert plan(depthwise, "backward_weight", "auto", "float32", 132)[0] == "implicit_gemm"
    algo, ws32 = plan(normal, "backward_weight", "auto", "float32", 132)
    _, ws64 = plan(normal, "backward_weight", "auto", "float64", 132)
    weight_bytes = 64 * 64 * 9 * 4
    assert algo == "implicit_gemm" and ws32 > 0 and ws32 % weight_bytes == 0 and ws32 // weight_bytes > 1
    assert ws64 % (2 * weight_bytes) == 0 and ws64 > 0
    assert plan(normal, "backward_weight", "direct", "float32", 132) == ("direct", 0)
    # a layer with more output tiles than the GPU has SMs needs no split
    big = _params(ConvCase("big", 8, 512, 8, 8, 512, 3, 3, padding=1))
    assert plan(big, "backward_weight", "auto", "float32", 4) == ("implicit_gemm", 0)
    huge = _params(ConvCase("huge", 1, 1, 2**30, 1, 1, 1, 1))
    assert plan(huge, "forward", "auto", "float32", 132) == ("direct", 0)
    with pytest.raises(ValueError, match="implicit_gemm.*2\\*\\*30.*algo='direct'"):
        plan(huge, "forward", "implicit_gemm", "float32", 132)
    with pytest.raises(ValueError, match="algo for CUDA tensors must be one of.*'im2col'"):
        plan(normal, "forward", "im2col", "float32", 132)
    with pytest.raises(TypeError, match="dtype must be 'float32' or 'float64', got 'float16'"):
        plan(normal, "forward", "auto", "float16", 132)
    with pytest.raises(ValueError, match="direction must be"):
        plan(normal, "sideways", "auto", "float32", 132)


@needs_cuda_build
def test_cuda_bindings_check_before_any_cuda_call():
    """Bad params and null pointers are refused before the device is touched, so
    these raise the same ValueError with or without a GPU."""
    p = _C.Pool2dParams()
    p.N, p.C, p.H, p.W, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w = 1, 1, 4, 4, 2, 2, 2, 2
    with pytest.raises(ValueError, match="is a null pointer"):
        _C.max_pool2d_forward_cuda(p, "float32", 0, 0, 0, 0, 0)
    p.stride_h = 0
    with pytest.raises(ValueError, match="stride must be positive"):
        _C.max_pool2d_forward_cuda(p, "float32", 256, 256, 256, 0, 0)
    c = _params(ConvCase("c", 1, 2, 5, 5, 2, 3, 3))
    with pytest.raises(ValueError, match="device must be a CUDA device index"):
        _C.conv2d_forward_cuda(c, "float32", 256, 256, 0, 256, "auto", -1, 0)
    with pytest.raises(ValueError, match="workspace"):
        _C.conv2d_backward_weight_cuda(_params(SPLIT_CASE), "float32", 256, 256, 256, "implicit_gemm", 0, 0, 132,
                                       0, 0)


@needs_cuda_build
@pytest.mark.skipif(GPU, reason="checks the error on a machine without a usable GPU")
def test_cuda_call_without_gpu_raises_cleanly():
    """With no GPU (or no driver) a launch attempt is a RuntimeError naming the CUDA
    error, not a crash. The fake pointers are never dereferenced: the device guard
    fails first."""
    p = _C.Pool2dParams()
    p.N, p.C, p.H, p.W, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w = 1, 1, 4, 4, 2, 2, 2, 2
    with pytest.raises(RuntimeError, match="CUDA error in cudaGetDevice"):
        _C.max_pool2d_forward_cuda(p, "float32", 256, 256, 256, 0, 0)


@needs_cuda_build
def test_import_loads_no_cuda_library(tmp_path):
    """import convx (with its static CUDA runtime) loads neither libcuda nor libcudart."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import convx\n"
            "maps = open('/proc/self/maps').read()\n"
            "print(convx.has_cuda, 'libcuda.so' in maps, 'libcudart' in maps)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False", "False"], proc.stdout

