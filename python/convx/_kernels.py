"""numpy-level calls into the C++ kernels: allocate the output, run, report the algorithm.

Inputs must already be C-contiguous arrays of one float dtype and `params` must be
validated; both the torch and the numpy front ends end up here.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, List, Optional

import numpy as np

from . import _C

CONV2D_ALGOS = ("auto", "direct", "im2col", "winograd_4x4", "winograd_2x2")

_algo_log: contextvars.ContextVar[Optional[List[str]]] = contextvars.ContextVar("convx_algo_log", default=None)


@contextlib.contextmanager
def record_algos() -> Iterator[List[str]]:
    """Collect which conv2d algorithm ran for each kernel call inside the block.

    >>> with convx.record_algos() as log:
    ...     model(x).sum().backward()
    >>> log  # ['conv2d_forward:im2col', 'conv2d_backward_data:im2col', ...]
    """
    log: List[str] = []
    token = _algo_log.set(log)
    try:
        yield log
    finally:
        _algo_log.reset(token)


def _note(op: str, algo: str) -> None:
    log = _algo_log.get()
    if log is not None:
        log.append(f"{op}:{algo}")


def conv2d_forward(p, x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray], algo: str) -> np.ndarray:
    y = np.empty((p.N, p.K, p.out_h(), p.out_w()), dtype=x.dtype)
    _note("conv2d_forward", _C.conv2d_forward(p, x, w, b, y, algo))
    return y


def conv2d_backward_data(p, gy: np.ndarray, w: np.ndarray, algo: str) -> np.ndarray:
    gx = np.empty((p.N, p.C, p.H, p.W), dtype=gy.dtype)
    _note("conv2d_backward_data", _C.conv2d_backward_data(p, gy, w, gx, algo))
    return gx


def conv2d_backward_weight(p, gy: np.ndarray, x: np.ndarray, algo: str) -> np.ndarray:
    gw = np.empty((p.K, p.C // p.groups, p.R, p.S), dtype=gy.dtype)
    _note("conv2d_backward_weight", _C.conv2d_backward_weight(p, gy, x, gw, algo))
    return gw


def conv2d_backward_bias(p, gy: np.ndarray) -> np.ndarray:
    gb = np.empty((p.K,), dtype=gy.dtype)
    _C.conv2d_backward_bias(p, gy, gb)
    return gb


def max_pool2d_forward(p, x: np.ndarray):
    shape = (p.N, p.C, p.out_h(), p.out_w())
    y = np.empty(shape, dtype=x.dtype)
    indices = np.empty(shape, dtype=np.int64)
    _C.max_pool2d_forward(p, x, y, indices)
    return y, indices


def max_pool2d_backward(p, gy: np.ndarray, indices: np.ndarray) -> np.ndarray:
    gx = np.empty((p.N, p.C, p.H, p.W), dtype=gy.dtype)
    _C.max_pool2d_backward(p, gy, indices, gx)
    return gx


def im2col(p, batch: int, x: np.ndarray) -> np.ndarray:
    cols = np.empty((batch, p.C * p.kernel_h * p.kernel_w, p.out_h() * p.out_w()), dtype=x.dtype)
    _C.im2col(p, batch, x, cols)
    return cols


def col2im(p, batch: int, cols: np.ndarray) -> np.ndarray:
    x = np.empty((batch, p.C, p.H, p.W), dtype=cols.dtype)
    _C.col2im(p, batch, cols, x)
    return x
