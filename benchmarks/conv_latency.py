"""Split convolutions: dense vs the fused low-rank convolution (ONNX Runtime, CPU, batch 1).

Layers: the 3x3 convolutions of VGG-16 (padding 1) at their input sizes: 64->64 @ 224,
128->128 @ 112, 256->256 @ 56, 512->512 @ 28 and 512->512 @ 14. Each is written torch-free
as an ``auto`` ONNX file holding an ADNTN conv in the split layout of rank ``--rank``
(default 32: a 2-site ttn with bond 32, ``W = A R B^T``; random cores: latency depends on
neither the values nor how a larger split plan compresses ``A`` and ``B``, since the two
kernels are computed once at load). :func:`adntn_runtime.bench.bench_model` measures the
``fused`` mode (the runtime's lowering: ``Conv(x, K)`` then a 1x1 ``Conv`` with ``L``) and
the dense layer (the generated kernel as an initializer, one ``Conv``), each in its own
subprocess, in interleaved rounds; each number is the median over rounds of per-subprocess
medians (``--runs`` timed calls, at least 10).

Usage::

    PYTHONPATH=.:runtimes:models python benchmarks/conv_latency.py [--threads 1,2] [--runs 20]

Writes ``benchmarks/results/conv_latency.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from adntn_runtime.bench import bench_model
from adntn_runtime.calibration import cpu_model
from adntn_runtime.layer_spec import ConvSpec
from adntn_runtime.onnx_lowering import LayerSpec, layer_model
from adntn_runtime.plan import ADNTNPlan

HERE = Path(__file__).resolve().parent
#: name -> (in channels, out channels, input height = width)
LAYERS = {
    "conv64@224": (64, 64, 224),
    "conv128@112": (128, 128, 112),
    "conv256@56": (256, 256, 56),
    "conv512@28": (512, 512, 28),
    "conv512@14": (512, 512, 14),
}


def write_layer(path: Path, name: str, cin: int, cout: int, hw: int, rank: int) -> ADNTNPlan:
    """An ``auto`` file of one split conv (3x3, padding 1) of the given rank, random cores."""
    plan = ADNTNPlan(cout, cin * 9, network="ttn", bond_dim=rank, num_sites=2, layout="split")
    rng = np.random.default_rng(0)
    cores = {
        k: (rng.standard_normal(c.shape) / np.sqrt(c.shape[0])).astype(np.float32)
        for k, c in plan.cores.items()
    }
    conv = ConvSpec(cin, (3, 3), pads=(1, 1), output_hw=(hw, hw))
    spec = LayerSpec(
        name, "conv2d", plan, cores, bias_kind="dense", bias=np.zeros(cout, np.float32), conv=conv
    )
    model = layer_model(spec, "auto", input_shape=(1, cin, hw, hw), opset=18)
    path.write_bytes(model.SerializeToString())
    return plan


def measure(args: argparse.Namespace) -> dict:
    threads_list = [int(t) for t in args.threads.split(",")]
    names = args.layers.split(",") if args.layers else list(LAYERS)
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="adntn-conv-latency-") as tmp:
        for name in names:
            cin, cout, hw = LAYERS[name]
            path = Path(tmp) / f"{name}.onnx"
            plan = write_layer(path, name, cin, cout, hw, args.rank)
            rank = min(plan.cores["root"].shape)  # the root joins two leaves: W = A R B^T
            pixels = hw * hw
            for t in threads_list:
                print(f"== {name} rank {rank} threads={t}", flush=True)
                data = bench_model(
                    path,
                    batches=[1],
                    threads=t,
                    modes=["fused"],
                    warmup=2,
                    runs=args.runs,
                    repeats=args.repeats,
                    max_seconds=args.max_seconds,
                    progress=print,
                )
                res = {r["config"]: r for r in data["results"]}
                p50 = {k: v["latency_ms"]["p50"] if v["ok"] else None for k, v in res.items()}
                rows.append(
                    {
                        "layer": name,
                        "in_channels": cin,
                        "out_channels": cout,
                        "hw": hw,
                        "rank": rank,
                        "threads": t,
                        "batch": 1,
                        "dense_flops": 2 * pixels * cout * cin * 9,
                        "fused_flops": 2 * pixels * rank * (cin * 9 + cout),
                        "dense_ms": p50.get("dense"),
                        "fused_ms": p50.get("fused"),
                        "speedup": (p50["dense"] / p50["fused"])
                        if p50.get("dense") and p50.get("fused")
                        else None,
                        "p50_per_repeat": {k: v["p50_per_repeat"] for k, v in res.items()},
                        "errors": {k: v["error"] for k, v in res.items() if not v["ok"]},
                    }
                )
    machine = {"cpu": cpu_model(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    return {
        "machine": machine,
        "note": args.note,
        "runs": args.runs,
        "repeats": args.repeats,
        "seconds": time.time() - started,
        "rows": rows,
    }


def markdown(report: dict) -> str:
    lines = [
        "| layer | rank | threads | dense ms | fused ms | speedup | flops dense / fused |",
        "|---|---|---|---|---|---|---|",
    ]

    def ms(v: float | None) -> str:
        return "error" if v is None else f"{v:.3g}"

    for r in report["rows"]:
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        lines.append(
            f"| {r['layer']} | {r['rank']} | {r['threads']} | {ms(r['dense_ms'])} | "
            f"{ms(r['fused_ms'])} | {speed} | {r['dense_flops'] / r['fused_flops']:.1f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--layers", default="", help=f"comma-separated subset of {list(LAYERS)}")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-seconds", type=float, default=5.0)
    ap.add_argument("--note", default="", help="recorded in the JSON (e.g. machine load)")
    ap.add_argument("--out", default=str(HERE / "results" / "conv_latency.json"))
    args = ap.parse_args()
    if args.runs < 10:
        ap.error(f"--runs {args.runs}: valid --runs: 10 or more (medians of at least 10 calls)")
    unknown = [n for n in args.layers.split(",") if n and n not in LAYERS]
    if unknown:
        ap.error(f"--layers: unknown {unknown}; valid layers: {list(LAYERS)}")
    report = measure(args)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(markdown(report))
    print(f"wrote {args.out} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
