"""``compile_onnx``: ONNX -> Relax -> an exported, self-describing OUTDIR.

Layout of ``OUT`` (every file's sha256 is in the manifest)::

    model.so          Relax VM executable + kernels, linked for the target CPU (cross-linked
                      for ARM). VM function ``main`` takes the data inputs (then
                      ``materialize()``'s results, when the manifest names it).
    manifest.json     target, mode, input/output names, shapes and dtypes, hashes, versions.
    runtime/          TVM runtime libraries for the device (libtvm_runtime.so, libtvm_ffi.so,
                      + libtvm_runtime_cuda.so for Jetson) - copy with model.so to the device.
    kernels/          device kernel sources: model.cu (+ model_sm_87.fatbin if nvcc is
                      present) for CUDA targets, model.cl for OpenCL targets.

Per-layer modes (:mod:`.layer_modes` says which and why; ``manifest.json`` records both):
``dense`` folds a layer's weight into constants at compile time; ``materialize`` lifts its
weight build (Relax ``LiftTransformParams``) into a VM function ``materialize()`` (no
arguments; the cores are its constants) run once at load; ``regenerate`` keeps the cores as
inputs of ``main`` (``materialize()`` returns them unchanged) so the weight is rebuilt at every
call; ``fused`` keeps the cores as constants (the input-independent factors fold at compile
time). ``main(*data_inputs, *materialize())`` runs one inference when ``materialize`` exists.

ADNTN layers of an ``auto`` file reach Relax from their plan: the runtime's own lowering
(:func:`adntn_runtime.onnx_lowering.lower_model`, MatMul/Reshape form, no ``Einsum``) in the
mode chosen for TVM. So do those of a fixed-mode file (``adntn export --mode
fused|materialize|regenerate``): each layer's ``adntn.placeholder.<name>`` record gives its
placeholder back (:func:`adntn_runtime.substitution.restore_placeholders` drops the nodes the
export emitted), lowered in the export's mode unless ``--mode`` or the policy's limits ask
otherwise, a regenerate layer in the row tiles its export used (the record's ``tile_rows``).
Files without records (older exports, ``dense``) are compiled as exported (their
``Einsum`` nodes go through TVM's own ``einsum``, with a note in the manifest). Every file is
normalised first (:mod:`.normalize`).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adntn_export.tvm_backend.layer_modes import LayerMode
from adntn_export.tvm_backend.targets import TargetSpec, get_target
from adntn_runtime.modes import LoweringMode
from adntn_runtime.tvm.manifest import MANIFEST, Manifest, TensorInfo, sha256_of

MATERIALIZE_FN = "materialize"


@dataclass
class Prepared:
    """A Relax module ready to build, plus what the manifest needs to know about it."""

    mod: Any
    inputs: list[TensorInfo]
    mode: str
    notes: list[str]
    layers: dict[str, LayerMode] = field(default_factory=dict)


def _onnx_dtype(elem_type: int) -> str:
    from onnx import helper

    return str(helper.tensor_dtype_to_np_dtype(elem_type))


def _read(path: Path) -> Any:
    import onnx

    if not path.exists():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises several types
        raise ValueError(f"{path} is not a readable ONNX model: {exc}") from exc


def _data_inputs(
    model: Any, input_shapes: dict[str, list[int]] | None, batch: int | None
) -> list[TensorInfo]:
    """The data inputs with static shapes (``--input-shape`` wins, then ``--batch``)."""
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"--batch {batch!r} is not a batch size; give an integer >= 1")
    init_names = {i.name for i in model.graph.initializer}
    given = dict(input_shapes or {})
    inputs: list[TensorInfo] = []
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        if vi.name in given:
            shape = [int(d) for d in given.pop(vi.name)]
        else:
            shape = []
            for i, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    shape.append(d.dim_value)
                elif i == 0 and batch is not None:
                    shape.append(batch)
                else:
                    raise ValueError(
                        f"input {vi.name!r} has a dynamic dimension {i} ({d.dim_param or '?'}); "
                        + ("give --batch N or " if i == 0 else "give ")
                        + f"--input-shape {vi.name}=D0,D1,..."
                    )
        inputs.append(TensorInfo(vi.name, shape, _onnx_dtype(tt.elem_type)))
    if given:
        raise ValueError(
            f"--input-shape names unknown inputs {sorted(given)}; "
            f"the model's inputs: {[t.name for t in inputs]}"
        )
    return inputs


_FROM_PLAN = "; lowered from the plan"


def _prefix(layer: str) -> str:
    """A layer's metadata name (its node prefix) from its placeholder ``layer`` attribute."""
    return layer or "layer"


def _only(model: Any, layers: dict[str, LayerMode]) -> Any:
    """A shallow stand-in for ``model`` whose metadata holds only ``layers``' records."""
    import onnx

    out = onnx.ModelProto()
    keys = {f"adntn.layer.{n}" for n in layers}
    for p in model.metadata_props:
        if p.key in keys:
            out.metadata_props.add().CopyFrom(p)
    return out


def _layer_params(model: Any, layers: dict[str, LayerMode], modes: tuple[str, ...]) -> list[str]:
    """Float initializers (more than one element) read by the nodes of layers in ``modes``
    (nodes carry their layer in ``adntn.layer`` node metadata) and by no other node."""
    inits = {t.name: t for t in model.graph.initializer}
    owner: dict[str, set[str | None]] = {}
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        for name in node.input:
            if name in inits:
                owner.setdefault(name, set()).add(meta.get("adntn.layer"))
    out = []
    for name, users in owner.items():
        t = inits[name]
        if len(users) != 1 or None in users or t.data_type != 1 or _numel(t) <= 1:
            continue
        (layer,) = users
        if layer in layers and layers[layer].mode in modes:
            out.append(name)
    return out


def _numel(t: Any) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def _uniform_mode(layers: dict[str, LayerMode]) -> str:
    modes = {lm.mode.value for lm in layers.values()}
    if not modes:
        return "dense"  # no ADNTN layer: every weight is a constant
    return modes.pop() if len(modes) == 1 else "mixed"


def _layer_modes(
    model: Any,
    mode: str | None,
    run_batch: int,
    memory_budget_mb: float | None,
    latency_target_ms: float | None,
    notes: list[str],
) -> tuple[Any, dict[str, LayerMode]]:
    """Each ADNTN layer's mode on TVM, and the model with every layer that has a plan (a
    placeholder, or a fixed export's record of one) lowered from it in that mode."""
    from adntn_export.tvm_backend.layer_modes import file_layer_modes, placeholder_layer_modes
    from adntn_runtime import onnx_lowering as lowering
    from adntn_runtime.substitution import restore_placeholders

    restored: dict[str, Any] = {}
    fixed: dict[str, LayerMode] = {}
    if not lowering.placeholder_layers(model):
        fixed = file_layer_modes(model, mode=None)
        model, restored, skipped = restore_placeholders(model)
        notes += skipped
    if lowering.placeholder_layers(model):
        from_policy = (
            mode is not None or memory_budget_mb is not None or (latency_target_ms is not None)
        )
        exported = {n: fixed.get(_prefix(n)) for n in restored}
        if restored and not from_policy and None not in exported.values():
            layers = {n: LayerMode(lm.mode, lm.reason + _FROM_PLAN) for n, lm in exported.items()}
        else:
            layers = placeholder_layer_modes(
                model,
                mode=mode,
                batch=run_batch,
                memory_budget_mb=memory_budget_mb,
                latency_target_ms=latency_target_ms,
            )
            for n, lm in layers.items():
                if n in exported:
                    was = exported[n]
                    tail = f" (exported {was.mode.value})" if was is not None else ""
                    layers[n] = LayerMode(lm.mode, f"{lm.reason}{_FROM_PLAN}{tail}")
        tiles = {n: r.tile_rows for n, r in restored.items() if r.tile_rows is not None}
        layers = _with_tiling(model, layers, tiles)
        model = lowering.lower_model(
            model,
            {n: lm.mode.value for n, lm in layers.items()},
            einsum=False,
            batch_hint=run_batch,
            tile_rows=tiles,
        )
        # layers an export lowered but recorded no placeholder for keep their nodes
        rest = {n: lm for n, lm in fixed.items() if n not in {_prefix(r) for r in restored}}
        if rest:
            layers.update(file_layer_modes(_only(model, rest), mode=mode))
    else:
        if memory_budget_mb is not None or latency_target_ms is not None:
            notes.append(
                "--memory-budget-mb/--latency-target-ms ignored: the file's modes were fixed "
                "at export and it records no plan to lower its layers from (re-export it with "
                "this adntn, or with --mode auto)"
            )
        layers = file_layer_modes(model, mode=mode)
        if mode is not None and not layers:
            notes.append(f"--mode {mode} ignored: the model has no ADNTN layer")
    return model, layers


def _with_tiling(
    model: Any, layers: dict[str, LayerMode], tiles: dict[str, int]
) -> dict[str, LayerMode]:
    """``layers`` with each regenerate placeholder layer's rows per tile (``tiles``, else the
    plan's default) and its number of row tiles, for the manifest."""
    import dataclasses

    from onnx import helper

    from adntn_runtime.onnx_format import is_placeholder
    from adntn_runtime.plan import ADNTNPlan

    out = dict(layers)
    for node in model.graph.node:
        if not is_placeholder(node):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        name = attrs.get("layer", b"").decode(errors="replace")
        if name not in out or out[name].mode is not LoweringMode.REGENERATE:
            continue
        try:
            plan = ADNTNPlan.from_json(attrs["plan"].decode(errors="replace"))
        except (KeyError, ValueError, TypeError):
            continue  # the lowering names the bad plan
        rows = tiles.get(name)
        try:
            count = len(plan.row_tiles(rows))
        except ValueError as exc:
            where = f"its adntn.placeholder.{_prefix(name)} record's" if rows else "the default"
            raise ValueError(f"layer {name!r} ({where} tile_rows): {exc}") from None
        out[name] = dataclasses.replace(out[name], tile_rows=rows, row_tiles=count)
    return out


def prepare_relax(
    onnx_path: str | os.PathLike[str],
    *,
    mode: str | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    batch: int | None = None,
    memory_budget_mb: float | None = None,
    latency_target_ms: float | None = None,
) -> Prepared:
    """Load an exported ONNX file, choose each ADNTN layer's mode, normalise, import into Relax.

    Args:
        onnx_path: a file ``adntn export`` wrote (any mode), or any ONNX model.
        mode: a :class:`~adntn_runtime.modes.LoweringMode` for every ADNTN layer (``--mode``);
            ``None``: the policy chooses (``auto`` files) or the export's modes (fixed files).
        input_shapes: static shapes of inputs (``--input-shape``).
        batch: the batch size for a dynamic first dimension (``--batch``).
        memory_budget_mb, latency_target_ms: the policy's limits (``auto`` files).
    """
    from adntn_export.tvm_backend.normalize import normalize

    path = Path(onnx_path)
    model = _read(path)
    inputs = _data_inputs(model, input_shapes, batch)
    notes: list[str] = []
    run_batch = inputs[0].shape[0] if inputs and inputs[0].shape else 1
    model, layers = _layer_modes(model, mode, run_batch, memory_budget_mb, latency_target_ms, notes)
    if any(n.op_type == "Einsum" for n in model.graph.node):
        notes.append(
            "Einsum nodes compiled with TVM's einsum: the file records no plan for their "
            "layers (re-export it with this adntn, with --mode auto, or with --no-einsum)"
        )
    regen = _layer_params(model, layers, ("regenerate",))
    mat = _layer_params(model, layers, ("materialize",))
    norm = normalize(model, {t.name: t.shape for t in inputs}, [*regen, *mat])

    from tvm import relax

    mod = _import(norm.model, path, relax)
    n_regen = len(regen)
    mod = _split_weights(mod, relax, len(inputs), norm.params[:n_regen], norm.params[n_regen:])
    return Prepared(mod, inputs, _uniform_mode(layers), notes, layers)


def _import(model: Any, path: Path, relax: Any) -> Any:
    """``from_onnx``; on failure a ``ValueError`` naming the file, with the importer's
    BlockBuilder closed first (else TVM warns "BlockBuilder destroyed with remaining blocks!"
    when the traceback is dropped)."""
    from tvm.relax.frontend.onnx import from_onnx

    try:
        return from_onnx(model)
    except Exception as exc:  # the importer raises many types (TVMError, KeyError, ...)
        _close_builders(exc.__traceback__, relax)
        raise ValueError(f"TVM's ONNX importer cannot read {path}: {exc}") from None


def _close_builders(tb: Any, relax: Any) -> None:
    """End the blocks a failed import left open on its ``BlockBuilder`` (``self.bb``)."""
    while tb is not None:
        builder = getattr(tb.tb_frame.f_locals.get("self"), "bb", None)
        if isinstance(builder, relax.BlockBuilder):
            while True:
                try:
                    builder._end_block()
                except Exception:  # no block left
                    break
        tb = tb.tb_next


def _split_weights(mod: Any, relax: Any, n_data: int, regen: list[Any], mat: list[Any]) -> Any:
    """``main(*data, *regen, *mat)`` -> ``main(*data, *materialize())``.

    ``materialize()`` returns the regenerate cores unchanged and the weights built from the
    materialize cores (``LiftTransformParams`` moves their build out of ``main``).
    """
    if not regen and not mat:
        return mod
    mod["main"] = mod["main"].with_attr("num_input", n_data + (len(regen) if mat else 0))
    if mat:
        mod = relax.transform.LiftTransformParams()(mod)
        transform = mod.get_global_var("main_transform_params")
        count = len(mod[transform].ret_ty.fields)  # the weights ``main`` now takes
    bb = relax.BlockBuilder(mod)
    with bb.function(MATERIALIZE_FN, [], attrs={"num_input": 0}):
        fields = [relax.const(p) for p in regen]
        if mat:
            built = bb.emit(relax.Call(transform, [relax.Tuple([relax.const(p) for p in mat])]))
            fields += [bb.emit(relax.TupleGetItem(built, i)) for i in range(count)]
        out = bb.emit(relax.Tuple(fields))
        bb.emit_func_output(out)
    return bb.finalize()


def _function_names(mod: Any) -> set[str]:
    return {gv.name_hint for gv in mod.get_global_vars()}


def build(prepared: Prepared, spec: TargetSpec, *, pipeline: Any = None) -> Any:
    """``tvm.compile`` with the default Relax pipeline (or ``pipeline``) for ``spec``."""
    import tvm
    from tvm import relax

    target = spec.tvm_target()
    if pipeline is None:
        pipeline = relax.get_default_pipeline(target)
    with target:
        return tvm.compile(prepared.mod, target=target, relax_pipeline=pipeline)


def _device_modules(executable: Any) -> list[Any]:
    seen, stack, out = set(), [executable.mod], []
    while stack:
        m = stack.pop()
        for imp in m.imports:
            key = id(imp)
            if key in seen:
                continue
            seen.add(key)
            if imp.kind in ("cuda", "opencl", "vulkan", "metal"):
                out.append(imp)
            stack.append(imp)
    return out


def _save_kernels(executable: Any, spec: TargetSpec, out: Path, notes: list[str]) -> None:
    devs = _device_modules(executable)
    if not devs:
        return
    kdir = out / "kernels"
    kdir.mkdir(exist_ok=True)
    ext = {"cuda": "cu", "opencl": "cl"}
    for i, m in enumerate(devs):
        suffix = "" if len(devs) == 1 else f"_{i}"
        src = kdir / f"model{suffix}.{ext.get(m.kind, m.kind)}"
        src.write_text(m.inspect_source())
        if m.kind == "cuda":
            arch = str(spec.target.get("arch", "sm_87"))
            nvcc = shutil.which("nvcc")
            if nvcc is None:
                notes.append(f"nvcc not found: no {arch} fatbin built (CUDA source only)")
                continue
            fatbin = kdir / f"model{suffix}_{arch}.fatbin"
            num = arch.removeprefix("sm_")
            cmd = [
                nvcc,
                "-fatbin",
                "-O3",
                "-w",
                "-gencode",
                f"arch=compute_{num},code=[sm_{num},compute_{num}]",
                "-o",
                str(fatbin),
                str(src),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"nvcc failed building {fatbin.name}:\n{proc.stderr[-3000:]}")


def _copy_runtime(spec: TargetSpec, out: Path, notes: list[str]) -> None:
    from adntn_export.tvm_backend.device_runtime import find_runtime, runtime_dir

    tree = find_runtime(spec.arch)
    if tree is None:
        notes.append(
            f"runtime/ not populated: {spec.arch} TVM runtime not cached under "
            f"{runtime_dir(spec.arch)} (see adntn_export.tvm_backend.device_runtime)"
        )
        return
    rdir = out / "runtime"
    rdir.mkdir(exist_ok=True)
    for lib in tree.libraries(spec.kind):
        shutil.copy2(lib, rdir / lib.name)
    if spec.kind == "opencl":
        notes.append(
            "the TVM wheels ship no OpenCL runtime: the device needs a TVM runtime built with "
            "USE_OPENCL=ON (kernels/model.cl holds the kernels)"
        )


def _copy_runner(spec: TargetSpec, out: Path) -> None:
    from adntn_export.tvm_backend.runner_build import build_runner

    if spec.kind != "cpu":
        raise ValueError(
            f"--with-runner: the C++ tvm_runner runs CPU targets only, not {spec.name} "
            f"({spec.kind}); leave --with-runner out"
        )
    (out / "runtime").mkdir(exist_ok=True)
    shutil.copy2(build_runner(spec.arch), out / "runtime" / "tvm_runner")


def _output_infos(executable_mod: Any) -> list[TensorInfo]:
    ret = executable_mod["main"].ret_ty  # struct info of main's result (TVM 0.27 naming)
    leaves = list(ret.fields) if hasattr(ret, "fields") else [ret]
    outs = []
    for i, sinfo in enumerate(leaves):
        shape = [int(d) for d in sinfo.shape.values] if sinfo.shape is not None else []
        outs.append(TensorInfo(f"output_{i}", shape, str(sinfo.dtype)))
    return outs


def export(
    executable: Any,
    prepared: Prepared,
    spec: TargetSpec,
    out_dir: str | os.PathLike[str],
    *,
    tuned: dict[str, Any] | None = None,
    runner: bool = False,
) -> Manifest:
    """Write ``model.so``, ``runtime/``, ``kernels/`` and ``manifest.json`` into ``out_dir``;
    ``runner``: also the C++ ``tvm_runner`` for the device, in ``runtime/`` (CPU targets)."""
    from adntn_export.tvm_backend.device_runtime import versions

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("runtime", "kernels"):
        shutil.rmtree(out / stale, ignore_errors=True)
    notes = list(prepared.notes)
    fcompile = spec.fcompile()
    so = out / "model.so"
    if fcompile is None:
        executable.export_library(str(so))
    else:
        executable.export_library(str(so), fcompile=fcompile)
    _save_kernels(executable, spec, out, notes)
    _copy_runtime(spec, out, notes)
    if runner:
        _copy_runner(spec, out)
    files = {
        str(p.relative_to(out)): sha256_of(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    tvm_v, ffi_v = versions()
    manifest = Manifest(
        target=spec.name,
        target_config=spec.target_dict(),
        kind=spec.kind,
        arch=spec.arch,
        mode=prepared.mode,
        inputs=prepared.inputs,
        outputs=_output_infos(prepared.mod),
        files=files,
        tvm_version=tvm_v,
        tvm_ffi_version=ffi_v,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        materialize=MATERIALIZE_FN if MATERIALIZE_FN in _function_names(prepared.mod) else None,
        tuned=tuned,
        notes=notes,
        layers={name: lm.to_dict() for name, lm in prepared.layers.items()},
    )
    (out / MANIFEST).write_text(manifest.to_json())
    return manifest


def compile_onnx(
    onnx_path: str | os.PathLike[str],
    target: str | TargetSpec,
    out_dir: str | os.PathLike[str],
    *,
    mode: str | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    batch: int | None = None,
    memory_budget_mb: float | None = None,
    latency_target_ms: float | None = None,
    runner: bool = False,
) -> Manifest:
    """Compile an ONNX model for a named target into ``out_dir``; returns the manifest.

    ``mode``, ``input_shapes``, ``batch``, ``memory_budget_mb``, ``latency_target_ms``: see
    :func:`prepare_relax`; ``runner``: see :func:`export`.
    """
    spec = get_target(target)
    spec.require_cross_compiler()  # fail before the (slow) import and build
    prepared = prepare_relax(
        onnx_path,
        mode=mode,
        input_shapes=input_shapes,
        batch=batch,
        memory_budget_mb=memory_budget_mb,
        latency_target_ms=latency_target_ms,
    )
    executable = build(prepared, spec)
    return export(executable, prepared, spec, out_dir, runner=runner)
