"""Turn image/label arrays into a torch ``TensorDataset`` shaped for a given model input.

28x28 grayscale Fashion-MNIST feeds the demo nets as is (``[N, 1, 28, 28]``); the
32x32 RGB variants of AlexNet and VGG-16 get it zero-padded by 2 pixels on each side
and repeated to 3 channels (``image_size=32, channels=3`` -> ``[N, 3, 32, 32]``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = ["as_tensor_dataset", "images_to_tensor"]


def images_to_tensor(
    images: np.ndarray, *, image_size: int = 28, channels: int = 1, normalize: bool = True
) -> torch.Tensor:
    """Images ``[N, H, W]`` -> float32 ``[N, channels, image_size, image_size]``.

    Pixels are scaled to [0, 1] (uint8 input is divided by 255; float input is taken
    as already scaled), zero-padded equally on every side up to ``image_size`` (black
    background, padded before normalising), and, if ``normalize``, standardised with
    the Fashion-MNIST mean 0.2860 and std 0.3530. For ``channels=3`` the gray channel
    is repeated as a stride-0 view (no copy; batches taken from it are ordinary tensors).

    Args:
        images: Array ``[N, H, W]`` with ``H == W``, uint8 or floating.
        image_size: Side of the output; ``image_size - H`` must be even and >= 0.
        channels: 1 (gray) or 3 (gray repeated to RGB).
        normalize: Standardise with the Fashion-MNIST statistics.

    Returns:
        The image tensor.

    Raises:
        ValueError: On a bad shape, dtype, size or channel count.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be [N, H, W] with H == W, got shape {images.shape}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    side = images.shape[1]
    pad, odd = divmod(image_size - side, 2)
    if pad < 0 or odd:
        raise ValueError(
            f"cannot pad {side}x{side} images to {image_size}x{image_size}: "
            "image_size - side must be even and >= 0"
        )
    if images.dtype == np.uint8:
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
    elif np.issubdtype(images.dtype, np.floating):
        x = torch.from_numpy(images.astype(np.float32, copy=True))
    else:
        raise ValueError(f"images must be uint8 or floating, got {images.dtype}")
    x = x.unsqueeze(1)
    if pad:
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=0.0)
    if normalize:
        x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    if channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x


def as_tensor_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    image_size: int = 28,
    channels: int = 1,
    normalize: bool = True,
) -> TensorDataset:
    """A ``TensorDataset`` of (float32 ``[N, C, H, W]`` images, int64 ``[N]`` labels).

    Args:
        images: Array ``[N, H, W]``, uint8 or floating (see :func:`images_to_tensor`).
        labels: Integer array ``[N]``.
        image_size: Side of the model input (28, or 32 for the 32x32 AlexNet/VGG-16).
        channels: 1, or 3 for RGB models.
        normalize: Standardise with the Fashion-MNIST mean 0.2860 and std 0.3530.

    Returns:
        The dataset; ``dataset.tensors`` holds the two tensors.

    Raises:
        ValueError: If the shapes or dtypes do not fit.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array [N], got {labels.dtype} {labels.shape}")
    x = images_to_tensor(images, image_size=image_size, channels=channels, normalize=normalize)
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} images but {len(labels)} labels")
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))
