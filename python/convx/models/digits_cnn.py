"""The seed chapter's Keras example as a convx model, with training, evaluation
and save/load.

    28x28x1 -> Conv 25@3x3 -> MaxPool 2 -> Conv 50@3x3 -> MaxPool 2
            -> Flatten (50*5*5 = 1250) -> Dense 100 -> Dense 10

The convolutions and poolings are convx layers; ReLU and the dense layers are torch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from .. import nn as cnn


def _conv_out(size: int, kernel: int, padding: int) -> int:
    return size + 2 * padding - kernel + 1


class DigitsCNN(torch.nn.Module):
    """Conv -> MaxPool -> Conv -> MaxPool -> Flatten -> Dense -> Dense.

    ``image_size`` 28 gives the seed's shapes (26x26, 13x13, the 11x11 outputs of the
    second layer's filters, 5x5). Small images (scikit-learn's 8x8 digits) need
    ``padding=1`` so that something is left after two poolings.
    """

    def __init__(self, image_size: int = 28, channels=(25, 50), hidden: int = 100, classes: int = 10,
                 padding: int = 0):
        super().__init__()
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if len(channels) != 2 or any(not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"channels must be two positive ints, got {channels!r}")
        size = image_size
        for _ in range(2):
            size = _conv_out(size, 3, padding) // 2
        if size < 1:
            raise ValueError(f"image_size {image_size} with padding {padding} leaves nothing after two "
                             f"conv+pool stages; use a larger image or padding=1")
        self.config = dict(image_size=image_size, channels=tuple(channels), hidden=hidden, classes=classes,
                           padding=padding)
        self.conv1 = cnn.Conv2d(1, channels[0], 3, padding=padding)
        self.pool1 = cnn.MaxPool2d(2)
        self.conv2 = cnn.Conv2d(channels[0], channels[1], 3, padding=padding)
        self.pool2 = cnn.MaxPool2d(2)
        self.flat_features = channels[1] * size * size
        self.fc1 = torch.nn.Linear(self.flat_features, hidden)
        self.fc2 = torch.nn.Linear(hidden, classes)

    LAYERS = ("conv1", "pool1", "conv2", "pool2", "fc1", "logits")

    def activations(self, x: torch.Tensor, upto: Optional[str] = None) -> Dict[str, torch.Tensor]:
        """Every intermediate result by name, in order: 'conv1' (filter outputs
        before ReLU), 'pool1', 'conv2' (the seed's a^k_ij, 11x11 per filter),
        'pool2', 'fc1' (dense neurons before ReLU), 'logits' (the y_i before softmax).

        ``upto`` stops after that layer: the convolutional part takes images of any
        size (Deep Dream runs it on photos), the dense part only the trained size.
        """
        if upto is not None and upto not in self.LAYERS:
            raise ValueError(f"upto must be one of {self.LAYERS}, got {upto!r}")
        steps = (
            ("conv1", lambda v: self.conv1(x)),
            ("pool1", lambda v: self.pool1(torch.relu(v))),
            ("conv2", self.conv2),
            ("pool2", lambda v: self.pool2(torch.relu(v))),
            ("fc1", lambda v: self.fc1(v.flatten(1))),
            ("logits", lambda v: self.fc2(torch.relu(v))),
        )
        out: Dict[str, torch.Tensor] = {}
        value = x
        for name, step in steps:
            value = out[name] = step(value)
            if name == upto:
                break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activations(x)["logits"]

    def parameter_counts(self) -> Dict[str, int]:
        """Learned numbers per layer (weights + biases), and the total."""
        counts = {name: sum(p.numel() for p in layer.parameters())
                  for name, layer in (("conv1", self.conv1), ("conv2", self.conv2), ("fc1", self.fc1),
                                      ("fc2", self.fc2))}
        counts["total"] = sum(counts.values())
        return counts


@dataclass
class TrainHistory:
    """What happened while training: per-epoch mean loss and accuracies."""

    loss: List[float] = field(default_factory=list)
    train_accuracy: List[float] = field(default_factory=list)
    test_accuracy: List[float] = field(default_factory=list)
    seconds: float = 0.0


def _shift_augment(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill): the same
    pattern in another place is the same digit, which is what convolutions assume."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


@torch.no_grad()
def predict(model: torch.nn.Module, x, batch_size: int = 500) -> np.ndarray:
    """Class probabilities (softmax of the logits) for numpy or torch images."""
    model.eval()
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return torch.cat([torch.softmax(model(x[i:i + batch_size]), 1) for i in range(0, len(x), batch_size)]).numpy()


def accuracy(model: torch.nn.Module, x, y, batch_size: int = 500) -> float:
    """Fraction of images whose most probable class is the label."""
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    return float(np.mean(predict(model, x, batch_size).argmax(1) == np.asarray(y)))


def train(model: torch.nn.Module, x_train, y_train, x_test=None, y_test=None, epochs: int = 10,
          batch_size: int = 64, lr: float = 2e-3, max_shift: int = 2, seed: int = 0,
          progress: bool = True) -> TrainHistory:
    """Adam on cross-entropy with random shifts, learning rate decayed along a
    cosine; a tqdm bar per epoch. Returns the :class:`TrainHistory`."""
    from tqdm.auto import tqdm
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    x = torch.as_tensor(np.asarray(x_train, dtype=np.float32))
    y = torch.as_tensor(np.asarray(y_train, dtype=np.int64))
    if x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"x_train must be (N, 1, H, W) with one label each, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)} labels")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    history = TrainHistory()
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total_loss, correct = 0.0, 0
        bar = tqdm(range(0, len(x), batch_size), desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                   disable=not progress, leave=False)
        for i in bar:
            idx = order[i:i + batch_size]
            xb = _shift_augment(x[idx], max_shift, generator)
            logits = model(xb)
            loss = torch.nn.functional.cross_entropy(logits, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.loss.append(total_loss / len(x))
        history.train_accuracy.append(correct / len(x))
        if x_test is not None:
            history.test_accuracy.append(accuracy(model, x_test, y_test))
        if progress:
            test = f", test accuracy {history.test_accuracy[-1]:.4f}" if x_test is not None else ""
            tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {history.loss[-1]:.4f}, "
                       f"train accuracy {history.train_accuracy[-1]:.4f}{test}")
    history.seconds = time.perf_counter() - start
    return history


def save(model: DigitsCNN, path: str) -> None:
    """Write the architecture and the trained weights to one file (torch.save)."""
    torch.save({"config": model.config, "state_dict": model.state_dict()}, path)


def load(path: str) -> DigitsCNN:
    """Rebuild a :class:`DigitsCNN` written by :func:`save`."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
        raise ValueError(f"path does not hold a DigitsCNN saved by convx.models.save: {path!r}")
    config = dict(blob["config"])
    config["channels"] = tuple(config["channels"])
    model = DigitsCNN(**config)
    model.load_state_dict(blob["state_dict"])
    return model
