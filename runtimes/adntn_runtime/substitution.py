"""The one pass that substitutes every ADNTN placeholder of a model by its lowering.

Both the exporter (:func:`lower_model`: every layer in one mode, ``dense`` allowed) and the
device runtime (:func:`adntn_runtime.session.lower_for_runtime`: the policy's modes, the
materialized weight contracted in numpy) run :func:`substitute_placeholders`; they differ
only in the function that lowers one layer. The pass rebuilds each layer's
:class:`~adntn_runtime.layer_spec.LayerSpec` from its placeholder, replaces the node by the
lowering's nodes, drops parameters nothing reads any more, and records in the file's
metadata how each layer was lowered (``adntn.layer.<name>``) and, when its cores stay in the
file, its placeholder (``adntn.placeholder.<name>``, with the rows per regenerate tile the
lowering was given; :func:`restore_placeholders` puts it back in place of the layer's nodes),
whether the session must keep constant folding off (``adntn.session_options``) and the IR
version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from adntn_runtime.layer_lowering import LoweredLayer, lower_layer
from adntn_runtime.layer_spec import LayerSpec
from adntn_runtime.modes import E, ExportMode, LoweringMode, missing_and_unknown, parse_mode
from adntn_runtime.onnx_format import (
    ADNTN_DOMAIN,
    IR_VERSION,
    NO_FOLDING_SESSION_OPTIONS,
    SESSION_OPTIONS_KEY,
    PlaceholderRecord,
    default_opset,
    is_placeholder,
    placeholder_layers,
    placeholder_node,
    placeholder_param_names,
    read_placeholder_records,
    record_layer_metadata,
    record_placeholder,
    register_schemas,
    set_metadata,
    spec_from_node,
)
from adntn_runtime.plan import check_tile_rows

__all__ = [
    "LayerLowerer",
    "layer_model",
    "lower_model",
    "lower_placeholder",
    "resolve_modes",
    "resolve_tile_rows",
    "restore_placeholders",
    "substitute_placeholders",
]

#: Lowers one layer: ``(spec, mode, placeholder node, opset) -> LoweredLayer``. The lowering
#: reads ``node.input[0]``, writes ``node.output[0]`` and may reuse the placeholder's
#: parameter inputs (:func:`~adntn_runtime.onnx_format.placeholder_param_names`).
LayerLowerer = Callable[[LayerSpec, Any, onnx.NodeProto, int], LoweredLayer]


def resolve_modes(
    names: Sequence[str], modes: object, kind: type[E], *, name: str = "modes"
) -> dict[str, E]:
    """Layer -> mode for every placeholder layer, validated against ``kind``.

    ``modes``: one mode for every layer, or a mapping that names every layer exactly.
    """
    if not isinstance(modes, Mapping):
        mode = parse_mode(modes, kind, name=name)
        return dict.fromkeys(names, mode)
    missing, unknown = missing_and_unknown(names, modes)
    if missing or unknown:
        raise ValueError(
            f"{name} must name every ADNTN layer of the model exactly: missing {missing}, "
            f"unknown {unknown}; the model's layers: {names}"
        )
    return {n: parse_mode(modes[n], kind, name=f"{name}[{n!r}]") for n in names}


def resolve_tile_rows(
    names: Sequence[str], tile_rows: object, *, name: str = "tile_rows"
) -> dict[str, int | None]:
    """Layer -> rows per regenerate tile (``None``: the plan's default), validated.

    ``tile_rows``: ``None``, one int for every layer, or a mapping naming some of the layers
    (the others get ``None``; a name that is no layer of the model is refused).
    """
    if not isinstance(tile_rows, Mapping):
        return dict.fromkeys(names, check_tile_rows(tile_rows, name))
    unknown = sorted(str(n)[:80] for n in tile_rows if n not in names)
    if unknown:
        raise ValueError(
            f"{name} names {unknown}, not ADNTN layers of the model; valid names: {list(names)}"
        )
    return {n: check_tile_rows(tile_rows.get(n), f"{name}[{n!r}]") for n in names}


def substitute_placeholders(
    model: onnx.ModelProto,
    modes: Mapping[str, Any],
    lower: LayerLowerer,
    *,
    tile_rows: Mapping[str, int | None] | None = None,
    **metadata: Any,
) -> onnx.ModelProto:
    """A copy of ``model`` with every placeholder replaced by ``lower``'s nodes.

    Args:
        model: a model with ``ai.adntn`` placeholders (see :func:`resolve_modes` for
            ``modes``, already validated: layer name -> mode).
        lower: lowers one layer (see :data:`LayerLowerer`).
        tile_rows: layer name -> the rows per regenerate tile ``lower`` was given, recorded
            with the layer's placeholder (layers not named: the plan's default).
        metadata: extra entries of every layer's ``adntn.layer.<name>`` record.
    """
    tiles = dict(tile_rows or {})
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    params: set[str] = set()
    no_folding = False
    opset = default_opset(out)
    records: list[tuple[onnx.NodeProto, list[str], int | None]] = []
    for node in graph.node:
        if not is_placeholder(node):
            nodes.append(node)
            continue
        for name in node.input[1:]:
            if name not in arrays and name in inits:
                arrays[name] = numpy_helper.to_array(inits[name])
        params.update(node.input[1:])
        spec = spec_from_node(node, arrays)
        lowered = lower(spec, modes[spec.name], node, opset)
        nodes.extend(lowered.nodes)
        new_inits.extend(lowered.initializers)
        no_folding |= lowered.needs_no_constant_folding
        record_layer_metadata(out, spec, modes[spec.name], **lowered.info, **metadata)
        records.append((node, [n.name for n in lowered.nodes], tiles.get(spec.name)))
    used = {name for n in nodes for name in n.input}
    kept = [t for t in graph.initializer if t.name not in params or t.name in used]
    kept_names = {t.name for t in kept}
    for node, emitted, rows in records:  # layers whose cores stay in the file can be rebuilt
        if all(name in kept_names for name in node.input[1:]):
            record_placeholder(out, node, emitted, tile_rows=rows)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    if not placeholder_layers(out):
        keep = [imp for imp in out.opset_import if imp.domain != ADNTN_DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(keep)
    if no_folding:
        set_metadata(out, SESSION_OPTIONS_KEY, json.dumps(NO_FOLDING_SESSION_OPTIONS))
    out.ir_version = IR_VERSION
    return out


def restore_placeholders(
    model: onnx.ModelProto,
) -> tuple[onnx.ModelProto, dict[str, PlaceholderRecord], list[str]]:
    """A copy of a lowered model with each recorded layer's nodes replaced by its placeholder.

    Reads the ``adntn.placeholder.<name>`` records (:func:`~adntn_runtime.onnx_format.
    read_placeholder_records`). A layer is restored only when its recorded nodes are all in
    the graph, read nothing from outside but the layer's input and initializers, and nothing
    outside them reads any of their values but the layer's output; the initializers only
    they read are dropped. Returns ``(model, restored, notes)``: ``restored`` maps each
    restored layer's name (its placeholder's ``layer``) to its record, whose ``tile_rows``
    a re-lowering should pass on; one note per recorded layer left as it was, saying why.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    notes: list[str] = []
    restored: dict[str, PlaceholderRecord] = {}
    for prefix, record in read_placeholder_records(out).items():
        ph = record.node
        names = set(record.nodes)
        drop = [i for i, n in enumerate(graph.node) if n.name in names]
        inits = {t.name for t in graph.initializer}
        produced = {v for i in drop for v in graph.node[i].output}
        inner = produced - {ph.output[0]}
        outside = [n for i, n in enumerate(graph.node) if i not in set(drop)]
        reads = {v for i in drop for v in graph.node[i].input if v} - produced
        problem = None
        if len(drop) != len(names):
            problem = f"{len(names) - len(drop)} of its {len(names)} recorded nodes are missing"
        elif ph.output[0] not in produced:
            problem = f"no recorded node writes its output {ph.output[0]!r}"
        elif any(v in inner for n in outside for v in n.input) or any(
            o.name in inner for o in graph.output
        ):
            problem = "a node outside the layer reads one of its inner values"
        elif not reads <= inits | {ph.input[0]}:
            problem = f"its nodes read values from outside the layer: {sorted(reads - inits)[:3]}"
        elif not all(p in inits for p in ph.input[1:]):
            problem = "a parameter it names is no initializer"
        if problem is not None:
            notes.append(f"layer {prefix!r} compiled as exported: {problem}")
            continue
        nodes = list(outside)
        nodes.insert(drop[0], ph)
        del graph.node[:]
        graph.node.extend(nodes)
        used = {v for n in nodes for v in n.input} | {i.name for i in graph.input}
        keep = [t for t in graph.initializer if t.name in used or t.name not in reads]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        stale = [vi for vi in graph.value_info if vi.name not in inner]
        del graph.value_info[:]
        graph.value_info.extend(stale)
        restored[_layer_of(ph)] = record
    if restored and not any(imp.domain == ADNTN_DOMAIN for imp in out.opset_import):
        out.opset_import.append(helper.make_opsetid(ADNTN_DOMAIN, 1))
    return out, restored, notes


def _layer_of(node: onnx.NodeProto) -> str:
    for a in node.attribute:
        if a.name == "layer":
            return a.s.decode(errors="replace")
    return ""


def lower_placeholder(
    spec: LayerSpec, mode: LoweringMode, node: onnx.NodeProto, opset: int, **options: Any
) -> LoweredLayer:
    """:func:`~adntn_runtime.layer_lowering.lower_layer` in the placeholder's place: reads its
    input, writes its output, reuses its parameter initializers; ``options`` go through."""
    return lower_layer(
        spec,
        mode,
        input_name=node.input[0],
        output_name=node.output[0],
        opset=opset,
        param_names=placeholder_param_names(node),
        **options,
    )


def lower_model(
    model: onnx.ModelProto,
    modes: LoweringMode | str | Mapping[str, LoweringMode | str],
    *,
    einsum: bool = True,
    native_gelu: bool | None = None,
    batch_hint: int = 1,
    tile_rows: int | Mapping[str, int | None] | None = None,
) -> onnx.ModelProto:
    """Substitute every ``ai.adntn`` placeholder of ``model`` by its lowering; returns a copy.

    Args:
        model: a model exported with ``mode='auto'`` (placeholders + cores as initializers).
        modes: one mode for every layer, or layer name -> mode (every placeholder named).
        einsum, native_gelu, batch_hint: see :func:`~adntn_runtime.layer_lowering.lower_layer`.
        tile_rows: rows per regenerate tile, for every layer or per layer name (layers not
            named: the plan's default); recorded with each layer's placeholder, so that a
            re-lowering (``adntn compile``) tiles the layer as this one did.

    The result records per layer ``adntn.layer.<name>`` metadata (mode, network, bond dims,
    ratio, einsum) and, when a layer is regenerated, ``adntn.session_options`` (constant
    folding off); its IR version is :data:`~adntn_runtime.onnx_format.IR_VERSION`.
    """
    names = placeholder_layers(model)
    per_layer = resolve_modes(names, modes, LoweringMode, name="modes")
    tiles = resolve_tile_rows(names, tile_rows)
    options = {"einsum": einsum, "native_gelu": native_gelu, "batch_hint": batch_hint}

    def lower(spec: LayerSpec, mode: Any, node: onnx.NodeProto, opset: int) -> LoweredLayer:
        return lower_placeholder(spec, mode, node, opset, tile_rows=tiles[spec.name], **options)

    return substitute_placeholders(model, per_layer, lower, tile_rows=tiles)


def layer_model(
    spec: LayerSpec,
    mode: ExportMode | str,
    *,
    input_shape: Sequence[int | str],
    einsum: bool = True,
    opset: int = 18,
    native_gelu: bool | None = None,
    batch_hint: int = 1,
    tile_rows: int | None = None,
) -> onnx.ModelProto:
    """A standalone model of one layer (input ``input``, output ``output``), torch-free.

    ``mode`` may also be ``"auto"`` (the placeholder form). ``input_shape`` may hold
    strings for symbolic dimensions (``("batch", 4096)``).
    """
    register_schemas()
    node, inits = placeholder_node(spec, input_name="input", output_name="output")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, _output_shape(spec, input_shape))
    graph = helper.make_graph([node], spec.prefix, [x], [y], initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ADNTN_DOMAIN, 1)],
        producer_name="adntn",
    )
    model.ir_version = IR_VERSION
    if parse_mode(mode, ExportMode) is ExportMode.AUTO:
        return model
    return lower_model(
        model,
        mode,
        einsum=einsum,
        native_gelu=native_gelu,
        batch_hint=batch_hint,
        tile_rows=tile_rows,
    )


def _output_shape(spec: LayerSpec, input_shape: Sequence[int | str]) -> list[int | str]:
    shape = list(input_shape)
    if spec.conv is None:
        return [*shape[:-1], spec.out_features]
    if len(shape) != 4:
        raise ValueError(f"a conv layer needs a 4-D input shape (N, C, H, W), got {shape}")
    out: list[int | str] = [shape[0], spec.out_features]
    for d, size in enumerate(shape[2:]):
        if isinstance(size, str):
            out.append(f"{size}_out")
            continue
        k, s, p, dil = (
            spec.conv.kernel_shape[d],
            spec.conv.strides[d],
            spec.conv.pads[d],
            spec.conv.dilations[d],
        )
        out.append((size + 2 * p - dil * (k - 1) - 1) // s + 1)
    return out
