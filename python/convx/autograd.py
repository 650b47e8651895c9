"""torch.autograd.Function classes over the C++ kernels.

Each Function receives C-contiguous tensors (functional.py makes them so with
differentiable torch ops, which also route gradients back through any view,
expand or layout change) and validated params. Host tensors cross into the
kernels as zero-copy numpy views and come back with torch.from_numpy.

Backward passes are first-order (once_differentiable): asking for a gradient of
a gradient raises instead of silently returning a wrong one.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import _kernels


def _np(t: torch.Tensor):
    return t.detach().numpy()


def _grad_np(t: torch.Tensor):
    # Incoming gradients may be expanded views (e.g. from .sum()): materialise.
    return t.detach().contiguous().numpy()


class Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, params, algo):
        out = _kernels.conv2d_forward(params, _np(input), _np(weight),
                                      None if bias is None else _np(bias), algo)
        ctx.save_for_backward(input, weight)
        ctx.params, ctx.algo, ctx.has_bias = params, algo, bias is not None
        return torch.from_numpy(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        p, algo = ctx.params, ctx.algo
        gy = _grad_np(grad_output)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.from_numpy(_kernels.conv2d_backward_data(p, gy, _np(weight), algo))
        if ctx.needs_input_grad[1]:
            grad_weight = torch.from_numpy(_kernels.conv2d_backward_weight(p, gy, _np(input), algo))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = torch.from_numpy(_kernels.conv2d_backward_bias(p, gy))
        return grad_input, grad_weight, grad_bias, None, None


class MaxPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, params):
        out, indices = _kernels.max_pool2d_forward(params, _np(input))
        indices = torch.from_numpy(indices)
        ctx.save_for_backward(indices)
        ctx.params = params
        ctx.mark_non_differentiable(indices)
        return torch.from_numpy(out), indices

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, _grad_indices):
        (indices,) = ctx.saved_tensors
        return torch.from_numpy(_kernels.max_pool2d_backward(ctx.params, _grad_np(grad_output), _np(indices))), None


class UnfoldFunction(torch.autograd.Function):
    """im2col forward; its adjoint col2im carries the gradient back."""

    @staticmethod
    def forward(ctx, input, params):
        ctx.params, ctx.batch = params, input.shape[0]
        return torch.from_numpy(_kernels.im2col(params, input.shape[0], _np(input)))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        return torch.from_numpy(_kernels.col2im(ctx.params, ctx.batch, _grad_np(grad_output))), None


class FoldFunction(torch.autograd.Function):
    """col2im forward; its adjoint im2col carries the gradient back."""

    @staticmethod
    def forward(ctx, input, params):
        ctx.params, ctx.batch = params, input.shape[0]
        return torch.from_numpy(_kernels.col2im(params, input.shape[0], _np(input)))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        return torch.from_numpy(_kernels.im2col(ctx.params, ctx.batch, _grad_np(grad_output))), None
