"""Runs the cases: validate, time (interleaved), measure memory, note algorithms.

One row per case and thread count. Every row is validated against torch at its own
thread count before it is timed (a race shows up only with threads); a row that
fails validation or raises is marked FAILED and not timed.
"""
from __future__ import annotations

import collections
import os
import platform
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

import convx
from convx import _C
from convx.cli import _cpu_model as cpu_model

from . import memory
from .cases import Case
from .timing import TimingPlan, time_interleaved
from .validation import ValidationError, compare_all
from .workloads import build_workload

QUICK_PLAN = TimingPlan(budget_s=0.25, min_rounds=3, max_rounds=200, warmup_calls=1)
FULL_PLAN = TimingPlan(budget_s=1.5, min_rounds=7, max_rounds=500, warmup_calls=2)


@dataclass
class Row:
    name: str
    kind: str
    dims: str
    threads: int
    status: str = "ok"                        # "ok" or "FAILED"
    error: str = ""
    convx_ms: Optional[float] = None
    torch_ms: Optional[float] = None
    speedup: Optional[float] = None           # t_torch / t_convx
    flops: Optional[int] = None
    convx_gflops: Optional[float] = None
    torch_gflops: Optional[float] = None
    convx_peak_pct: Optional[float] = None    # of the measured FP32 peak at this thread count
    torch_peak_pct: Optional[float] = None
    convx_mem_mb: Optional[float] = None      # resident-set rise during one call
    torch_mem_mb: Optional[float] = None
    algo: str = ""                            # what convx chose, from convx.record_algos()
    algo_calls: Dict[str, int] = field(default_factory=dict)
    max_rel_err: Optional[float] = None
    rounds: int = 0


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    convx.set_num_threads(threads)


def all_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def measure_peak(threads: int, seconds: float, tries: int = 5) -> float:
    """Measured FP32 FLOP/s at a thread count: the best of a few short tries, since
    other work on the machine can only lower the rate of a pure FMA loop."""
    return max(_C.measure_fp32_peak(seconds / tries, threads)["flops_per_second"] for _ in range(tries))


def _set_peak_fractions(row: Row, peak_flops: Optional[float]) -> None:
    if row.flops and peak_flops and row.convx_ms and row.torch_ms:
        row.convx_peak_pct = 100 * row.flops / (row.convx_ms / 1e3) / peak_flops
        row.torch_peak_pct = 100 * row.flops / (row.torch_ms / 1e3) / peak_flops


def machine_info() -> Dict[str, object]:
    return {
        "cpu": cpu_model(),
        "cores_available": all_threads(),
        "simd": convx.simd_level(),
        "convx": convx.__version__,
        "convx_build": convx.build_type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _algo_summary(log: List[str]) -> Dict[str, int]:
    # 'conv2d_backward_data:im2col' -> counts per entry, in order of first use.
    return dict(collections.Counter(log))


def _algo_text(calls: Dict[str, int]) -> str:
    # The algorithm names alone, with counts when a model mixes several.
    by_algo: Dict[str, int] = collections.Counter()
    for entry, n in calls.items():
        by_algo[entry.split(":", 1)[-1]] += n
    if len(by_algo) == 1 and sum(by_algo.values()) == 1:
        return next(iter(by_algo))
    return ", ".join(f"{a} x{n}" for a, n in by_algo.items())


def run_case(case: Case, threads: int, plan: TimingPlan, peak_flops: Optional[float],
             measure_memory: bool = True, references: Optional[dict] = None, seed: int = 0) -> Row:
    """Validate, then time one case at one thread count. references caches float64
    results between calls (the same case at another thread count)."""
    row = Row(case.name, case.kind, case.dims, threads)
    threads_before = torch.get_num_threads(), convx.get_num_threads()
    set_threads(threads)
    try:
        work = build_workload(case, seed)
        row.flops = work.flops
        # The float64 reference does not depend on the thread count: computed once.
        key = (case.name, seed)
        if references is None or key not in references:
            ref = work.results("float64")
            if references is not None:
                references[key] = ref
        else:
            ref = references[key]
        with convx.record_algos() as log:
            convx_results = work.results("convx")
        errors = compare_all(convx_results, work.results("torch"), ref, work.rtol)
        del convx_results
        row.max_rel_err = max(errors.values()) if errors else 0.0
        row.algo_calls = _algo_summary(log)
        row.algo = _algo_text(row.algo_calls)
        t_cx, t_th = time_interleaved([work.run_convx, work.run_torch], plan)
        row.rounds = len(t_cx.samples)
        row.convx_ms, row.torch_ms = t_cx.seconds * 1e3, t_th.seconds * 1e3
        row.speedup = t_th.seconds / t_cx.seconds
        if work.flops:
            row.convx_gflops = work.flops / t_cx.seconds / 1e9
            row.torch_gflops = work.flops / t_th.seconds / 1e9
        _set_peak_fractions(row, peak_flops)
        if measure_memory:
            work.reset()
            # convx keeps its scratch buffers between calls; give them back first so
            # the call allocates them again and they count in its peak.
            convx.release_workspace()
            cx = memory.peak_extra_bytes(work.run_convx)
            work.reset()
            th = memory.peak_extra_bytes(work.run_torch)
            row.convx_mem_mb = None if cx is None else cx / 2**20
            row.torch_mem_mb = None if th is None else th / 2**20
    except ValidationError as e:
        row.status, row.error = "FAILED", f"validation: {e}"
    except Exception as e:  # a crashing case must not stop the suite; the row says why
        row.status = "FAILED"
        row.error = f"{type(e).__name__}: {e} | " + traceback.format_exc(limit=3).replace("\n", " ")
    finally:
        torch.set_num_threads(threads_before[0])
        convx.set_num_threads(threads_before[1])
    return row


def run_suite(cases: Sequence[Case], thread_counts: Sequence[int], plan: TimingPlan, peak_seconds: float,
              on_row: Optional[Callable[[Row], None]] = None, progress=None,
              measure_memory: bool = True, command: str = "") -> Dict[str, object]:
    """Runs every case at every thread count; returns {"machine", "peaks", "rows"}.

    on_row is called with each finished row; progress (a tqdm bar, or None) is
    advanced once per row.
    """
    start = time.perf_counter()
    peaks = {t: measure_peak(t, peak_seconds) for t in thread_counts}
    rows: List[Row] = []
    # float64 references are reused by the next thread count (kept only when there is one).
    references: Optional[dict] = {} if len(thread_counts) > 1 else None
    for threads in thread_counts:
        for case in cases:
            if progress is not None:
                progress.set_description(f"{case.name} @{threads}t")
            row = run_case(case, threads, plan, peaks.get(threads), measure_memory, references)
            rows.append(row)
            # Another short try after every row: on a busy machine the peak
            # seen at the start can be low, and % of peak would then top 100.
            peaks[threads] = max(peaks[threads], measure_peak(threads, 0.05, tries=1))
            _set_peak_fractions(row, peaks[threads])
            if on_row is not None:
                on_row(row)
            if progress is not None:
                progress.update(1)
    for row in rows:  # against the best peak seen during the whole run
        _set_peak_fractions(row, peaks.get(row.threads))
    info = machine_info()
    info["command"] = command
    info["threads"] = list(thread_counts)
    info["wall_s"] = time.perf_counter() - start
    info["timing"] = asdict(plan)
    return {"machine": info, "peaks": {str(t): f for t, f in peaks.items()}, "rows": rows}
