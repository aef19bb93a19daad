"""Checks and layout shared by the zoo's models (argument checks, the VGG/AlexNet-style head)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["PooledClassifier", "check_positive", "fc_shapes", "resolve_variant"]


def check_positive(name: str, value: int) -> int:
    """``value`` if it is a positive ``int`` (not a bool); else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def resolve_variant(
    family: str,
    variant: str,
    geometry: Mapping[str, tuple[int, int, int]],
    num_classes: int | None,
) -> tuple[int, int, int]:
    """``(input side, pooled side, num_classes)`` of a ``variant`` of the ``family``.

    ``geometry`` maps each valid variant to ``(input side, pooled side, default num_classes)``;
    ``num_classes=None`` takes the variant's default. Raises ``ValueError`` naming the bad
    variant and the valid ones, or a non-positive ``num_classes``.
    """
    if variant not in geometry:
        raise ValueError(
            f"unknown {family} variant {variant!r}; valid variants: {', '.join(geometry)}"
        )
    side, pooled, default_classes = geometry[variant]
    classes = check_positive("num_classes", default_classes if num_classes is None else num_classes)
    return side, pooled, classes


def fc_shapes(
    last_channels: int, pooled: int, hidden: int, num_classes: int
) -> dict[str, tuple[int, int]]:
    """Weight shapes ``(out, in)`` of fc6/fc7/fc8 of a head on a ``pooled x pooled`` trunk."""
    return {
        "fc6": (hidden, last_channels * pooled * pooled),
        "fc7": (hidden, hidden),
        "fc8": (num_classes, hidden),
    }


class PooledClassifier(nn.Module):
    """torchvision's ``features`` -> ``avgpool`` -> ``flatten`` -> ``classifier`` layout.

    Subclasses (AlexNet, VGG) build the three modules; the forward pass is this one.
    """

    features: nn.Module
    avgpool: nn.Module
    classifier: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, C, H, W]``."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)
