"""Is convx's result the same as torch's, up to float32 rounding?

Rule: max |convx - torch| <= rtol * max |torch|, elementwise over the whole
result, with shapes equal and no NaN or inf on either side. Measured against the
largest magnitude, not elementwise, because a sum of many terms that nearly cancel
has a small value but an error the size of its terms. rtol is 1e-4 for a single
op (the issue's bound for Winograd in float32; plain float32 summation of these
layers stays near 1e-6) and 1e-3 for whole models, whose errors compound over
up to 13 layers and one SGD step. A wrong index or a dropped term is off by O(1)
relative and fails by orders of magnitude.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Tuple

import numpy as np

OP_RTOL = 1e-4
MODEL_RTOL = 1e-3


class ValidationError(AssertionError):
    """convx's result differs from torch's beyond the float32 tolerance."""


@dataclass
class Comparison:
    name: str
    max_abs_err: float
    scale: float
    rtol: float

    @property
    def rel_err(self) -> float:
        return self.max_abs_err / self.scale if self.scale > 0 else self.max_abs_err

    @property
    def ok(self) -> bool:
        return self.max_abs_err <= self.rtol * self.scale


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    return a.detach().cpu().numpy()


def compare(name: str, actual, expected, rtol: float) -> Comparison:
    """Compare one result; raises ValidationError on shape mismatch, non-finite
    values or an error above tolerance."""
    a, e = _as_numpy(actual), _as_numpy(expected)
    if a.shape != e.shape:
        raise ValidationError(f"{name}: shape {a.shape} differs from torch's {e.shape}")
    if not (np.isfinite(a).all() and np.isfinite(e).all()):
        raise ValidationError(f"{name}: non-finite values (convx {int((~np.isfinite(a)).sum())}, "
                              f"torch {int((~np.isfinite(e)).sum())})")
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    err = float(np.max(np.abs(a64 - e64))) if a.size else 0.0
    scale = float(np.max(np.abs(e64))) if e.size else 0.0
    result = Comparison(name, err, scale, rtol)
    if not result.ok:
        where = np.unravel_index(int(np.argmax(np.abs(a64 - e64))), a.shape)
        raise ValidationError(f"{name}: max |convx - torch| = {err:.3e} at {tuple(int(i) for i in where)} "
                              f"exceeds {rtol:g} x max |torch| = {rtol * scale:.3e}")
    return result


def compare_all(pairs: Iterable[Tuple[str, object, object]], rtol: float) -> Dict[str, float]:
    """Compare (name, convx, torch) triples; returns each name's relative error."""
    return {name: compare(name, a, e, rtol).rel_err for name, a, e in pairs}
