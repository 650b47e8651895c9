"""Normalising and checking the Python-level arguments of the convx ops.

Every check here runs before anything is allocated. Errors name the argument as
the caller spelled it and show the value: ValueError for bad values and shapes,
TypeError for bad types. Numeric limits that depend on several arguments at once
(output sizes, int64 overflow) are checked by the C++ params structs, which raise
ValueError in the same style.
"""
from __future__ import annotations

import numbers
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _C

try:  # torch is optional: numpy users only need the kernels.
    import torch
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
FLOAT_DTYPES = ("float32", "float64")


def as_int(name: str, value: Any) -> int:
    """An int argument: Python or numpy integer (not bool) inside int64."""
    # A plain int skips the numbers.Integral test, whose ABC lookup was a tenth
    # of a conv2d call's argument checks (type(True) is bool, not int).
    if type(value) is not int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
        value = int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name} must fit in int64, got {value}")
    return value


def as_pair(name: str, value: Any) -> Tuple[int, int]:
    """An int or a sequence of one or two ints, as torch's _pair accepts."""
    if type(value) is int:
        v = as_int(name, value)
        return v, v
    if isinstance(value, (tuple, list)) or (torch is not None and isinstance(value, torch.Size)):
        items = tuple(value)
        if len(items) == 1:
            items = items * 2
        if len(items) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return as_int(name, items[0]), as_int(name, items[1])
    v = as_int(name, value)
    return v, v


def positive_pair(name: str, value: Any) -> Tuple[int, int]:
    pair = as_pair(name, value)
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"{name} must be positive, got {_show(value)}")
    return pair


def non_negative_pair(name: str, value: Any) -> Tuple[int, int]:
    pair = as_pair(name, value)
    if pair[0] < 0 or pair[1] < 0:
        raise ValueError(f"{name} must be non-negative, got {_show(value)}")
    return pair


def _show(value: Any) -> str:
    return str(tuple(value)) if isinstance(value, (list, tuple)) else str(value)


# ---- arrays and tensors ------------------------------------------------------------

def is_tensor(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def present_arrays(required: Dict[str, Any], optional: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The required arrays and the optional ones that are not None, by name."""
    if not optional:
        return required
    arrays = dict(required)
    arrays.update({name: a for name, a in optional.items() if a is not None})
    return arrays


def array_kind(required: Dict[str, Any], optional: Optional[Dict[str, Any]] = None) -> str:
    """'torch' or 'numpy' for a set of named array arguments (optional ones may be None).

    All must be of one kind: mixing numpy arrays and torch tensors is a TypeError
    rather than a silent conversion that would cut the autograd graph.
    """
    kinds = {}
    for name, a in present_arrays(required, optional).items():
        if is_tensor(a):
            if a.layout != torch.strided:
                raise TypeError(f"{name} must be a dense (strided) tensor, got layout {a.layout}")
            kinds[name] = "torch"
        elif isinstance(a, np.ndarray):
            kinds[name] = "numpy"
        else:
            raise TypeError(f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(a).__name__}")
    if len(kinds) > 1 and len(set(kinds.values())) > 1:
        raise TypeError("arguments mix numpy arrays and torch tensors: "
                        + ", ".join(f"{n} is {k}" for n, k in kinds.items()))
    return next(iter(kinds.values()))


def dtype_name(a: Any) -> str:
    return str(a.dtype).replace("torch.", "")


def check_float(name: str, a: Any) -> None:
    if dtype_name(a) not in FLOAT_DTYPES:
        if isinstance(a, np.ndarray) and a.dtype.kind == "f" and not a.dtype.isnative:
            raise TypeError(f"{name} must be float32 or float64 in native byte order, got {a.dtype.str} "
                            f"(convert with .astype({a.dtype.newbyteorder('=').name}))")
        raise TypeError(f"{name} must be float32 or float64, got {dtype_name(a)}")


def check_same_dtype(ref_name: str, ref: Any, name: str, a: Any) -> None:
    if a is not None and dtype_name(a) != dtype_name(ref):
        raise TypeError(f"{name} dtype {dtype_name(a)} does not match {ref_name} dtype {dtype_name(ref)}")


def check_device(name: str, a: Any) -> None:
    """The kernels run on the host, and on CUDA devices in a build with CUDA: a tensor elsewhere is refused."""
    if not is_tensor(a) or a.is_cpu:  # is_cpu: no torch.device object made
        return
    if a.device.type == "cuda" and _C.has_cuda:
        return
    if _C.has_cuda:
        raise ValueError(f"{name} is on device {a.device}, but convx runs on the CPU and on CUDA devices only; "
                         f"move it with .cpu() or .cuda()")
    raise ValueError(f"{name} is on device {a.device}, but convx runs on the CPU only in this build "
                     f"(convx.has_cuda is False: it was built without CUDA); move it with .cpu()")


def check_same_device(arrays: Dict[str, Any]) -> None:
    """All tensor arguments of one call must live on one device (no implicit copies)."""
    if all(not is_tensor(a) or a.is_cpu for a in arrays.values()):
        return
    devices = {name: a.device for name, a in arrays.items() if is_tensor(a)}
    if len(set(devices.values())) > 1:
        first = next(iter(devices))
        other = next(n for n, d in devices.items() if d != devices[first])
        raise ValueError(f"{other} is on device {devices[other]} but {first} is on device {devices[first]}: "
                         f"all tensor arguments must be on the same device")


def is_cuda(a: Any) -> bool:
    return is_tensor(a) and a.device.type == "cuda"


def check_rank(name: str, a: Any, ranks: Tuple[int, ...], what: str) -> None:
    if a.ndim not in ranks:
        expected = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name} must be {expected} ({what}), got {a.ndim}-D of shape {tuple(a.shape)}")


def is_channels_last(a: Any) -> bool:
    """True for a 4-D tensor laid out NHWC but not also NCHW-contiguous (torch's rule)."""
    return (is_tensor(a) and a.dim() == 4 and not a.is_contiguous()
            and a.is_contiguous(memory_format=torch.channels_last))
