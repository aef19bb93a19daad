"""Fashion-MNIST (Zalando, MIT licence) from local IDX files, or the subset shipped in the package.

Nothing is ever downloaded. The full data set is read from a directory of the
four standard IDX files, by default the one the Debian/Ubuntu package
``dataset-fashion-mnist`` installs (``/usr/share/datasets/fashion-mnist``)::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz    60,000 images
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz     10,000 images

(unzipped names, without ``.gz``, are accepted too). The package also ships a
real, class-balanced subset of those files (3,000 train and 1,000 test images,
``adntn_models/data/fashion_mnist_subset/``, made by
:mod:`adntn_models.datasets.make_subset`), loaded with ``subset=True`` or
:func:`load_shipped_subset` so that demos and tests run anywhere.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from .idx import parse_idx, read_idx

__all__ = [
    "DEFAULT_ROOT",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "SPLITS",
    "SUBSET_RESOURCE",
    "SUBSET_SIZES",
    "idx_file_names",
    "load_fashion_mnist",
    "load_shipped_subset",
]

#: Where ``apt-get install dataset-fashion-mnist`` puts the IDX files.
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")

#: Valid ``split`` values.
SPLITS: tuple[str, ...] = ("train", "test")

#: Label -> class name.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Mean and standard deviation of the training pixels, scaled to [0, 1].
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

#: Package-relative folder of the shipped subset (same file names as the full set, gzipped).
SUBSET_RESOURCE = "data/fashion_mnist_subset"

#: Number of images per split in the shipped subset.
SUBSET_SIZES: dict[str, int] = {"train": 3000, "test": 1000}

_PREFIX = {"train": "train", "test": "t10k"}
_INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (files go to "
    f"{DEFAULT_ROOT}), pass root= a directory holding the IDX files, "
    "or use the shipped subset with load_fashion_mnist(subset=True)"
)


def idx_file_names(split: str, kind: str) -> tuple[str, ...]:
    """Accepted file names for one split's images or labels, preferred first.

    Args:
        split: ``"train"`` or ``"test"``.
        kind: ``"images"`` or ``"labels"``.

    Returns:
        E.g. ``("t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte",
        "t10k-labels.idx1-ubyte.gz", "t10k-labels.idx1-ubyte")``.

    Raises:
        ValueError: On an unknown split or kind.
    """
    _check_split(split)
    if kind not in ("images", "labels"):
        raise ValueError(f"unknown kind {kind!r}; valid kinds: images, labels")
    stem = f"{_PREFIX[split]}-{kind}"
    ndim = 3 if kind == "images" else 1
    names = []
    for sep in ("-", "."):
        base = f"{stem}{sep}idx{ndim}-ubyte"
        names += [f"{base}.gz", base]
    return tuple(names)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative integer, got {limit!r}")


def _find(root: Path, split: str, kind: str) -> Path:
    names = idx_file_names(split, kind)
    for name in names:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST {split} {kind} not found in {root} (looked for {', '.join(names)}); "
        + _INSTALL_HINT
    )


def _validate(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{where}: images must be uint8 [N, 28, 28], got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{where}: labels must be uint8 [N], got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{where}: label {int(labels.max())} out of range 0..9")
    return images, labels.astype(np.int64)


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    limit: int | None = None,
    *,
    subset: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Load Fashion-MNIST images and labels from local IDX files; never downloads.

    Args:
        root: Directory holding the IDX files; ``None`` means :data:`DEFAULT_ROOT`
            (or the shipped subset when ``subset=True``).
        split: ``"train"`` or ``"test"``.
        limit: Keep only the first ``limit`` examples (file order; the shipped subset
            is stored shuffled, so any prefix of it is mixed across classes).
        subset: Load the class-balanced subset shipped in the package instead
            (3,000 train / 1,000 test images); ``root`` must then be ``None``.

    Returns:
        ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]`` with values 0..9.

    Raises:
        FileNotFoundError: If the directory or a file is missing; the message names the
            path and how to get the data.
        ValueError: On a bad split or limit, both ``root`` and ``subset``, or a corrupt file.
    """
    _check_split(split)
    _check_limit(limit)
    if subset:
        if root is not None:
            raise ValueError("pass either root= or subset=True, not both")
        images, labels = _load_subset(split)
    else:
        root = DEFAULT_ROOT if root is None else Path(root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"Fashion-MNIST directory {root} not found (or not a directory); " + _INSTALL_HINT
            )
        image_path, label_path = _find(root, split, "images"), _find(root, split, "labels")
        images, labels = _validate(
            read_idx(image_path), read_idx(label_path), f"Fashion-MNIST {split} in {root}"
        )
    if limit is not None:
        images, labels = images[:limit].copy(), labels[:limit].copy()
    return images, labels


def _load_subset(split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = resources.files("adntn_models").joinpath(SUBSET_RESOURCE)
    arrays = []
    for kind in ("images", "labels"):
        name = idx_file_names(split, kind)[0]
        resource = folder.joinpath(name)
        if not resource.is_file():
            raise FileNotFoundError(
                f"shipped Fashion-MNIST subset file {resource} is missing; reinstall adntn "
                "or regenerate it with `python -m adntn_models.datasets.make_subset`"
            )
        arrays.append(parse_idx(resource.read_bytes(), str(resource)))
    return _validate(arrays[0], arrays[1], f"shipped Fashion-MNIST subset ({split})")


def load_shipped_subset(
    split: str = "train", limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load the Fashion-MNIST subset shipped in the package: ``load_fashion_mnist(subset=True)``.

    Args:
        split: ``"train"`` (3,000 images, 300 per class) or ``"test"`` (1,000, 100 per class).
        limit: Keep only the first ``limit`` examples (the subset is stored shuffled).

    Returns:
        ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]``.
    """
    return load_fashion_mnist(split=split, limit=limit, subset=True)
