"""Benchmark an ONNX file (every run mode and the dense model) or a TVM OUTDIR, torch-free.

Each configuration (mode x batch) runs in its **own subprocess** (``python -m
adntn_runtime.bench --child SPEC``), so its peak resident memory is its own: the child reads
``VmHWM`` from ``/proc/self/status`` (the primary figure) and ``ru_maxrss`` (reported too,
but on Linux it survives ``exec`` and so may carry the parent's peak). Within a child: load
(timed), ``warmup`` calls, then timed calls until ``runs`` calls or ``max_seconds``.
With ``repeats > 1`` the configurations are run in interleaved rounds (A B C A B C ...) and
the per-round medians are combined by their median, which tames a noisy shared machine.

For an ``auto`` file the configurations are: each requested mode (forced, lowered by the
runtime; in the ``fused`` configuration a layer whose top step is nonlinear, which cannot
run fused, is materialized: ``layers`` in the result says what ran), ``auto`` (the
policy's choice; its calibration is warmed first in a separate subprocess so the ``auto``
child reads the cache) and ``dense`` (the placeholders lowered with mode ``"dense"`` into
a temporary file: the generated weight stored as an initializer, loaded as plain ONNX).
A fixed-mode or plain file gives the single configuration ``file``.
With ``runtime="tvm"`` the path is an ``adntn compile`` OUTDIR (every file checked against
the manifest's sha256 first), run through :mod:`adntn_runtime.tvm.run` (``pip install
'./runtimes[tvm]'``; shapes are fixed by the OUTDIR), on this machine or on a device from a
TVM RPC tracker; ``dense_model`` adds the dense model's OUTDIR as configuration ``dense``.
A device that reports itself emulated (``adntn serve-device --emulate``) makes the result
``"emulated": true``: its latencies are emulation timings, not the device's speed.

JSON schema (``SCHEMA = "adntn.bench/1"``), validated by :func:`validate_result`::

    {
      "schema": "adntn.bench/1",
      "model": str, "model_bytes": int, "model_sha256": str,
      "runtime": "onnxruntime" | "tvm",
      "machine": {"cpu": str, "cpus": int, "platform": str, "python": str,
                  "onnxruntime": str | null},
      "emulated": bool,           # measured on an emulated device (qemu): not device speed
      "device": str | null,       # "rpc:KEY@HOST:PORT" when measured over RPC
      "threads": int | null, "warmup": int, "runs": int, "repeats": int,
      "results": [{
        "config": str,            # fused | materialize | regenerate | auto | dense | file | tvm
        "batch": int,
        "ok": bool, "error": str | null,
        "latency_ms": {"p50": float, "p90": float, "p99": float, "mean": float, "min": float},
        "runs": int,              # timed calls (summed over repeats)
        "throughput_per_s": float,  # samples per second at p50 (batch / p50)
        "load_s": float,          # session creation incl. lowering (and calibration for auto)
        "peak_rss_bytes": int,    # VmHWM of the child
        "baseline_rss_bytes": int,  # VmRSS of the child after importing onnx + onnxruntime
                                    # (or tvm), before loading the model
        "model_rss_bytes": int,   # peak - baseline
        "ru_maxrss_bytes": int,
        "file_bytes": int,        # size of the file the child loaded
        "lowered_bytes": int | null,  # size of this mode exported in-graph (lower_model)
        "layers": {layer: mode},  # the runtime's decisions (empty for dense / plain)
        "p50_per_repeat": [float]
      }],
      "ratios": [{"config": str, "batch": int,
                  "speedup_vs_dense": float,     # dense p50 / config p50
                  "peak_rss_vs_dense": float,    # config peak / dense peak
                  "model_rss_vs_dense": float}]  # config (peak - baseline) / dense's
    }

Failed configurations have ``ok: false`` and an ``error``; their numeric fields are 0, and
``main`` (like ``adntn bench``) exits 1 when any configuration failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adntn_runtime.calibration import vm_rss_bytes as _status
from adntn_runtime.modes import ExportMode, Mode

__all__ = ["SCHEMA", "bench_model", "failed_rows", "validate_result"]

SCHEMA = "adntn.bench/1"
#: What ``--runtime onnxruntime`` measures: each layer mode forced, and ``auto`` (the policy).
ORT_CONFIGS = tuple(
    m.value for m in (Mode.FUSED, Mode.MATERIALIZE, Mode.REGENERATE, ExportMode.AUTO)
)
_LAT_KEYS = ("p50", "p90", "p99", "mean", "min")


def _timed_runs(fn: Callable[[], Any], warmup: int, runs: int, max_seconds: float) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < runs:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 3 and time.perf_counter() - start > max_seconds:
            break
    return times


def _tvm_call(spec: dict[str, Any], out: dict[str, Any]) -> Callable[[], Any]:
    """Load a compiled OUTDIR (here or on an RPC device) and return one timed call."""
    import tvm  # noqa: F401  (imports first: the baseline is a loaded, empty runtime)

    from adntn_runtime.tvm.run import load, load_rpc

    out["baseline_rss_bytes"] = _status("VmRSS")
    t0 = time.perf_counter()
    if spec.get("rpc_tracker"):
        # The module runs on the device the tracker hands out; latency is the device's,
        # memory figures stay those of this (host) process.
        model = load_rpc(spec["path"], tracker=spec["rpc_tracker"], key=spec["rpc_key"])
        out["device"] = f"rpc:{spec['rpc_key']}@{spec['rpc_tracker']}"
        out["emulated"] = bool(model.device_info.get("emulated", False))
    else:
        model = load(spec["path"])
    out["load_s"] = time.perf_counter() - t0
    out["batch"] = model.batch
    out["layers"] = {"*": model.manifest.mode}
    args = model.device_args(model.random_inputs())
    if model.session is not None:  # timed on the device: one RPC call per timed run
        timer = model.vm.module.time_evaluator(
            "invoke_stateful", model.device, number=1, repeat=1, min_repeat_ms=0
        )
        model.vm.set_input("main", *args)

        def call() -> Any:
            out.setdefault("device_times_ms", []).append(timer("main").results[0] * 1e3)

        return call
    fn = model.vm["main"]

    def local_call() -> Any:
        fn(*args)
        model.device.sync()

    return local_call


def _ort_call(spec: dict[str, Any], out: dict[str, Any]) -> Callable[[], Any]:
    """Load an ONNX file with the runtime in the configuration's mode; one timed call."""
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    from adntn_runtime.session import load

    out["baseline_rss_bytes"] = _status("VmRSS")
    batch = int(spec["batch"])
    kwargs: dict[str, Any] = {"batch": batch, "threads": spec.get("threads")}
    if spec["config"] in ("fused", "materialize", "regenerate"):
        kwargs.update(modes=spec.get("modes") or spec["config"], calibrate=False)
    for key in ("einsum", "tile_rows", "max_batch"):
        if spec.get(key) is not None:
            kwargs[key] = spec[key]
    t0 = time.perf_counter()
    sess = load(spec["path"], **kwargs)
    out["load_s"] = time.perf_counter() - t0
    out["batch"] = batch
    out["layers"] = {k: d.mode for k, d in sess.decisions.items()}
    name = sess.input_names[0]
    shape = [batch if d is None else d for d in sess.input_shapes[name]]
    feeds = {name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    ort_sess = sess.ort_session

    def call() -> Any:
        if sess.max_batch is not None:
            sess.run(feeds)  # the batch in slices of max_batch samples
        else:
            ort_sess.run(None, feeds)

    return call


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this (fresh) process; returns the result fields."""
    import resource

    out: dict[str, Any] = {"layers": {}}
    call = (_tvm_call if spec["runtime"] == "tvm" else _ort_call)(spec, out)
    times = _timed_runs(call, int(spec["warmup"]), int(spec["runs"]), float(spec["max_seconds"]))
    device_ms = out.pop("device_times_ms", None)  # over RPC the device's own timer counts
    out.update(
        times_ms=device_ms[-len(times) :] if device_ms else times,
        peak_rss_bytes=_status("VmHWM"),
        ru_maxrss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    return out


def _run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "adntn_runtime.bench", "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"child exited {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def _fusable(model: Any) -> dict[str, bool]:
    """Layer -> whether it can run fused (linear top step)."""
    from onnx import helper

    from adntn_runtime.onnx_lowering import ADNTN_DOMAIN
    from adntn_runtime.plan import ADNTNPlan

    out = {}
    for node in model.graph.node:
        if node.domain != ADNTN_DOMAIN:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plan = ADNTNPlan.from_dict(json.loads(attrs["plan"]))
        layer = attrs.get("layer", b"")
        out[layer.decode() if isinstance(layer, bytes) else layer] = plan.top_is_linear
    return out


def _machine() -> dict[str, Any]:
    from adntn_runtime.calibration import cpu_model

    ort_version = None
    with contextlib.suppress(ImportError):
        import onnxruntime

        ort_version = onnxruntime.__version__
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count() or 1,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort_version,
    }


def _empty(config: str, batch: int, error: str) -> dict[str, Any]:
    return {
        "config": config,
        "batch": batch,
        "ok": False,
        "error": error,
        "latency_ms": dict.fromkeys(_LAT_KEYS, 0.0),
        "runs": 0,
        "throughput_per_s": 0.0,
        "load_s": 0.0,
        "peak_rss_bytes": 0,
        "baseline_rss_bytes": 0,
        "model_rss_bytes": 0,
        "ru_maxrss_bytes": 0,
        "file_bytes": 0,
        "lowered_bytes": None,
        "layers": {},
        "p50_per_repeat": [],
    }


@dataclass
class _Plan:
    """What to run: the configurations and what is known about their files."""

    configs: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    file_sizes: dict[str, int] = field(default_factory=dict)
    lowered_sizes: dict[str, int | None] = field(default_factory=dict)
    model_bytes: int = 0
    sha256: str = ""


def _check_args(
    runtime: str, batches: Sequence[int], modes: Sequence[str], counts: dict[str, Any]
) -> None:
    if runtime not in ("onnxruntime", "tvm"):
        raise ValueError(f"unknown runtime {runtime!r}; valid runtimes: ['onnxruntime', 'tvm']")
    for b in batches:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"batch sizes must be ints >= 1, got {b!r}")
    bad = [m for m in modes if m not in ORT_CONFIGS]
    if bad:
        raise ValueError(f"unknown modes {bad}; valid modes: {list(ORT_CONFIGS)}")
    for name, (value, low) in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _tvm_outdir(path: Path, what: str) -> tuple[int, str]:
    """Size and sha256 of an OUTDIR's model.so, after checking every file (manifest)."""
    from adntn_runtime.tvm.manifest import MODEL_FILE, verify_files

    if not path.is_dir():
        raise ValueError(f"runtime 'tvm' needs an `adntn compile` OUTDIR as {what}, got {path}")
    manifest = verify_files(path)
    return (path / MODEL_FILE).stat().st_size, manifest.files[MODEL_FILE]


def _plan_tvm(
    path: Path,
    common: dict[str, Any],
    rpc_tracker: str | None,
    rpc_key: str | None,
    dense_model: Path | None,
) -> _Plan:
    plan = _Plan()
    plan.model_bytes, plan.sha256 = _tvm_outdir(path, "MODEL")
    if (rpc_tracker is None) != (rpc_key is None):
        raise ValueError(
            "give both rpc_tracker (--rpc-tracker) and rpc_key (--rpc-key), or neither"
        )
    extra: dict[str, Any] = {}
    if rpc_tracker is not None:
        from adntn_runtime.tvm.rpc import check_tracker

        check_tracker(rpc_tracker, rpc_key)  # fail here, clearly, not in every child
        extra = {"rpc_tracker": rpc_tracker, "rpc_key": rpc_key}
    plan.configs.append(("tvm", 0, {**common, **extra, "config": "tvm", "path": str(path)}))
    plan.file_sizes["tvm"] = plan.model_bytes
    if dense_model is not None:
        dense_bytes, _ = _tvm_outdir(dense_model, "the dense model (--dense-model)")
        spec = {**common, **extra, "config": "dense", "path": str(dense_model)}
        plan.configs.append(("dense", 0, spec))
        plan.file_sizes["dense"] = dense_bytes
    for _, _, spec in plan.configs:
        spec["batch"] = 1
    return plan


def _plan_ort(
    path: Path,
    common: dict[str, Any],
    batches: Sequence[int],
    modes: Sequence[str],
    dense: bool,
    workdir: Path,
) -> _Plan:
    import onnx

    from adntn_runtime import onnx_lowering as lowering
    from adntn_runtime.calibration import sha256_file
    from adntn_runtime.files import read_onnx

    # The one ONNX reader; NaN/Inf is left to each configuration's own load, as before.
    model = read_onnx(path, allow_nonfinite=True)
    plan = _Plan(model_bytes=path.stat().st_size, sha256=sha256_file(path))
    base = {**common, "path": str(path)}
    if not lowering.placeholder_layers(model):
        plan.file_sizes["file"] = plan.model_bytes
        plan.configs += [("file", b, {**base, "config": "file", "batch": b}) for b in batches]
        return plan
    fusable = _fusable(model)
    fused_modes = {k: "fused" if ok else "materialize" for k, ok in fusable.items()}
    for m in modes:
        if m != "auto":
            per = fused_modes if m == "fused" else m
            plan.lowered_sizes[m] = lowering.lower_model(model, per).ByteSize()
        plan.file_sizes[m] = plan.model_bytes
    if dense:
        dense_path = workdir / "dense.onnx"
        onnx.save(lowering.lower_model(model, "dense"), str(dense_path))
        plan.file_sizes["dense"] = plan.lowered_sizes["dense"] = dense_path.stat().st_size
    for b in batches:
        for m in modes:
            spec = {**base, "config": m, "batch": b}
            if m == "fused" and not all(fusable.values()):
                spec["modes"] = fused_modes
            plan.configs.append((m, b, spec))
        if dense:
            spec = {**common, "config": "dense", "path": str(dense_path), "batch": b}
            plan.configs.append(("dense", b, spec))
    return plan


def _warm_calibration(plan: _Plan, timeout: float, progress: Callable[[str], None] | None) -> None:
    """Run ``auto`` once per batch so its calibration cache is warm for the timed child."""
    for config, b, spec in plan.configs:
        if config == "auto":
            got = _run_child({**spec, "warmup": 0, "runs": 1}, timeout)
            if progress:
                progress(f"calibrated auto at batch {b}: {got.get('error') or 'ok'}")


def _run_rounds(
    plan: _Plan, repeats: int, timeout: float, progress: Callable[[str], None] | None
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Every configuration ``repeats`` times, interleaved; raw child results per config."""
    raw: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(repeats):
        for config, b, spec in plan.configs:
            got = _run_child(spec, timeout)
            raw.setdefault((config, b), []).append(got)
            if progress:
                p50 = statistics.median(got["times_ms"]) if "times_ms" in got else None
                progress(
                    f"{config} batch {b}: "
                    + (f"p50 {p50:.3f} ms" if p50 is not None else f"error {got['error']}")
                )
    return raw


def _summarise(config: str, b: int, runs_: list[dict[str, Any]], plan: _Plan) -> dict[str, Any]:
    """One result row from a configuration's child results (``ok: false`` if none ran)."""
    good = [r for r in runs_ if "times_ms" in r]
    if not good:
        return _empty(config, b, runs_[0].get("error", "unknown error"))
    times = [t for r in good for t in r["times_ms"]]
    p50s = [statistics.median(r["times_ms"]) for r in good]
    p50 = statistics.median(p50s)
    batch = int(good[0]["batch"])
    peak = int(statistics.median([r["peak_rss_bytes"] for r in good]))
    base = int(statistics.median([r["baseline_rss_bytes"] for r in good]))
    p90, p99 = (float(v) for v in np.percentile(times, [90, 99]))
    row = {
        "config": config,
        "batch": batch,
        "ok": True,
        "error": None,
        "latency_ms": {
            "p50": p50,
            "p90": p90,
            "p99": p99,
            "mean": float(np.mean(times)),
            "min": float(np.min(times)),
        },
        "runs": len(times),
        "throughput_per_s": batch / p50 * 1e3,
        "load_s": float(statistics.median([r["load_s"] for r in good])),
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": base,
        "model_rss_bytes": max(peak - base, 0),
        "ru_maxrss_bytes": int(max(r["ru_maxrss_bytes"] for r in good)),
        "file_bytes": int(plan.file_sizes.get(config, plan.model_bytes)),
        "lowered_bytes": plan.lowered_sizes.get(config),
        "layers": good[0]["layers"],
        "p50_per_repeat": p50s,
    }
    if "device" in good[0]:
        row.update(device=good[0]["device"], emulated=bool(good[0].get("emulated", False)))
    return row


def _ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ok configuration against the ok dense one at the same batch."""
    ratios = []
    for r in results:
        d = next((x for x in results if x["config"] == "dense" and x["batch"] == r["batch"]), None)
        if d is None or r["config"] == "dense" or not (r["ok"] and d["ok"]):
            continue
        ratios.append(
            {
                "config": r["config"],
                "batch": r["batch"],
                "speedup_vs_dense": d["latency_ms"]["p50"] / r["latency_ms"]["p50"],
                "peak_rss_vs_dense": r["peak_rss_bytes"] / max(d["peak_rss_bytes"], 1),
                "model_rss_vs_dense": r["model_rss_bytes"] / max(d["model_rss_bytes"], 1),
            }
        )
    return ratios


def bench_model(
    path: str | os.PathLike[str],
    *,
    runtime: str = "onnxruntime",
    batches: Sequence[int] = (1,),
    threads: int | None = None,
    modes: Sequence[str] = ORT_CONFIGS,
    dense: bool = True,
    warmup: int = 5,
    runs: int = 50,
    max_seconds: float = 10.0,
    repeats: int = 1,
    einsum: bool | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    dense_model: str | os.PathLike[str] | None = None,
    max_batch: int | None = None,
    timeout: float = 900.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark ``path`` (see the module docstring); returns the JSON-ready result.

    Args:
        path: an ONNX file (``runtime="onnxruntime"``) or an OUTDIR (``runtime="tvm"``).
        batches: batch sizes (ORT only; a TVM OUTDIR has its batch fixed).
        threads: ORT intra-op threads (None: ORT's default).
        modes: which of ``fused, materialize, regenerate, auto`` to run (auto files).
        dense: also run the dense model (auto files).
        warmup, runs, max_seconds: per child: warm-up calls, timed calls, time box.
        repeats: interleaved rounds over all configurations.
        einsum: passed to :func:`adntn_runtime.load` (None: the runtime's choice).
        rpc_tracker, rpc_key: with ``runtime="tvm"``, run on a device requested from a TVM
            RPC tracker (``HOST:PORT``) under this key instead of on the host; the OUTDIR
            must have been compiled for that device's target. Memory is then the host's.
        dense_model: with ``runtime="tvm"``, an OUTDIR of the dense model compiled for the
            same target: run beside ``path`` as configuration ``dense`` (ratios against it).
        max_batch: ORT only: every configuration, dense included, runs a larger batch in
            slices of at most this many samples (:func:`adntn_runtime.load`'s ``max_batch``).
        timeout: seconds per child.
        progress: called with a line of text per finished child.
    """
    counts = {"warmup": (warmup, 0), "runs": (runs, 1), "repeats": (repeats, 1)}
    _check_args(runtime, batches, modes, counts)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    if dense_model is not None and runtime != "tvm":
        raise ValueError("dense_model (--dense-model) needs runtime 'tvm' (ONNX: dense=True)")
    if max_batch is not None and (
        isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1
    ):
        raise ValueError(f"max_batch (--max-batch) must be an int >= 1, got {max_batch!r}")
    if max_batch is not None and runtime != "onnxruntime":
        raise ValueError(
            f"max_batch (--max-batch) needs runtime 'onnxruntime', got {runtime!r} (a TVM "
            "OUTDIR runs the batch it was compiled for)"
        )
    common = {
        "runtime": runtime,
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "max_seconds": max_seconds,
        "einsum": einsum,
        "max_batch": max_batch,
    }
    with tempfile.TemporaryDirectory(prefix="adntn-bench-") as tmp:
        if runtime == "tvm":
            dm = Path(dense_model) if dense_model is not None else None
            plan = _plan_tvm(path, common, rpc_tracker, rpc_key, dm)
        else:
            plan = _plan_ort(path, common, batches, modes, dense, Path(tmp))
            _warm_calibration(plan, timeout, progress)
        raw = _run_rounds(plan, repeats, timeout, progress)
    results = [_summarise(config, b, runs_, plan) for (config, b), runs_ in raw.items()]
    return {
        "schema": SCHEMA,
        "model": str(path),
        "model_bytes": int(plan.model_bytes),
        "model_sha256": plan.sha256,
        "runtime": runtime,
        "machine": _machine(),
        "emulated": any(r.get("emulated", False) for r in results),
        "device": next((r["device"] for r in results if r.get("device")), None),
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "repeats": repeats,
        "max_batch": max_batch,
        "results": results,
        "ratios": _ratios(results),
    }


def failed_rows(data: dict[str, Any]) -> list[str]:
    """``"config batch B: error"`` for every row of a result that did not run."""
    return [
        f"{r['config']} batch {r['batch']}: {r['error']}" for r in data["results"] if not r["ok"]
    ]


def validate_result(data: Any) -> None:
    """Raise ``ValueError`` naming the first field of ``data`` that breaks the schema."""

    def need(obj: Any, key: str, types: Any, where: str) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise ValueError(f"{where}: missing key {key!r}")
        if (
            not isinstance(obj[key], types)
            or isinstance(obj[key], bool)
            and bool not in (types if isinstance(types, tuple) else (types,))
        ):
            raise ValueError(f"{where}.{key}: expected {types}, got {type(obj[key]).__name__}")
        return obj[key]

    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(
            f"not an {SCHEMA} result: schema is {data.get('schema')!r}"
            if isinstance(data, dict)
            else "not a JSON object"
        )
    num = (int, float)
    need(data, "model", str, "$")
    need(data, "model_bytes", int, "$")
    need(data, "model_sha256", str, "$")
    if need(data, "runtime", str, "$") not in ("onnxruntime", "tvm"):
        raise ValueError(f"$.runtime: {data['runtime']!r} is not onnxruntime or tvm")
    machine = need(data, "machine", dict, "$")
    for key, t in (("cpu", str), ("cpus", int), ("platform", str), ("python", str)):
        need(machine, key, t, "$.machine")
    need(machine, "onnxruntime", (str, type(None)), "$.machine")
    need(data, "threads", (int, type(None)), "$")
    if "emulated" in data:
        need(data, "emulated", bool, "$")
    for key in ("warmup", "runs", "repeats"):
        need(data, key, int, "$")
    for n, r in enumerate(need(data, "results", list, "$")):
        w = f"$.results[{n}]"
        need(r, "config", str, w)
        need(r, "batch", int, w)
        need(r, "ok", bool, w)
        need(r, "error", (str, type(None)), w)
        lat = need(r, "latency_ms", dict, w)
        for key in _LAT_KEYS:
            need(lat, key, num, f"{w}.latency_ms")
        for key in (
            "runs",
            "peak_rss_bytes",
            "baseline_rss_bytes",
            "model_rss_bytes",
            "ru_maxrss_bytes",
            "file_bytes",
        ):
            need(r, key, int, w)
        need(r, "throughput_per_s", num, w)
        need(r, "load_s", num, w)
        need(r, "lowered_bytes", (int, type(None)), w)
        need(r, "layers", dict, w)
        need(r, "p50_per_repeat", list, w)
        if r["ok"] and not lat["p50"] > 0:
            raise ValueError(f"{w}.latency_ms.p50: must be > 0 for an ok result")
    for n, r in enumerate(need(data, "ratios", list, "$")):
        w = f"$.ratios[{n}]"
        need(r, "config", str, w)
        need(r, "batch", int, w)
        for key in ("speedup_vs_dense", "peak_rss_vs_dense", "model_rss_vs_dense"):
            need(r, key, num, w)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m adntn_runtime.bench MODEL [--batch 1,8] [--json OUT]`` (torch-free)."""
    parser = argparse.ArgumentParser(prog="python -m adntn_runtime.bench")
    parser.add_argument("model", nargs="?")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "tvm"))
    parser.add_argument("--batch", default="1")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--modes", default=",".join(ORT_CONFIGS))
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    if not args.model:
        parser.error("MODEL is required")
    data = bench_model(
        args.model,
        runtime=args.runtime,
        batches=[int(b) for b in args.batch.split(",")],
        threads=args.threads,
        modes=[m for m in args.modes.split(",") if m],
        runs=args.runs,
        repeats=args.repeats,
        progress=lambda s: print(s, file=sys.stderr),
    )
    text = json.dumps(data, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    failed = failed_rows(data)
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
