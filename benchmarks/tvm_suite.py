"""ONNX Runtime vs Apache TVM (untuned and MetaSchedule-tuned) on the fused VGG-16 fc7 layer.

Models (batch 1, static shapes): ``ADNTNLinear(4096, 4096, network=N, bond_dim=4)`` exported
with ``export_onnx(mode="fused")`` for N in ttn/attn/mera, and the ttn layer exported
``mode="dense"`` (the generated 4096x4096 weight: a plain GEMV) for reference.

For every model, in one process: an ORT session (CPUExecutionProvider, default options), the
TVM default pipeline (``compile_onnx(..., "host")``) and the tuned module
(``tune_onnx(..., "host", trials=...)``, tuning time measured). Latency: ``--rounds`` rounds,
each timing ``--runs`` calls of every engine in turn (interleaved, so load from other jobs hits
all engines alike); the reported value is the median over all calls.

    PYTHONPATH=.:runtimes:models python benchmarks/tvm_suite.py            # full (~15 min)
    PYTHONPATH=.:runtimes:models python benchmarks/tvm_suite.py --quick    # ttn only, few trials

Writes ``benchmarks/results/tvm.json`` and ``benchmarks/TVM.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 0.8  # tuned TVM latency <= 0.8x ORT's (issue 6)


def _export(kind: str, network: str, path: Path) -> Path:
    import torch

    from adntn_export import ADNTNLinear
    from adntn_export.onnx_export import export_onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(ADNTNLinear(4096, 4096, network=network, bond_dim=4))
    return export_onnx(model, torch.randn(1, 4096), path, mode=kind, dynamic_batch=False)


def _timer(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_model(
    name: str,
    onnx_path: Path,
    work: Path,
    *,
    trials: int,
    per_task: int,
    rounds: int,
    runs: int,
    threads: int | None = None,
) -> dict:
    import onnxruntime as ort
    import tvm

    from adntn_export.tvm_backend import compile as tc
    from adntn_export.tvm_backend import run as tr
    from adntn_export.tvm_backend.tune import tune_onnx

    x = np.random.default_rng(0).standard_normal((1, 4096)).astype(np.float32)
    from adntn_export.tvm_backend.targets import get_target

    spec = get_target("host") if threads is None else get_target("host").with_num_cores(threads)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    ref = sess.run(None, {in_name: x})[0]
    extra_ort = {}
    if threads is not None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        s1 = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        extra_ort[f"ort_{threads}thread"] = (lambda: s1.run(None, {in_name: x}), 0.0)

    t0 = time.perf_counter()
    tc.compile_onnx(onnx_path, spec, work / f"{name}-untuned")
    compile_s = time.perf_counter() - t0
    untuned = tr.load(work / f"{name}-untuned")

    t0 = time.perf_counter()
    manifest = tune_onnx(
        onnx_path,
        spec,
        work / f"{name}-tuned",
        trials=trials,
        max_trials_per_task=per_task,
        progress=False,
    )
    tune_total_s = time.perf_counter() - t0
    tuned = tr.load(work / f"{name}-tuned")

    engines = {}
    for label, model in (("tvm_untuned", untuned), ("tvm_tuned", tuned)):
        args = model._args([x])
        fn = model.vm["main"]
        err = float(np.abs(fn(*args).numpy() - ref).max())
        engines[label] = (lambda fn=fn, args=args: fn(*args), err)
    engines = {"ort": (lambda: sess.run(None, {in_name: x}), 0.0), **extra_ort, **engines}
    times: dict[str, list[float]] = {k: [] for k in engines}
    for fn, _ in engines.values():  # warm-up
        _timer(fn, 20)
    for _ in range(rounds):
        for k, (fn, _) in engines.items():
            times[k] += _timer(fn, runs)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    tuned_info = manifest.tuned or {}
    del tvm
    extra = {}
    if threads is not None:
        extra = {
            "threads": threads,
            "tvm_tuned_over_ort_same_threads": round(
                med["tvm_tuned"] / med[f"ort_{threads}thread"], 3
            ),
        }
    return {
        **extra,
        "model": name,
        "onnx": onnx_path.name,
        "median_ms": {k: round(v, 4) for k, v in med.items()},
        "p90_ms": {k: round(float(np.percentile(v, 90)) * 1e3, 4) for k, v in times.items()},
        "calls_per_engine": rounds * runs,
        "max_abs_err_vs_ort": {k: e for k, (_, e) in engines.items() if k != "ort"},
        "tvm_tuned_over_ort": round(med["tvm_tuned"] / med["ort"], 3),
        "tvm_untuned_over_ort": round(med["tvm_untuned"] / med["ort"], 3),
        "untuned_compile_s": round(compile_s, 2),
        "tuning_s": tuned_info.get("tuning_seconds"),
        "tune_total_s": round(tune_total_s, 2),
        "trials_requested": trials,
        "max_trials_per_task": per_task,
        "records": tuned_info.get("records_after"),
    }


def _markdown(result: dict) -> str:
    rows = [
        "| model | ORT ms | ORT 1-thread ms | TVM untuned ms | TVM tuned ms | tuned / ORT | "
        "tuned / ORT 1-thread | tuning s (records) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["models"]:
        m = r["median_ms"]
        o1 = m.get("ort_1thread")
        same = r.get("tvm_tuned_over_ort_same_threads")
        rows.append(
            f"| {r['model']} | {m['ort']:.3f} | {f'{o1:.3f}' if o1 else '-'} | "
            f"{m['tvm_untuned']:.3f} | {m['tvm_tuned']:.3f} | "
            f"{r['tvm_tuned_over_ort']:.2f} | {f'{same:.2f}' if same else '-'} | "
            f"{r['tuning_s']:.0f} ({r['records']}) |"
        )
    fc7s = [r for r in result["models"] if r["model"].startswith("fc7-ttn-fused")]
    fc7 = min(fc7s, key=lambda r: r["tvm_tuned_over_ort"]) if fc7s else None
    verdict = ""
    if fc7 is not None:
        ok = fc7["tvm_tuned_over_ort"] <= TARGET_RATIO
        verdict = (
            f"**Target (tuned TVM <= {TARGET_RATIO}x ORT on fused fc7 ttn, batch 1): "
            f"{'met' if ok else 'MISSED'}** - {fc7['median_ms']['tvm_tuned']:.3f} ms vs "
            f"{fc7['median_ms']['ort']:.3f} ms ({fc7['tvm_tuned_over_ort']:.2f}x), "
            f"after {fc7['tuning_s']:.0f} s of tuning ({fc7['model']})."
        )
        same = fc7.get("tvm_tuned_over_ort_same_threads")
        if same is not None:
            verdict += (
                f" Against ORT also pinned to {fc7['threads']} thread(s) the ratio is "
                f"{same:.2f}x ({'met' if same <= TARGET_RATIO else 'missed'}). The margin "
                "is within this machine's run-to-run noise (~10%): borderline, not a "
                "robust win."
            )
    env = result["environment"]
    return "\n".join(
        [
            "# TVM vs ONNX Runtime: fused VGG-16 fc7 (4096x4096, bond_dim 4), batch 1",
            "",
            f"Generated by `benchmarks/tvm_suite.py` on {result['created']}. Machine: "
            f"{env['cpu']}, {env['cores']} cores, shared with other jobs while measuring "
            f"(load average {env['loadavg']}), so absolute numbers are noisy; every engine is "
            f"timed in interleaved rounds in one process and the medians over "
            f"{result['models'][0]['calls_per_engine']} calls are reported.",
            "",
            verdict,
            "",
            *rows,
            "",
            *[f"Note: {n}" for n in result.get("notes", [])],
            "",
            "* ORT: `onnxruntime` " + env["onnxruntime"] + ", CPUExecutionProvider, default "
            "options (all graph optimisations, intra-op threads = cores). `ORT 1-thread`: "
            "`intra_op_num_threads=1` (rows `-1thread` only).",
            "* `-1thread` rows (`--threads 1`): TVM tuned for a `num-cores=1` target "
            "(`get_target('host').with_num_cores(1)`) and run with `TVM_NUM_THREADS=1`. At batch 1 "
            "on this loaded 2-core machine a single thread is faster for both engines: the "
            "kernels take ~10 us each, about what a thread-pool wake-up costs.",
            "* TVM untuned: `adntn compile --target host` (Relax default pipeline, LLVM "
            f"`{env['tvm_target']}`): no schedules, so every kernel is a naive loop nest.",
            "* TVM tuned: `adntn tune --target host` (MetaSchedule, random-search cost model "
            "unless "
            "xgboost is installed, candidate builds in the tuning process when this table was "
            "measured (a worker pool since 2026-12-07), "
            "`max_trials_per_task` per task) then the same export; `tuning s` is the "
            "MetaSchedule search time (task extraction to the last measurement).",
            '* `dense` is the ttn layer exported with `mode="dense"` (the generated weight): '
            "one 4096x4096 GEMV (64 MiB of weights streamed per call).",
            "* Errors vs ORT (max abs): see `benchmarks/results/tvm.json`.",
            "",
            "Why TVM loses untuned and how tuning closes the gap: the fused export leaves a few "
            "small contractions (for ttn: [256,64]x[64,64] and [64,256]x[256,64] after Relax folds "
            "the x-independent factors; 4.2 MFLOP per call) plus layout shuffles, i.e. 5 kernels; "
            "ORT runs them with MLAS GEMMs, untuned TVM with scalar loop nests. MetaSchedule "
            "tiles, "
            "vectorises (AVX-512) and parallelises them. What remains: TVM launches 5 kernels "
            "(2 matmuls + 3 reshape/transpose copies) through the Relax VM, ORT's MLAS GEMM is "
            "hand-written; with a few hundred random-search trials (no xgboost here) the tuned "
            "matmuls are on par with MLAS, not faster (a second run with 160 trials per task and "
            "323 records is no better: the search is not what is missing).",
            "",
            "Not tried yet (next steps for the 0.8x target): lower the fused schedule straight "
            "from "
            "the ADNTN plan so the reshape/transpose copies disappear into the matmuls' index maps "
            "(2 kernels instead of 5; e.g. `relax.transform.FuseTransposeMatmul` or a hand-built "
            "Relax function from `layer.plan.schedule('fused', batch=1)`), the xgboost cost model, "
            "and single-threaded kernels at batch 1 (2 shared cores: thread-pool wake-ups cost as "
            "much as the math).",
            "",
            "## Tuning build time (fixed)",
            "",
            "MetaSchedule candidate builds used to take 30-60 s each (every build failed with the "
            "default 30 s timeout). Cause: `LocalBuilder` starts a fresh worker process per batch, "
            "and its `default_build` runs `import tvm.s_tir.tensor_intrin`, which parses every "
            "tensor intrinsic TVM ships: ~50 s on this machine (CUDA 31 s, ROCm 11 s, Hexagon 3 s, "
            "ARM 2 s, x86 1 s; measured with `python -X importtime`); `TuneContext` does the same "
            "import once in the tuning process. Not CPU contention, not the embedded constants, "
            "not "
            "LLVM (an in-process `tvm.compile` of a candidate takes ~25 ms, its link ~0.1 s). Fix "
            "(`adntn_export/tvm_backend/tune.py`): `light_tensor_intrinsics()` registers empty "
            "modules for the CUDA/ROCm/Hexagon/RISC-V tables before importing the package (CPU "
            "targets only: ~3 s), and candidates are built in one pool of worker processes kept "
            "for the whole run (the light import once per worker, ~5 s; ~0.1-1 s a candidate), "
            "each killed after 60 s: builds in the tuning process itself stalled canonical "
            "AlexNet runs on the 11x11 convolution (15+ min; a stack dump showed one candidate "
            "in LLVM codegen).",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fc7 ttn only, 32 trials per task")
    ap.add_argument("--networks", default="ttn,attn,mera")
    ap.add_argument("--no-dense", action="store_true")
    ap.add_argument("--per-task", type=int, default=48)
    ap.add_argument("--max-trials", type=int, default=320)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--json", default=str(HERE / "results" / "tvm.json"))
    ap.add_argument("--md", default=str(HERE / "TVM.md"))
    ap.add_argument("--suffix", default="", help="appended to every model name")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="TVM: num-cores=N target + TVM_NUM_THREADS=N; ORT: also timed with "
        "intra_op_num_threads=N",
    )
    ap.add_argument(
        "--append",
        action="store_true",
        help="add the models to those already in --json instead of replacing them",
    )
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite --md from an existing --json, measure nothing",
    )
    args = ap.parse_args(argv)
    if args.render_only:
        Path(args.md).write_text(_markdown(json.loads(Path(args.json).read_text())))
        return 0
    if args.threads is not None:  # before tvm is imported: sizes TVM's thread pool
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import onnx
    import onnxruntime
    import tvm

    from adntn_export.tvm_backend.targets import get_target

    nets = ["ttn"] if args.quick else args.networks.split(",")
    per_task = 32 if args.quick else args.per_task
    models = [(f"fc7-{n}-fused", "fused", n) for n in nets]
    if not args.quick and not args.no_dense:
        models.append(("fc7-ttn-dense", "dense", "ttn"))
    results = []
    with tempfile.TemporaryDirectory(prefix="adntn-tvm-suite-") as tmp:
        work = Path(tmp)
        for name, kind, net in models:
            path = _export(kind, net, work / f"{name}.onnx")
            from adntn_export.tvm_backend import compile as tc

            prepared = tc.prepare_relax(path)
            with get_target("host").tvm_target() as target:
                lowered = tvm.relax.get_pipeline("zero")(prepared.mod)
            from tvm.s_tir import meta_schedule as ms

            n_tasks = len(ms.relax_integration.extract_tasks(lowered, target))
            trials = min(args.max_trials, per_task * n_tasks)
            print(f"[suite] {name}: {n_tasks} tasks, {trials} trials", file=sys.stderr)
            r = bench_model(
                name,
                path,
                work,
                trials=trials,
                per_task=per_task,
                rounds=args.rounds,
                runs=args.runs,
                threads=args.threads,
            )
            r["model"] += args.suffix
            r["tasks"] = n_tasks
            r["onnx_nodes"] = len(onnx.load(str(path)).graph.node)
            print(json.dumps(r), file=sys.stderr)
            results.append(r)
    result = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "target_ratio": TARGET_RATIO,
        "environment": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "loadavg": [round(v, 2) for v in os.getloadavg()],
            "tvm": tvm.__version__,
            "onnxruntime": onnxruntime.__version__,
            "tvm_target": str(get_target("host").tvm_target()),
            "python": platform.python_version(),
        },
        "models": results,
    }
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
        result["environment"]["cpu"] = cpu
    except (OSError, StopIteration):
        pass
    if args.append and Path(args.json).exists():
        old = json.loads(Path(args.json).read_text())
        names = {r["model"] for r in results}
        result["models"] = [r for r in old["models"] if r["model"] not in names] + results
        result["environment"]["loadavg_earlier_runs"] = old["environment"].get("loadavg")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    Path(args.md).write_text(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
