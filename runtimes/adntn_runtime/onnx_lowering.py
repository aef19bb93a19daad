"""ONNX lowering of ADNTN layers: Einsum (or MatMul) + activation subgraphs, torch-free.

Imports numpy and onnx only (``onnxruntime`` lazily, in :func:`session_options_for`), so the
device runtime can lower a layer in the mode its policy picks without the host toolchain.

Two forms of a layer live in an ONNX file:

* the **placeholder** (``mode="auto"`` exports): one node ``ai.adntn::ADNTNLinear`` or
  ``ai.adntn::ADNTNConv2d`` whose inputs are the data input followed by the layer's stored
  parameters (core initializers, then the dense bias or the bias generator's cores) and whose
  attributes carry everything needed to rebuild the layer (:func:`placeholder_node`,
  :func:`spec_from_node`): ``plan`` (``ADNTNPlan.to_dict()`` as JSON), ``kind``,
  ``bias_kind``, ``bias_plan``, ``param_roles`` (one per parameter input: ``core/leaf0``,
  ``bias``, ``bias_core/leaf0``), ``input_rank`` and, for a conv, ``in_channels``,
  ``kernel_shape``, ``strides``, ``pads``, ``dilations``;
* the **lowering** of one mode (:func:`lower_layer`): ``dense`` (the generated weight as an
  initializer), ``materialize`` (the weight built in-graph once from the core initializers:
  ONNX Runtime folds it at load), ``regenerate`` (the same steps once per row tile on
  ``Slice``-d leaf initializers, each tile multiplied with ``x`` and the results
  concatenated; needs constant folding off, see :func:`session_options_for`) and ``fused``
  (``x`` contracted into the network; ORT may fold the ``x``-independent lower levels at
  load). :func:`lower_model` substitutes every placeholder of a model by its lowering.

Design choice: **inline nodes with hierarchical names, not ONNX local functions.** Every
node, value and initializer of a layer is named ``{layer}/...``, by level and tile, e.g.
``classifier.1/level2/node2_0.t.0`` or ``classifier.1/tile3/level1/node1_0.pre``, and carries
``metadata_props`` ``adntn.layer`` / ``adntn.level``; Netron shows the names (and the
placeholder form shows a layer as one node). Functions were rejected because (1) ONNX
functions cannot hold initializers, so the cores would have to be passed in anyway;
(2) ORT inlines functions before optimising, so they buy nothing at run time; and (3) the
other consumers in this repo (the TVM Einsum rewrite, ORT's mobile-usability checker,
graph surgery in the runtime) walk ``graph.node`` only.

Conv ``fused`` uses im2col as a grouped ``Conv`` against a fixed one-hot patch-extraction
kernel of shape ``(C*kh*kw, 1, kh, kw)`` (``C*(kh*kw)**2`` floats: 20 KiB for 64 channels
3x3), which ORT and ``onnx.reference`` both run, followed by the fused linear lowering.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from adntn_runtime.plan import ADNTNPlan
from adntn_runtime.reference import generate_weight
from adntn_runtime.schedule import BATCH, MAX_LABELS, Activate, Contract, Schedule

__all__ = [
    "ADNTN_DOMAIN",
    "IR_VERSION",
    "LOWERING_MODES",
    "MIN_OPSET",
    "NO_FOLDING_SESSION_OPTIONS",
    "ConvSpec",
    "LayerSpec",
    "LoweredLayer",
    "layer_model",
    "lower_layer",
    "lower_model",
    "placeholder_node",
    "placeholder_layers",
    "register_schemas",
    "session_options_for",
    "spec_from_node",
]

#: Domain of the placeholder ops.
ADNTN_DOMAIN = "ai.adntn"
#: Modes a layer can be lowered in.
LOWERING_MODES: tuple[str, ...] = ("fused", "regenerate", "materialize", "dense")
#: Lowest opset emitted (Slice/Squeeze with tensor inputs, Einsum).
MIN_OPSET = 13
#: Opset from which ``Gelu`` is a native ONNX operator.
GELU_OPSET = 20
#: IR version written into every model: one the pinned onnxruntime (1.31) loads.
IR_VERSION = 10
#: Metadata key declaring the session options a model needs.
SESSION_OPTIONS_KEY = "adntn.session_options"
#: The session options a model with a regenerate layer needs (constant folding off).
NO_FOLDING_SESSION_OPTIONS: dict[str, Any] = {
    "disabled_optimizers": ["ConstantFolding"],
    "config_entries": {"optimization.disable_specified_optimizers": "ConstantFolding"},
}
_OP_TYPES = {"linear": "ADNTNLinear", "conv2d": "ADNTNConv2d"}
_PLACEHOLDER_ATTRS = ["layer", "kind", "plan", "bias_kind", "param_roles", "input_rank"]


# ---------------------------------------------------------------------------- specs
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
        if self.kind not in _OP_TYPES:
            raise ValueError(f"unknown layer kind {self.kind!r}; valid kinds: {list(_OP_TYPES)}")
        if self.kind == "conv2d" and self.conv is None:
            raise ValueError(f"layer {self.name!r}: kind 'conv2d' needs conv parameters")
        if self.bias_kind not in ("dense", "generated", "none"):
            raise ValueError(
                f"layer {self.name!r}: unknown bias_kind {self.bias_kind!r}; "
                "valid: ['dense', 'generated', 'none']"
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


@dataclass
class LoweredLayer:
    """Nodes and initializers of one lowered layer, and what it needs from the session."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    needs_no_constant_folding: bool = False


def _prod(legs: Sequence[str], dims: Mapping[str, int], batch: int) -> int:
    return math.prod(batch if x == BATCH else dims[x] for x in legs)


# ---------------------------------------------------------------------------- checks
def _check_mode(mode: object, spec: LayerSpec) -> str:
    if not isinstance(mode, str) or mode not in LOWERING_MODES:
        raise ValueError(
            f"layer {spec.prefix!r}: unknown mode {mode!r}; valid modes: {list(LOWERING_MODES)}"
        )
    if mode == "fused" and not spec.plan.top_is_linear:
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


# ---------------------------------------------------------------------------- builder
class _Builder:
    """Collects the nodes and initializers of one layer under a name prefix."""

    def __init__(
        self, prefix: str, opset: int, *, einsum: bool, native_gelu: bool, batch_hint: int = 1
    ) -> None:
        self.prefix = prefix
        self.batch_hint = batch_hint
        self._views: dict[tuple, str] = {}
        #: ONNX value -> its leg order, for intermediates written in a non-declared order.
        self._legs: dict[str, tuple[str, ...]] = {}
        self.opset = opset
        self.einsum = einsum
        self.native_gelu = native_gelu
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._used: set[str] = set()
        self._consts: dict[tuple, str] = {}

    def unique(self, name: str) -> str:
        full = f"{self.prefix}/{name}"
        if full in self._used:
            n = 1
            while f"{full}_{n}" in self._used:
                n += 1
            full = f"{full}_{n}"
        self._used.add(full)
        return full

    def node(
        self,
        op: str,
        inputs: Sequence[str],
        name: str,
        *,
        output: str | None = None,
        level: int | None = None,
        **attrs: Any,
    ) -> str:
        full = self.unique(name)
        out = output or full
        node = helper.make_node(op, list(inputs), [out], name=full, **attrs)
        entry = node.metadata_props.add()
        entry.key, entry.value = "adntn.layer", self.prefix
        if level is not None:
            entry = node.metadata_props.add()
            entry.key, entry.value = "adntn.level", str(level)
        self.nodes.append(node)
        return out

    def tensor(self, name: str, array: np.ndarray) -> str:
        full = self.unique(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), full))
        return full

    def ints(self, values: Sequence[int]) -> str:
        key = ("i64", tuple(int(v) for v in values))
        if key not in self._consts:
            label = "_".join(str(v).replace("-", "m") for v in key[1]) or "empty"
            self._consts[key] = self.tensor(f"const/i{label}", np.array(key[1], dtype=np.int64))
        return self._consts[key]

    def scalar(self, value: float) -> str:
        key = ("f32", float(value))
        if key not in self._consts:
            self._consts[key] = self.tensor(f"const/f{value:.6g}", np.array(value, np.float32))
        return self._consts[key]

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int],
              name: str, *, output: str | None = None) -> str:  # fmt: skip
        return self.node(
            "Slice", [x, self.ints(starts), self.ints(ends), self.ints(axes)], name, output=output
        )

    def reshape(self, x: str, shape: Sequence[int], name: str, *, output: str | None = None) -> str:
        return self.node("Reshape", [x, self.ints(shape)], name, output=output)

    # -------------------------------------------------------------- schedule steps
    def activation(self, act: str, x: str, name: str, level: int) -> str:
        simple = {"tanh": "Tanh", "relu": "Relu", "sin": "Sin", "identity": "Identity"}
        if act in simple:
            return self.node(simple[act], [x], name, level=level)
        if act != "gelu":
            raise ValueError(
                f"unknown activation {act!r}; valid activations: "
                "['identity', 'tanh', 'relu', 'gelu', 'sin']"
            )
        if self.native_gelu:
            return self.node("Gelu", [x], name, level=level, approximate="none")
        # gelu(x) = 0.5 * x * (1 + erf(x / sqrt(2))): exact, any opset >= 9.
        t = self.node("Div", [x, self.scalar(math.sqrt(2.0))], f"{name}.div", level=level)
        t = self.node("Erf", [t], f"{name}.erf", level=level)
        t = self.node("Add", [t, self.scalar(1.0)], f"{name}.add", level=level)
        t = self.node("Mul", [x, t], f"{name}.mul", level=level)
        return self.node("Mul", [t, self.scalar(0.5)], name, level=level)

    def _operand(self, x: str, perm: Sequence[int], shape: Sequence[int], name: str,
                 tag: str, level: int) -> str:  # fmt: skip
        """``x`` permuted by ``perm`` and reshaped to ``shape``, memoized per value.

        A value used by many steps (a shared factor of every regenerate tile, a cached fused
        factor) is permuted and reshaped once; later steps reuse the first node's output.
        """
        key = (x, tuple(perm), tuple(shape))
        if key in self._views:
            return self._views[key]
        out = x
        if list(perm) != list(range(len(perm))):
            out = self.node("Transpose", [out], f"{name}.t{tag}", level=level, perm=list(perm))
        out = self.node("Reshape", [out, self.ints(shape)], f"{name}.r{tag}", level=level)
        self._views[key] = out
        return out

    def _broadcast_ok(self, step: Contract, dims: Mapping[str, int]) -> Any:
        """The broadcast MatMul form of ``step`` when it is an efficient lowering, else None.

        Efficient: each of its small GEMMs writes at least 256 elements, so the per-call
        overhead of a broadcast ``MatMul`` stays small next to the writes it saves.
        """
        form = step.as_broadcast_matmul(dims, self.batch_hint)
        per_call = _prod(form.rows, dims, self.batch_hint) * _prod(form.cols, dims, self.batch_hint)
        return form if per_call >= 256 else None

    def contract(self, step: Contract, a: str, b: str, name: str, dims: Mapping[str, int]) -> str:
        mm = step.as_matmul()
        out_transposed = list(mm.perm_out) != list(range(len(mm.perm_out)))
        # A step whose output a plain (batched) MatMul would write transposed, or whose
        # inputs are already laid out for it, is lowered as one broadcasting MatMul that
        # writes the output's row-major order directly (ORT's Einsum pays a full transpose
        # of the output there, the worst case being the last step of every regenerate tile).
        form = self._broadcast_ok(step, dims)
        if form is not None and (
            out_transposed
            or not any(list(p) != list(range(len(p))) for p in (form.perm_first, form.perm_second))
        ):
            return self.broadcast_matmul(step, form, a, b, name, dims)
        if self.einsum:
            try:
                eq = step.equation
            except ValueError as exc:
                raise ValueError(
                    f"layer {self.prefix!r}: {exc}; or lower with einsum=False (the "
                    f"MatMul form has no {MAX_LABELS}-label limit)"
                ) from None
            return self.node("Einsum", [a, b], name, level=step.level, equation=eq)

        def size(legs: Sequence[str]) -> int:
            if BATCH in legs:
                return -1
            return math.prod(dims[x] for x in legs)

        def permute(x: str, perm: Sequence[int], tag: str) -> str:
            if list(perm) == list(range(len(perm))):
                return x
            return self.node("Transpose", [x], f"{name}.{tag}", level=step.level, perm=list(perm))

        batch_shape = [size([x]) for x in mm.batch_legs]
        a_t = permute(a, mm.perm_a, "ta")
        if not (len(mm.free_a) == 1 and len(mm.inner) == 1):
            shape = [*batch_shape, size(mm.free_a), size(mm.inner)]
            a_t = self.node("Reshape", [a_t, self.ints(shape)], f"{name}.ra", level=step.level)
        b_t = permute(b, mm.perm_b, "tb")
        if not (len(mm.free_b) == 1 and len(mm.inner) == 1):
            shape = [*batch_shape, size(mm.inner), size(mm.free_b)]
            b_t = self.node("Reshape", [b_t, self.ints(shape)], f"{name}.rb", level=step.level)
        trivial_out = len(mm.free_a) == 1 and len(mm.free_b) == 1
        identity_out = not out_transposed
        prod = self.node(
            "MatMul",
            [a_t, b_t],
            name if trivial_out and identity_out else f"{name}.mm",
            level=step.level,
        )
        if not trivial_out:
            shape = [size([x]) for x in mm.mid_legs]
            prod = self.node(
                "Reshape",
                [prod, self.ints(shape)],
                name if identity_out else f"{name}.ro",
                level=step.level,
            )
        if not identity_out:
            prod = self.node("Transpose", [prod], name, level=step.level, perm=list(mm.perm_out))
        return prod

    def broadcast_matmul(
        self, step: Contract, form: Any, a: str, b: str, name: str, dims: Mapping[str, int]
    ) -> str:
        """Emit ``step`` as one broadcasting MatMul (see :class:`BroadcastMatMulForm`)."""
        first, second = (b, a) if form.swap else (a, b)

        def shape(groups: Sequence[Sequence[str]]) -> list[int]:
            return [-1 if BATCH in g else math.prod(dims[x] for x in g) for g in groups]

        f = self._operand(first, form.perm_first, shape(form.first_dims), name, "a", step.level)
        s_ = self._operand(second, form.perm_second, shape(form.second_dims), name, "b", step.level)
        prod = self.node("MatMul", [f, s_], f"{name}.mm", level=step.level)
        out_shape = [-1 if x == BATCH else dims[x] for x in step.out_legs]
        return self.node("Reshape", [prod, self.ints(out_shape)], name, level=step.level)

    def _wanted_layouts(self, sch: Schedule, dims: Mapping[str, int]) -> dict[str, tuple]:
        """Leg order each intermediate should be written in so its consumer needs no transpose.

        A backward pass: the final step keeps the schedule's output order; every step whose
        broadcast MatMul form is efficient asks for its intermediate inputs in the order
        that form reads them (an activation passes the wish through). A producer adopts the
        wish only when its own broadcast MatMul can write that order (see :meth:`run`).
        """
        wanted: dict[str, tuple] = {}
        for step in reversed(sch.steps):
            if isinstance(step, Activate):
                if step.output in wanted and step.input not in sch.inputs:
                    wanted.setdefault(step.input, wanted[step.output])
                continue
            out = step.out_legs if step.output == sch.output else wanted.get(step.output)
            form = self._broadcast_ok(replace(step, out_legs=tuple(out or step.out_legs)), dims)
            if form is None:
                continue
            first, second = step.inputs[::-1] if form.swap else step.inputs
            for value, groups in ((first, form.first_dims), (second, form.second_dims)):
                if value not in sch.inputs:
                    wanted.setdefault(value, tuple(x for g in groups for x in g))
        return wanted

    def run(
        self,
        sch: Schedule,
        env: dict[str, str],
        *,
        scope: str = "",
        dims: Mapping[str, int] | None = None,
        only: set[str] | None = None,
    ) -> str:
        """Emit the schedule's steps; ``env`` maps schedule value names to ONNX value names.

        With ``only``, emit just the steps whose output is in it (``env`` holds the rest).
        """
        dims = sch.dims if dims is None else dims
        wanted = self._wanted_layouts(sch, dims)
        for step in sch.steps:
            if only is not None and step.output not in only:
                continue
            name = f"{scope}level{step.level}/{step.output}"
            if isinstance(step, Contract):
                a, b = (env[v] for v in step.inputs)
                # Intermediates may live in another leg order than the schedule declares
                # (chosen so that their consumer needs no transpose): track the real one.
                phys = (self._legs.get(a, step.in_legs[0]), self._legs.get(b, step.in_legs[1]))
                step = replace(step, in_legs=phys)
                out_legs = wanted.get(step.output) if step.output != sch.output else None
                if out_legs is not None and tuple(out_legs) != step.out_legs:
                    alt = replace(step, out_legs=tuple(out_legs))
                    form = self._broadcast_ok(alt, dims)
                    if form is not None:
                        step = alt
                env[step.output] = self.contract(step, a, b, name, dims)
                self._legs[env[step.output]] = step.out_legs
            elif isinstance(step, Activate):
                env[step.output] = self.activation(
                    step.activation, env[step.input], name, step.level
                )
                if env[step.input] in self._legs:
                    self._legs[env[step.output]] = self._legs[env[step.input]]
        return env.get(sch.output, "")


# ---------------------------------------------------------------------------- generators
def _weight_2d(
    b: _Builder, plan: ADNTNPlan, cores: Mapping[str, str], tag: str, *, crop: bool = True
) -> str:
    """The ``(out, in)`` weight built in-graph from core values (materialize schedule)."""
    w = b.run(plan.schedule("materialize"), dict(cores), scope=f"{tag}/" if tag else "")
    w = b.reshape(w, [plan.rows_padded, plan.cols_padded], f"{tag}/weight.padded")
    if crop and (plan.rows_padded, plan.cols_padded) != (plan.out_features, plan.in_features):
        w = b.slice(w, [0, 0], [plan.out_features, plan.in_features], [0, 1], f"{tag}/weight")
    return w


def _bias_value(b: _Builder, spec: LayerSpec, params: Mapping[str, str], mode: str) -> str | None:
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
    b: _Builder, plan: ADNTNPlan, cores: Mapping[str, str], tile_rows: int | None
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


def _fused_2d(b: _Builder, plan: ADNTNPlan, cores: Mapping[str, str], x2d: str, batch: int) -> str:
    """``x2d @ W.T`` with ``x`` contracted into the network (``x2d``: ``(batch, in)``)."""
    pad = plan.cols_padded - plan.in_features
    if pad:
        x2d = b.node("Pad", [x2d, b.ints([0, 0, 0, pad])], "fused/x.pad")
    x = b.reshape(x2d, [-1, *plan.col_factors], "fused/x.sites")
    sch = plan.schedule("fused", batch=batch)
    y = b.run(sch, {**cores, "x": x})
    y = b.reshape(y, [-1, plan.rows_padded], "fused/y.rows")
    if plan.rows_padded != plan.out_features:
        y = b.slice(y, [0], [plan.out_features], [1], "fused/y.crop")
    return y


def _linear_2d(
    b: _Builder,
    spec: LayerSpec,
    mode: str,
    params: Mapping[str, str],
    x2d: str,
    bias: str | None,
    *,
    batch: int,
    tile_rows: int | None,
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
            for n, (w, _) in enumerate(_tile_weights(b, plan, cores, tile_rows))
        ]
        final = output if bias is None else None
        y = b.node("Concat", parts, "regenerate/concat", output=final, axis=1) if len(parts) > 1 \
            else b.node("Identity", parts, "regenerate/concat", output=final)  # fmt: skip
        return y if bias is None else b.node("Add", [y, bias], "bias.add", output=output)
    y = _fused_2d(b, plan, cores, x2d, batch)
    if bias is None:
        return b.node("Identity", [y], "output", output=output)
    return b.node("Add", [y, bias], "bias.add", output=output)


def _conv(
    b: _Builder,
    spec: LayerSpec,
    mode: str,
    params: Mapping[str, str],
    x: str,
    bias: str | None,
    *,
    batch: int,
    tile_rows: int | None,
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
        for n, (w, rows) in enumerate(_tile_weights(b, plan, cores, tile_rows)):
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
    # fused: im2col with a one-hot grouped Conv, then the fused linear lowering.
    kk = kh * kw
    onehot = np.zeros((c * kk, 1, kh, kw), np.float32)
    for ch in range(c):
        for p in range(kk):
            onehot[ch * kk + p, 0, p // kw, p % kw] = 1.0
    cols = b.node("Conv", [x, b.tensor("im2col/kernel", onehot)], "im2col/conv", group=c, **attrs)
    nhwc = b.node("Transpose", [cols], "im2col/nhwc", perm=[0, 2, 3, 1])
    patches = b.reshape(nhwc, [-1, c * kk], "im2col/patches")
    y = _fused_2d(b, plan, cores, patches, batch)
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


def _param_inits(spec: LayerSpec) -> list[tuple[str, str, np.ndarray]]:
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
    b = _Builder(
        spec.prefix, opset, einsum=einsum, native_gelu=bool(native_gelu), batch_hint=batch_hint
    )
    params = dict(param_names or {})
    for role, name, array in _param_inits(spec):
        if mode == "dense" and role != "bias":
            continue  # the dense mode stores the generated weight instead of the cores
        if role not in params:
            b._used.add(name)
            b.inits.append(numpy_helper.from_array(array, name))
            params[role] = name
    bias = _bias_value(b, spec, params, mode)
    kw = {"batch": batch_hint, "tile_rows": tile_rows}
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
    return LoweredLayer(b.nodes, b.inits, needs_no_constant_folding=mode == "regenerate")


# ---------------------------------------------------------------------------- placeholders
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
                OpSchema.Attribute(name, kind, name, required=False)
                for name, kind in (
                    ("layer", OpSchema.AttrType.STRING),
                    ("kind", OpSchema.AttrType.STRING),
                    ("plan", OpSchema.AttrType.STRING),
                    ("bias_kind", OpSchema.AttrType.STRING),
                    ("bias_plan", OpSchema.AttrType.STRING),
                    ("param_roles", OpSchema.AttrType.STRINGS),
                    ("input_rank", OpSchema.AttrType.INT),
                    ("in_channels", OpSchema.AttrType.INT),
                    ("kernel_shape", OpSchema.AttrType.INTS),
                    ("strides", OpSchema.AttrType.INTS),
                    ("pads", OpSchema.AttrType.INTS),
                    ("dilations", OpSchema.AttrType.INTS),
                    ("output_hw", OpSchema.AttrType.INTS),
                )
            ],
        )
        onnx.defs.register_schema(schema)


def placeholder_node(
    spec: LayerSpec, *, input_name: str, output_name: str
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """The ``ai.adntn`` node of a layer (mode chosen later) and its parameter initializers."""
    params = _param_inits(spec)
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
        _OP_TYPES[spec.kind],
        [input_name, *(name for _, name, _ in params)],
        [output_name],
        name=f"{spec.prefix}/{_OP_TYPES[spec.kind]}",
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
    if node.domain != ADNTN_DOMAIN or node.op_type not in _OP_TYPES.values():
        raise ValueError(
            f"node {node.name!r} ({node.domain}::{node.op_type}) is not an ADNTN placeholder; "
            f"valid: {[f'{ADNTN_DOMAIN}::{t}' for t in _OP_TYPES.values()]}"
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
        if node.domain == ADNTN_DOMAIN and node.op_type in _OP_TYPES.values():
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


def record_layer_metadata(
    model: onnx.ModelProto, spec: LayerSpec, mode: str, *, einsum: bool, **extra: Any
) -> None:
    """Record how a layer was lowered (``adntn.layer.{name}``: kind, mode, network, bond
    dims, shape, compression ratio, einsum, plus ``extra``) in the model's metadata."""
    plan = spec.plan
    info = {
        "kind": spec.kind,
        "mode": mode,
        "network": plan.network,
        "bond_dims": list(plan.bond_dims),
        "shape": [plan.out_features, plan.in_features],
        "compression_ratio": round(plan.compression_ratio, 3),
        "einsum": einsum,
        **extra,
    }
    set_metadata(model, f"adntn.layer.{spec.prefix}", json.dumps(info, sort_keys=True))


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ValueError("model has no default-domain opset import")


def lower_model(
    model: onnx.ModelProto,
    modes: str | Mapping[str, str],
    *,
    einsum: bool = True,
    native_gelu: bool | None = None,
    batch_hint: int = 1,
    tile_rows: int | None = None,
) -> onnx.ModelProto:
    """Substitute every ``ai.adntn`` placeholder of ``model`` by its lowering; returns a copy.

    Args:
        model: a model exported with ``mode='auto'`` (placeholders + cores as initializers).
        modes: one mode for every layer, or layer name -> mode (every placeholder named).
        einsum, native_gelu, batch_hint, tile_rows: see :func:`lower_layer`.

    The result records per layer ``adntn.layer.<name>`` metadata (mode, network, bond dims,
    ratio) and, when a layer is regenerated, ``adntn.session_options`` (constant folding
    off); its IR version is :data:`IR_VERSION`.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = placeholder_layers(out)
    if isinstance(modes, str):
        per_layer = dict.fromkeys(names, modes)
    else:
        per_layer = dict(modes)
        missing = [n for n in names if n not in per_layer]
        unknown = [n for n in per_layer if n not in names]
        if missing or unknown:
            raise ValueError(
                f"modes must name every ADNTN layer of the model exactly: missing {missing}, "
                f"unknown {unknown}; the model's layers: {names}"
            )
    opset = _default_opset(out)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    dropped: set[str] = set()
    needs_no_folding = False
    for node in graph.node:
        if not (node.domain == ADNTN_DOMAIN and node.op_type in _OP_TYPES.values()):
            new_nodes.append(node)
            continue
        for name in node.input[1:]:
            if name not in arrays and name in inits:
                arrays[name] = numpy_helper.to_array(inits[name])
        spec = spec_from_node(node, arrays)
        mode = per_layer[spec.name]
        lowered = lower_layer(
            spec,
            mode,
            input_name=node.input[0],
            output_name=node.output[0],
            einsum=einsum,
            opset=opset,
            native_gelu=native_gelu,
            batch_hint=batch_hint,
            tile_rows=tile_rows,
            param_names=placeholder_param_names(node),
        )
        if mode == "dense":
            dropped.update(node.input[1:])
        new_nodes.extend(lowered.nodes)
        new_inits.extend(lowered.initializers)
        needs_no_folding |= lowered.needs_no_constant_folding
        record_layer_metadata(out, spec, mode, einsum=bool(einsum))
    still_used = {name for n in new_nodes for name in n.input}
    kept = [t for t in graph.initializer if t.name not in dropped or t.name in still_used]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    if not placeholder_layers(out):
        keep = [imp for imp in out.opset_import if imp.domain != ADNTN_DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(keep)
    if needs_no_folding:
        set_metadata(out, SESSION_OPTIONS_KEY, json.dumps(NO_FOLDING_SESSION_OPTIONS))
    out.ir_version = IR_VERSION
    return out


def layer_model(
    spec: LayerSpec,
    mode: str,
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
    if mode == "auto":
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
