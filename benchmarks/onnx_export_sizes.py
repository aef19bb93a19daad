"""ONNX file size per mode and a first ONNX Runtime latency comparison for 4096x4096 layers.

For ``ADNTNLinear(4096, 4096, network=n, bond_dim=4)``, ``n`` in ttn/attn/mera, export the
layer with :func:`adntn_export.onnx_export.export_onnx` in every mode (fused, regenerate,
materialize, dense), record the file sizes, then time each file in one ONNX Runtime process
(CPU EP, 1 intra-op and 1 inter-op thread, batch 1, session options from
:func:`adntn_runtime.onnx_lowering.session_options_for`): the median of many runs after a
warm-up, beside the dense file in the same process. Also records the session load time and
whether ORT folded the generator at load (Einsum nodes left in the optimized graph).

Usage::

    PYTHONPATH=.:runtimes:models python benchmarks/onnx_export_sizes.py [--runs 200]

Writes ``benchmarks/results/onnx_export.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from adntn_export import ADNTNLinear
from adntn_export.onnx_export import export_onnx
from adntn_runtime.onnx_lowering import session_options_for

MODES = ("dense", "fused", "materialize", "regenerate")
RESULTS = Path(__file__).resolve().parent / "results" / "onnx_export.json"


def _session(path: Path, optimized: Path | None = None) -> tuple[ort.InferenceSession, float]:
    so = session_options_for(path)
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess, time.perf_counter() - t0


def _time(sess: ort.InferenceSession, x: np.ndarray, runs: int, warmup: int) -> list[float]:
    feed = {"input": x}
    for _ in range(warmup):
        sess.run(None, feed)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per mode")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--regenerate-runs", type=int, default=30)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4096)).astype(np.float32)
    results: dict = {
        "description": "ADNTNLinear(4096, 4096, bond_dim=4): ONNX file size per mode; ORT "
        "latency at batch 1, 1 thread, median after warm-up, all in one process",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "versions": {
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "settings": {
            "batch": 1,
            "threads": 1,
            "runs": args.runs,
            "warmup": args.warmup,
            "regenerate_runs": args.regenerate_runs,
            "opset": 18,
        },
        "layers": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for network in ("ttn", "attn", "mera"):
            layer = ADNTNLinear(4096, 4096, network=network, bond_dim=4).eval()
            with torch.no_grad():
                ref = layer(torch.from_numpy(x)).numpy()
            entry: dict = {
                "stored_parameters": layer.stored_parameters,
                "compression_ratio": round(layer.plan.compression_ratio, 1),
                "sizes_bytes": {},
                "load_s": {},
                "latency_us": {},
                "max_rel_error": {},
                "einsum_nodes_after_load": {},
            }
            for mode in MODES:
                path = Path(tmp) / f"{network}_{mode}.onnx"
                export_onnx(layer, torch.from_numpy(x), path, mode=mode)
                entry["sizes_bytes"][mode] = path.stat().st_size
                optimized = Path(tmp) / f"{network}_{mode}.opt.onnx"
                sess, load = _session(path, optimized)
                opt = onnx.load(str(optimized), load_external_data=False)
                entry["einsum_nodes_after_load"][mode] = sum(
                    n.op_type == "Einsum" for n in opt.graph.node
                )
                sess, load = _session(path)  # time a session without the file write
                entry["load_s"][mode] = round(load, 4)
                y = sess.run(None, {"input": x})[0]
                err = float(np.abs(y - ref).max() / np.abs(ref).max())
                entry["max_rel_error"][mode] = err
                runs = args.regenerate_runs if mode == "regenerate" else args.runs
                times = _time(sess, x, runs, min(args.warmup, runs))
                q = statistics.quantiles(times, n=10)
                entry["latency_us"][mode] = {
                    "median": round(statistics.median(times) * 1e6, 1),
                    "p10": round(q[0] * 1e6, 1),
                    "p90": round(q[-1] * 1e6, 1),
                    "runs": runs,
                }
                print(
                    f"{network:5s} {mode:12s} {entry['sizes_bytes'][mode]:>11,d} B  "
                    f"load {load:7.3f} s  median {entry['latency_us'][mode]['median']:>10.1f} us"
                    f"  err {err:.1e}",
                    flush=True,
                )
            dense = entry["latency_us"]["dense"]["median"]
            entry["latency_ratio_vs_dense"] = {
                m: round(entry["latency_us"][m]["median"] / dense, 3) for m in MODES
            }
            entry["size_ratio_vs_dense"] = {
                m: round(entry["sizes_bytes"][m] / entry["sizes_bytes"]["dense"], 6) for m in MODES
            }
            results["layers"][network] = entry
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
