"""Export whole models with ADNTN layers to ONNX, in any run mode.

:func:`export_onnx` works in three stages:

1. **Trace with placeholders.** Each ADNTN layer is swapped (for the duration of the call)
   for a parameter-free module that calls a torch custom op
   (``adntn_onnx::linear_placeholder`` / ``adntn_onnx::conv2d_placeholder``, defined with
   ``torch.library.custom_op`` and a fake implementation giving the output shape). The
   dynamo exporter (``torch.onnx.export(..., dynamo=True, optimize=False)``) translates each
   call, through ``custom_translation_table``, to a node ``ai.adntn::ExportPlaceholder``
   carrying the layer's dotted name. The dense parts of the model (convs, linears, ReLU,
   flatten, ...) are exported by torch as usual; the ADNTN cores never enter the traced
   graph, so no folded ADNTN weight can land in the file.
2. **Placeholders.** Each ``ExportPlaceholder`` becomes ``ai.adntn::ADNTNLinear`` /
   ``ai.adntn::ADNTNConv2d`` whose inputs are the data input plus the cores (and bias) as
   initializers and whose attributes hold the plan JSON, the bias kind and the conv
   parameters (:func:`adntn_runtime.onnx_format.placeholder_node`). ``mode="auto"`` stops
   here: the torch-free runtime later substitutes each layer in the mode its policy picks
   with :func:`adntn_runtime.substitution.lower_model`.
3. **Lowering.** Otherwise :func:`~adntn_runtime.substitution.lower_model` substitutes every
   placeholder by its ``fused`` / ``regenerate`` / ``materialize`` / ``dense`` subgraph,
   regenerate tiles of ``tile_rows`` rows (default: each layer's ``layer.tile_rows``, else the
   plan's), and records each layer's placeholder and tile rows for ``adntn compile``.

Every export is validated with ``onnx.checker.check_model(full_check=True)``, carries
``adntn`` metadata (producer, per-layer network / bond dims / mode / ratio and, for
regenerate, ``adntn.session_options``: constant folding off), is written with IR version
:data:`~adntn_runtime.onnx_format.IR_VERSION`, and goes to a temporary file renamed into
place, so a failure never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from adntn_export.layers import ADNTNConv2d, ADNTNLayer, ADNTNLinear
from adntn_runtime.files import ONNX_FORMAT, ONNX_FORMAT_KEY, atomic_write
from adntn_runtime.layer_spec import ConvSpec, LayerSpec
from adntn_runtime.modes import ExportMode, LoweringMode, parse_mode
from adntn_runtime.onnx_format import (
    ADNTN_DOMAIN,
    IR_VERSION,
    placeholder_node,
    record_layer_metadata,
    register_schemas,
    set_metadata,
)
from adntn_runtime.plan import check_tile_rows
from adntn_runtime.substitution import lower_model

__all__ = ["EXPORT_MODES", "export_onnx", "export_onnx_model", "layer_spec"]

#: Modes accepted by :func:`export_onnx` as strings (an alias of :class:`ExportMode`).
EXPORT_MODES: tuple[str, ...] = tuple(m.value for m in ExportMode)
_TRACE_OP = "ExportPlaceholder"
#: torch.export's pytree deprecation warning, raised inside torch itself on every export.
_LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


# ---------------------------------------------------------------------------- custom ops
# Each op's one function is both its eager kernel and its fake (shape-only) kernel: zeros of
# the output shape (a fake tensor while tracing).
def _linear_zeros(x: torch.Tensor, layer: str, out_features: int) -> torch.Tensor:
    """Stands for an ADNTN linear layer during export; eager calls return zeros."""
    return x.new_zeros(*x.shape[:-1], out_features)


_linear_placeholder = torch.library.custom_op(
    "adntn_onnx::linear_placeholder", _linear_zeros, mutates_args=()
)
_linear_placeholder.register_fake(_linear_zeros)


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _conv_output_shape(
    x: torch.Tensor,
    out_channels: int,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> tuple[int, int, int, int]:
    h, w = (
        _conv_out(x.shape[2 + d], kernel[d], stride[d], padding[d], dilation[d]) for d in (0, 1)
    )
    return (x.shape[0], out_channels, h, w)


def _conv2d_zeros(
    x: torch.Tensor,
    layer: str,
    out_channels: int,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> torch.Tensor:
    """Stands for an ADNTN convolution during export; eager calls return zeros."""
    return x.new_zeros(_conv_output_shape(x, out_channels, kernel, stride, padding, dilation))


_conv2d_placeholder = torch.library.custom_op(
    "adntn_onnx::conv2d_placeholder", _conv2d_zeros, mutates_args=()
)
_conv2d_placeholder.register_fake(_conv2d_zeros)


def _register_trace_schema() -> None:
    from onnx.defs import OpSchema

    if onnx.defs.has(_TRACE_OP, ADNTN_DOMAIN):
        return
    param = OpSchema.FormalParameter
    onnx.defs.register_schema(
        OpSchema(
            _TRACE_OP,
            ADNTN_DOMAIN,
            1,
            doc="Export-time stand-in for an ADNTN layer (replaced before the file is written).",
            inputs=[param("x", "T")],
            outputs=[param("y", "T")],
            type_constraints=[("T", ["tensor(float)"], "float32 tensors")],
            attributes=[OpSchema.Attribute("layer", OpSchema.AttrType.STRING, "layer name")],
        )
    )


def _translation_table() -> dict:
    import onnxscript

    _register_trace_schema()
    register_schemas()
    opset = onnxscript.values.Opset(ADNTN_DOMAIN, 1)

    def linear(x, layer: str, out_features: int):  # noqa: ANN001, ANN202
        return getattr(opset, _TRACE_OP)(x, layer=layer)

    def conv(x, layer: str, out_channels: int, kernel, stride, padding, dilation):  # noqa: ANN001, ANN202
        return getattr(opset, _TRACE_OP)(x, layer=layer)

    return {
        torch.ops.adntn_onnx.linear_placeholder.default: linear,
        torch.ops.adntn_onnx.conv2d_placeholder.default: conv,
    }


class _Placeholder(nn.Module):
    """Parameter-free stand-in for one ADNTN layer during tracing."""

    def __init__(self, name: str, layer: ADNTNLayer) -> None:
        super().__init__()
        self.layer_name = name
        self.kind = "conv2d" if isinstance(layer, ADNTNConv2d) else "linear"
        self.out = layer.plan.out_features
        self.width = layer.in_channels if isinstance(layer, ADNTNConv2d) else layer.in_features
        if isinstance(layer, ADNTNConv2d):
            self.conv = (
                list(layer.kernel_size),
                list(layer.stride),
                list(layer.padding),
                list(layer.dilation),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = 1 if self.kind == "conv2d" else -1
        if (self.kind == "conv2d" and x.dim() != 4) or x.shape[dim] != self.width:
            want = f"(N, {self.width}, H, W)" if self.kind == "conv2d" else f"(..., {self.width})"
            raise ValueError(
                f"ADNTN layer {self.layer_name or 'layer'!r} gets an input of shape "
                f"{tuple(x.shape)}; valid: {want}"
            )
        if self.kind == "conv2d":
            return torch.ops.adntn_onnx.conv2d_placeholder(x, self.layer_name, self.out, *self.conv)
        return torch.ops.adntn_onnx.linear_placeholder(x, self.layer_name, self.out)


# ---------------------------------------------------------------------------- layer specs
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def layer_spec(layer: ADNTNLayer, name: str = "", *, input_rank: int = 2) -> LayerSpec:
    """The framework-free :class:`~adntn_runtime.layer_spec.LayerSpec` of a torch layer."""
    if not isinstance(layer, ADNTNLayer):
        raise TypeError(f"layer_spec needs an ADNTNLinear or ADNTNConv2d, got {type(layer)}")
    cores = {k: _np(v) for k, v in layer.weight_generator.cores.items()}
    bias = _np(layer.bias) if layer.bias_kind == "dense" else None
    bias_plan = bias_cores = None
    if layer.bias_kind == "generated":
        gen = layer.bias_generator
        assert gen is not None
        bias_plan = gen.plan
        bias_cores = {k: _np(v) for k, v in gen.cores.items()}
    conv = None
    if isinstance(layer, ADNTNConv2d):
        conv = ConvSpec(
            layer.in_channels,
            tuple(layer.kernel_size),
            tuple(layer.stride),
            tuple(layer.padding),
            tuple(layer.dilation),
        )
        input_rank = 4
    return LayerSpec(
        name=name,
        kind="conv2d" if conv else "linear",
        plan=layer.plan,
        cores=cores,
        bias_kind=layer.bias_kind,
        bias=bias,
        bias_plan=bias_plan,
        bias_cores=bias_cores,
        conv=conv,
        input_rank=input_rank,
    )


@contextlib.contextmanager
def _swapped(model: nn.Module) -> Iterator[tuple[nn.Module, dict[str, ADNTNLayer]]]:
    """Swap every ADNTN layer for a placeholder (restored on exit); yields (root, layers)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, ADNTNLayer)}
    if "" in layers:  # the model is itself one ADNTN layer
        yield _Placeholder("", layers[""]), layers
        return
    parents = dict(model.named_modules())
    done: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, layer in layers.items():
            parent_name, _, attr = name.rpartition(".")
            parent = parents[parent_name]
            setattr(parent, attr, _Placeholder(name, layer))
            done.append((parent, attr, layer))
        yield model, layers
    finally:
        for parent, attr, layer in reversed(done):
            setattr(parent, attr, layer)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


# ---------------------------------------------------------------------------- export
def _check_finite(layers: Mapping[str, ADNTNLayer]) -> None:
    """Refuse ADNTN layers holding NaN / Inf (cores, bias, bias generator)."""
    for name, layer in layers.items():
        for tensor_name, tensor in layer.named_parameters():
            bad = int((~torch.isfinite(tensor.detach())).sum())
            if bad:
                raise ValueError(
                    f"ADNTN layer {name or 'layer'!r}: {tensor_name} holds {bad} NaN/Inf "
                    "value(s); valid: finite values (pass allow_nonfinite=True, or "
                    "--allow-nonfinite on the command line, to export it anyway)"
                )


def _expects(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"an input (..., {module.in_features})"
    if isinstance(module, nn.Conv2d):
        return f"an input (N, {module.in_channels}, H, W)"
    if isinstance(module, _Placeholder):
        if module.kind == "conv2d":
            return f"an input (N, {module.width}, H, W)"
        return f"an input (..., {module.width})"
    return "an input of another shape"


def _check_example(root: nn.Module, x: torch.Tensor) -> None:
    """Run the model (ADNTN layers as placeholders, so cheap) on ``x`` once, eagerly, so that an
    input of the wrong shape fails here, naming the layer, rather than deep in the exporter."""
    names = {id(m): n for n, m in root.named_modules()}
    entered: list[nn.Module] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, _args: entered.append(mod))
        for m in root.modules()
        if not list(m.children()) or isinstance(m, _Placeholder)
    ]
    try:
        root(x)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not entered:
            raise ValueError(
                f"example_input of shape {tuple(x.shape)} does not fit the model: {first}"
            ) from None
        mod = entered[-1]
        name = getattr(mod, "layer_name", None) if isinstance(mod, _Placeholder) else None
        name = name if name is not None else names.get(id(mod), "?")
        kind = "ADNTN" if isinstance(mod, _Placeholder) else type(mod).__name__
        raise ValueError(
            f"example_input of shape {tuple(x.shape)} does not fit the model: layer "
            f"{name or 'layer'!r} ({kind}) fails ({first}); valid: {_expects(mod)} at that layer"
        ) from None
    finally:
        for h in hooks:
            h.remove()


def _resolve_mode(
    mode: object, layers: Mapping[str, ADNTNLayer]
) -> ExportMode | dict[str, LoweringMode]:
    """The export's mode, validated once: one for every layer, or layer name -> mode.

    ``None`` follows what each layer says (``layer.mode``).
    """
    if mode is None:
        return {name: LoweringMode(layer.mode) for name, layer in layers.items()}
    if isinstance(mode, Mapping):
        return {
            name: parse_mode(m, LoweringMode, name=f"mode[{name!r}]") for name, m in mode.items()
        }
    mode = parse_mode(mode, ExportMode)
    if mode is ExportMode.FUSED:
        bad = {n or "layer": layer.plan.final_activation for n, layer in layers.items()}
        bad = {n: a for n, a in bad.items() if a is not None}
        if bad:
            raise ValueError(
                f"mode 'fused' needs a linear top step, but layers {sorted(bad)} have "
                f"final_activation {bad}; valid modes for them: ['regenerate', 'materialize', "
                "'dense', 'auto'] (or pass a dict of per-layer modes)"
            )
    return mode


def _resolve_tile_rows(
    tile_rows: object, layers: Mapping[str, ADNTNLayer]
) -> int | dict[str, int | None]:
    """Rows per regenerate tile, validated: ``tile_rows`` for every layer, or (``None``) what
    each layer says (``layer.tile_rows``; ``None`` there: the plan's default)."""
    if tile_rows is not None:
        checked = check_tile_rows(tile_rows)
        assert checked is not None
        return checked
    return {
        name: check_tile_rows(layer.tile_rows, where=f"ADNTN layer {name or 'layer'!r}: ")
        for name, layer in layers.items()
    }


@contextlib.contextmanager
def _quiet_registry() -> Iterator[None]:
    """Silence the exporter's "torchvision is not installed, skipping torchvision::nms"
    warnings: adntn never uses torchvision ops, so they only confuse users."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _torch_export(
    root: nn.Module, x: torch.Tensor, opset: int, table: Any, dynamic_shapes: Any
) -> Any:
    """``torch.onnx.export`` (dynamo) of ``root`` on ``x``, without torch's own noise."""
    with warnings.catch_warnings():
        # torch's exporter trips its own LeafSpec deprecation on every export; users cannot
        # act on it. Only that message is silenced, only here.
        warnings.filterwarnings("ignore", message=_LEAFSPEC_WARNING, category=FutureWarning)
        return torch.onnx.export(
            root,
            (x,),
            dynamo=True,
            opset_version=opset,
            optimize=False,
            verbose=False,
            custom_translation_table=table,
            dynamic_shapes=dynamic_shapes,
            input_names=["input"],
            output_names=["output"],
        )


def export_onnx_model(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    mode: ExportMode | str | Mapping[str, str] | None = None,
    opset: int = 18,
    dynamic_batch: bool = True,
    einsum: bool = True,
    native_gelu: bool | None = None,
    tile_rows: int | None = None,
    allow_nonfinite: bool = False,
) -> onnx.ModelProto:
    """Like :func:`export_onnx` but returns the validated ``ModelProto`` instead of writing it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, ADNTNLayer)}
    mode = _resolve_mode(mode, layers)
    tiles = _resolve_tile_rows(tile_rows, layers)
    if not allow_nonfinite:
        _check_finite(layers)
    top = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not 18 <= opset <= top:
        raise ValueError(
            f"opset {opset!r} is not supported by the export; valid opsets: 18..{top} "
            "(the torch dynamo exporter emits opset 18 or later)"
        )
    table = _translation_table()
    x = example_input.detach().to(torch.float32)
    batch = int(x.shape[0]) if x.dim() else 1
    if dynamic_batch and x.dim() and x.shape[0] == 1:
        x = x.expand(2, *x.shape[1:]).contiguous()  # torch.export specialises size-1 dims
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch and x.dim() else None
    with _eval_mode(model), _swapped(model) as (root, _), torch.no_grad(), _quiet_registry():
        _check_example(root, example_input.detach().to(torch.float32))
        program = _torch_export(root, x, opset, table, dynamic_shapes)
    proto = program.model_proto
    specs = _insert_placeholders(proto, layers, x.dim())
    if mode is not ExportMode.AUTO:
        proto = lower_model(
            proto,
            mode,
            einsum=einsum,
            native_gelu=native_gelu,
            batch_hint=batch,
            tile_rows=tiles if isinstance(tiles, int) else {s.name: tiles[s.name] for s in specs},
        )
    _finish(proto, mode, specs)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _insert_placeholders(
    proto: onnx.ModelProto, layers: Mapping[str, ADNTNLayer], input_rank: int
) -> list[LayerSpec]:
    """Replace each traced ``ExportPlaceholder(x)`` by the layer's ``ADNTNLinear`` /
    ``ADNTNConv2d(x, cores..., bias)`` placeholder; returns the layers' specs."""
    graph = proto.graph
    new_nodes, new_inits, specs = [], [], []
    for node in graph.node:
        if not (node.domain == ADNTN_DOMAIN and node.op_type == _TRACE_OP):
            new_nodes.append(node)
            continue
        name = onnx.helper.get_attribute_value(node.attribute[0]).decode()
        layer = layers[name]
        rank = input_rank if name == "" else 2
        if isinstance(layer, ADNTNLinear) and name != "":
            rank = _input_rank(proto, node.input[0])
        spec = layer_spec(layer, name, input_rank=rank)
        if spec.conv is not None:
            hw = _static_hw(proto, node.output[0])
            if hw is not None:
                spec.conv = dataclasses.replace(spec.conv, output_hw=hw)
        placeholder, inits = placeholder_node(
            spec, input_name=node.input[0], output_name=node.output[0]
        )
        new_nodes.append(placeholder)
        new_inits.extend(inits)
        specs.append(spec)
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    if not any(imp.domain == ADNTN_DOMAIN for imp in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(ADNTN_DOMAIN, 1))
    return specs


def _static_hw(proto: onnx.ModelProto, value: str) -> tuple[int, int] | None:
    for vi in [*proto.graph.value_info, *proto.graph.output]:
        if vi.name == value and vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim
            if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
                return (dims[2].dim_value, dims[3].dim_value)
    return None


def _input_rank(proto: onnx.ModelProto, value: str) -> int:
    for vi in [*proto.graph.value_info, *proto.graph.input]:
        if vi.name == value and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return 2


def _finish(proto: onnx.ModelProto, mode: object, specs: list[LayerSpec]) -> None:
    """Producer, IR version and ``adntn.*`` metadata (the file format's writers)."""
    from adntn_export import __version__

    proto.producer_name = "adntn"
    proto.producer_version = __version__
    proto.ir_version = IR_VERSION
    set_metadata(proto, ONNX_FORMAT_KEY, str(ONNX_FORMAT))
    set_metadata(proto, "adntn.producer", f"adntn {__version__}")
    set_metadata(
        proto, "adntn.export_mode", json.dumps(mode if isinstance(mode, str) else dict(mode))
    )
    if mode == ExportMode.AUTO:  # a lowered layer's record was written by the substitution
        for spec in specs:
            record_layer_metadata(proto, spec, ExportMode.AUTO)


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    *,
    mode: ExportMode | str | Mapping[str, str] | None = None,
    opset: int = 18,
    dynamic_batch: bool = True,
    einsum: bool = True,
    native_gelu: bool | None = None,
    tile_rows: int | None = None,
    allow_nonfinite: bool = False,
) -> Path:
    """Export ``model`` (with any number of ADNTN layers) to an ONNX file; returns the path.

    Args:
        model: the model; ADNTN layers are found with ``named_modules``.
        example_input: one input tensor (float32), e.g. ``torch.randn(1, 1, 28, 28)``.
        path: where to write the ``.onnx`` file (written atomically).
        mode: ``fused``, ``regenerate``, ``materialize``, ``dense`` (the generated weight as
            an initializer, for comparison), ``auto`` (``ai.adntn`` placeholders with the
            plan and cores, for the runtime to lower), or layer name -> mode; ``None``
            (default): each layer in its own ``layer.mode``.
        opset: default-domain opset (18 or later; ``Gelu`` is native from 20).
        dynamic_batch: make the first input dimension symbolic (``batch``).
        einsum: ``Einsum`` nodes; ``False``: Transpose/Reshape/MatMul only (mobile builds).
        native_gelu: see :func:`adntn_runtime.layer_lowering.lower_layer`.
        tile_rows: rows per tile in regenerate mode, for every layer (1..2**31-1); ``None``
            (default): each layer's ``layer.tile_rows`` (``None`` there: the plan's, about
            1/64 of the rows). Recorded in the file, so ``adntn compile`` tiles alike.
        allow_nonfinite: export ADNTN layers holding NaN / Inf (refused by default).

    Raises:
        ValueError: bad mode / opset / tile_rows / a mode the network does not support, an example
            input the model cannot take (checked before tracing), NaN / Inf in a layer.
        PermissionError: ``path``'s directory is not writable. Nothing is written on error.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(
            errno.EISDIR,
            "it is an existing directory; give a file name (e.g. DIR/model.onnx)",
            str(target),
        )
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(
            f"cannot write {str(target)!r}: directory {str(parent)!r} does not exist"
        )
    if not os.access(parent, os.W_OK):
        raise PermissionError(
            f"cannot write {str(target)!r}: directory {str(parent)!r} is not writable"
        )
    with atomic_write(target) as f:  # the temporary file exists before the export runs
        proto = export_onnx_model(
            model,
            example_input,
            mode=mode,
            opset=opset,
            dynamic_batch=dynamic_batch,
            einsum=einsum,
            native_gelu=native_gelu,
            tile_rows=tile_rows,
            allow_nonfinite=allow_nonfinite,
        )
        f.write(proto.SerializeToString())
    return target
