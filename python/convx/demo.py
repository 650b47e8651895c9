"""``convx demo``: the seed chapter's experiments, run end to end on convx layers.

Trains the chapter's digits CNN on the embedded MNIST subset, then writes into
one folder: a PNG per experiment, ``metrics.json`` (accuracy, timings, parameter
counts) and ``report.html``, which shows every picture with a paragraph tying it
to the chapter. Offline, CPU only.
"""
from __future__ import annotations

import html
import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

import convx
from . import viz
from .data import load_digits, load_photo, seed_example
from .models import DigitsCNN, GoPolicyNet, accuracy, save, train


@dataclass(frozen=True)
class DemoSettings:
    """How much work each step does. FULL is the real demo; QUICK checks that
    everything runs (its classifier is not trained to full accuracy)."""

    epochs: int
    filter_steps: int
    class_steps: int
    dream_size: int
    dream_octaves: int
    dream_steps: int
    style_size: int
    style_steps: int


FULL = DemoSettings(epochs=15, filter_steps=200, class_steps=300, dream_size=256, dream_octaves=3, dream_steps=10,
                    style_size=160, style_steps=120)
QUICK = DemoSettings(epochs=2, filter_steps=50, class_steps=80, dream_size=128, dream_octaves=2, dream_steps=6,
                     style_size=96, style_steps=30)

# File names, in the order the report shows them.
FIGURES = ("conv_as_dense.png", "training.png", "conv1_filters.png", "feature_maps.png", "activation_degree.png",
           "conv2_filter_inputs.png", "dense_neuron_inputs.png", "class_inputs.png", "class_inputs_l1.png",
           "deep_dream.png", "deep_style.png")
OUTPUTS = FIGURES + ("metrics.json", "report.html", "digits_cnn.pt")


class _Timer:
    def __init__(self, progress: bool):
        self.seconds: Dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def step(self, name: str):
        if self.progress:
            print(f"[convx demo] {name} ...", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        if self.progress:
            print(f"[convx demo] {name}: {self.seconds[name]:.1f} s", flush=True)


def _plot_training(history, path: str) -> None:
    from .viz._figure import new_figure
    from .viz._figure import save as save_figure
    epochs = np.arange(1, len(history.loss) + 1)
    fig = new_figure(9, 3.4)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(epochs, history.loss, marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss (train)")
    ax.set_title("training loss", fontsize=9)
    ax = fig.add_subplot(1, 2, 2)
    ax.plot(epochs, history.train_accuracy, marker="o", label="train (shifted images)")
    ax.plot(epochs, history.test_accuracy, marker="o", label="held-out test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.set_title(f"held-out accuracy after training: {history.test_accuracy[-1]:.4f}", fontsize=9)
    fig.suptitle("The seed's Keras CNN on convx layers: Conv 25@3x3, MaxPool, Conv 50@3x3, MaxPool, "
                 "Dense 100, Dense 10", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def run_demo(out: str = "convx-demo", quick: bool = False, data: str = "mnist-subset", photo: str = "chelsea",
             content: str = "astronaut", style: str = "immunohistochemistry", style_weights: Optional[str] = None,
             epochs: Optional[int] = None, l1: float = 0.08, seed: int = 0, progress: bool = True) -> Dict:
    """Run every experiment and write the outputs into ``out``; returns the metrics."""
    settings = QUICK if quick else FULL
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs!r}")
        settings = DemoSettings(**{**asdict(settings), "epochs": epochs})
    if l1 <= 0:
        raise ValueError(f"l1 must be > 0 (the unregularized version is always drawn too), got {l1!r}")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    timer = _Timer(progress)
    start = time.perf_counter()
    metrics: Dict = {"quick": quick, "settings": asdict(settings), "seed": seed}
    path = lambda name: os.path.join(out, name)  # noqa: E731

    with timer.step("convolution as a dense layer (seed example)"):
        ex = seed_example()
        dense = viz.conv_as_dense_matrix(ex["image"], ex["filters"][0])
        viz.plot_conv_as_dense(dense, ex["image"], path("conv_as_dense.png"))
        metrics["conv_as_dense"] = {
            "matrix_shape": list(dense.matrix.shape), "weights_kept": int((dense.tap >= 0).sum()),
            "matches_conv2d": dense.matches,
            "seed_6x6": viz.parameter_comparison((1, 6, 6), 1, 3, bias=False),
            "digits_cnn_conv1": viz.parameter_comparison((1, 28, 28), 25, 3)}

    with timer.step(f"load data ({data})"):
        split = load_digits(data)
        metrics["data"] = {"name": split.name, "train_images": int(len(split.x_train)),
                           "test_images": int(len(split.x_test)), "image_size": list(split.image_size)}

    with timer.step(f"train the digits CNN ({settings.epochs} epochs)"):
        size = split.image_size[0]
        model = DigitsCNN(image_size=size, padding=0 if size >= 16 else 1)
        history = train(model, split.x_train, split.y_train, split.x_test, split.y_test, epochs=settings.epochs,
                        max_shift=1 if size >= 16 else 0, seed=seed, progress=progress)
        save(model, path("digits_cnn.pt"))
        _plot_training(history, path("training.png"))
        metrics["test_accuracy"] = accuracy(model, split.x_test, split.y_test)
        metrics["training"] = {"epochs": settings.epochs, "seconds": round(history.seconds, 2),
                               "loss": [round(v, 5) for v in history.loss],
                               "test_accuracy": history.test_accuracy}
        metrics["parameters"] = model.parameter_counts()

    with timer.step("first-layer filters and feature maps"):
        viz.first_layer_filters(model, path("conv1_filters.png"))
        viz.feature_maps(model, split.x_test[0], "conv1", path("feature_maps.png"))

    with timer.step("activation degree of the second layer's filters"):
        degrees = viz.plot_activation_degree(model, split.x_test[0], "conv2", path("activation_degree.png"))
        metrics["activation_degree_example"] = [round(float(d), 3) for d in degrees]

    with timer.step(f"x* for the first 12 filters of conv2 ({settings.filter_steps} steps)"):
        filters = viz.filter_inputs(model, range(12), "conv2", steps=settings.filter_steps, seed=seed,
                                    path=path("conv2_filter_inputs.png"))
        typical = viz.activation_degree(model, split.x_test[:500], "conv2")[:, :12].mean(0)
        metrics["conv2_filter_inputs"] = {
            "activation_degree_of_x_star": [round(float(v), 3) for v in filters.final_objective],
            "mean_activation_degree_on_test_images": [round(float(v), 3) for v in typical]}

    with timer.step(f"x* for dense neurons ({settings.filter_steps} steps)"):
        with torch.no_grad():
            hidden = model.activations(torch.from_numpy(split.x_test[:500]))["fc1"].mean(0)
        busiest = [int(i) for i in torch.argsort(hidden, descending=True)[:18]]
        neurons = viz.neuron_inputs(model, busiest, "fc1", steps=settings.filter_steps, seed=seed,
                                    path=path("dense_neuron_inputs.png"))
        metrics["dense_neuron_inputs"] = {"neurons": [n + 1 for n in busiest],
                                          "activation": [round(float(v), 3) for v in neurons.final_objective]}

    with timer.step(f"x* for each class, without and with L1 ({settings.class_steps} steps)"):
        plain = viz.class_inputs(model, 0.0, steps=settings.class_steps, seed=seed, path=path("class_inputs.png"))
        sparse = viz.class_inputs(model, l1, steps=settings.class_steps, seed=seed, path=path("class_inputs_l1.png"))
        metrics["class_inputs"] = {
            "l1_lambda": l1,
            "confidence_without_l1": [round(float(v), 4) for v in plain.confidence],
            "confidence_with_l1": [round(float(v), 4) for v in sparse.confidence],
            "ink_without_l1": [round(float(v), 2) for v in plain.images.reshape(10, -1).sum(1)],
            "ink_with_l1": [round(float(v), 2) for v in sparse.images.reshape(10, -1).sum(1)]}

    with timer.step(f"Deep Dream on '{photo}'"):
        dream = viz.deep_dream(model, load_photo(photo, settings.dream_size), "conv2",
                               octaves=settings.dream_octaves, steps=settings.dream_steps, seed=seed,
                               path=path("deep_dream.png"))
        metrics["deep_dream"] = {"photo": photo, "layer": "conv2", "objective_before": dream.objective_before,
                                 "objective_after": dream.objective_after}

    with timer.step(f"Deep Style: '{content}' in the style of '{style}' ({settings.style_steps} evaluations)"):
        net = viz.VGGFeatures.from_file(style_weights) if style_weights else viz.RandomPyramidNet(seed=seed)
        styled = viz.style_transfer(load_photo(content, settings.style_size), load_photo(style, settings.style_size),
                                    net, steps=settings.style_steps, seed=seed, progress=progress,
                                    path=path("deep_style.png"))
        metrics["deep_style"] = {
            "content": content, "style": style,
            "feature_net": "VGG weights from " + os.path.basename(style_weights) if style_weights
            else "random filter banks on a 4-level image pyramid",
            "style_loss_start": styled.style_loss[0], "style_loss_end": styled.style_loss[-1],
            "content_loss_end": styled.content_loss[-1]}

    policy = GoPolicyNet()
    metrics["alphago_policy_parameters"] = sum(p.numel() for p in policy.parameters())
    metrics["timings_s"] = timer.seconds
    metrics["total_s"] = round(time.perf_counter() - start, 2)
    metrics["environment"] = {"convx": convx.__version__, "torch": torch.__version__,
                              "convx_threads": convx.get_num_threads(), "torch_threads": torch.get_num_threads(),
                              "simd": convx.simd_level(), "python": platform.python_version()}
    with open(path("metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    with open(path("report.html"), "w", encoding="utf-8") as f:
        f.write(render_report(metrics))
    if progress:
        print(f"[convx demo] held-out accuracy {metrics['test_accuracy']:.4f}; "
              f"{metrics['total_s']:.0f} s in all; open {path('report.html')}")
    return metrics


def _paragraphs(m: Dict) -> Dict[str, str]:
    """One paragraph per figure, tying it to the seed chapter (quoted in Chinese
    where the chapter's own words are the point)."""
    cd, ci, dd, ds = m["conv_as_dense"], m["class_inputs"], m["deep_dream"], m["deep_style"]
    acc = m["test_accuracy"]
    mean_ink = lambda key: float(np.mean(ci[key]))  # noqa: E731
    return {
        "conv_as_dense.png": (
            "The chapter says a convolution is a fully connected layer with weights thrown away "
            "(“Convolution 相当于将 Fully Connected Network 的一些权重丢弃”): output 1 connects only to "
            "inputs 1/2/3, 7/8/9, 13/14/15 (“只连接了第 1/2/3, 7/8/9, 13/14/15 共 9 个输入”), and the same "
            "weights serve every output (shared weights). The figure builds that matrix for the seed's 6x6 image "
            f"and Filter 1: {cd['matrix_shape'][0]}x{cd['matrix_shape'][1]}, {cd['weights_kept']} non-zero "
            f"entries that are all copies of the {cd['seed_6x6']['conv']} filter weights, where a dense layer "
            f"would learn {cd['seed_6x6']['dense']}. Multiplying it with the flattened image gives exactly the "
            f"4x4 feature map convx's conv2d computes and the chapter works out by hand "
            f"(equal: {cd['matches_conv2d']}). For the digits CNN's first layer the gap is "
            f"{cd['digits_cnn_conv1']['conv']:,} parameters against {cd['digits_cnn_conv1']['dense']:,}."),
        "training.png": (
            "The chapter's Keras example (“CNN in keras”), rebuilt on convx's Conv2d and MaxPool2d: the input is "
            "a 3-D tensor (“在CNN中输入要调整为一个3-D的tensor”), 28x28x1, then Convolution + Max Pooling twice, "
            "Flatten to 1250 numbers and a fully connected network. Trained on "
            f"{m['data']['train_images']} real MNIST digits for {m['training']['epochs']} epochs "
            f"({m['training']['seconds']:.0f} s), it classifies {acc:.2%} of the {m['data']['test_images']} "
            f"held-out digits correctly, with {m['parameters']['total']:,} parameters."),
        "conv1_filters.png": (
            "“第一个卷积层学到的特征可以轻松的从Filter Matrix中看出”: the 25 learned 3x3 filters of the first "
            "layer, red for positive and blue for negative weights. Like the chapter's Filter 1 (a diagonal) and "
            "Filter 2 (a vertical line), each detects a small pattern (Property 1): edges and strokes at various "
            "angles."),
        "feature_maps.png": (
            "One held-out digit filtered by each of the 25 first-layer filters. Each 26x26 image is one filter's "
            "output; together they are the Feature Map (“所有的压缩 image 合在一起称为 Feature Map”). Each "
            "filter lights up (red) where its stroke direction occurs in the digit, wherever that is: the same "
            "pattern in different regions is found by the same weights."),
        "activation_degree.png": (
            "The second conv layer's filter k outputs an 11x11 matrix a^k_ij (“第二个卷积层第k个filter的输出为 "
            "11x11 的矩阵”). Its activation degree a^k = Σ_i Σ_j a^k_ij says how much the input matches the "
            "filter. Left: a held-out digit; middle: the 11x11 output of the filter it excites most; right: a^k "
            "for all 50 filters. The outputs are taken before the ReLU, so a filter whose pattern is absent sums "
            "to a negative degree."),
        "conv2_filter_inputs.png": (
            "x* = argmax_x a^k, found as the chapter says by gradient methods on the input with the weights "
            "fixed (“通过梯度下降求解使 k^th filter 激活程度最大的 input”), for the first 12 of the 50 filters of "
            "the second layer. As in the chapter (“对应的输入均是各种各样的条纹状”), several are stripe "
            "patterns of different orientations and spacings: such filters detect local stripes. Others respond "
            "mostly to strokes near the image border, and a filter whose a^k stays negative even for its own x* "
            "is barely used by the network. The titles give a^k of x*; the typical a^k on held-out digits, far "
            "lower, is in metrics.json."),
        "dense_neuron_inputs.png": (
            "x* = argmax_x a_j for neurons of the dense layer (the 18 most active on held-out digits). Unlike the "
            "conv filters, each covers the whole image (“其检测的是整个图片的特征”): large strokes and arcs "
            "spread over the 28x28 canvas, some resembling parts of digits."),
        "class_inputs.png": (
            "x* = argmax_x y_i for each output class, without regularization. The chapter observes these are "
            "not the digits people write but what the machine thinks a digit should look like "
            "(“获得的是计算机认为的数字应该具有的样子”). Our pixels are kept in [0, 1] (ink to background), "
            "a constraint that already makes some look like strokes, but the canvas is covered in ink "
            f"(mean {mean_ink('ink_without_l1'):.0f} of 784 pixels' worth) and the classifier is certain "
            f"of every one (mean confidence {np.mean(ci['confidence_without_l1']):.3f})."),
        "class_inputs_l1.png": (
            f"The same with the chapter's L1 regularizer, x* = argmax (y_i − λ Σ|x_ij|), λ = {ci['l1_lambda']}: "
            "most x_ij of a handwritten digit are 0, so the penalty asks for little ink. The result is "
            "sparser (“可以得到较为稀疏的图像”), "
            f"mean ink {mean_ink('ink_with_l1'):.0f} instead of {mean_ink('ink_without_l1'):.0f}, and strokes "
            "of the digits appear (“图像略微出现了线条的样子”), while the classifier is still confident "
            f"(mean {np.mean(ci['confidence_with_l1']):.3f})."),
        "deep_dream.png": (
            "Deep Dream: the photo is changed by gradient ascent so that the trained digits CNN's second conv "
            "layer responds more (“将网络中的某一层 hidden layer 或 filter 的数值进行放大”). The network has "
            "only seen handwritten digits, so it paints stroke fragments over the photo where it half-sees "
            "them: “CNN exaggerates what it sees”, and the difference image is the pattern the layer cares "
            "about (“两张图片的相差之处就是CNN所关注的 Pattern”). Its objective, mean(relu(a)²), went from "
            f"{dd['objective_before']:.3g} to {dd['objective_after']:.3g}."),
        "deep_style.png": (
            "Deep Style (A Neural Algorithm of Artistic Style): one term keeps the filter outputs of the content "
            "photo (“一个关注filter的输出（即原图片的内容）”), the other the correlations between filter outputs "
            "of the style image, their Gram matrices (“另一个关注filter输出之间的相关度（即目标风格）”), and "
            "an image is optimized for both at once. No pretrained network can be downloaded here, so the "
            f"filters are {ds['feature_net']}; random filters describe texture well enough. The style loss fell "
            f"from {ds['style_loss_start']:.3g} to {ds['style_loss_end']:.3g}."),
    }


def render_report(m: Dict) -> str:
    """report.html: every figure with its paragraph, then the metrics."""
    paragraphs = _paragraphs(m)
    titles = {
        "conv_as_dense.png": "Convolution as a sparse, weight-sharing dense layer",
        "training.png": "The chapter's CNN, trained on real MNIST",
        "conv1_filters.png": "What the first layer learns: its filters",
        "feature_maps.png": "Feature maps of one digit",
        "activation_degree.png": "Activation degree of the second layer's filters",
        "conv2_filter_inputs.png": "x* = argmax a^k for the second layer's filters",
        "dense_neuron_inputs.png": "x* for neurons of the dense layer",
        "class_inputs.png": "x* for each output class",
        "class_inputs_l1.png": "x* for each class with the L1 regularizer",
        "deep_dream.png": "Deep Dream",
        "deep_style.png": "Deep Style",
    }
    sections: List[str] = []
    for name in FIGURES:
        sections.append(f"<h2>{html.escape(titles[name])}</h2>\n<img src=\"{name}\" alt=\"{name}\">\n"
                        f"<p>{html.escape(paragraphs[name])}</p>")
    quick = ("<p><b>Quick run:</b> fewer epochs and optimization steps; accuracy and pictures are rougher than "
             "the full demo's.</p>" if m["quick"] else "")
    policy = (f"<h2>AlphaGo's policy network</h2><p>The chapter ends with AlphaGo: a CNN over the 19x19 board "
              f"with 48 feature planes, a 5x5 first layer, eleven 3x3 layers with k = 192 filters, a 1x1 output "
              f"layer and a softmax over the 361 points, and no Max Pooling (“AlphaGo没有用Max Pooling”) since "
              f"dropping rows of a board changes the game. It is <code>convx.models.GoPolicyNet</code> "
              f"({m['alphago_policy_parameters']:,} parameters at k = 192); it is not trained here.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>convx demo: the CNN chapter, runnable</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}}
img{{max-width:100%;border:1px solid #ddd}} pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}</style>
</head><body>
<h1>The CNN chapter, runnable on convx</h1>
<p>Every convolution and max-pooling below ran on convx's kernels on the CPU. Held-out accuracy of the
digits CNN: <b>{m['test_accuracy']:.2%}</b> ({m['data']['test_images']} images of {html.escape(m['data']['name'])});
whole demo: {m['total_s']:.0f} s.</p>
{quick}
{chr(10).join(sections)}
{policy}
<h2>Metrics</h2>
<pre>{html.escape(json.dumps(m, indent=1))}</pre>
</body></html>
"""
