"""torch.autograd.Function classes over the C++ kernels.

Each Function receives C-contiguous tensors (functional.py makes them so with
differentiable torch ops, which also route gradients back through any view,
expand or layout change) and validated params. Host tensors cross into the
kernels as zero-copy numpy views and come back with torch.from_numpy.

Every backward is itself built from these Functions (recorded when
create_graph asks for a graph, see the entry points at the end), so gradients of
gradients work to any order (gradient penalties, Hessian-vector products). conv2d is
bilinear in (input, weight), so its three derivatives close under
differentiation:

    y  = F(x, w)        forward           F  = conv2d_forward
    gx = D(gy, w)       backward data     D  = conv2d_backward_data   (adjoint of F in x)
    gw = B(gy, x)       backward weight   B  = conv2d_backward_weight (adjoint of F in w)

    d<ggx, D(gy, w)>:  wrt gy -> F(ggx, w),  wrt w -> B(gy, ggx)
    d<ggw, B(gy, x)>:  wrt gy -> F(x, ggw),  wrt x -> D(gy, ggw)

max-pool's backward is a scatter through the argmax, whose adjoint is a gather;
unfold (im2col) and fold (col2im) are each other's adjoints.

Tensors on a CUDA device go to the CUDA kernels (_cuda_kernels, which take and
return device tensors) instead; the graph above is the same on both devices.
"""
from __future__ import annotations

import numpy as np
import torch

from . import _cuda_kernels, _kernels


def _np(t: torch.Tensor):
    return t.detach().numpy()


# ---- the kernels on tensors, with no autograd -------------------------------------
# Each runs one kernel on C-contiguous tensors of either device and returns plain
# tensors. The Functions below call them in forward; the entry points after the
# Functions call them directly when autograd would record nothing.

def _conv2d_forward(input, weight, bias, params, algo):
    if input.is_cuda:
        return _cuda_kernels.conv2d_forward(params, input, weight, bias, algo)
    return torch.from_numpy(_kernels.conv2d_forward(params, _np(input), _np(weight),
                                                    None if bias is None else _np(bias), algo))


def _conv2d_backward_data(grad_output, weight, params, algo):
    if grad_output.is_cuda:
        return _cuda_kernels.conv2d_backward_data(params, grad_output, weight, algo)
    return torch.from_numpy(_kernels.conv2d_backward_data(params, _np(grad_output), _np(weight), algo))


def _conv2d_backward_weight(grad_output, input, params, algo):
    if grad_output.is_cuda:
        return _cuda_kernels.conv2d_backward_weight(params, grad_output, input, algo)
    return torch.from_numpy(_kernels.conv2d_backward_weight(params, _np(grad_output), _np(input), algo))


def _conv2d_backward_bias(grad_output, params):
    if grad_output.is_cuda:
        return _cuda_kernels.conv2d_backward_bias(params, grad_output)
    return torch.from_numpy(_kernels.conv2d_backward_bias(params, _np(grad_output)))


def _max_pool2d_forward(input, params, keep_indices_only=False):
    # Indices kept only for the backward (the caller does not return them) are
    # int32 where the plane allows: the forward writes and the backward reads
    # half the bytes, and both are bound by memory traffic, not arithmetic.
    if input.is_cuda:
        return _cuda_kernels.max_pool2d_forward(params, input)
    narrow = keep_indices_only and params.H * params.W < 2**31
    out, indices = _kernels.max_pool2d_forward(params, _np(input), np.int32 if narrow else np.int64)
    return torch.from_numpy(out), torch.from_numpy(indices)


def _max_pool2d_backward(grad_output, indices, params):
    if grad_output.is_cuda:
        return _cuda_kernels.max_pool2d_backward(params, grad_output, indices)
    return torch.from_numpy(_kernels.max_pool2d_backward(params, _np(grad_output), _np(indices)))


def _im2col(input, params):
    if input.is_cuda:
        return _cuda_kernels.im2col(params, input.shape[0], input)
    return torch.from_numpy(_kernels.im2col(params, input.shape[0], _np(input)))


def _col2im(input, params):
    if input.is_cuda:
        return _cuda_kernels.col2im(params, input.shape[0], input)
    return torch.from_numpy(_kernels.col2im(params, input.shape[0], _np(input)))


class Conv2dFunction(torch.autograd.Function):
    """y = conv2d(x, w) + b."""

    @staticmethod
    def forward(ctx, input, weight, bias, params, algo):
        ctx.save_for_backward(input, weight)
        ctx.params, ctx.algo, ctx.has_bias = params, algo, bias is not None
        return _conv2d_forward(input, weight, bias, params, algo)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        p, algo = ctx.params, ctx.algo
        gy = grad_output.contiguous()  # incoming gradients may be expanded views (e.g. from .sum())
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = conv2d_backward_data(gy, weight, p, algo)
        if ctx.needs_input_grad[1]:
            grad_weight = conv2d_backward_weight(gy, input, p, algo)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = conv2d_backward_bias(gy, p)
        return grad_input, grad_weight, grad_bias, None, None


class Conv2dBackwardDataFunction(torch.autograd.Function):
    """gx = D(gy, w): the gradient of conv2d with respect to its input."""

    @staticmethod
    def forward(ctx, grad_output, weight, params, algo):
        ctx.save_for_backward(grad_output, weight)
        ctx.params, ctx.algo = params, algo
        return _conv2d_backward_data(grad_output, weight, params, algo)

    @staticmethod
    def backward(ctx, grad_grad_input):
        grad_output, weight = ctx.saved_tensors
        p, algo = ctx.params, ctx.algo
        ggx = grad_grad_input.contiguous()
        d_grad_output = d_weight = None
        if ctx.needs_input_grad[0]:
            d_grad_output = conv2d(ggx, weight, None, p, algo)
        if ctx.needs_input_grad[1]:
            d_weight = conv2d_backward_weight(grad_output, ggx, p, algo)
        return d_grad_output, d_weight, None, None


class Conv2dBackwardWeightFunction(torch.autograd.Function):
    """gw = B(gy, x): the gradient of conv2d with respect to its weight."""

    @staticmethod
    def forward(ctx, grad_output, input, params, algo):
        ctx.save_for_backward(grad_output, input)
        ctx.params, ctx.algo = params, algo
        return _conv2d_backward_weight(grad_output, input, params, algo)

    @staticmethod
    def backward(ctx, grad_grad_weight):
        grad_output, input = ctx.saved_tensors
        p, algo = ctx.params, ctx.algo
        ggw = grad_grad_weight.contiguous()
        d_grad_output = d_input = None
        if ctx.needs_input_grad[0]:
            d_grad_output = conv2d(input, ggw, None, p, algo)
        if ctx.needs_input_grad[1]:
            d_input = conv2d_backward_data(grad_output, ggw, p, algo)
        return d_grad_output, d_input, None, None


class Conv2dBackwardBiasFunction(torch.autograd.Function):
    """gb[k] = sum of gy[:, k]; its adjoint broadcasts back over (n, h, w)."""

    @staticmethod
    def forward(ctx, grad_output, params):
        ctx.shape = grad_output.shape
        return _conv2d_backward_bias(grad_output, params)

    @staticmethod
    def backward(ctx, grad_grad_bias):
        return grad_grad_bias.view(1, -1, 1, 1).expand(ctx.shape), None


class MaxPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, params, keep_indices_only):
        out, indices = _max_pool2d_forward(input, params, keep_indices_only)
        ctx.save_for_backward(indices)
        ctx.params = params
        ctx.mark_non_differentiable(indices)
        # The indices never carry a gradient: without this, autograd would fill a
        # zero tensor the size of the indices (int64, twice the output) every step.
        ctx.set_materialize_grads(False)
        return out, indices

    @staticmethod
    def backward(ctx, grad_output, _grad_indices):
        if grad_output is None:  # only the indices were used downstream
            return None, None, None
        (indices,) = ctx.saved_tensors
        return max_pool2d_backward(grad_output.contiguous(), indices, ctx.params), None, None


class MaxPool2dBackwardFunction(torch.autograd.Function):
    """gx = scatter-add of gy into each window's argmax; its adjoint gathers there."""

    @staticmethod
    def forward(ctx, grad_output, indices, params):
        ctx.save_for_backward(indices)
        return _max_pool2d_backward(grad_output, indices, params)

    @staticmethod
    def backward(ctx, grad_grad_input):
        (indices,) = ctx.saved_tensors
        gathered = grad_grad_input.flatten(2).gather(2, indices.flatten(2).long())  # gather takes int64 only
        return gathered.view(indices.shape), None, None


class UnfoldFunction(torch.autograd.Function):
    """im2col; its adjoint is col2im (FoldFunction)."""

    @staticmethod
    def forward(ctx, input, params):
        ctx.params = params
        return _im2col(input, params)

    @staticmethod
    def backward(ctx, grad_output):
        return fold(grad_output.contiguous(), ctx.params), None


class FoldFunction(torch.autograd.Function):
    """col2im; its adjoint is im2col (UnfoldFunction)."""

    @staticmethod
    def forward(ctx, input, params):
        ctx.params = params
        return _col2im(input, params)

    @staticmethod
    def backward(ctx, grad_output):
        return unfold(grad_output.contiguous(), ctx.params), None


# ---- entry points -----------------------------------------------------------------
# Each records its Function on the autograd graph only when autograd would
# record anything: grad mode on and some input requiring a gradient. Otherwise
# (inference, torch.no_grad, and every backward pass run without create_graph,
# which autograd runs with grad mode off) it calls the kernel directly. A
# Function's apply adds ~3 us of Python to a call, ~50 us right after a large conv
# has evicted the interpreter from the caches: 6% of AlphaGo's 5x5 input layer
# (0.8 ms), measured interleaved with torch's conv.

def _records(*tensors) -> bool:
    if not torch.is_grad_enabled():
        return False
    for t in tensors:  # a loop, not any(generator): this runs once per op
        if t is not None and t.requires_grad:
            return True
    return False


def conv2d(input, weight, bias, params, algo):
    if _records(input, weight, bias):
        return Conv2dFunction.apply(input, weight, bias, params, algo)
    return _conv2d_forward(input, weight, bias, params, algo)


def conv2d_backward_data(grad_output, weight, params, algo):
    if _records(grad_output, weight):
        return Conv2dBackwardDataFunction.apply(grad_output, weight, params, algo)
    return _conv2d_backward_data(grad_output, weight, params, algo)


def conv2d_backward_weight(grad_output, input, params, algo):
    if _records(grad_output, input):
        return Conv2dBackwardWeightFunction.apply(grad_output, input, params, algo)
    return _conv2d_backward_weight(grad_output, input, params, algo)


def conv2d_backward_bias(grad_output, params):
    if _records(grad_output):
        return Conv2dBackwardBiasFunction.apply(grad_output, params)
    return _conv2d_backward_bias(grad_output, params)


def max_pool2d(input, params, keep_indices_only=False):
    """(output, indices): int64 indices, as torch's, unless keep_indices_only (the
    caller keeps them only for the backward: then int32 where the plane allows)."""
    if _records(input):
        return MaxPool2dFunction.apply(input, params, keep_indices_only)
    return _max_pool2d_forward(input, params, keep_indices_only)


def max_pool2d_backward(grad_output, indices, params):
    if _records(grad_output):
        return MaxPool2dBackwardFunction.apply(grad_output, indices, params)
    return _max_pool2d_backward(grad_output, indices, params)


def unfold(input, params):
    if _records(input):
        return UnfoldFunction.apply(input, params)
    return _im2col(input, params)


def fold(input, params):
    if _records(input):
        return FoldFunction.apply(input, params)
    return _col2im(input, params)
