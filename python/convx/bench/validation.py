"""Is convx's result as good as torch's, measured against float64?

For every result of a case, torch computes a float64 reference on the same data
(inputs are drawn in float32, so both precisions see identical numbers). Then

    err_convx = max |convx - ref|,  err_torch = max |torch - ref|,  scale = max |ref|

and convx passes when

    err_convx <= max(TORCH_FACTOR * err_torch,  rtol * scale)

i.e. convx is within a small factor of torch's own float32 error, or within rtol of
the result's magnitude. Shapes must match and nothing may be NaN or inf. rtol is
1e-4 for a single op (the issue's bound for Winograd in float32) and 1e-3 for whole
models, whose per-layer errors add up over 13 layers. Measuring against the
largest magnitude rather than elementwise is what a sum of many terms needs: where
the terms nearly cancel, the value is small but its rounding error is not. A
wrong index or a dropped term is off by O(1) relative and fails by far.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping

import numpy as np

OP_RTOL = 1e-4
MODEL_RTOL = 1e-3
TORCH_FACTOR = 10.0


class ValidationError(AssertionError):
    """convx's result differs from the reference beyond the float32 tolerance."""


@dataclass
class Comparison:
    name: str
    err_convx: float
    err_torch: float
    scale: float
    rtol: float

    @property
    def tolerance(self) -> float:
        return max(TORCH_FACTOR * self.err_torch, self.rtol * self.scale)

    @property
    def rel_err(self) -> float:
        """convx's error as a fraction of the result's largest magnitude."""
        return self.err_convx / self.scale if self.scale > 0 else self.err_convx

    @property
    def ok(self) -> bool:
        return self.err_convx <= self.tolerance


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    return a.detach().cpu().numpy()


def compare(name: str, convx_result, torch_result, reference, rtol: float) -> Comparison:
    """Compare one result; raises ValidationError on a shape mismatch, non-finite
    values or an error above tolerance."""
    a, t, r = (_as_numpy(v) for v in (convx_result, torch_result, reference))
    if a.shape != r.shape or t.shape != r.shape:
        raise ValidationError(f"{name}: shape {a.shape} (convx), {t.shape} (torch), {r.shape} (float64)")
    for who, v in (("convx", a), ("torch", t), ("float64 reference", r)):
        if not np.isfinite(v).all():
            raise ValidationError(f"{name}: {int((~np.isfinite(v)).sum())} non-finite values from {who}")
    r64 = r.astype(np.float64)
    err_cx = float(np.max(np.abs(a.astype(np.float64) - r64))) if a.size else 0.0
    err_th = float(np.max(np.abs(t.astype(np.float64) - r64))) if a.size else 0.0
    scale = float(np.max(np.abs(r64))) if a.size else 0.0
    result = Comparison(name, err_cx, err_th, scale, rtol)
    if not result.ok:
        where = np.unravel_index(int(np.argmax(np.abs(a.astype(np.float64) - r64))), a.shape)
        raise ValidationError(
            f"{name}: convx's error {err_cx:.2e} at {tuple(int(i) for i in where)} exceeds "
            f"max({TORCH_FACTOR:g} x torch's {err_th:.2e}, {rtol:g} x max|ref| {scale:.2e}) "
            f"(relative to max|ref|: convx {result.rel_err:.1e}, torch {err_th / scale if scale else 0:.1e})")
    return result


def compare_all(convx_results: Mapping[str, object], torch_results: Mapping[str, object],
                references: Mapping[str, object], rtol: float) -> Dict[str, float]:
    """Compare every named result; returns convx's relative error for each."""
    if not (convx_results.keys() == torch_results.keys() == references.keys()):
        raise ValidationError(f"results differ in names: convx {sorted(convx_results)}, "
                              f"torch {sorted(torch_results)}, float64 {sorted(references)}")
    return {name: compare(name, convx_results[name], torch_results[name], references[name], rtol).rel_err
            for name in references}
