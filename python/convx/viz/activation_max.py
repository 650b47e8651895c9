"""What the filters and neurons have learned (seed section 3): the activation
degree a^k = sum_ij a^k_ij of a filter, and the input x* = argmax_x a^k found by
gradient ascent on the input -- the weights stay fixed, the image is learned.

Everything optimizes a batch of images at once, one per filter / neuron / class.
Pixels stay in [0, 1] (ink 1, background 0), the range of the training digits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ._figure import image_grid, new_figure, save


@dataclass
class Maximized:
    """Result of a gradient ascent: images x* (N, C, H, W), the objective of each at
    the start and at the end, and (for classes) the classifier's own softmax
    confidence that x* belongs to its class."""

    images: np.ndarray
    start_objective: np.ndarray
    final_objective: np.ndarray
    confidence: Optional[np.ndarray] = None


def activation_degree(model, x, layer: str = "conv2") -> np.ndarray:
    """a^k = sum over positions of filter k's output, for each image: (N, K)."""
    with torch.no_grad():
        model.eval()
        acts = model.activations(torch.as_tensor(np.asarray(x, dtype=np.float32)))
    if layer not in acts or acts[layer].ndim != 4:
        raise ValueError(f"layer must be one of {[k for k, v in acts.items() if v.ndim == 4]}, got {layer!r}")
    return acts[layer].sum(dim=(2, 3)).numpy()


def gradient_ascent(objective: Callable[[torch.Tensor], torch.Tensor], start: np.ndarray, steps: int = 200,
                    lr: float = 0.05, l1: float = 0.0, bounds=(0.0, 1.0)) -> Maximized:
    """Maximize ``objective(x) - l1 * sum|x|`` over images x, one objective value per
    image (``objective`` maps (N, C, H, W) to (N,)), by Adam on the pixels; after each
    step pixels are clipped to ``bounds``. The returned objectives exclude the L1 term."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    if l1 < 0:
        raise ValueError(f"l1 must be >= 0, got {l1!r}")
    x = torch.tensor(np.asarray(start, dtype=np.float32), requires_grad=True)
    with torch.no_grad():
        start_value = objective(x).numpy().copy()
    optimizer = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        value = objective(x)
        penalty = x.abs().flatten(1).sum(1)
        loss = -(value - l1 * penalty).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            x.clamp_(*bounds)
    with torch.no_grad():
        final_value = objective(x).numpy().copy()
    return Maximized(x.detach().numpy(), start_value, final_value)


def _start(n: int, shape, seed: int) -> np.ndarray:
    """Faint noise near 0, like a digit's background: pixels the model never sees
    (the last rows and columns, which the second pooling drops) stay background,
    and with L1 the pull toward zero and the class's pull toward ink start from the
    same place. Not exactly 0, so no pixel starts stuck at the lower bound."""
    rng = np.random.default_rng(seed)
    return (0.1 + 0.05 * rng.standard_normal((n,) + tuple(shape))).clip(0, 1).astype(np.float32)


def _input_shape(model):
    size = model.config["image_size"]
    return (1, size, size)


def filter_inputs(model, filters: Sequence[int] = range(12), layer: str = "conv2", steps: int = 200,
                  lr: float = 0.05, seed: int = 0, path: Optional[str] = None) -> Maximized:
    """x* = argmax_x a^k for each filter k of ``layer`` (0-based indices); the seed
    shows this grid for the first 12 filters of the second layer."""
    filters = list(filters)
    model.eval()
    index = torch.tensor(filters)

    def degree(x):
        acts = model.activations(x)[layer]
        return acts[torch.arange(len(filters)), index].sum(dim=(1, 2))

    result = gradient_ascent(degree, _start(len(filters), _input_shape(model), seed), steps, lr)
    titles = [f"filter {k + 1}\na={v:.0f}" for k, v in zip(filters, result.final_objective)]
    fig = image_grid([im[0] for im in result.images], titles, ncols=6, vmin=0, vmax=1,
                     suptitle=f"x* = argmax a^k for filters {filters[0] + 1}-{filters[-1] + 1} of {layer} "
                              "(black = ink)")
    save(fig, path)
    return result


def neuron_inputs(model, neurons: Sequence[int] = range(18), layer: str = "fc1", steps: int = 200,
                  lr: float = 0.05, seed: int = 0, path: Optional[str] = None) -> Maximized:
    """x* = argmax_x a_j for hidden neurons j of a dense layer (before its ReLU)."""
    neurons = list(neurons)
    model.eval()
    index = torch.tensor(neurons)

    def output(x):
        return model.activations(x)[layer][torch.arange(len(neurons)), index]

    result = gradient_ascent(output, _start(len(neurons), _input_shape(model), seed), steps, lr)
    titles = [f"neuron {j + 1}" for j in neurons]
    fig = image_grid([im[0] for im in result.images], titles, ncols=6, vmin=0, vmax=1,
                     suptitle=f"x* = argmax a_j for neurons of the dense layer {layer}")
    save(fig, path)
    return result


def class_inputs(model, l1: float = 0.0, classes: Optional[Sequence[int]] = None, steps: int = 300,
                 lr: float = 0.05, seed: int = 0, path: Optional[str] = None) -> Maximized:
    """x* = argmax_x (y_i - l1 * sum_ij |x_ij|) for each class i, with y_i the
    class's logit. ``l1=0`` is the seed's unregularized version; the returned
    ``confidence`` is the model's softmax probability of class i for its x*."""
    n_classes = model.config["classes"]
    classes = list(range(n_classes)) if classes is None else list(classes)
    model.eval()
    index = torch.tensor(classes)

    def logit(x):
        return model.activations(x)["logits"][torch.arange(len(classes)), index]

    result = gradient_ascent(logit, _start(len(classes), _input_shape(model), seed), steps, lr, l1=l1)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(result.images)), 1).numpy()
    result.confidence = probs[np.arange(len(classes)), classes]
    ink = result.images.reshape(len(classes), -1).sum(1)
    titles = [f"class {c}: p={p:.2f}\nink {s:.0f}" for c, p, s in zip(classes, result.confidence, ink)]
    label = "without regularization" if l1 == 0 else f"with L1, lambda={l1:g}"
    fig = image_grid([im[0] for im in result.images], titles, ncols=5, vmin=0, vmax=1,
                     suptitle=f"x* = argmax (y_i - lambda sum|x_ij|) {label}; p = the model's confidence")
    save(fig, path)
    return result


def plot_activation_degree(model, image: np.ndarray, layer: str = "conv2", path: Optional[str] = None) -> np.ndarray:
    """For one (1, H, W) image: the output a^k_ij of the filter with the largest
    activation degree, and the degree a^k = sum_ij a^k_ij of every filter of
    ``layer``. Returns the degrees (K,)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != 1:
        raise ValueError(f"image must have shape (1, H, W), got {image.shape}")
    with torch.no_grad():
        model.eval()
        maps = model.activations(torch.from_numpy(image)[None], upto=layer)[layer][0].numpy()
    degrees = maps.sum(axis=(1, 2))
    best = int(np.argmax(degrees))
    fig = new_figure(13, 3.6)
    grid = fig.add_gridspec(1, 3, width_ratios=[1, 1.2, 3.4])
    ax = fig.add_subplot(grid[0])
    ax.imshow(image[0], cmap="gray_r", vmin=0, vmax=1)
    ax.set_title("input x", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(grid[1])
    lim = float(np.abs(maps[best]).max()) or 1.0
    ax.imshow(maps[best], cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(f"a^k_ij of filter {best + 1} ({maps.shape[1]}x{maps.shape[2]})\n"
                 f"a^k = sum = {degrees[best]:.1f}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax = fig.add_subplot(grid[2])
    colours = ["tab:red" if d > 0 else "tab:blue" for d in degrees]
    ax.bar(np.arange(1, len(degrees) + 1), degrees, color=colours)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel(f"filter k of {layer}")
    ax.set_ylabel("activation degree a^k")
    ax.set_title(f"how strongly each of the {len(degrees)} filters is activated by this input", fontsize=9)
    fig.tight_layout()
    save(fig, path)
    return degrees
