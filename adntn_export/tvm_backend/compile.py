"""``compile_onnx``: ONNX -> Relax -> an exported, self-describing OUTDIR.

Layout of ``OUT`` (every file's sha256 is in the manifest)::

    model.so          Relax VM executable + kernels, linked for the target CPU (cross-linked
                      for ARM). VM function ``main`` takes the data inputs only.
    manifest.json     target, mode, input/output names, shapes and dtypes, hashes, versions.
    runtime/          TVM runtime libraries for the device (libtvm_runtime.so, libtvm_ffi.so,
                      + libtvm_runtime_cuda.so for Jetson) - copy with model.so to the device.
    kernels/          device kernel sources: model.cu (+ model_sm_87.fatbin if nvcc is
                      present) for CUDA targets, model.cl for OpenCL targets.

Modes:

* ``"fold"`` (default): weights are embedded as constants; weight-only sub-graphs (ADNTN cores
  -> MatMul/Reshape/Transpose/Tanh -> dense weight) are folded at compile time, so the
  artefact stores the generated (dense) weights.
* ``"materialize"``: :class:`tvm.relax.transform.LiftTransformParams` moves weight generation
  into a VM function ``materialize()`` (no arguments; the compressed cores are its constants)
  that runs once at load; ``main(*data_inputs, *materialize())`` then runs per inference. The
  artefact stores only the cores.
* ``"regenerate"``: nothing is folded or lifted. The ONNX initializers become parameters of
  ``main`` (so Relax's ``FoldConstant`` cannot fold weight generation) and ``materialize()``
  only returns them (the cores, as stored); ``main(*data_inputs, *materialize())`` regenerates
  the weights at every call, as ONNX Runtime does for a regenerate export with constant
  folding off. The artefact stores only the cores.
* ``None`` (the default): ``"regenerate"`` for an ADNTN export that asks for constant folding
  off (``adntn.session_options`` metadata, written for regenerate layers), else ``"fold"``.

What the Relax default pipeline folds (TVM 0.27, ``"fold"``): ``from_onnx`` binds the
initializers as constants and its ``FoldConstant`` (also in the ``zero`` pipeline) evaluates
every sub-graph whose inputs are all constants. For ADNTN exports that means: ``dense`` - the
weight is already dense; ``materialize`` - the in-graph weight build is folded to the dense
weight; ``fused`` - the ``x``-independent factors (the lower tree levels contracted together,
e.g. two [256, 64] factors for a TTN 4096x4096 layer) are folded, the ``x``-dependent
contractions stay; ``regenerate`` - every tile's weight would be folded (which defeats the
mode: hence the ``"regenerate"`` compile mode, chosen automatically).

ONNX ``Einsum`` nodes are rewritten into MatMul form first (:mod:`.einsum_rewrite`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adntn_export.tvm_backend.targets import TargetSpec, get_target

MODES = ("fold", "materialize", "regenerate")
#: ONNX metadata key an ADNTN export writes when a layer must not be constant-folded.
SESSION_OPTIONS_KEY = "adntn.session_options"
MANIFEST = "manifest.json"
MATERIALIZE_FN = "materialize"


@dataclass
class TensorInfo:
    """Name, shape and dtype of one model input or output."""

    name: str
    shape: list[int]
    dtype: str


@dataclass
class Manifest:
    """Contents of ``OUT/manifest.json``."""

    target: str
    target_config: dict[str, Any]
    kind: str
    arch: str
    mode: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    files: dict[str, str]
    tvm_version: str
    tvm_ffi_version: str
    created: str
    entry: str = "main"
    materialize: str | None = None
    tuned: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """Serialise to JSON text."""
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> Manifest:
        """Read ``OUT/manifest.json``."""
        path = Path(out_dir) / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {out_dir} an `adntn compile` OUTDIR?")
        raw = json.loads(path.read_text())
        raw["inputs"] = [TensorInfo(**t) for t in raw["inputs"]]
        raw["outputs"] = [TensorInfo(**t) for t in raw["outputs"]]
        return cls(**raw)


@dataclass
class Prepared:
    """A Relax module ready to build, plus what the manifest needs to know about it."""

    mod: Any
    inputs: list[TensorInfo]
    mode: str
    notes: list[str]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _onnx_dtype(elem_type: int) -> str:
    from onnx import helper

    return str(helper.tensor_dtype_to_np_dtype(elem_type))


def prepare_relax(
    onnx_path: str | os.PathLike[str],
    *,
    mode: str | None = None,
    input_shapes: dict[str, list[int]] | None = None,
) -> Prepared:
    """Load ONNX, rewrite Einsum, import into Relax; ``materialize`` lifts weight generation,
    ``regenerate`` keeps it in ``main`` (``None``: chosen from the model's metadata)."""
    import onnx

    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    path = Path(onnx_path)
    if not path.exists():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several types
        raise ValueError(f"{path} is not a readable ONNX model: {exc}") from exc
    notes: list[str] = []
    if mode is None:
        mode = default_mode(model)
        if mode == "regenerate":
            notes.append(
                "mode regenerate chosen: the model asks for constant folding off "
                f"({SESSION_OPTIONS_KEY})"
            )
    from adntn_export.tvm_backend.einsum_rewrite import rewrite_einsum

    model, left = rewrite_einsum(model)
    notes += [f"Einsum left for TVM (slow lowering): {eq}" for eq in left]
    init_names = {i.name for i in model.graph.initializer}
    input_shapes = dict(input_shapes or {})
    inputs: list[TensorInfo] = []
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        if vi.name in input_shapes:
            shape = [int(d) for d in input_shapes.pop(vi.name)]
        else:
            shape = []
            for i, d in enumerate(tt.shape.dim):
                if not d.HasField("dim_value") or d.dim_value <= 0:
                    raise ValueError(
                        f"input {vi.name!r} has a dynamic dimension {i} "
                        f"({d.dim_param or '?'}); pass input_shapes={{{vi.name!r}: [...]}}"
                    )
                shape.append(d.dim_value)
        inputs.append(TensorInfo(vi.name, shape, _onnx_dtype(tt.elem_type)))
    if input_shapes:
        raise ValueError(
            f"input_shapes names unknown inputs {sorted(input_shapes)}; "
            f"model inputs: {[t.name for t in inputs]}"
        )

    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    shape_dict = {t.name: t.shape for t in inputs}
    dtype_dict = {t.name: t.dtype for t in inputs}
    if mode == "fold":
        mod = from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict)
    else:
        mod = from_onnx(
            model, shape_dict=shape_dict, dtype_dict=dtype_dict, keep_params_in_input=True
        )
        if mode == "materialize":
            mod = _lift_weight_generation(mod, relax)
        else:
            mod = _params_function(mod, relax)
    return Prepared(mod=mod, inputs=inputs, mode=mode, notes=notes)


def default_mode(model: Any) -> str:
    """``"regenerate"`` if the ONNX model asks for constant folding off, else ``"fold"``."""
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        wanted = json.loads(meta.get(SESSION_OPTIONS_KEY, "{}"))
    except json.JSONDecodeError:
        wanted = {}
    disabled = wanted.get("disabled_optimizers", []) if isinstance(wanted, dict) else []
    return "regenerate" if "ConstantFolding" in disabled else "fold"


def _params_function(mod: Any, relax: Any) -> Any:
    """Detach ``main``'s parameters; ``materialize()`` returns them unchanged (regenerate)."""
    mod, params = relax.frontend.detach_params(mod)
    bb = relax.BlockBuilder(mod)
    with bb.function(MATERIALIZE_FN, [], attrs={"num_input": 0}):
        out = bb.emit(relax.Tuple([relax.const(p) for p in params.get("main", [])]))
        bb.emit_func_output(out)
    return bb.finalize()


def _lift_weight_generation(mod: Any, relax: Any) -> Any:
    """Split ``main`` into ``materialize()`` (weights from embedded cores) and ``main``."""
    mod, params = relax.frontend.detach_params(mod)
    mod = relax.transform.LiftTransformParams()(mod)
    transform = mod.get_global_var("main_transform_params")
    consts = relax.Tuple([relax.const(p) for p in params.get("main", [])])
    bb = relax.BlockBuilder(mod)
    with bb.function(MATERIALIZE_FN, [], attrs={"num_input": 0}):
        out = bb.emit(relax.Call(transform, [consts]))
        bb.emit_func_output(out)
    return bb.finalize()


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
) -> Manifest:
    """Write ``model.so``, ``runtime/``, ``kernels/`` and ``manifest.json`` into ``out_dir``."""
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
    files = {
        str(p.relative_to(out)): _sha256(p)
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
        materialize=MATERIALIZE_FN if prepared.mode in ("materialize", "regenerate") else None,
        tuned=tuned,
        notes=notes,
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
) -> Manifest:
    """Compile an ONNX model for a named target into ``out_dir``; returns the manifest."""
    spec = get_target(target)
    spec.require_cross_compiler()  # fail before the (slow) import and build
    prepared = prepare_relax(onnx_path, mode=mode, input_shapes=input_shapes)
    executable = build(prepared, spec)
    return export(executable, prepared, spec, out_dir)
