"""Interleaved, adaptive timing of two (or more) functions in one process.

The functions take turns (A B, then B A, ...), so a change in clock speed, a noisy
neighbour or a warming cache hits every side alike; each side's time is the median
of its samples, which shrugs off the occasional preempted run. Rounds continue until
the time budget is spent (and at least min_rounds are done; when calls are so slow,
on a loaded machine, that min_rounds would take over four budgets, three rounds
do, so one slow row cannot stretch the run without bound). Functions faster than
min_sample_s are called several times per sample so the clock's resolution and the
Python call do not dominate.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Sequence


@dataclass(frozen=True)
class TimingPlan:
    budget_s: float = 1.5     # wall time per case, all sides together, after warm-up
    min_rounds: int = 7
    max_rounds: int = 500
    warmup_calls: int = 2     # per side, untimed (caches, page faults, lazy initialisation)
    min_sample_s: float = 2e-3


@dataclass
class Timing:
    seconds: float            # median seconds per call
    samples: List[float]      # seconds per call, one per round
    calls_per_sample: int


def _time_sample(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def time_interleaved(fns: Sequence[Callable[[], object]], plan: TimingPlan) -> List[Timing]:
    """Median seconds per call of each function, measured in alternating rounds."""
    for fn in fns:
        for _ in range(plan.warmup_calls):
            fn()
    # One timed call each sizes the samples.
    estimates = [max(_time_sample(fn, 1), 1e-7) for fn in fns]
    calls = [max(1, math.ceil(plan.min_sample_s / est)) for est in estimates]
    samples: List[List[float]] = [[] for _ in fns]
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one side's sample would be charged to it alone
    try:
        start = time.perf_counter()
        for round_index in range(plan.max_rounds):
            order = range(len(fns)) if round_index % 2 == 0 else reversed(range(len(fns)))
            for i in order:
                samples[i].append(_time_sample(fns[i], calls[i]))
            rounds, elapsed = round_index + 1, time.perf_counter() - start
            if elapsed >= plan.budget_s and (rounds >= plan.min_rounds or
                                             (rounds >= 3 and elapsed >= 4 * plan.budget_s)):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return [Timing(statistics.median(s), s, c) for s, c in zip(samples, calls)]
