"""Lower one ADNTN layer to ONNX nodes in a given mode, torch-free.

Imports numpy and onnx only, so the device runtime can lower a layer in the mode its policy
picks without the host toolchain. The modes (:class:`~adntn_runtime.modes.LoweringMode`):
``dense`` (the generated weight as an initializer), ``materialize`` (the weight built in-graph
once from the core initializers: ONNX Runtime folds it at load), ``regenerate`` (the same
steps once per row tile on ``Slice``-d leaf initializers, each tile multiplied with ``x`` and
the results concatenated; needs constant folding off, see
:func:`adntn_runtime.onnx_format.session_options_for`) and ``fused`` (``x`` contracted into
the network; ORT may fold the ``x``-independent lower levels at load).

Design choice: **inline nodes with hierarchical names, not ONNX local functions.** Every
node, value and initializer of a layer is named ``{layer}/...``, by level and tile, e.g.
``classifier.1/level2/node2_0.t.0`` or ``classifier.1/tile3/level1/node1_0.pre``, and carries
``metadata_props`` ``adntn.layer`` / ``adntn.level``; Netron shows the names (and the
placeholder form shows a layer as one node). Functions were rejected because (1) ONNX
functions cannot hold initializers, so the cores would have to be passed in anyway;
(2) ORT inlines functions before optimising, so they buy nothing at run time; and (3) the
other consumers in this repo (the TVM Einsum rewrite, ORT's mobile-usability checker,
graph surgery in the runtime) walk ``graph.node`` only.

Conv ``fused``, split plan (``layout="split"``): a low-rank convolution. The weight is
``W = left @ right`` (:meth:`~adntn_runtime.plan.ADNTNPlan.low_rank`: the row and the column
subtree's values, the root core contracted into one of them), so
``y = Conv1x1(Conv(x, K), L) + bias`` with ``K = right`` as a ``(rank, C, kh, kw)`` kernel
(the layer's strides, pads and dilations) and ``L = left`` as an ``(out, rank, 1, 1)`` one.
Both are built in-graph from the core initializers (the materialize steps below the root,
then one contraction; ORT folds them at load), or, given the precomputed fused constants
(the runtime's way), computed here once in numpy from the constants (the root's children)
and the root core (:func:`~adntn_runtime.reference.low_rank_factors`) and stored as
initializers. Padded rows are cropped from ``L``, padded columns from ``K``.

Conv ``fused``, paired plan: im2col as a grouped ``Conv`` against a fixed one-hot
patch-extraction kernel of shape ``(C*kh*kw, 1, kh, kw)`` (``C*(kh*kw)**2`` floats: 20 KiB
for 64 channels 3x3), which ORT and ``onnx.reference`` both run, followed by the fused linear
lowering.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from adntn_runtime.layer_spec import LayerSpec
from adntn_runtime.modes import LoweringMode, parse_mode
from adntn_runtime.onnx_builder import OnnxBuilder
from adntn_runtime.onnx_format import (
    param_inits,
)
from adntn_runtime.plan import ADNTNPlan
from adntn_runtime.reference import low_rank_factors
from adntn_runtime.schedule import Contract, Schedule

__all__ = ["GELU_OPSET", "LOWERING_MODES", "MIN_OPSET", "LoweredLayer", "lower_layer"]

#: Modes a layer can be lowered in, as strings (an alias of :class:`LoweringMode`).
LOWERING_MODES: tuple[str, ...] = tuple(m.value for m in LoweringMode)
#: Lowest opset emitted (Slice/Squeeze with tensor inputs, Einsum).
MIN_OPSET = 13
#: Opset from which ``Gelu`` is a native ONNX operator.
GELU_OPSET = 20


@dataclass
class LoweredLayer:
    """Nodes and initializers of one lowered layer, and what it needs from the session.

    ``info``: how it was lowered, recorded in the file's ``adntn.layer.<name>`` metadata.
    """

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    needs_no_constant_folding: bool = False
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Options:
    """What the per-mode lowerings need besides the layer: the batch the fused order is
    optimised for, rows per regenerate tile, the precomputed fused constants."""

    batch: int
    tile_rows: int | None
    constants: Mapping[str, np.ndarray] | None


# ---------------------------------------------------------------------------- checks
def _check_mode(mode: object, spec: LayerSpec) -> LoweringMode:
    mode = parse_mode(mode, LoweringMode)
    if mode is LoweringMode.FUSED and not spec.plan.top_is_linear:
        raise ValueError(
            f"layer {spec.prefix!r}: mode 'fused' needs a linear top step, but the plan has "
            f"final_activation={spec.plan.final_activation!r}; valid modes for this layer: "
            "['regenerate', 'materialize', 'dense']"
        )
    return mode


def _check_opset(opset: object) -> int:
    top = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise ValueError(
            f"opset {opset!r} is not supported; valid opsets: {MIN_OPSET}..{top} "
            f"(Einsum needs >= 12, native Gelu >= {GELU_OPSET})"
        )
    return opset


# ---------------------------------------------------------------------------- generators
def _weight_2d(
    b: OnnxBuilder, plan: ADNTNPlan, cores: Mapping[str, str], tag: str, *, crop: bool = True
) -> str:
    """The ``(out, in)`` weight built in-graph from core values (materialize schedule)."""
    w = b.run(plan.schedule("materialize"), dict(cores), scope=f"{tag}/" if tag else "")
    w = b.reshape(w, [plan.rows_padded, plan.cols_padded], f"{tag}/weight.padded")
    if crop and (plan.rows_padded, plan.cols_padded) != (plan.out_features, plan.in_features):
        w = b.slice(w, [0, 0], [plan.out_features, plan.in_features], [0, 1], f"{tag}/weight")
    return w


def _bias_value(
    b: OnnxBuilder, spec: LayerSpec, params: Mapping[str, str], mode: str
) -> str | None:
    if spec.bias_kind == "none":
        return None
    if spec.bias_kind == "dense":
        return params["bias"]
    if mode == "dense":
        bias = spec.dense_bias()
        assert bias is not None
        return b.tensor("dense/bias", bias)
    assert spec.bias_plan is not None
    bp = spec.bias_plan
    cores = {k: params[f"bias_core/{k}"] for k in bp.cores}
    w = _weight_2d(b, bp, cores, "bias_generator", crop=False)
    w = b.slice(w, [0, 0], [bp.out_features, 1], [0, 1], "bias_generator/crop")
    return b.reshape(w, [bp.out_features], "bias_generator/bias")


def _tile_weights(
    b: OnnxBuilder, plan: ADNTNPlan, cores: Mapping[str, str], tile_rows: int | None
) -> list[tuple[str, int]]:
    """One ``(rows, cols_padded)`` value per tile (rows cropped to ``out``), with its row count."""
    sch = plan.schedule("regenerate", tile_rows=tile_rows)
    # Steps that touch no sliced leaf are the same in every tile: emit them once.
    per_tile = {leaf for tile in sch.tiles for leaf, _, _ in tile.slices}
    for step in sch.steps:
        if any(
            v in per_tile for v in (step.inputs if isinstance(step, Contract) else (step.input,))
        ):
            per_tile.add(step.output)
    shared = dict(cores)
    b.run(sch, shared, scope="shared/", only={s.output for s in sch.steps} - per_tile)
    out = []
    for n, tile in enumerate(sch.tiles):
        env = dict(shared)
        for leaf, start, stop in tile.slices:
            env[leaf] = b.slice(cores[leaf], [start], [stop], [0], f"tile{n}/slice/{leaf}")
        dims = tile.dims(sch.dims, sch.row_legs)
        w = b.run(sch, env, scope=f"tile{n}/", dims=dims, only=per_tile)
        rows = tile.row_stop - tile.row_start
        w = b.reshape(w, [rows, plan.cols_padded], f"tile{n}/weight")
        keep = min(tile.row_stop, plan.out_features) - tile.row_start
        if keep < rows:
            w = b.slice(w, [0], [keep], [0], f"tile{n}/weight.crop")
        out.append((w, keep))
    return out


def _check_constants(b: OnnxBuilder, sch: Schedule, constants: Mapping[str, np.ndarray]) -> None:
    if set(constants) != sch.cached_values:
        raise ValueError(
            f"layer {b.prefix!r}: constants must be the fused schedule's cached values "
            f"{sorted(sch.cached_values)}, got {sorted(constants)}"
        )


def _fused_2d(
    b: OnnxBuilder,
    plan: ADNTNPlan,
    cores: Mapping[str, str],
    x2d: str,
    batch: int,
    constants: Mapping[str, np.ndarray] | None,
) -> str:
    """``x2d @ W.T`` with ``x`` contracted into the network (``x2d``: ``(batch, in)``).

    ``constants``: the schedule's cached values (:attr:`Schedule.cached_values`), already
    computed: stored as initializers, and only the steps that read ``x`` are emitted.
    """
    pad = plan.cols_padded - plan.in_features
    if pad:
        x2d = b.node("Pad", [x2d, b.ints([0, 0, 0, pad])], "fused/x.pad")
    x = b.reshape(x2d, [-1, *plan.col_factors], "fused/x.sites")
    sch = plan.schedule("fused", batch=batch)
    env = {**cores, "x": x}
    only = None
    if constants is not None:
        _check_constants(b, sch, constants)
        for value, array in constants.items():
            env[value] = b.constant(f"fused/cached/{value}", array)
        only = {step.output for step in sch.steps if step.uses_input}
    y = b.run(sch, env, only=only)
    y = b.reshape(y, [-1, plan.rows_padded], "fused/y.rows")
    if plan.rows_padded != plan.out_features:
        y = b.slice(y, [0], [plan.out_features], [1], "fused/y.crop")
    return y


def _linear_2d(
    b: OnnxBuilder,
    spec: LayerSpec,
    mode: str,
    params: Mapping[str, str],
    x2d: str,
    bias: str | None,
    *,
    opts: _Options,
    output: str | None,
) -> str:
    plan = spec.plan
    cores = {k: params[f"core/{k}"] for k in plan.cores}

    def gemm(w: str, name: str) -> str:
        inputs = [x2d, w] + ([] if bias is None else [bias])
        return b.node("Gemm", inputs, name, output=output, transB=1)

    if mode == "dense":
        return gemm(b.tensor("dense/weight", spec.dense_weight()), "gemm")
    if mode == "materialize":
        return gemm(_weight_2d(b, plan, cores, "generator"), "gemm")
    if mode == "regenerate":
        pad = plan.cols_padded - plan.in_features
        xp = b.node("Pad", [x2d, b.ints([0, 0, 0, pad])], "regenerate/x.pad") if pad else x2d
        parts = [
            b.node("Gemm", [xp, w], f"tile{n}/gemm", transB=1)
            for n, (w, _) in enumerate(_tile_weights(b, plan, cores, opts.tile_rows))
        ]
        final = output if bias is None else None
        y = b.node("Concat", parts, "regenerate/concat", output=final, axis=1) if len(parts) > 1 \
            else b.node("Identity", parts, "regenerate/concat", output=final)  # fmt: skip
        return y if bias is None else b.node("Add", [y, bias], "bias.add", output=output)
    y = _fused_2d(b, plan, cores, x2d, opts.batch, opts.constants)
    if bias is None:
        return b.node("Identity", [y], "output", output=output)
    return b.node("Add", [y, bias], "bias.add", output=output)


def _low_rank_kernels(
    b: OnnxBuilder, spec: LayerSpec, cores: Mapping[str, str], opts: _Options
) -> tuple[str, str]:
    """The kernels ``K`` ``(rank, C, kh, kw)`` and ``L`` ``(out, rank, 1, 1)`` of a split
    convolution's fused lowering (see the module docstring)."""
    plan, conv = spec.plan, spec.conv
    assert conv is not None
    c, (kh, kw) = conv.in_channels, conv.kernel_shape
    out, inp = plan.out_features, plan.in_features
    form = plan.low_rank()
    r = form.rank
    if opts.constants is not None:  # the runtime's way: computed here, once, in numpy
        _check_constants(b, plan.schedule("fused", batch=opts.batch), opts.constants)
        left, right = low_rank_factors(plan, spec.cores, known=opts.constants)
        kernel = b.tensor("lowrank/kernel", right.astype(np.float32).reshape(r, c, kh, kw))
        return kernel, b.tensor("lowrank/mix", left.astype(np.float32).reshape(out, r, 1, 1))
    env = dict(cores)
    b.run(form.schedule(), env, scope="lowrank/")
    level = plan.root.height
    right = env[form.right]
    perm = form.right_perm(b.legs_of(right, form.right_legs))
    if plan.cols_padded == inp:
        kernel = b.view(right, perm, [r, c, kh, kw], "lowrank/kernel", level)
    else:
        right = b.view(right, perm, [r, plan.cols_padded], "lowrank/right", level)
        right = b.slice(right, [0], [inp], [1], "lowrank/right.crop")
        kernel = b.reshape(right, [r, c, kh, kw], "lowrank/kernel")
    left = env[form.left]
    perm = form.left_perm(b.legs_of(left, form.left_legs))
    if plan.rows_padded == out:
        return kernel, b.view(left, perm, [out, r, 1, 1], "lowrank/mix", level)
    left = b.view(left, perm, [plan.rows_padded, r], "lowrank/left", level)
    left = b.slice(left, [0], [out], [0], "lowrank/left.crop")
    return kernel, b.reshape(left, [out, r, 1, 1], "lowrank/mix")


def _conv(
    b: OnnxBuilder,
    spec: LayerSpec,
    mode: str,
    params: Mapping[str, str],
    x: str,
    bias: str | None,
    *,
    opts: _Options,
    output: str,
) -> str:
    plan, conv = spec.plan, spec.conv
    assert conv is not None
    c, (kh, kw) = conv.in_channels, conv.kernel_shape
    out_ch = plan.out_features
    cores = {k: params[f"core/{k}"] for k in plan.cores}
    attrs = conv.attributes()
    if mode in ("dense", "materialize"):
        if mode == "dense":
            w = b.tensor("dense/weight", spec.dense_weight().reshape(out_ch, c, kh, kw))
        else:
            w = b.reshape(_weight_2d(b, plan, cores, "generator"), [out_ch, c, kh, kw], "kernel")
        inputs = [x, w] + ([] if bias is None else [bias])
        return b.node("Conv", inputs, "conv", output=output, **attrs)
    bias4 = None if bias is None else b.reshape(bias, [1, out_ch, 1, 1], "bias.nchw")
    if mode == "regenerate":
        parts = []
        for n, (w, rows) in enumerate(_tile_weights(b, plan, cores, opts.tile_rows)):
            if plan.cols_padded != plan.in_features:
                w = b.slice(w, [0], [plan.in_features], [1], f"tile{n}/weight.cols")
            w = b.reshape(w, [rows, c, kh, kw], f"tile{n}/kernel")
            parts.append(b.node("Conv", [x, w], f"tile{n}/conv", **attrs))
        final = output if bias4 is None else None
        if len(parts) > 1:
            y = b.node("Concat", parts, "regenerate/concat", output=final, axis=1)
        else:
            y = b.node("Identity", parts, "regenerate/concat", output=final)
        return y if bias4 is None else b.node("Add", [y, bias4], "bias.add", output=output)
    if plan.layout == "split":  # fused: a low-rank convolution, Conv then Conv1x1
        kernel, mix = _low_rank_kernels(b, spec, cores, opts)
        t = b.node("Conv", [x, kernel], "lowrank/conv", **attrs)
        inputs = [t, mix] + ([] if bias is None else [bias])
        return b.node("Conv", inputs, "lowrank/conv1x1", output=output, kernel_shape=[1, 1])
    # fused: im2col with a one-hot grouped Conv, then the fused linear lowering.
    kk = kh * kw
    onehot = np.zeros((c * kk, 1, kh, kw), np.float32)
    for ch in range(c):
        for p in range(kk):
            onehot[ch * kk + p, 0, p // kw, p % kw] = 1.0
    cols = b.node("Conv", [x, b.tensor("im2col/kernel", onehot)], "im2col/conv", group=c, **attrs)
    nhwc = b.node("Transpose", [cols], "im2col/nhwc", perm=[0, 2, 3, 1])
    patches = b.reshape(nhwc, [-1, c * kk], "im2col/patches")
    y = _fused_2d(b, plan, cores, patches, opts.batch, opts.constants)
    if conv.output_hw is not None:
        y = b.reshape(y, [-1, *conv.output_hw, out_ch], "fused/y.nhwc")
    else:
        shape = b.node("Shape", [nhwc], "im2col/shape")
        bhw = b.slice(shape, [0], [3], [0], "im2col/bhw")
        y_shape = b.node("Concat", [bhw, b.ints([out_ch])], "fused/y.shape", axis=0)
        y = b.node("Reshape", [y, y_shape], "fused/y.nhwc")
    final = output if bias4 is None else None
    y = b.node("Transpose", [y], "fused/y.nchw", output=final, perm=[0, 3, 1, 2])
    return y if bias4 is None else b.node("Add", [y, bias4], "bias.add", output=output)


def lower_layer(
    spec: LayerSpec,
    mode: str,
    *,
    input_name: str,
    output_name: str,
    einsum: bool = True,
    opset: int = 18,
    native_gelu: bool | None = None,
    batch_hint: int = 1,
    tile_rows: int | None = None,
    param_names: Mapping[str, str] | None = None,
    fused_constants: Mapping[str, np.ndarray] | None = None,
) -> LoweredLayer:
    """Lower one ADNTN layer to ONNX nodes and initializers.

    Args:
        spec: the layer (plan, cores, bias, conv parameters).
        mode: ``fused``, ``regenerate``, ``materialize`` or ``dense``.
        input_name, output_name: the ONNX values the layer reads and writes.
        einsum: one ``Einsum`` per contraction step; ``False``: Transpose/Reshape/MatMul only.
        opset: target default-domain opset (``13..onnx.defs.onnx_opset_version()``).
        native_gelu: emit ``Gelu`` (needs opset >= 20); ``None``: native from opset 20,
            else the exact ``Erf`` decomposition.
        batch_hint: batch size the fused contraction order is optimised for (any batch runs).
        tile_rows: rows per tile in regenerate mode (default: the plan's).
        param_names: role (``core/leaf0``, ``bias``, ``bias_core/leaf0``) -> existing value
            name; roles not given get new initializers ``{layer}/cores/{core}`` etc.
        fused_constants: fused mode only: the ``x``-independent values of the schedule at
            ``batch_hint`` (:func:`adntn_runtime.reference.fused_constants`), stored as
            initializers instead of computed in-graph (the runtime's precomputation).

    Returns:
        The nodes (in topological order) and the new initializers.
    """
    mode = _check_mode(mode, spec)
    opset = _check_opset(opset)
    if native_gelu is None:
        native_gelu = opset >= GELU_OPSET
    elif native_gelu and opset < GELU_OPSET:
        raise ValueError(
            f"activation 'gelu' as a native ONNX Gelu node needs opset >= {GELU_OPSET}, got "
            f"opset {opset}; export with opset={GELU_OPSET} or later, or native_gelu=None/False "
            "to decompose it exactly with Erf"
        )
    b = OnnxBuilder(
        spec.prefix, opset, einsum=einsum, native_gelu=bool(native_gelu), batch_hint=batch_hint
    )
    params = dict(param_names or {})
    for role, name, array in param_inits(spec):
        if mode == "dense" and role != "bias":
            continue  # the dense mode stores the generated weight instead of the cores
        if role not in params:
            b._used.add(name)
            b.inits.append(numpy_helper.from_array(array, name))
            params[role] = name
    bias = _bias_value(b, spec, params, mode)
    kw = {"opts": _Options(batch_hint, tile_rows, fused_constants)}
    if spec.kind == "conv2d":
        _conv(b, spec, mode, params, input_name, bias, output=output_name, **kw)
    elif spec.input_rank == 2:
        _linear_2d(b, spec, mode, params, input_name, bias, output=output_name, **kw)
    else:
        x2d = b.reshape(input_name, [-1, spec.plan.in_features], "input.2d")
        y2d = _linear_2d(b, spec, mode, params, x2d, bias, output=None, **kw)
        lead = b.node("Shape", [input_name], "input.shape")
        lead = b.slice(lead, [0], [-1], [0], "input.lead")
        shape = b.node("Concat", [lead, b.ints([spec.out_features])], "output.shape", axis=0)
        b.node("Reshape", [y2d, shape], "output", output=output_name)
    return LoweredLayer(
        b.nodes,
        b.inits,
        needs_no_constant_folding=mode is LoweringMode.REGENERATE,
        info={"einsum": bool(einsum)},
    )
