"""AlphaGo's policy network (Silver et al. 2016, the architecture the seed chapter
quotes) on convx layers -- a CNN with no pooling, because dropping rows and
columns of a Go board would change the position.

    19x19x48 feature planes -> Conv k@5x5 pad 2 + ReLU
                            -> 11 x (Conv k@3x3 pad 1 + ReLU)
                            -> Conv 1@1x1 with a different bias for each point
                            -> softmax over the 361 points
"""
from __future__ import annotations

import torch

from .. import nn as cnn

BOARD = 19
INPUT_PLANES = 48


class GoPolicyNet(torch.nn.Module):
    """``width`` is the paper's k (192 for the published network; 128, 256 and 384
    in its extended table); ``blocks`` the number of 3x3 layers after the first
    (11 in the paper, 13 layers in all). Untrained: the weights are torch's default
    initialisation."""

    def __init__(self, width: int = 192, blocks: int = 11, planes: int = INPUT_PLANES, board: int = BOARD):
        super().__init__()
        for name, value in (("width", width), ("planes", planes), ("board", board)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(blocks, int) or blocks < 0:
            raise ValueError(f"blocks must be a non-negative int, got {blocks!r}")
        self.board, self.planes = board, planes
        layers = [cnn.Conv2d(planes, width, 5, padding=2), torch.nn.ReLU()]
        for _ in range(blocks):
            layers += [cnn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU()]
        layers.append(cnn.Conv2d(width, 1, 1, bias=False))
        self.body = torch.nn.Sequential(*layers)
        # "The final layer convolves 1 filter of kernel size 1x1 ... with a different
        # bias for each position": one learned bias per board point.
        self.position_bias = torch.nn.Parameter(torch.zeros(board * board))

    def move_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, planes, board, board) -> (N, board*board) scores before the softmax
        (what a cross-entropy training loss wants)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.planes, self.board, self.board):
            raise ValueError(f"x must have shape (N, {self.planes}, {self.board}, {self.board}), "
                             f"got {tuple(x.shape)}")
        return self.body(x).flatten(1) + self.position_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probability of each move, (N, board*board), rows summing to 1."""
        return torch.softmax(self.move_logits(x), dim=1)
