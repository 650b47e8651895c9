"""convx: hand-written convolution kernels for PyTorch and numpy.

    import convx
    y = convx.functional.conv2d(x, w, b, stride=1, padding=1)   # torch or numpy
    layer = convx.nn.Conv2d(3, 16, 3, padding=1)                 # drop-in for torch.nn.Conv2d
    model = convx.nn.convert(model)                              # swap a whole model's layers
"""
from . import _C
from . import functional
from ._kernels import (allow_winograd_4x4, benchmark_cache, benchmark_enabled, clear_benchmark_cache, record_algos,
                       set_allow_winograd_4x4, set_benchmark)

__version__ = _C.__version__
has_cuda: bool = bool(_C.has_cuda)
build_type: str = _C.build_type


def simd_level() -> str:
    """Instruction set convx's SIMD kernels use on this CPU: 'avx512', 'avx2' or 'scalar'."""
    return _C.simd_level()


def get_num_threads() -> int:
    """OpenMP threads a convx kernel uses (OMP_NUM_THREADS before import, or set_num_threads)."""
    return _C.max_threads()


def set_num_threads(threads: int) -> None:
    """Use ``threads`` OpenMP threads in convx kernels started from the calling Python
    thread from now on (like torch.set_num_threads; other threads keep their own setting)."""
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int, got {threads!r} of type {type(threads).__name__}")
    if threads <= 0:
        raise ValueError(f"threads must be positive, got {threads}")
    _C.set_num_threads(threads)


def workspace_bytes() -> int:
    """Bytes of scratch memory convx's CPU kernels keep between calls (all threads).

    Each thread keeps one block, as large as the most any call has needed at once
    (packed GEMM operands, Winograd tiles, padded images; up to 64 MB), so the
    next call does not page-fault fresh memory in again; release_workspace()
    gives it back."""
    return _C.workspace_bytes_held()


def release_workspace() -> None:
    """Free the scratch buffers kept by the calling thread and its OpenMP team."""
    _C.release_workspace()


def __getattr__(name):
    # convx.nn needs torch; import it lazily so numpy-only users can import convx.
    if name == "nn":
        import importlib
        return importlib.import_module(".nn", __name__)
    raise AttributeError(f"module 'convx' has no attribute {name!r}")


__all__ = ["functional", "nn", "record_algos", "set_benchmark", "benchmark_enabled", "benchmark_cache",
           "set_allow_winograd_4x4", "allow_winograd_4x4",
           "clear_benchmark_cache", "has_cuda", "build_type", "simd_level", "get_num_threads",
           "set_num_threads", "workspace_bytes", "release_workspace", "__version__"]
