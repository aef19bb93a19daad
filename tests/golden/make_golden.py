"""Regenerate the golden ONNX text protos of tests/test_onnx_export.py.

Run from the repository root::

    PYTHONPATH=.:runtimes:models python tests/golden/make_golden.py

It writes ``tests/golden/fused_<network>.textproto``: one small ADNTN linear layer per
topology lowered in fused mode with Einsum nodes, initializers stripped to name, type and
dims (the graph structure, names and equations are what is compared).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from google.protobuf import text_format

from adntn_runtime.onnx_lowering import LayerSpec, layer_model
from adntn_runtime.plan import NETWORKS, ADNTNPlan

GOLDEN_DIR = Path(__file__).resolve().parent


def golden_model(network: str) -> onnx.ModelProto:
    """The small fused layer of one topology (deterministic cores, then stripped)."""
    plan = ADNTNPlan(12, 16, network=network, bond_dim=2, num_sites=4, activation="tanh")
    rng = np.random.default_rng(0)
    cores = {k: rng.standard_normal(s.shape).astype(np.float32) for k, s in plan.cores.items()}
    bias = np.zeros(12, np.float32)
    spec = LayerSpec("fc", "linear", plan, cores, "dense", bias)
    return layer_model(spec, "fused", input_shape=["batch", 16], einsum=True, opset=18)


def golden_text(model: onnx.ModelProto) -> str:
    """Text proto of ``model`` with the initializers' data removed."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    for init in stripped.graph.initializer:
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.ClearField("int64_data")
    return text_format.MessageToString(stripped)


def main() -> int:
    for network in NETWORKS:
        path = GOLDEN_DIR / f"fused_{network}.textproto"
        path.write_text(golden_text(golden_model(network)))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
