"""How much of a dense model's latency its convolution trunk takes: the floor of any recipe
that compresses only the classifier.

A recipe that leaves the convolutions dense (``alexnet_ttn``, ``vgg16_ttn``) still runs the
dense trunk, so its fused p50 can never fall below ``trunk p50 / dense p50`` of the dense
model. This script cuts the trunk out of the dense ONNX file that ``model_suite.py`` writes
(everything up to the tensor the first ``Gemm``/``MatMul`` flattens) with
``onnx.utils.extract_model`` and times both files under ONNX Runtime, with the runtime's
session options (pool threads not spinning: two sessions share the process), calls
interleaved (dense, trunk, dense, ...) in one child process per model so that both see the
same load; medians. Canonical 224x224 AlexNet and VGG-16, 1 and 2
threads, batch 1 and 8.

Usage::

    PYTHONPATH=.:runtimes:models python benchmarks/trunk_share.py [--models alexnet,vgg16]
        [--runs 15]

Prints a table and writes ``benchmarks/results/trunk_share.json`` (rows replaced per model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_suite import ROOT, LoadMeter, _env, _machine, prepare  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: Ops between the trunk's output and the first Gemm/MatMul (the flatten and dropout).
PASS_THROUGH = {"Reshape", "Flatten", "Identity", "Dropout"}


def trunk_output(model: Any) -> str:
    """The tensor the classifier starts from: the first Gemm/MatMul's data input, followed
    back through reshapes and dropouts."""
    producer = {out: node for node in model.graph.node for out in node.output}
    first = next((n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")), None)
    if first is None:
        raise ValueError("no Gemm/MatMul: the model has no classifier to cut off")
    name = first.input[0]
    while name in producer and producer[name].op_type in PASS_THROUGH:
        name = producer[name].input[0]
    return name


def measure(path: str, runs: int) -> list[dict[str, Any]]:
    """Child: time the dense file and its trunk, interleaved, for each thread count and batch."""
    import numpy as np
    import onnx
    import onnx.utils
    import onnxruntime as ort

    from adntn_runtime.session import _session_options

    model = onnx.load(path, load_external_data=False)
    cut = trunk_output(model)
    input_name = model.graph.input[0].name
    del model
    rows = []
    with tempfile.TemporaryDirectory(prefix="adntn-trunk-") as tmp:
        trunk = str(Path(tmp) / "trunk.onnx")
        onnx.utils.extract_model(path, trunk, [input_name], [cut])
        for threads in (1, 2):
            so = _session_options(threads, False, None)
            # two sessions in one process, called in turn: with spinning on, the idle one's
            # pool threads spin on the cores the other one runs on (2 threads: the dense model
            # measured 34.5 ms here against 14.8 ms in a process of its own)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sessions = {
                "dense": ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]),
                "trunk": ort.InferenceSession(trunk, so, providers=["CPUExecutionProvider"]),
            }
            for batch in (1, 8):
                x = np.random.default_rng(0).standard_normal([batch, 3, 224, 224], np.float32)
                times: dict[str, list[float]] = {k: [] for k in sessions}
                for s in sessions.values():
                    s.run(None, {input_name: x})
                for _ in range(runs):
                    for k, s in sessions.items():
                        t0 = time.perf_counter()
                        s.run(None, {input_name: x})
                        times[k].append((time.perf_counter() - t0) * 1e3)
                dense, trunk_ms = (statistics.median(times[k]) for k in ("dense", "trunk"))
                rows.append(
                    {
                        "threads": threads,
                        "batch": batch,
                        "dense_p50_ms": dense,
                        "trunk_p50_ms": trunk_ms,
                        "trunk_share": trunk_ms / dense,
                        "runs": runs,
                        "trunk_output": cut,
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="alexnet,vgg16")
    ap.add_argument("--runs", type=int, default=15, help="timed calls per file and setting")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS / "trunk_share.json"))
    args = ap.parse_args(argv)
    if args.runs < 3:
        ap.error(f"--runs {args.runs}: too few; valid: 3 or more")
    if args.child:
        print(json.dumps(measure(args.child, args.runs)))
        return 0
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in ("alexnet", "vgg16")]
    if bad:
        ap.error(f"--models: unknown {bad}; valid: alexnet, vgg16")
    out = Path(args.out)
    report: dict[str, Any] = {"rows": {}}
    if out.exists():
        report = json.loads(out.read_text())
    report["machine"] = _machine()
    report["command"] = " ".join(["benchmarks/trunk_share.py", *sys.argv[1:]])
    for model in models:
        path = str(ROOT / prepare(model, "dense")["path"])
        cmd = [sys.executable, __file__, "--child", path, "--runs", str(args.runs)]
        with LoadMeter() as lm:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(2))
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            print(f"{model}: FAILED {tail}", file=sys.stderr)
            return 1
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        report["rows"][model] = {"rows": rows, "machine_load": lm.result, "measured_at": stamp}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, sort_keys=True))
    print("| model | threads | batch | dense p50 ms | trunk p50 ms | trunk share | others' CPU |")
    print("|---|---|---|---:|---:|---:|---|")
    for model, entry in report["rows"].items():
        load = entry["machine_load"]
        share = f"{100 * load['other_cpu_share']:.0f}%" + (" loaded" if load["loaded"] else "")
        for r in entry["rows"]:
            print(
                f"| {model} | {r['threads']} | {r['batch']} | {r['dense_p50_ms']:.1f} "
                f"| {r['trunk_p50_ms']:.1f} | {r['trunk_share']:.2f} | {share} |"
            )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
