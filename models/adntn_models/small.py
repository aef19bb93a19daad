"""Small demo networks for 28x28x1 Fashion-MNIST: a multilayer perceptron and a small CNN.

Both train in seconds to minutes on a CPU, and both keep their fully connected
layers at fixed module names, listed in the instance attribute ``fc_layers``
(fc name -> module path), whatever the dropout (a ``Dropout(p=0)`` is kept in place).

:class:`MLP` with the defaults (784 -> 256 -> 128 -> 10, 235,146 parameters)::

    flatten    [N, 1, 28, 28] -> [N, 784]
    layers     Linear 784 -> 256 (fc1, ``layers.0``), ReLU, Dropout,
               Linear 256 -> 128 (fc2, ``layers.3``), ReLU, Dropout,
               Linear 128 -> 10  (fc3, ``layers.6``)

:class:`SmallCNN` with the defaults (421,642 parameters)::

    features   conv 3x3 p1 32, ReLU, pool 2 (14x14), conv 3x3 p1 64, ReLU, pool 2  -> 64 x 7 x 7
    classifier Linear 3136 -> 128 (fc1, ``classifier.0``), ReLU, Dropout,
               Linear 128 -> 10 (fc2, ``classifier.3``)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import check_positive

__all__ = ["MLP", "SmallCNN", "mlp", "small_cnn"]


class MLP(nn.Module):
    """Fully connected classifier on flattened images.

    Attributes:
        input_shape: Expected ``(channels, height, width)`` when built by :func:`mlp`, or
            ``(in_features,)`` when built directly.
        fc_layers: ``{"fc1": "layers.0", "fc2": "layers.3", ...}``, one per Linear.
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden_sizes: Sequence[int] = (256, 128),
        num_classes: int = 10,
        *,
        dropout: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            in_features: Width of the flattened input (784 for 28x28x1).
            hidden_sizes: Width of each hidden layer, in order; may be empty.
            num_classes: Width of the output layer.
            dropout: Dropout probability after each hidden ReLU.

        Raises:
            ValueError: On a non-positive size.
        """
        super().__init__()
        widths = [check_positive("in_features", in_features)]
        widths += [check_positive("hidden size", h) for h in hidden_sizes]
        widths.append(check_positive("num_classes", num_classes))
        layers: list[nn.Module] = []
        self.fc_layers: dict[str, str] = {}
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            self.fc_layers[f"fc{i + 1}"] = f"layers.{len(layers)}"
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(widths) - 2:
                layers += [nn.ReLU(inplace=True), nn.Dropout(p=dropout)]
        self.input_shape: tuple[int, ...] = (in_features,)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for inputs ``[N, ...]`` (flattened from dim 1)."""
        return self.layers(torch.flatten(x, 1))


class SmallCNN(nn.Module):
    """Two conv blocks and a two-layer classifier, for 28x28 grayscale images.

    Attributes:
        input_shape: Expected ``(channels, height, width)`` of one input image.
        fc_layers: ``{"fc1": "classifier.0", "fc2": "classifier.3"}``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        *,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.0,
        image_size: int = 28,
    ) -> None:
        """Build the network.

        Args:
            in_channels: Channels of the input image.
            num_classes: Width of the output layer.
            channels: Output channels of the two conv layers.
            hidden: Width of fc1.
            dropout: Dropout probability after fc1.
            image_size: Side of the (square) input image; must be at least 4.

        Raises:
            ValueError: On a non-positive size or an image smaller than 4x4.
        """
        super().__init__()
        check_positive("in_channels", in_channels)
        c1, c2 = (check_positive("channels", c) for c in channels)
        if check_positive("image_size", image_size) < 4:
            raise ValueError(f"image_size must be at least 4, got {image_size}")
        side = image_size // 2 // 2
        self.input_shape: tuple[int, int, int] = (in_channels, image_size, image_size)
        self.fc_layers: dict[str, str] = {"fc1": "classifier.0", "fc2": "classifier.3"}
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * side * side, check_positive("hidden", hidden)),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, check_positive("num_classes", num_classes)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, C, H, W]``."""
        return self.classifier(torch.flatten(self.features(x), 1))


def mlp(
    hidden_sizes: Sequence[int] = (256, 128),
    *,
    num_classes: int = 10,
    image_size: int = 28,
    in_channels: int = 1,
    dropout: float = 0.0,
) -> MLP:
    """An :class:`MLP` for square images, flattened (defaults: 784 -> 256 -> 128 -> 10).

    Args:
        hidden_sizes: Width of each hidden layer, in order.
        num_classes: Width of the output layer.
        image_size: Side of the (square) input image.
        in_channels: Channels of the input image.
        dropout: Dropout probability after each hidden ReLU.

    Returns:
        A freshly initialised :class:`MLP` whose ``input_shape`` is ``(C, H, W)``.
    """
    check_positive("image_size", image_size)
    check_positive("in_channels", in_channels)
    model = MLP(in_channels * image_size * image_size, hidden_sizes, num_classes, dropout=dropout)
    model.input_shape = (in_channels, image_size, image_size)
    return model


def small_cnn(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    channels: tuple[int, int] = (32, 64),
    hidden: int = 128,
    dropout: float = 0.0,
    image_size: int = 28,
) -> SmallCNN:
    """A :class:`SmallCNN` (defaults: 28x28x1 -> conv 32 -> conv 64 -> 3136 -> 128 -> 10).

    Args:
        num_classes: Width of the output layer.
        in_channels: Channels of the input image.
        channels: Output channels of the two conv layers.
        hidden: Width of fc1.
        dropout: Dropout probability after fc1.
        image_size: Side of the (square) input image.

    Returns:
        A freshly initialised :class:`SmallCNN`.
    """
    return SmallCNN(
        in_channels,
        num_classes,
        channels=channels,
        hidden=hidden,
        dropout=dropout,
        image_size=image_size,
    )
