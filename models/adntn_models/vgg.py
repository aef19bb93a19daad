"""VGG-16 (configuration "D"), in an ImageNet and a 32x32 form.

Written here from the architecture (no torchvision import, no weights, no
downloads); module and parameter names match ``torchvision.models.vgg16`` (and
``vgg16_bn`` with ``batch_norm=True``), and so does the initialisation.

Layers (``features`` -> ``avgpool`` -> ``flatten`` -> ``classifier``); the trunk is
the same 13 3x3 convolutions (64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3, M;
M = 2x2 max-pool) in both variants:

``"imagenet"`` (default; input ``[N, 3, 224, 224]``, 138,357,544 parameters)::

    features   13 convs, 5 pools: 224 -> 7                  -> 512 x 7 x 7
    avgpool    AdaptiveAvgPool2d((7, 7))                    -> 512 x 7 x 7
    classifier Linear 25088 -> 4096 (fc6), ReLU, Dropout,
               Linear 4096 -> 4096 (fc7), ReLU, Dropout,
               Linear 4096 -> num_classes (fc8)

``"cifar"`` (input ``[N, C, 32, 32]``; keeps the 4096-wide fc6/fc7)::

    features   13 convs, 5 pools: 32 -> 1                   -> 512 x 1 x 1
    avgpool    AdaptiveAvgPool2d((1, 1))  (identity at 32x32) -> 512 x 1 x 1
    classifier Linear 512 -> 4096 (fc6), ReLU, Dropout,
               Linear 4096 -> 4096 (fc7), ReLU, Dropout,
               Linear 4096 -> num_classes (fc8)

Fully connected layers, by module name (both variants), as in :data:`FC_LAYERS`:

* fc6: ``classifier.0``
* fc7: ``classifier.3``
* fc8: ``classifier.6``

Convolutions are named ``conv{block}_{index}`` (``conv1_1`` ... ``conv5_3``) in the
model's ``conv_layers`` (name -> module path; the paths shift with ``batch_norm``).
"""

from __future__ import annotations

from torch import nn

from ._common import PooledClassifier, check_positive, fc_shapes, resolve_variant

__all__ = [
    "FC_LAYERS",
    "VARIANTS",
    "VGG",
    "VGG16_CONFIG",
    "vgg16",
    "vgg16_32",
    "vgg16_fc_shapes",
]

#: Name of each fully connected layer -> its module path inside :class:`VGG`.
FC_LAYERS: dict[str, str] = {"fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}

#: VGG-16 trunk: output channels of each 3x3 conv, ``"M"`` for a 2x2 max-pool.
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip

_HIDDEN = 4096
_LAST_CHANNELS = 512
# variant -> (input side, pooled side of the trunk output, default num_classes)
_GEOMETRY: dict[str, tuple[int, int, int]] = {"imagenet": (224, 7, 1000), "cifar": (32, 1, 10)}
#: Valid ``variant`` values.
VARIANTS: tuple[str, ...] = tuple(_GEOMETRY)


def _trunk(in_channels: int, batch_norm: bool) -> tuple[nn.Sequential, dict[str, str]]:
    """The conv trunk and its ``conv{block}_{index}`` -> ``features.{i}`` names."""
    layers: list[nn.Module] = []
    names: dict[str, str] = {}
    channels = in_channels
    block, index = 1, 0
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            block, index = block + 1, 0
            continue
        assert isinstance(item, int)
        index += 1
        names[f"conv{block}_{index}"] = f"features.{len(layers)}"
        layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU(inplace=True))
        channels = item
    return nn.Sequential(*layers), names


class VGG(PooledClassifier):
    """VGG-16 with torchvision's module names; see the module docstring for the layers.

    Attributes:
        variant: ``"imagenet"`` or ``"cifar"``.
        input_shape: Expected ``(channels, height, width)`` of one input image.
        fc_layers: Copy of :data:`FC_LAYERS` (fc name -> module path).
        conv_layers: ``conv1_1`` ... ``conv5_3`` -> module path.
    """

    FC_LAYERS: dict[str, str] = FC_LAYERS

    def __init__(
        self,
        num_classes: int | None = None,
        in_channels: int = 3,
        *,
        variant: str = "imagenet",
        dropout: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        """Build and initialise the network (torchvision's VGG initialisation).

        Args:
            num_classes: Width of fc8; ``None`` means 1000 (imagenet) or 10 (cifar).
            in_channels: Channels of the input image.
            variant: ``"imagenet"`` (224x224 input) or ``"cifar"`` (32x32 input).
            dropout: Dropout probability after fc6 and fc7.
            batch_norm: Put a BatchNorm2d after every conv (torchvision's ``vgg16_bn``).

        Raises:
            ValueError: On an unknown variant or a non-positive size.
        """
        super().__init__()
        side, pooled, num_classes = resolve_variant("VGG-16", variant, _GEOMETRY, num_classes)
        check_positive("in_channels", in_channels)
        self.variant = variant
        self.input_shape: tuple[int, int, int] = (in_channels, side, side)
        self.fc_layers: dict[str, str] = dict(FC_LAYERS)
        self.features, conv_layers = _trunk(in_channels, batch_norm)
        self.conv_layers: dict[str, str] = conv_layers
        self.avgpool = nn.AdaptiveAvgPool2d((pooled, pooled))
        self.classifier = nn.Sequential(
            nn.Linear(_LAST_CHANNELS * pooled * pooled, _HIDDEN),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(_HIDDEN, _HIDDEN),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(_HIDDEN, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)


def vgg16(
    variant: str = "imagenet",
    *,
    num_classes: int | None = None,
    in_channels: int = 3,
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> VGG:
    """VGG-16; with no arguments the canonical ImageNet model (224x224x3 -> 1000).

    Args:
        variant: ``"imagenet"`` or ``"cifar"`` (32x32 input, fc6 512 -> 4096).
        num_classes: Width of fc8; ``None`` means 1000 (imagenet) or 10 (cifar).
        in_channels: Channels of the input image.
        dropout: Dropout probability after fc6 and fc7.
        batch_norm: Put a BatchNorm2d after every conv (changes ``features`` indices only).

    Returns:
        A freshly initialised :class:`VGG`.

    Raises:
        ValueError: On an unknown variant (the message lists the valid ones).
    """
    return VGG(num_classes, in_channels, variant=variant, dropout=dropout, batch_norm=batch_norm)


def vgg16_32(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> VGG:
    """The 32x32 VGG-16, ``vgg16("cifar", ...)``.

    Args:
        num_classes: Width of fc8.
        in_channels: Channels of the input image.
        dropout: Dropout probability after fc6 and fc7.
        batch_norm: Put a BatchNorm2d after every conv.

    Returns:
        A freshly initialised :class:`VGG` with ``variant == "cifar"``.
    """
    return VGG(num_classes, in_channels, variant="cifar", dropout=dropout, batch_norm=batch_norm)


def vgg16_fc_shapes(
    variant: str = "imagenet", num_classes: int | None = None
) -> dict[str, tuple[int, int]]:
    """Weight shapes ``(out_features, in_features)`` of fc6/fc7/fc8, without building the model.

    Args:
        variant: ``"imagenet"`` or ``"cifar"``.
        num_classes: Width of fc8; ``None`` means the variant's default.

    Returns:
        ``{"fc6": (4096, 25088), "fc7": (4096, 4096), "fc8": (1000, 4096)}`` for the default.
    """
    _, pooled, classes = resolve_variant("VGG-16", variant, _GEOMETRY, num_classes)
    return fc_shapes(_LAST_CHANNELS, pooled, _HIDDEN, classes)
