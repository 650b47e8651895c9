"""Deep Style (Gatys, Ecker & Bethge, "A Neural Algorithm of Artistic Style"):
an image whose filter outputs match a content photo's and whose filter-output
correlations (Gram matrices) match a style image's, found by optimizing the
pixels for both at once.

The feature network needs no download: by default it is a bank of random
filters applied at several scales of an image pyramid. Random filters carry
enough of an image's texture statistics for texture synthesis and style
transfer (Ustyuzhaninov et al. 2017, "What does it take to generate natural
textures?"; He, Wang & Hopcroft 2016, "A Powerful Generative Model Using Random
Weights for the Deep Image Representation"). A pretrained VGG can be loaded from
a torchvision state_dict file the user has (:class:`VGGFeatures`).

A feature network here is any module whose forward returns a dict of named
feature maps and which names its ``style_layers`` and ``content_layer``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .. import functional as F
from .. import nn as cnn
from ._figure import new_figure, save

# ImageNet statistics that torchvision's pretrained VGGs expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomPyramidNet(torch.nn.Module):
    """The default feature network: an image pyramid (blur and halve, ``scales``
    times) with one bank of ``filters`` random ``kernel``x``kernel`` convolutions +
    ReLU at every level. The levels are the scales that a deep network's layers
    would give; their Gram matrices describe texture from fine grain to large
    blobs (a single random layer per scale suffices for texture: Ustyuzhaninov et
    al. 2017). Filters are zero-mean and unit-norm, so each responds to a pattern
    and not to brightness, and all scales speak at a similar volume.
    """

    def __init__(self, filters: int = 128, kernel: int = 5, scales: int = 4, content_scale: int = 2,
                 seed: int = 0):
        super().__init__()
        if scales < 1 or not 0 <= content_scale < scales:
            raise ValueError(f"scales must be >= 1 and content_scale in [0, scales), got {scales}, {content_scale}")
        generator = torch.Generator().manual_seed(seed)
        self.banks = torch.nn.ModuleList()
        for _ in range(scales):
            conv = cnn.Conv2d(3, filters, kernel, padding=kernel // 2, bias=False)
            w = torch.randn(conv.weight.shape, generator=generator)
            w -= w.mean(dim=(1, 2, 3), keepdim=True)
            conv.weight.data.copy_(w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
            conv.weight.requires_grad_(False)
            self.banks.append(conv)
        taps = [1.0, 4.0, 6.0, 4.0, 1.0]          # binomial low-pass before each halving
        blur = torch.tensor(taps)[:, None] * torch.tensor(taps)[None, :]
        self.register_buffer("blur", (blur / blur.sum()).expand(3, 1, 5, 5).contiguous())
        self.style_layers = [f"scale{i}" for i in range(scales)]
        self.content_layer = f"scale{content_scale}"

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Features of every level for images (N, 3, H, W) in [0, 1]."""
        out = {}
        x = (x - 0.5) / 0.25
        for i, bank in enumerate(self.banks):
            out[f"scale{i}"] = torch.relu(bank(x))
            if i + 1 < len(self.banks):
                x = F.conv2d(x, self.blur, stride=2, padding=2, groups=3)
        return out


class VGGFeatures(torch.nn.Module):
    """A pretrained VGG's convolutional part on convx layers, from a weights file
    the user has (nothing is downloaded): a torchvision VGG state_dict, keys
    "features.N.weight"/"features.N.bias". Layer N is a conv, N+1 its ReLU, and a
    gap of three indices between convs is a max-pool, as in torchvision's VGG.
    Layers are named relu{stage}_{index} as in Gatys et al., whose choice is the
    default: relu1_1 ... relu5_1 for style, relu4_2 for content."""

    def __init__(self, state: Dict[str, torch.Tensor], style_layers: Optional[Sequence[str]] = None,
                 content_layer: Optional[str] = None):
        super().__init__()
        convs = sorted(int(k.split(".")[1]) for k, v in state.items()
                       if k.startswith("features.") and k.endswith(".weight") and v.ndim == 4)
        if not convs:
            raise ValueError("state must hold 4-D 'features.N.weight' tensors (a torchvision VGG state_dict)")
        self.layers = torch.nn.ModuleList()
        self.names: List[Optional[str]] = []    # name of each layer's output, None when not a ReLU
        stage, index, position = 1, 0, 0
        for n in convs:
            if n > position:                    # a pooling layer sat between the previous conv and this one
                self.layers.append(cnn.MaxPool2d(2))
                self.names.append(None)
                stage, index = stage + 1, 0
            weight = state[f"features.{n}.weight"]
            conv = cnn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], padding=weight.shape[2] // 2)
            conv.load_state_dict({"weight": weight, "bias": state[f"features.{n}.bias"]})
            conv.requires_grad_(False)
            index += 1
            self.layers.extend([conv, torch.nn.ReLU()])
            self.names.extend([None, f"relu{stage}_{index}"])
            position = n + 2
        named = [n for n in self.names if n]
        firsts = [n for n in named if n.endswith("_1")]
        self.style_layers = list(style_layers) if style_layers else firsts[:5]
        self.content_layer = content_layer or ("relu4_2" if "relu4_2" in named else named[len(named) // 2])
        for name in self.style_layers + [self.content_layer]:
            if name not in named:
                raise ValueError(f"layer names must be among {named}, got {name!r}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @classmethod
    def from_file(cls, path: str, **kwargs) -> "VGGFeatures":
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"path must hold a state_dict, got {type(state).__name__} from {path!r}")
        return cls(state, **kwargs)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        wanted = set(self.style_layers) | {self.content_layer}
        out, value = {}, (x - self.mean) / self.std
        for layer, name in zip(self.layers, self.names):
            value = layer(value)
            if name in wanted:
                out[name] = value
                if len(out) == len(wanted):
                    break
        return out


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Correlations between filter outputs: G_kl = sum_ij F_k,ij F_l,ij / (H W).
    Positions are summed out, so G keeps which patterns occur together and drops
    where: that is the style."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


@dataclass
class StyleResult:
    """The stylized image (3, H, W) in [0, 1] and the loss terms at every
    evaluation of the optimizer (the first entry is the starting image)."""

    image: np.ndarray
    total_loss: List[float] = field(default_factory=list)
    content_loss: List[float] = field(default_factory=list)
    style_loss: List[float] = field(default_factory=list)


class StyleLoss:
    """content_weight * content + style_weight * style + tv_weight * roughness,
    for one content image and one style image (both (3, H, W) in [0, 1]; their
    sizes may differ, since Gram matrices do not depend on position)."""

    def __init__(self, net: torch.nn.Module, content: np.ndarray, style: np.ndarray, content_weight: float = 1.0,
                 style_weight: float = 1.0, tv_weight: float = 0.0):
        self.net = net
        self.content_weight, self.style_weight, self.tv_weight = content_weight, style_weight, tv_weight
        with torch.no_grad():
            c = net(torch.as_tensor(np.asarray(content, dtype=np.float32))[None])
            s = net(torch.as_tensor(np.asarray(style, dtype=np.float32))[None])
        self.content_target = c[net.content_layer]
        self.style_targets = {name: gram_matrix(s[name]) for name in net.style_layers}

    def terms(self, image: torch.Tensor):
        """(content, style, roughness) of an image batch (1, 3, H, W)."""
        feats = self.net(image)
        target = self.content_target
        content = torch.sum((feats[self.net.content_layer] - target) ** 2) / torch.sum(target ** 2)
        # Each layer's Gram difference relative to the target's size, so every
        # scale counts alike whatever its magnitude.
        style = sum(torch.sum((gram_matrix(feats[name]) - g) ** 2) / torch.sum(g ** 2)
                    for name, g in self.style_targets.items()) / len(self.style_targets)
        # Squared differences of neighbouring pixels: discourages pixel noise that
        # the features do not see.
        roughness = (torch.mean((image[..., 1:, :] - image[..., :-1, :]) ** 2)
                     + torch.mean((image[..., :, 1:] - image[..., :, :-1]) ** 2))
        return content, style, roughness

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        content, style, roughness = self.terms(image)
        return self.content_weight * content + self.style_weight * style + self.tv_weight * roughness


def style_transfer(content: np.ndarray, style: np.ndarray, net: Optional[torch.nn.Module] = None,
                   steps: int = 100, content_weight: float = 1.0, style_weight: float = 10.0,
                   tv_weight: float = 1.0, seed: int = 0, progress: bool = False,
                   path: Optional[str] = None) -> StyleResult:
    """Optimize an image, started from the content photo, to minimize the
    :class:`StyleLoss` with L-BFGS on the pixels (clipped to [0, 1]); ``steps`` is
    the number of loss evaluations. ``net`` defaults to :class:`RandomPyramidNet`.
    Writes content | style | result | loss curves when ``path`` is given."""
    from tqdm.auto import tqdm
    for name, img in (("content", content), ("style", style)):
        if np.ndim(img) != 3 or np.shape(img)[0] != 3:
            raise ValueError(f"{name} must have shape (3, H, W), got {np.shape(img)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    net = RandomPyramidNet(seed=seed) if net is None else net
    net.eval()
    loss_fn = StyleLoss(net, content, style, content_weight, style_weight, tv_weight)
    image = torch.tensor(np.asarray(content, dtype=np.float32)[None], requires_grad=True)
    optimizer = torch.optim.LBFGS([image], lr=1, max_iter=steps, max_eval=steps, history_size=20,
                                  line_search_fn="strong_wolfe")
    result = StyleResult(image=np.empty(0))
    bar = tqdm(total=steps, desc="style transfer", unit="eval", disable=not progress, leave=False)

    def closure():
        with torch.no_grad():
            image.clamp_(0, 1)
        optimizer.zero_grad()
        c, s, r = loss_fn.terms(image)
        total = content_weight * c + style_weight * s + tv_weight * r
        total.backward()
        result.total_loss.append(total.item())
        result.content_loss.append(c.item())
        result.style_loss.append(s.item())
        bar.update(1)
        return total

    optimizer.step(closure)
    bar.close()
    with torch.no_grad():
        image.clamp_(0, 1)
    result.image = image.detach()[0].numpy().copy()
    if path is not None:
        fig = new_figure(14, 4.2)
        panels = [(content, "content"), (style, "style"), (result.image, "result")]
        for i, (img, title) in enumerate(panels):
            ax = fig.add_subplot(1, 4, i + 1)
            ax.imshow(np.asarray(img).transpose(1, 2, 0))
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        ax = fig.add_subplot(1, 4, 4)
        # From the first step on: the start is the content photo, content loss 0.
        evals = np.arange(1, len(result.style_loss))
        ax.semilogy(evals, result.style_loss[1:], label="style (Gram) loss")
        ax.semilogy(evals, result.content_loss[1:], label="content loss")
        ax.set_ylim(bottom=min(result.style_loss) / 3)    # the content curve's first tiny values add nothing
        ax.set_xlabel("loss evaluation")
        ax.legend(fontsize=8)
        ax.set_title("losses (relative to their targets)", fontsize=9)
        fig.suptitle("Deep Style: content from filter outputs, style from their correlations (Gram matrices)",
                     fontsize=10)
        fig.tight_layout()
        save(fig, path)
    return result
