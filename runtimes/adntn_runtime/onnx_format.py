"""The ADNTN layer in an ONNX file: the placeholder node, its parameters and the metadata.

A ``mode="auto"`` export keeps each ADNTN layer as one **placeholder** node
``ai.adntn::ADNTNLinear`` or ``ai.adntn::ADNTNConv2d`` whose inputs are the data input followed
by the layer's stored parameters (core initializers, then the dense bias or the bias
generator's cores) and whose attributes carry everything needed to rebuild the layer
(:func:`placeholder_node`, :func:`spec_from_node`): ``plan`` (``ADNTNPlan.to_dict()`` as
JSON), ``kind``, ``bias_kind``, ``bias_plan``, ``param_roles`` (one per parameter input:
``core/leaf0``, ``bias``, ``bias_core/leaf0``), ``input_rank`` and, for a conv,
``in_channels``, ``kernel_shape``, ``strides``, ``pads``, ``dilations``, ``output_hw``.

Every file with ADNTN layers also records, in ``metadata_props``, how each layer was written
(``adntn.layer.<name>``: kind, mode, network, bond dims, shape, ratio; see
:func:`record_layer_metadata`) and, when a layer must not be constant-folded,
``adntn.session_options`` (:func:`session_options_for` reads it back).

A layer lowered at export whose cores stay initializers of the file (``fused``,
``materialize``, ``regenerate``) also records its placeholder (``adntn.placeholder.<name>``,
:func:`record_placeholder`): the placeholder's attributes (the plan JSON among them), its
input, parameter and output value names (the cores are referenced by name, not copied) and
the names of the nodes its lowering emitted and, when the export was given one, the rows per
regenerate tile (``tile_rows``: record format 2; a record without it, format 1, lowers with
the plan's default). :func:`read_placeholder_records` reads it back, validated, so that a
backend can drop those nodes and lower the layer again from its plan, as the export did.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from adntn_runtime.layer_spec import ConvSpec, LayerSpec
from adntn_runtime.plan import MAX_TILE_ROWS, ADNTNPlan, check_tile_rows

__all__ = [
    "ADNTN_DOMAIN",
    "IR_VERSION",
    "NO_FOLDING_SESSION_OPTIONS",
    "OP_TYPES",
    "PLACEHOLDER_RECORD_FORMAT",
    "PLACEHOLDER_RECORD_KEY",
    "PlaceholderRecord",
    "SESSION_OPTIONS_KEY",
    "default_opset",
    "is_placeholder",
    "param_inits",
    "placeholder_layers",
    "placeholder_node",
    "placeholder_param_names",
    "read_placeholder_records",
    "record_layer_metadata",
    "record_placeholder",
    "register_schemas",
    "session_options_for",
    "set_metadata",
    "spec_from_node",
]

#: Domain of the placeholder ops.
ADNTN_DOMAIN = "ai.adntn"
#: IR version written into every model: one the pinned onnxruntime (1.31) loads.
IR_VERSION = 10
#: Metadata key declaring the session options a model needs.
SESSION_OPTIONS_KEY = "adntn.session_options"
#: The session options a model with a regenerate layer needs (constant folding off).
NO_FOLDING_SESSION_OPTIONS: dict[str, Any] = {
    "disabled_optimizers": ["ConstantFolding"],
    "config_entries": {"optimization.disable_specified_optimizers": "ConstantFolding"},
}
#: Layer kind -> placeholder op type.
OP_TYPES = {"linear": "ADNTNLinear", "conv2d": "ADNTNConv2d"}
_PLACEHOLDER_ATTRS = ["layer", "kind", "plan", "bias_kind", "param_roles", "input_rank"]


#: The placeholder's attributes by ONNX attribute type (see the module docstring).
_PLACEHOLDER_ATTRIBUTES = {
    "STRING": ("layer", "kind", "plan", "bias_kind", "bias_plan"),
    "STRINGS": ("param_roles",),
    "INT": ("input_rank", "in_channels"),
    "INTS": ("kernel_shape", "strides", "pads", "dilations", "output_hw"),
}


def is_placeholder(node: onnx.NodeProto) -> bool:
    """True for an ``ai.adntn`` placeholder node (an ADNTN layer not lowered yet)."""
    return node.domain == ADNTN_DOMAIN and node.op_type in OP_TYPES.values()


def register_schemas() -> None:
    """Register the ``ai.adntn`` placeholder schemas with onnx (idempotent).

    Lets ``onnx.checker.check_model(full_check=True)`` validate ``mode='auto'`` files.
    """
    from onnx.defs import OpSchema

    param = OpSchema.FormalParameter
    for op, doc in (
        ("ADNTNLinear", "An ADNTN linear layer: x then its stored parameters."),
        ("ADNTNConv2d", "An ADNTN 2-D convolution: x then its stored parameters."),
    ):
        if onnx.defs.has(op, ADNTN_DOMAIN):
            continue
        schema = OpSchema(
            op,
            ADNTN_DOMAIN,
            1,
            doc=doc,
            inputs=[
                param("x", "T"),
                param("params", "T", param_option=OpSchema.FormalParameterOption.Variadic),
            ],
            outputs=[param("y", "T")],
            type_constraints=[("T", ["tensor(float)"], "float32 tensors")],
            attributes=[
                OpSchema.Attribute(name, getattr(OpSchema.AttrType, kind), name, required=False)
                for kind, names in _PLACEHOLDER_ATTRIBUTES.items()
                for name in names
            ],
        )
        onnx.defs.register_schema(schema)


def param_inits(spec: LayerSpec) -> list[tuple[str, str, np.ndarray]]:
    """``(role, initializer name, array)`` of the layer's stored parameters, in input order."""
    p = spec.prefix
    out = [(f"core/{k}", f"{p}/cores/{k}", spec.cores[k]) for k in spec.plan.cores]
    if spec.bias_kind == "dense":
        assert spec.bias is not None
        out.append(("bias", f"{p}/bias", spec.bias))
    elif spec.bias_kind == "generated":
        assert spec.bias_plan is not None and spec.bias_cores is not None
        out += [
            (f"bias_core/{k}", f"{p}/bias_cores/{k}", spec.bias_cores[k])
            for k in spec.bias_plan.cores
        ]
    return out


def placeholder_node(
    spec: LayerSpec, *, input_name: str, output_name: str
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """The ``ai.adntn`` node of a layer (mode chosen later) and its parameter initializers."""
    params = param_inits(spec)
    attrs: dict[str, Any] = {
        "layer": spec.name,
        "kind": spec.kind,
        "plan": json.dumps(spec.plan.to_dict(), sort_keys=True),
        "bias_kind": spec.bias_kind,
        "param_roles": [role for role, _, _ in params],
        "input_rank": spec.input_rank,
    }
    if spec.bias_plan is not None:
        attrs["bias_plan"] = json.dumps(spec.bias_plan.to_dict(), sort_keys=True)
    if spec.conv is not None:
        attrs["in_channels"] = spec.conv.in_channels
        attrs["kernel_shape"] = list(spec.conv.kernel_shape)
        attrs["strides"] = list(spec.conv.strides)
        attrs["pads"] = [*spec.conv.pads, *spec.conv.pads]
        attrs["dilations"] = list(spec.conv.dilations)
        if spec.conv.output_hw is not None:
            attrs["output_hw"] = list(spec.conv.output_hw)
    node = helper.make_node(
        OP_TYPES[spec.kind],
        [input_name, *(name for _, name, _ in params)],
        [output_name],
        name=f"{spec.prefix}/{OP_TYPES[spec.kind]}",
        domain=ADNTN_DOMAIN,
        **attrs,
    )
    inits = [numpy_helper.from_array(array, name) for _, name, array in params]
    return node, inits


def placeholder_param_names(node: onnx.NodeProto) -> dict[str, str]:
    """Role (``core/leaf0``, ``bias``, ``bias_core/...``) -> input name, for a placeholder node."""
    attrs = [helper.get_attribute_value(a) for a in node.attribute if a.name == "param_roles"]
    roles = [r.decode() if isinstance(r, bytes) else r for r in (attrs[0] if attrs else [])]
    if len(roles) != len(node.input) - 1:
        raise ValueError(
            f"placeholder {node.name!r} has {len(node.input) - 1} parameter inputs but "
            f"{len(roles)} param_roles"
        )
    return dict(zip(roles, node.input[1:], strict=True))


def spec_from_node(node: onnx.NodeProto, initializers: Mapping[str, np.ndarray]) -> LayerSpec:
    """Rebuild a :class:`LayerSpec` from a placeholder node and the model's initializers."""
    if not is_placeholder(node):
        raise ValueError(
            f"node {node.name!r} ({node.domain}::{node.op_type}) is not an ADNTN placeholder; "
            f"valid: {[f'{ADNTN_DOMAIN}::{t}' for t in OP_TYPES.values()]}"
        )
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def text(key: str) -> str:
        if key not in attrs:
            raise ValueError(
                f"placeholder {node.name!r} lacks its {key!r} attribute; an ADNTN placeholder "
                f"carries {_PLACEHOLDER_ATTRS} (re-export the model with adntn)"
            )
        value = attrs[key]
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    def plan(key: str) -> ADNTNPlan:
        try:
            return ADNTNPlan.from_json(text(key))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"placeholder {node.name!r}: bad {key!r} attribute: {exc}") from None

    values = {}
    for role, name in placeholder_param_names(node).items():
        if name not in initializers:
            raise ValueError(f"placeholder {node.name!r}: parameter {name!r} is no initializer")
        values[role] = initializers[name]
    kind = text("kind")
    conv = None
    if kind == "conv2d":
        pads = list(attrs["pads"])
        conv = ConvSpec(
            int(attrs["in_channels"]),
            tuple(attrs["kernel_shape"]),
            tuple(attrs["strides"]),
            (pads[0], pads[1]),
            tuple(attrs["dilations"]),
            tuple(attrs["output_hw"]) if "output_hw" in attrs else None,
        )
    bias_plan = plan("bias_plan") if "bias_plan" in attrs else None
    return LayerSpec(
        name=text("layer"),
        kind=kind,
        plan=plan("plan"),
        cores={r[5:]: v for r, v in values.items() if r.startswith("core/")},
        bias_kind=text("bias_kind"),
        bias=values.get("bias"),
        bias_plan=bias_plan,
        bias_cores={r[10:]: v for r, v in values.items() if r.startswith("bias_core/")} or None,
        conv=conv,
        input_rank=int(attrs.get("input_rank", 2)),
    )


def placeholder_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the ADNTN layers still present as placeholders in ``model``."""
    out = []
    for node in model.graph.node:
        if is_placeholder(node):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            layer = attrs.get("layer", b"")
            out.append(layer.decode() if isinstance(layer, bytes) else layer)
    return out


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set (or replace) one ``metadata_props`` entry of ``model``."""
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def record_layer_metadata(model: onnx.ModelProto, spec: LayerSpec, mode: str, **extra: Any) -> None:
    """Record how a layer was written (``adntn.layer.{name}``: kind, mode, network, bond dims,
    shape, compression ratio, plus ``extra``, e.g. ``einsum``) in the model's metadata."""
    plan = spec.plan
    info = {
        "kind": spec.kind,
        "mode": str(mode),
        "network": plan.network,
        "bond_dims": list(plan.bond_dims),
        "shape": [plan.out_features, plan.in_features],
        "compression_ratio": round(plan.compression_ratio, 3),
        **extra,
    }
    set_metadata(model, f"adntn.layer.{spec.prefix}", json.dumps(info, sort_keys=True))


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ValueError("model has no default-domain opset import")


def session_options_for(model: onnx.ModelProto | str | Any) -> Any:
    """An ``onnxruntime.SessionOptions`` honouring the model's ``adntn.session_options``.

    Args:
        model: a ``ModelProto``, or a path to one.

    A model with a regenerate layer declares ``{"disabled_optimizers": ["ConstantFolding"],
    ...}``; this sets the equivalent session config entry
    ``optimization.disable_specified_optimizers`` (``InferenceSession(...,
    disabled_optimizers=[...])`` is the constructor-side spelling of the same thing). Models
    without the key get default options.
    """
    import onnxruntime as ort

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    so = ort.SessionOptions()
    meta = {p.key: p.value for p in model.metadata_props}
    if SESSION_OPTIONS_KEY in meta:
        wanted = json.loads(meta[SESSION_OPTIONS_KEY])
        entries = dict(wanted.get("config_entries", {}))
        disabled = wanted.get("disabled_optimizers", [])
        if disabled:
            entries["optimization.disable_specified_optimizers"] = ",".join(disabled)
        for key, value in entries.items():
            so.add_session_config_entry(key, str(value))
    return so


# ---------------------------------------------------------------------------- placeholder record
#: Metadata key prefix of a lowered layer's placeholder record (``adntn.placeholder.<name>``).
PLACEHOLDER_RECORD_KEY = "adntn.placeholder."
#: Version of the record's JSON layout: 1, or 2 when it records ``tile_rows`` (so that an
#: adntn that would ignore the field refuses the record instead); a reader refuses others.
PLACEHOLDER_RECORD_FORMAT = 2
#: Bounds on what a record read from a file may hold (files are untrusted).
_MAX_RECORD_CHARS = 64 * 2**20
_MAX_NAME_CHARS = 1024
_MAX_RECORD_NODES = 200_000
_MAX_INTS = 16
_NAME = re.compile(r"[^\x00-\x1f\x7f]+")
_RECORD_FIELDS = {"format", "op_type", "inputs", "output", "attributes", "nodes"}
#: Record format -> its fields (format 2 adds the rows per regenerate tile).
_FIELDS_BY_FORMAT = {1: _RECORD_FIELDS, 2: _RECORD_FIELDS | {"tile_rows"}}


@dataclass(frozen=True)
class PlaceholderRecord:
    """A lowered layer's placeholder, read back from the file.

    ``node``: the ``ai.adntn`` placeholder (input: the layer's input value, then its parameter
    initializers; output: the layer's output value); ``nodes``: the names of the nodes the
    export's lowering emitted for the layer (all between those values); ``tile_rows``: the
    rows per regenerate tile the export was given (``None``: the plan's default).
    """

    name: str
    node: onnx.NodeProto
    nodes: tuple[str, ...]
    tile_rows: int | None = None


def record_placeholder(
    model: onnx.ModelProto,
    node: onnx.NodeProto,
    emitted: Sequence[str],
    *,
    tile_rows: int | None = None,
) -> None:
    """Record placeholder ``node`` of a layer lowered into the nodes named ``emitted``
    (metadata ``adntn.placeholder.<layer prefix>``; see :func:`read_placeholder_records`),
    with the rows per regenerate tile its lowering was given (``None``: the plan's default)."""
    tile_rows = check_tile_rows(tile_rows)
    attrs = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else int(v) for v in value]
        attrs[a.name] = value
    record: dict[str, Any] = {
        "format": 1,
        "op_type": node.op_type,
        "inputs": list(node.input),
        "output": node.output[0],
        "attributes": attrs,
        "nodes": list(emitted),
    }
    if tile_rows is not None:
        record.update(format=PLACEHOLDER_RECORD_FORMAT, tile_rows=tile_rows)
    prefix = attrs.get("layer") or "layer"
    set_metadata(model, f"{PLACEHOLDER_RECORD_KEY}{prefix}", json.dumps(record, sort_keys=True))


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_NAME_CHARS or not _NAME.fullmatch(value):
        raise ValueError(
            f"{what}: {str(value)[:80]!r} is not a value/node name (a string of 1.."
            f"{_MAX_NAME_CHARS} printable characters)"
        )
    return value


def _attribute(name: str, value: object, where: str) -> Any:
    kind = next((k for k, names in _PLACEHOLDER_ATTRIBUTES.items() if name in names), None)
    if kind is None:
        raise ValueError(
            f"{where}: unknown placeholder attribute {name[:80]!r}; valid: "
            f"{sorted(n for names in _PLACEHOLDER_ATTRIBUTES.values() for n in names)}"
        )
    ok = {
        "STRING": isinstance(value, str) and len(value) <= _MAX_RECORD_CHARS,
        "STRINGS": isinstance(value, list)
        and len(value) <= _MAX_RECORD_NODES
        and all(isinstance(v, str) and len(v) <= _MAX_NAME_CHARS for v in value),
        "INT": isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31,
        "INTS": isinstance(value, list)
        and len(value) <= _MAX_INTS
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 for v in value),
    }[kind]
    if not ok:
        raise ValueError(f"{where}: attribute {name!r} is not a bounded {kind.lower()} value")
    return value


def _read_record(key: str, text: str) -> PlaceholderRecord:
    layer = key[len(PLACEHOLDER_RECORD_KEY) :]
    where = f"metadata {key[:120]!r}"
    _name(layer, where)
    if len(text) > _MAX_RECORD_CHARS:
        raise ValueError(f"{where}: {len(text)} characters, over the {_MAX_RECORD_CHARS} allowed")
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{where} is not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise ValueError(
            f"{where}: a placeholder record is a JSON object with the fields "
            f"{sorted(_RECORD_FIELDS)}, got {type(record).__name__}"
        )
    fmt = record.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt not in _FIELDS_BY_FORMAT:
        raise ValueError(
            f"{where}: record format {repr(fmt)[:80]}; adntn reads formats "
            f"{sorted(_FIELDS_BY_FORMAT)} (re-export the model, or upgrade adntn)"
        )
    if set(record) != _FIELDS_BY_FORMAT[fmt]:
        raise ValueError(
            f"{where}: a format-{fmt} placeholder record has the fields "
            f"{sorted(_FIELDS_BY_FORMAT[fmt])}, got {sorted(record)}"
        )
    tile_rows = check_tile_rows(record.get("tile_rows"), where=f"{where}: ")
    if fmt == 2 and tile_rows is None:
        raise ValueError(
            f"{where}: tile_rows=None is not valid: valid tile_rows in a format-2 record: an "
            f"int in 1..{MAX_TILE_ROWS} (rows per regenerate tile)"
        )
    if record["op_type"] not in OP_TYPES.values():
        raise ValueError(
            f"{where}: op_type {str(record['op_type'])[:80]!r}; valid: {sorted(OP_TYPES.values())}"
        )
    inputs, nodes, attrs = record["inputs"], record["nodes"], record["attributes"]
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= _MAX_RECORD_NODES:
        raise ValueError(f"{where}: 'inputs' must list the layer's input and parameters")
    if not isinstance(nodes, list) or not 1 <= len(nodes) <= _MAX_RECORD_NODES:
        raise ValueError(f"{where}: 'nodes' must list 1..{_MAX_RECORD_NODES} node names")
    if not isinstance(attrs, dict):
        raise ValueError(f"{where}: 'attributes' must be an object")
    names = [_name(n, f"{where} inputs") for n in inputs]
    output = _name(record["output"], f"{where} output")
    emitted = tuple(_name(n, f"{where} nodes") for n in nodes)
    if len(set(emitted)) != len(emitted):
        raise ValueError(f"{where}: 'nodes' repeats a node name")
    checked = {_name(k, f"{where} attributes"): _attribute(k, v, where) for k, v in attrs.items()}
    if (checked.get("layer") or "layer") != layer:
        raise ValueError(
            f"{where}: the record's layer {str(checked.get('layer'))[:80]!r} is not {layer!r}"
        )
    node = helper.make_node(
        record["op_type"],
        names,
        [output],
        name=f"{layer}/{record['op_type']}",
        domain=ADNTN_DOMAIN,
        **checked,
    )
    placeholder_param_names(node)  # roles match the parameter inputs
    return PlaceholderRecord(layer, node, emitted, tile_rows)


def read_placeholder_records(model: onnx.ModelProto) -> dict[str, PlaceholderRecord]:
    """Layer prefix -> its :class:`PlaceholderRecord`, from ``adntn.placeholder.*`` metadata.

    The file is untrusted: names, sizes, attribute names and types and the record format
    are checked (``ValueError`` naming the metadata key); the plan itself is validated when
    the placeholder is rebuilt (:func:`spec_from_node`). Files without records give ``{}``.
    """
    return {
        rec.name: rec
        for rec in (
            _read_record(p.key, p.value)
            for p in model.metadata_props
            if p.key.startswith(PLACEHOLDER_RECORD_KEY)
        )
    }
