"""torch.autograd.Function classes over the C++ kernels.

Each Function receives C-contiguous tensors (functional.py makes them so with
differentiable torch ops, which also route gradients back through any view,
expand or layout change) and validated params. Host tensors cross into the
kernels as zero-copy numpy views and come back with torch.from_numpy.

Every backward is itself built from these Functions, so gradients of gradients
work to any order (gradient penalties, Hessian-vector products). conv2d is
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

import torch

from . import _cuda_kernels, _kernels


def _np(t: torch.Tensor):
    return t.detach().numpy()


class Conv2dFunction(torch.autograd.Function):
    """y = conv2d(x, w) + b."""

    @staticmethod
    def forward(ctx, input, weight, bias, params, algo):
        ctx.save_for_backward(input, weight)
        ctx.params, ctx.algo, ctx.has_bias = params, algo, bias is not None
        if input.is_cuda:
            return _cuda_kernels.conv2d_forward(params, input, weight, bias, algo)
        out = _kernels.conv2d_forward(params, _np(input), _np(weight),
                                      None if bias is None else _np(bias), algo)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        p, algo = ctx.params, ctx.algo
        gy = grad_output.contiguous()  # incoming gradients may be expanded views (e.g. from .sum())
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = Conv2dBackwardDataFunction.apply(gy, weight, p, algo)
        if ctx.needs_input_grad[1]:
            grad_weight = Conv2dBackwardWeightFunction.apply(gy, input, p, algo)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = Conv2dBackwardBiasFunction.apply(gy, p)
        return grad_input, grad_weight, grad_bias, None, None


class Conv2dBackwardDataFunction(torch.autograd.Function):
    """gx = D(gy, w): the gradient of conv2d with respect to its input."""

    @staticmethod
    def forward(ctx, grad_output, weight, params, algo):
        ctx.save_for_backward(grad_output, weight)
        ctx.params, ctx.algo = params, algo
        if grad_output.is_cuda:
            return _cuda_kernels.conv2d_backward_data(params, grad_output, weight, algo)
        return torch.from_numpy(_kernels.conv2d_backward_data(params, _np(grad_output), _np(weight), algo))

    @staticmethod
    def backward(ctx, grad_grad_input):
        grad_output, weight = ctx.saved_tensors
        p, algo = ctx.params, ctx.algo
        ggx = grad_grad_input.contiguous()
        d_grad_output = d_weight = None
        if ctx.needs_input_grad[0]:
            d_grad_output = Conv2dFunction.apply(ggx, weight, None, p, algo)
        if ctx.needs_input_grad[1]:
            d_weight = Conv2dBackwardWeightFunction.apply(grad_output, ggx, p, algo)
        return d_grad_output, d_weight, None, None


class Conv2dBackwardWeightFunction(torch.autograd.Function):
    """gw = B(gy, x): the gradient of conv2d with respect to its weight."""

    @staticmethod
    def forward(ctx, grad_output, input, params, algo):
        ctx.save_for_backward(grad_output, input)
        ctx.params, ctx.algo = params, algo
        if grad_output.is_cuda:
            return _cuda_kernels.conv2d_backward_weight(params, grad_output, input, algo)
        return torch.from_numpy(_kernels.conv2d_backward_weight(params, _np(grad_output), _np(input), algo))

    @staticmethod
    def backward(ctx, grad_grad_weight):
        grad_output, input = ctx.saved_tensors
        p, algo = ctx.params, ctx.algo
        ggw = grad_grad_weight.contiguous()
        d_grad_output = d_input = None
        if ctx.needs_input_grad[0]:
            d_grad_output = Conv2dFunction.apply(input, ggw, None, p, algo)
        if ctx.needs_input_grad[1]:
            d_input = Conv2dBackwardDataFunction.apply(grad_output, ggw, p, algo)
        return d_grad_output, d_input, None, None


class Conv2dBackwardBiasFunction(torch.autograd.Function):
    """gb[k] = sum of gy[:, k]; its adjoint broadcasts back over (n, h, w)."""

    @staticmethod
    def forward(ctx, grad_output, params):
        ctx.shape = grad_output.shape
        if grad_output.is_cuda:
            return _cuda_kernels.conv2d_backward_bias(params, grad_output)
        return torch.from_numpy(_kernels.conv2d_backward_bias(params, _np(grad_output)))

    @staticmethod
    def backward(ctx, grad_grad_bias):
        return grad_grad_bias.view(1, -1, 1, 1).expand(ctx.shape), None


class MaxPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, params):
        if input.is_cuda:
            out, indices = _cuda_kernels.max_pool2d_forward(params, input)
        else:
            out, indices = map(torch.from_numpy, _kernels.max_pool2d_forward(params, _np(input)))
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
            return None, None
        (indices,) = ctx.saved_tensors
        return MaxPool2dBackwardFunction.apply(grad_output.contiguous(), indices, ctx.params), None


class MaxPool2dBackwardFunction(torch.autograd.Function):
    """gx = scatter-add of gy into each window's argmax; its adjoint gathers there."""

    @staticmethod
    def forward(ctx, grad_output, indices, params):
        ctx.save_for_backward(indices)
        if grad_output.is_cuda:
            return _cuda_kernels.max_pool2d_backward(params, grad_output, indices)
        return torch.from_numpy(_kernels.max_pool2d_backward(params, _np(grad_output), _np(indices)))

    @staticmethod
    def backward(ctx, grad_grad_input):
        (indices,) = ctx.saved_tensors
        gathered = grad_grad_input.flatten(2).gather(2, indices.flatten(2))
        return gathered.view(indices.shape), None, None


class UnfoldFunction(torch.autograd.Function):
    """im2col; its adjoint is col2im (FoldFunction)."""

    @staticmethod
    def forward(ctx, input, params):
        ctx.params = params
        if input.is_cuda:
            return _cuda_kernels.im2col(params, input.shape[0], input)
        return torch.from_numpy(_kernels.im2col(params, input.shape[0], _np(input)))

    @staticmethod
    def backward(ctx, grad_output):
        return FoldFunction.apply(grad_output.contiguous(), ctx.params), None


class FoldFunction(torch.autograd.Function):
    """col2im; its adjoint is im2col (UnfoldFunction)."""

    @staticmethod
    def forward(ctx, input, params):
        ctx.params = params
        if input.is_cuda:
            return _cuda_kernels.col2im(params, input.shape[0], input)
        return torch.from_numpy(_kernels.col2im(params, input.shape[0], _np(input)))

    @staticmethod
    def backward(ctx, grad_output):
        return UnfoldFunction.apply(grad_output.contiguous(), ctx.params), None
