"""Load an ONNX file with ADNTN layers and run it with ONNX Runtime, each layer in the best mode.

:func:`load` handles three kinds of file:

* **auto** (exported with ``mode="auto"``): every ``ai.adntn`` placeholder is lowered in the
  mode the policy (:mod:`adntn_runtime.policy`) picks from the memory budget and latency
  target, using calibration measured on this device (:mod:`adntn_runtime.calibration`).
* **fixed** (exported in one mode): loaded as is; each layer's mode is reported as forced.
* **plain** ONNX (no ADNTN metadata): loaded as plain ONNX, no decisions.

Constant folding. ORT's ``ConstantFolding`` is one switch per session, but the three modes
want different things: a regenerated layer must *not* be folded (folding would build the
whole weight at load), a materialized layer wants its weight built once, a fused layer wants
its ``x``-independent factors built once. The runtime therefore never relies on ORT folding
for ADNTN layers:

* materialize: the runtime contracts the cores in numpy at load (opt_einsum/BLAS) and
  streams the dense weight, row block by row block, to a file in a temporary folder that an
  external initializer points at, feeding an ordinary ``Gemm``/``Conv``; the cores are
  dropped;
* fused: the runtime computes the layer's ``x``-independent values once at load (the plan's
  ``Schedule.cached_values``, contracted in numpy) and stores them as initializers (their
  transposes and reshapes folded too), so the graph holds only the steps that read ``x``;
* regenerate: left as lowered; when any layer is regenerated, ``ConstantFolding`` is switched
  off for the session (it is then a no-op for the other two modes, already precomputed).

Non-ADNTN parts of the model keep ORT's default folding unless a layer is regenerated.

Memory. ORT reads every large weight itself: the source model's big initializers are moved
to external data right after parsing (the protobuf kept while lowering and calibrating is the
graph alone), and the lowered model is saved with external data in the temporary folder and
loaded from there (deleted once the session exists). ORT then owns each weight and frees it
once its kernels have pre-packed it; handing ORT the caller's buffers
(``add_external_initializers``) or serialized bytes would keep a second (and third) copy
resident next to the packed one. A materialized whole model thus peaks at about the dense
file's memory, and a fused one holds no copy of the trunk besides ORT's. The folder is made
with :mod:`tempfile` (``$TMPDIR``): where that is a tmpfs, the files sit in RAM (outside the
process's RSS) until the session exists; point ``TMPDIR`` at a disk there. Unless told
otherwise (``steady_heap=False``), :func:`load` pins glibc's mmap threshold
(:mod:`adntn_runtime.heap`) so that the buffers ORT frees while loading go back to the OS at
once: the load's peak is then repeatable.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from adntn_runtime.files import read_onnx
from adntn_runtime.heap import pin_mmap_threshold, release_freed_memory
from adntn_runtime.layer_lowering import LoweredLayer
from adntn_runtime.layer_spec import LayerSpec
from adntn_runtime.modes import Mode, missing_and_unknown, parse_mode
from adntn_runtime.onnx_format import (
    SESSION_OPTIONS_KEY,
    is_placeholder,
    placeholder_layers,
    register_schemas,
    spec_from_node,
)
from adntn_runtime.plan import ADNTNPlan
from adntn_runtime.policy import (
    DEFAULT_RATES,
    Candidate,
    DeviceRates,
    LayerChoice,
    check_layers_fit,
    choose_modes,
    fitting,
    layer_candidates,
)
from adntn_runtime.reference import fused_constants
from adntn_runtime.schedule import Contract
from adntn_runtime.substitution import (
    layer_model,
    lower_placeholder,
    resolve_modes,
    substitute_placeholders,
)

__all__ = ["LayerDecision", "Session", "generate_weight_fast", "load", "lower_for_runtime"]

_FOLDING_OFF = ("optimization.disable_specified_optimizers", "ConstantFolding")
#: A candidate predicted this many times slower than the best one is not measured.
_MEASURE_RATIO = 10.0
#: Measuring a candidate holds about this many times its memory for a moment (the weight
#: ORT reads and its pre-packed copy), so it is measured only when that fits the budget.
_CALIBRATION_FACTOR = 2.0
#: A candidate needing more than this many times the memory of the layer's lightest one (and
#: more than the heavy floor, :meth:`_Planner.heavy_floor`) is measured only if the policy
#: picks it on its prediction: calibration would otherwise hold, for a moment, memory that the
#: modes finally chosen never need (e.g. a materialized 4096x4096 weight next to a fused layer
#: of a few KB).
_HEAVY_RATIO = 4.0
#: The heavy floor: at least this many bytes ...
_HEAVY_MIN_BYTES = 4 * 2**20
#: ... or this share of the session's footprint known before calibrating (the process's
#: resident set plus the model's initializers), whichever is larger: measuring a candidate
#: holds about :data:`_CALIBRATION_FACTOR` times its memory, so the load's peak stays within
#: about 10% of the chosen modes' own. Canonical AlexNet compressed whole, batch 8: the
#: materialized 4096x1000 head (16 MB, 44 MB while measured) raised the load's peak to
#: 1.12-1.15x the fused session's when the floor was a fixed 16 MiB.
_HEAVY_SHARE = 0.05


@dataclass
class LayerDecision:
    """The mode one ADNTN layer runs in, and why.

    Latencies in milliseconds for one call of the layer alone at the session's batch size;
    memory in bytes (predicted: the policy's accounting; measured: resident-set growth while
    the layer alone was built and run during calibration, approximate). A layer whose input
    and output are large is measured on a smaller input, ``calibration_shape`` (fewer
    samples; for a convolution, a band of image rows; see ``_Planner._calibration_input``):
    ``measured_ms`` is scaled from it to the session's input, ``measured_memory_bytes`` is
    at it.
    """

    layer: str
    mode: str
    forced: bool
    reason: str
    predicted_ms: float | None = None
    measured_ms: float | None = None
    predicted_memory_bytes: int | None = None
    measured_memory_bytes: int | None = None
    calibration_shape: list[int] | None = None
    einsum: bool | None = None
    tile_rows: int | None = None
    alternatives: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (NaN becomes None)."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, float) and math.isnan(v):
                out[k] = None
        return out


# ---------------------------------------------------------------------------- numpy weight
def _weight_blocks(
    plan: ADNTNPlan, cores: Mapping[str, np.ndarray], max_block_bytes: int = 1 << 22
) -> Iterator[np.ndarray]:
    """The ``(out, in)`` float32 weight as contiguous row blocks, top to bottom.

    The cores are contracted with BLAS-backed two-operand steps (``opt_einsum.contract``),
    intermediates freed as soon as they are consumed. The last contraction's result is
    usually a transposed view of its product; it is read block by block (at most about
    ``max_block_bytes`` each), so the weight is never copied whole: the peak is the last
    product plus one block, and the padding is dropped per block.
    """
    import opt_einsum

    from adntn_runtime.activations import apply_activation

    sch = plan.schedule("materialize")
    steps = list(sch.steps)
    tail: list[str] = []  # elementwise activations after the last contraction: per block
    while steps and not isinstance(steps[-1], Contract):
        last = steps.pop()
        tail.insert(0, last.activation)
    env: dict[str, np.ndarray] = {k: np.asarray(v, np.float32) for k, v in cores.items()}
    uses: dict[str, int] = {}
    for step in steps:
        for name in step.inputs if isinstance(step, Contract) else (step.input,):
            uses[name] = uses.get(name, 0) + 1
    final = steps[-1].output if steps else sch.output
    for step in steps:
        if isinstance(step, Contract):
            a, b = (env[n] for n in step.inputs)
            env[step.output] = opt_einsum.contract(step.equation, a, b)
            consumed = step.inputs
        else:
            env[step.output] = apply_activation(step.activation, env[step.input])
            consumed = (step.input,)
        for name in consumed:
            uses[name] -= 1
            if uses[name] == 0 and name not in cores:
                del env[name]  # free intermediates early: peak memory matters here
    full = env.pop(final)
    del env
    rows, cols = plan.rows_padded, plan.cols_padded
    # Leading legs that split the rows evenly index the blocks (row-major reshape).
    lead, t = 1, 0
    while (
        t < full.ndim
        and rows % (lead * full.shape[t]) == 0
        and full.size // lead * 4 > max_block_bytes
    ):
        lead *= full.shape[t]
        t += 1
    per = rows // lead
    r0 = 0
    for idx in np.ndindex(*full.shape[:t]):
        if r0 >= plan.out_features:
            break
        block = full[idx].reshape(per, cols) if full[idx].flags.c_contiguous else None
        if block is None:
            block = np.ascontiguousarray(full[idx]).reshape(per, cols)
        block = block[: plan.out_features - r0, : plan.in_features]
        for act in tail:
            block = apply_activation(act, block)
        yield np.ascontiguousarray(block, dtype=np.float32)
        r0 += per


def generate_weight_fast(plan: ADNTNPlan, cores: Mapping[str, np.ndarray]) -> np.ndarray:
    """The ``(out, in)`` float32 weight, as :func:`adntn_runtime.reference.generate_weight`
    but with BLAS-backed two-operand contractions (``opt_einsum.contract``); the result is
    filled block by block (:func:`_weight_blocks`), so the peak is about twice the weight."""
    w = np.empty((plan.out_features, plan.in_features), np.float32)
    r0 = 0
    for block in _weight_blocks(plan, cores):
        w[r0 : r0 + block.shape[0]] = block
        r0 += block.shape[0]
    return w


def _write_weight(
    plan: ADNTNPlan, cores: Mapping[str, np.ndarray], path: Path, *, transpose: bool
) -> None:
    """Write the weight's raw float32 bytes (``(out, in)``, or ``(in, out)`` when
    ``transpose``) to ``path`` block by block: ORT then loads it itself, and frees its own
    copy once its kernels have pre-packed it."""
    with open(path, "wb") as f:
        if not transpose:
            for block in _weight_blocks(plan, cores):
                f.write(memoryview(block))
            return
        wt = generate_weight_fast(plan, cores).T
        step = max(1, (1 << 22) // max(4 * wt.shape[1], 1))
        for r in range(0, wt.shape[0], step):
            f.write(memoryview(np.ascontiguousarray(wt[r : r + step])))


# ---------------------------------------------------------------------------- lowering
def _external_tensor(name: str, shape: Sequence[int]) -> onnx.TensorProto:
    t = onnx.TensorProto()
    t.name = name
    t.data_type = TensorProto.FLOAT
    t.dims.extend(int(d) for d in shape)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (
        ("location", f"{name}.adntn"),
        ("offset", "0"),
        ("length", str(4 * math.prod(shape))),
    ):
        e = t.external_data.add()
        e.key, e.value = key, value
    return t


def _materialize_layer(
    spec: LayerSpec,
    input_name: str,
    output_name: str,
    externals: dict[str, np.ndarray],
    weight_dir: Path | None = None,
) -> LoweredLayer:
    """Gemm / Conv / MatMul on a weight contracted in numpy (an external initializer).

    With ``weight_dir`` the weight is streamed to a file there (``_write_weight``) that the
    initializer points at, for ORT to load and own; else it is returned in ``externals``.
    """
    p = spec.prefix
    plan = spec.plan
    bias = spec.dense_bias()
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    bias_name = None
    if bias is not None:
        bias_name = f"{p}/materialized/bias"
        inits.append(numpy_helper.from_array(bias.astype(np.float32), bias_name))

    def mk(op: str, inputs: list[str], output: str, name: str, **attrs: Any) -> None:
        node = helper.make_node(op, inputs, [output], name=f"{p}/{name}", **attrs)
        entry = node.metadata_props.add()
        entry.key, entry.value = "adntn.layer", p
        nodes.append(node)

    wname = f"{p}/materialized/weight"
    shape: tuple[int, ...] = (plan.out_features, plan.in_features)
    transpose = False
    if spec.kind == "conv2d":
        conv = spec.conv
        assert conv is not None
        shape = (spec.out_features, conv.in_channels, *conv.kernel_shape)
        mk(
            "Conv",
            [input_name, wname] + ([bias_name] if bias_name else []),
            output_name,
            "conv",
            **conv.attributes(),
        )
    elif spec.input_rank == 2:
        mk(
            "Gemm",
            [input_name, wname] + ([bias_name] if bias_name else []),
            output_name,
            "gemm",
            transB=1,
        )
    else:  # (..., in) @ (in, out): MatMul broadcasts the leading dims
        shape, transpose = (plan.in_features, plan.out_features), True
        if bias_name:
            mk("MatMul", [input_name, wname], f"{p}/matmul", "matmul")
            mk("Add", [f"{p}/matmul", bias_name], output_name, "bias.add")
        else:
            mk("MatMul", [input_name, wname], output_name, "matmul")
    tensor = _external_tensor(wname, shape)
    if weight_dir is not None:
        location = f"adntn_weight_{len(list(weight_dir.glob('adntn_weight_*')))}.bin"
        _write_weight(plan, spec.cores, weight_dir / location, transpose=transpose)
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    else:
        w = generate_weight_fast(plan, spec.cores)
        externals[wname] = np.ascontiguousarray(w.T) if transpose else w.reshape(shape)
    inits.append(tensor)
    return LoweredLayer(nodes, inits)


def lower_for_runtime(
    model: onnx.ModelProto,
    modes: Mode | str | Mapping[str, Mode | str],
    *,
    einsum: bool | Mapping[str, bool] = True,
    batch_hint: int = 1,
    tile_rows: int | None = None,
    weight_dir: str | os.PathLike[str] | None = None,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray], bool]:
    """Lower every placeholder in its mode, the runtime's way (see the module docstring).

    The substitution pass is the exporter's (:func:`~adntn_runtime.substitution.
    substitute_placeholders`); only materialize is lowered differently (the weight contracted
    in numpy) and fused layers get their ``x``-independent values (the plan's
    :attr:`~adntn_runtime.schedule.Schedule.cached_values`) computed once, in numpy.

    Returns ``(model, externals, needs_no_folding)``: ``externals`` maps initializer names to
    the materialized weights to pass with ``SessionOptions.add_external_initializers``.
    With ``weight_dir``, the materialized weights are written to files there instead (the
    initializers point at them; ``externals`` is empty): save the model in that folder and
    let ORT load it from there (:func:`_ort_session_from_dir`).
    """
    wdir = Path(weight_dir) if weight_dir is not None else None
    per_layer = resolve_modes(placeholder_layers(model), modes, Mode, name="modes")
    externals: dict[str, np.ndarray] = {}

    def lower(spec: LayerSpec, mode: Mode, node: onnx.NodeProto, opset: int) -> LoweredLayer:
        use_einsum = einsum if isinstance(einsum, bool) else bool(einsum.get(spec.name, True))
        if mode is Mode.MATERIALIZE:
            lowered = _materialize_layer(spec, node.input[0], node.output[0], externals, wdir)
        else:
            constants = None
            if mode is Mode.FUSED:  # the x-independent values, computed here once
                import opt_einsum

                constants = fused_constants(
                    spec.plan, spec.cores, batch_hint, einsum=opt_einsum.contract
                )
            lowered = lower_placeholder(
                spec,
                mode,
                node,
                opset,
                einsum=use_einsum,
                batch_hint=batch_hint,
                tile_rows=tile_rows,
                fused_constants=constants,
            )
        lowered.info["einsum"] = use_einsum
        return lowered

    out = substitute_placeholders(model, per_layer, lower, lowered_by="adntn_runtime")
    no_folding = any(p.key == SESSION_OPTIONS_KEY for p in out.metadata_props)
    return out, externals, no_folding


# ---------------------------------------------------------------------------- session
class Session:
    """An ONNX Runtime session over a (lowered) model, with the per-layer decisions.

    Attributes:
        path: the file loaded.
        kind: ``"auto"``, ``"fixed"`` or ``"plain"``.
        decisions: layer name -> :class:`LayerDecision` (empty for plain ONNX).
        input_names, output_names, input_shapes: of the model (shapes hold ``None`` for
            symbolic dimensions).
        load_seconds: wall time of :func:`load` (lowering, calibration, session creation).
        calibration_seconds: the part spent measuring (0 when cached or off).
        rates: the device rates the predictions used.
        ort_session: the ``onnxruntime.InferenceSession``.
        max_batch: :meth:`run` feeds a larger batch to ORT in slices of at most this many
            samples (None: in one call).
        model: the lowered ``ModelProto`` of an auto file (materialized weights are external,
            not in it); None for fixed and plain files (loaded by ORT from the path).
    """

    def __init__(
        self,
        ort_session: Any,
        *,
        path: Path,
        kind: str,
        decisions: dict[str, LayerDecision],
        model: onnx.ModelProto | None,
        options: dict[str, Any],
        rates: DeviceRates | None,
        load_seconds: float,
        calibration_seconds: float,
        max_batch: int | None = None,
    ) -> None:
        self.ort_session = ort_session
        self.path = path
        self.kind = kind
        self.decisions = decisions
        self.model = model
        self.options = options
        self.rates = rates
        self.load_seconds = load_seconds
        self.calibration_seconds = calibration_seconds
        self.input_names = [i.name for i in ort_session.get_inputs()]
        self.output_names = [o.name for o in ort_session.get_outputs()]
        self.input_shapes = {
            i.name: [d if isinstance(d, int) else None for d in i.shape]
            for i in ort_session.get_inputs()
        }
        self._input_types = {i.name: i.type for i in ort_session.get_inputs()}
        self.max_batch = max_batch

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        names = self.input_names
        if isinstance(inputs, np.ndarray):
            if len(names) != 1:
                raise ValueError(
                    f"the model has {len(names)} inputs {names}: pass a dict name -> array"
                )
            feeds = {names[0]: inputs}
        elif isinstance(inputs, Mapping):
            missing, unknown = missing_and_unknown(names, inputs)
            if missing or unknown:
                raise ValueError(
                    f"inputs must name the model's inputs {names}: missing {missing}, "
                    f"unknown {unknown}"
                )
            feeds = dict(inputs)
        elif isinstance(inputs, Sequence) and not isinstance(inputs, str | bytes):
            if len(inputs) != len(names):
                raise ValueError(f"expected {len(names)} inputs {names}, got {len(inputs)}")
            feeds = dict(zip(names, inputs, strict=True))
        else:
            raise TypeError(
                f"inputs must be a numpy array, a dict name -> array or a list of arrays, "
                f"got {type(inputs).__name__}"
            )
        out = {}
        for name, value in feeds.items():
            arr = np.asarray(value)
            if self._input_types[name] == "tensor(float)" and arr.dtype != np.float32:
                if not np.issubdtype(arr.dtype, np.number):
                    raise TypeError(f"input {name!r} must be numeric, got dtype {arr.dtype}")
                arr = arr.astype(np.float32)
            want = self.input_shapes[name]
            shape_ok = arr.ndim == len(want) and all(
                w is None or w == g for w, g in zip(want, arr.shape, strict=True)
            )
            if not shape_ok:
                shown = ["N" if w is None else w for w in want]
                raise ValueError(
                    f"input {name!r} has shape {tuple(arr.shape)}, the model expects {shown} "
                    "(N: any size)"
                )
            out[name] = np.ascontiguousarray(arr)
        return out

    def run(self, inputs: Any, output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run the model; ``inputs``: one array, a dict name -> array, or a list in input order.

        With ``max_batch``, a larger batch runs as consecutive slices of at most that many
        samples (the intermediate tensors are one slice's), outputs joined along axis 0."""
        feeds = self._feeds(inputs)
        names = list(output_names) if output_names else None
        m = self.max_batch
        sizes = {v.shape[0] for v in feeds.values()}
        if m is None or max(sizes) <= m:
            return self.ort_session.run(names, feeds)
        if len(sizes) != 1:
            shown = {k: v.shape[0] for k, v in feeds.items()}
            raise ValueError(
                f"max_batch={m} slices every input along axis 0, which needs one batch size; "
                f"got {shown}"
            )
        n = sizes.pop()
        parts = [
            self.ort_session.run(names, {k: v[i : i + m] for k, v in feeds.items()})
            for i in range(0, n, m)
        ]
        return [np.concatenate(outs, axis=0) for outs in zip(*parts, strict=True)]

    def describe(self) -> str:
        """A human-readable summary: file kind, options, one line per ADNTN layer."""
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        lines = [
            f"adntn_runtime session: {self.path} ({self.kind}); {opts}",
            f"  inputs {self.input_shapes}, outputs {self.output_names}; load "
            f"{self.load_seconds * 1e3:.0f} ms "
            f"(calibration {self.calibration_seconds * 1e3:.0f} ms)",
        ]
        if not self.decisions:
            lines.append("  no ADNTN layers: plain ONNX")
        for d in self.decisions.values():

            def ms(v: float | None) -> str:
                return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"

            def mb(v: int | None) -> str:
                return "-" if v is None else f"{v / 2**20:.3g}"

            lines.append(
                f"  {d.layer or 'layer'}: {d.mode}{' (forced)' if d.forced else ''}; "
                f"predicted {ms(d.predicted_ms)} ms / {mb(d.predicted_memory_bytes)} MB, "
                f"measured {ms(d.measured_ms)} ms / {mb(d.measured_memory_bytes)} MB"
                + (f"; einsum={d.einsum}" if d.einsum is not None else "")
            )
            lines.append(f"      {d.reason}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        modes = {k or "layer": d.mode for k, d in self.decisions.items()}
        return f"Session({str(self.path)!r}, kind={self.kind!r}, modes={modes})"


def _check_sliceable(model: onnx.ModelProto, path: Path, max_batch: int) -> None:
    """Slicing a batch needs every input and output to have a free first (batch) dimension
    (checked on the graph, before any calibration)."""
    weights = {t.name for t in model.graph.initializer}
    fixed = []
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for v in values:
            if v.name in weights or not v.type.tensor_type.HasField("shape"):
                continue
            dims = v.type.tensor_type.shape.dim
            if not dims or dims[0].HasField("dim_value"):
                shown = [d.dim_value if d.HasField("dim_value") else "N" for d in dims]
                fixed.append(f"{kind} {v.name!r} {shown}")
    if fixed:
        raise ValueError(
            f"max_batch={max_batch}: {path} has a fixed first dimension ({'; '.join(fixed)}), "
            "so a batch cannot run in slices; export it with a dynamic batch (the default; "
            "not --static-batch) or leave max_batch=None"
        )


def _check_args(
    memory_budget_mb: object,
    latency_target_ms: object,
    batch: object,
    threads: object,
    einsum: object,
    max_batch: object = None,
    steady_heap: object = True,
) -> None:
    if memory_budget_mb is not None and (
        isinstance(memory_budget_mb, bool)
        or not isinstance(memory_budget_mb, int | float)
        or not memory_budget_mb >= 0
        or math.isinf(memory_budget_mb)
    ):
        raise ValueError(
            f"memory_budget_mb must be a finite number >= 0 (megabytes) or None, got "
            f"{memory_budget_mb!r}"
        )
    if latency_target_ms is not None and (
        isinstance(latency_target_ms, bool)
        or not isinstance(latency_target_ms, int | float)
        or not latency_target_ms > 0
    ):
        raise ValueError(
            f"latency_target_ms must be a number > 0 (milliseconds) or None, got "
            f"{latency_target_ms!r}"
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads must be an int >= 1 or None (ORT default), got {threads!r}")
    if einsum is not None and not isinstance(einsum, bool):
        raise ValueError(f"einsum must be True, False or None (pick per layer), got {einsum!r}")
    if max_batch is not None and (
        isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1
    ):
        raise ValueError(
            f"max_batch must be an int >= 1 (samples per call) or None (one call), "
            f"got {max_batch!r}"
        )
    if not isinstance(steady_heap, bool):
        raise ValueError(f"steady_heap must be True or False, got {steady_heap!r}")


def _read_model(path: Path, allow_nonfinite: bool = False) -> onnx.ModelProto:
    return read_onnx(path, allow_nonfinite=allow_nonfinite)


def _layer_input_shape(model: onnx.ModelProto, value: str, batch: int) -> list[int] | None:
    for vi in [*model.graph.value_info, *model.graph.input]:
        if vi.name == value and vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim
            shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
            if shape and shape[0] is None:
                shape[0] = batch
            if any(d is None for d in shape):
                return None
            return shape
    return None


def _session_options(
    threads: int | None,
    no_folding: bool,
    optimized_path: str | None,
    memory_pattern: bool = False,
    profile_prefix: str | None = None,
) -> Any:
    """ORT options of a runtime session (``profile_prefix``: ORT's per-node profile).

    ``memory_pattern`` (ORT's default: on) plans one block for all intermediate tensors of the
    first call's shapes. ``benchmarks/model_suite.py`` on a quiet 2-core box, canonical VGG-16
    compressed whole (``vgg16_whole``), fused, batch 8: peak RSS 456 MB with it, 320 MB
    without; p50 301 -> 281 ms (1 thread), 150 -> 133 ms (2); dense 1,125 -> 1,128 MB. Off
    unless asked for."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_mem_pattern = memory_pattern
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if no_folding:
        so.add_session_config_entry(*_FOLDING_OFF)
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    so.log_severity_level = 3
    return so


def _externalize_initializers(
    model: onnx.ModelProto, folder: Path, min_bytes: int = 1 << 20
) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers of ``min_bytes`` or more, except the inputs of
    ADNTN placeholders (their cores are read in numpy), are external data in
    ``folder/source_initializers.bin`` (written by ``onnx.external_data_helper``).

    Clearing a field does not shrink a protobuf's arena, so the copy, not ``model``, is the
    light one: drop ``model`` after the call.
    """
    from onnx import external_data_helper as ext

    keep = {name for node in model.graph.node if is_placeholder(node) for name in node.input}
    moved = False
    for tensor in model.graph.initializer:
        if (
            tensor.name not in keep
            and tensor.HasField("raw_data")
            and len(tensor.raw_data) >= min_bytes
        ):
            ext.set_external_data(tensor, "source_initializers.bin")
            moved = True
    if not moved:
        return model
    ext.write_external_data_tensors(model, str(folder))
    light = onnx.ModelProto()
    light.CopyFrom(model)
    return light


def _ort_session_from_dir(lowered: onnx.ModelProto, so: Any, folder: Path, path: Path) -> Any:
    """An ORT session over ``lowered``, saved in ``folder`` with every initializer of 4 KiB
    or more as external data (``onnx.save_model``), loaded by ORT from there.

    ORT then owns every weight it reads: a weight its kernels pre-pack (``Gemm``, ``Conv``,
    ``MatMul`` constants) is freed after packing, instead of living on in the caller's
    buffer next to ORT's packed copy (``add_external_initializers``), and no serialized copy
    of the model is made. ``lowered`` keeps the graph only (its initializer data is cleared
    by the save); ``folder`` may be deleted once the session exists.
    """
    model_path = folder / "model.onnx"
    onnx.save_model(
        lowered,
        str(model_path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="initializers.bin",
        size_threshold=4096,
    )
    return _make_ort_session(str(model_path), so, path)


def _make_ort_session(model_bytes_or_path: Any, so: Any, path: Path) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model_bytes_or_path, so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ValueError(
            f"onnxruntime cannot load {str(path)!r}: {type(exc).__name__}: {exc}"
        ) from None


def _measure_layer(
    spec: LayerSpec,
    mode: str,
    shape: list[int],
    threads: int,
    *,
    einsum: bool,
    tile_rows: int | None,
) -> dict[str, float]:
    """Milliseconds per call (median) and resident-set growth of the layer alone in ``mode``."""
    from adntn_runtime.calibration import time_call, vm_rss_bytes

    before = vm_rss_bytes()
    m = layer_model(spec, "auto", input_shape=[d if d else "batch" for d in shape], opset=18)
    with tempfile.TemporaryDirectory(prefix="adntn-calibrate-") as tmp:
        lowered, _, no_fold = lower_for_runtime(
            m,
            {spec.name: mode},
            einsum=einsum,
            batch_hint=shape[0],
            tile_rows=tile_rows,
            weight_dir=tmp,
        )
        del m
        so = _session_options(threads, no_fold, None)
        sess = _ort_session_from_dir(lowered, so, Path(tmp), Path(f"<calibration of {spec.name}>"))
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    sess.run(None, {"input": x})
    grown = max(vm_rss_bytes() - before, 0)
    ms = time_call(functools.partial(sess.run, None, {"input": x}), warmup=1, max_seconds=0.25)
    del sess
    release_freed_memory()  # the next layer's measurement does not stack on this one's
    return {"ms": ms, "rss_bytes": grown}


def _forced_modes(
    layers: Sequence[str], modes: Mode | str | Mapping[str, Mode | str] | None
) -> dict[str, Mode]:
    """Layer -> the mode the caller forces (validated once); empty when the policy picks."""
    if modes is None:
        return {}
    if not isinstance(modes, Mapping):
        return dict.fromkeys(layers, parse_mode(modes, Mode, name="modes"))
    unknown = [name for name in modes if name not in layers]
    if unknown:
        raise ValueError(f"modes names unknown layer {unknown[0]!r}; the model's layers: {layers}")
    return {name: parse_mode(m, Mode, name=f"modes[{name!r}]") for name, m in modes.items()}


class _Planner:
    """The policy's side of :func:`load`: candidates per layer, measured when calibrating,
    the choice, and the decisions reported."""

    def __init__(
        self,
        model: onnx.ModelProto,
        path: Path,
        forced: Mapping[str, Mode],
        options: Mapping[str, Any],
        threads: int,
    ) -> None:
        register_schemas()
        self.model = model
        self.path = path
        self.forced = dict(forced)
        self.batch: int = options["batch"]
        self.einsum: bool | None = options["einsum"]
        self.tile_rows: int | None = options["tile_rows"]
        self.calibrate_on: bool = options["calibrate"]
        self.memory_budget_mb: float | None = options["memory_budget_mb"]
        self.latency_target_ms: float | None = options["latency_target_ms"]
        self.threads = threads
        self.specs = _layer_specs(model)
        #: each layer's input shape at the session's batch (None: not known statically)
        self.shapes: dict[str, list[int] | None] = {}
        for name, (spec, node) in self.specs.items():
            shape = _layer_input_shape(model, node.input[0], self.batch)
            if shape is None and spec.kind == "linear" and spec.input_rank == 2:
                shape = [self.batch, spec.plan.in_features]
            self.shapes[name] = shape
        #: the rows each layer's weight multiplies per call (its latency's batch)
        self.rows = {
            n: sp.gemm_rows(self.batch, self.shapes[n]) for n, (sp, _) in self.specs.items()
        }
        check_layers_fit(
            {n: sp.plan for n, (sp, _) in self.specs.items()},
            self.forced,
            self.batch,
            tile_rows=self.tile_rows,
        )
        self.rates: DeviceRates = DEFAULT_RATES
        self.cache: Any = None
        self.candidates: dict[str, list[Candidate]] = {}
        self.choices: dict[str, LayerChoice] = {}
        self.measured_rss: dict[tuple[str, str], int] = {}
        self.einsum_pick: dict[str, bool] = {}
        self.calibration_shape: dict[str, list[int]] = {}

    @functools.cached_property
    def heavy_floor(self) -> float:
        """Bytes under which no candidate counts as heavy (see :data:`_HEAVY_SHARE`)."""
        from adntn_runtime.calibration import vm_rss_bytes

        def nbytes(t: onnx.TensorProto) -> int:
            try:
                item = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            except (KeyError, ValueError, TypeError):  # the file was checked; count 4 bytes
                item = 4
            return math.prod(t.dims) * item

        weights = sum(nbytes(t) for t in self.model.graph.initializer)
        return max(_HEAVY_MIN_BYTES, _HEAVY_SHARE * (vm_rss_bytes() + weights))

    @property
    def free(self) -> list[str]:
        """The layers whose mode the policy picks."""
        return [n for n in self.specs if n not in self.forced]

    # -------------------------------------------------------------- candidates
    def calibrate(self) -> None:
        """Device rates (measured or cached), then every free layer's candidates."""
        if self.calibrate_on and self.free:
            from adntn_runtime import calibration

            _ = self.heavy_floor  # the footprint before any measurement

            self.cache = calibration.CalibrationCache(calibration.sha256_file(self.path))
            self.rates = calibration.device_rates(self.threads)
        for name in self.free:
            self.candidates[name] = self._layer_candidates(name)

    def _predicted(self, name: str) -> list[Candidate]:
        """``name``'s candidates as predicted from the device rates (nothing measured)."""
        spec = self.specs[name][0]
        return layer_candidates(
            spec.plan,
            self.batch,
            self.rates,
            tile_rows=self.tile_rows,
            rows=self.rows[name],
            conv=spec.conv is not None,
        )

    def _layer_candidates(self, name: str) -> list[Candidate]:
        """``name``'s candidates; when calibrating, each worth measuring measured."""
        cands = fitting(self._predicted(name))
        if self.cache is None:
            return cands
        shape = self.shapes[name]
        budget = math.inf if self.memory_budget_mb is None else self.memory_budget_mb * 2**20
        fits = [c for c in cands if c.memory_bytes <= budget]
        best_pred = min((c.predicted_ms for c in fits), default=math.inf)
        lightest = min((c.memory_bytes for c in fits), default=0)
        out = []
        for c in cands:
            skip = None
            if shape is None:
                skip = "input shape unknown"
            elif c.memory_bytes > budget:
                skip = "over the memory budget"
            elif _CALIBRATION_FACTOR * c.memory_bytes > budget:
                skip = "measuring it would exceed the memory budget"
            elif len(fits) > 1 and c.predicted_ms > _MEASURE_RATIO * best_pred:
                skip = f"predicted > {_MEASURE_RATIO:g}x the best"
            elif c.memory_bytes > max(_HEAVY_RATIO * lightest, self.heavy_floor):
                skip = (
                    f"measured only if picked (it needs {c.memory_bytes / 2**20:.1f} MiB, over "
                    f"{_HEAVY_RATIO:g}x the lightest candidate's and over "
                    f"{self.heavy_floor / 2**20:.1f} MiB, {100 * _HEAVY_SHARE:g}% of the "
                    "session's footprint)"
                )
            if skip:
                out.append(Candidate(c.mode, c.predicted_ms, c.memory_bytes, None, skip))
            else:
                out.append(self.measure(name, c))
        return out

    def _calibration_input(self, name: str) -> tuple[LayerSpec, list[int], float]:
        """What ``name`` is measured on: (its spec, the input shape, the session's GEMM rows
        per measured row). The session's shape, or fewer samples where the layer's input and
        output at the session's batch would exceed the heavy floor; a convolution whose one
        sample still exceeds it is measured on a band of image rows (its time is per output
        pixel). A lone layer holds its input and output, and ORT's layout reorders around it
        copy both again (canonical VGG-16 compressed whole, batch 8: measuring conv1_2 on 103
        MB in and out lifted the load's peak to 1.34x the fused session's)."""
        spec, shape = self.specs[name][0], self.shapes[name]
        assert shape is not None
        floor = self.heavy_floor
        out_per_sample = self.rows[name] // self.batch * spec.plan.out_features
        per_sample = 4 * (math.prod(shape[1:]) + out_per_sample)
        at = max(1, min(self.batch, int(floor // max(per_sample, 1))))
        measured = [at, *shape[1:]]
        conv = spec.conv
        if per_sample > floor and conv is not None and len(shape) == 4:
            spec = dataclasses.replace(spec, conv=dataclasses.replace(conv, output_hw=None))
            (kh, _), (ph, _), (dh, _) = conv.kernel_shape, conv.pads, conv.dilations
            least = max(1, dh * (kh - 1) + 1 - 2 * ph)  # one output row
            measured[2] = max(least, min(shape[2], int(shape[2] * floor / per_sample)))
        return spec, measured, self.rows[name] / spec.gemm_rows(at, measured)

    def measure(self, name: str, c: Candidate) -> Candidate:
        """``c`` with its measured latency at the session's batch (cached per device and
        model; measured on :meth:`_calibration_input` and scaled linearly from there)."""
        assert self.cache is not None
        spec, shape, scale = self._calibration_input(name)
        self.calibration_shape[name] = shape
        forms = (
            [True, False]
            if (self.einsum is None and c.mode == "fused")
            else [self.einsum is not False]
        )
        best = None
        for form in forms:
            key = (
                f"{name}|{c.mode}|einsum={int(form)}|in{'x'.join(map(str, shape))}"
                f"|t{self.threads}|tile={self.tile_rows}"
            )
            got = self.cache.layer(key)
            if got is None:
                got = _measure_layer(
                    spec, c.mode, shape, self.threads, einsum=form, tile_rows=self.tile_rows
                )
                self.cache.set_layer(key, got)
            if best is None or got["ms"] < best[1]["ms"]:
                best = (form, got)
        assert best is not None
        if c.mode == "fused":
            self.einsum_pick[name] = best[0]
        self.measured_rss[(name, c.mode)] = int(best[1]["rss_bytes"])
        return Candidate(c.mode, c.predicted_ms, c.memory_bytes, best[1]["ms"] * scale)

    # -------------------------------------------------------------- choice
    def _choose_once(self) -> None:
        self.choices = (
            choose_modes(
                self.candidates,
                memory_budget_mb=self.memory_budget_mb,
                latency_target_ms=self.latency_target_ms,
            )
            if self.candidates
            else {}
        )

    def choose(self) -> None:
        """The policy's pick; a pick resting on a prediction alone gets measured, then the
        policy runs again (three rounds at most)."""
        self._choose_once()
        if self.cache is None:
            return
        for _ in range(3):
            todo = [
                (n, ch.candidate)
                for n, ch in self.choices.items()
                if ch.candidate.measured_ms is None and self.shapes.get(n) is not None
            ]
            if not todo:
                break
            for n, cand in todo:
                self.candidates[n] = [
                    self.measure(n, c) if c is cand else c for c in self.candidates[n]
                ]
            self._choose_once()
        self.cache.save()

    # -------------------------------------------------------------- decisions
    def einsum_form(self, name: str, mode: str) -> bool:
        """Einsum (True) or MatMul form of ``name`` in ``mode``."""
        default = True if self.einsum is None else self.einsum
        if mode == "fused" and name not in self.forced:
            return self.einsum_pick.get(name, default)
        return default

    def decisions(self, modes: object) -> dict[str, LayerDecision]:
        """Layer -> its :class:`LayerDecision`, in the model's order."""
        return {
            name: self._forced_decision(name, modes)
            if name in self.forced
            else self._chosen_decision(name)
            for name in self.specs
        }

    def _forced_decision(self, name: str, modes: object) -> LayerDecision:
        mode = self.forced[name]
        cands = self._predicted(name)
        c = {c.mode: c for c in cands}.get(mode)
        shown = modes if not isinstance(modes, Mode) else modes.value
        return LayerDecision(
            name,
            str(mode),
            True,
            f"{mode}: forced by the caller (modes={shown!r})",
            predicted_ms=c.predicted_ms if c else None,
            predicted_memory_bytes=c.memory_bytes if c else None,
            einsum=self.einsum_form(name, mode) if mode != "materialize" else None,
            tile_rows=self.tile_rows,
        )

    def _chosen_decision(self, name: str) -> LayerDecision:
        ch = self.choices[name]
        return LayerDecision(
            name,
            str(ch.mode),
            False,
            ch.reason,
            predicted_ms=ch.candidate.predicted_ms,
            measured_ms=ch.candidate.measured_ms,
            predicted_memory_bytes=ch.candidate.memory_bytes,
            measured_memory_bytes=self.measured_rss.get((name, ch.mode)),
            calibration_shape=self.calibration_shape.get(name),
            einsum=self.einsum_form(name, ch.mode) if ch.mode != "materialize" else None,
            tile_rows=self.tile_rows if ch.mode == "regenerate" else None,
            alternatives=[
                {
                    "mode": a.mode,
                    "predicted_ms": a.predicted_ms,
                    "measured_ms": a.measured_ms,
                    "memory_bytes": a.memory_bytes,
                    "note": a.note,
                }
                for a in ch.alternatives
            ],
        )


def _layer_specs(model: onnx.ModelProto) -> dict[str, tuple[LayerSpec, onnx.NodeProto]]:
    """Layer name -> (spec, placeholder node), in the model's order."""
    inits = {t.name: t for t in model.graph.initializer}
    specs: dict[str, tuple[LayerSpec, onnx.NodeProto]] = {}
    for node in model.graph.node:
        if is_placeholder(node):
            arrays = {n: numpy_helper.to_array(inits[n]) for n in node.input[1:] if n in inits}
            spec = spec_from_node(node, arrays)
            specs[spec.name] = (spec, node)
    return specs


def load(
    path: str | os.PathLike[str],
    *,
    memory_budget_mb: float | None = None,
    latency_target_ms: float | None = None,
    batch: int = 1,
    threads: int | None = None,
    calibrate: bool = True,
    einsum: bool | None = None,
    modes: Mode | str | Mapping[str, Mode | str] | None = None,
    tile_rows: int | None = None,
    optimized_model_path: str | os.PathLike[str] | None = None,
    allow_nonfinite: bool = False,
    memory_pattern: bool = False,
    max_batch: int | None = None,
    steady_heap: bool = True,
    profile_prefix: str | os.PathLike[str] | None = None,
) -> Session:
    """Load an ONNX file and pick each ADNTN layer's mode; returns a :class:`Session`.

    Args:
        path: an ``.onnx`` file: exported with ``mode="auto"`` (the policy lowers each layer),
            in a fixed mode (run as is, mode reported as forced), or plain ONNX.
        memory_budget_mb: megabytes (MiB) the ADNTN layers may hold in total; None: no limit.
        latency_target_ms: total milliseconds per call of the ADNTN layers that is good
            enough; among choices meeting it the least memory wins. None: fastest.
        batch: the batch size to optimise for (any batch runs).
        threads: ORT intra-op threads (None: ORT's default).
        calibrate: measure the device and each candidate mode of each layer (cached per
            device and model under ``$ADNTN_CACHE_DIR/calibration``); False: predictions
            from default rates only.
        einsum: ``Einsum`` nodes (True) or the Transpose/Reshape/MatMul form (False) for
            fused/regenerate layers; None: for fused layers measure both and keep the faster
            (Einsum without calibration).
        modes: force one mode for every layer, or layer -> mode (reported as forced).
        tile_rows: rows per regenerate tile (default: the plan's, about 1/64 of the rows).
        optimized_model_path: ask ORT to write its optimized graph there (for inspection).
        allow_nonfinite: load ADNTN layers holding NaN / Inf (refused by default).
        memory_pattern: let ONNX Runtime plan one memory block for the intermediate tensors
            of the first call's shapes (its ``enable_mem_pattern``). Off by default: on
            VGG-16 at batch 8 it cost 1.4x the peak RSS and was no faster.
        max_batch: run a larger batch in slices of at most this many samples, so that the
            intermediate tensors (which dominate a compressed model's memory at a large
            batch) are one slice's; calls take about as long as the slices together. The
            policy then optimises for ``min(batch, max_batch)``. Needs a dynamic batch
            dimension. None: every batch in one call.
        steady_heap: pin glibc's mmap threshold (:func:`adntn_runtime.heap.pin_mmap_threshold`,
            process-wide, once) so that the buffers freed while loading go back to the OS:
            the load's peak is then the same every time, and lower (canonical VGG-16, fused
            classifier: 178 MB x3 vs 186-224 MB, ``benchmarks/results/heap_ab.json``).
            False: the C heap as the process has it.
        profile_prefix: record ONNX Runtime's profile of every call (each node's kernel time,
            Chrome trace JSON); ``session.ort_session.end_profiling()`` writes it to
            ``<profile_prefix>_<date>.json`` and returns that path. None: no profiling.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a corrupt file, bad arguments, an impossible budget
            (:class:`~adntn_runtime.policy.BudgetError` names the smallest that fits).
    """
    t_start = time.perf_counter()
    _check_args(memory_budget_mb, latency_target_ms, batch, threads, einsum, max_batch, steady_heap)
    if profile_prefix is not None and not isinstance(profile_prefix, str | os.PathLike):
        raise TypeError(
            f"profile_prefix must be a path prefix (str or os.PathLike) or None, "
            f"got {type(profile_prefix).__name__}"
        )
    if steady_heap:
        pin_mmap_threshold()
    options = dict(
        batch=batch if max_batch is None else min(batch, max_batch),
        max_batch=max_batch,
        threads=threads,
        memory_budget_mb=memory_budget_mb,
        latency_target_ms=latency_target_ms,
        calibrate=calibrate,
        einsum=einsum,
        tile_rows=tile_rows,
        memory_pattern=bool(memory_pattern),
        profile_prefix=None if profile_prefix is None else os.fspath(profile_prefix),
    )
    path = Path(path)
    model = _read_model(path, allow_nonfinite)
    if max_batch is not None:
        _check_sliceable(model, path, max_batch)
    layers = placeholder_layers(model)
    if not layers:
        meta = {p.key: p.value for p in model.metadata_props}
        del model  # free the parsed proto (it may hold a dense weight) before ORT loads
        return _load_fixed(path, meta, options, threads, optimized_model_path, t_start)
    holder = [model]
    del model  # _load_auto holds the only reference, dropped before ORT loads
    return _load_auto(holder, path, layers, modes, options, optimized_model_path, t_start)


def _load_auto(
    holder: list[onnx.ModelProto],
    path: Path,
    layers: Sequence[str],
    modes: Mode | str | Mapping[str, Mode | str] | None,
    options: dict[str, Any],
    optimized_model_path: Any,
    t_start: float,
) -> Session:
    """:func:`load` of a file with placeholders: decide, lower, open the ORT session."""
    model = holder.pop()
    threads, batch, tile_rows = options["threads"], options["batch"], options["tile_rows"]
    forced = _forced_modes(layers, modes)
    with tempfile.TemporaryDirectory(prefix="adntn-load-") as tmp:
        folder = Path(tmp)
        # Large non-ADNTN initializers (the dense trunk) go to a file ORT reads later; the
        # protobuf kept from here on is the graph alone (no second copy of the trunk while
        # lowering and calibrating, none handed to ORT).
        model = _externalize_initializers(model, folder)
        release_freed_memory()
        planner = _Planner(model, path, forced, options, threads or os.cpu_count() or 1)
        t_cal = time.perf_counter()
        planner.calibrate()
        planner.choose()
        calibration_seconds = time.perf_counter() - t_cal if planner.cache is not None else 0.0
        decisions = planner.decisions(modes)
        final_modes = {name: d.mode for name, d in decisions.items()}
        einsum_flags = {name: planner.einsum_form(name, d.mode) for name, d in decisions.items()}
        rates = planner.rates
        del planner  # its specs hold nodes and tensors that keep the parsed model alive
        lowered, _, no_fold = lower_for_runtime(
            model,
            final_modes,
            einsum=einsum_flags,
            batch_hint=batch,
            tile_rows=tile_rows,
            weight_dir=folder,
        )
        del model
        so = _session_options(
            threads,
            no_fold,
            optimized_model_path,
            options["memory_pattern"],
            options["profile_prefix"],
        )
        sess = _ort_session_from_dir(lowered, so, folder, path)
    release_freed_memory()
    options["constant_folding"] = not no_fold
    return Session(
        sess,
        path=path,
        kind="auto",
        decisions=decisions,
        model=lowered,
        options=options,
        rates=rates,
        load_seconds=time.perf_counter() - t_start,
        calibration_seconds=calibration_seconds,
        max_batch=options["max_batch"],
    )


def _load_fixed(
    path: Path,
    meta: Mapping[str, str],
    options: dict[str, Any],
    threads: int | None,
    optimized_path: Any,
    t_start: float,
) -> Session:
    decisions: dict[str, LayerDecision] = {}
    for key, value in meta.items():
        if not key.startswith("adntn.layer."):
            continue
        try:
            info = json.loads(value)
        except ValueError:
            continue
        mode = str(info.get("mode", "unknown"))
        layer = key[len("adntn.layer.") :]
        decisions[layer] = LayerDecision(
            layer,
            mode,
            True,
            f"{mode}: forced (the file was exported in fixed mode {mode!r})",
            einsum=info.get("einsum"),
        )
    no_fold = "ConstantFolding" in meta.get(SESSION_OPTIONS_KEY, "")
    so = _session_options(
        threads, no_fold, optimized_path, options["memory_pattern"], options["profile_prefix"]
    )
    sess = _make_ort_session(str(path), so, path)
    options["constant_folding"] = not no_fold
    return Session(
        sess,
        path=path,
        kind="fixed" if decisions else "plain",
        decisions=decisions,
        model=None,
        options=options,
        rates=None,
        load_seconds=time.perf_counter() - t_start,
        calibration_seconds=0.0,
        max_batch=options["max_batch"],
    )
