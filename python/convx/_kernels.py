"""numpy-level calls into the C++ kernels: allocate the output, run, report the algorithm.

Inputs must already be C-contiguous arrays of one float dtype and `params` must be
validated; both the torch and the numpy front ends end up here.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from . import _C

CONV2D_ALGOS = ("auto", "direct", "im2col", "winograd_4x4", "winograd_2x2", "shifted", "depthwise")

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


# ---- benchmark mode -------------------------------------------------------------
# Like torch.backends.cudnn.benchmark: off by default (the dispatcher's heuristic
# decides); when on, the first 'auto' call for each shape times every candidate
# once on the real data and the fastest is used for that shape from then on.
# Both Winograd tile sizes are candidates: the heuristic itself picks F(4x4) where
# it is faster, and its float32 error is within a few times a GEMM's. The direct
# reference is a candidate only for small layers (it is a plain loop nest).

_BENCHMARK_CANDIDATES = ("im2col", "shifted", "winograd_2x2", "winograd_4x4", "depthwise", "direct")
_DIRECT_CANDIDATE_MAX_FLOPS = 2e7

_benchmark_lock = threading.Lock()
_benchmark_enabled = False
_benchmark_cache: Dict[Tuple, str] = {}


def set_benchmark(enabled: bool) -> None:
    """Turn benchmark mode on or off (process-wide, like torch.backends.cudnn.benchmark)."""
    global _benchmark_enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r} of type {type(enabled).__name__}")
    _benchmark_enabled = enabled


def benchmark_enabled() -> bool:
    return _benchmark_enabled


def set_allow_winograd_4x4(allowed: bool) -> None:
    """Let 'auto' pick Winograd F(4x4) on the CPU (the default), or keep it to F(2x2).

    Process-wide, like torch.backends.cuda.matmul.allow_tf32: F(4x4) is faster on
    large 3x3 layers, with 5-7x a float32 GEMM's rounding error; F(2x2) stays
    within about 1.5x of it. Forgets benchmark mode's winners, which may be F(4x4).
    """
    if not isinstance(allowed, bool):
        raise TypeError(f"allowed must be a bool, got {allowed!r} of type {type(allowed).__name__}")
    _C.set_allow_winograd_4x4(allowed)
    clear_benchmark_cache()


def allow_winograd_4x4() -> bool:
    return _C.allow_winograd_4x4()


def benchmark_cache() -> Dict[Tuple, str]:
    """A copy of the winners so far: {(op, dtype, shape..., threads): algo}."""
    with _benchmark_lock:
        return dict(_benchmark_cache)


def clear_benchmark_cache() -> None:
    with _benchmark_lock:
        _benchmark_cache.clear()


def _shape_key(op: str, p, dtype) -> Tuple:
    return (op, np.dtype(dtype).name, p.N, p.C, p.H, p.W, p.K, p.R, p.S, p.stride_h, p.stride_w, p.pad_top,
            p.pad_bottom, p.pad_left, p.pad_right, p.dilation_h, p.dilation_w, p.groups, _C.max_threads())


def _resolve(op: str, p, dtype, algo: str, run: Callable[[str], str]) -> str:
    """The algorithm to run: `algo` itself unless it is 'auto' in benchmark mode."""
    if algo != "auto" or not _benchmark_enabled:
        return algo
    key = _shape_key(op, p, dtype)
    with _benchmark_lock:
        cached = _benchmark_cache.get(key)
    if cached is not None:
        return cached
    flops = 2.0 * p.N * p.K * p.out_h() * p.out_w() * (p.C // p.groups) * p.R * p.S
    timings = {}
    for candidate in _BENCHMARK_CANDIDATES:
        if candidate == "direct" and flops > _DIRECT_CANDIDATE_MAX_FLOPS:
            continue
        if candidate == "winograd_4x4" and not _C.allow_winograd_4x4():
            continue
        try:
            ran = run(candidate)  # warm-up; raises ValueError where the algorithm does not apply
        except ValueError:
            continue
        if ran != candidate:  # e.g. no Winograd weight gradient: it ran im2col instead
            continue
        start = time.perf_counter()
        run(candidate)
        timings[candidate] = time.perf_counter() - start
    best = min(timings, key=timings.get)
    with _benchmark_lock:
        _benchmark_cache[key] = best
    return best


def conv2d_forward(p, x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray], algo: str) -> np.ndarray:
    y = np.empty((p.N, p.K, p.out_h(), p.out_w()), dtype=x.dtype)
    algo = _resolve("conv2d_forward", p, x.dtype, algo, lambda a: _C.conv2d_forward(p, x, w, b, y, a))
    _note("conv2d_forward", _C.conv2d_forward(p, x, w, b, y, algo))
    return y


def conv2d_backward_data(p, gy: np.ndarray, w: np.ndarray, algo: str) -> np.ndarray:
    gx = np.empty((p.N, p.C, p.H, p.W), dtype=gy.dtype)
    algo = _resolve("conv2d_backward_data", p, gy.dtype, algo, lambda a: _C.conv2d_backward_data(p, gy, w, gx, a))
    _note("conv2d_backward_data", _C.conv2d_backward_data(p, gy, w, gx, algo))
    return gx


def conv2d_backward_weight(p, gy: np.ndarray, x: np.ndarray, algo: str) -> np.ndarray:
    gw = np.empty((p.K, p.C // p.groups, p.R, p.S), dtype=gy.dtype)
    algo = _resolve("conv2d_backward_weight", p, gy.dtype, algo,
                    lambda a: _C.conv2d_backward_weight(p, gy, x, gw, a))
    _note("conv2d_backward_weight", _C.conv2d_backward_weight(p, gy, x, gw, algo))
    return gw


def conv2d_backward_bias(p, gy: np.ndarray) -> np.ndarray:
    gb = np.empty((p.K,), dtype=gy.dtype)
    _C.conv2d_backward_bias(p, gy, gb)
    return gb


def max_pool2d_forward(p, x: np.ndarray, index_dtype=np.int64):
    """(output, indices); index_dtype np.int32 needs H*W < 2**31."""
    shape = (p.N, p.C, p.out_h(), p.out_w())
    y = np.empty(shape, dtype=x.dtype)
    indices = np.empty(shape, dtype=index_dtype)
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
