"""The seed chapter's worked example, bundled as JSON."""
from __future__ import annotations

import json
from importlib import resources
from typing import Any, Dict

import numpy as np


def seed_example() -> Dict[str, Any]:
    """The seed chapter's worked example: a 6x6 binary image, two 3x3 filters, and
    the feature maps and max-pool results the chapter works out by hand.

    Arrays come back as float64 numpy arrays (indices as int64): 'image' (6, 6),
    'filters' (2, 3, 3), 'conv_stride1' (2, 4, 4), 'conv_stride2' (2, 2, 2),
    'maxpool2x2_of_conv_stride1' (2, 2, 2), 'maxpool2x2_indices' (2, 2, 2).
    """
    raw = json.loads(resources.files(__package__).joinpath("seed_example.json").read_text())
    out: Dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, list):
            out[key] = np.asarray(value, dtype=np.int64 if key.endswith("indices") else np.float64)
        else:
            out[key] = value
    return out
