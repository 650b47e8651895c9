"""Figure building blocks shared by convx.viz: figures are built with matplotlib.figure.Figure (no
pyplot state, no display needed) and written as PNG."""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100)


def save(fig, path: Optional[str]) -> Optional[str]:
    """Write ``fig`` to ``path`` (creating the folder); nothing when path is None."""
    if path is None:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def symmetric_limit(a: np.ndarray) -> float:
    """Colour limit that puts zero at the centre of a diverging colormap."""
    return float(np.max(np.abs(a))) or 1.0


def image_grid(images: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None, ncols: int = 6,
               cmap: str = "gray_r", diverging: bool = False, suptitle: Optional[str] = None,
               cell: float = 1.6, vmin: Optional[float] = None, vmax: Optional[float] = None):
    """A grid of 2-D images (or (3, H, W) colour images) with optional titles.

    ``diverging`` centres each panel's colormap on zero (for filters, whose sign
    matters); otherwise panels share ``vmin``/``vmax`` when given.
    """
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = new_figure(cell * ncols, cell * nrows + (0.5 if suptitle else 0.0) + (0.25 * nrows if titles else 0))
    for i, img in enumerate(images):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        img = np.asarray(img)
        if img.ndim == 3:
            ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1))
        elif diverging:
            lim = symmetric_limit(img)
            ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
        else:
            ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig
