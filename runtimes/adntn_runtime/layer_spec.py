"""The framework-free description of one ADNTN layer: its plan, cores, bias and conv geometry.

A :class:`LayerSpec` is what every ONNX consumer works from: the exporter builds one from a
torch layer, the file format (:mod:`adntn_runtime.onnx_format`) writes and reads it as a
placeholder node, and the lowering (:mod:`adntn_runtime.lowering`) turns it into nodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adntn_runtime.plan import ADNTNPlan
from adntn_runtime.reference import generate_weight

__all__ = ["BIAS_KINDS", "KINDS", "ConvSpec", "LayerSpec"]

#: Layer kinds.
KINDS: tuple[str, ...] = ("linear", "conv2d")
#: How a layer stores its bias.
BIAS_KINDS: tuple[str, ...] = ("dense", "generated", "none")


@dataclass(frozen=True)
class ConvSpec:
    """Convolution parameters of an ``ADNTNConv2d`` (``groups=1``, zero padding).

    ``pads`` is symmetric ``(ph, pw)`` as in torch; ONNX ``pads`` is ``(ph, pw, ph, pw)``.
    """

    in_channels: int
    kernel_shape: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int] = (0, 0)
    dilations: tuple[int, int] = (1, 1)
    #: Output ``(height, width)`` when known (static spatial size): the fused lowering then
    #: reshapes without ``Shape`` ops (which NNAPI/CoreML cannot take).
    output_hw: tuple[int, int] | None = None

    def attributes(self) -> dict[str, Any]:
        """The ONNX ``Conv`` attributes."""
        return {
            "kernel_shape": list(self.kernel_shape),
            "strides": list(self.strides),
            "pads": [*self.pads, *self.pads],
            "dilations": list(self.dilations),
        }


@dataclass
class LayerSpec:
    """Everything needed to lower one ADNTN layer, framework-free.

    Attributes:
        name: the layer's dotted module name (prefix of every node it lowers to).
        kind: ``"linear"`` or ``"conv2d"``.
        plan: the weight generator's plan (``(out, in)`` or ``(out, in*kh*kw)``).
        cores: core name -> float32 array, one per ``plan.cores``.
        bias_kind: ``"dense"``, ``"generated"`` or ``"none"``.
        bias: the dense bias vector (``bias_kind == "dense"``).
        bias_plan, bias_cores: the bias generator (``bias_kind == "generated"``).
        conv: convolution parameters (``kind == "conv2d"``).
        input_rank: rank of the linear layer's input (``(..., in)``; 2 is the common case).
    """

    name: str
    kind: str
    plan: ADNTNPlan
    cores: dict[str, np.ndarray]
    bias_kind: str = "none"
    bias: np.ndarray | None = None
    bias_plan: ADNTNPlan | None = None
    bias_cores: dict[str, np.ndarray] | None = None
    conv: ConvSpec | None = None
    input_rank: int = 2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r}; valid kinds: {list(KINDS)}")
        if self.kind == "conv2d" and self.conv is None:
            raise ValueError(f"layer {self.name!r}: kind 'conv2d' needs conv parameters")
        if self.bias_kind not in BIAS_KINDS:
            raise ValueError(
                f"layer {self.name!r}: unknown bias_kind {self.bias_kind!r}; "
                f"valid: {list(BIAS_KINDS)}"
            )
        if self.bias_kind == "dense" and self.bias is None:
            raise ValueError(f"layer {self.name!r}: bias_kind 'dense' needs the bias vector")
        if self.bias_kind == "generated" and (self.bias_plan is None or self.bias_cores is None):
            raise ValueError(f"layer {self.name!r}: bias_kind 'generated' needs bias_plan/cores")
        for cname, spec in self.plan.cores.items():
            if cname not in self.cores:
                raise ValueError(
                    f"layer {self.name!r}: core {cname!r} missing; the plan has "
                    f"{list(self.plan.cores)}"
                )
            if tuple(self.cores[cname].shape) != spec.shape:
                raise ValueError(
                    f"layer {self.name!r}: core {cname!r} has shape "
                    f"{tuple(self.cores[cname].shape)}, the plan needs {spec.shape}"
                )
        self.cores = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.cores.items()}
        if self.bias is not None:
            self.bias = np.ascontiguousarray(self.bias, dtype=np.float32).reshape(-1)
        if self.bias_cores is not None:
            self.bias_cores = {
                k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.bias_cores.items()
            }

    @property
    def prefix(self) -> str:
        """Name prefix of the layer's nodes and initializers (``layer`` for a root module)."""
        return self.name or "layer"

    @property
    def out_features(self) -> int:
        """Rows of the weight (output features or channels)."""
        return self.plan.out_features

    def output_hw(self, input_shape: Sequence[int] | None = None) -> tuple[int, int] | None:
        """A convolution's output ``(height, width)``: recorded at export, else computed from
        the ``(N, C, H, W)`` input shape; ``None`` for a linear layer or when unknown."""
        conv = self.conv
        if conv is None:
            return None
        if conv.output_hw is not None or input_shape is None or len(input_shape) != 4:
            return conv.output_hw
        h, w = (
            (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
            for size, pad, dil, k, stride in zip(
                input_shape[2:],
                conv.pads,
                conv.dilations,
                conv.kernel_shape,
                conv.strides,
                strict=True,
            )
        )
        return h, w

    def gemm_rows(self, batch: int, input_shape: Sequence[int] | None = None) -> int:
        """The rows the ``(out, in)`` weight multiplies per call at ``batch``: one per output
        pixel of a convolution (``batch * out_h * out_w``), one per token of a linear layer on
        ``(batch, T, in)`` (``batch * T``); ``batch`` where the shape is unknown."""
        if self.kind == "conv2d":
            hw = self.output_hw(input_shape)
            return batch * math.prod(hw) if hw is not None else batch
        if input_shape is not None and len(input_shape) > 2:
            return batch * math.prod(input_shape[1:-1])
        return batch

    def dense_weight(self) -> np.ndarray:
        """The generated ``(out, in)`` weight (numpy reference)."""
        return generate_weight(self.plan, self.cores).astype(np.float32)

    def dense_bias(self) -> np.ndarray | None:
        """The bias vector (generated with the numpy reference for ``bias_kind='generated'``)."""
        if self.bias_kind == "dense":
            return self.bias
        if self.bias_kind == "generated":
            assert self.bias_plan is not None and self.bias_cores is not None
            return generate_weight(self.bias_plan, self.bias_cores)[:, 0].astype(np.float32)
        return None
