"""convx.viz: activation maximization, the L1 regularizer, Deep Dream, Deep Style,
convolution as a dense matrix, and the PNGs."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from convx import viz
from convx.data import load_sklearn_digits
from convx.models import DigitsCNN, train

SEED = json.loads((Path(__file__).parent / "data" / "seed_example.json").read_text())
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    path = Path(path)
    return path.is_file() and path.stat().st_size > 2000 and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def model():
    """A digits CNN trained briefly on scikit-learn's 8x8 digits (a couple of seconds)."""
    torch.manual_seed(0)
    split = load_sklearn_digits(seed=2)
    net = DigitsCNN(image_size=8, padding=1)
    train(net, split.x_train, split.y_train, epochs=2, lr=5e-3, max_shift=0, progress=False)
    net.eval()
    return net


# ---- convolution as a dense layer ---------------------------------------------------

@pytest.mark.parametrize("filter_index", [0, 1])
def test_conv_as_dense_matrix_reproduces_the_seeds_feature_maps(filter_index):
    image = np.array(SEED["image"], dtype=float)
    kernel = np.array(SEED["filters"][filter_index], dtype=float)
    result = viz.conv_as_dense_matrix(image, kernel)
    assert result.matrix.shape == (16, 36)
    np.testing.assert_array_equal(result.matrix @ image.reshape(-1),
                                  np.array(SEED["conv_stride1"][filter_index]).reshape(-1))
    # output 1 sees pixels 1,2,3, 7,8,9, 13,14,15 only (1-based), as the seed says
    assert (np.flatnonzero(result.tap[0] >= 0) + 1).tolist() == [1, 2, 3, 7, 8, 9, 13, 14, 15]
    # shared weights: every row holds each of the 9 filter entries exactly once
    assert all(sorted(row[row >= 0].tolist()) == list(range(9)) for row in result.tap)
    assert result.matches
    strided = viz.conv_as_dense_matrix(image, kernel, stride=2)
    assert strided.matrix.shape == (4, 36)
    np.testing.assert_array_equal(strided.matrix @ image.reshape(-1),
                                  np.array(SEED["conv_stride2"][filter_index]).reshape(-1))


def test_conv_as_dense_matrix_matches_torch_on_random_data():
    rng = np.random.default_rng(3)
    image, kernel = rng.standard_normal((9, 7)), rng.standard_normal((4, 3))
    result = viz.conv_as_dense_matrix(image, kernel)
    ref = torch.nn.functional.conv2d(torch.tensor(image)[None, None], torch.tensor(kernel)[None, None])[0, 0]
    np.testing.assert_allclose(result.dense_output, ref.numpy(), rtol=1e-12, atol=1e-12)
    assert result.matrix.shape == (6 * 5, 63)


def test_parameter_comparison_counts():
    assert viz.parameter_comparison((1, 6, 6), 1, 3, bias=False) == {"conv": 9, "dense": 576, "inputs": 36,
                                                                     "outputs": 16}
    # the digits CNN's first layer: 25 filters of 3x3 + bias vs a dense 784 -> 25*26*26 layer
    counts = viz.parameter_comparison((1, 28, 28), 25, 3)
    assert counts["conv"] == 250 and counts["dense"] == 784 * 16900 + 16900


def test_conv_as_dense_refuses_bad_arguments():
    with pytest.raises(ValueError, match="stride"):
        viz.conv_as_dense_matrix(np.zeros((6, 6)), np.zeros((3, 3)), stride=0)
    with pytest.raises(ValueError, match="kernel"):
        viz.conv_as_dense_matrix(np.zeros((2, 2)), np.zeros((3, 3)))


# ---- activation maximization ----------------------------------------------------------

def test_gradient_ascent_finds_the_known_maximizer_of_a_linear_objective():
    # max over x in [0,1]^n of w.x - l1*sum|x| is x_i = 1 where w_i > l1, else 0
    w = torch.tensor([[0.5, -1.0, 0.05, 2.0, -0.1, 0.3]]).view(1, 1, 2, 3)
    result = viz.gradient_ascent(lambda x: (x * w).flatten(1).sum(1), np.full((1, 1, 2, 3), 0.5, np.float32),
                                 steps=300, lr=0.05, l1=0.2)
    np.testing.assert_allclose(result.images.reshape(-1), [1, 0, 0, 1, 0, 1], atol=1e-3)
    assert result.final_objective[0] == pytest.approx(2.8, abs=1e-3)


def test_filter_inputs_raise_the_filters_activation_degree(model, tmp_path):
    result = viz.filter_inputs(model, range(6), "conv2", steps=40, path=str(tmp_path / "x.png"))
    assert result.images.shape == (6, 1, 8, 8)
    assert (result.final_objective > result.start_objective).all()
    assert result.images.min() >= 0 and result.images.max() <= 1
    # the reported objective is the activation degree of x* for its own filter
    degrees = viz.activation_degree(model, result.images, "conv2")
    np.testing.assert_allclose(result.final_objective, degrees[np.arange(6), np.arange(6)], rtol=1e-4, atol=1e-4)
    assert _is_png(tmp_path / "x.png")


def test_activation_degree_is_the_sum_of_the_filter_output(model):
    x = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    # the second layer recomputed with torch's own ops from the model's weights
    t = torch.from_numpy(x)
    h = torch.nn.functional.conv2d(t, model.conv1.weight, model.conv1.bias, padding=1)
    h = torch.nn.functional.max_pool2d(torch.relu(h), 2)
    a = torch.nn.functional.conv2d(h, model.conv2.weight, model.conv2.bias, padding=1)
    expected = a.sum(dim=(2, 3)).detach().numpy()
    np.testing.assert_allclose(viz.activation_degree(model, x, "conv2"), expected, rtol=1e-4, atol=1e-4)


def test_neuron_inputs_raise_the_neurons_output(model):
    result = viz.neuron_inputs(model, [0, 5, 7], "fc1", steps=30)
    assert (result.final_objective > result.start_objective).all()


def test_l1_class_inputs_are_sparser_and_still_recognized(model, tmp_path):
    plain = viz.class_inputs(model, 0.0, steps=100, path=str(tmp_path / "plain.png"))
    sparse = viz.class_inputs(model, 0.3, steps=100, path=str(tmp_path / "l1.png"))
    ink_plain = plain.images.reshape(10, -1).sum(1)
    ink_sparse = sparse.images.reshape(10, -1).sum(1)
    assert (ink_sparse < ink_plain).all()
    assert ink_sparse.mean() < 0.7 * ink_plain.mean()
    assert ((sparse.images < 0.05).mean()) > ((plain.images < 0.05).mean())
    # the confidence is the softmax of the model for each x*'s own class
    probs = torch.softmax(model(torch.from_numpy(sparse.images)), 1).detach().numpy()
    np.testing.assert_allclose(sparse.confidence, probs[np.arange(10), np.arange(10)], rtol=1e-5)
    assert (plain.confidence > 0.1).all()       # each x* pulls the model toward its own class
    assert _is_png(tmp_path / "plain.png") and _is_png(tmp_path / "l1.png")


# ---- Deep Dream -----------------------------------------------------------------------

@pytest.mark.parametrize("layer,one_filter", [("conv2", False), ("conv1", True)])
def test_deep_dream_raises_the_chosen_layers_activation(model, layer, one_filter, tmp_path):
    photo = np.random.default_rng(0).random((3, 40, 48)).astype(np.float32) * 0.5 + 0.25
    filter = None
    if one_filter:     # a filter that sees something in the photo (a silent one has no gradient)
        with torch.no_grad():
            acts = model.activations(torch.from_numpy(photo).mean(0, keepdim=True)[None], upto=layer)[layer]
        filter = int(torch.relu(acts).mean(dim=(0, 2, 3)).argmax())
    result = viz.deep_dream(model, photo, layer, filter, octaves=2, steps=10, step_size=0.02,
                            path=str(tmp_path / "d.png"))
    assert result.image.shape == photo.shape
    assert result.objective_after > 1.5 * result.objective_before
    # the reported objective is the layer's mean(relu(a)^2) on the returned image
    objective = viz.layer_objective(model, layer, filter)
    with torch.no_grad():
        grey = torch.from_numpy(result.image).mean(0, keepdim=True)[None]
        assert float(objective(grey)) == pytest.approx(result.objective_after, rel=1e-5)
    assert np.abs(result.image - photo).mean() > 0.01
    assert _is_png(tmp_path / "d.png")


def test_deep_dream_refuses_bad_arguments(model):
    photo = np.zeros((3, 16, 16), np.float32)
    with pytest.raises(ValueError, match="photo"):
        viz.deep_dream(model, photo[0])
    with pytest.raises(ValueError, match="layer"):
        viz.deep_dream(model, photo, "conv9", steps=1)
    with pytest.raises(ValueError, match="filter"):
        viz.deep_dream(model, photo, "conv2", filter=999, steps=1)


# ---- Deep Style -----------------------------------------------------------------------

def test_gram_matrix_against_a_direct_sum():
    f = torch.randn(1, 4, 3, 5, dtype=torch.float64)
    expected = torch.einsum("nkij,nlij->nkl", f, f) / 15
    torch.testing.assert_close(viz.gram_matrix(f), expected)


def test_style_loss_falls(tmp_path):
    rng = np.random.default_rng(0)
    content = np.clip(rng.random((3, 32, 32)) * 0.2 + np.linspace(0, 0.8, 32)[None, None], 0, 1).astype(np.float32)
    stripes = np.zeros((3, 32, 32), np.float32)
    stripes[0, :, ::4] = 1.0
    stripes[2, ::3, :] = 1.0
    net = viz.RandomPyramidNet(filters=16, kernel=3, scales=2, content_scale=1)
    result = viz.style_transfer(content, stripes, net, steps=25, path=str(tmp_path / "s.png"))
    assert result.style_loss[-1] < 0.3 * result.style_loss[0]
    assert result.image.shape == content.shape
    assert 0.0 <= result.image.min() and result.image.max() <= 1.0
    assert _is_png(tmp_path / "s.png")


def test_vgg_features_load_a_torchvision_style_state_dict(tmp_path):
    torch.manual_seed(0)
    # features.0 conv, 1 relu, 2 conv, 3 relu, 4 pool, 5 conv, 6 relu: torchvision's VGG numbering
    state = {"features.0.weight": torch.randn(4, 3, 3, 3), "features.0.bias": torch.randn(4),
             "features.2.weight": torch.randn(4, 4, 3, 3), "features.2.bias": torch.randn(4),
             "features.5.weight": torch.randn(6, 4, 3, 3), "features.5.bias": torch.randn(6),
             "classifier.0.weight": torch.randn(2, 2)}
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    net = viz.VGGFeatures.from_file(str(path))
    assert net.style_layers == ["relu1_1", "relu2_1"] and net.content_layer == "relu1_2"
    x = torch.rand(1, 3, 8, 8)
    feats = net(x)
    normalized = (x - torch.tensor(viz.style.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        viz.style.IMAGENET_STD).view(1, 3, 1, 1)
    h = torch.relu(torch.nn.functional.conv2d(normalized, state["features.0.weight"], state["features.0.bias"],
                                              padding=1))
    torch.testing.assert_close(feats["relu1_1"], h, rtol=1e-5, atol=1e-5)
    assert feats["relu2_1"].shape == (1, 6, 4, 4)        # the max-pool in the index gap halved the size
    with pytest.raises(ValueError, match="layer names"):
        viz.VGGFeatures(state, content_layer="relu9_9")
    torch.save({"x": torch.zeros(1)}, tmp_path / "not_vgg.pth")
    with pytest.raises(ValueError, match="features"):
        viz.VGGFeatures.from_file(str(tmp_path / "not_vgg.pth"))


# ---- filters and feature maps ------------------------------------------------------

def test_first_layer_filters_and_feature_maps(model, tmp_path):
    weights = viz.first_layer_filters(model, str(tmp_path / "f.png"))
    np.testing.assert_array_equal(weights, model.conv1.weight.detach().numpy()[:, 0])
    image = np.zeros((1, 8, 8), np.float32)
    image[0, 2:6, 4] = 1.0
    maps = viz.feature_maps(model, image, "conv1", str(tmp_path / "m.png"))
    ref = torch.nn.functional.conv2d(torch.from_numpy(image)[None], model.conv1.weight, model.conv1.bias,
                                     padding=1)[0]
    np.testing.assert_allclose(maps, ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    degrees = viz.plot_activation_degree(model, image, "conv2", str(tmp_path / "a.png"))
    np.testing.assert_allclose(degrees, viz.activation_degree(model, image[None], "conv2")[0], rtol=1e-5)
    assert all(_is_png(tmp_path / n) for n in ("f.png", "m.png", "a.png"))
    with pytest.raises(ValueError, match="image"):
        viz.feature_maps(model, image[0])
