"""Whole-model benchmark: canonical AlexNet and VGG-16 (224x224), dense vs each recipe.

Runtimes: ONNX Runtime through ``adntn_runtime.load`` (1 and 2 intra-op threads) and TVM on
the host (``adntn compile --target host``, untuned, and ``adntn tune``, tuned); batch 1 and 8.
Configurations of a recipe (its ``auto`` file): each run mode forced for every ADNTN layer
(``fused``, ``materialize``, ``regenerate``), ``auto`` (the policy's pick, calibrating its
layers from an empty cache: its peak includes that; the device's rates are measured first in
a process of their own, as ``python -m adntn_runtime.calibration`` does once per device at
deployment, and that process's peak is reported beside the row's) and ``auto_budget`` (the same with
``memory_budget_mb``); ``dense`` is the zoo model without ADNTN layers. Per row: p50 / p90 /
p99, time to first inference (load + first call), peak RSS (``VmHWM`` of a fresh process per
row) and the peak during load and calibration, weight bytes resident (the initializers the
session holds) vs on disk, file size, the modes that ran, and the machine's load while the
row ran (CPU time of *other* processes, from ``/proc/stat`` minus this row's own, and the
load average): latency measured on a busy machine is noisy, memory is not.

Rows are cached in the JSON as they finish, so an interrupted run resumes; failed rows are
recorded with their error (and retried by the next run) and make the script exit 1.
``--rerun-loaded`` re-measures rows taken on a busy machine when the machine is quieter now;
``--remeasure`` re-measures the selected rows regardless (to compare runtimes in one run, under
the same load; with ``--rounds`` interleaved). A ``tvm_tuned`` row tuned with fewer trials than
``--tvm-trials`` asks for is tuned on (the database keeps the earlier trials) and re-measured.

Usage::

    PYTHONPATH=.:runtimes:models python benchmarks/model_suite.py [--models alexnet,vgg16]
        [--runtimes ort1,ort2,tvm,tvm_tuned] [--batches 1,8] [--variants dense,alexnet_whole]
        [--configs fused,auto] [--rerun-loaded | --remeasure] [--rounds 3] [--tvm-trials 1600]
        [--heap-ab]

Writes ``benchmarks/results/models.json`` and ``benchmarks/results/models.png`` (the plot is
not committed); model files are cached in ``benchmarks/results/cache/model_suite/``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from adntn_runtime.calibration import vm_rss_bytes as _status

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
CACHE = RESULTS / "cache" / "model_suite"
SCHEMA = "adntn.model_suite/1"
MB = 2**20
#: This run of the script (rows measured together share it; see ``_apart_note``).
INVOCATION = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f"-{os.getpid()}"

#: Recipes per model; ``vgg16_ttn_conv`` (defined below) also compresses conv4_*/conv5_*;
#: ``*_whole`` compress (almost) every convolution too, in the split layout (low-rank convs).
RECIPES = {
    "alexnet": ["alexnet_ttn", "alexnet_whole"],
    "vgg16": ["vgg16_ttn", "vgg16_ttn_conv", "vgg16_whole"],
}
ORT_CONFIGS = ("fused", "materialize", "regenerate", "auto", "auto_budget")
#: At a batch above 1, ORT also runs the dense model and the fused one with the runtime's
#: ``max_batch=1``: the batch in slices of one sample (``<config>_sliced`` rows).
SLICED_CONFIGS = {"dense": "dense_sliced", "fused": "fused_sliced"}
RUNTIMES = ("ort2", "ort1", "tvm", "tvm_tuned")
#: With ``--heap-ab``, ORT also loads these configurations with ``steady_heap=False`` (glibc's
#: own mmap threshold, not pinned by the runtime): ``<config>_unpinned`` rows, the A/B of
#: :mod:`adntn_runtime.heap` (peaks per round in the row's ``rounds``).
UNPINNED_CONFIGS = {c: f"{c}_unpinned" for c in ("dense", "fused", "auto")}
#: memory_budget_mb of the ``auto_budget`` configuration (ADNTN layers in total).
BUDGET_MB = 64.0
#: A row is "loaded" when other processes used more than this share of the machine's CPU.
LOADED_SHARE = 0.10


def _extra_recipe(name: str) -> dict[str, Any]:
    from adntn_export.compress import load_recipe

    if name == "vgg16_ttn_conv":
        base = load_recipe("vgg16_ttn")
        layers = dict(base["layers"])
        for conv in ("conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"):
            layers[conv] = {"bond_dim": 8}
        return {
            **base,
            "name": name,
            "description": "vgg16_ttn plus conv4_*/conv5_* as TTN ADNTNs at bond dimension 8 "
            "(latency only: its accuracy is not measured here)",
            "layers": layers,
        }
    return load_recipe(name)


# ---------------------------------------------------------------------------- machine load
def _cpu_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from ``/proc/stat``."""
    with contextlib.suppress(OSError):
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields) - idle, sum(fields)
    return 0, 0


class LoadMeter:
    """Share of the machine's CPU used by processes other than our children, over a span."""

    def __enter__(self) -> LoadMeter:
        self.busy0, self.total0 = _cpu_busy_jiffies()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.own0 = ru.ru_utime + ru.ru_stime
        self.loadavg0 = os.getloadavg()
        return self

    def __exit__(self, *exc: object) -> None:
        busy1, total1 = _cpu_busy_jiffies()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = ru.ru_utime + ru.ru_stime - self.own0
        hz = os.sysconf("SC_CLK_TCK")
        total = max(total1 - self.total0, 1)
        others = max((busy1 - self.busy0) - own * hz, 0) / total
        self.result = {
            "other_cpu_share": round(others, 3),
            "loadavg_start": [round(v, 2) for v in self.loadavg0],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
            "loaded": others > LOADED_SHARE,
        }


def current_other_share(seconds: float = 2.0) -> float:
    """Share of the CPU used by other processes right now (sampled ``seconds``)."""
    with LoadMeter() as m:
        time.sleep(seconds)
    return m.result["other_cpu_share"]


# ---------------------------------------------------------------------------- model files
def _initializer_bytes(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(_tensor_bytes(t) for t in model.graph.initializer)


def _tensor_bytes(t: Any) -> int:
    import onnx

    size = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return size * math.prod(t.dims)


def prepare(model: str, variant: str) -> dict[str, Any]:
    """Write (or reuse) the ONNX file of ``model`` dense or compressed with recipe ``variant``."""
    CACHE.mkdir(parents=True, exist_ok=True)
    recipe = None if variant == "dense" else _extra_recipe(variant)
    key = hashlib.sha256(
        json.dumps([model, variant, recipe], sort_keys=True).encode()
        + (ROOT / "adntn_export" / "onnx_export.py").read_bytes()
    ).hexdigest()[:16]
    path = CACHE / f"{model}_{variant}{'' if variant == 'dense' else '_auto'}.onnx"
    meta_path = path.with_suffix(".json")
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and path.exists():
            return meta
    code = (
        "import sys, json, torch\n"
        "torch.set_num_threads(1)\n"
        "from adntn_models import get_model\n"
        "from adntn_export.compress import compress\n"
        "from adntn_export.onnx_export import export_onnx\n"
        "model_name, recipe, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]\n"
        "torch.manual_seed(0)\n"
        "m = get_model(model_name)\n"
        "if recipe is not None:\n"
        "    compress(m, recipe=recipe, fit=False)\n"
        "mode = 'auto' if recipe is not None else 'fused'\n"
        "export_onnx(m, torch.randn(1, 3, 224, 224), out, mode=mode)\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, model, json.dumps(recipe), str(path)],
        capture_output=True,
        text=True,
        env=_env(1),
        timeout=1800,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"export of {model} {variant} failed: {tail}")
    meta = {
        "key": key,
        "model": model,
        "variant": variant,
        "path": str(path.relative_to(ROOT)),
        "file_bytes": path.stat().st_size,
        "weight_bytes_on_disk": _initializer_bytes(path),
        "export_seconds": round(time.perf_counter() - t0, 1),
        "recipe": recipe,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


# ---------------------------------------------------------------------------- children
def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "runtimes"), str(ROOT / "models")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _time_calls(
    call: Any, warmup: int, runs: int, max_seconds: float, first_s: float
) -> list[float]:
    """Timed calls until ``runs`` or ``max_seconds`` (at least 5; 3 when a call takes over a
    second: VGG-16 at batch 8 on a busy 2-core box), after ``warmup`` calls (1 for slow calls)."""
    slow = first_s > 1.0
    for _ in range(1 if slow else warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    least = 3 if slow else 5
    while len(times) < runs:
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= least and time.perf_counter() - start > max_seconds:
            break
    return times


def device_rates_child(threads: int) -> dict[str, Any]:
    """The deployment step before the auto rows, in its own fresh process: this device's rates
    measured into the (row's) empty calibration cache; returns that process's peak."""
    import onnx  # noqa: F401  (imported before the baseline, as in the rows)
    import onnxruntime  # noqa: F401

    from adntn_runtime.calibration import device_rates

    base = _status("VmRSS")
    t0 = time.perf_counter()
    device_rates(threads)
    return {
        "device_rates_s": time.perf_counter() - t0,
        "device_rates_peak_rss_bytes": _status("VmHWM"),
        "device_rates_baseline_rss_bytes": base,
    }


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this fresh process; returns its measurements."""
    import numpy as np

    if spec.get("device_rates"):
        return device_rates_child(int(spec["threads"]))
    batch = int(spec["batch"])
    out: dict[str, Any] = {}
    if spec["runtime"].startswith("tvm"):
        import tvm  # noqa: F401  (imported before the baseline)

        from adntn_export.tvm_backend.run import load as tvm_load

        base = _status("VmRSS")
        t0 = time.perf_counter()
        model = tvm_load(spec["outdir"])
        load_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal(t.shape).astype(t.dtype) for t in model.manifest.inputs]
        args = model._args(inputs)
        fn = model.vm["main"]

        def call() -> None:
            fn(*args)
            model.device.sync()

        out["modes"] = {"*": model.manifest.mode}
        out["weight_bytes_resident"] = None
        tuned = model.manifest.tuned
        if tuned:  # the budget behind a tvm_tuned row, and what it left untuned
            out["tvm_tuning"] = {
                "valid_records": tuned.get("valid_records"),
                "trials_requested": tuned.get("trials_requested"),
                "max_trials_per_task": tuned.get("max_trials_per_task"),
                "tasks": tuned.get("tasks"),
                "untuned_tasks": len(tuned.get("untuned_tasks") or []),
                "untuned_flop_share": tuned.get("untuned_flop_share"),
            }
    else:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        from adntn_runtime.session import load

        base = _status("VmRSS")
        kwargs: dict[str, Any] = {"batch": batch, "threads": int(spec["threads"])}
        config = spec["config"]
        if config.endswith("_unpinned"):
            config = config.removesuffix("_unpinned")
            kwargs["steady_heap"] = False
        sliced = config.endswith("_sliced")
        if sliced:
            config = config.removesuffix("_sliced")
            kwargs["max_batch"] = 1
        if config in ("fused", "materialize", "regenerate"):
            kwargs.update(modes=config, calibrate=False)
        if config == "auto_budget":
            kwargs["memory_budget_mb"] = BUDGET_MB
        t0 = time.perf_counter()
        sess = load(spec["path"], **kwargs)
        load_s = time.perf_counter() - t0
        x = np.random.default_rng(0).standard_normal([batch, 3, 224, 224]).astype(np.float32)
        feeds = sess._feeds(x)
        ort_sess = sess.ort_session

        def call() -> None:
            if sliced:
                sess.run(feeds)  # the runtime's own slicing
            else:
                ort_sess.run(None, feeds)

        out["modes"] = {k: d.mode for k, d in sess.decisions.items()}
        out["calibration_s"] = sess.calibration_seconds
        if sess.model is not None:
            out["weight_bytes_resident"] = sum(
                _tensor_bytes(t) for t in sess.model.graph.initializer
            )
        else:
            out["weight_bytes_resident"] = spec.get("weight_bytes_on_disk")
    out["load_peak_rss_bytes"] = _status("VmHWM")
    t1 = time.perf_counter()
    call()
    first = time.perf_counter() - t1
    times = _time_calls(call, 2, int(spec["runs"]), float(spec["max_seconds"]), first)
    p50 = statistics.median(times)
    p90, p99 = (float(v) for v in np.percentile(times, [90, 99]))
    out.update(
        load_s=load_s,
        first_call_ms=first * 1e3,
        time_to_first_inference_s=load_s + first,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        runs=len(times),
        peak_rss_bytes=_status("VmHWM"),
        baseline_rss_bytes=base,
    )
    return out


def _run(cmd: list[str], threads: int, timeout: float) -> dict[str, Any]:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_env(threads), cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["(no output)"]
        tail = next((ln for ln in reversed(err) if "Error" in ln or "error" in ln), err[-1])
        return {"error": f"exit {proc.returncode}: {tail.strip()[:500]}"}
    return json.loads(lines[-1])


def _tuned_budget(tuned: dict[str, Any]) -> int:
    """The trial budget a tuned module was built with (older manifests: its valid records)."""
    return int(tuned.get("trials_requested") or tuned.get("valid_records") or 0)


def tvm_outdir(meta: dict[str, Any], batch: int, tuned: bool, trials: int) -> Path:
    """Compile (and tune) the model for the host once; raises with the tool's error."""
    src = ROOT / meta["path"]
    out = CACHE / "tvm" / f"{src.stem}_b{batch}{'_tuned' if tuned else ''}"
    if (out / "manifest.json").exists():
        done = json.loads((out / "manifest.json").read_text()).get("tuned") or {}
        if not tuned or _tuned_budget(done) >= trials:
            return out
        # a bigger budget: tune on (the database in out/ keeps the earlier trials)
    out.parent.mkdir(parents=True, exist_ok=True)
    verb = ["tune", "--trials", str(trials)] if tuned else ["compile"]
    limit = 3600 + (6 * trials if tuned else 0)  # ~3.5 s a trial on a loaded 2-core host
    cmd = [
        sys.executable,
        "-m",
        "adntn_export.cli",
        *verb,
        str(src),
        "--target",
        "host",
        "--input-shape",
        f"input={batch},3,224,224",
        "-o",
        str(out),
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=_env(os.cpu_count() or 1), timeout=limit
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"adntn {verb[0]} timed out after {limit} s") from None
    if proc.returncode != 0:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["(no output)"]
        tail = next((ln for ln in reversed(err) if "error" in ln.lower()), err[-1])
        raise RuntimeError(f"adntn {verb[0]} failed: {tail.strip()[:500]}")
    return out


# ---------------------------------------------------------------------------- rows
def row_key(model: str, variant: str, runtime: str, config: str, batch: int) -> str:
    return f"{model}|{variant}|{runtime}|{config}|b{batch}"


def plan_rows(
    models: list[str],
    runtimes: list[str],
    batches: list[int],
    only_variants: set[str] | None = None,
    heap_ab: bool = False,
) -> list[dict]:
    rows = []
    for batch in batches:
        for runtime in runtimes:
            for model in models:
                variants = ["dense", *RECIPES[model]]
                for variant in variants:
                    if only_variants and variant not in only_variants:
                        continue
                    if runtime.startswith("ort"):
                        configs = ["dense"] if variant == "dense" else list(ORT_CONFIGS)
                        if batch > 1:
                            configs += [SLICED_CONFIGS[c] for c in configs if c in SLICED_CONFIGS]
                        if heap_ab:
                            configs += [
                                UNPINNED_CONFIGS[c] for c in configs if c in UNPINNED_CONFIGS
                            ]
                    else:
                        configs = [runtime]
                    for config in configs:
                        rows.append(
                            {
                                "key": row_key(model, variant, runtime, config, batch),
                                "model": model,
                                "variant": variant,
                                "runtime": runtime,
                                "config": config,
                                "batch": batch,
                                "threads": int(runtime[3:])
                                if runtime.startswith("ort")
                                else (os.cpu_count() or 1),
                            }
                        )
    return rows  # batch 1 on every runtime first: the most useful rows early


def measure_row(row: dict, meta: dict, args: argparse.Namespace) -> dict[str, Any]:
    spec = {
        **row,
        "path": str(ROOT / meta["path"]),
        "runs": args.runs,
        "max_seconds": args.max_seconds,
        "weight_bytes_on_disk": meta["weight_bytes_on_disk"],
    }
    with tempfile.TemporaryDirectory(prefix="adntn-suite-cache-") as cal, LoadMeter() as lm:
        if row["runtime"].startswith("tvm"):
            try:
                spec["outdir"] = str(
                    tvm_outdir(meta, row["batch"], row["runtime"] == "tvm_tuned", args.tvm_trials)
                )
                got = _run(
                    [sys.executable, __file__, "--child", json.dumps(spec)],
                    row["threads"],
                    args.timeout,
                )
            except RuntimeError as exc:
                got = {"error": str(exc)}
        else:
            # auto rows calibrate the model from scratch, on a device whose rates were
            # measured beforehand (python -m adntn_runtime.calibration, its own process: its
            # peak is reported beside the row's)
            os.environ["ADNTN_CACHE_DIR"] = cal
            pre: dict[str, Any] = {}
            if row["config"].startswith("auto"):
                pre = _run(
                    [sys.executable, __file__, "--child", json.dumps({**spec, "device_rates": 1})],
                    row["threads"],
                    args.timeout,
                )
            got = (
                {"error": f"device rates: {pre['error']}"}
                if "error" in pre
                else _run(
                    [sys.executable, __file__, "--child", json.dumps(spec)],
                    row["threads"],
                    args.timeout,
                )
            )
            got.update({k: v for k, v in pre.items() if k != "error"})
            os.environ.pop("ADNTN_CACHE_DIR", None)
    out = {
        **row,
        "ok": "error" not in got,
        "error": got.get("error"),
        "file": meta["path"],
        "file_bytes": meta["file_bytes"],
        "weight_bytes_on_disk": meta["weight_bytes_on_disk"],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "invocation": INVOCATION,
        "machine_load": lm.result,
        **{k: v for k, v in got.items() if k != "error"},
    }
    return out


def merge_rounds(old: dict, new: dict) -> dict:
    """One row from interleaved rounds: latencies are medians over the rounds, memory and
    the machine's load the worst round's; ``rounds`` keeps each round's figures, peaks too."""
    keys = ("p50_ms", "p90_ms", "p99_ms", "time_to_first_inference_s", "load_s")
    kept = (*keys, "peak_rss_bytes", "load_peak_rss_bytes")
    rounds = old.get("rounds") or [{k: old[k] for k in kept if k in old}]
    rounds = [*rounds, {k: new[k] for k in kept if k in new}]
    out = {**new, "rounds": rounds}
    for k in keys:
        vals = [r[k] for r in rounds if k in r]
        if vals:
            out[k] = statistics.median(vals)
    for k in ("peak_rss_bytes", "load_peak_rss_bytes"):
        out[k] = max(old[k], new[k])
    if old["machine_load"]["other_cpu_share"] > new["machine_load"]["other_cpu_share"]:
        out["machine_load"] = old["machine_load"]
    return out


# ---------------------------------------------------------------------------- targets
def _find(rows: dict, **want: Any) -> dict | None:
    for r in rows.values():
        if r.get("ok") and all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def _dense_row(rows: dict, r: dict, config: str) -> dict | None:
    """The dense model's row in ``config`` beside row ``r`` (same model, runtime, batch)."""
    return _find(
        rows, model=r["model"], variant="dense", runtime=r["runtime"], batch=r["batch"],
        config=config,
    )  # fmt: skip


def _apart_note(*rs: dict) -> str:
    """Why a latency ratio of ``rs`` may not be a fair one: the rows come from different runs
    of this script (``invocation``; older rows: ``measured_at`` more than 5 minutes apart).
    The same configuration measured half an hour apart on this shared VM has differed by up
    to 1.5x; compare rows of one run (``--remeasure --rounds 3`` interleaves them)."""
    runs = {r.get("invocation") for r in rs}
    if None not in runs:
        return "" if len(runs) == 1 else "rows from different runs of the suite"
    stamps = [time.mktime(time.strptime(r["measured_at"], "%Y-%m-%dT%H:%M:%SZ")) for r in rs]
    gap = (max(stamps) - min(stamps)) / 60
    return "" if gap <= 5 else f"rows measured {gap:.0f} min apart (different runs)"


def _load_txt(*rs: dict) -> str:
    shares = [r["machine_load"]["other_cpu_share"] for r in rs]
    return f"others used {100 * max(shares):.0f}% CPU" + (
        " (loaded)" if max(shares) > LOADED_SHARE else " (quiet)"
    )


def evaluate(rows: dict) -> list[dict[str, Any]]:
    """Every target that the measured rows can decide: value, limit, met, machine load.

    ``met`` is None for a latency ratio with a row taken on a loaded machine (others used
    more than :data:`LOADED_SHARE` of the CPU) or between rows of different runs of the
    suite (this VM's speed drifts between runs: dense VGG-16, batch 1, 1 thread, quiet, read
    191.5 ms one night and 143.5 ms another): such a ratio neither meets nor misses."""
    out: list[dict[str, Any]] = []

    def add(name: str, where: str, value: float, limit: float, *rs: dict, note: str = "") -> None:
        met: bool | None = value <= limit
        if "p50" in name:
            apart = _apart_note(*rs)
            note = note or apart
            loaded = any(r["machine_load"].get("other_cpu_share", 0.0) > LOADED_SHARE for r in rs)
            if loaded or apart:
                met = None
        out.append(
            {
                "target": name,
                "where": where,
                "value": round(value, 3),
                "limit": limit,
                "met": met,
                "load": _load_txt(*rs),
                "note": note,
            }
        )

    fused_limits = {"vgg16": (0.85, 0.2), "alexnet": (0.5, 0.35)}
    for r in sorted(rows.values(), key=lambda r: r["key"]):
        if not r.get("ok") or not r["runtime"].startswith("ort") or r["variant"] == "dense":
            continue
        where = f"{r['model']} {r['variant']} {r['runtime']} b{r['batch']}"
        dense = _dense_row(rows, r, "dense")
        if r["config"] == "materialize" and dense:
            add(
                "materialize peak RSS <= 1.05x dense",
                where,
                r["peak_rss_bytes"] / dense["peak_rss_bytes"],
                1.05,
                r,
                dense,
            )
        if r["config"] == "fused" and dense and r["model"] in fused_limits:
            lat, mem = fused_limits[r["model"]]
            add(
                f"fused p50 <= {lat}x dense",
                where,
                r["p50_ms"] / dense["p50_ms"],
                lat,
                r,
                dense,
            )
            add(
                f"fused peak RSS <= {mem}x dense",
                where,
                r["peak_rss_bytes"] / dense["peak_rss_bytes"],
                mem,
                r,
                dense,
            )
        if r["config"] == "fused_sliced" and dense and r["model"] in fused_limits:
            lat, mem = fused_limits[r["model"]]
            sliced_dense = _dense_row(rows, r, "dense_sliced")
            for name, value, limit, base in (
                (f"fused, batch in slices of 1: p50 <= {lat}x dense", "p50_ms", lat, dense),
                (
                    f"fused, batch in slices of 1: peak RSS <= {mem}x dense",
                    "peak_rss_bytes",
                    mem,
                    dense,
                ),
                (
                    f"fused, batch in slices of 1: peak RSS <= {mem}x dense in slices of 1",
                    "peak_rss_bytes",
                    mem,
                    sliced_dense,
                ),
            ):
                if base:
                    add(name, where, r[value] / base[value], limit, r, base)
        if r["config"] in ("auto", "auto_budget"):
            picked = set(r.get("modes", {}).values())
            same = None
            if len(picked) == 1:
                same = _find(
                    rows,
                    model=r["model"],
                    variant=r["variant"],
                    runtime=r["runtime"],
                    batch=r["batch"],
                    config=next(iter(picked)),
                )
            if same:
                add(
                    "runtime peak during load+calibration <= 1.1x the chosen modes' own peak",
                    f"{where} {r['config']} (picked {','.join(sorted(picked))})",
                    r["load_peak_rss_bytes"] / same["peak_rss_bytes"],
                    1.1,
                    r,
                    same,
                )
                if r.get("device_rates_peak_rss_bytes"):  # rows before 2026-12-05 lack it
                    add(
                        "device-rate probe (own process, once per device) peak "
                        "<= 1.1x the chosen modes' own peak",
                        f"{where} {r['config']}",
                        r["device_rates_peak_rss_bytes"] / same["peak_rss_bytes"],
                        1.1,
                        r,
                        same,
                    )
                if r["config"] == "auto_budget":
                    extra = (r["load_peak_rss_bytes"] - same["peak_rss_bytes"]) / MB
                    add(
                        f"calibration's extra peak within the {BUDGET_MB:g} MB budget (MB)",
                        where,
                        max(extra, 0.0),
                        BUDGET_MB,
                        r,
                        same,
                    )
            modes = [
                _find(
                    rows,
                    model=r["model"],
                    variant=r["variant"],
                    runtime=r["runtime"],
                    batch=r["batch"],
                    config=c,
                )
                for c in ("fused", "materialize", "regenerate")
            ]
            modes = [m for m in modes if m]
            if modes and r["config"] == "auto":
                best = min(modes, key=lambda m: m["p50_ms"])
                add(
                    "policy's pick p50 <= 1.1x the best measured mode",
                    f"{where} (picked {','.join(sorted(picked))}, best {best['config']})",
                    r["p50_ms"] / best["p50_ms"],
                    1.1,
                    r,
                    best,
                )
    for r in rows.values():
        if r.get("ok") and r["runtime"] == "tvm_tuned":
            ort_rows = [
                x
                for x in rows.values()
                if x.get("ok")
                and x["runtime"] == "ort2"
                and x["model"] == r["model"]
                and x["variant"] == r["variant"]
                and x["batch"] == r["batch"]
                and x["config"] in ("dense", "auto")
            ]
            if ort_rows:
                o = ort_rows[0]
                add(
                    "TVM tuned p50 <= 0.9x ONNX Runtime (2 threads)",
                    f"{r['model']} {r['variant']} b{r['batch']}",
                    r["p50_ms"] / o["p50_ms"],
                    0.9,
                    r,
                    o,
                )
    return out


# ---------------------------------------------------------------------------- report
#: How a target's ``met`` reads in the table.
_VERDICT = {True: "MET ", False: "MISSED", None: "UNDECIDED (loaded machine or different runs)"}


def table(report: dict) -> str:
    head = (
        "| model | variant | runtime | batch | config | p50 ms | p90 | p99 | first inference s "
        "| peak RSS MB | load+cal peak MB | weights resident / on disk MB | file MB | modes "
        "| others' CPU |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in sorted(
        report["rows"].values(),
        key=lambda r: (r["model"], r["runtime"], r["batch"], r["variant"], r["config"]),
    ):
        load = r.get("machine_load", {})
        share = f"{100 * load.get('other_cpu_share', 0):.0f}%" + (
            " loaded" if load.get("loaded") else ""
        )
        if not r.get("ok"):
            lines.append(
                f"| {r['model']} | {r['variant']} | {r['runtime']} | {r['batch']} | "
                f"{r['config']} | FAILED: {r.get('error')} |  |  |  |  |  |  |  |  | {share} |"
            )
            continue
        modes = ",".join(sorted(set(r.get("modes", {}).values()))) or "-"
        res = r.get("weight_bytes_resident")
        res_txt = "-" if res is None else f"{res / MB:.0f}"
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['runtime']} | {r['batch']} | {r['config']} "
            f"| {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['time_to_first_inference_s']:.2f} | {r['peak_rss_bytes'] / MB:.0f} "
            f"| {r['load_peak_rss_bytes'] / MB:.0f} "
            f"| {res_txt} / {r['weight_bytes_on_disk'] / MB:.0f} | {r['file_bytes'] / MB:.1f} "
            f"| {modes} | {share} |"
        )
    lines += ["", "Targets:", ""]
    for t in report["targets"]:
        lines.append(
            f"- {_VERDICT[t['met']]} {t['target']}: {t['where']}: "
            f"{t['value']:.3g} (limit {t['limit']:g}; {t['load']}"
            + (f"; {t['note']})" if t.get("note") else ")")
        )
    return "\n".join(lines)


def render_readme(report: dict) -> None:
    """Replace the block between the model-suite markers of ``benchmarks/README.md``."""
    readme = HERE / "README.md"
    text = readme.read_text()
    start, end = "<!-- model-suite:start -->", "<!-- model-suite:end -->"
    if start not in text or end not in text:
        raise ValueError(f"{readme} lacks the {start} / {end} markers")
    mach = report.get("machine", {})
    body = (
        f"Machine: `{mach.get('cpu')}`, {mach.get('cpus')} cores, ONNX Runtime "
        f"{mach.get('onnxruntime')}; command `{report.get('command')}`. Latency columns are "
        "only comparable between rows taken at similar load (last column).\n\n" + table(report)
    )
    head, rest = text.split(start, 1)
    readme.write_text(head + start + "\n" + body + "\n" + end + rest.split(end, 1)[1])


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in report["rows"].values()})
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for r in report["rows"].values():
            if not r.get("ok") or r["model"] != model:
                continue
            marker = {1: "o", 8: "s"}.get(r["batch"], "^")
            color = {"ort1": "tab:blue", "ort2": "tab:orange"}.get(r["runtime"], "tab:green")
            ax.scatter(r["peak_rss_bytes"] / MB, r["p50_ms"], marker=marker, color=color)
            label = r["config"] if r["variant"] == "dense" else f"{r['variant']}:{r['config']}"
            ax.annotate(label, (r["peak_rss_bytes"] / MB, r["p50_ms"]), fontsize=6, alpha=0.8)
        ax.set_xlabel("peak RSS (MB)")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_yscale("log")
        ax.set_title(f"{model} (o batch 1, s batch 8; blue ORT 1 thr, orange 2 thr, green TVM)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _machine() -> dict[str, Any]:
    import onnxruntime

    from adntn_runtime.calibration import cpu_model

    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="alexnet,vgg16")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--configs", default="", help="only these configurations (default: all)")
    ap.add_argument(
        "--variants", default="", help="only these variants: dense or recipes (default: all)"
    )
    ap.add_argument("--runs", type=int, default=30, help="timed calls per row (at most)")
    ap.add_argument("--max-seconds", type=float, default=6.0, help="time box of the timed calls")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per row")
    ap.add_argument("--tvm-trials", type=int, default=64, help="MetaSchedule trials (tvm_tuned)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every row this many times in interleaved rounds (A B C A B C; "
        "latencies: median over rounds), which evens out a busy machine's load",
    )
    ap.add_argument(
        "--remeasure",
        action="store_true",
        help="measure the selected rows again even where a row exists (the new one replaces it)",
    )
    ap.add_argument(
        "--rerun-loaded",
        action="store_true",
        help="re-measure rows taken on a busy machine when it is quieter now",
    )
    ap.add_argument(
        "--render",
        action="store_true",
        help="only rewrite the table in benchmarks/README.md (and the plot) from the JSON",
    )
    ap.add_argument(
        "--heap-ab",
        action="store_true",
        help="also load dense/fused/auto with steady_heap=False (<config>_unpinned rows): "
        "the A/B of the runtime's pinned mmap threshold; with --rounds, each round's peak is kept",
    )
    ap.add_argument("--out", default=str(RESULTS / "models.json"))
    ap.add_argument("--plot", default=str(RESULTS / "models.png"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in RECIPES]
    if bad:
        ap.error(f"--models: unknown {bad}; valid: {list(RECIPES)}")
    runtimes = [r for r in args.runtimes.split(",") if r]
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad:
        ap.error(f"--runtimes: unknown {bad}; valid: {list(RUNTIMES)}")
    batches = [int(b) for b in args.batches.split(",")]
    configs = {c for c in args.configs.split(",") if c}
    variants = {v for v in args.variants.split(",") if v}
    known = {"dense", *(r for m in models for r in RECIPES[m])}
    if variants - known:
        ap.error(f"--variants: unknown {sorted(variants - known)}; valid: {sorted(known)}")
    out_path = Path(args.out)
    report: dict[str, Any] = {"schema": SCHEMA, "rows": {}}
    with contextlib.suppress(OSError, ValueError):
        old = json.loads(out_path.read_text())
        if old.get("schema") == SCHEMA:
            report = old
    if args.render:
        report["targets"] = evaluate(report["rows"])
        render_readme(report)
        plot(report, Path(args.plot))
        print(table(report))
        return 0
    report["machine"] = _machine()
    report["command"] = " ".join(["benchmarks/model_suite.py", *sys.argv[1:]])
    report["loaded_means"] = (
        f"other processes used more than {100 * LOADED_SHARE:.0f}% of the machine's CPU "
        "while the row ran (/proc/stat minus the row's own CPU time)"
    )
    metas: dict[tuple[str, str], dict] = {}
    todo = [
        r
        for r in plan_rows(models, runtimes, batches, variants, heap_ab=args.heap_ab)
        if not configs or r["config"] in configs
    ]
    done_now: set[str] = set()
    for rnd, row in [(k, r) for k in range(args.rounds) for r in todo]:
        old = report["rows"].get(row["key"])
        if rnd > 0 and row["key"] not in done_now:
            continue
        stale = (  # a tuned row measured with a smaller budget than asked for now
            old is not None
            and row["runtime"] == "tvm_tuned"
            and _tuned_budget(old.get("tvm_tuning") or {}) < args.tvm_trials
        )
        if old and old.get("ok") and rnd == 0 and not (args.remeasure or stale):
            if not (args.rerun_loaded and old["machine_load"]["loaded"]):
                continue
            now = current_other_share()
            if now >= old["machine_load"]["other_cpu_share"]:
                print(f"skip re-run of {row['key']}: others use {100 * now:.0f}% CPU now")
                continue
        mk = (row["model"], row["variant"])
        if mk not in metas:
            print(f"== preparing {mk[0]} {mk[1]}", flush=True)
            try:
                metas[mk] = prepare(*mk)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                metas[mk] = {"error": str(exc)}
        meta = metas[mk]
        if "error" in meta:
            got = {**row, "ok": False, "error": meta["error"], "machine_load": {}}
        else:
            got = measure_row(row, meta, args)
        if rnd > 0 and old and old.get("ok") and got.get("ok"):
            got = merge_rounds(old, got)
        elif old and old.get("ok") and got.get("ok") and not (args.remeasure or stale):
            # keep the quieter latency
            if got["machine_load"]["other_cpu_share"] > old["machine_load"]["other_cpu_share"]:
                got = old
        if got.get("ok"):
            done_now.add(row["key"])
        report["rows"][row["key"]] = got
        if got.get("ok"):
            print(
                f"{row['key']}: p50 {got['p50_ms']:.1f} ms, peak {got['peak_rss_bytes'] / MB:.0f}"
                f" MB, modes {sorted(set(got.get('modes', {}).values()))}, others "
                f"{100 * got['machine_load']['other_cpu_share']:.0f}% CPU",
                flush=True,
            )
        else:
            print(f"{row['key']}: FAILED {got.get('error')}", flush=True)
        report["targets"] = evaluate(report["rows"])
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=1, sort_keys=True))
        tmp.replace(out_path)
    report["targets"] = evaluate(report["rows"])
    out_path.write_text(json.dumps(report, indent=1, sort_keys=True))
    print(table(report))
    try:
        plot(report, Path(args.plot))
        print(f"wrote {out_path} and {args.plot}")
    except Exception as exc:  # the plot is optional; the JSON is the result
        print(f"wrote {out_path}; plot failed: {type(exc).__name__}: {exc}")
    failed = [k for k, r in report["rows"].items() if not r.get("ok")]
    if failed:
        print(f"{len(failed)} row(s) failed: {', '.join(sorted(failed))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
