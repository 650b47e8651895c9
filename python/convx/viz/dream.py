"""Deep Dream (seed section 3): pick a layer or one filter of a trained CNN and
change a photo by gradient ascent so that what that layer sees grows -- "CNN
exaggerates what it sees". The difference between before and after is the
pattern the layer responds to.

Octaves (work on a shrunken photo first, then carry the added detail up to larger
sizes) let patterns grow at several scales; jitter (a random shift before every
step, undone after) keeps the pixel grid of the strided pooling out of the result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as tF

from ._figure import new_figure, save


@dataclass
class Dream:
    """The dreamed photo (3, H, W) in [0, 1] and the layer objective of the
    original and of the dream (mean squared positive activation)."""

    image: np.ndarray
    objective_before: float
    objective_after: float


def layer_objective(model, layer: str, filter: Optional[int] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """mean(relu(a)^2) of ``layer`` (one filter of it when ``filter`` is given) for a
    model with an ``activations(x) -> dict`` method. Squares reward strong responses
    more than many weak ones; ReLU keeps the "seen" (positive) part only."""
    def objective(x: torch.Tensor) -> torch.Tensor:
        a = model.activations(x, upto=layer)[layer]
        if filter is not None:
            if a.ndim != 4 or not 0 <= filter < a.shape[1]:
                raise ValueError(f"filter must index a channel of {layer} ({a.shape[1]} of them), got {filter!r}")
            a = a[:, filter]
        return torch.relu(a).pow(2).mean()
    return objective


def _as_model_input(photo: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(3, H, W) photo -> a batch the model takes: a one-channel model (the digits
    CNN) sees the photo's brightness, so its gradient changes light and dark and
    leaves the hues alone."""
    if in_channels == 1:
        return photo.mean(0, keepdim=True)[None]
    return photo[None]


def deep_dream(model, photo: np.ndarray, layer: str = "conv2", filter: Optional[int] = None, octaves: int = 3,
               octave_scale: float = 1.5, steps: int = 10, step_size: float = 0.01, jitter: int = 2,
               seed: int = 0, path: Optional[str] = None) -> Dream:
    """Dream ``photo`` ((3, H, W) in [0, 1]) with ``layer`` (and ``filter``) of
    ``model``; writes a before/after/difference PNG when ``path`` is given."""
    photo = np.asarray(photo, dtype=np.float32)
    if photo.ndim != 3 or photo.shape[0] != 3:
        raise ValueError(f"photo must have shape (3, H, W), got {photo.shape}")
    if octaves < 1:
        raise ValueError(f"octaves must be >= 1, got {octaves!r}")
    if octave_scale <= 1:
        raise ValueError(f"octave_scale must be > 1, got {octave_scale!r}")
    layers = getattr(model, "LAYERS", None)
    if layers is not None and layer not in layers:
        raise ValueError(f"layer must be one of {layers}, got {layer!r}")
    model.eval()
    in_channels = model.conv1.in_channels
    objective = layer_objective(model, layer, filter)
    generator = torch.Generator().manual_seed(seed)
    base = torch.from_numpy(photo)
    h, w = photo.shape[1:]
    sizes = [(max(8, round(h / octave_scale ** i)), max(8, round(w / octave_scale ** i)))
             for i in reversed(range(octaves))]
    detail = torch.zeros(3, *sizes[0])
    for size in sizes:
        scaled_base = tF.interpolate(base[None], size=size, mode="bilinear", align_corners=False)[0]
        detail = tF.interpolate(detail[None], size=size, mode="bilinear", align_corners=False)[0]
        image = (scaled_base + detail).clamp(0, 1)
        for _ in range(steps):
            dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
            shifted = torch.roll(image, (dy, dx), dims=(1, 2)).requires_grad_(True)
            objective(_as_model_input(shifted, in_channels)).backward()
            grad = torch.roll(shifted.grad, (-dy, -dx), dims=(1, 2))
            # Normalized steps: the raw gradient's size changes by orders of
            # magnitude between layers and octaves.
            image = (image + step_size * grad / (grad.abs().mean() + 1e-12)).clamp(0, 1)
        detail = image - scaled_base
    with torch.no_grad():
        before = float(objective(_as_model_input(base, in_channels)))
        after = float(objective(_as_model_input(image, in_channels)))
    result = Dream(image.numpy(), before, after)
    if path is not None:
        what = layer if filter is None else f"{layer}, filter {filter + 1}"
        fig = new_figure(12, 4.4)
        panels = [(photo, f"before: objective {before:.3g}"), (result.image, f"after: objective {after:.3g}")]
        for i, (img, title) in enumerate(panels):
            ax = fig.add_subplot(1, 3, i + 1)
            ax.imshow(img.transpose(1, 2, 0))
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        ax = fig.add_subplot(1, 3, 3)
        diff = np.abs(result.image - photo).mean(0)
        ax.imshow(diff, cmap="magma")
        ax.set_title("|after - before|: what the layer added", fontsize=9)
        ax.axis("off")
        fig.suptitle(f"Deep Dream with {what}: mean(relu(a)^2) raised by gradient ascent on the photo "
                     f"({octaves} octaves, jitter {jitter})", fontsize=10)
        fig.tight_layout()
        save(fig, path)
    return result
