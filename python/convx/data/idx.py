"""The IDX format of the MNIST files (http://yann.lecun.com/exdb/mnist/): a magic
number (two zero bytes, a type code, the number of dimensions), one big-endian
uint32 per dimension, then the values, big-endian, row-major."""
from __future__ import annotations

import gzip
from typing import BinaryIO

import numpy as np

# IDX type code -> numpy dtype (big-endian where it matters)
IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _open(path: str) -> BinaryIO:
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a native-endian array."""
    with _open(path) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"path is not an IDX file (bad magic number): {path!r}")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_DTYPES:
        raise ValueError(f"path has unknown IDX type code 0x{type_code:02x}: {path!r}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"path is truncated inside the IDX header: {path!r}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"path holds {len(data)} bytes but its IDX header {shape} needs {expected}: {path!r}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray) -> None:
    """Write an array as an IDX file (gzip-compressed when path ends in .gz)."""
    array = np.asarray(array)
    codes = {v.newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise TypeError(f"array dtype must be one of uint8, int8, int16, int32, float32, float64, got {array.dtype}")
    header = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(IDX_DTYPES[codes[native]]).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)
