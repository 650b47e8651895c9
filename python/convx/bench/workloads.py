"""What each case runs, on the convx side and on the torch side.

A Workload holds prepared inputs and two zero-argument callables that do the same
work, plus a check that compares their results. Conv rows call the kernels one
level below autograd on both sides, so neither pays for graph bookkeeping the other
skips:

- forward: convx.functional.conv2d vs torch.nn.functional.conv2d (no bias).
- backward-data / backward-weight: convx's numpy-level kernels (convx._kernels,
  zero-copy views of the torch tensors) vs torch.ops.aten.convolution_backward with
  an output_mask selecting one gradient. That is the op torch's autograd itself calls
  for a conv's backward, with the real input and weight tensors, so torch picks the
  backend (oneDNN or its own) exactly as in training. torch.nn.grad.conv2d_input /
  conv2d_weight call the same op but pass a stride-0 expanded placeholder for the
  tensor they do not need, which can steer torch off its fast path.

Pool rows time forward + backward through autograd on both sides (a leaf that
requires grad, y.backward(grad_output)); the torch side runs on NCHW or on a
channels_last copy of the same values, convx always on NCHW.

GEMM rows time convx's packed GEMM (convx._C.gemm on numpy views) against
torch.mm, both writing into a preallocated output.

Model rows time a whole training step (zero_grad, forward, cross-entropy,
backward, SGD step) or an inference forward under torch.no_grad(); the convx model
is convx.nn.convert(copy.deepcopy(model)), so both start from the same weights.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

import convx
from convx import _C, _kernels
from convx import functional as cxF

from .cases import Case, ConvShape, conv_shape_flops, gemm_flops
from .models import MODELS, model_flops, model_inputs
from .validation import MODEL_RTOL, OP_RTOL


SIDES = ("convx", "torch", "float64")


@dataclass
class Workload:
    run_convx: Callable[[], object]
    run_torch: Callable[[], object]
    # results(side) runs one call for side "convx", "torch" or "float64" (torch on
    # float64 copies of the same data: the reference) and returns its named results.
    results: Callable[[str], Dict[str, object]]
    rtol: float = OP_RTOL
    flops: Optional[int] = None
    # Drops state a call leaves behind for the next (accumulated .grad tensors), so
    # a memory measurement starts from the inputs alone.
    reset: Callable[[], None] = lambda: None


def conv_params(shape: ConvShape) -> "_C.Conv2dParams":
    p = _C.Conv2dParams()
    p.N, p.C, p.H, p.W, p.K, p.R, p.S = shape.N, shape.C, shape.H, shape.W, shape.K, shape.R, shape.S
    p.stride_h = p.stride_w = shape.stride
    p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = shape.pad
    p.dilation_h = p.dilation_w = 1
    p.groups = shape.groups
    p.validate()
    return p


def _conv_workload(case: Case, gen: torch.Generator) -> Workload:
    s = case.conv
    P, Q = s.out_hw
    x = torch.randn(s.N, s.C, s.H, s.W, generator=gen)
    w = torch.randn(s.K, s.C // s.groups, s.R, s.S, generator=gen)
    gy = torch.randn(s.N, s.K, P, Q, generator=gen)
    p = conv_params(s)
    x_np, w_np, gy_np = x.numpy(), w.numpy(), gy.numpy()
    stride, pad, dil = [s.stride] * 2, [s.pad] * 2, [1, 1]

    def torch_op(x, w, gy):
        if case.direction == "forward":
            return torch.nn.functional.conv2d(x, w, None, s.stride, s.pad, 1, s.groups)
        mask = [case.direction == "backward_data", case.direction == "backward_weight", False]
        grads = torch.ops.aten.convolution_backward(gy, x, w, None, stride, pad, dil, False, [0, 0], s.groups, mask)
        return grads[0] if case.direction == "backward_data" else grads[1]

    if case.direction == "forward":
        def run_convx():
            return cxF.conv2d(x, w, None, s.stride, s.pad, 1, s.groups)
    elif case.direction == "backward_data":
        def run_convx():
            return _kernels.conv2d_backward_data(p, gy_np, w_np, "auto")
    elif case.direction == "backward_weight":
        def run_convx():
            return _kernels.conv2d_backward_weight(p, gy_np, x_np, "auto")
    else:
        raise ValueError(f"unknown conv direction {case.direction!r}")

    def run_torch():
        return torch_op(x, w, gy)

    def results(side):
        if side == "float64":
            return {case.direction: torch_op(x.double(), w.double(), gy.double())}
        return {case.direction: run_convx() if side == "convx" else run_torch()}

    return Workload(run_convx, run_torch, results, flops=conv_shape_flops(s))


def _pool_workload(case: Case, gen: torch.Generator) -> Workload:
    s = case.pool
    P = (s.H + 2 * s.pad - s.kernel) // s.stride + 1
    Q = (s.W + 2 * s.pad - s.kernel) // s.stride + 1
    x = torch.randn(s.N, s.C, s.H, s.W, generator=gen)
    gy = torch.randn(s.N, s.C, P, Q, generator=gen)
    fmt = torch.channels_last if case.torch_layout == "channels_last" else torch.contiguous_format
    x_cx = x.clone().requires_grad_()
    x_th = x.clone(memory_format=fmt).requires_grad_()  # a copy: x itself stays a plain tensor
    gy_th = gy.contiguous(memory_format=fmt)

    def run_convx():
        x_cx.grad = None
        y = cxF.max_pool2d(x_cx, s.kernel, s.stride, s.pad)
        y.backward(gy)
        return y, x_cx.grad

    def run_torch():
        x_th.grad = None
        y = torch.nn.functional.max_pool2d(x_th, s.kernel, s.stride, s.pad)
        y.backward(gy_th)
        return y, x_th.grad

    def run_float64():
        x64 = x.double().requires_grad_()
        y = torch.nn.functional.max_pool2d(x64, s.kernel, s.stride, s.pad)
        y.backward(gy.double())
        return y, x64.grad

    def results(side):
        y, g = {"convx": run_convx, "torch": run_torch, "float64": run_float64}[side]()
        return {"output": y, "grad_input": g}

    def reset():
        x_cx.grad = x_th.grad = None

    return Workload(run_convx, run_torch, results, reset=reset)


def _gemm_workload(case: Case, gen: torch.Generator) -> Workload:
    n = case.gemm_n
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    c_cx, c_th = torch.empty(n, n), torch.empty(n, n)
    a_np, b_np, c_np = a.numpy(), b.numpy(), c_cx.numpy()

    def run_convx():
        _C.gemm(a_np, b_np, c_np)
        return c_cx

    def run_torch():
        return torch.mm(a, b, out=c_th)

    def results(side):
        if side == "float64":
            return {"product": torch.mm(a.double(), b.double())}
        return {"product": (run_convx() if side == "convx" else run_torch()).clone()}

    return Workload(run_convx, run_torch, results, flops=gemm_flops(n))


def _model_workload(case: Case, gen: torch.Generator) -> Workload:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))  # layer initialisation
    model_th = MODELS[case.model]()
    model_cx = convx.nn.convert(copy.deepcopy(model_th))
    x, target = model_inputs(case.model, case.batch, gen)
    train = case.mode == "train"
    flops = model_flops(model_th, x, train)

    def side_model(side):
        # The float64 twin is made on demand, from weights no step has changed yet.
        if side == "float64":
            return copy.deepcopy(model_th).double(), x.double()
        return (model_cx if side == "convx" else model_th), x

    if not train:
        model_th.eval()
        model_cx.eval()

        def infer(model, inputs):
            with torch.no_grad():
                return model(inputs)

        def results(side):
            return {"output": infer(*side_model(side))}

        return Workload(lambda: infer(model_cx, x), lambda: infer(model_th, x), results, rtol=MODEL_RTOL,
                        flops=flops)

    loss_fn = torch.nn.CrossEntropyLoss()
    opt_th = torch.optim.SGD(model_th.parameters(), lr=0.01)
    opt_cx = torch.optim.SGD(model_cx.parameters(), lr=0.01)

    def step(model, opt):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), target)
        loss.backward()
        opt.step()
        return loss

    def results(side):
        # Loss and gradients of one step (before the update, which would mix the
        # gradients' errors into the weights). One result per layer, its weight and
        # bias gradients together: the last AlphaGo layer's bias gradient is a sum
        # over all 361 move logits, which cancels to zero exactly (softmax), so on its
        # own it has no scale to be relative to.
        model, inputs = side_model(side)
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), target)
        loss.backward()
        out: Dict[str, object] = {"loss": loss}
        layers: Dict[str, List[torch.Tensor]] = {}
        for name, param in model.named_parameters():
            layers.setdefault(name.rsplit(".", 1)[0], []).append(param.grad.reshape(-1))
        for layer, grads in layers.items():
            out[f"layer {layer} gradients"] = torch.cat(grads)
        model.zero_grad(set_to_none=True)
        return out

    def reset():
        for opt in (opt_cx, opt_th):
            opt.zero_grad(set_to_none=True)

    return Workload(lambda: step(model_cx, opt_cx), lambda: step(model_th, opt_th), results, rtol=MODEL_RTOL,
                    flops=flops, reset=reset)


def build_workload(case: Case, seed: int = 0) -> Workload:
    """Fresh inputs (and models) for a case, the same for a given seed."""
    gen = torch.Generator().manual_seed(seed)
    if case.kind == "conv":
        return _conv_workload(case, gen)
    if case.kind == "pool":
        return _pool_workload(case, gen)
    if case.kind == "gemm":
        return _gemm_workload(case, gen)
    if case.kind == "model":
        return _model_workload(case, gen)
    raise ValueError(f"unknown case kind {case.kind!r}")
