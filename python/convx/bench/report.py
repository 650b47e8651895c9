"""Turning rows into a terminal table, CSV, JSON and the summary against issue 3's targets."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Dict, List, Optional, Sequence

from .suite import Row

# ---- terminal table ------------------------------------------------------------------

_COLUMNS = [  # (header, width, cell)
    ("case", 46, lambda r: r.name),
    ("thr", 3, lambda r: str(r.threads)),
    ("convx ms", 9, lambda r: _num(r.convx_ms)),
    ("torch ms", 9, lambda r: _num(r.torch_ms)),
    ("speed", 7, lambda r: "FAILED" if r.status != "ok" else _num(r.speedup, "x")),
    ("cx GF/s", 7, lambda r: _num(r.convx_gflops)),
    ("th GF/s", 7, lambda r: _num(r.torch_gflops)),
    ("cx %pk", 6, lambda r: _num(r.convx_peak_pct)),
    ("th %pk", 6, lambda r: _num(r.torch_peak_pct)),
    ("cx MB", 7, lambda r: _num(r.convx_mem_mb)),
    ("th MB", 7, lambda r: _num(r.torch_mem_mb)),
    ("convx algo", 0, lambda r: r.algo),
]


def _num(value: Optional[float], suffix: str = "") -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}{suffix}"
    if value >= 10:
        return f"{value:.1f}{suffix}"
    return f"{value:.2f}{suffix}"


def table_header() -> str:
    head = "  ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w, _) in enumerate(_COLUMNS))
    return head + "\n" + "-" * len(head)


def table_row(row: Row) -> str:
    cells = []
    for i, (_, width, cell) in enumerate(_COLUMNS):
        text = cell(row)
        cells.append(f"{text:<{width}}" if i == 0 else f"{text:>{width}}")
    line = "  ".join(cells)
    if row.status != "ok":
        line += f"\n    FAILED: {row.error}"
    return line


def table(rows: Sequence[Row]) -> str:
    return "\n".join([table_header()] + [table_row(r) for r in rows])


# ---- files ---------------------------------------------------------------------------

_CSV_FIELDS = [f.name for f in fields(Row) if f.name != "algo_calls"]


def write_csv(rows: Sequence[Row], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})


def write_json(result: Dict[str, object], targets: Sequence["Target"], path: str) -> None:
    doc = {
        "machine": result["machine"],
        "fp32_peak_flops": result["peaks"],
        "rows": [asdict(r) for r in result["rows"]],
        "targets": [asdict(t) for t in targets],
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


# ---- targets -------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    goal: float                 # the value that meets the target
    value: Optional[float]      # measured (None: no rows ran for it)
    status: str                 # "PASS", "MISS" or "n/a"
    detail: str = ""
    unit: str = "x"             # "x": speed vs torch; "%": convx's share of the measured FP32 peak;
    #                             "% of rows": the share of rows that meet a per-row goal

    def format(self, value: float) -> str:
        return f"{value:.2f}x" if self.unit == "x" else f"{value:.0f}{self.unit}"

    @property
    def goal_text(self) -> str:
        return f"{self.goal:g}{self.unit}"


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _target(name: str, goal: float, rows: List[Row], combine: Callable[[List[float]], float],
            what: str, unit: str = "x") -> Target:
    """The target over rows: combine() of their speeds vs torch (unit "x") or of
    convx's % of the FP32 peak (unit "%")."""
    target = Target(name, goal, None, "n/a", "no rows in this run", unit)
    if not rows:
        return target
    failed = [r.name for r in rows if r.status != "ok"]
    if failed:
        target.status, target.detail = "MISS", f"{len(failed)} FAILED row(s): {', '.join(failed)}"
        return target

    def measure(r: Row) -> float:
        return r.speedup if unit == "x" else r.convx_peak_pct

    if any(measure(r) is None for r in rows):  # % of peak, with no peak measured
        target.detail = "no FP32 peak measured for these rows"
        return target
    target.value = combine([measure(r) for r in rows])
    worst = min(rows, key=measure)
    target.status = "PASS" if target.value >= goal else "MISS"
    target.detail = f"{what} over {len(rows)} row(s)" + (f"; slowest: {worst.name} {target.format(measure(worst))}"
                                                          if len(rows) > 1 else "")
    return target


def _memory_target(name: str, rows: List[Row]) -> Target:
    """Peak memory no higher than torch's, row by row: the share of rows where the
    rise in resident memory during convx's call is at or under torch's (the goal:
    every row), with the totals and the row furthest over."""
    target = Target(name, 100.0, None, "n/a", "no rows in this run", "% of rows")
    if not rows:
        return target
    measured = [r for r in rows if r.status == "ok" and r.convx_mem_mb is not None and r.torch_mem_mb is not None]
    if not measured:
        target.detail = "no memory measured for these rows"
        return target
    over = [r for r in measured if r.convx_mem_mb > r.torch_mem_mb]
    target.value = 100.0 * (len(measured) - len(over)) / len(measured)
    target.status = "PASS" if not over else "MISS"
    target.detail = (f"{len(measured) - len(over)} of {len(measured)} row(s) at or under torch; total "
                     f"{sum(r.convx_mem_mb for r in measured):.0f} vs {sum(r.torch_mem_mb for r in measured):.0f} MB")
    if over:
        worst = max(over, key=lambda r: r.convx_mem_mb - r.torch_mem_mb)
        target.detail += f"; most over: {worst.name} {worst.convx_mem_mb:.1f} vs {worst.torch_mem_mb:.1f} MB"
    return target


def reference_threads(rows: Sequence[Row]) -> Optional[int]:
    """The thread count the targets are judged at: 1 when measured, else the fewest."""
    counts = sorted({r.threads for r in rows})
    if not counts:
        return None
    return 1 if 1 in counts else counts[0]


def evaluate_targets(rows: Sequence[Row]) -> List[Target]:
    t = reference_threads(rows)
    at = [r for r in rows if r.threads == t]
    conv = [r for r in at if r.kind == "conv"]
    pool_nchw = [r for r in at if r.kind == "pool" and r.name.endswith("torch nchw")]
    pool_cl = [r for r in at if r.kind == "pool" and r.name.endswith("torch channels_last")]
    digits = [r for r in at if r.name == "model digits_cnn train b64"]
    alphago16 = [r for r in at if r.name == "model alphago infer b16"]
    gemm = [r for r in at if r.kind == "gemm"]
    suffix = f" ({t} thread{'s' if t != 1 else ''})"
    return [
        _target("conv rows, geometric mean speed" + suffix, 1.5, conv, geomean, "geomean"),
        _target("conv rows, slowest row" + suffix, 0.9, conv, min, "min"),
        _target("digits-CNN training step, batch 64" + suffix, 1.5, digits, min, "speed"),
        _target("AlphaGo policy net inference, batch 16" + suffix, 1.3, alphago16, min, "speed"),
        _target("max-pool fwd+bwd vs torch NCHW" + suffix, 5.0, pool_nchw, min, "min"),
        _target("max-pool fwd+bwd vs torch channels_last" + suffix, 1.0, pool_cl, min, "min"),
        _target("GEMM on large square matrices, % of FP32 peak" + suffix, 80.0, gemm, min, "min", unit="%"),
        _memory_target("peak memory no higher than torch's" + suffix, at),
    ]


def summary(result: Dict[str, object], targets: Sequence[Target]) -> str:
    rows: List[Row] = result["rows"]
    m = result["machine"]
    peaks = result["peaks"]
    lines = [f"CPU: {m['cpu']} ({m['cores_available']} cores available), SIMD {m['simd']}, "
             f"torch {m['torch']}, convx {m['convx']}",
             "measured FP32 peak: " + ", ".join(f"{float(f) / 1e9:.0f} GFLOP/s at {t} thread{'s' if t != '1' else ''}"
                                                for t, f in peaks.items())]
    for threads in sorted({r.threads for r in rows}):
        conv_ok = [r for r in rows if r.threads == threads and r.kind == "conv" and r.status == "ok"]
        if conv_ok:
            lines.append(f"conv rows at {threads} thread(s): geomean {geomean([r.speedup for r in conv_ok]):.2f}x "
                         f"over {len(conv_ok)} rows")
    ok = [r for r in rows if r.status == "ok"]
    if ok:
        worst = min(ok, key=lambda r: r.speedup)
        lines.append(f"slowest row of the run: {worst.name} @{worst.threads}t {worst.speedup:.2f}x")
    failed = [r for r in rows if r.status != "ok"]
    lines.append(f"rows: {len(rows)}, FAILED: {len(failed)}" +
                 ("" if not failed else " (" + ", ".join(f"{r.name} @{r.threads}t" for r in failed) + ")"))
    lines.append("targets (issue 3):")
    width = max(len(t.name) for t in targets)
    for t in targets:
        value = "-" if t.value is None else t.format(t.value)
        lines.append(f"  [{t.status:<4}] {t.name:<{width}}  {value:>7} (goal >= {t.goal_text})  {t.detail}")
    return "\n".join(lines)


def markdown(result: Dict[str, object], targets: Sequence[Target]) -> str:
    """The run as a Markdown page (machine, command, table, targets), ready to
    become benchmarks/RESULTS.md."""
    m = result["machine"]
    rows: List[Row] = result["rows"]
    out = ["# convx vs torch: CPU benchmark", "",
           f"- command: `{m.get('command') or 'convx bench'}`",
           f"- CPU: {m['cpu']}, {m['cores_available']} cores available, SIMD {m['simd']}",
           f"- threads: {', '.join(str(t) for t in m['threads'])}",
           f"- torch {m['torch']}, convx {m['convx']} ({m['convx_build']}), python {m['python']}",
           "- measured FP32 peak: " + ", ".join(f"{float(f) / 1e9:.0f} GFLOP/s at {t} thread(s)"
                                                 for t, f in result["peaks"].items()),
           f"- date: {m['date']}, wall time {m['wall_s']:.0f} s", "",
           "| case | shape | threads | convx ms | torch ms | speed | convx GFLOP/s | torch GFLOP/s "
           "| convx % peak | torch % peak | convx MB | torch MB | convx algo |",
           "|" + "---|" * 13]
    for r in rows:
        speed = "FAILED" if r.status != "ok" else _num(r.speedup, "x")
        out.append(f"| {r.name} | {r.dims} | {r.threads} | {_num(r.convx_ms)} | {_num(r.torch_ms)} | {speed} "
                   f"| {_num(r.convx_gflops)} | {_num(r.torch_gflops)} | {_num(r.convx_peak_pct)} "
                   f"| {_num(r.torch_peak_pct)} | {_num(r.convx_mem_mb)} | {_num(r.torch_mem_mb)} | {r.algo} |")
    out += ["", "## Targets", "", "| target | goal | measured | status | detail |", "|---|---|---|---|---|"]
    for t in targets:
        value = "-" if t.value is None else t.format(t.value)
        out.append(f"| {t.name} | >= {t.goal_text} | {value} | {t.status} | {t.detail} |")
    return "\n".join(out) + "\n"
