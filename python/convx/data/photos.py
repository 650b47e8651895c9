"""Photos for Deep Dream and Deep Style: the images bundled with scikit-image
(astronaut, coffee, chelsea, rocket, ...) or any image file."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

# Colour photos in skimage.data that ship inside the scikit-image wheel (no download).
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "cat", "rocket", "camera", "immunohistochemistry",
                  "hubble_deep_field", "retina", "coins", "moon", "page", "text", "brick", "grass", "gravel",
                  "horse", "logo", "colorwheel")


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Scale so the longer side is ``size`` pixels (anti-aliased)."""
    from skimage.transform import resize
    h, w = image.shape[:2]
    scale = size / max(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    return resize(image, shape + image.shape[2:], anti_aliasing=True, preserve_range=True)


def load_photo(name_or_path: str, size: Optional[int] = 128) -> np.ndarray:
    """A photo as a float32 (3, H, W) array in [0, 1].

    ``name_or_path`` is a skimage.data name (see SKIMAGE_PHOTOS) or an image file
    (anything scikit-image reads: PNG, JPEG, ...). Grey images are repeated to three
    channels and an alpha channel is dropped. ``size`` scales the longer side to
    that many pixels; None keeps the original size.
    """
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a str, got {type(name_or_path).__name__}")
    if size is not None and (not isinstance(size, int) or size < 8):
        raise ValueError(f"size must be an int >= 8 or None, got {size!r}")
    if os.path.isfile(name_or_path):
        from skimage.io import imread
        image = imread(name_or_path)
    elif name_or_path in SKIMAGE_PHOTOS:
        import skimage.data
        image = getattr(skimage.data, name_or_path)()
    else:
        raise ValueError(f"name_or_path must be an image file or one of {', '.join(SKIMAGE_PHOTOS)}; "
                         f"got {name_or_path!r}")
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    elif image.dtype == bool:
        image = image.astype(np.float32)
    else:
        image = image.astype(np.float32)
        if image.max() > 1.0:   # float images outside [0, 1]: rescale rather than clip
            image = (image - image.min()) / max(float(image.max() - image.min()), 1e-12)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"name_or_path must hold a grey, RGB or RGBA image, got shape {image.shape}")
    image = image[:, :, :3]
    if size is not None:
        image = _resize(image, size)
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32)
