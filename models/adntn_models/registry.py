"""Build a model of the zoo by name, and the FC shapes of the canonical models.

========== ================================ =====================================
name       factory                          input
========== ================================ =====================================
alexnet    :func:`~.alexnet.alexnet`        ``[N, 3, 224, 224]`` (``variant=`` ok)
alexnet32  :func:`~.alexnet.alexnet32`      ``[N, 3, 32, 32]``
vgg16      :func:`~.vgg.vgg16`              ``[N, 3, 224, 224]`` (``variant=`` ok)
vgg16_32   :func:`~.vgg.vgg16_32`           ``[N, 3, 32, 32]``
mlp        :func:`~.small.mlp`              ``[N, 1, 28, 28]``
small_cnn  :func:`~.small.small_cnn`        ``[N, 1, 28, 28]``
========== ================================ =====================================

:func:`input_shape` gives each model's input geometry; :data:`FASHION_MNIST_MODELS` the
models that train on Fashion-MNIST.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .alexnet import alexnet, alexnet32, alexnet_fc_shapes
from .small import mlp, small_cnn
from .vgg import vgg16, vgg16_32, vgg16_fc_shapes

__all__ = [
    "FASHION_MNIST_MODELS",
    "MODEL_NAMES",
    "canonical_fc_shapes",
    "get_model",
    "input_shape",
]

_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "alexnet": alexnet,
    "alexnet32": alexnet32,
    "vgg16": vgg16,
    "vgg16_32": vgg16_32,
    "mlp": mlp,
    "small_cnn": small_cnn,
}

#: Names accepted by :func:`get_model`.
MODEL_NAMES: tuple[str, ...] = tuple(_FACTORIES)

#: Input geometry ``(channels, height, width)`` of one image for each model, as built with
#: its factory's defaults.
_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "alexnet": (3, 224, 224),
    "alexnet32": (3, 32, 32),
    "vgg16": (3, 224, 224),
    "vgg16_32": (3, 32, 32),
    "mlp": (1, 28, 28),
    "small_cnn": (1, 28, 28),
}

#: Models that train on Fashion-MNIST (grey 28x28 images, resized and channel-repeated to
#: their :func:`input_shape`).
FASHION_MNIST_MODELS: tuple[str, ...] = ("mlp", "small_cnn", "alexnet32", "vgg16_32")


def input_shape(name: str) -> tuple[int, int, int]:
    """``(channels, height, width)`` of one input image of zoo model ``name``.

    Raises:
        ValueError: If ``name`` is unknown; the message lists the valid names.
    """
    try:
        return _INPUT_SHAPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}") from None


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a freshly initialised model of the zoo.

    Args:
        name: One of :data:`MODEL_NAMES`.
        **kwargs: Passed to the model's factory (e.g. ``num_classes=10``).

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        ValueError: If ``name`` is unknown; the message lists the valid names.
    """
    try:
        factory = _FACTORIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}") from None
    return factory(**kwargs)


def canonical_fc_shapes() -> dict[str, dict[str, tuple[int, int]]]:
    """Weight shapes ``(out_features, in_features)`` of the canonical ImageNet models' FC layers.

    Computed from the architecture constants; no model is built.

    Returns:
        ``{"alexnet": {"fc6": (4096, 9216), "fc7": (4096, 4096), "fc8": (1000, 4096)},
        "vgg16": {"fc6": (4096, 25088), "fc7": (4096, 4096), "fc8": (1000, 4096)}}``.
    """
    return {"alexnet": alexnet_fc_shapes(), "vgg16": vgg16_fc_shapes()}
