"""Normalise an exported ONNX model into what TVM's Relax ONNX importer reads.

torch's exporter writes ``Constant`` nodes with ``value_ints`` (a flatten shape), shape
sub-graphs (``Shape -> Gather -> Concat -> Reshape``) over a symbolic batch, and opset
functions; TVM 0.27's importer rejects or mis-reads these. Rather than patching the graph by
hand, this module fixes the data inputs' shapes (``--batch`` / ``--input-shape``) and runs the
maintained passes of ``onnx_ir`` and ``onnxscript``'s optimizer: function inlining, constant
folding with shape inference (twice: a fold can make its consumers foldable), dead-node
removal, and the pass that lifts every remaining ``Constant`` into an initializer.

``onnxscript.optimizer.optimize`` would also apply its pattern rewrites (no-op removal, slice
collapsing, batch-norm fusion, ...). TVM's importer needs none of them, and they cost time in
proportion to nodes x rules: on a regenerate export (a weight build per row tile, about 1,000
nodes for the ``mlp`` zoo model) a host compile took 1,121 s with them and 9 s without
(``benchmarks/compile_matrix.py`` rows, ``compile_seconds``; see benchmarks/README.md).

Initializers named in ``runtime_params`` (the cores of materialize/regenerate layers) become
graph inputs first, so nothing the optimizer folds can turn a weight build into a constant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Normalized", "normalize"]

#: Constant-folding rounds at most (``onnxscript.optimizer.optimize``'s default is 2 too).
FOLD_ROUNDS = 2


@dataclass
class Normalized:
    """The normalised model and the initializers turned into graph inputs (in input order,
    renamed ``param_<i>`` so that TVM's importer has no name to sanitise)."""

    model: Any  # onnx.ModelProto
    params: list[np.ndarray]


def normalize(
    model: Any,
    shapes: Mapping[str, Sequence[int]],
    runtime_params: Sequence[str] = (),
) -> Normalized:
    """``model`` (an ``onnx.ModelProto``) with static data-input ``shapes``, constants folded
    and ``Constant`` nodes lifted; ``runtime_params`` moved from initializers to inputs."""
    import onnx_ir as ir
    import onnxscript.optimizer
    from onnx_ir.passes.common import (
        InlinePass,
        LiftConstantsToInitializersPass,
        RemoveUnusedFunctionsPass,
        RemoveUnusedNodesPass,
    )

    m = ir.serde.deserialize_model(model)
    for value in m.graph.inputs:
        if value.name in shapes:
            value.shape = ir.Shape([int(d) for d in shapes[value.name]])
    params: list[np.ndarray] = []
    for i, name in enumerate(runtime_params):
        value = m.graph.initializers.pop(name)
        params.append(np.asarray(value.const_value.numpy()))
        value.const_value = None
        value.name = f"param_{i}"
        m.graph.inputs.append(value)
    InlinePass()(m)
    for _ in range(FOLD_ROUNDS):
        changed = onnxscript.optimizer.fold_constants(m, onnx_shape_inference=True).modified
        changed = RemoveUnusedNodesPass()(m).modified or changed
        if not changed:
            break
    RemoveUnusedFunctionsPass()(m)
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(m)
    return Normalized(ir.serde.serialize_model(m), params)
