"""The torch-style API: conv2d, max_pool2d, unfold, fold.

Same signatures and semantics as torch.nn.functional. Each takes torch tensors
(any strides; autograd through torch.autograd.Function) or numpy arrays (numpy
out, no torch needed). Every argument is checked before anything is allocated.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from . import _C, _kernels
from ._args import (array_kind, as_int, check_device, check_float, check_rank, check_same_device,
                    check_same_dtype, is_channels_last, is_cuda, non_negative_pair, positive_pair, present_arrays,
                    torch)

__all__ = ["conv2d", "max_pool2d", "unfold", "fold"]

IntPair = Union[int, Tuple[int, int]]
# Tensor types the repeat-call paths of conv2d and max_pool2d accept (subclasses
# with their own __torch_function__ take the full path).
_PLAIN_TENSOR_TYPES = () if torch is None else (torch.Tensor, torch.nn.Parameter)


def _check_arrays(required: dict, optional: Optional[dict] = None) -> str:
    arrays = present_arrays(required, optional)
    # The common case, dense float tensors on the CPU, for which every check below
    # passes, in a few attribute reads: called right after a conv has evicted
    # the interpreter from the caches, the general checks took ~25 us.
    if torch is not None:
        for a in arrays.values():
            if not (isinstance(a, torch.Tensor) and a.is_cpu and a.layout == torch.strided
                    and (a.dtype == torch.float32 or a.dtype == torch.float64)):
                break
        else:
            return "torch"
    kind = array_kind(arrays)
    for name, a in arrays.items():
        check_float(name, a)
        check_device(name, a)
    check_same_device(arrays)
    return kind


def _contiguous_numpy(a: np.ndarray) -> np.ndarray:
    # C-contiguous and aligned, copying only when the array is not already so.
    return np.require(a, requirements=("C", "A"))


# ---- conv2d ----------------------------------------------------------------------

def _conv2d_padding(padding: Any, kernel: Tuple[int, int], stride: Tuple[int, int],
                    dilation: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) for an int, a pair, 'valid' or 'same'."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' is not supported for strided convolutions, got stride {stride}")
            # The output keeps the input size: pad dilation*(k-1) in total; when that
            # is odd the extra row/column goes at the bottom/right, as in torch.
            pads = []
            for k, d in zip(kernel, dilation):
                total = as_int("padding='same' total padding (dilation * (kernel - 1))", d * (k - 1))
                pads.append((total // 2, total - total // 2))
            return pads[0][0], pads[0][1], pads[1][0], pads[1][1]
        raise ValueError(f"padding must be 'same', 'valid', an int or a pair of ints, got {padding!r}")
    ph, pw = non_negative_pair("padding", padding)
    return ph, ph, pw, pw


# ---- repeat calls ---------------------------------------------------------------------
# A model calls conv2d and max_pool2d with the same arguments step after step,
# and right after a large conv the interpreter is cold: the checks of the full
# path then cost ~20x their warm time (~75 us a conv2d call after a torch conv of
# AlphaGo's input layer, ~10 us warm). A repeat call -- 4-D, dense, contiguous
# CPU tensors of one float dtype, and ints, pairs of ints (or a padding string,
# an algo name) as before -- reuses the params that the full path validated for
# the same shapes and arguments. Every other call takes the full path, which
# fills the cache (cleared when it holds 1024 entries).
_validated_params: Dict[Tuple, Any] = {}
_VALIDATED_PARAMS_MAX = 1024


def _is_int_or_pair(value: Any) -> bool:
    # Exact types: True == 1 and hashes alike, so a bool must not find an int's entry.
    kind = type(value)
    return kind is int or (kind is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int)


def _dense_float_cpu(*tensors) -> bool:
    """4-D first tensor; all plain, dense, contiguous CPU tensors of one float dtype."""
    dtype = tensors[0].dtype if type(tensors[0]) in _PLAIN_TENSOR_TYPES else None
    if dtype is not torch.float32 and dtype is not torch.float64:
        return False
    for t in tensors:
        if not (type(t) in _PLAIN_TENSOR_TYPES and t.dtype is dtype and t.is_cpu and t.layout is torch.strided
                and t.is_contiguous()):
            return False
    return tensors[0].ndim == 4


def _remember_params(key: Optional[Tuple], params) -> None:
    if key is not None:
        if len(_validated_params) >= _VALIDATED_PARAMS_MAX:
            _validated_params.clear()
        _validated_params[key] = params


def _repeat_conv2d_key(input, weight, bias, stride, padding, dilation, groups, algo) -> Optional[Tuple]:
    """The cache key of a conv2d call that may reuse validated params, else None."""
    if torch is None or not (_is_int_or_pair(stride) and _is_int_or_pair(dilation) and type(groups) is int
                             and (type(padding) is str or _is_int_or_pair(padding))
                             and (algo is None or type(algo) is str)):
        return None
    if not (_dense_float_cpu(input, weight) if bias is None else _dense_float_cpu(input, weight, bias)):
        return None
    return ("conv2d", input.shape, weight.shape, None if bias is None else bias.shape, stride, padding, dilation,
            groups, algo)


def conv2d(input, weight, bias=None, stride: IntPair = 1, padding: Union[str, IntPair] = 0,
           dilation: IntPair = 1, groups: int = 1, *, algo: Optional[str] = None):
    """2-D convolution (cross-correlation, as torch), like torch.nn.functional.conv2d.

    input (N, C, H, W) or (C, H, W); weight (K, C/groups, R, S); bias (K,) or None.
    ``algo`` forces a kernel: 'direct' (the readable reference), 'im2col'
    (im2col + GEMM), 'shifted' (the same GEMM reading shifted views of a padded
    copy of the image, no im2col), 'winograd_2x2' (3x3 or 5x5 stride-1 layers),
    'winograd_4x4' (3x3 stride-1 layers) or 'depthwise' (groups == in_channels);
    None or 'auto' lets the dispatcher choose.
    For CUDA tensors the choices are 'direct' (the GPU reference) and 'implicit_gemm'.
    """
    key = _repeat_conv2d_key(input, weight, bias, stride, padding, dilation, groups, algo)
    if key is not None:
        p = _validated_params.get(key)
        if p is not None:
            from . import autograd
            return autograd.conv2d(input, weight, bias, p, "auto" if algo is None else algo)
    kind = _check_arrays({"input": input, "weight": weight}, {"bias": bias})
    check_same_dtype("input", input, "weight", weight)
    check_same_dtype("input", input, "bias", bias)
    check_rank("input", input, (3, 4), "(N, C, H, W) or unbatched (C, H, W)")
    check_rank("weight", weight, (4,), "(out_channels, in_channels / groups, kH, kW)")
    if bias is not None:
        check_rank("bias", bias, (1,), "(out_channels,)")
    stride_ = positive_pair("stride", stride)
    dilation_ = positive_pair("dilation", dilation)
    groups = as_int("groups", groups)
    if groups <= 0:
        raise ValueError(f"groups must be positive, got {groups}")
    algo = "auto" if algo is None else algo
    if not isinstance(algo, str):
        raise TypeError(f"algo must be a str or None, got {algo!r} of type {type(algo).__name__}")
    if is_cuda(input):  # the CUDA kernels have their own algorithms
        from ._cuda_kernels import check_algo
        check_algo(algo)
    elif algo not in _kernels.CONV2D_ALGOS:
        raise ValueError(f"algo must be one of {_kernels.CONV2D_ALGOS}, got {algo!r}")

    batched = input.ndim == 4
    N, C, H, W = tuple(input.shape) if batched else (1,) + tuple(input.shape)
    K, Cg, R, S = tuple(weight.shape)
    if Cg * groups != C:
        raise ValueError(f"weight of shape {tuple(weight.shape)} with groups={groups} expects input with "
                         f"{Cg * groups} channels, got input of shape {tuple(input.shape)} with {C} channels")
    if bias is not None and tuple(bias.shape) != (K,):
        raise ValueError(f"bias must have shape ({K},) to match weight.shape[0], got {tuple(bias.shape)}")
    pt, pb, pl, pr = _conv2d_padding(padding, (R, S), stride_, dilation_)

    p = _C.Conv2dParams(N, C, H, W, K, R, S, stride_, (pt, pb, pl, pr), dilation_, groups)

    if kind == "numpy":
        x = _contiguous_numpy(input if batched else input[None])
        b = None if bias is None else _contiguous_numpy(bias)
        out = _kernels.conv2d_forward(p, x, _contiguous_numpy(weight), b, algo)
        return out if batched else out[0]

    _remember_params(key, p)
    from . import autograd
    x = (input if batched else input.unsqueeze(0)).contiguous()
    out = autograd.conv2d(x, weight.contiguous(), None if bias is None else bias.contiguous(), p, algo)
    if not batched:
        return out.squeeze(0)
    if is_channels_last(input) or is_channels_last(weight):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


# ---- max_pool2d --------------------------------------------------------------------

def _pool2d_params(N: int, C: int, H: int, W: int, kernel: Tuple[int, int], stride: Tuple[int, int],
                   padding: Tuple[int, int], dilation: Tuple[int, int], ceil_mode: bool):
    """Validated kernel parameters from already-checked (h, w) pairs."""
    return _C.Pool2dParams(N, C, H, W, kernel, stride, padding, dilation, bool(ceil_mode))


def max_pool2d(input, kernel_size: IntPair, stride: Optional[IntPair] = None, padding: IntPair = 0,
               dilation: IntPair = 1, ceil_mode: bool = False, return_indices: bool = False):
    """2-D max pooling, like torch.nn.functional.max_pool2d.

    With return_indices=True also returns the argmax of each window as an int64
    flat h*W + w offset inside its (n, c) plane, exactly as torch; the backward
    pass routes each output gradient to that element only.
    """
    key = None
    if (torch is not None and _is_int_or_pair(kernel_size) and (stride is None or _is_int_or_pair(stride))
            and _is_int_or_pair(padding) and _is_int_or_pair(dilation) and type(ceil_mode) is bool
            and _dense_float_cpu(input)):
        key = ("max_pool2d", input.shape, kernel_size, stride, padding, dilation, ceil_mode)
        p = _validated_params.get(key)
        if p is not None:
            from . import autograd
            out, indices = autograd.max_pool2d(input, p, keep_indices_only=not return_indices)
            return (out, indices) if return_indices else out

    kind = _check_arrays({"input": input})
    check_rank("input", input, (3, 4), "(N, C, H, W) or unbatched (C, H, W)")
    kernel = positive_pair("kernel_size", kernel_size)
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride_ = kernel
    else:
        stride_ = positive_pair("stride", stride)
    padding_ = non_negative_pair("padding", padding)
    dilation_ = positive_pair("dilation", dilation)

    batched = input.ndim == 4
    N, C, H, W = tuple(input.shape) if batched else (1,) + tuple(input.shape)
    p = _pool2d_params(N, C, H, W, kernel, stride_, padding_, dilation_, ceil_mode)

    if kind == "numpy":
        out, indices = _kernels.max_pool2d_forward(p, _contiguous_numpy(input if batched else input[None]))
        if not batched:
            out, indices = out[0], indices[0]
        return (out, indices) if return_indices else out

    _remember_params(key, p)
    from . import autograd
    x = (input if batched else input.unsqueeze(0)).contiguous()
    out, indices = autograd.max_pool2d(x, p, keep_indices_only=not return_indices)
    if not batched:
        out, indices = out.squeeze(0), indices.squeeze(0)
    elif is_channels_last(input):
        out = out.contiguous(memory_format=torch.channels_last)
        if return_indices:  # else they are the backward's, which reads them as NCHW
            indices = indices.contiguous(memory_format=torch.channels_last)
    return (out, indices) if return_indices else out


# ---- unfold / fold -------------------------------------------------------------------

def _im2col_params(C: int, H: int, W: int, kernel_size, dilation, padding, stride):
    kernel = positive_pair("kernel_size", kernel_size)
    dilation_ = positive_pair("dilation", dilation)
    padding_ = non_negative_pair("padding", padding)
    stride_ = positive_pair("stride", stride)
    p = _C.Im2colParams()
    p.C, p.H, p.W = C, H, W
    p.kernel_h, p.kernel_w = kernel
    p.stride_h, p.stride_w = stride_
    p.pad_top = p.pad_bottom = padding_[0]
    p.pad_left = p.pad_right = padding_[1]
    p.dilation_h, p.dilation_w = dilation_
    p.validate()
    return p


def unfold(input, kernel_size: IntPair, dilation: IntPair = 1, padding: IntPair = 0, stride: IntPair = 1):
    """Extract sliding blocks (im2col), like torch.nn.functional.unfold.

    (N, C, H, W) -> (N, C*kh*kw, L), L the number of blocks; (C, H, W) -> (C*kh*kw, L).
    """
    kind = _check_arrays({"input": input})
    check_rank("input", input, (3, 4), "(N, C, H, W) or unbatched (C, H, W)")
    batched = input.ndim == 4
    N, C, H, W = tuple(input.shape) if batched else (1,) + tuple(input.shape)
    p = _im2col_params(C, H, W, kernel_size, dilation, padding, stride)

    if kind == "numpy":
        out = _kernels.im2col(p, N, _contiguous_numpy(input if batched else input[None]))
        return out if batched else out[0]
    from . import autograd
    out = autograd.unfold((input if batched else input.unsqueeze(0)).contiguous(), p)
    return out if batched else out.squeeze(0)


def fold(input, output_size: IntPair, kernel_size: IntPair, dilation: IntPair = 1, padding: IntPair = 0,
         stride: IntPair = 1):
    """Sum sliding blocks back into an image (col2im), like torch.nn.functional.fold.

    (N, C*kh*kw, L) -> (N, C, H, W) with (H, W) = output_size; (C*kh*kw, L) -> (C, H, W).
    Where blocks overlap their entries add up.
    """
    kind = _check_arrays({"input": input})
    check_rank("input", input, (2, 3), "(N, C*kh*kw, L) or unbatched (C*kh*kw, L)")
    H, W = positive_pair("output_size", output_size)
    kh, kw = positive_pair("kernel_size", kernel_size)
    batched = input.ndim == 3
    N, rows, L = tuple(input.shape) if batched else (1,) + tuple(input.shape)
    if rows % (kh * kw) != 0:
        raise ValueError(f"input.shape[{input.ndim - 2}] = {rows} must be divisible by the product of "
                         f"kernel_size {(kh, kw)} = {kh * kw}")
    p = _im2col_params(rows // (kh * kw), H, W, kernel_size, dilation, padding, stride)
    blocks = (p.out_h(), p.out_w())
    if blocks[0] * blocks[1] != L:
        raise ValueError(f"input.shape[{input.ndim - 1}] = {L} must equal the number of sliding blocks, "
                         f"{blocks[0]} x {blocks[1]} = {blocks[0] * blocks[1]}, that output_size {(H, W)}, "
                         f"kernel_size {(kh, kw)}, dilation, padding and stride give")

    if kind == "numpy":
        out = _kernels.col2im(p, N, _contiguous_numpy(input if batched else input[None]))
        return out if batched else out[0]
    from . import autograd
    out = autograd.fold((input if batched else input.unsqueeze(0)).contiguous(), p)
    return out if batched else out.squeeze(0)
