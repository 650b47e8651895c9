"""Peak memory of one call: how far the process's resident set rises above where it
stood when the call began (Linux only; None elsewhere).

Method: free what the allocator holds but does not use (glibc's malloc_trim(0):
otherwise freed blocks from earlier calls are reused without the resident set
growing, hiding the call's needs), reset the high-water mark (writing "5" to
/proc/self/clear_refs sets VmHWM to the current VmRSS), note VmRSS, run the call,
read VmHWM. The difference counts everything the call touches for the first time:
its outputs, workspaces, saved activations, and any cache a library grows. Memory
a library keeps cached from earlier calls (a warmed-up primitive cache) is not
counted again, so the number is the steady-state cost of one more call. convx's
own kept scratch buffers (convx.workspace_bytes) are the exception: the suite
releases them before measuring convx's call, so its workspace is always counted.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from typing import Callable, Optional

_libc = None


def _malloc_trim() -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:  # glibc only
        trim(0)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def supported() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False


def peak_extra_bytes(fn: Callable[[], object]) -> Optional[int]:
    """Bytes the resident set rose above its starting level during fn()."""
    if not supported():
        return None
    gc.collect()
    _malloc_trim()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    return max(0, peak - before) * 1024
