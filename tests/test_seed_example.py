"""The seed chapter's worked example (tests/data/seed_example.json) through convx.

6x6 binary image, two 3x3 filters, no padding: conv at stride 1 (4x4 maps) and
stride 2 (2x2 maps), 2x2 max pooling of the stride-1 maps (values and torch-style
flat indices), and the "fully connected view": output (0,0) of filter 1 depends only
on image pixels 1,2,3,7,8,9,13,14,15 (1-based, row-major).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import convx.functional as CF

DATA = json.loads((Path(__file__).parent / "data" / "seed_example.json").read_text())
ALGOS = [None, "direct", "im2col"]
DTYPES = [torch.float32, torch.float64]


def _image(dtype):
    return torch.tensor(DATA["image"], dtype=dtype).reshape(1, 1, 6, 6)


def _filters(dtype):
    return torch.tensor(DATA["filters"], dtype=dtype).reshape(2, 1, 3, 3)


def test_fixture_shapes():
    assert np.array(DATA["image"]).shape == (6, 6)
    assert np.array(DATA["filters"]).shape == (2, 3, 3)
    assert np.array(DATA["conv_stride1"]).shape == (2, 4, 4)
    assert np.array(DATA["conv_stride2"]).shape == (2, 2, 2)
    assert np.array(DATA["maxpool2x2_of_conv_stride1"]).shape == (2, 2, 2)
    assert np.array(DATA["maxpool2x2_indices"]).shape == (2, 2, 2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("algo", ALGOS, ids=str)
@pytest.mark.parametrize("stride,key", [(1, "conv_stride1"), (2, "conv_stride2")])
def test_conv_maps_exact(stride, key, algo, dtype):
    out = CF.conv2d(_image(dtype), _filters(dtype), stride=stride, algo=algo)
    expected = torch.tensor(DATA[key], dtype=dtype).unsqueeze(0)
    assert out.shape == expected.shape
    assert out.dtype == dtype
    assert torch.equal(out, expected), out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("algo", ALGOS, ids=str)
def test_conv_unbatched_exact(algo, dtype):
    out = CF.conv2d(_image(dtype)[0], _filters(dtype), algo=algo)
    assert out.shape == (2, 4, 4)
    assert torch.equal(out, torch.tensor(DATA["conv_stride1"], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_maxpool_of_stride1_maps(dtype):
    maps = torch.tensor(DATA["conv_stride1"], dtype=dtype).unsqueeze(0)
    vals, idx = CF.max_pool2d(maps, 2, return_indices=True)
    assert torch.equal(vals, torch.tensor(DATA["maxpool2x2_of_conv_stride1"], dtype=dtype).unsqueeze(0))
    assert idx.dtype == torch.int64
    assert torch.equal(idx, torch.tensor(DATA["maxpool2x2_indices"], dtype=torch.int64).unsqueeze(0))
    # without return_indices
    assert torch.equal(CF.max_pool2d(maps, 2), vals)


@pytest.mark.parametrize("algo", ALGOS, ids=str)
def test_conv_then_pool_pipeline(algo):
    maps = CF.conv2d(_image(torch.float32), _filters(torch.float32), algo=algo)
    vals, idx = CF.max_pool2d(maps, 2, stride=2, return_indices=True)
    assert vals.tolist() == [DATA["maxpool2x2_of_conv_stride1"]]
    assert idx.tolist() == [DATA["maxpool2x2_indices"]]


@pytest.mark.parametrize("np_dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("algo", ALGOS, ids=str)
def test_numpy_path(algo, np_dtype):
    img = np.array(DATA["image"], dtype=np_dtype).reshape(1, 1, 6, 6)
    flt = np.array(DATA["filters"], dtype=np_dtype).reshape(2, 1, 3, 3)
    for stride, key in [(1, "conv_stride1"), (2, "conv_stride2")]:
        out = CF.conv2d(img, flt, stride=stride, algo=algo)
        assert isinstance(out, np.ndarray)
        assert out.dtype == np_dtype
        np.testing.assert_array_equal(out, np.array([DATA[key]], dtype=np_dtype))
    maps = CF.conv2d(img, flt, algo=algo)
    vals, idx = CF.max_pool2d(maps, 2, return_indices=True)
    assert isinstance(vals, np.ndarray) and isinstance(idx, np.ndarray)
    assert vals.dtype == np_dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(vals, np.array([DATA["maxpool2x2_of_conv_stride1"]], dtype=np_dtype))
    np.testing.assert_array_equal(idx, np.array([DATA["maxpool2x2_indices"]], dtype=np.int64))
    # input untouched
    np.testing.assert_array_equal(img[0, 0], np.array(DATA["image"], dtype=np_dtype))


def _pixels_of(desc):
    # parse "... pixels 1,2,3,7,8,9,13,14,15 (1-based ..."
    part = desc.split("pixels", 1)[1].split("(", 1)[0]
    return sorted(int(t) for t in part.replace(" ", "").split(","))


@pytest.mark.parametrize("algo", ALGOS, ids=str)
def test_fully_connected_view(algo):
    pixels = _pixels_of(DATA["fully_connected_view"])
    assert pixels == [1, 2, 3, 7, 8, 9, 13, 14, 15]
    x = _image(torch.float64).requires_grad_()
    w = _filters(torch.float64)
    out = CF.conv2d(x, w, algo=algo)
    grad, = torch.autograd.grad(out[0, 0, 0, 0], x)
    flat = grad.reshape(36)
    nonzero = sorted(int(i) + 1 for i in torch.nonzero(flat).flatten())
    assert nonzero == pixels
    # the connection weights are exactly filter 1 (row-major over its 3x3)
    assert torch.equal(flat[torch.tensor(pixels) - 1], w[0, 0].reshape(9))


@pytest.mark.parametrize("algo", ALGOS, ids=str)
def test_fully_connected_view_all_outputs_share_weights(algo):
    """Every one of the 16 outputs of each filter sees exactly its 3x3 patch, with the
    same 9 weights (16 outputs x 9 weights share 9 parameters)."""
    x = _image(torch.float64).requires_grad_()
    w = _filters(torch.float64).requires_grad_()
    out = CF.conv2d(x, w, algo=algo)
    for f in range(2):
        for i in range(4):
            for j in range(4):
                gx, gw = torch.autograd.grad(out[0, f, i, j], (x, w), retain_graph=True)
                expected = torch.zeros(6, 6, dtype=torch.float64)
                expected[i:i + 3, j:j + 3] = w[f, 0].detach()
                assert torch.equal(gx[0, 0], expected), (f, i, j)
                # d out / d w is the image patch, only for filter f
                expected_w = torch.zeros(2, 1, 3, 3, dtype=torch.float64)
                expected_w[f, 0] = x.detach()[0, 0, i:i + 3, j:j + 3]
                assert torch.equal(gw, expected_w), (f, i, j)
