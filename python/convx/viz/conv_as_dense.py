"""Convolution as a fully connected layer (seed section 2): a convolution is a
dense layer with most weights removed and the rest shared. For an HxW image and
an RxS filter this builds the equivalent (out_h*out_w) x (H*W) weight matrix --
16 x 36 for the seed's 6x6 image and 3x3 filter -- and shows which inputs each
output uses and which weights are the same parameter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from .. import functional as F
from ._figure import new_figure, save


@dataclass
class ConvAsDense:
    """``matrix`` (outputs x inputs) holds the filter weights; ``tap`` has the same
    shape and says which filter entry (0..R*S-1, row-major) sits at each place,
    -1 where the dense layer's weight was dropped."""

    matrix: np.ndarray
    tap: np.ndarray
    output_shape: tuple
    conv_output: np.ndarray      # convx.functional.conv2d of the image
    dense_output: np.ndarray     # matrix @ image.flatten(), reshaped like conv_output

    @property
    def matches(self) -> bool:
        return bool(np.allclose(self.dense_output, self.conv_output, rtol=0, atol=1e-9))


def conv_as_dense_matrix(image: np.ndarray, kernel: np.ndarray, stride: int = 1) -> ConvAsDense:
    """The dense matrix equivalent to a single-channel conv2d (no padding, as in the
    seed), and both ways of computing the output so they can be compared."""
    image = np.asarray(image, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    if image.ndim != 2 or kernel.ndim != 2:
        raise ValueError(f"image and kernel must be 2-D, got shapes {image.shape} and {kernel.shape}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    (h, w), (r, s) = image.shape, kernel.shape
    if r > h or s > w:
        raise ValueError(f"kernel {kernel.shape} must fit inside image {image.shape}")
    out_h, out_w = (h - r) // stride + 1, (w - s) // stride + 1
    matrix = np.zeros((out_h * out_w, h * w))
    tap = np.full((out_h * out_w, h * w), -1, dtype=np.int64)
    for oy in range(out_h):
        for ox in range(out_w):
            row = oy * out_w + ox
            for ky in range(r):
                for kx in range(s):
                    col = (oy * stride + ky) * w + (ox * stride + kx)
                    matrix[row, col] = kernel[ky, kx]
                    tap[row, col] = ky * s + kx
    conv = F.conv2d(image[None, None], kernel[None, None], stride=stride)[0, 0]
    dense = (matrix @ image.reshape(-1)).reshape(out_h, out_w)
    return ConvAsDense(matrix, tap, (out_h, out_w), conv, dense)


def parameter_comparison(in_shape, out_channels: int, kernel: int, bias: bool = True) -> Dict[str, int]:
    """Learned numbers of a conv layer vs the dense layer with the same inputs and
    outputs: (C, H, W) -> (K, H-kernel+1, W-kernel+1), no padding."""
    c, h, w = in_shape
    out = out_channels * (h - kernel + 1) * (w - kernel + 1)
    conv = out_channels * (c * kernel * kernel + (1 if bias else 0))
    dense = c * h * w * out + (out if bias else 0)
    return {"conv": conv, "dense": dense, "inputs": c * h * w, "outputs": out}


def plot_conv_as_dense(result: ConvAsDense, image: np.ndarray, path: Optional[str] = None,
                       label: str = "filter 1"):
    """Three panels: the matrix coloured by which filter entry each weight is
    (white = dropped), the first output's inputs on the image, and the check that
    matrix @ image equals the convolution."""
    from matplotlib.colors import ListedColormap
    image = np.asarray(image)
    h, w = image.shape
    n_taps = int(result.tap.max()) + 1
    fig = new_figure(15, 5.6)
    grid = fig.add_gridspec(1, 3, width_ratios=[2.6, 1, 1.2])

    ax = fig.add_subplot(grid[0])
    colours = ["white"] + [tuple(c) for c in __import__("matplotlib").colormaps["tab10"](np.arange(n_taps) % 10)]
    ax.imshow(result.tap + 1, cmap=ListedColormap(colours), vmin=0, vmax=n_taps, aspect="equal")
    for (row, col), t in np.ndenumerate(result.tap):
        if t >= 0:
            ax.text(col, row, f"{result.matrix[row, col]:+.0f}", ha="center", va="center", fontsize=6)
    ax.set_xticks(range(0, h * w, 6))
    ax.set_xticklabels([str(i + 1) for i in range(0, h * w, 6)], fontsize=7)
    ax.set_yticks(range(result.matrix.shape[0]))
    ax.set_yticklabels([str(i + 1) for i in range(result.matrix.shape[0])], fontsize=7)
    ax.set_xlabel(f"input pixel (1..{h * w}, row-major)")
    ax.set_ylabel("output (feature map entry)")
    kept = int((result.tap >= 0).sum())
    ax.set_title(f"{result.matrix.shape[0]}x{result.matrix.shape[1]} dense matrix of {label}: {kept} of "
                 f"{result.matrix.size} weights kept,\nsame colour = same shared parameter "
                 f"({n_taps} parameters)", fontsize=9)

    ax = fig.add_subplot(grid[1])
    ax.imshow(image, cmap="gray_r", vmin=0, vmax=1.6)
    used = np.flatnonzero(result.tap[0] >= 0)
    for idx in range(h * w):
        y, x = divmod(idx, w)
        ax.text(x, y, str(idx + 1), ha="center", va="center", fontsize=8,
                color="red" if idx in used else "grey", fontweight="bold" if idx in used else "normal")
    from matplotlib.patches import Rectangle
    rows, cols = np.divmod(used, w)
    ax.add_patch(Rectangle((cols.min() - 0.5, rows.min() - 0.5), cols.max() - cols.min() + 1,
                           rows.max() - rows.min() + 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"output 1 uses only inputs\n{', '.join(str(i + 1) for i in used)}", fontsize=9)

    ax = fig.add_subplot(grid[2])
    ax.axis("off")
    text = (f"parameters: dense {result.matrix.size}, conv {n_taps}\n\n"
            "matrix @ image (flattened):\n" + _format(result.dense_output) + "\n\nconvx conv2d:\n"
            + _format(result.conv_output) + f"\n\nequal: {result.matches}")
    ax.text(0, 0.5, text, family="monospace", fontsize=9, va="center")
    fig.suptitle("Convolution = a fully connected layer with fewer, shared weights", fontsize=11)
    fig.tight_layout()
    save(fig, path)
    return fig


def _format(a: np.ndarray) -> str:
    return "\n".join(" ".join(f"{v:3.0f}" for v in row) for row in a)
