"""convx's CPU benchmark suite: ``convx bench`` (see benchmarks/README.md).

Every case is validated against torch, then convx and torch are timed alternately
in one process at 1 thread and at all threads. Reported per row: ms, GFLOP/s,
% of the measured FP32 peak, speed vs torch, peak memory and convx's algorithm;
written as a terminal table, CSV, JSON, Markdown and a PNG chart, with a summary
against issue 3's targets.

This module imports nothing heavy, so the command line can list its options
without loading torch.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List

DEFAULT_OUT = "convx-bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="every case, 1 thread, short timing budget (under two minutes on 2 cores)")
    parser.add_argument("--threads", default=None,
                        help="comma-separated thread counts, 'all' = every available core "
                             "(default: '1,all'; with --quick: '1')")
    parser.add_argument("--filter", action="append", default=None, metavar="SUBSTRING",
                        help="run only cases whose name contains SUBSTRING (repeatable; see --list)")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for results.csv/.json/.md and speedup.png (default: ./{DEFAULT_OUT})")
    parser.add_argument("--csv", default=None, metavar="PATH", help="CSV path (default: DIR/results.csv)")
    parser.add_argument("--json", default=None, metavar="PATH", help="JSON path (default: DIR/results.json)")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="timing budget per case and thread count (default 1.5; 0.25 with --quick)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG chart")


def parse_threads(spec: str, available: int) -> List[int]:
    counts: List[int] = []
    for part in spec.split(","):
        part = part.strip()
        if part == "all":
            n = available
        else:
            try:
                n = int(part)
            except ValueError:
                raise ValueError(f"--threads must list positive integers or 'all', got {spec!r}") from None
            if n <= 0:
                raise ValueError(f"--threads must list positive integers or 'all', got {spec!r}")
        if n not in counts:
            counts.append(n)
    return counts


def command_line(args: argparse.Namespace) -> str:
    """The options that shape the results, as a command to repeat the run."""
    parts = ["convx bench"]
    if args.quick:
        parts.append("--quick")
    if args.threads:
        parts.append(f"--threads {args.threads}")
    for substring in args.filter or []:
        parts.append(f"--filter '{substring}'")
    if args.budget is not None:
        parts.append(f"--budget {args.budget:g}")
    return " ".join(parts)


def main(args: argparse.Namespace) -> int:
    """Run the suite for parsed ``convx bench`` arguments; 1 if a row FAILED."""
    import dataclasses

    try:
        import torch  # noqa: F401  (every row is compared with torch)
    except ImportError:
        print("convx bench compares convx with torch, which is not installed: "
              "pip install torch==2.13.0 (CPU build), then pip install 'convx[bench]'", file=sys.stderr)
        return 2
    from . import report
    from .cases import select_cases
    from .suite import FULL_PLAN, QUICK_PLAN, all_threads, run_suite

    cases = select_cases(args.filter)
    if args.list:
        for case in cases:
            print(f"{case.name:48s} {case.dims}")
        return 0
    if not cases:
        print(f"no case matches --filter {args.filter}; see convx bench --list", file=sys.stderr)
        return 2
    try:
        threads = parse_threads(args.threads or ("1" if args.quick else "1,all"), all_threads())
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.budget is not None:
        plan = dataclasses.replace(plan, budget_s=args.budget)
    os.makedirs(args.out, exist_ok=True)
    csv_path = args.csv or os.path.join(args.out, "results.csv")
    json_path = args.json or os.path.join(args.out, "results.json")
    md_path = os.path.join(args.out, "results.md")
    png_path = os.path.join(args.out, "speedup.png")

    try:
        from tqdm import tqdm
        progress = tqdm(total=len(cases) * len(threads), unit="row", leave=False, dynamic_ncols=True)
        write = tqdm.write
    except ImportError:  # the table still prints row by row
        progress, write = None, print

    print(f"convx bench: {len(cases)} cases x threads {threads}, "
          f"{plan.budget_s:g} s timing budget per row; validating each against torch first")
    write(report.table_header())
    try:
        result = run_suite(cases, threads, plan, peak_seconds=0.5 if args.quick else 1.5,
                           on_row=lambda row: write(report.table_row(row)), progress=progress,
                           command=command_line(args))
    finally:
        if progress is not None:
            progress.close()
    targets = report.evaluate_targets(result["rows"])
    print()
    print(report.summary(result, targets))

    report.write_csv(result["rows"], csv_path)
    report.write_json(result, targets, json_path)
    with open(md_path, "w") as f:
        f.write(report.markdown(result, targets))
    written = [csv_path, json_path, md_path]
    if not args.no_plot:
        from .plot import plot_speedups
        m = result["machine"]
        try:
            plot_speedups(result["rows"], png_path,
                          f"convx vs torch {m['torch']} on {m['cpu']} (higher is better for convx)")
            written.append(png_path)
        except ImportError:
            print("matplotlib is not installed: no PNG chart (pip install matplotlib)", file=sys.stderr)
    print("wrote " + ", ".join(written) + f" in {result['machine']['wall_s']:.0f} s")
    return 1 if any(r.status != "ok" for r in result["rows"]) else 0
