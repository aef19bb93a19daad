"""Exact parameter accounting of a model with ADNTN layers.

Compression ratio = dense parameter count / stored parameter count, counting every
core and every bias number (a dense bias vector, or the cores of a generated
bias). The weight-only ratio (dense weight / weight cores) is reported beside it
because published figures count weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from adntn_export.layers import ADNTNLayer

__all__ = ["CompressionReport", "LayerReport", "compression_report"]


@dataclass(frozen=True)
class LayerReport:
    """One ADNTN layer's counts."""

    name: str
    kind: str
    shape: tuple[int, ...]
    network: str
    bond_dims: tuple[int, ...]
    bias: str
    dense_params: int
    stored_params: int
    dense_weight_params: int
    stored_weight_params: int

    @property
    def ratio(self) -> float:
        """Dense parameters (weight + bias) / stored parameters (cores + bias)."""
        return self.dense_params / self.stored_params

    @property
    def weight_ratio(self) -> float:
        """Dense weight parameters / weight-core parameters."""
        return self.dense_weight_params / self.stored_weight_params


@dataclass(frozen=True)
class CompressionReport:
    """Per-layer counts and model totals.

    ``model_dense_params`` counts the whole model as if every ADNTN layer were
    dense; ``model_stored_params`` counts what is actually stored (other layers
    included).
    """

    layers: tuple[LayerReport, ...]
    model_dense_params: int
    model_stored_params: int

    @property
    def adntn_dense_params(self) -> int:
        """Dense parameters of the compressed layers only."""
        return sum(r.dense_params for r in self.layers)

    @property
    def adntn_stored_params(self) -> int:
        """Stored parameters of the compressed layers only."""
        return sum(r.stored_params for r in self.layers)

    @property
    def total_ratio(self) -> float:
        """Dense / stored over the compressed layers (biases included)."""
        return self.adntn_dense_params / max(self.adntn_stored_params, 1)

    @property
    def weight_ratio(self) -> float:
        """Dense weights / weight cores over the compressed layers."""
        dense = sum(r.dense_weight_params for r in self.layers)
        stored = sum(r.stored_weight_params for r in self.layers)
        return dense / max(stored, 1)

    @property
    def model_ratio(self) -> float:
        """The whole model: dense-equivalent / stored."""
        return self.model_dense_params / max(self.model_stored_params, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with every count and ratio."""
        return {
            "layers": [
                {**asdict(r), "ratio": r.ratio, "weight_ratio": r.weight_ratio} for r in self.layers
            ],
            "adntn_dense_params": self.adntn_dense_params,
            "adntn_stored_params": self.adntn_stored_params,
            "total_ratio": self.total_ratio,
            "weight_ratio": self.weight_ratio,
            "model_dense_params": self.model_dense_params,
            "model_stored_params": self.model_stored_params,
            "model_ratio": self.model_ratio,
        }

    def to_json(self, indent: int = 2) -> str:
        """The report as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> Any:
        """A ``rich.table.Table`` of the report."""
        from rich.table import Table

        table = Table(title="ADNTN compression report")
        for col in (
            "layer",
            "kind",
            "shape",
            "network",
            "bond",
            "bias",
            "dense params",
            "stored params",
            "ratio",
            "weight ratio",
        ):
            table.add_column(col, justify="right" if "param" in col or "ratio" in col else "left")
        for r in self.layers:
            table.add_row(
                r.name,
                r.kind,
                "x".join(map(str, r.shape)),
                r.network,
                ",".join(map(str, r.bond_dims)),
                r.bias,
                f"{r.dense_params:,}",
                f"{r.stored_params:,}",
                f"{r.ratio:,.1f}x",
                f"{r.weight_ratio:,.1f}x",
            )
        table.add_section()
        table.add_row(
            "ADNTN layers",
            "",
            "",
            "",
            "",
            "",
            f"{self.adntn_dense_params:,}",
            f"{self.adntn_stored_params:,}",
            f"{self.total_ratio:,.1f}x",
            f"{self.weight_ratio:,.1f}x",
        )
        table.add_row(
            "whole model",
            "",
            "",
            "",
            "",
            "",
            f"{self.model_dense_params:,}",
            f"{self.model_stored_params:,}",
            f"{self.model_ratio:,.1f}x",
            "",
        )
        return table

    def print(self) -> None:
        """Print the table to the terminal."""
        from rich.console import Console

        Console().print(self.table())

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=160, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
        console.print(self.table())
        return console.export_text()


def compression_report(model: nn.Module) -> CompressionReport:
    """Count dense and stored parameters of every ADNTN layer in ``model``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compression_report needs an nn.Module, got {type(model).__name__}")
    rows: list[LayerReport] = []
    adntn_modules = set()
    for name, module in model.named_modules():
        if not isinstance(module, ADNTNLayer):
            continue
        adntn_modules.add(module)
        plan = module.plan
        shape: tuple[int, ...]
        if hasattr(module, "kernel_size"):
            shape = (module.out_channels, module.in_channels, *module.kernel_size)
            kind = "conv2d"
        else:
            shape = (module.out_features, module.in_features)
            kind = "linear"
        rows.append(
            LayerReport(
                name=name or "<model>",
                kind=kind,
                shape=shape,
                network=plan.network,
                bond_dims=plan.bond_dims,
                bias=module.bias_kind,
                dense_params=module.dense_parameters,
                stored_params=module.stored_parameters,
                dense_weight_params=module.dense_weight_parameters,
                stored_weight_params=module.stored_weight_parameters,
            )
        )
    stored = sum(p.numel() for p in model.parameters())
    dense = stored
    for r in rows:
        dense += r.dense_params - r.stored_params
    return CompressionReport(tuple(rows), dense, stored)
