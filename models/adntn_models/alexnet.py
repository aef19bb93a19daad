"""AlexNet, single-stream (torchvision's layout), in an ImageNet and a 32x32 form.

Written here from the architecture (no torchvision import, no weights, no
downloads); module and parameter names match ``torchvision.models.alexnet`` so a
torchvision ``state_dict`` loads into the ``"imagenet"`` variant unchanged.

Layers (``features`` -> ``avgpool`` -> ``flatten`` -> ``classifier``):

``"imagenet"`` (default; input ``[N, 3, 224, 224]``, 61,100,840 parameters)::

    features   conv 11x11/4 p2 64 - pool 3/2 - conv 5x5 192 - pool 3/2
               - conv 3x3 384 - conv 3x3 256 - conv 3x3 256 - pool 3/2   -> 256 x 6 x 6
    avgpool    AdaptiveAvgPool2d((6, 6))                                 -> 256 x 6 x 6
    classifier Dropout, Linear 9216 -> 4096 (fc6), ReLU,
               Dropout, Linear 4096 -> 4096 (fc7), ReLU,
               Linear 4096 -> num_classes (fc8)

``"cifar"`` (input ``[N, C, 32, 32]``; keeps the 4096-wide fc7)::

    features   conv 5x5/1 p2 64 (32x32) - pool 3/2 (15x15) - conv 5x5 192 - pool 3/2 (7x7)
               - conv 3x3 384 - conv 3x3 256 - conv 3x3 256 - pool 3/2   -> 256 x 3 x 3
    avgpool    AdaptiveAvgPool2d((3, 3))  (identity at 32x32)            -> 256 x 3 x 3
    classifier Dropout, Linear 2304 -> 4096 (fc6), ReLU,
               Dropout, Linear 4096 -> 4096 (fc7), ReLU,
               Linear 4096 -> num_classes (fc8)

Fully connected layers, by module name (both variants), as in :data:`FC_LAYERS`:

* fc6: ``classifier.1``
* fc7: ``classifier.4``
* fc8: ``classifier.6``

Convolutions, by module name, as in :data:`CONV_LAYERS`: ``conv1`` ... ``conv5`` are
``features.0``, ``features.3``, ``features.6``, ``features.8``, ``features.10``.
"""

from __future__ import annotations

from torch import nn

from ._common import PooledClassifier, check_positive, fc_shapes, resolve_variant

__all__ = [
    "CONV_LAYERS",
    "FC_LAYERS",
    "VARIANTS",
    "AlexNet",
    "alexnet",
    "alexnet32",
    "alexnet_fc_shapes",
]

#: Name of each fully connected layer -> its module path inside :class:`AlexNet`.
FC_LAYERS: dict[str, str] = {"fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"}

#: Name of each convolution -> its module path inside :class:`AlexNet` (both variants).
CONV_LAYERS: dict[str, str] = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3": "features.6",
    "conv4": "features.8",
    "conv5": "features.10",
}

_HIDDEN = 4096
_LAST_CHANNELS = 256
# variant -> (input side, pooled side of the trunk output, default num_classes)
_GEOMETRY: dict[str, tuple[int, int, int]] = {"imagenet": (224, 6, 1000), "cifar": (32, 3, 10)}
#: Valid ``variant`` values.
VARIANTS: tuple[str, ...] = tuple(_GEOMETRY)


def _trunk(variant: str, in_channels: int) -> nn.Sequential:
    if variant == "imagenet":
        first = nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2)
    else:
        first = nn.Conv2d(in_channels, 64, kernel_size=5, stride=1, padding=2)
    return nn.Sequential(
        first,
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, _LAST_CHANNELS, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


class AlexNet(PooledClassifier):
    """AlexNet with torchvision's module names; see the module docstring for the layers.

    Attributes:
        variant: ``"imagenet"`` or ``"cifar"``.
        input_shape: Expected ``(channels, height, width)`` of one input image.
        fc_layers: Copy of :data:`FC_LAYERS` (fc name -> module path).
        conv_layers: Copy of :data:`CONV_LAYERS` (conv name -> module path).
    """

    FC_LAYERS: dict[str, str] = FC_LAYERS

    def __init__(
        self,
        num_classes: int | None = None,
        in_channels: int = 3,
        *,
        variant: str = "imagenet",
        dropout: float = 0.5,
    ) -> None:
        """Build the network.

        Args:
            num_classes: Width of fc8; ``None`` means 1000 (imagenet) or 10 (cifar).
            in_channels: Channels of the input image.
            variant: ``"imagenet"`` (224x224 input) or ``"cifar"`` (32x32 input).
            dropout: Dropout probability before fc6 and fc7.

        Raises:
            ValueError: On an unknown variant or a non-positive size.
        """
        super().__init__()
        side, pooled, num_classes = resolve_variant("AlexNet", variant, _GEOMETRY, num_classes)
        check_positive("in_channels", in_channels)
        self.variant = variant
        self.input_shape: tuple[int, int, int] = (in_channels, side, side)
        self.fc_layers: dict[str, str] = dict(FC_LAYERS)
        self.conv_layers: dict[str, str] = dict(CONV_LAYERS)
        self.features = _trunk(variant, in_channels)
        self.avgpool = nn.AdaptiveAvgPool2d((pooled, pooled))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(_LAST_CHANNELS * pooled * pooled, _HIDDEN),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(_HIDDEN, _HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(_HIDDEN, num_classes),
        )


def alexnet(
    variant: str = "imagenet",
    *,
    num_classes: int | None = None,
    in_channels: int = 3,
    dropout: float = 0.5,
) -> AlexNet:
    """AlexNet; with no arguments the canonical ImageNet model (224x224x3 -> 1000).

    Args:
        variant: ``"imagenet"`` or ``"cifar"`` (32x32 input, fc6 2304 -> 4096).
        num_classes: Width of fc8; ``None`` means 1000 (imagenet) or 10 (cifar).
        in_channels: Channels of the input image.
        dropout: Dropout probability before fc6 and fc7.

    Returns:
        A freshly initialised :class:`AlexNet`.

    Raises:
        ValueError: On an unknown variant (the message lists the valid ones).
    """
    return AlexNet(num_classes, in_channels, variant=variant, dropout=dropout)


def alexnet32(num_classes: int = 10, in_channels: int = 3, *, dropout: float = 0.5) -> AlexNet:
    """The 32x32 AlexNet, ``alexnet("cifar", ...)``.

    Args:
        num_classes: Width of fc8.
        in_channels: Channels of the input image.
        dropout: Dropout probability before fc6 and fc7.

    Returns:
        A freshly initialised :class:`AlexNet` with ``variant == "cifar"``.
    """
    return AlexNet(num_classes, in_channels, variant="cifar", dropout=dropout)


def alexnet_fc_shapes(
    variant: str = "imagenet", num_classes: int | None = None
) -> dict[str, tuple[int, int]]:
    """Weight shapes ``(out_features, in_features)`` of fc6/fc7/fc8, without building the model.

    Args:
        variant: ``"imagenet"`` or ``"cifar"``.
        num_classes: Width of fc8; ``None`` means the variant's default.

    Returns:
        ``{"fc6": (4096, 9216), "fc7": (4096, 4096), "fc8": (1000, 4096)}`` for the default.
    """
    _, pooled, classes = resolve_variant("AlexNet", variant, _GEOMETRY, num_classes)
    return fc_shapes(_LAST_CHANNELS, pooled, _HIDDEN, classes)
