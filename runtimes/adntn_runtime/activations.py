"""The activations an ADNTN level may use, and their numpy reference definitions."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ACTIVATIONS", "apply_activation", "check_activation"]

#: Every activation maps 0 to 0, which is what makes an identity disentangler exact.
ACTIVATIONS: tuple[str, ...] = ("identity", "tanh", "relu", "gelu", "sin")

_erf = np.frompyfunc(math.erf, 1, 1)


def check_activation(value: object, *, parameter: str = "activation") -> str:
    """Return ``value`` if it names a known activation, else raise naming the valid ones."""
    if not isinstance(value, str):
        raise TypeError(f"{parameter} must be a string, one of {list(ACTIVATIONS)}; got {value!r}")
    if value not in ACTIVATIONS:
        raise ValueError(f"unknown {parameter} {value!r}; valid activations: {list(ACTIVATIONS)}")
    return value


def apply_activation(name: str, x: np.ndarray) -> np.ndarray:
    """Apply an activation to a numpy array (the reference for every backend; gelu is exact)."""
    if name == "identity":
        return x
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0)
    if name == "sin":
        return np.sin(x)
    if name == "gelu":
        return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(x.dtype))).astype(x.dtype)
    check_activation(name)
    raise AssertionError("unreachable")  # pragma: no cover
