"""CUDA tensors -> the CUDA kernels: allocate with torch, launch on torch's current stream.

The counterpart of _kernels.py for tensors on a CUDA device. Inputs must already
be C-contiguous tensors of one float dtype on one device, and `params` must be
validated (functional.py and _args.py see to both). Outputs and workspaces are
allocated with torch on the input's device, so they come from torch's caching
allocator and are ordered on the current stream; the kernels are queued on
`torch.cuda.current_stream(device)` and nothing here waits for them.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import _C
from ._kernels import _note

CONV2D_ALGOS = ("auto", "direct", "implicit_gemm")


def check_algo(algo: str) -> None:
    if algo not in CONV2D_ALGOS:
        raise ValueError(f"algo for CUDA tensors must be one of {CONV2D_ALGOS}, got {algo!r}")


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _where(t: torch.Tensor) -> Tuple[int, int]:
    """(device index, current stream handle) for a launch on t's device."""
    return t.device.index, torch.cuda.current_stream(t.device).cuda_stream


def _sm_count(t: torch.Tensor) -> int:
    # torch caches the device properties: no driver call per launch.
    return torch.cuda.get_device_properties(t.device).multi_processor_count


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def conv2d_forward(p, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], algo: str) -> torch.Tensor:
    check_algo(algo)
    y = torch.empty((p.N, p.K, p.out_h(), p.out_w()), dtype=x.dtype, device=x.device)
    device, stream = _where(x)
    _note("conv2d_forward_cuda", _C.conv2d_forward_cuda(p, _dtype(x), x.data_ptr(), w.data_ptr(), _ptr(b),
                                                        y.data_ptr(), algo, device, stream))
    return y


def conv2d_backward_data(p, gy: torch.Tensor, w: torch.Tensor, algo: str) -> torch.Tensor:
    check_algo(algo)
    gx = torch.empty((p.N, p.C, p.H, p.W), dtype=gy.dtype, device=gy.device)
    device, stream = _where(gy)
    _note("conv2d_backward_data_cuda", _C.conv2d_backward_data_cuda(p, _dtype(gy), gy.data_ptr(), w.data_ptr(),
                                                                    gx.data_ptr(), algo, device, stream))
    return gx


def conv2d_backward_weight(p, gy: torch.Tensor, x: torch.Tensor, algo: str) -> torch.Tensor:
    check_algo(algo)
    gw = torch.empty((p.K, p.C // p.groups, p.R, p.S), dtype=gy.dtype, device=gy.device)
    sm_count = _sm_count(gy)
    # The split of the N*OH*OW reduction (and so the workspace) depends on the SM
    # count only: repeatable bitwise on one kind of device.
    _, workspace_bytes = _C.conv2d_cuda_plan(p, "backward_weight", algo, _dtype(gy), sm_count)
    workspace = torch.empty((workspace_bytes,), dtype=torch.uint8, device=gy.device) if workspace_bytes else None
    device, stream = _where(gy)
    ran = _C.conv2d_backward_weight_cuda(p, _dtype(gy), gy.data_ptr(), x.data_ptr(), gw.data_ptr(), algo,
                                         _ptr(workspace), workspace_bytes, sm_count, device, stream)
    _note("conv2d_backward_weight_cuda", ran)
    return gw


def conv2d_backward_bias(p, gy: torch.Tensor) -> torch.Tensor:
    gb = torch.empty((p.K,), dtype=gy.dtype, device=gy.device)
    device, stream = _where(gy)
    _C.conv2d_backward_bias_cuda(p, _dtype(gy), gy.data_ptr(), gb.data_ptr(), device, stream)
    return gb


def max_pool2d_forward(p, x: torch.Tensor):
    shape = (p.N, p.C, p.out_h(), p.out_w())
    y = torch.empty(shape, dtype=x.dtype, device=x.device)
    indices = torch.empty(shape, dtype=torch.int64, device=x.device)
    device, stream = _where(x)
    _C.max_pool2d_forward_cuda(p, _dtype(x), x.data_ptr(), y.data_ptr(), indices.data_ptr(), device, stream)
    return y, indices


def max_pool2d_backward(p, gy: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    gx = torch.empty((p.N, p.C, p.H, p.W), dtype=gy.dtype, device=gy.device)
    device, stream = _where(gy)
    _C.max_pool2d_backward_cuda(p, _dtype(gy), gy.data_ptr(), indices.data_ptr(), gx.data_ptr(), device, stream)
    return gx


def im2col(p, batch: int, x: torch.Tensor) -> torch.Tensor:
    cols = torch.empty((batch, p.C * p.kernel_h * p.kernel_w, p.out_h() * p.out_w()), dtype=x.dtype,
                       device=x.device)
    device, stream = _where(x)
    _C.im2col_cuda(p, batch, _dtype(x), x.data_ptr(), cols.data_ptr(), device, stream)
    return cols


def col2im(p, batch: int, cols: torch.Tensor) -> torch.Tensor:
    x = torch.empty((batch, p.C, p.H, p.W), dtype=cols.dtype, device=cols.device)
    device, stream = _where(cols)
    _C.col2im_cuda(p, batch, _dtype(cols), cols.data_ptr(), x.data_ptr(), device, stream)
    return x
