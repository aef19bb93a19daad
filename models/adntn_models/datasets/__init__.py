"""Data for the model zoo: the IDX format and Fashion-MNIST (local files or the shipped subset)."""

from .fashion_mnist import (
    DEFAULT_ROOT,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    SPLITS,
    SUBSET_SIZES,
    idx_file_names,
    load_fashion_mnist,
    load_shipped_subset,
)
from .idx import parse_idx, read_idx, write_idx
from .tensors import as_tensor_dataset, images_to_tensor

__all__ = [
    "DEFAULT_ROOT",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "SPLITS",
    "SUBSET_SIZES",
    "as_tensor_dataset",
    "idx_file_names",
    "images_to_tensor",
    "load_fashion_mnist",
    "load_shipped_subset",
    "parse_idx",
    "read_idx",
    "write_idx",
]
