"""PNG bar chart of speed vs torch per row (log scale, a line at 1x)."""
from __future__ import annotations

from typing import Sequence

from .suite import Row


def plot_speedups(rows: Sequence[Row], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    names = list(dict.fromkeys(r.name for r in rows))
    thread_counts = sorted({r.threads for r in rows})
    by_key = {(r.name, r.threads): r for r in rows}
    bar = 0.8 / len(thread_counts)
    ok_speeds = [r.speedup for r in rows if r.status == "ok"] or [1.0]
    lo, hi = min(min(ok_speeds), 0.5) / 1.3, max(max(ok_speeds), 2.0) * 1.3
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.28 * len(names) * len(thread_counts) ** 0.5))
    for i, threads in enumerate(thread_counts):
        ys, speeds, failed_ys = [], [], []
        for j, name in enumerate(names):
            row = by_key.get((name, threads))
            y = j + (i - (len(thread_counts) - 1) / 2) * bar
            if row is None:
                continue
            if row.status == "ok":
                ys.append(y)
                speeds.append(row.speedup)
            else:
                failed_ys.append(y)
        # Bars grow from the 1x line: right when convx is faster, left when slower.
        ax.barh(ys, [s - 1.0 for s in speeds], left=1.0, height=bar,
                label=f"{threads} thread{'s' if threads != 1 else ''}")
        for y, s in zip(ys, speeds):
            ax.text(s * (1.02 if s >= 1 else 0.98), y, f"{s:.2f}x", va="center",
                    ha="left" if s >= 1 else "right", fontsize=6)
        for y in failed_ys:
            ax.text(1.0, y, " FAILED", va="center", ha="left", color="red", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator([t for t in (0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
                                             if lo <= t <= hi]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speed vs torch (t_torch / t_convx), log scale; right of the line = convx faster")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
