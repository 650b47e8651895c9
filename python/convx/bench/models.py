"""The two whole models of the suite, as plain torch.nn modules.

The convx side of a model row is convx.nn.convert(copy.deepcopy(model)): the same
weights, every Conv2d and MaxPool2d computed by convx.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


def digits_cnn() -> nn.Module:
    """The seed chapter's digits network: 28x28x1 -> conv 25@3x3 -> pool 2 -> conv
    50@3x3 -> pool 2 -> flatten (50*5*5 = 1250) -> dense 100 -> dense 10."""
    return nn.Sequential(
        nn.Conv2d(1, 25, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(25, 50, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1250, 100), nn.ReLU(), nn.Linear(100, 10),
    )


def alphago_policy() -> nn.Module:
    """AlphaGo's policy network: 19x19x48 feature planes -> 5x5 conv (192 filters,
    pad 2) -> eleven 3x3 convs (192, pad 1) -> 1x1 conv to one plane, ReLU after every
    hidden conv, no pooling. The 361 outputs are the move logits."""
    layers = [nn.Conv2d(48, 192, 5, padding=2), nn.ReLU()]
    for _ in range(11):
        layers += [nn.Conv2d(192, 192, 3, padding=1), nn.ReLU()]
    layers += [nn.Conv2d(192, 1, 1), nn.Flatten()]
    return nn.Sequential(*layers)


MODELS = {"digits_cnn": digits_cnn, "alphago": alphago_policy}


def model_inputs(name: str, batch: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """A batch of inputs and class targets for a model (10 digit classes, 361 moves)."""
    if name == "digits_cnn":
        return torch.randn(batch, 1, 28, 28, generator=generator), torch.randint(0, 10, (batch,), generator=generator)
    if name == "alphago":
        return (torch.randn(batch, 48, 19, 19, generator=generator),
                torch.randint(0, 361, (batch,), generator=generator))
    raise ValueError(f"unknown model {name!r}")


def model_flops(model: nn.Module, x: torch.Tensor, train: bool) -> int:
    """FLOPs of the model's conv and dense layers for input x, counted as in
    cases.conv2d_flops (ReLU, pooling and the loss are not counted).

    Inference is one forward pass; a training step adds backward-weight for every
    layer and backward-data for every layer but the first (the input needs no
    gradient), each costing as much as the forward.
    """
    per_layer = []

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            n, c = inputs[0].shape[:2]
            k, _, r, s = module.weight.shape
            p, q = output.shape[2:]
            per_layer.append(2 * n * k * p * q * (c // module.groups) * r * s)
        elif isinstance(module, nn.Linear):
            per_layer.append(2 * inputs[0].shape[0] * module.in_features * module.out_features)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    forward = sum(per_layer)
    if not train:
        return forward
    return forward + forward + (forward - per_layer[0])
