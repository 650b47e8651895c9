"""What the first layer sees: its filters, and the feature maps of one image
(the seed's "Feature Map": one filtered image per filter)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from ._figure import image_grid, save


def first_layer_filters(model, path: Optional[str] = None) -> np.ndarray:
    """The first convolution's weights, (K, R, S) for one input channel; a grid
    PNG (red positive, blue negative) when ``path`` is given."""
    weights = model.conv1.weight.detach().cpu().numpy()[:, 0]
    fig = image_grid(list(weights), [f"filter {k + 1}" for k in range(len(weights))], ncols=9,
                     diverging=True, cell=1.1,
                     suptitle=f"First-layer filters ({weights.shape[0]} of {weights.shape[1]}x{weights.shape[2]}; "
                              "red = positive weight, blue = negative)")
    save(fig, path)
    return weights


@torch.no_grad()
def feature_maps(model, image: np.ndarray, layer: str = "conv1", path: Optional[str] = None,
                 max_maps: int = 25) -> np.ndarray:
    """Output of every filter of ``layer`` for one (1, H, W) image: (K, H', W')."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != 1:
        raise ValueError(f"image must have shape (1, H, W), got {image.shape}")
    model.eval()
    acts: Dict[str, torch.Tensor] = model.activations(torch.from_numpy(image)[None])
    if layer not in acts or acts[layer].ndim != 4:
        raise ValueError(f"layer must be one of {[k for k, v in acts.items() if v.ndim == 4]}, got {layer!r}")
    maps = acts[layer][0].numpy()
    shown = maps[:max_maps]
    fig = image_grid([image[0]] + list(shown), ["input"] + [f"filter {k + 1}" for k in range(len(shown))],
                     ncols=9, diverging=True, cell=1.2,
                     suptitle=f"Feature maps of layer {layer}: {maps.shape[0]} filters, each "
                              f"{maps.shape[1]}x{maps.shape[2]} (red = pattern found, blue = opposite)")
    # The input panel is an image, not a signed response.
    fig.axes[0].images[0].set_cmap("gray_r")
    fig.axes[0].images[0].set_clim(0, 1)
    save(fig, path)
    return maps
