"""Drop-in layers: convx.nn.Conv2d and convx.nn.MaxPool2d, and convert(model).

The layers subclass torch's own, so constructor arguments, parameter names and
shapes, initialisation, state_dict keys, repr and isinstance checks are torch's:
a torch checkpoint loads unchanged. Only the arithmetic runs on convx kernels.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch

from . import functional as F

__all__ = ["Conv2d", "MaxPool2d", "convert"]


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d computed by convx. ``algo`` (class attribute, settable per
    instance) forces a kernel as in convx.functional.conv2d."""

    algo: Optional[str] = None

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            # Non-zero padding modes pad explicitly, then convolve unpadded (as torch).
            input = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups, algo=self.algo)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                        algo=self.algo)


class MaxPool2d(torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d computed by convx (argmax indices, gradient routed through them)."""

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


_REPLACEMENTS = {torch.nn.Conv2d: Conv2d, torch.nn.MaxPool2d: MaxPool2d}


def _swap(module: torch.nn.Module) -> torch.nn.Module:
    """A convx twin of a plain torch layer that shares its Parameter objects, buffers
    and hooks (so optimizers holding those parameters keep working)."""
    cls = _REPLACEMENTS.get(type(module))
    if cls is None:
        return module
    twin = cls.__new__(cls)
    # Module state is a handful of dicts (_parameters, _buffers, hooks...): copy the
    # dicts, share their values, so later registrations do not leak between the two.
    twin.__dict__.update({k: copy.copy(v) if isinstance(v, dict) else v for k, v in module.__dict__.items()})
    return twin


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every torch.nn.Conv2d and torch.nn.MaxPool2d in ``model`` (nested too)
    by convx's, keeping the weights.

    Containers are modified in place and returned; parameters are shared, not
    copied. Only exact torch classes are replaced (subclasses are left alone).
    A bare Conv2d / MaxPool2d comes back as a new convx module.
    """
    swapped = _swap(model)
    if swapped is not model:
        return swapped
    for name, child in list(model.named_children()):
        new = convert(child)
        if new is not child:
            setattr(model, name, new)
    return model
