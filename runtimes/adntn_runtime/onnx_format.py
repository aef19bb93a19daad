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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from adntn_runtime.layer_spec import ConvSpec, LayerSpec
from adntn_runtime.plan import ADNTNPlan

__all__ = [
    "ADNTN_DOMAIN",
    "IR_VERSION",
    "NO_FOLDING_SESSION_OPTIONS",
    "OP_TYPES",
    "SESSION_OPTIONS_KEY",
    "default_opset",
    "is_placeholder",
    "param_inits",
    "placeholder_layers",
    "placeholder_node",
    "placeholder_param_names",
    "record_layer_metadata",
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
